"""The committed versions of an output root, oldest first, with their funnels and config diffs.

Order: ``stats.json`` ``created_utc`` (whole seconds), then the time ``_SUCCESS`` was written
(from the listing, where the storage reports one: two versions committed within one second),
then the id. The same order decides which versions gc keeps (:mod:`labelmill.infra.gc`).

Config diff: both ``config.yaml`` files are parsed with ``yaml.safe_load``; the
``# fingerprints`` comment block the run appends (``# code: c3cb8bbd94994bfe`` lines) is parsed
into ``fingerprints.<name>`` keys; both are flattened to dotted keys and compared: changed
(old -> new), added, removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import posixpath
from typing import Any, Iterable, Mapping

import yaml

from labelmill.infra import storage
from labelmill.infra.dataset_version import CONFIG_FILE, SUCCESS, VERSIONS_DIR, read_latest, read_stats, version_url

__all__ = [
    "KeyChange",
    "VersionSummary",
    "modified_s",
    "order_versions",
    "committed_versions",
    "parse_config",
    "flatten",
    "diff_configs",
    "list_version_summaries",
]

FINGERPRINTS_HEADER = "# fingerprints"
FINGERPRINTS_PREFIX = "fingerprints"
_MISSING = object()


def modified_s(info: Mapping[str, Any]) -> float | None:
    """POSIX seconds a listed file was last written, from an fsspec ``info`` dict (None: not reported)."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created", "ctime"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)).timestamp()
    return None


def committed_versions(out_url: str) -> dict[str, float | None]:
    """``{version id: time its _SUCCESS was written (or None)}`` from one listing of ``OUT/versions``."""
    base = storage.safe_join(out_url, VERSIONS_DIR)
    fs, path = storage.filesystem(base)
    with contextlib.suppress(Exception):  # versions committed by another process must be seen
        fs.invalidate_cache(path)
    try:
        found = fs.glob(posixpath.join(path, "*", SUCCESS), detail=True)
    except FileNotFoundError:
        return {}
    return {name.rstrip("/").rsplit("/", 2)[-2]: modified_s(info) for name, info in found.items()
            if info.get("type", "file") == "file"}


def order_versions(created: Mapping[str, str | None], committed_at: Mapping[str, float | None]) -> list[str]:
    """Version ids oldest first by (``created_utc``, ``_SUCCESS`` time, id); unknown times sort first."""
    def sort_key(version_id: str) -> tuple[str, float, str]:
        stamp = committed_at.get(version_id)
        return (created.get(version_id) or "", -1.0 if stamp is None else stamp, version_id)

    return sorted(created, key=sort_key)


@dataclasses.dataclass(frozen=True)
class KeyChange:
    """One dotted config key that differs: ``old``/``new`` are None where the key is absent."""

    key: str
    kind: str  # "changed" | "added" | "removed"
    old: Any = None
    new: Any = None

    def __str__(self) -> str:
        if self.kind == "added":
            return f"+ {self.key}: {_show(self.new)}"
        if self.kind == "removed":
            return f"- {self.key}: {_show(self.old)}"
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()


def parse_config(text: str, *, where: str = "config.yaml") -> dict[str, Any]:
    """A version's config.yaml as a mapping, with its ``# fingerprints`` block under ``fingerprints``."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML: {exc}") from exc
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ValueError(f"{where}: expected a mapping at the top, got a {type(document).__name__}")
    fingerprints: dict[str, str] = {}
    in_block = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == FINGERPRINTS_HEADER:
            in_block = True
            continue
        if in_block:
            if not stripped.startswith("#"):
                if stripped:
                    in_block = False
                continue
            name, sep, value = stripped.lstrip("#").strip().partition(":")
            if sep and name.strip():
                fingerprints[name.strip()] = value.strip()
    if fingerprints:
        if FINGERPRINTS_PREFIX in document:
            raise ValueError(f"{where}: has both a '{FINGERPRINTS_PREFIX}' key and a '{FINGERPRINTS_HEADER}' block")
        document[FINGERPRINTS_PREFIX] = fingerprints
    return document


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``; lists and scalars are leaves; an empty mapping is a leaf ``{}``."""
    if isinstance(value, Mapping) and (value or not prefix):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def diff_configs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[KeyChange]:
    """Keys of ``new`` that differ from ``old`` (None: no previous version, no diff), sorted by key."""
    if old is None:
        return []
    before, after = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        was, now = before.get(key, _MISSING), after.get(key, _MISSING)
        if was is _MISSING:
            changes.append(KeyChange(key, "added", new=now))
        elif now is _MISSING:
            changes.append(KeyChange(key, "removed", old=was))
        elif was != now or type(was) is not type(now):
            changes.append(KeyChange(key, "changed", old=was, new=now))
    return changes


@dataclasses.dataclass(frozen=True)
class VersionSummary:
    """One committed version: when, whether LATEST, its funnel and what changed since the one before."""

    version_id: str
    created_utc: str | None
    is_latest: bool
    inputs: Mapping[str, int]  # in, written, filtered, failed
    frames: Mapping[str, int]  # in, kept
    samples: int | None
    shards: int | None
    previous: str | None
    changes: tuple[KeyChange, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version_id, "created_utc": self.created_utc, "latest": self.is_latest,
                "inputs": dict(self.inputs), "frames": dict(self.frames), "samples": self.samples,
                "shards": self.shards, "previous": self.previous, "changes": [c.as_dict() for c in self.changes]}


def _funnel(stats: Mapping[str, Any], section: str, names: Iterable[str]) -> dict[str, int]:
    values = stats.get(section) or {}
    return {name: values[name] for name in names if name in values}


def list_version_summaries(out_url: str) -> list[VersionSummary]:
    """Every committed version under ``out_url``, oldest first (module docstring for the order)."""
    committed = committed_versions(out_url)
    latest = read_latest(out_url)
    stats = {v: read_stats(version_url(out_url, v)) for v in committed}
    order = order_versions({v: s.get("created_utc") for v, s in stats.items()}, committed)
    summaries: list[VersionSummary] = []
    previous_config: dict[str, Any] | None = None
    previous: str | None = None
    for version_id in order:
        url = storage.safe_join(version_url(out_url, version_id), CONFIG_FILE)
        config = parse_config(storage.read_text(url), where=url) if storage.exists(url) else {}
        document = stats[version_id]
        summaries.append(VersionSummary(
            version_id=version_id,
            created_utc=document.get("created_utc"),
            is_latest=version_id == latest,
            inputs=_funnel(document, "inputs", ("in", "written", "filtered", "failed")),
            frames=_funnel(document, "frames", ("in", "kept")),
            samples=document.get("samples"),
            shards=document.get("shards"),
            previous=previous,
            changes=tuple(diff_configs(previous_config, config)),
        ))
        previous_config, previous = config, version_id
    return summaries
