"""A watchdog for an embedded Ray cluster: when its driver dies, even by SIGKILL, nothing of it stays.

An embedded cluster's GCS, raylet, workers and agents are descendants of the driver. When the
driver is killed, Ray's own fate-sharing stops most of them, but its dashboard and runtime-env
agents (children of the raylet) wait for the dead GCS for about a minute, and a busy worker
may outlive its raylet. :func:`start_reaper` starts this module as a detached process
(``python -m labelmill.infra.engines.ray_reaper DRIVER_PID TEMP_DIR``, its own session, no
open files of the driver) which

1. while the driver lives, records its descendants every ``poll_s`` (pid and start time, so a
   reused pid is never touched);
2. once the driver is gone, gives Ray ``grace_s`` to stop itself, then SIGKILLs every recorded
   process still running, and every process whose ``RAY_RAYLET_PID`` names one of the
   recorded raylets;
3. removes the cluster's temp dir (its sockets, session logs and object spill files).

It never touches a process that was not a descendant of the driver (or of its raylet).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

__all__ = ["start_reaper", "main"]

_POLL_S = 1.0
_GRACE_S = 2.0


def start_reaper(driver_pid: int, temp_dir: str) -> subprocess.Popen:
    """Start the watchdog for the cluster of ``driver_pid`` whose temp dir is ``temp_dir``."""
    return subprocess.Popen(
        [sys.executable, "-m", "labelmill.infra.engines.ray_reaper", str(int(driver_pid)), str(temp_dir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


def _descendants(psutil, pid: int) -> dict[int, float]:
    try:
        return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return {}


def _kill(psutil, pid: int, created: float) -> None:
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - created) < 1e-3:
            process.kill()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _raylet_orphans(psutil, raylets: set[int]) -> list[tuple[int, float]]:
    """Processes whose environment says they belong to one of ``raylets`` (the agents)."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            env = process.environ()
            if env.get("RAY_RAYLET_PID", "").isdigit() and int(env["RAY_RAYLET_PID"]) in raylets:
                found.append((process.pid, process.create_time()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def main(argv: list[str] | None = None, *, poll_s: float = _POLL_S, grace_s: float = _GRACE_S) -> int:
    import psutil

    driver_pid, temp_dir = int((argv or sys.argv[1:])[0]), (argv or sys.argv[1:])[1]
    try:
        driver_created = psutil.Process(driver_pid).create_time()
    except psutil.NoSuchProcess:
        return 0
    known: dict[int, float] = {}
    raylets: set[int] = set()
    while True:
        try:
            alive = abs(psutil.Process(driver_pid).create_time() - driver_created) < 1e-3
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            break
        current = _descendants(psutil, driver_pid)
        current.pop(os.getpid(), None)  # this watchdog is the driver's child too
        known.update(current)
        for pid in current:
            try:
                if "raylet" in psutil.Process(pid).name():
                    raylets.add(pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(poll_s)
    time.sleep(grace_s)
    for pid, created in [*known.items(), *_raylet_orphans(psutil, raylets)]:
        _kill(psutil, pid, created)
    if os.path.basename(temp_dir.rstrip("/")).startswith("labelmill-ray-"):
        shutil.rmtree(temp_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
