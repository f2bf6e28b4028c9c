"""Check a dataset version against its layout, its schema, its checksums and its own bookkeeping.

:func:`validate_version` takes an output root (it follows ``LATEST``) or a version directory
and returns every :class:`Problem` it finds; an empty list means the version is sound:

* layout: ``LATEST`` names an existing committed version; ``_SUCCESS``, ``stats.json``,
  ``config.yaml`` (safe YAML), ``index.parquet``, ``inputs.parquet`` are present and readable;
  ``shards/`` holds only ``.tar`` files;
* checksums: every file of the version has the size and sha256 ``_SUCCESS`` lists (canonical
  JSON: a changed byte anywhere in it is seen), and no file is unlisted; every shard of the
  shared store has the size and sha256 ``shards.json`` lists, its index object the listed
  ``index_sha256`` and its sidecar the listed values; every sample member has the sha256 its
  index row records (``member_sha256``), so a corrupted member is named by shard, sample key and
  extension;
* schema (``infra/schemas/<name>.json``, named by stats.json's ``schema``): every shard reads as a
  tar whose members are ``<member key>.<extension>`` regular files, grouped per sample and in key
  order; every sample has exactly the schema's fields, each decoding to the right kind, dtype and
  shape (npz read with ``allow_pickle=False``; JSON properties typed; image magic bytes);
* bookkeeping: no duplicate sample keys; index rows and shard samples are the same keys in the
  same shards with the same sizes; inputs.parquet statuses are valid, one row per input,
  ``frames_written`` equals the input's samples; stats.json's counts equal the tables' and the
  shards'.

Nothing here raises on a corrupted version: a file that cannot be read or decoded (truncated
tar, garbled parquet, an npz header numpy refuses) is one problem, and validation goes on.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import posixpath
import re
import tarfile
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
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
    resolve_version,
    success_text,
)
from labelmill.infra.schema import INPUT_STATUSES, DatasetSchema, SchemaError, check_field, check_table, load_schema
from labelmill.infra.formats.shards import members_tar_size, member_key, sample_key_from_member, split_member_name
from labelmill.infra.packing import INDEX_EXTENSION, SHARD_OBJECTS, shard_object_url

log = logging.getLogger(__name__)

__all__ = ["Problem", "validate_version"]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1 << 20
# shards.json entry keys and their JSON types; index_sha256 is absent in shards packed before it
_MANIFEST_KEYS = {"name": str, "path": str, "bytes": int, "sha256": str, "samples": int}
_SIDECAR_KEYS = ("bytes", "sha256", "samples", "index_sha256")


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
        """Read what tarfile left (the end-of-archive blocks, or all after a tar error)."""
        while self.read(_READ_CHUNK):
            pass


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a version: where, what, and expected vs got when that helps."""

    where: str  # e.g. "shards/shard-000000.tar sample vid/000003" or "index.parquet"
    what: str  # e.g. "smpl.npz:betas: wrong shape"
    expected: str | None = None
    got: str | None = None

    def __str__(self) -> str:
        parts = [f"{self.where}: {self.what}"]
        if self.expected is not None:
            parts.append(f"(expected {self.expected}, got {self.got})")
        elif self.got is not None:
            parts.append(f"(got {self.got})")
        return " ".join(parts)


@dataclasses.dataclass
class _ShardSample:
    key: str
    shard: str  # its name in index.parquet's shard column
    where: str  # its path in problems: shards/<name> or objects/shards/<name>.tar
    num_bytes: int
    member_sha256: dict[str, str]  # extension -> hex sha256 of the member's bytes


class _Validator:
    def __init__(self, url: str) -> None:
        self.url = url
        self.problems: list[Problem] = []
        self._checksums: dict[str, dict[str, Any]] | None = None  # what _SUCCESS lists
        self._seen: set[str] = set()  # version files read (and verified) so far

    def add(self, where: str, what: str, expected: Any = None, got: Any = None) -> None:
        self.problems.append(Problem(where, what, None if expected is None else str(expected),
                                     None if got is None else str(got)))

    @contextlib.contextmanager
    def _guard(self, where: str, what: str) -> Iterator[None]:
        """Turn an unexpected exception of one check into one problem, so the others still run."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - a corrupted version is reported, never a traceback
            self.add(where, what, got=_error(exc))

    # -- layout ------------------------------------------------------------------------------
    def run(self) -> list[Problem]:
        with self._guard(self.url, "validation stopped by an unexpected error"):
            self._run()
        return self.problems

    def _run(self) -> None:
        try:
            ref = resolve_version(self.url)
        except FileNotFoundError as exc:
            self.add(self.url, str(exc))
            return
        except (ValueError, UnicodeDecodeError) as exc:  # LATEST holds something that is not a version id
            self.add(LATEST, f"does not name a version: {exc}")
            return
        version = ref.url
        if ref.out_url is not None and not storage.exists(version):
            self.add(LATEST, "points at a version that does not exist", f"a directory {version}", "nothing")
            return
        if not storage.exists(storage.safe_join(version, SUCCESS)):
            where = f"{LATEST} -> {ref.version_id}" if ref.out_url is not None else ref.version_id
            self.add(where, f"no {SUCCESS}: the version is incomplete (never committed)")
        else:
            with self._guard(SUCCESS, "unreadable"):
                self._checksums = self._read_checksums(version)
        stats = schema = None
        with self._guard(STATS_FILE, "could not be checked"):
            stats = self._stats(version)
            schema = self._schema(stats)
        with self._guard(CONFIG_FILE, "could not be checked"):
            self._config(version)
        manifest = None
        with self._guard(MANIFEST_FILE, "could not be checked"):
            manifest = self._manifest(version)
        if schema is not None:
            self._content(version, schema, stats, manifest)
        elif manifest is not None:  # no schema to check the samples against: the checksums still
            with self._guard(SHARDS_DIR, "could not be checked"):
                self._shared_shards(version, manifest, None, [])
        with self._guard(version, "files could not be listed"):
            self._unverified_files(version)

    def _content(self, version: str, schema: DatasetSchema, stats: dict[str, Any] | None,
                 manifest: list[dict[str, Any]] | None) -> None:
        index = self._table(version, INDEX_FILE, schema.index_columns)
        inputs = self._table(version, INPUTS_FILE, schema.inputs_columns)
        samples: list[_ShardSample] = []
        shard_bytes = shard_count = 0
        with self._guard(SHARDS_DIR, "could not be checked"):
            if manifest is not None:
                shard_bytes, shard_count = self._shared_shards(version, manifest, schema, samples)
            else:
                shard_bytes, shard_count = self._own_shards(version, schema, samples)
        if index is not None:
            with self._guard(INDEX_FILE, "could not be checked against the shards"):
                self._index_vs_shards(index, samples)
        if index is not None and inputs is not None:
            with self._guard(INPUTS_FILE, "could not be checked against index.parquet"):
                self._inputs(index, inputs)
        if stats is not None and inputs is not None and index is not None:
            with self._guard(STATS_FILE, "could not be checked against the tables"):
                self._stats_counts(stats, index, inputs, shard_bytes, shard_count)

    # -- checksums ---------------------------------------------------------------------------
    def _read_checksums(self, version: str) -> dict[str, dict[str, Any]] | None:
        """The files ``_SUCCESS`` lists, ``{path: {bytes, sha256}}``; None when it lists none."""
        data = storage.read_bytes(storage.safe_join(version, SUCCESS))
        if not data:
            self.add(SUCCESS, "lists no checksums (committed before labelmill recorded them): "
                     "file contents cannot be verified")
            return None
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self.add(SUCCESS, "not valid JSON", "the version's checksums", _error(exc))
            return None
        files = document.get("files") if isinstance(document, dict) else None
        if not isinstance(files, dict) or set(document) != {"files"}:
            self.add(SUCCESS, "not a checksum list", '{"files": {path: {"bytes", "sha256"}}}', repr(data[:60]))
            return None
        if success_text(files).encode("utf-8") != data:
            self.add(SUCCESS, "not in its canonical form: changed after the commit")
        listed = {}
        for path, entry in files.items():
            if (not isinstance(entry, dict) or set(entry) != {"bytes", "sha256"} or not _is_int(entry["bytes"])
                    or not isinstance(entry["sha256"], str) or not _SHA256_RE.match(entry["sha256"])):
                self.add(SUCCESS, f"malformed checksum of {path!r}", '{"bytes": n, "sha256": hex}', repr(entry)[:80])
                continue
            listed[path] = entry
        return listed

    def _verify(self, name: str, size: int, sha256: str) -> None:
        """Compare a version file's size and sha256 with what ``_SUCCESS`` lists."""
        self._seen.add(name)
        if self._checksums is None:
            return
        entry = self._checksums.get(name)
        if entry is None:
            self.add(name, f"not listed in {SUCCESS}: not written by the commit")
        elif size != entry["bytes"]:
            self.add(name, f"size differs from {SUCCESS} (corrupted or truncated)", entry["bytes"], size)
        elif sha256 != entry["sha256"]:
            self.add(name, f"sha256 differs from {SUCCESS} (corrupted)", entry["sha256"], sha256)

    def _read(self, version: str, name: str) -> bytes | None:
        """A version file's bytes, verified; None (reported) when it is missing or unreadable."""
        self._seen.add(name)
        url = storage.safe_join(version, name)
        if not storage.exists(url):
            self.add(name, "missing")
            return None
        try:
            data = storage.read_bytes(url)
        except OSError as exc:
            self.add(name, "cannot be read", got=_error(exc))
            return None
        self._verify(name, len(data), hashlib.sha256(data).hexdigest())
        return data

    def _unverified_files(self, version: str) -> None:
        """Hash the version's files no other check read (results.parquet, fits.json, ...); report
        files ``_SUCCESS`` lists that are gone."""
        prefix = version.rstrip("/") + "/"
        present = set()
        for url in storage.list_files(version, "**"):
            name = url[len(prefix):] if url.startswith(prefix) else posixpath.basename(url)
            present.add(name)
            if name == SUCCESS or name in self._seen:
                continue
            with self._guard(name, "cannot be read"):
                fs, path = storage.filesystem(url)
                with fs.open(path, "rb") as handle:
                    reader = _HashingReader(handle)
                    reader.drain()
                self._verify(name, reader.size, reader.sha256.hexdigest())
        for name in sorted(set(self._checksums or ()) - present - self._seen):
            self.add(name, f"missing: {SUCCESS} lists it")

    # -- layout files ------------------------------------------------------------------------
    def _json_object(self, name: str, data: bytes) -> dict[str, Any] | None:
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self.add(name, "not valid JSON", "a JSON object", _error(exc))
            return None
        if not isinstance(document, dict):
            self.add(name, "not a JSON object", "object", type(document).__name__)
            return None
        return document

    def _stats(self, version: str) -> dict[str, Any] | None:
        data = self._read(version, STATS_FILE)
        return None if data is None else self._json_object(STATS_FILE, data)

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
        data = self._read(version, CONFIG_FILE)
        if data is None:
            return
        try:
            yaml.safe_load(data.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            self.add(CONFIG_FILE, "not readable with a safe YAML loader", got=str(exc).splitlines()[0])

    def _table(self, version: str, name: str, columns) -> pa.Table | None:
        data = self._read(version, name)
        if data is None:
            return None
        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds on a garbled file
            self.add(name, "not a readable parquet file", got=_error(exc))
            return None
        with self._guard(name, "columns could not be checked"):
            for issue in check_table(columns, table):
                self.add(name, f"{issue.item}: {issue.what}", issue.expected, issue.got)
        return table

    def _manifest(self, version: str) -> list[dict[str, Any]] | None:
        """The well-formed entries of ``shards.json``; None for a version with its own shards/."""
        if not storage.exists(storage.safe_join(version, MANIFEST_FILE)):
            return None
        data = self._read(version, MANIFEST_FILE)
        document = None if data is None else self._json_object(MANIFEST_FILE, data)
        if document is None:
            return []
        entries = document.get("shards")
        if not isinstance(entries, list):
            self.add(MANIFEST_FILE, "no list of shards", '{"shards": [...]}', repr(entries)[:80])
            return []
        good = []
        for i, entry in enumerate(entries):
            bad = (not isinstance(entry, dict)
                   or any(not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool) for k, t in _MANIFEST_KEYS.items())
                   or not set(entry) <= {*_MANIFEST_KEYS, "index_sha256"})
            if bad:
                self.add(MANIFEST_FILE, f"malformed shard entry {i}", "{name, path, bytes, sha256, samples, index_sha256}",
                         repr(entry)[:120])
                continue
            good.append(entry)
        return good

    # -- shards ------------------------------------------------------------------------------
    def _own_shards(self, version: str, schema: DatasetSchema, samples: list[_ShardSample]) -> tuple[int, int]:
        """(total shard bytes, number of shards) of a version with its own shards/."""
        root = storage.safe_join(version, SHARDS_DIR)
        total = count = 0
        if not storage.exists(root):
            self.add(SHARDS_DIR, "missing")
            return total, count
        for url in storage.list_files(root, "*"):
            name = posixpath.basename(url)
            where = f"{SHARDS_DIR}/{name}"
            self._seen.add(where)
            if not name.endswith(".tar") or name.startswith("."):
                self.add(where, "unexpected file in shards/", "only *.tar shards", name)
                continue
            count += 1
            reader = self._read_shard(url, name, where, schema, samples)
            if reader is not None:
                total += reader.size
                self._verify(where, reader.size, reader.sha256.hexdigest())
        return total, count

    def _shared_shards(self, version: str, manifest: list[dict[str, Any]], schema: DatasetSchema | None,
                       samples: list[_ShardSample]) -> tuple[int, int]:
        """Shards of the shared store listed by the version's manifest: present, sized and summed as
        listed, with their index objects and sidecars."""
        root = version.rstrip("/").rsplit("/", 2)[0]
        total = 0
        for entry in manifest:
            name = entry["name"]
            where = f"{MANIFEST_FILE}: {entry['path']}"
            if entry["path"] != f"{SHARD_OBJECTS}/{name}.tar":
                self.add(where, "path is not the shard object of its name", f"{SHARD_OBJECTS}/{name}.tar", entry["path"])
            with self._guard(where, "shard object could not be checked"):
                url = shard_object_url(root, name)
                if not storage.exists(url):
                    self.add(where, "missing shard object", "a shard in OUT/objects/shards", None)
                else:
                    reader = self._read_shard(url, name, f"{SHARD_OBJECTS}/{name}.tar", schema, samples)
                    if reader is not None:
                        total += reader.size
                        if reader.size != entry["bytes"]:
                            self.add(where, "size differs from the manifest", entry["bytes"], reader.size)
                        elif reader.sha256.hexdigest() != entry["sha256"]:
                            self.add(where, "sha256 differs from the manifest (corrupted shard)", entry["sha256"],
                                     reader.sha256.hexdigest())
            with self._guard(f"{SHARD_OBJECTS}/{name}.{INDEX_EXTENSION}", "could not be checked"):
                self._index_object(root, entry)
            with self._guard(f"{SHARD_OBJECTS}/{name}.json", "could not be checked"):
                self._sidecar(root, entry)
        return total, len(manifest)

    def _index_object(self, root: str, entry: dict[str, Any]) -> None:
        where = f"{SHARD_OBJECTS}/{entry['name']}.{INDEX_EXTENSION}"
        url = shard_object_url(root, entry["name"], INDEX_EXTENSION)
        if not storage.exists(url):
            self.add(where, "missing index object")
            return
        if "index_sha256" not in entry:
            self.add(where, "no index_sha256 in the manifest (packed before labelmill recorded it)")
            return
        sha256 = hashlib.sha256(storage.read_bytes(url)).hexdigest()
        if sha256 != entry["index_sha256"]:
            self.add(where, "sha256 differs from the manifest (corrupted index object)", entry["index_sha256"], sha256)

    def _sidecar(self, root: str, entry: dict[str, Any]) -> None:
        where = f"{SHARD_OBJECTS}/{entry['name']}.json"
        url = shard_object_url(root, entry["name"], "json")
        if not storage.exists(url):
            self.add(where, "missing sidecar: the store does not hold this shard as complete")
            return
        data = storage.read_bytes(url)
        document = self._json_object(where, data)
        if document is None:
            return
        expected = {k: entry[k] for k in _SIDECAR_KEYS if k in entry}
        if document != expected:
            self.add(where, "sidecar differs from the manifest", json.dumps(expected, sort_keys=True),
                     json.dumps(document, sort_keys=True)[:200])
        elif json.dumps(document, sort_keys=True).encode("utf-8") != data:
            self.add(where, "sidecar not in its canonical form: changed after packing")

    def _read_shard(self, url: str, name: str, where: str, schema: DatasetSchema | None,
                    samples: list[_ShardSample]) -> _HashingReader | None:
        """Read a shard once as a stream, checking its samples into ``samples`` (without a
        schema, only hashing it); the reader that hashed the whole file (None when it cannot be
        opened)."""
        fs, path = storage.filesystem(url)
        try:
            raw = fs.open(path, "rb")
        except OSError as exc:
            self.add(where, "cannot be read", got=_error(exc))
            return None
        with raw:
            reader = _HashingReader(raw)
            try:
                if schema is not None:
                    self._shard(reader, name, where, schema, samples)
            except Exception as exc:  # noqa: BLE001 - tarfile raises many kinds on a garbled archive
                self.add(where, "unreadable tar", "a tar archive", _error(exc))
            reader.drain()
        return reader

    def _shard(self, reader: _HashingReader, name: str, where: str, schema: DatasetSchema,
               samples: list[_ShardSample]) -> None:
        first = len(samples)
        finished: set[str] = set()
        current: str | None = None
        fields: dict[str, bytes] = {}

        def finish() -> None:
            if current is not None:
                sample = self._sample(where, name, current, fields, schema)
                if sample is not None:
                    if len(samples) > first and sample.key < samples[-1].key:
                        self.add(f"{where} sample {sample.key}", "samples not in key order",
                                 f"after {samples[-1].key!r}", "before it")
                    samples.append(sample)
                finished.add(current)

        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                if not member.isreg():
                    self.add(where, "member is not a regular file", "regular file",
                             f"{member.name!r} type {member.type!r}")
                    continue
                data = tar.extractfile(member).read()
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
            with self._guard(at, f"{extension}: cannot be decoded"):  # e.g. an npz header numpy refuses
                for issue in check_field(spec, fields[extension]):
                    self.add(at, f"{issue.item}: {issue.what}", issue.expected, issue.got)
            if spec.kind == "json" and any(p.name == "key" for p in spec.properties):
                self._json_key(at, extension, fields[extension], key)
        size = members_tar_size(member, {extension: len(data) for extension, data in fields.items()})
        digests = {extension: hashlib.sha256(data).hexdigest() for extension, data in fields.items()}
        return _ShardSample(key, shard, where, size, digests)

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
                self.add(sample.where, f"duplicate sample key {sample.key!r}",
                         "each key once", f"also in {in_shards[sample.key].shard}")
            in_shards[sample.key] = sample
        columns = set(index.column_names)
        if not {"key", "shard"} <= columns:
            return
        keys = index.column("key").to_pylist()
        if any(not isinstance(key, str) for key in keys):
            return  # null keys: reported by check_table
        shards = index.column("shard").to_pylist()

        def column(name: str) -> list[Any]:
            return index.column(name).to_pylist() if name in columns else [None] * len(keys)

        members, sizes, digests = column("member_key"), column("num_bytes"), column("member_sha256")
        counts = collections.Counter(keys)
        for key, count in sorted(counts.items()):
            if count > 1:
                self.add(INDEX_FILE, f"duplicate key {key!r}", "each key once", f"{count} rows")
        if keys != sorted(keys):
            self.add(INDEX_FILE, "rows not sorted by key")
        indexed = set()
        for key, shard, member, size, digest in zip(keys, shards, members, sizes, digests):
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
            if digest is not None:
                self._member_sums(sample, digest)
        for key in sorted(set(in_shards) - indexed):
            self.add(in_shards[key].where, f"sample {key!r} has no index.parquet row")

    def _member_sums(self, sample: _ShardSample, recorded: str) -> None:
        """Each member's sha256 against its index row's ``member_sha256``."""
        try:
            expected = json.loads(recorded)
        except ValueError:
            expected = None
        if not isinstance(expected, dict):
            self.add(INDEX_FILE, f"row {sample.key!r}: member_sha256 is not a JSON object", "{extension: sha256}",
                     repr(recorded)[:80])
            return
        at = f"{sample.where} sample {sample.key}"
        for extension, got in sorted(sample.member_sha256.items()):
            if extension not in expected:
                self.add(at, f"member {extension!r} has no sha256 in index.parquet", ", ".join(sorted(expected)))
            elif got != expected[extension]:
                self.add(at, f"member {extension!r}: sha256 differs from index.parquet (corrupted member)",
                         expected[extension], got)

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
