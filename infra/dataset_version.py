"""Dataset versions on any fsspec URL: layout, atomic commit, ``_SUCCESS``, ``LATEST``; readers.

Layout (DESIGN §2)::

    OUT/LATEST                          text: id of the newest committed version
    OUT/versions/<id>/shards/*.tar       WebDataset shards (infra/formats/shards.py)
    OUT/versions/<id>/index.parquet      one row per sample, sorted by key
    OUT/versions/<id>/inputs.parquet     one row per input item, sorted by input_key
    OUT/versions/<id>/stats.json         funnel counts and per-stage throughput
    OUT/versions/<id>/config.yaml        resolved config + code/model fingerprints
    OUT/versions/<id>/_SUCCESS           written last: the version is complete; lists every other
                                         file of the version with its size and sha256

:class:`DatasetVersionWriter` is a context manager. Samples given to :meth:`~DatasetVersionWriter.add_samples`
are spooled to a local temporary file and written at :meth:`~DatasetVersionWriter.commit` in
sorted key order, so the shards do not depend on the order samples arrived in. Every file is
written atomically (temporary name, then rename); ``_SUCCESS`` comes after every other file and
``LATEST`` after ``_SUCCESS``. An exception inside the ``with`` block writes neither, so a
version without ``_SUCCESS`` never becomes LATEST. Every path is built with
:func:`labelmill.infra.storage.safe_join` under the output root.

Default version ids are ``<UTC time %Y%m%dT%H%M%SZ>-<first 8 hex digits of sha256(config.yaml)>``,
e.g. ``20250301T141502Z-3fa2c19b``: they sort by time and tell configs apart at a glance.

Checksums: the writer hashes every file of the version as it writes it, and ``_SUCCESS`` lists
them (:func:`success_text`), so a version is committed exactly when its checksums are. Every
index row records the sha256 of each of its sample's members (``member_sha256``,
:func:`member_sha256_json`); a shared shard's sha256 and its index object's are in
``shards.json``. ``labelmill validate`` checks them all (infra/validate.py).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import re
import tarfile
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labelmill.infra import storage
from labelmill.infra.schema import INPUT_STATUSES, WRITER_INDEX_COLUMNS, DatasetSchema, load_schema
from labelmill.infra.formats.shards import (
    Sample,
    ShardConfig,
    member_key,
    members_tar_size,
    plan_shards,
    sample_key_from_member,
    sample_tar_size,
    split_member_name,
    write_tar,
)

log = logging.getLogger(__name__)

__all__ = [
    "iter_shard_samples",
    "LATEST",
    "SUCCESS",
    "VERSIONS_DIR",
    "SHARDS_DIR",
    "INDEX_FILE",
    "INPUTS_FILE",
    "STATS_FILE",
    "CONFIG_FILE",
    "VersionRef",
    "DatasetVersionWriter",
    "make_version_id",
    "version_url",
    "read_latest",
    "list_versions",
    "resolve_version",
    "shard_urls",
    "read_manifest",
    "MANIFEST_FILE",
    "read_index",
    "read_inputs",
    "read_stats",
    "parquet_bytes",
    "member_sha256_json",
    "success_text",
    "HashingWriter",
]

LATEST = "LATEST"
SUCCESS = "_SUCCESS"
VERSIONS_DIR = "versions"
SHARDS_DIR = "shards"
INDEX_FILE = "index.parquet"
INPUTS_FILE = "inputs.parquet"
STATS_FILE = "stats.json"
CONFIG_FILE = "config.yaml"
# A version whose shards live in the store shared by versions (OUT/objects/shards) lists them here.
MANIFEST_FILE = "shards.json"

_VERSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INDEX_ROW_GROUP = 65536  # rows per row group of an index streamed from shard index objects
_INDEX_PREFETCH = 8  # shard index objects read ahead while streaming the index
_PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "write_statistics": True}
# stats.json keys the writer computes; caller stats may not override them.
_COMPUTED_STATS = ("schema", "version", "created_utc", "inputs", "input_reasons", "frames", "frame_reasons",
                   "samples", "shards", "bytes")


# ----------------------------------------------------------------------------- layout helpers


def _check_version_id(version_id: str) -> str:
    if not isinstance(version_id, str) or not _VERSION_ID_RE.match(version_id) or ".." in version_id:
        raise ValueError(
            f"version id must be 1-128 characters of letters, digits, '.', '_', '-' (no '..'), got {version_id!r}"
        )
    return version_id


def make_version_id(config_yaml: str, *, now: datetime.datetime | None = None) -> str:
    """``<UTC %Y%m%dT%H%M%SZ>-<sha256(config_yaml)[:8]>``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is not None:
        now = now.astimezone(datetime.timezone.utc)
    digest = hashlib.sha256(config_yaml.encode("utf-8")).hexdigest()[:8]
    return f"{now:%Y%m%dT%H%M%SZ}-{digest}"


def version_url(out_url: str, version_id: str) -> str:
    """``OUT/versions/<id>``."""
    return storage.safe_join(out_url, f"{VERSIONS_DIR}/{_check_version_id(version_id)}")


def read_latest(out_url: str) -> str | None:
    """The id in ``OUT/LATEST``, or None when there is none."""
    url = storage.safe_join(out_url, LATEST)
    if not storage.exists(url):
        return None
    return storage.read_text(url).strip() or None


def list_versions(out_url: str, *, committed_only: bool = True) -> list[str]:
    """Version ids under ``OUT/versions`` (sorted; by default only those with ``_SUCCESS``)."""
    markers = storage.list_files(storage.safe_join(out_url, VERSIONS_DIR), f"*/{SUCCESS}") if committed_only else None
    if markers is not None:
        return sorted(m.rstrip("/").rsplit("/", 2)[-2] for m in markers)
    fs, path = storage.filesystem(storage.safe_join(out_url, VERSIONS_DIR))
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p))


@dataclasses.dataclass(frozen=True)
class VersionRef:
    """Where a version lives; ``out_url`` is None when a version directory was named directly."""

    out_url: str | None
    version_id: str
    url: str


def resolve_version(url: str) -> VersionRef:
    """Resolve an output root (through ``LATEST``) or a version directory.

    Raises FileNotFoundError when ``url`` is neither.
    """
    url = url.rstrip("/")
    latest = read_latest(url)
    if latest is not None:
        return VersionRef(url, latest, version_url(url, latest))
    head, _, tail = url.rpartition("/")
    if head.endswith("/" + VERSIONS_DIR) or head == VERSIONS_DIR:
        out = head[: -len(VERSIONS_DIR) - 1] if head != VERSIONS_DIR else "."
        if storage.exists(url):
            return VersionRef(out, tail, url)
    if any(storage.exists(storage.safe_join(url, name)) for name in (SUCCESS, INDEX_FILE, SHARDS_DIR, STATS_FILE)):
        return VersionRef(None, tail, url)
    if storage.exists(storage.safe_join(url, VERSIONS_DIR)):
        raise FileNotFoundError(f"{url} has {VERSIONS_DIR}/ but no {LATEST}: no version was committed there")
    raise FileNotFoundError(f"{url} is neither an output root with {LATEST} nor a dataset version directory")


def read_manifest(version: str) -> list[dict[str, Any]] | None:
    """The shared shards a version lists (``shards.json``), or None for a version with its own shards/."""
    url = storage.safe_join(version, MANIFEST_FILE)
    if not storage.exists(url):
        return None
    return list(json.loads(storage.read_text(url))["shards"])


def _out_root(version: str) -> str:
    return version.rstrip("/").rsplit("/", 2)[0]


def shard_urls(version: str) -> list[str]:
    """URLs of the ``.tar`` shards of a version (a version directory or an output root with LATEST).

    A version with a manifest names shards in ``OUT/objects/shards`` (in key order); otherwise
    its own ``shards/*.tar`` (sorted).
    """
    if read_latest(version) is not None:
        version = resolve_version(version).url
    manifest = read_manifest(version)
    if manifest is not None:
        root = _out_root(version)
        return [storage.safe_join(root, entry["path"]) for entry in manifest]
    return storage.list_files(storage.safe_join(version, SHARDS_DIR), "*.tar")


def iter_shard_samples(version: str) -> Iterator[tuple[str, str, dict[str, tuple[int, bytes]]]]:
    """``(shard URL, sample key, {extension: (data offset in the shard, bytes)})`` for every
    sample of a version, shards streamed (``tarfile`` mode ``r|``), in shard and member order.

    A sample's members are consecutive in a shard (the WebDataset layout); a key met again after
    another key is a ``ValueError`` naming the shard.
    """
    seen: set[str] = set()
    for url in shard_urls(version):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            key, members = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                stem, extension = split_member_name(member.name)
                sample_key = sample_key_from_member(stem)
                if sample_key != key:
                    if key is not None:
                        yield url, key, members
                    if sample_key in seen:
                        raise ValueError(f"{url}: sample {sample_key!r} appears twice or not contiguously")
                    seen.add(sample_key)
                    key, members = sample_key, {}
                members[extension] = (member.offset_data, tar.extractfile(member).read())
            if key is not None:
                yield url, key, members


def _read_table(url: str) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(url)))


def read_index(version: str) -> pa.Table:
    """``index.parquet`` of a version directory."""
    return _read_table(storage.safe_join(version, INDEX_FILE))


def read_inputs(version: str) -> pa.Table:
    """``inputs.parquet`` of a version directory."""
    return _read_table(storage.safe_join(version, INPUTS_FILE))


def read_stats(version: str) -> dict[str, Any]:
    """``stats.json`` of a version directory."""
    return json.loads(storage.read_text(storage.safe_join(version, STATS_FILE)))


# ----------------------------------------------------------------------------- encoders


def _json_plain(value: Any) -> Any:
    """Non-finite floats -> None, numpy scalars unwrapped, recursively (stats.json)."""
    if isinstance(value, Mapping):
        return {str(k): _json_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def parquet_bytes(rows: list[Mapping[str, Any]], schema: pa.Schema) -> bytes:
    """Deterministic parquet: explicit schema, no pandas metadata, fixed writer options."""
    columns = {field.name: [_parquet_value(row[field.name]) for row in rows] for field in schema}
    table = pa.Table.from_pydict(columns, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **_PARQUET_OPTIONS)
    return buffer.getvalue()


def _parquet_value(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- checksums


def member_sha256_json(digests: Mapping[str, str]) -> str:
    """The ``member_sha256`` index value: canonical JSON ``{extension: hex sha256 of the member}``."""
    return json.dumps(dict(digests), sort_keys=True, separators=(",", ":"))


def success_text(files: Mapping[str, Mapping[str, Any]]) -> str:
    """The ``_SUCCESS`` text: canonical JSON ``{"files": {path in the version: {"bytes", "sha256"}}}``
    and a newline. Canonical, so a reader can tell any changed byte (re-encode and compare)."""
    return json.dumps({"files": {k: dict(v) for k, v in files.items()}}, sort_keys=True, separators=(",", ":")) + "\n"


class HashingWriter:
    """A binary file wrapper that counts and hashes what is written through it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        data = bytes(data)
        self.sha256.update(data)
        self.size += len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:  # tell, flush, closed, ... of the wrapped file
        return getattr(self._handle, name)


# ----------------------------------------------------------------------------- sample spool


class _SampleSpool:
    """Encoded samples parked in a local temporary file until commit; metadata stays in memory."""

    def __init__(self, directory: str | None) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="labelmill-spool-", dir=directory)
        self._entries: dict[str, tuple[dict[str, tuple[int, int]], dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def add(self, sample: Sample) -> None:
        self._file.seek(0, os.SEEK_END)
        spans = {}
        for extension, data in sample.fields.items():
            spans[extension] = (self._file.tell(), len(data))
            self._file.write(data)
        self._entries[sample.key] = (spans, dict(sample.index))

    def sorted_keys(self) -> list[str]:
        return sorted(self._entries)

    def tar_size(self, key: str) -> int:
        """Bytes the sample's members will take in a tar."""
        spans = self._entries[key][0]
        return members_tar_size(member_key(key), {extension: length for extension, (_, length) in spans.items()})

    def load(self, key: str) -> Sample:
        spans, index = self._entries[key]
        fields = {}
        for extension, (offset, length) in spans.items():
            self._file.seek(offset)
            fields[extension] = self._file.read(length)
        return Sample(key=key, fields=fields, index=index)

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------- writer


class DatasetVersionWriter:
    """Write one dataset version under ``out_url`` and commit it atomically.

    Usage::

        with DatasetVersionWriter(out, shard_config=ShardConfig(), config_yaml=text) as writer:
            writer.add_samples(samples)          # any order, any number of calls
            writer.record_inputs(input_rows)     # one row per input item
            writer.commit(stats={"stages": {"fit": {"items": 120, "seconds": 3.5}}})

    ``write_shard(samples, index=i)`` instead writes one shard now, for callers that partition
    samples themselves; spooled samples are numbered after the highest such index.
    Not thread-safe: one writer per version, used by one thread.
    """

    def __init__(
        self,
        out_url: str,
        *,
        shard_config: ShardConfig | None = None,
        version_id: str | None = None,
        config_yaml: str | None = None,
        schema: str | DatasetSchema = "pose3d",
        spool_dir: str | None = None,
        set_latest: bool = True,
    ) -> None:
        self.out_url = out_url.rstrip("/")
        self.shard_config = shard_config or ShardConfig()
        self.schema = load_schema(schema) if isinstance(schema, str) else schema
        self._version_id = _check_version_id(version_id) if version_id is not None else None
        self._config_yaml = config_yaml
        self._spool_dir = spool_dir
        self.set_latest = set_latest
        self._spool: _SampleSpool | None = None
        self._index_rows: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._input_rows: dict[str, dict[str, Any]] = {}
        self._explicit_shards: dict[int, str] = {}
        self._shard_bytes: dict[str, int] = {}
        self._shared: list[dict[str, Any]] = []
        self._shared_index: list[tuple[str, str, int]] = []  # (shard, index object URL, samples)
        self._files: dict[str, dict[str, Any]] = {}  # path in the version -> {bytes, sha256}: _SUCCESS
        self._prepared = False
        self._committed = False
        self._closed = False
        self._sample_columns = tuple(c.name for c in self.schema.index_columns if c.name not in WRITER_INDEX_COLUMNS)
        self._input_columns = tuple(c.name for c in self.schema.inputs_columns)

    # -- context -----------------------------------------------------------------------------
    def __enter__(self) -> "DatasetVersionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is None and not self._committed:
            raise RuntimeError(
                f"dataset version {self._version_id or '(unnamed)'} under {self.out_url} was not committed: "
                "call commit() inside the with block"
            )
        if exc_type is not None and self._prepared:
            log.warning("dataset version %s left incomplete (no %s) after %s", self.version_id, SUCCESS,
                        exc_type.__name__)

    def close(self) -> None:
        """Drop the spool; nothing more can be added."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._closed = True

    # -- identity ----------------------------------------------------------------------------
    @property
    def version_id(self) -> str:
        """The version id; without an explicit one it is fixed on first use from the config.

        A default id already committed under this root (a second run of the same config within
        the same second) gets a short random suffix, so versions stay immutable.
        """
        if self._version_id is None:
            if self._config_yaml is None:
                raise ValueError(
                    "the default version id hashes the config: pass config_yaml= (or version_id=) to "
                    "DatasetVersionWriter before writing shards, or call commit(config_yaml=...) first"
                )
            version_id = make_version_id(self._config_yaml)
            if storage.exists(storage.safe_join(version_url(self.out_url, version_id), SUCCESS)):
                version_id = f"{version_id}-{uuid.uuid4().hex[:6]}"
            self._version_id = version_id
        return self._version_id

    @property
    def url(self) -> str:
        """``OUT/versions/<id>``."""
        return version_url(self.out_url, self.version_id)

    def _path(self, relative: str) -> str:
        return storage.safe_join(self.url, relative)

    def _record(self, relative: str, written: HashingWriter) -> None:
        self._files[posixpath.normpath(relative.replace("\\", "/"))] = {
            "bytes": written.size, "sha256": written.sha256.hexdigest()}

    def _write(self, relative: str, data: bytes) -> None:
        """Write a file of the version atomically and record its checksum."""
        with storage.atomic_open(self._path(relative), "wb") as handle:
            written = HashingWriter(handle)
            written.write(data)
        self._record(relative, written)

    def _prepare(self) -> None:
        """Before the first file: refuse a committed version, clear leftovers of a crashed one."""
        if self._prepared:
            return
        if storage.exists(self._path(SUCCESS)):
            raise FileExistsError(f"dataset version {self.url} is already committed; versions are immutable")
        if storage.exists(self.url):
            log.warning("removing the incomplete dataset version %s left by an earlier attempt", self.url)
            storage.remove(self.url, recursive=True)
        storage.makedirs(self._path(SHARDS_DIR))
        self._prepared = True

    def _check_open(self) -> None:
        if self._committed:
            raise RuntimeError(f"dataset version {self.url} is already committed")
        if self._closed:
            raise RuntimeError("the dataset version writer is closed")

    # -- samples -----------------------------------------------------------------------------
    def _register(self, sample: Sample) -> None:
        if sample.key in self._keys:
            raise ValueError(f"duplicate sample key {sample.key!r}")
        fields = set(sample.fields)
        expected = set(self.schema.extensions)
        if fields != expected:
            raise ValueError(
                f"sample {sample.key!r} has fields {sorted(fields)}; schema {self.schema.id} needs {sorted(expected)}"
            )
        given = set(sample.index)
        wanted = set(self._sample_columns)
        if given != wanted:
            raise ValueError(
                f"sample {sample.key!r} index columns: missing {sorted(wanted - given)}, "
                f"not in schema {self.schema.id}: {sorted(given - wanted)}"
            )
        self._keys.add(sample.key)

    def add_samples(self, samples: Iterable[Sample]) -> int:
        """Spool samples for the shards written at commit; returns how many were added."""
        self._check_open()
        if self._spool is None:
            self._spool = _SampleSpool(self._spool_dir)
        added = 0
        for sample in samples:
            self._register(sample)
            self._spool.add(sample)
            added += 1
        return added

    def write_file(self, relative: str, data: bytes) -> str:
        """Write an extra file of the version (e.g. ``fits/<input>.npz``) atomically, before commit.

        ``relative`` must stay inside the version directory and outside the reserved names
        (shards/, the parquet files, stats.json, config.yaml, _SUCCESS). Returns its URL.
        """
        self._check_open()
        top = relative.replace("\\", "/").lstrip("./").split("/", 1)[0]
        if top in (SHARDS_DIR, INDEX_FILE, INPUTS_FILE, STATS_FILE, CONFIG_FILE, SUCCESS):
            raise ValueError(f"{relative!r} is reserved in a dataset version")
        self._prepare()
        url = self._path(relative)
        self._write(relative, bytes(data))
        return url

    def write_shard(self, samples: Iterable[Sample], *, index: int) -> str:
        """Write ``samples`` (sorted by key) as shard number ``index`` now; returns its file name."""
        self._check_open()
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"shard index must be a non-negative integer, got {index!r}")
        if index in self._explicit_shards:
            raise ValueError(f"shard {index} ({self._explicit_shards[index]}) was already written")
        ordered = sorted(samples, key=lambda s: s.key)
        if not ordered:
            raise ValueError(f"shard {index}: write_shard needs at least one sample")
        for sample in ordered:
            self._register(sample)
        name = self.shard_config.shard_name(index)
        self._write_shard_file(name, ordered)
        self._explicit_shards[index] = name
        return name

    def _write_shard_file(self, name: str, samples: list[Sample]) -> None:
        self._prepare()
        relative = f"{SHARDS_DIR}/{name}"
        with storage.atomic_open(self._path(relative), "wb") as handle:
            written = HashingWriter(handle)
            self._shard_bytes[name] = write_tar(samples, written)
        self._record(relative, written)
        for sample in samples:
            self._index_rows.append({
                **sample.index, "key": sample.key, "member_key": member_key(sample.key), "shard": name,
                "num_bytes": sample_tar_size(sample),
                "member_sha256": member_sha256_json({ext: hashlib.sha256(data).hexdigest()
                                                     for ext, data in sample.fields.items()}),
            })

    def _flush_spool(self) -> None:
        if self._spool is None or not len(self._spool):
            return
        keys = self._spool.sorted_keys()
        sizes = [self._spool.tar_size(k) for k in keys]
        first = max(self._explicit_shards) + 1 if self._explicit_shards else 0
        for entry in plan_shards(sizes, self.shard_config, first_index=first):
            self._write_shard_file(entry.name, [self._spool.load(k) for k in keys[entry.start : entry.stop]])

    def add_shared_shard(self, name: str, path: str, sidecar: Mapping[str, Any],
                         index_rows: Iterable[Mapping[str, Any]] | None = None, *, index_url: str | None = None) -> None:
        """List a shard of the shared store (``path`` relative to the output root) with its samples'
        index rows: given here, or stored as a Parquet object (``index_url``, sorted by key, with a
        ``shard`` column) that is streamed into ``index.parquet`` at commit without being held."""
        self._check_open()
        if name in self._shard_bytes:
            raise ValueError(f"shard {name} was already added")
        if (index_rows is None) == (index_url is None):
            raise ValueError(f"shard {name}: give its index rows or the URL of its index object, not both")
        if index_url is not None:
            self._shared_index.append((name, index_url, int(sidecar["samples"])))
            self._record_shared(name, path, sidecar)
            return
        wanted = {"key", "member_key", "num_bytes", "member_sha256", *self._sample_columns}
        for row in index_rows:
            row = dict(row)
            if set(row) != wanted:
                raise ValueError(f"shard {name}: index row {row.get('key')!r} has columns {sorted(row)}, "
                                 f"schema {self.schema.id} needs {sorted(wanted)}")
            if row["key"] in self._keys:
                raise ValueError(f"duplicate sample key {row['key']!r}")
            self._keys.add(row["key"])
            self._index_rows.append({**row, "shard": name})
        self._record_shared(name, path, sidecar)

    def _record_shared(self, name: str, path: str, sidecar: Mapping[str, Any]) -> None:
        self._shard_bytes[name] = int(sidecar["bytes"])
        entry = {"name": name, "path": path, "bytes": int(sidecar["bytes"]), "sha256": sidecar["sha256"],
                 "samples": int(sidecar["samples"])}
        if "index_sha256" in sidecar:  # the shard's index object (packed shards; infra/packing.py)
            entry["index_sha256"] = sidecar["index_sha256"]
        self._shared.append(entry)

    # -- inputs ------------------------------------------------------------------------------
    def record_inputs(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Record inputs.parquet rows (one per input item; see the schema's ``inputs_columns``)."""
        self._check_open()
        wanted = set(self._input_columns)
        for row in rows:
            row = dict(row)
            key = row.get("input_key")
            if isinstance(row.get("frame_reasons"), Mapping):
                row["frame_reasons"] = json.dumps(dict(sorted(row["frame_reasons"].items())), separators=(",", ":"))
            given = set(row)
            if given != wanted:
                raise ValueError(
                    f"input {key!r}: missing columns {sorted(wanted - given)}, "
                    f"not in schema {self.schema.id}: {sorted(given - wanted)}"
                )
            if row["status"] not in INPUT_STATUSES:
                raise ValueError(f"input {key!r}: status {row['status']!r} is not one of {', '.join(INPUT_STATUSES)}")
            if key in self._input_rows:
                raise ValueError(f"input {key!r} was recorded twice")
            self._input_rows[key] = row

    # -- commit ------------------------------------------------------------------------------
    def _check_accounting(self, per_input: Mapping[str, int]) -> None:
        for key, count in sorted(per_input.items()):
            row = self._input_rows.get(key)
            if row is None:
                raise ValueError(f"samples of input {key!r} were written but the input was never recorded")
            if row["frames_written"] != count or row["status"] != "written":
                raise ValueError(
                    f"input {key!r}: recorded status {row['status']!r} with frames_written={row['frames_written']}, "
                    f"but {count} samples were written"
                )
        for key, row in sorted(self._input_rows.items()):
            if key not in per_input and (row["frames_written"] or row["status"] == "written"):
                raise ValueError(f"input {key!r}: recorded {row['status']!r} with frames_written="
                                 f"{row['frames_written']}, but no sample of it was written")

    def _stats(self, extra: Mapping[str, Any] | None, shard_bytes: int) -> dict[str, Any]:
        rows = list(self._input_rows.values())
        by_status = collections.Counter(row["status"] for row in rows)
        reasons: dict[str, collections.Counter] = {status: collections.Counter() for status in ("filtered", "failed")}
        frame_reasons: collections.Counter = collections.Counter()
        for row in rows:
            if row["status"] in reasons:
                reasons[row["status"]][str(row["reason"])] += 1
            if "frame_reasons" in row and row["frame_reasons"]:
                frame_reasons.update(json.loads(row["frame_reasons"]))
        stats: dict[str, Any] = {
            "schema": self.schema.id,
            "version": self.version_id,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "inputs": {"in": len(rows), **{status: by_status.get(status, 0) for status in INPUT_STATUSES}},
            "input_reasons": {status: dict(sorted(c.items())) for status, c in reasons.items()},
            "frames": {
                "in": sum(int(r["frames_in"]) for r in rows),
                "fitted": sum(int(r["frames_fitted"]) for r in rows),
                "kept": sum(int(r["frames_written"]) for r in rows),
            },
            "frame_reasons": dict(sorted(frame_reasons.items())),
            "samples": len(self._index_rows) + sum(count for _, _, count in self._shared_index),
            "shards": len(self._shard_bytes),
            "bytes": shard_bytes,
        }
        stats.update(_caller_stats(extra))
        return stats

    def _stream_index(self, schema: pa.Schema) -> collections.Counter:
        """Write ``index.parquet`` from the shared shards' index objects; samples per input.

        Shards come in key order, so their index objects concatenate into a sorted index and
        only one shard's index is in memory at a time. Should input keys order their samples
        differently (a key that is a prefix of another's sample keys), the tables are sorted
        together instead.
        """
        def tables() -> Iterator[pa.Table]:  # read a few ahead: on an object store each is a request
            with ThreadPoolExecutor(max_workers=_INDEX_PREFETCH) as pool:
                pending: collections.deque = collections.deque()
                for name, url, count in self._shared_index:
                    pending.append(pool.submit(_read_index_object, url, name, count, schema))
                    if len(pending) >= _INDEX_PREFETCH:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()

        try:
            with storage.atomic_open(self._path(INDEX_FILE), "wb") as handle:
                written = HashingWriter(handle)
                per_input = _write_index_tables(written, tables(), schema)
            self._record(INDEX_FILE, written)
            return per_input
        except _OutOfOrder as exc:
            log.info("index objects out of key order at %r: sorting the whole index in memory", exc.args[0])
        merged = pa.concat_tables(list(tables())).sort_by("key")
        keys = merged.column("key")
        if merged.num_rows > 1 and not pc.all(pc.less(keys.slice(0, merged.num_rows - 1), keys.slice(1))).as_py():
            raise ValueError("duplicate sample keys across shards")
        with storage.atomic_open(self._path(INDEX_FILE), "wb") as handle:
            written = HashingWriter(handle)
            per_input = _write_index_tables(written, [merged], schema)
        self._record(INDEX_FILE, written)
        return per_input

    def commit(self, stats: Mapping[str, Any] | None = None, config_yaml: str | None = None) -> str:
        """Write shards, parquet files, stats.json, config.yaml, then ``_SUCCESS``, then LATEST.

        ``stats``: extra stats.json entries; ``stages`` may map a stage name to
        ``{"items": n, "seconds": s}`` and gains ``items_per_s``. ``config_yaml``: the resolved
        config (defaults to the constructor's). Returns the version id.
        """
        self._check_open()
        _caller_stats(stats)  # refuse bad stats before writing anything
        if config_yaml is not None:
            if self._config_yaml is not None and config_yaml != self._config_yaml and self._version_id is None:
                raise ValueError("commit(config_yaml=...) differs from the config given to the constructor")
            self._config_yaml = config_yaml
        if self._config_yaml is None:
            raise ValueError("a dataset version needs its config: pass config_yaml= to the constructor or commit()")
        self._prepare()
        self._flush_spool()
        shard_bytes = sum(self._shard_bytes.values())
        index_schema = self.schema.arrow_schema(self.schema.index_columns)
        if self._shared_index:
            if self._index_rows:
                raise ValueError("a version's index comes from the shared shards' index objects or from rows, not both")
            per_input = self._stream_index(index_schema)
        else:
            per_input = collections.Counter(row["input_key"] for row in self._index_rows)
            index_rows = sorted(self._index_rows, key=lambda r: r["key"])
            self._write(INDEX_FILE, parquet_bytes(index_rows, index_schema))
        self._check_accounting(per_input)
        input_rows = sorted(self._input_rows.values(), key=lambda r: r["input_key"])
        self._write(INPUTS_FILE, parquet_bytes(input_rows, self.schema.arrow_schema(self.schema.inputs_columns)))
        document = _json_plain(self._stats(stats, shard_bytes))
        self._write(STATS_FILE, (json.dumps(document, sort_keys=True, indent=2, allow_nan=False) + "\n").encode())
        self._write(CONFIG_FILE, self._config_yaml.encode("utf-8"))
        if self._shared:
            self._write(MANIFEST_FILE, (json.dumps({"shards": self._shared}, indent=1) + "\n").encode())
        storage.write_text(self._path(SUCCESS), success_text(self._files))
        if self.set_latest:
            storage.write_text(storage.safe_join(self.out_url, LATEST), self.version_id + "\n")
        self._committed = True
        self.close()
        log.info("committed dataset version %s: %d samples in %d shards, %d inputs", self.url,
                 document["samples"], document["shards"], document["inputs"]["in"])
        return self.version_id


class _OutOfOrder(Exception):
    """Shards' index objects, in shard order, are not in global key order."""


def _read_index_object(url: str, name: str, expected: int, schema: pa.Schema) -> pa.Table:
    """One shard's index object, checked: its schema, its shard column, its row count, sorted keys."""
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle)
    if set(table.column_names) != set(schema.names):
        raise ValueError(f"index object {url} has columns {sorted(table.column_names)}, the schema needs "
                         f"{sorted(schema.names)}")
    table = table.select(schema.names).cast(schema)
    if table.num_rows != expected:
        raise ValueError(f"index object {url} has {table.num_rows} rows; shard {name} holds {expected} samples")
    if table.num_rows and set(table.column("shard").unique().to_pylist()) != {name}:
        raise ValueError(f"index object {url} names other shards than {name}")
    keys = table.column("key")
    if table.num_rows > 1 and not pc.all(pc.less(keys.slice(0, table.num_rows - 1), keys.slice(1))).as_py():
        raise ValueError(f"index object {url}: sample keys are not sorted and unique")
    return table


def _write_index_tables(handle: IO, tables: Iterable[pa.Table], schema: pa.Schema) -> collections.Counter:
    """Stream ``tables`` (each sorted) into one Parquet file, in row groups of ``_INDEX_ROW_GROUP``
    rows; raises _OutOfOrder when a table's first key is not above the previous table's last."""
    per_input: collections.Counter = collections.Counter()
    pending: list[pa.Table] = []
    last: str | None = None
    with pq.ParquetWriter(handle, schema, **_PARQUET_OPTIONS) as writer:
        for table in tables:
            if not table.num_rows:
                continue
            first = table.column("key")[0].as_py()
            if last is not None and not first > last:
                raise _OutOfOrder(first)
            last = table.column("key")[-1].as_py()
            per_input.update(dict(zip(*[c.to_pylist() for c in table.column("input_key").value_counts().flatten()])))
            pending.append(table)
            if sum(t.num_rows for t in pending) >= _INDEX_ROW_GROUP:
                writer.write_table(pa.concat_tables(pending), row_group_size=_INDEX_ROW_GROUP)
                pending = []
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=_INDEX_ROW_GROUP)
    return per_input


def _caller_stats(stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's stats.json entries, checked, with stage rates filled in."""
    extra = dict(stats or {})
    clash = sorted(set(extra) & set(_COMPUTED_STATS))
    if clash:
        raise ValueError(f"stats keys {clash} are computed by the writer; pass other keys")
    if "stages" in extra:
        extra["stages"] = _stage_rates(extra["stages"])
    return extra


def _stage_rates(stages: Any) -> dict[str, Any]:
    """``{stage: {"items", "seconds", ...}}`` with ``items_per_s`` added where computable."""
    if not isinstance(stages, Mapping):
        raise ValueError(f"stats 'stages' must map stage names to {{'items': n, 'seconds': s}}, got {stages!r}")
    out = {}
    for name, stage in stages.items():
        if not isinstance(stage, Mapping):
            raise ValueError(f"stats stage {name!r} must be a mapping with 'items' and 'seconds', got {stage!r}")
        stage = dict(stage)
        items, seconds = stage.get("items"), stage.get("seconds")
        if "items_per_s" not in stage and isinstance(items, (int, float)) and isinstance(seconds, (int, float)):
            stage["items_per_s"] = items / seconds if seconds > 0 else None
        out[str(name)] = stage
    return out
