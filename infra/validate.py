"""Check a dataset version against its layout, its schema and its own bookkeeping.

:func:`validate_version` takes an output root (it follows ``LATEST``) or a version directory
and returns every :class:`Problem` it finds; an empty list means the version is sound:

* layout: ``LATEST`` names an existing committed version; ``_SUCCESS``, ``stats.json``,
  ``config.yaml`` (safe YAML), ``index.parquet``, ``inputs.parquet`` are present and readable;
  ``shards/`` holds only ``.tar`` files;
* schema (``infra/schemas/<name>.json``, named by stats.json's ``schema``): every shard reads as a
  tar whose members are ``<member key>.<extension>`` regular files, grouped per sample and in key
  order; every sample has exactly the schema's fields, each decoding to the right kind, dtype and
  shape (npz read with ``allow_pickle=False``; JSON properties typed; image magic bytes);
* bookkeeping: no duplicate sample keys; index rows and shard samples are the same keys in the
  same shards with the same sizes; inputs.parquet statuses are valid, one row per input,
  ``frames_written`` equals the input's samples; stats.json's counts equal the tables' and the
  shards'.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import posixpath
import tarfile
from typing import Any, Iterator

import pyarrow as pa
import yaml

from labelmill.infra import storage
from labelmill.infra.dataset_version import (
    CONFIG_FILE,
    INDEX_FILE,
    INPUTS_FILE,
    LATEST,
    MANIFEST_FILE,
    SHARDS_DIR,
    STATS_FILE,
    SUCCESS,
    read_index,
    read_inputs,
    read_manifest,
    read_stats,
    resolve_version,
    shard_urls,
)
from labelmill.infra.schema import INPUT_STATUSES, DatasetSchema, SchemaError, check_field, check_table, load_schema
from labelmill.infra.formats.shards import members_tar_size, member_key, sample_key_from_member, split_member_name

log = logging.getLogger(__name__)

__all__ = ["Problem", "validate_version"]


class _HashingReader:
    """A binary file wrapper that counts and hashes what is read through it (one pass per shard)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read what tarfile left after the end-of-archive marker."""
        while self.read(1 << 20):
            pass


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a version: where, what, and expected vs got when that helps."""

    where: str  # e.g. "shards/shard-000000.tar sample vid/000003" or "index.parquet"
    what: str  # e.g. "smpl.npz:betas: wrong shape"
    expected: str | None = None
    got: str | None = None

    def __str__(self) -> str:
        parts = [f"{self.where}: {self.what}"]
        if self.expected is not None or self.got is not None:
            parts.append(f"(expected {self.expected}, got {self.got})")
        return " ".join(parts)


@dataclasses.dataclass
class _ShardSample:
    key: str
    shard: str
    num_bytes: int


class _Validator:
    def __init__(self, url: str) -> None:
        self.url = url
        self.problems: list[Problem] = []

    def add(self, where: str, what: str, expected: Any = None, got: Any = None) -> None:
        self.problems.append(Problem(where, what, None if expected is None else str(expected),
                                     None if got is None else str(got)))

    # -- layout ------------------------------------------------------------------------------
    def run(self) -> list[Problem]:
        try:
            ref = resolve_version(self.url)
        except FileNotFoundError as exc:
            self.add(self.url, str(exc))
            return self.problems
        except ValueError as exc:  # LATEST holds something that is not a version id
            self.add(LATEST, f"does not name a version: {exc}")
            return self.problems
        version = ref.url
        if ref.out_url is not None and not storage.exists(version):
            self.add(LATEST, "points at a version that does not exist", f"a directory {version}", "nothing")
            return self.problems
        if not storage.exists(storage.safe_join(version, SUCCESS)):
            where = f"{LATEST} -> {ref.version_id}" if ref.out_url is not None else ref.version_id
            self.add(where, f"no {SUCCESS}: the version is incomplete (never committed)")
        stats = self._stats(version)
        schema = self._schema(stats)
        self._config(version)
        if schema is None:
            return self.problems
        index = self._table(version, INDEX_FILE, read_index, schema.index_columns)
        inputs = self._table(version, INPUTS_FILE, read_inputs, schema.inputs_columns)
        shard_samples, shard_bytes, shard_count = self._shards(version, schema)
        if index is not None:
            self._index_vs_shards(index, shard_samples)
        if index is not None and inputs is not None:
            self._inputs(index, inputs)
        if stats is not None and inputs is not None and index is not None:
            self._stats_counts(stats, index, inputs, shard_bytes, shard_count)
        return self.problems

    def _stats(self, version: str) -> dict[str, Any] | None:
        if not storage.exists(storage.safe_join(version, STATS_FILE)):
            self.add(STATS_FILE, "missing")
            return None
        try:
            stats = read_stats(version)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.add(STATS_FILE, "not valid JSON", "a JSON object", exc)
            return None
        if not isinstance(stats, dict):
            self.add(STATS_FILE, "not a JSON object", "object", type(stats).__name__)
            return None
        return stats

    def _schema(self, stats: dict[str, Any] | None) -> DatasetSchema | None:
        if stats is None:
            return None
        schema_id = stats.get("schema")
        if not isinstance(schema_id, str) or "/" not in schema_id:
            self.add(STATS_FILE, "no schema id", "'<name>/<version>', e.g. 'pose3d/1'", repr(schema_id))
            return None
        name, _, version = schema_id.partition("/")
        try:
            schema = load_schema(name)
        except SchemaError as exc:
            self.add(STATS_FILE, f"unknown schema: {exc}")
            return None
        if str(schema.version) != version:
            self.add(STATS_FILE, "schema version this labelmill cannot check", schema.id, schema_id)
            return None
        return schema

    def _config(self, version: str) -> None:
        url = storage.safe_join(version, CONFIG_FILE)
        if not storage.exists(url):
            self.add(CONFIG_FILE, "missing")
            return
        try:
            yaml.safe_load(storage.read_text(url))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            self.add(CONFIG_FILE, "not readable with a safe YAML loader", got=str(exc).splitlines()[0])

    def _table(self, version: str, name: str, reader, columns) -> pa.Table | None:
        if not storage.exists(storage.safe_join(version, name)):
            self.add(name, "missing")
            return None
        try:
            table = reader(version)
        except (OSError, pa.ArrowException) as exc:
            self.add(name, "not a readable parquet file", got=exc)
            return None
        for issue in check_table(columns, table):
            self.add(name, f"{issue.item}: {issue.what}", issue.expected, issue.got)
        return table

    # -- shards ------------------------------------------------------------------------------
    def _shards(self, version: str, schema: DatasetSchema) -> tuple[list[_ShardSample], int, int]:
        """(samples found, total shard bytes, number of shards)."""
        root = storage.safe_join(version, SHARDS_DIR)
        samples: list[_ShardSample] = []
        total = count = 0
        manifest = read_manifest(version)
        if manifest is not None:
            return self._shared_shards(version, manifest, schema)
        if not storage.exists(root):
            self.add(SHARDS_DIR, "missing")
            return samples, total, count
        fs, _ = storage.filesystem(root)
        for url in storage.list_files(root, "*"):
            name = posixpath.basename(url)
            where = f"{SHARDS_DIR}/{name}"
            if not name.endswith(".tar") or name.startswith("."):
                self.add(where, "unexpected file in shards/", "only *.tar shards", name)
                continue
            total += fs.size(storage.filesystem(url)[1])
            count += 1
            try:
                samples.extend(self._shard(url, name, schema))
            except (tarfile.TarError, OSError, EOFError) as exc:
                self.add(where, "unreadable tar", "a tar archive", exc)
        return samples, total, count

    def _shared_shards(self, version: str, manifest: list[dict], schema: DatasetSchema) -> tuple[list[_ShardSample], int, int]:
        """Shards of the shared store listed by the version's manifest: present, sized and summed as listed."""
        samples: list[_ShardSample] = []
        total = 0
        for entry, url in zip(manifest, shard_urls(version)):
            name = entry["name"]
            where = f"{MANIFEST_FILE}: {entry['path']}"
            if not storage.exists(url):
                self.add(where, "missing shard object", "a shard in OUT/objects/shards", None)
                continue
            reader: list[_HashingReader] = []
            try:
                samples.extend(self._shard(url, name, schema, reader=reader))
            except (tarfile.TarError, OSError, EOFError) as exc:
                self.add(where, "unreadable tar", "a tar archive", exc)
            if not reader:
                continue
            total += reader[0].size  # the whole object: _members drains what tarfile leaves
            if reader[0].size != int(entry["bytes"]):
                self.add(where, "size differs from the manifest", entry["bytes"], reader[0].size)
            if reader[0].sha256.hexdigest() != entry["sha256"]:
                self.add(where, "sha256 differs from the manifest (corrupted shard)", entry["sha256"],
                         reader[0].sha256.hexdigest())
        return samples, total, len(manifest)

    def _members(self, url: str, reader: list | None = None) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        """Members of a tar, read once as a stream; ``reader`` receives the hashing reader used."""
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as raw:
            handle = _HashingReader(raw)
            if reader is not None:
                reader.append(handle)
            with tarfile.open(fileobj=handle, mode="r|") as tar:
                for member in tar:
                    data = tar.extractfile(member).read() if member.isreg() else None
                    yield member, data
            handle.drain()

    def _shard(self, url: str, name: str, schema: DatasetSchema, reader: list | None = None) -> list[_ShardSample]:
        where = f"{SHARDS_DIR}/{name}"
        out: list[_ShardSample] = []
        finished: set[str] = set()
        current: str | None = None
        fields: dict[str, bytes] = {}

        def finish() -> None:
            if current is not None:
                sample = self._sample(where, name, current, fields, schema)
                if sample is not None:
                    if out and sample.key < out[-1].key:
                        self.add(f"{where} sample {sample.key}", "samples not in key order",
                                 f"after {out[-1].key!r}", "before it")
                    out.append(sample)
                finished.add(current)

        for member, data in self._members(url, reader):
            if data is None:
                self.add(where, "member is not a regular file", "regular file", f"{member.name!r} type {member.type!r}")
                continue
            try:
                member_name, extension = split_member_name(member.name)
            except ValueError as exc:
                self.add(where, str(exc))
                continue
            if member_name != current:
                finish()
                if member_name in finished:
                    self.add(where, f"members of sample {member_name!r} are not contiguous",
                             "all members of a sample next to each other", f"{member.name} after other samples")
                current, fields = member_name, {}
            if extension in fields:
                self.add(where, f"duplicate member {member.name!r}")
            fields[extension] = data
        finish()
        return out

    def _sample(self, where: str, shard: str, member: str, fields: dict[str, bytes],
                schema: DatasetSchema) -> _ShardSample | None:
        try:
            key = sample_key_from_member(member)
        except ValueError as exc:
            self.add(where, f"member key cannot be a sanitised sample key: {exc}")
            return None
        at = f"{where} sample {key}"
        for extension in schema.extensions:
            if extension not in fields:
                self.add(at, f"missing field {extension!r}", f"fields {', '.join(schema.extensions)}",
                         ", ".join(sorted(fields)) or "none")
        for extension in sorted(fields):
            if extension not in schema.extensions:
                self.add(at, f"field {extension!r} not in schema {schema.id}")
                continue
            spec = schema.field(extension)
            for issue in check_field(spec, fields[extension]):
                self.add(at, f"{issue.item}: {issue.what}", issue.expected, issue.got)
            if spec.kind == "json" and any(p.name == "key" for p in spec.properties):
                self._json_key(at, extension, fields[extension], key)
        size = members_tar_size(member, {extension: len(data) for extension, data in fields.items()})
        return _ShardSample(key, shard, size)

    def _json_key(self, at: str, extension: str, data: bytes, key: str) -> None:
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return  # reported by check_field
        if isinstance(document, dict) and document.get("key") != key:
            self.add(at, f"{extension}.key differs from the sample key", repr(key), repr(document.get("key")))

    # -- bookkeeping -------------------------------------------------------------------------
    def _index_vs_shards(self, index: pa.Table, shard_samples: list[_ShardSample]) -> None:
        in_shards: dict[str, _ShardSample] = {}
        for sample in shard_samples:
            if sample.key in in_shards:
                self.add(f"{SHARDS_DIR}/{sample.shard}", f"duplicate sample key {sample.key!r}",
                         "each key once", f"also in {in_shards[sample.key].shard}")
            in_shards[sample.key] = sample
        columns = set(index.column_names)
        if not {"key", "shard"} <= columns:
            return
        keys = index.column("key").to_pylist()
        shards = index.column("shard").to_pylist()
        members = index.column("member_key").to_pylist() if "member_key" in columns else [None] * len(keys)
        sizes = index.column("num_bytes").to_pylist() if "num_bytes" in columns else [None] * len(keys)
        counts = collections.Counter(keys)
        for key, count in sorted(counts.items()):
            if count > 1:
                self.add(INDEX_FILE, f"duplicate key {key!r}", "each key once", f"{count} rows")
        if keys != sorted(keys):
            self.add(INDEX_FILE, "rows not sorted by key")
        indexed = set()
        for key, shard, member, size in zip(keys, shards, members, sizes):
            indexed.add(key)
            if member is not None and key is not None and member != member_key(key):
                self.add(INDEX_FILE, f"row {key!r}: member_key is not the sanitised key", member_key(key), member)
            sample = in_shards.get(key)
            if sample is None:
                self.add(INDEX_FILE, f"row {key!r}: sample not found in any shard", f"in {shard}", "absent")
                continue
            if sample.shard != shard:
                self.add(INDEX_FILE, f"row {key!r}: wrong shard", sample.shard, shard)
            if size is not None and size != sample.num_bytes:
                self.add(INDEX_FILE, f"row {key!r}: num_bytes differs from the tar", sample.num_bytes, size)
        for key in sorted(set(in_shards) - indexed):
            self.add(f"{SHARDS_DIR}/{in_shards[key].shard}", f"sample {key!r} has no index.parquet row")

    def _inputs(self, index: pa.Table, inputs: pa.Table) -> None:
        columns = set(inputs.column_names)
        if not {"input_key", "status", "frames_written"} <= columns or "input_key" not in index.column_names:
            return
        per_input = collections.Counter(index.column("input_key").to_pylist())
        keys = inputs.column("input_key").to_pylist()
        counts = collections.Counter(keys)
        for key, count in sorted(counts.items(), key=lambda kv: str(kv[0])):
            if count > 1:
                self.add(INPUTS_FILE, f"duplicate input {key!r}", "one row per input", f"{count} rows")
        for key, status, written in zip(keys, inputs.column("status").to_pylist(),
                                        inputs.column("frames_written").to_pylist()):
            samples = per_input.get(key, 0)
            if status not in INPUT_STATUSES:
                continue  # reported by check_table
            if written != samples:
                self.add(INPUTS_FILE, f"input {key!r}: frames_written differs from its samples in index.parquet",
                         samples, written)
            if (status == "written") != (samples > 0):
                self.add(INPUTS_FILE, f"input {key!r}: status {status!r} but {samples} samples",
                         "written exactly when samples exist", status)
        for key in sorted(set(per_input) - set(keys), key=str):
            self.add(INDEX_FILE, f"samples of input {key!r} whose input has no inputs.parquet row")

    def _stats_counts(self, stats: dict[str, Any], index: pa.Table, inputs: pa.Table, shard_bytes: int,
                      shard_count: int) -> None:
        statuses = collections.Counter(inputs.column("status").to_pylist()) if "status" in inputs.column_names else {}
        expected_inputs = {"in": inputs.num_rows, **{s: statuses.get(s, 0) for s in INPUT_STATUSES}}
        got_inputs = stats.get("inputs")
        if not isinstance(got_inputs, dict) or any(got_inputs.get(k) != v for k, v in expected_inputs.items()):
            self.add(STATS_FILE, "inputs counts differ from inputs.parquet", expected_inputs, got_inputs)
        elif got_inputs["in"] != sum(got_inputs[s] for s in INPUT_STATUSES):
            self.add(STATS_FILE, "inputs.in is not written + filtered + failed", got_inputs["in"], got_inputs)
        frames = stats.get("frames")
        if "frames_written" in inputs.column_names:
            kept = sum(inputs.column("frames_written").to_pylist())
            if not isinstance(frames, dict) or frames.get("kept") != kept:
                self.add(STATS_FILE, "frames.kept differs from inputs.parquet frames_written", kept,
                         None if not isinstance(frames, dict) else frames.get("kept"))
        for name, expected in (("samples", index.num_rows), ("bytes", shard_bytes), ("shards", shard_count)):
            if stats.get(name) != expected:
                self.add(STATS_FILE, f"{name} differs from the version's files", expected, stats.get(name))


def validate_version(url: str) -> list[Problem]:
    """Every problem of the version at ``url`` (an output root or ``OUT/versions/<id>``)."""
    return _Validator(url.rstrip("/")).run()
