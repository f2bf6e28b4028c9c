"""Peak resident memory of a process tree (a driver plus its Ray workers, raylet, Beam workers...).

    with TreeMemorySampler(root_pid=child.pid, interval_s=0.05) as sampler:
        child.wait()
    sampler.report.peak_rss_bytes        # max over samples of the SUM of RSS over the tree
    sampler.report.processes[0]          # the process with the largest RSS of its own

A background thread reads Linux ``/proc`` every ``interval_s``: the process table (``/proc/<pid>/stat``:
parent pid, start time, name) to find the root's descendants, then ``/proc/<pid>/statm`` of each
member (``resident`` pages = ``VmRSS`` of ``/proc/<pid>/status``; ``resident - shared`` = ``RssAnon``).
A process once seen in the tree stays a member until it exits, even if it is re-parented (a
daemonising child, a worker whose parent died), so nothing escapes by a double fork. A pid is
identified together with its start time, so a recycled pid is not mistaken for a member.

Figures:

* ``peak_rss_bytes``: the largest sum of RSS over the tree at one sample. RSS counts shared pages
  (shared libraries, Ray's shared-memory object store) in every process that maps them, so the
  sum overstates what the tree takes from the machine when processes share a lot.
* ``peak_anon_bytes``: the largest sum of anonymous (private heap/stack) resident memory; shared
  file and shared-memory pages are left out, so it does not double count them.
* ``processes``: per process, the largest RSS it had at any sample.

Sampling misses spikes shorter than the interval; the peaks are lower bounds.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ProcessPeak",
    "MemoryReport",
    "TreeMemorySampler",
    "ProcessInfo",
    "process_table",
    "tree_members",
    "process_memory",
]

_PROC = "/proc"
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MB = 1024 * 1024

# A process is identified by (pid, start time in clock ticks since boot): pids are recycled.
ProcessId = tuple[int, int]


@dataclass(frozen=True)
class ProcessInfo:
    """One row of the process table."""

    pid: int
    parent_pid: int
    start_ticks: int  # start time in clock ticks after boot (field 22 of /proc/<pid>/stat)
    name: str  # the kernel's short name (comm; 15 characters; Ray's "ray::<task>" titles)


def _read_stat(pid: int) -> ProcessInfo | None:
    """The process's row from ``/proc/<pid>/stat``; None when it has gone."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (name) state ppid ..."; the name may itself hold spaces and parentheses.
    open_paren, close_paren = text.find("("), text.rfind(")")
    if open_paren < 0 or close_paren < 0:
        return None
    rest = text[close_paren + 2 :].split()
    try:
        return ProcessInfo(pid=pid, parent_pid=int(rest[1]), start_ticks=int(rest[19]),
                           name=text[open_paren + 1 : close_paren])
    except (IndexError, ValueError):
        return None


def process_table() -> dict[int, ProcessInfo]:
    """Every process visible in ``/proc``: pid -> :class:`ProcessInfo`."""
    table: dict[int, ProcessInfo] = {}
    for entry in os.listdir(_PROC):
        if entry.isdigit():
            info = _read_stat(int(entry))
            if info is not None:
                table[info.pid] = info
    return table


def tree_members(
    table: dict[int, ProcessInfo], root_pid: int, *, known: "set[ProcessId] | frozenset[ProcessId]" = frozenset()
) -> list[ProcessInfo]:
    """``root_pid`` and all its descendants in ``table``, plus still-running processes in ``known``.

    ``known`` holds (pid, start ticks) of earlier members, so re-parented processes stay in.
    """
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.parent_pid, []).append(info.pid)
    members: dict[int, ProcessInfo] = {}
    pending = [root_pid] + [pid for pid, ticks in known if pid in table and table[pid].start_ticks == ticks]
    while pending:
        pid = pending.pop()
        if pid in members or pid not in table:
            continue
        members[pid] = table[pid]
        pending.extend(children.get(pid, ()))
    return list(members.values())


def process_memory(pid: int) -> tuple[int, int] | None:
    """(resident bytes, anonymous resident bytes) of one process; None when it has gone.

    From ``/proc/<pid>/statm``: ``resident`` is ``VmRSS``; ``resident - shared`` is ``RssAnon``
    (``shared`` counts file-backed and shared-memory pages).
    """
    try:
        with open(f"{_PROC}/{pid}/statm", "rb") as handle:
            fields = handle.read().split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        resident, shared = int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        return None
    return resident * _PAGE_BYTES, max(resident - shared, 0) * _PAGE_BYTES


@dataclass
class ProcessPeak:
    """The largest RSS one process of the tree had at any sample."""

    pid: int
    name: str  # the process's name at that sample (Ray renames its workers per task)
    peak_rss_bytes: int = 0
    peak_anon_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "peak_rss_mb": round(self.peak_rss_bytes / _MB, 1),
                "peak_anon_mb": round(self.peak_anon_bytes / _MB, 1)}


@dataclass
class MemoryReport:
    """What a :class:`TreeMemorySampler` saw (bytes; ``as_dict`` gives MiB)."""

    peak_rss_bytes: int = 0  # max over samples of the sum of RSS over the tree
    peak_anon_bytes: int = 0  # max over samples of the sum of anonymous RSS over the tree
    samples: int = 0  # samples taken
    seconds: float = 0.0  # time from start to stop
    max_processes: int = 0  # most tree members alive at one sample
    processes: list[ProcessPeak] = field(default_factory=list)  # every member seen, largest peak RSS first
    root_peak_rss_bytes: int = 0  # the root process alone (a pipeline's driver)

    @property
    def max_process_rss_bytes(self) -> int:
        """The largest RSS of a single process of the tree."""
        return self.processes[0].peak_rss_bytes if self.processes else 0

    def as_dict(self, *, top: int = 5) -> dict[str, Any]:
        """MiB figures and the ``top`` processes by peak RSS."""
        return {
            "peak_rss_mb": round(self.peak_rss_bytes / _MB, 1),
            "peak_anon_mb": round(self.peak_anon_bytes / _MB, 1),
            "max_process_rss_mb": round(self.max_process_rss_bytes / _MB, 1),
            "root_peak_rss_mb": round(self.root_peak_rss_bytes / _MB, 1),
            "max_processes": self.max_processes,
            "processes_seen": len(self.processes),
            "samples": self.samples,
            "top_processes": [p.as_dict() for p in self.processes[:top]],
        }


class TreeMemorySampler:
    """Samples the resident memory of a process and (by default) all its descendants in a thread.

    ``root_pid``: the process to watch (default: this one). ``descendants``: False watches the
    root alone (a single-process measurement). ``interval_s``: time between samples. Use as a
    context manager or call :meth:`start` and :meth:`stop`; the report is ``self.report``.
    Linux only (reads ``/proc``).
    """

    def __init__(self, *, root_pid: int | None = None, descendants: bool = True, interval_s: float = 0.05) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s!r}")
        if not os.path.isdir(_PROC):
            raise RuntimeError(f"TreeMemorySampler reads {_PROC}, which this system does not have (Linux only)")
        self.root_pid = os.getpid() if root_pid is None else int(root_pid)
        self.descendants = descendants
        self.interval_s = float(interval_s)
        self.report = MemoryReport()
        self._known: set[ProcessId] = set()
        self._peaks: dict[ProcessId, ProcessPeak] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def sample(self) -> tuple[int, int]:
        """Take one sample now; returns the tree's (RSS, anonymous RSS) sums in bytes."""
        if self.descendants:
            members = tree_members(process_table(), self.root_pid, known=self._known)
        else:
            info = _read_stat(self.root_pid)
            members = [info] if info is not None else []
        total_rss = total_anon = alive = 0
        with self._lock:
            for info in members:
                memory = process_memory(info.pid)
                if memory is None:
                    continue
                rss, anon = memory
                alive += 1
                total_rss += rss
                total_anon += anon
                ident = (info.pid, info.start_ticks)
                self._known.add(ident)
                peak = self._peaks.setdefault(ident, ProcessPeak(pid=info.pid, name=info.name))
                if rss > peak.peak_rss_bytes:
                    peak.peak_rss_bytes, peak.name = rss, info.name
                peak.peak_anon_bytes = max(peak.peak_anon_bytes, anon)
                if info.pid == self.root_pid:
                    self.report.root_peak_rss_bytes = max(self.report.root_peak_rss_bytes, rss)
            report = self.report
            report.samples += 1
            report.peak_rss_bytes = max(report.peak_rss_bytes, total_rss)
            report.peak_anon_bytes = max(report.peak_anon_bytes, total_anon)
            report.max_processes = max(report.max_processes, alive)
            report.processes = sorted(self._peaks.values(), key=lambda p: p.peak_rss_bytes, reverse=True)
            report.seconds = time.perf_counter() - self._started if self._started else 0.0
        return total_rss, total_anon

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> "TreeMemorySampler":
        """Take a first sample and start the sampling thread."""
        if self._thread is not None:
            raise RuntimeError("this TreeMemorySampler has already been started")
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name=f"memory-sampler-{self.root_pid}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemoryReport:
        """Stop the thread after a last sample; returns the report."""
        if self._thread is None:
            raise RuntimeError("this TreeMemorySampler was never started")
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.report

    def __enter__(self) -> "TreeMemorySampler":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
