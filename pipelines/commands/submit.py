"""`labelmill submit`: run a labelmill command on a Ray cluster through the Ray Jobs API.

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
import asyncio
import contextlib
import logging
import os
import shlex
import sys
import time
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE = 0, 1
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
# how the job's driver starts labelmill: the module of the console script, so that a labelmill
# shipped as a wheel in the runtime env's py_modules (no script on PATH) runs too
ENTRYPOINT = ("python", "-m", "labelmill.pipelines.cli")
# in a failed job's logs: labelmill is not installed where the job ran
_NOT_INSTALLED = ("No module named 'labelmill'", "No module named labelmill", "python: not found",
                  "python: command not found")


class SubmitError(RuntimeError):
    """The Jobs API could not be reached, refused us, or failed a request (exit 1); the message
    says what to check."""


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
            return _print_status(connect(address), address, args.status, out.write)
        if args.stop:
            return _stop(connect(address), address, args.stop, out.write)
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
        hint = _not_installed_hint(client, submitted)
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


def connect(address: str):
    """A JobSubmissionClient of the head at ``address``; SubmitError when it cannot be reached."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise SubmitError(f"labelmill submit needs Ray's Jobs client: pip install 'labelmill[ray]' ({exc})") from exc
    with ray_errors(address):
        return JobSubmissionClient(address)


@contextlib.contextmanager
def ray_errors(address: str) -> Iterator[None]:
    """Connection and token-auth failures of the Jobs API as a SubmitError that says what to check."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        raise SubmitError(auth_message(address, str(exc))) from exc
    except (ConnectionError, OSError) as exc:  # ray raises the builtin; aiohttp's errors are OSErrors
        raise SubmitError(connection_message(address, exc)) from exc
    except RuntimeError as exc:  # the SDK's "Request failed with status code ..."
        raise SubmitError(f"the Jobs API at {address}: {exc}") from exc


def connection_message(address: str, exc: BaseException) -> str:
    return (f"cannot reach the Ray Jobs API at {address} ({type(exc).__name__}: {exc}). Check that a head runs "
            "there with its dashboard (`ray start --head --dashboard-host=0.0.0.0`, which needs "
            "`ray[default]` in the head's environment), that the port is the dashboard's (8265 by default; "
            "not the GCS port 6379), and that it is reachable from here (firewall, SSH tunnel: "
            "ssh -L 8265:localhost:8265 HEAD)")


def auth_message(address: str, detail: str) -> str:
    rejected = "Authentication failed" in detail  # 403: a token was sent and is wrong
    what = "rejected the token sent" if rejected else "requires token authentication"
    return (f"the Ray head at {address} {what} (Ray >= 2.52 token auth; `ray start` turns it on by itself "
            "when it finds ~/.ray/auth_token). Give this process the head's token: RAY_AUTH_MODE=token with "
            "RAY_AUTH_TOKEN=<token> or RAY_AUTH_TOKEN_PATH=<file> (`ray get-auth-token` on the head prints "
            "it); or, only for a trusted head on loopback or a private network, start the head with "
            f"RAY_AUTH_MODE=disabled. Ray said: {detail.splitlines()[0] if detail else '(nothing)'}")


def follow(client, address: str, job_id: str, *, write: Callable[[str], Any],
           poll_s: float = 0.5, settle_s: float = 60.0) -> tuple[str, str]:
    """Stream ``job_id``'s logs through ``write`` until it ends; its final (status, message).

    The log stream (a websocket) ends when the job does; when it breaks, the logs are polled
    instead. The status may lag the stream's end by a moment: it is polled for ``settle_s``.
    """
    printed, polling = 0, False
    try:
        printed = asyncio.run(_tail(client, address, job_id, write))
    except SubmitError:
        raise
    except Exception as exc:  # noqa: BLE001 - the stream is a convenience; the job's status is what counts
        log.warning("the log stream of job %s broke (%s: %s); polling its logs instead", job_id, type(exc).__name__, exc)
        polling = True
    settled = time.monotonic() + settle_s
    while True:
        with ray_errors(address):
            info = client.get_job_info(job_id)
        status = str(getattr(info.status, "value", info.status))
        if polling or status in TERMINAL_STATUSES:  # what the stream did not show
            with ray_errors(address):
                logs = client.get_job_logs(job_id)
            if len(logs) > printed:
                write(logs[printed:])
                printed = len(logs)
        if status in TERMINAL_STATUSES:
            return status, info.message or ""
        if time.monotonic() > settled:  # the stream ended long ago, the job did not: poll its logs
            polling = True
        time.sleep(poll_s)


async def _tail(client, address: str, job_id: str, write: Callable[[str], Any]) -> int:
    """The job's logs through ``write`` as they come; the number of characters written."""
    written = 0
    with ray_errors(address):
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)
            written += len(chunk)
    return written


def _print_status(client, address: str, job_id: str, write: Callable[[str], Any]) -> int:
    with ray_errors(address):
        info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    write(f"{job_id} {status}\n")
    if info.message:
        write(f"{info.message}\n")
    if getattr(info, "entrypoint", None):
        write(f"entrypoint: {info.entrypoint}\n")
    return EXIT_OK


def _stop(client, address: str, job_id: str, write: Callable[[str], Any]) -> int:
    with ray_errors(address):
        stopped = client.stop_job(job_id)
        status = str(getattr(client.get_job_status(job_id), "value", "?"))
    if not stopped:
        log.error("job %s was not running (%s): nothing to stop", job_id, status)
        return EXIT_FAILURE
    write(f"{job_id} stop requested ({status})\n")
    return EXIT_OK


def _not_installed_hint(client, job_id: str) -> str | None:
    """What to do when a failed job's logs say labelmill (or python) is missing on the head."""
    try:
        logs = client.get_job_logs(job_id)
    except Exception:  # noqa: BLE001 - only a hint
        return None
    if not any(marker in logs for marker in _NOT_INSTALLED):
        return None
    return ("labelmill is not installed where the job ran. Install it in the head's (and workers') "
            "environment, or give a runtime env that does: --runtime-env with `pip: [\"labelmill[ray] @ "
            "<wheel or git URL>\"]`, or `py_modules: [dist/labelmill-<version>-py3-none-any.whl]` "
            "(python -m pip wheel --no-deps . -w dist); --working-dir alone does not install it "
            "(docs/cluster.md, \"Submitting to a cluster\")")
