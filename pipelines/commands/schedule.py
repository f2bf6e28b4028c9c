"""`labelmill schedule render`: a scheduled regeneration as KubeRay, crontab or systemd files."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("schedule", help="render a scheduled regeneration (KubeRay CronJob, crontab, systemd)")
    sub = parser.add_subparsers(dest="schedule_command", metavar="ACTION")
    sub.required = True
    render = sub.add_parser(
        "render",
        help="write the files that run a labelmill command on a schedule",
        description="Render a labelmill 'run ...' command (everything after '--') as a Kubernetes CronJob that "
        "creates a KubeRay RayJob (--target kuberay), a crontab line under flock (cron) or a systemd service + "
        "timer (systemd); runs never overlap. Nothing is installed: see docs/cluster.md.",
        usage="labelmill schedule render --cron EXPR --target kuberay|cron|systemd [options] -- run PIPELINE ...",
    )
    render.add_argument("--cron", required=True, metavar="EXPR",
                        help="standard 5-field cron expression (or @daily, @weekly, ...), e.g. '0 3 * * 0'")
    render.add_argument("--target", required=True, choices=("kuberay", "cron", "systemd"))
    render.add_argument("--name", default="labelmill-pose3d",
                        help="name of the Kubernetes objects, units and lock file (default: labelmill-pose3d)")
    render.add_argument("--namespace", default="default", help="Kubernetes namespace (kuberay)")
    render.add_argument("--image", default=None,
                        help="image with labelmill[ray] installed, for the Ray pods (kuberay; default labelmill:latest)")
    render.add_argument("--kubectl-image", default=None,
                        help="image with sh and kubectl for the CronJob's submitter pod (kuberay)")
    render.add_argument("--gpus", type=int, default=1, metavar="N",
                        help="GPU worker pods, one GPU each, for the keypoint and fit stages (kuberay; default 1)")
    render.add_argument("--cpu-workers", type=int, default=2, metavar="N",
                        help="CPU worker pods for decode and the other CPU stages (kuberay; default 2)")
    render.add_argument("--labelmill", default=None, metavar="PATH",
                        help="labelmill executable for cron/systemd (default: the one beside this Python, "
                             "else 'labelmill'; kuberay: 'labelmill' on the image's PATH)")
    render.add_argument("--lock", default=None, metavar="PATH", help="flock lock file (cron; default /tmp/NAME.lock)")
    render.add_argument("--log", default=None, metavar="PATH", help="log file (cron; default /var/tmp/NAME.log)")
    render.add_argument("--out", default=None, metavar="DIR", help="write the files into DIR (default: stdout)")
    render.add_argument("command", nargs=argparse.REMAINDER, metavar="-- run ...",
                        help="the labelmill command to schedule, after '--'")
    render.set_defaults(handler=_render)


def _default_labelmill() -> str:
    beside = Path(sys.executable).parent / "labelmill"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else "labelmill"


def check_command(command: list[str], target: str) -> argparse.Namespace:
    """Parse ``command`` with labelmill's own parser; a usage error unless it is a valid ``run ...``
    (and, for kuberay, one that runs on the Ray engine)."""
    from labelmill.pipelines.cli import UsageError, build_parser

    shown = shlex.join(["labelmill", *command])
    if not command or command[0] != "run":
        raise UsageError(f"after '--' give the labelmill 'run ...' command to schedule, got {shown!r}")
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(command)
    except SystemExit:
        detail = errors.getvalue().strip().splitlines()
        raise UsageError(f"the scheduled command {shown!r} does not parse"
                         + (f": {detail[-1]}" if detail else " (it asks for help)")) from None
    if target == "kuberay" and getattr(args, "engine", None) != "ray":
        raise UsageError(f"--target kuberay runs the command on the RayJob's cluster: add '--engine ray' to {shown!r}")
    return args


def _render(args: argparse.Namespace) -> int:
    from labelmill.infra.cluster.schedule import Schedule, ScheduleError, render
    from labelmill.pipelines.cli import UsageError

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    check_command(command, args.target)
    options = {"cron": args.cron, "command": tuple(command), "name": args.name, "namespace": args.namespace,
               "gpu_workers": args.gpus, "cpu_workers": args.cpu_workers, "lock": args.lock, "log": args.log}
    if args.image is not None:
        options["image"] = args.image
    if args.kubectl_image is not None:
        options["kubectl_image"] = args.kubectl_image
    if args.target != "kuberay":
        options["labelmill"] = args.labelmill or _default_labelmill()
    try:
        files = render(Schedule(**options), args.target)
    except ScheduleError as exc:
        raise UsageError(str(exc)) from None
    if args.out is None:
        if len(files) == 1:
            sys.stdout.write(next(iter(files.values())))
        else:
            sys.stdout.write("".join(f"# ---- {name}\n{text}" for name, text in files.items()))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        sys.stdout.write(f"labelmill schedule render: wrote {out / name}\n")
    return 0
