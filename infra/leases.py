"""Leases: how runs and garbage collection see each other on any fsspec storage.

Object stores have no atomic locks, so nothing here excludes anybody: a process announces what
it is doing by a small file and others read the announcements before acting::

    OUT/leases/<kind>-<uuid>.json   {"kind", "lease_id", "host", "pid", "started_utc", "heartbeat_utc"}

:func:`hold_lease` writes the file, rewrites ``heartbeat_utc`` from a daemon thread every
``heartbeat_s`` seconds and removes the file on exit. A lease whose heartbeat is older than
``stale_after_s`` belongs to a crashed (or frozen) process: :func:`live_leases` ignores it and gc
may delete it (:func:`remove_stale_leases`).

Protocol (each side writes its own lease *before* looking for the other's, so of a run and a gc
starting together at least one sees the other):

* a run: ``with run_lease(out):`` holds a ``run`` lease, then waits for live ``gc`` leases to
  go (:func:`wait_for_no_gc`; a clear error naming the lease after ``wait_for_gc_s``);
* gc: holds a ``gc`` lease while deleting; after listing and before deleting it looks for live
  ``run`` leases and, when there is one, deletes only old committed version directories.

Freshness is judged by ``heartbeat_utc`` against the reader's clock: hosts' clocks must agree to
well within ``stale_after_s - heartbeat_s`` (defaults 300 s and 60 s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Iterator, Literal

from labelmill.infra import storage

log = logging.getLogger(__name__)

__all__ = [
    "LEASES_DIR",
    "LeaseKind",
    "Lease",
    "HeldLease",
    "LeaseBusyError",
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_STALE_AFTER_S",
    "hold_lease",
    "list_leases",
    "live_leases",
    "remove_stale_leases",
    "wait_for_no_gc",
    "run_lease",
]

LEASES_DIR = "leases"
LeaseKind = Literal["run", "gc"]
KINDS: tuple[str, ...] = ("run", "gc")
DEFAULT_HEARTBEAT_S = 60.0
DEFAULT_STALE_AFTER_S = 300.0
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class LeaseBusyError(RuntimeError):
    """Another process holds a live lease that this one may not proceed past."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime(_TIME_FORMAT)


def _parse_time(text: str) -> datetime.datetime:
    for pattern in (_TIME_FORMAT, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(text, pattern).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            continue
    raise ValueError(f"not a UTC time of the form 2025-03-01T14:15:02.123456Z: {text!r}")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"lease kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


@dataclasses.dataclass(frozen=True)
class Lease:
    """One lease file as read back."""

    kind: str
    lease_id: str
    host: str
    pid: int
    started_utc: str
    heartbeat_utc: str
    url: str  # the lease file

    def age_s(self, now: datetime.datetime | None = None) -> float:
        """Seconds since the last heartbeat (by the reader's clock)."""
        return ((now or _now()) - _parse_time(self.heartbeat_utc)).total_seconds()

    def is_live(self, stale_after_s: float = DEFAULT_STALE_AFTER_S, now: datetime.datetime | None = None) -> bool:
        return self.age_s(now) <= stale_after_s

    def describe(self) -> str:
        """``gc lease <url> (host h, pid 12, started ..., last heartbeat ...)``."""
        return (f"{self.kind} lease {self.url} (host {self.host}, pid {self.pid}, started {self.started_utc}, "
                f"last heartbeat {self.heartbeat_utc})")


def _leases_url(out_url: str) -> str:
    return storage.safe_join(out_url, LEASES_DIR)


class HeldLease:
    """A lease this process holds: its file is refreshed by a daemon thread until :meth:`release`."""

    def __init__(self, out_url: str, kind: str, *, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> None:
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0, got {heartbeat_s!r}")
        self.kind = _check_kind(kind)
        self.lease_id = uuid.uuid4().hex
        self.url = storage.safe_join(_leases_url(out_url), f"{kind}-{self.lease_id}.json")
        self.heartbeat_s = float(heartbeat_s)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_utc = _format_time(_now())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._released = False

    def _document(self) -> str:
        return json.dumps({"kind": self.kind, "lease_id": self.lease_id, "host": self.host, "pid": self.pid,
                           "started_utc": self.started_utc, "heartbeat_utc": _format_time(_now())},
                          sort_keys=True) + "\n"

    def refresh(self) -> None:
        """Rewrite the lease file with a new heartbeat (atomically)."""
        with self._lock:
            if not self._released:
                storage.write_text(self.url, self._document())

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; staleness tells the rest
                log.warning("could not refresh %s: %s: %s", self.url, type(exc).__name__, exc)

    def start(self) -> "HeldLease":
        self.refresh()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.kind}-{self.lease_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.heartbeat_s))
        with self._lock:
            self._released = True
            try:
                storage.remove(self.url)
            except FileNotFoundError:
                pass


@contextlib.contextmanager
def hold_lease(out_url: str, kind: LeaseKind, *, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> Iterator[HeldLease]:
    """Hold a ``kind`` lease on ``out_url`` for the ``with`` block (module docstring)."""
    lease = HeldLease(out_url, kind, heartbeat_s=heartbeat_s).start()
    try:
        yield lease
    finally:
        lease.release()


def _read_lease(fs, path: str, url: str) -> Lease | None:
    """The lease at ``path``; None when it is gone (released meanwhile) or not a lease file."""
    try:
        with fs.open(path, "rb") as handle:
            document = json.loads(handle.read().decode("utf-8"))
        _parse_time(document["heartbeat_utc"])
        return Lease(kind=str(document["kind"]), lease_id=str(document["lease_id"]), host=str(document["host"]),
                     pid=int(document["pid"]), started_utc=str(document["started_utc"]),
                     heartbeat_utc=str(document["heartbeat_utc"]), url=url)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s: not a lease file (%s: %s)", url, type(exc).__name__, exc)
        return None


def list_leases(out_url: str, kind: LeaseKind | None = None) -> list[Lease]:
    """Every readable lease under ``OUT/leases`` (of ``kind``, or all), live or stale, by file name."""
    if kind is not None:
        _check_kind(kind)
    base = _leases_url(out_url)
    fs, path = storage.filesystem(base)
    with contextlib.suppress(Exception):  # another process's lease must not hide behind a cached listing
        fs.invalidate_cache(path)
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    leases = []
    for entry in sorted(names):
        name = posixpath.basename(entry.rstrip("/"))
        if name.startswith(".") or not name.endswith(".json"):
            continue  # a temporary of an atomic write, or not ours
        if kind is not None and not name.startswith(f"{kind}-"):
            continue
        lease = _read_lease(fs, entry, storage.join(base, name))
        if lease is not None and (kind is None or lease.kind == kind):
            leases.append(lease)
    return leases


def live_leases(out_url: str, kind: LeaseKind | None = None, *, stale_after_s: float = DEFAULT_STALE_AFTER_S,
                exclude: str | None = None) -> list[Lease]:
    """Leases whose heartbeat is at most ``stale_after_s`` old; ``exclude``: a lease id to leave out (one's own)."""
    now = _now()
    return [lease for lease in list_leases(out_url, kind)
            if lease.is_live(stale_after_s, now) and lease.lease_id != exclude]


def remove_stale_leases(out_url: str, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> list[Lease]:
    """Delete the lease files of crashed processes; returns those deleted."""
    now = _now()
    stale = [lease for lease in list_leases(out_url) if not lease.is_live(stale_after_s, now)]
    for lease in stale:
        log.info("removing the stale %s", lease.describe())
        with contextlib.suppress(FileNotFoundError):
            storage.remove(lease.url)
    return stale


def wait_for_no_gc(out_url: str, timeout_s: float, *, poll_s: float = 5.0,
                   stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
    """Return once no live ``gc`` lease is on ``out_url``; LeaseBusyError naming it after ``timeout_s``.

    A run calls this *after* taking its own ``run`` lease (see :func:`run_lease`).
    """
    deadline = time.monotonic() + max(0.0, float(timeout_s))
    while True:
        busy = live_leases(out_url, "gc", stale_after_s=stale_after_s)
        if not busy:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise LeaseBusyError(
                f"garbage collection is running on {out_url}: {busy[0].describe()}; waited {timeout_s:g} s. "
                f"Retry when it has finished, or delete the lease file if that process is gone "
                f"(it is ignored by itself once its heartbeat is {stale_after_s:g} s old)")
        log.info("waiting for %s to finish", busy[0].describe())
        time.sleep(min(poll_s, left))


@contextlib.contextmanager
def run_lease(out_url: str, *, wait_for_gc_s: float = 600.0, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
              poll_s: float = 5.0, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> Iterator[HeldLease]:
    """What a run holds for its whole length: its ``run`` lease first, then no live ``gc`` lease."""
    with hold_lease(out_url, "run", heartbeat_s=heartbeat_s) as lease:
        wait_for_no_gc(out_url, wait_for_gc_s, poll_s=poll_s, stale_after_s=stale_after_s)
        yield lease
