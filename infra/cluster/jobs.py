"""The Ray Jobs API for ``labelmill submit``: connect, submit, follow a job's logs, status, stop.

Ray stays in ``infra/`` (DESIGN.md §1); the command (``pipelines/commands/submit.py``) parses and
checks the user's input and calls these. Every failure to reach or use the API is a
:class:`SubmitError` whose message says what to check (the address, the dashboard, token auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Callable, Iterator

__all__ = ["SubmitError", "ENTRYPOINT", "TERMINAL_STATUSES", "connect", "ray_errors", "connection_message",
           "auth_message", "follow", "print_status", "stop_job", "not_installed_hint"]

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


def print_status(client, address: str, job_id: str, write: Callable[[str], Any]) -> int:
    with ray_errors(address):
        info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    write(f"{job_id} {status}\n")
    if info.message:
        write(f"{info.message}\n")
    if getattr(info, "entrypoint", None):
        write(f"entrypoint: {info.entrypoint}\n")
    return EXIT_OK


def stop_job(client, address: str, job_id: str, write: Callable[[str], Any]) -> int:
    with ray_errors(address):
        stopped = client.stop_job(job_id)
        status = str(getattr(client.get_job_status(job_id), "value", "?"))
    if not stopped:
        log.error("job %s was not running (%s): nothing to stop", job_id, status)
        return EXIT_FAILURE
    write(f"{job_id} stop requested ({status})\n")
    return EXIT_OK


def not_installed_hint(client, job_id: str) -> str | None:
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
