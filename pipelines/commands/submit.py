"""`labelmill submit`: run a labelmill command on a Ray cluster through the Ray Jobs API (infra/cluster/jobs.py).

``labelmill submit --address http://HEAD:8265 [--runtime-env F.yaml] [--working-dir DIR] -- run pose3d ...``
checks the command with labelmill's own parser, submits ``python -m labelmill.pipelines.cli <command>``
as a job (its driver runs on the head and attaches to the cluster through the ``RAY_ADDRESS`` the
Jobs API sets), streams the job's logs to stdout and exits with the job's status: 0 SUCCEEDED,
1 FAILED or STOPPED. ``--status JOB_ID`` and ``--stop JOB_ID`` query or stop a job.

The job runs in the head's Python environment unless a runtime env says otherwise (docs/cluster.md,
"Submitting to a cluster"); a working dir alone does not make ``labelmill`` importable.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import Any

from labelmill.infra.cluster.jobs import (
    ENTRYPOINT,
    SubmitError,
    connect,
    follow,
    not_installed_hint,
    print_status,
    ray_errors,
    stop_job,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE = 0, 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="run a labelmill command on a Ray cluster (Ray Jobs API); follow its logs",
        description="Submit `labelmill <command>` (a `run ...` command, after --) to a Ray cluster's Jobs "
        "API, stream the job's logs to stdout and exit with its status: 0 SUCCEEDED, 1 FAILED or STOPPED "
        "(2: usage error, nothing submitted). The job's driver attaches to the cluster by itself; use "
        "`--engine ray` in the command. The job runs in the head's Python environment unless "
        "--runtime-env says otherwise (docs/cluster.md).",
        epilog="example: labelmill submit --address http://head:8265 -- run pose3d --input s3://b/manifest.csv "
        "--output s3://b/out --engine ray",
    )
    parser.add_argument("--address", default=None, metavar="URL",
                        help="the head's Jobs API (dashboard) URL, e.g. http://head:8265 "
                        "(default: $RAY_API_SERVER_ADDRESS, else an http(s) $RAY_ADDRESS)")
    parser.add_argument("--runtime-env", default=None, metavar="FILE.yaml",
                        help="a Ray runtime env (YAML mapping: pip, py_modules, working_dir, env_vars, ...)")
    parser.add_argument("--working-dir", default=None, metavar="DIR",
                        help="upload DIR as the job's working dir (runtime env working_dir); it does not "
                        "install labelmill")
    parser.add_argument("--job-id", default=None, metavar="ID", help="the submission id (default: Ray picks one)")
    parser.add_argument("--no-wait", action="store_true",
                        help="print the job id and exit once it is submitted; do not follow its logs")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--status", default=None, metavar="JOB_ID", help="print a job's status and exit")
    group.add_argument("--stop", default=None, metavar="JOB_ID", help="stop a job and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- run ...",
                        help="the labelmill command the job runs (after --)")
    parser.set_defaults(handler=_submit)


def _submit(args: argparse.Namespace) -> int:
    from labelmill.pipelines.cli import UsageError

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    job_id = args.status or args.stop
    if job_id and command:
        raise UsageError("--status/--stop take a job id, not a command after --")
    address = resolve_address(args.address)
    out = sys.stdout
    try:
        if args.status:
            return print_status(connect(address), address, args.status, out.write)
        if args.stop:
            return stop_job(connect(address), address, args.stop, out.write)
        job_command(command)  # a usage error before anything reaches the cluster
        runtime_env = load_runtime_env(args.runtime_env, args.working_dir)
        client = connect(address)
        entrypoint = shlex.join([*ENTRYPOINT, *command])
        with ray_errors(address):
            submitted = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=args.job_id)
        log.info("submitted job %s to %s: %s", submitted, address, entrypoint)
        if args.no_wait:
            out.write(f"{submitted}\n")
            return EXIT_OK
        log.info("following its logs (Ctrl-C stops following, not the job: labelmill submit --address %s "
                 "--stop %s)", address, submitted)
        try:
            status, message = follow(client, address, submitted, write=lambda text: (out.write(text), out.flush()))
        except KeyboardInterrupt:
            log.error("stopped following job %s; it keeps running on the cluster (labelmill submit --address %s "
                      "--status/--stop %s)", submitted, address, submitted)
            return EXIT_FAILURE
        if status == "SUCCEEDED":
            log.info("job %s SUCCEEDED", submitted)
            return EXIT_OK
        log.error("job %s %s: %s", submitted, status, message or "(no message)")
        hint = not_installed_hint(client, submitted)
        if hint:
            log.error("%s", hint)
        return EXIT_FAILURE
    except SubmitError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE


def resolve_address(address: str | None) -> str:
    """The Jobs API URL: ``address``, else ``$RAY_API_SERVER_ADDRESS``, else an http(s) ``$RAY_ADDRESS``."""
    from labelmill.pipelines.cli import UsageError

    if not address:
        address = os.environ.get("RAY_API_SERVER_ADDRESS") or ""
    if not address and os.environ.get("RAY_ADDRESS", "").startswith(("http://", "https://")):
        address = os.environ["RAY_ADDRESS"]
    if not address:
        raise UsageError("labelmill submit needs the head's Jobs API URL: --address http://HEAD:8265 "
                         "(or RAY_API_SERVER_ADDRESS)")
    if "://" not in address:
        raise UsageError(f"--address {address!r} is not a URL: give the Jobs API (dashboard) URL, "
                         "e.g. http://HEAD:8265, not the GCS address HEAD:6379")
    return address.rstrip("/")


def job_command(command: list[str]) -> argparse.Namespace:
    """``command`` parsed by labelmill's own parser; a UsageError unless it is a valid ``run ...``."""
    from labelmill.pipelines.cli import UsageError, build_parser

    if not command:
        raise UsageError("nothing to submit: give the labelmill command after --, "
                         "e.g. labelmill submit --address URL -- run pose3d --input ... --output ... --engine ray")
    name = next((word for word in command if not word.startswith("-")), None)  # after -v/-q
    if name != "run":
        raise UsageError(f"labelmill submit runs `run ...` commands; got `{name}` ({shlex.join(command)})")
    try:
        parsed = build_parser().parse_args(command)  # argparse prints what is wrong
    except SystemExit as exc:
        raise UsageError(f"the command after -- does not parse as a labelmill command: {shlex.join(command)}") from exc
    if getattr(parsed, "engine", None) in ("local", "beam"):
        log.warning("the job runs --engine %s on the head alone; --engine ray uses the whole cluster", parsed.engine)
    return parsed


def load_runtime_env(path: str | None, working_dir: str | None) -> dict[str, Any] | None:
    """The runtime env of ``--runtime-env FILE.yaml`` with ``--working-dir`` as its working_dir;
    None when neither is given (the job runs in the head's environment)."""
    import yaml

    from labelmill.pipelines.cli import UsageError

    env: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except OSError as exc:
            raise UsageError(f"--runtime-env {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise UsageError(f"--runtime-env {path}: not YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"--runtime-env {path}: a runtime env is a YAML mapping (pip:, py_modules:, "
                             f"working_dir:, env_vars:, ...), got {type(loaded).__name__}")
        env.update(loaded)
    if working_dir:
        if not os.path.isdir(working_dir):
            raise UsageError(f"--working-dir {working_dir}: not a directory")
        if env.get("working_dir"):
            log.warning("--working-dir %s replaces the runtime env's working_dir %s", working_dir, env["working_dir"])
        env["working_dir"] = working_dir
    return env or None


