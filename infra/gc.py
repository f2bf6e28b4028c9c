"""Garbage collection of an output root: old versions, unreferenced results and shards, leftovers.

:func:`plan_gc` lists (one listing per tree: ``versions/``, ``objects/``, each
``results/<stage>/``) and decides; :func:`apply_gc` deletes what a plan names. Kept: ``LATEST``
and the ``keep`` newest other committed versions (order: :func:`labelmill.infra.version_list.order_versions`).
Reachable: what a kept version references: the shard objects its ``shards.json`` lists
(``.tar`` and ``.json`` sidecar) and, for every result key in its ``results.parquet`` (and
``fits.json``), every file ``results/<stage>/<key[:2]>/<key>.*``. Removed, by category:

* ``versions``     the other committed version directories (``_SUCCESS`` first, so a gc stopped
                   half way leaves a version that reads as abandoned, never a broken committed one);
* ``uncommitted``  version directories without ``_SUCCESS`` (abandoned runs);
* ``results``      unreferenced result files (``.npz``/``.failed.json`` before a ``.tar``: a result
                   exists when its ``.npz`` does);
* ``objects``      unreferenced shard objects (sidecar before tar and index: a shard exists when its
                   sidecar does);
* ``temporaries``  atomic-write leftovers (``.<name>.tmp-<12 hex>``) older than an hour;
* ``leases``       lease files of crashed processes (:mod:`labelmill.infra.leases`).

Safety: when a kept version has no ``results.parquet`` (written by older code) no result is
deleted. While a live ``run`` lease exists (checked when planning and again, under the gc
lease, just before deleting) only ``versions`` and ``leases`` are removed: a running run may be
reusing results only an old version references, or writing ones nothing references yet.
:func:`apply_gc` refuses a plan when LATEST or the set of committed versions changed since it
was made (:class:`StalePlanError`: plan again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import posixpath
import re
import time
from typing import Any, Iterable, Iterator, Mapping

from labelmill.infra import storage
from labelmill.infra.dataset_version import LATEST, SUCCESS, VERSIONS_DIR, read_latest, read_manifest, read_stats, \
    version_url
from labelmill.infra.leases import DEFAULT_HEARTBEAT_S, DEFAULT_STALE_AFTER_S, HeldLease, Lease, LeaseBusyError, \
    hold_lease, list_leases, live_leases
from labelmill.infra.packing import INDEX_EXTENSION, SHARD_OBJECTS
from labelmill.infra.results import RESULTS_DIR
from labelmill.infra.version_list import committed_versions, modified_s, order_versions
from labelmill.infra.version_results import RESULTS_FILE, read_stage_keys

log = logging.getLogger(__name__)

__all__ = [
    "CATEGORIES",
    "TEMPORARY_MAX_AGE_S",
    "GcError",
    "MissingLatestError",
    "StalePlanError",
    "GcCategory",
    "GcPlan",
    "plan_gc",
    "apply_gc",
    "collect",
]

CATEGORIES = ("versions", "uncommitted", "results", "objects", "temporaries", "leases")
# Categories removed while a run holds a live lease.
_SAFE_DURING_RUN = ("versions", "leases")
TEMPORARY_MAX_AGE_S = 3600.0
FITS_FILE = "fits.json"  # written by pipelines.pose3d; infra must not import pipelines
_TEMPORARY = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")
_RESULT_NAME = re.compile(r"^([0-9a-f]+)\.(.+)$")
# Extensions whose presence says a result exists: deleted before the files stored beside them.
_RESULT_MARKERS = ("npz", "failed.json")
_BATCH = 1000


class GcError(RuntimeError):
    """The output root cannot be collected safely as it is (the message says why)."""


class MissingLatestError(GcError):
    """The output root has no LATEST, or LATEST names a version that is not committed."""


class StalePlanError(GcError):
    """LATEST or the committed versions changed since the plan was made: plan again."""


@dataclasses.dataclass
class GcCategory:
    """What one category removes: ``paths`` (storage paths: files, or directories for the version
    categories), how many files they hold and their bytes; ``held`` says why nothing is removed."""

    name: str
    paths: list[str] = dataclasses.field(default_factory=list)
    files: int = 0
    bytes: int = 0
    held: str | None = None
    markers: int = 0  # the first ``markers`` paths say "this exists": removed, in their own batches, before the rest

    def add(self, path: str, size: int, files: int = 1) -> None:
        self.paths.append(path)
        self.files += files
        self.bytes += int(size or 0)

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "mb": round(self.bytes / 2**20, 3), "held": self.held}


@dataclasses.dataclass
class GcPlan:
    """What gc would remove under ``out_url`` (see the module docstring)."""

    out_url: str
    keep: int
    latest: str
    committed: tuple[str, ...]  # every committed version when planned, oldest first
    kept: tuple[str, ...]
    removed_versions: tuple[str, ...]
    uncommitted_versions: tuple[str, ...]
    categories: dict[str, GcCategory]
    notes: list[str] = dataclasses.field(default_factory=list)
    run_leases: tuple[Lease, ...] = ()
    markers: list[str] = dataclasses.field(default_factory=list)  # _SUCCESS of removed versions: deleted first

    @property
    def files(self) -> int:
        return sum(c.files for c in self.categories.values())

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.categories.values())

    def hold_during_run(self, leases: Iterable[Lease]) -> "GcPlan":
        """This plan less what may not be removed while a run holds one of ``leases``."""
        leases = tuple(leases)
        held = _describe_runs(leases)
        categories = {name: (c if name in _SAFE_DURING_RUN or c.held
                             else GcCategory(name, held=held)) for name, c in self.categories.items()}
        note = f"{held}: only old committed versions and stale leases are removed"
        return dataclasses.replace(self, categories=categories, uncommitted_versions=(), run_leases=leases,
                                   notes=[*self.notes, note] if note not in self.notes else list(self.notes))

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": self.out_url, "keep": self.keep, "latest": self.latest, "kept": list(self.kept),
            "removed_versions": list(self.removed_versions), "uncommitted_versions": list(self.uncommitted_versions),
            "categories": {name: c.as_dict() for name, c in self.categories.items()},
            "files": self.files, "bytes": self.bytes, "mb": round(self.bytes / 2**20, 3), "notes": list(self.notes),
            "run_leases": [lease.describe() for lease in self.run_leases],
        }


def _describe_runs(leases: tuple[Lease, ...]) -> str:
    first = leases[0].describe() if leases else "a run lease"
    more = f" and {len(leases) - 1} more" if len(leases) > 1 else ""
    return f"a run is in progress ({first}{more})"


# ----------------------------------------------------------------------------- listing


def _find(fs: Any, path: str) -> dict[str, dict[str, Any]]:
    """``{path: info}`` of every file under ``path`` (one listing; {} when it does not exist)."""
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)
    try:
        found = fs.find(path, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}
    return {p: info for p, info in found.items() if info.get("type", "file") != "directory"}


def _children(fs: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Direct entries of ``path`` as (name, info); [] when it does not exist."""
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return [(posixpath.basename(e["name"].rstrip("/")), e) for e in entries]


def _relative(root: str, path: str) -> str:
    root = root.rstrip("/")
    path = path.rstrip("/")
    if not path.startswith(root + "/"):
        raise GcError(f"listed {path!r} lies outside the output root {root!r}")
    return path[len(root) + 1:]


def _is_old_temporary(name: str, info: Mapping[str, Any], now: float) -> bool:
    if not _TEMPORARY.match(name):
        return False
    written = modified_s(info)
    return written is not None and now - written > TEMPORARY_MAX_AGE_S


# ----------------------------------------------------------------------------- references


def _fits_keys(version: str) -> dict[str, set[str]]:
    """``{stage: keys}`` of the results a version's fits.json names (they are in results.parquet too)."""
    url = storage.safe_join(version, FITS_FILE)
    out: dict[str, set[str]] = {}
    if not storage.exists(url):
        return out
    for paths in json.loads(storage.read_text(url)).values():
        for relative in paths.values():
            parts = relative.split("/")
            if len(parts) == 4 and parts[0] == RESULTS_DIR:
                out.setdefault(parts[1], set()).add(parts[3].split(".", 1)[0])
    return out


def _shard_names(version: str) -> set[str]:
    """Names of the shared shard objects a version lists (none for a version with its own shards/)."""
    names = set()
    for entry in read_manifest(version) or ():
        path = str(entry["path"])
        if posixpath.dirname(path) == SHARD_OBJECTS:
            names.add(posixpath.basename(path).rsplit(".", 1)[0])
    return names


# ----------------------------------------------------------------------------- plan


def _choose_versions(out_url: str, keep: int, committed_at: Mapping[str, float | None]) -> tuple[str, list[str], list[str]]:
    """(LATEST, committed versions oldest first, kept versions)."""
    latest = read_latest(out_url)
    if latest is None:
        raise MissingLatestError(f"{out_url} has no {LATEST}: no version was committed there, nothing to collect against")
    if latest not in committed_at:
        raise MissingLatestError(f"{out_url}: {LATEST} names {latest}, but {VERSIONS_DIR}/{latest} has no {SUCCESS}; "
                      "refusing to collect (repair LATEST first)")
    created = {v: read_stats(version_url(out_url, v)).get("created_utc") for v in committed_at}
    order = order_versions(created, committed_at)
    others = [v for v in order if v != latest]
    kept_others = others[len(others) - keep:] if keep > 0 else []
    kept = [v for v in order if v == latest or v in kept_others]
    return latest, order, kept


def plan_gc(out_url: str, keep: int, *, stale_after_s: float = DEFAULT_STALE_AFTER_S,
            now: float | None = None) -> GcPlan:
    """What gc would remove under ``out_url`` keeping LATEST and the ``keep`` newest other versions.

    Reads only: listings, the kept versions' small files, the lease files. Raises GcError when
    there is no LATEST (or it is not committed).
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep must be an integer >= 0, got {keep!r}")
    out_url = out_url.rstrip("/")
    now = time.time() if now is None else now
    fs, root = storage.filesystem(out_url)
    committed_at = committed_versions(out_url)
    latest, order, kept = _choose_versions(out_url, keep, committed_at)
    categories = {name: GcCategory(name) for name in CATEGORIES}
    notes: list[str] = []

    # a run already in progress: results, objects and leftovers are not even listed
    runs = live_leases(out_url, "run", stale_after_s=stale_after_s)
    removed = [v for v in order if v not in kept]
    uncommitted = _plan_versions(fs, root, committed_at, removed, categories, now)
    if not runs:
        _plan_references(fs, root, out_url, kept, categories, notes, now)
        _plan_top_temporaries(fs, root, categories, now)
    for lease in list_leases(out_url):
        if not lease.is_live(stale_after_s):
            _, path = storage.filesystem(lease.url)
            categories["leases"].add(path, 0)

    plan = GcPlan(out_url=out_url, keep=keep, latest=latest, committed=tuple(order), kept=tuple(kept),
                  removed_versions=tuple(removed), uncommitted_versions=tuple(uncommitted), categories=categories,
                  notes=notes, markers=[posixpath.join(_versions_root(root), v, SUCCESS) for v in removed])
    runs = runs or live_leases(out_url, "run", stale_after_s=stale_after_s)  # again, after listing
    return plan.hold_during_run(runs) if runs else plan


def _plan_references(fs: Any, root: str, out_url: str, kept: list[str], categories: dict[str, GcCategory],
                     notes: list[str], now: float) -> None:
    """Read what the kept versions reference; fill ``results`` and ``objects`` with the rest."""
    shard_names: set[str] = set()
    result_keys: dict[str, set[str]] | None = {}
    for version_id in kept:
        url = version_url(out_url, version_id)
        shard_names |= _shard_names(url)
        keys = read_stage_keys(url)
        if keys is None:
            result_keys = None
            notes.append(f"kept version {version_id} has no {RESULTS_FILE} (written by older code): "
                         "no result is deleted")
        elif result_keys is not None:
            for stage, found in (*keys.items(), *_fits_keys(url).items()):
                result_keys.setdefault(stage, set()).update(found)
    if result_keys is None:
        categories["results"].held = f"a kept version has no {RESULTS_FILE}"
        _plan_temporaries_only(fs, root, RESULTS_DIR, categories, now)
    else:
        _plan_results(fs, root, result_keys, categories, now)
    _plan_objects(fs, root, shard_names, categories, now)


def _versions_root(root: str) -> str:
    return posixpath.join(root, VERSIONS_DIR)


def _plan_versions(fs: Any, root: str, committed_at: Mapping[str, float | None], removed: list[str],
                   categories: dict[str, GcCategory], now: float) -> list[str]:
    """Fill ``versions`` / ``uncommitted`` / version temporaries; returns the uncommitted ids."""
    base = _versions_root(root)
    sizes: dict[str, list[int]] = {}
    for path, info in _find(fs, base).items():
        version_id, _, inner = _relative(base, path).partition("/")
        if not inner:  # a file directly under versions/: only an old temporary is ours to remove
            if _is_old_temporary(version_id, info, now):
                categories["temporaries"].add(path, info.get("size") or 0)
            continue
        sizes.setdefault(version_id, []).append(int(info.get("size") or 0))
        if version_id in committed_at and version_id not in removed \
                and _is_old_temporary(posixpath.basename(inner), info, now):
            categories["temporaries"].add(path, info.get("size") or 0)
    directories = {name for name, info in _children(fs, base) if info.get("type") == "directory"} | set(sizes)
    uncommitted = sorted(d for d in directories if d not in committed_at and not _TEMPORARY.match(d))
    for version_id in removed:
        categories["versions"].add(posixpath.join(base, version_id), sum(sizes.get(version_id, ())),
                                   files=len(sizes.get(version_id, ())))
    for version_id in uncommitted:
        categories["uncommitted"].add(posixpath.join(base, version_id), sum(sizes.get(version_id, ())),
                                      files=len(sizes.get(version_id, ())))
    return uncommitted


def _plan_results(fs: Any, root: str, reachable: Mapping[str, set[str]], categories: dict[str, GcCategory],
                  now: float) -> None:
    """Unreferenced result files, one listing per stage directory."""
    base = posixpath.join(root, RESULTS_DIR)
    markers: list[tuple[str, int]] = []
    others: list[tuple[str, int]] = []
    for stage, info in _children(fs, base):
        if info.get("type") != "directory":
            if _is_old_temporary(stage, info, now):
                categories["temporaries"].add(info["name"], info.get("size") or 0)
            continue
        keys = reachable.get(stage, set())
        for path, detail in _find(fs, posixpath.join(base, stage)).items():
            parts = _relative(base, path).split("/")
            name = parts[-1]
            if _TEMPORARY.match(name):
                if _is_old_temporary(name, detail, now):
                    categories["temporaries"].add(path, detail.get("size") or 0)
                continue
            match = _RESULT_NAME.match(name)
            if len(parts) != 3 or match is None or parts[1] != match.group(1)[:2]:
                log.debug("gc: leaving %s alone: not a stage result", path)
                continue
            if match.group(1) in keys:
                continue
            (markers if match.group(2) in _RESULT_MARKERS else others).append((path, int(detail.get("size") or 0)))
    for path, size in (*markers, *others):
        categories["results"].add(path, size)
    categories["results"].markers = len(markers)


def _plan_temporaries_only(fs: Any, root: str, tree: str, categories: dict[str, GcCategory], now: float) -> None:
    for path, info in _find(fs, posixpath.join(root, tree)).items():
        if _is_old_temporary(posixpath.basename(path), info, now):
            categories["temporaries"].add(path, info.get("size") or 0)


def _plan_objects(fs: Any, root: str, reachable: set[str], categories: dict[str, GcCategory], now: float) -> None:
    """Unreferenced shard objects (sidecars listed before their tars and index objects)."""
    shards_root = posixpath.join(root, SHARD_OBJECTS)
    sidecars: list[tuple[str, int]] = []
    tars: list[tuple[str, int]] = []
    for path, info in _find(fs, posixpath.join(root, SHARD_OBJECTS.split("/")[0])).items():
        name = posixpath.basename(path)
        if _TEMPORARY.match(name):
            if _is_old_temporary(name, info, now):
                categories["temporaries"].add(path, info.get("size") or 0)
            continue
        if posixpath.dirname(path.rstrip("/")) != shards_root:
            continue
        stem, _, extension = name.partition(".")
        if extension not in ("json", "tar", INDEX_EXTENSION) or not stem or stem in reachable:
            continue
        (sidecars if extension == "json" else tars).append((path, int(info.get("size") or 0)))
    for path, size in (*sidecars, *tars):
        categories["objects"].add(path, size)
    categories["objects"].markers = len(sidecars)


def _plan_top_temporaries(fs: Any, root: str, categories: dict[str, GcCategory], now: float) -> None:
    """Leftovers beside LATEST (``.LATEST.tmp-...``) and in ``leases/``."""
    for name, info in _children(fs, root):
        if info.get("type") != "directory" and _is_old_temporary(name, info, now):
            categories["temporaries"].add(info["name"], info.get("size") or 0)
    _plan_temporaries_only(fs, root, "leases", categories, now)


# ----------------------------------------------------------------------------- apply


def _batches(paths: list[str], size: int = _BATCH) -> Iterator[list[str]]:
    for start in range(0, len(paths), size):
        yield paths[start:start + size]


def _remove(fs: Any, paths: list[str], *, recursive: bool = False) -> None:
    """Delete ``paths`` in batches; a path already gone is skipped."""
    for batch in _batches(paths):
        try:
            fs.rm(batch, recursive=recursive)
        except FileNotFoundError:
            for path in batch:  # some were gone (deleted meanwhile): one by one, skipping those
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(path, recursive=recursive)


def apply_gc(plan: GcPlan, *, lease: HeldLease | None = None, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
             stale_after_s: float = DEFAULT_STALE_AFTER_S) -> GcPlan:
    """Delete what ``plan`` names, holding a ``gc`` lease (``lease``: one already held); returns what
    was removed (``plan``, or less of it when a run started since the plan was made).

    Raises LeaseBusyError when another gc is live, StalePlanError when versions changed since the plan.
    """
    if lease is None:
        with hold_lease(plan.out_url, "gc", heartbeat_s=heartbeat_s) as held:
            return apply_gc(plan, lease=held, stale_after_s=stale_after_s)
    others = live_leases(plan.out_url, "gc", stale_after_s=stale_after_s, exclude=lease.lease_id)
    if others:
        raise LeaseBusyError(f"another garbage collection is running on {plan.out_url}: {others[0].describe()}")
    if read_latest(plan.out_url) != plan.latest or set(committed_versions(plan.out_url)) != set(plan.committed):
        raise StalePlanError(f"{plan.out_url}: LATEST or the committed versions changed since the gc plan was made "
                             "(a run committed meanwhile): plan again")
    runs = live_leases(plan.out_url, "run", stale_after_s=stale_after_s)  # under our lease, before deleting
    if runs:
        plan = plan.hold_during_run(runs)
    fs, _ = storage.filesystem(plan.out_url)
    if plan.categories["versions"].paths:
        _remove(fs, plan.markers)  # a half-deleted version then reads as abandoned
    for name in CATEGORIES:
        category = plan.categories[name]
        if category.paths:
            log.info("gc: removing %d %s (%d files, %.1f MB)", len(category.paths), name, category.files,
                     category.bytes / 2**20)
            recursive = name in ("versions", "uncommitted")
            _remove(fs, category.paths[:category.markers], recursive=recursive)
            _remove(fs, category.paths[category.markers:], recursive=recursive)
    return plan


def collect(out_url: str, keep: int, *, dry_run: bool = False, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
            stale_after_s: float = DEFAULT_STALE_AFTER_S, attempts: int = 3) -> GcPlan:
    """Plan and (unless ``dry_run``) apply under one ``gc`` lease; a plan gone stale is made again."""
    if dry_run:
        return plan_gc(out_url, keep, stale_after_s=stale_after_s)
    with hold_lease(out_url, "gc", heartbeat_s=heartbeat_s) as lease:
        for attempt in range(1, attempts + 1):
            plan = plan_gc(out_url, keep, stale_after_s=stale_after_s)
            try:
                return apply_gc(plan, lease=lease, stale_after_s=stale_after_s)
            except StalePlanError:
                if attempt == attempts:
                    raise
                log.info("gc: versions changed while planning; planning again (%d/%d)", attempt + 1, attempts)
    raise AssertionError("unreachable")
