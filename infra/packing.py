"""Shards packed from per-input tar fragments, by engine tasks, into a store shared by versions.

Plan (:func:`plan_shards`, on the driver, from small summaries only): fragments in sorted input
key order are cut into shards of at most ``max_samples_per_shard`` samples and
``max_bytes_per_shard`` bytes. Boundaries follow the content: once a shard is half full, it is
closed after an input whose key hash falls below the shard's fill beyond one half (so boundaries
are decided by the keys themselves, not by position). Adding or removing a few inputs therefore
changes only the shards around them; the others keep their exact contents, and with them their
object names, so a new version reuses them (deduplication across versions). Shards fill 50-100%
of the limits. A fragment larger than a limit gets a shard of its own.

A shard's name is ``H(shard format, ordered fragment keys)``: fragment keys are content keys, so
equal names mean equal bytes, known before anything is read. Packing (:class:`PackShards`, an
operator run by the engine, one item per missing shard) copies each fragment's tar members byte
for byte (no re-encoding), appends the end-of-archive blocks, and writes
``OUT/objects/shards/<name>.tar`` atomically, then ``<name>.index.parquet`` (the index rows of its
samples, read from the stored samples results, sorted by key: the driver never holds them) and
last its sidecar ``<name>.json`` (bytes, sha256, samples, index_sha256): a shard exists when its
sidecar does. The copy is one streamed pass that also hashes the shard and every sample member
(each index row's ``member_sha256``). Bytes are identical on every engine and across reruns and
resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
from typing import IO, Any, Sequence

from labelmill.infra import storage
from labelmill.infra.dataset_version import member_sha256_json, parquet_bytes
from labelmill.infra.formats.items import ItemStatus
from labelmill.infra.formats.shards import ShardConfig, split_member_name, tar_size
from labelmill.infra.results import ResultStore, digest
from labelmill.infra.schema import load_schema

__all__ = ["OBJECTS_DIR", "SHARD_OBJECTS", "INDEX_EXTENSION", "Fragment", "ShardSpec", "plan_shards", "PackShards", "shard_object_url",
           "stored_shard_names", "read_sidecar"]

OBJECTS_DIR = "objects"
SHARD_OBJECTS = f"{OBJECTS_DIR}/shards"
# Part of every shard's name: a stored shard of another format (2: index objects with
# member_sha256, sidecars with index_sha256) is never taken for one of this format.
SHARD_FORMAT = 2
_COPY_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Fragment:
    """One input's samples as a stored tar fragment (what the driver knows of it)."""

    input_key: str
    key: str  # the samples stage's result key (a content key)
    url: str  # the fragment's tar
    member_bytes: int  # bytes of its members (the tar without its end-of-archive blocks)
    samples: int


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    name: str  # object name: H(fragment keys)
    fragments: tuple[Fragment, ...]

    @property
    def samples(self) -> int:
        return sum(f.samples for f in self.fragments)


def _key_fraction(input_key: str) -> float:
    """A number in [0, 1) fixed by the key alone."""
    return int(hashlib.sha256(input_key.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def plan_shards(fragments: Sequence[Fragment], config: ShardConfig) -> list[ShardSpec]:
    """Cut fragments (any order; sorted here by input key) into shards (module docstring)."""
    ordered = sorted((f for f in fragments if f.samples > 0), key=lambda f: f.input_key)
    shards: list[list[Fragment]] = []
    current: list[Fragment] = []
    members = samples = 0

    def close() -> None:
        nonlocal current, members, samples
        if current:
            shards.append(current)
        current, members, samples = [], 0, 0

    for fragment in ordered:
        over = (samples + fragment.samples > config.max_samples_per_shard
                or tar_size(members + fragment.member_bytes) > config.max_bytes_per_shard)
        if current and over:
            close()
        current.append(fragment)
        members += fragment.member_bytes
        samples += fragment.samples
        fill = max(samples / config.max_samples_per_shard, tar_size(members) / config.max_bytes_per_shard)
        if fill >= 0.5 and _key_fraction(fragment.input_key) < 2.0 * (fill - 0.5):
            close()
    close()
    return [ShardSpec(name=digest("shard", SHARD_FORMAT, [f.key for f in group]), fragments=tuple(group))
            for group in shards]


def shard_object_url(out_url: str, name: str, extension: str = "tar") -> str:
    return storage.safe_join(out_url, f"{SHARD_OBJECTS}/{name}.{extension}")


INDEX_EXTENSION = "index.parquet"


def stored_shard_names(out_url: str) -> set[str]:
    """Names of the complete shard objects under ``OUT/objects/shards`` (one listing): those with
    their tar, index and sidecar."""
    base = storage.safe_join(out_url, SHARD_OBJECTS)
    if not storage.exists(base):
        return set()
    names = [url.rsplit("/", 1)[-1] for url in storage.list_files(base, "*")]
    present = {n for n in names if not n.startswith(".")}
    return {n[: -len(".json")] for n in present
            if n.endswith(".json") and f"{n[: -len('.json')]}.{INDEX_EXTENSION}" in present}


def read_sidecar(out_url: str, name: str) -> dict[str, Any]:
    """``{bytes, sha256, samples, index_sha256}`` of a stored shard object."""
    return json.loads(storage.read_text(shard_object_url(out_url, name, "json")))


class _CopyingReader:
    """Reads at most ``limit`` bytes of ``handle``, writing each byte read to ``out`` and ``digest``."""

    def __init__(self, handle: IO[bytes], out: IO[bytes], digest_: Any, limit: int) -> None:
        self._handle, self._out, self._digest = handle, out, digest_
        self.remaining = limit

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self._handle.read(size) if size else b""
        self.remaining -= len(data)
        self._out.write(data)
        self._digest.update(data)
        return data


def _copy_members(url: str, out: IO[bytes], digest_: Any, member_bytes: int) -> dict[str, dict[str, str]]:
    """Copy the first ``member_bytes`` of the fragment tar at ``url`` (its members, not its
    end-of-archive blocks) to ``out`` and ``digest_``; the sha256 of every member,
    ``{member key: {extension: hex}}``.

    One pass: ``tarfile`` reads (as a stream) the bytes being copied.
    """
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        reader = _CopyingReader(handle, out, digest_, member_bytes)
        members = _hash_members(reader)
    if reader.remaining:
        raise ValueError(f"fragment {url} has {member_bytes - reader.remaining} bytes, expected at least {member_bytes}")
    return members


def _hash_members(reader: _CopyingReader) -> dict[str, dict[str, str]]:
    """Read a tar stream to its end; ``{member key: {extension: sha256 of the member's data}}``."""
    members: dict[str, dict[str, str]] = {}
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                raise ValueError(f"fragment member {info.name!r} is not a regular file")
            key, extension = split_member_name(info.name)
            member, sha = tar.extractfile(info), hashlib.sha256()
            for chunk in iter(lambda: member.read(_COPY_CHUNK), b""):
                sha.update(chunk)
            members.setdefault(key, {})[extension] = sha.hexdigest()
    while reader.read(_COPY_CHUNK):  # whatever tarfile did not need (nothing, in a sound fragment)
        pass
    return members


class PackShards:
    """Operator: one item per shard (``key`` = shard name, ``fragments`` =
    [[tar url, member_bytes, samples, result key]]).

    ``index_stage``: the stage whose stored result (under the fragment's key) holds the
    fragment's ``index_rows``; ``schema``: the dataset schema whose index columns they have.
    """

    resources = {"num_cpus": 0.5, "num_gpus": 0.0, "batch_size": 1}

    def __init__(self, *, out_url: str, index_stage: str = "samples", schema: str = "pose3d") -> None:
        self.out_url = out_url
        self.index_stage = index_stage
        self.schema = schema

    def setup(self) -> None:
        """Nothing to load."""

    def _write_index(self, name: str, fragments: list[list[Any]], members: dict[str, dict[str, str]]) -> str:
        """``<name>.index.parquet``: the shard's samples' index rows, sorted by key, each with its
        members' sha256 (``members``: ``{member key: {extension: hex}}``); returns its sha256."""
        store = ResultStore(self.out_url)
        rows = []
        for _, _, _, key in fragments:
            for row in store.read(self.index_stage, key, ["index_rows"])["index_rows"]:
                if row["member_key"] not in members:
                    raise ValueError(f"shard {name}: index row {row['key']!r} has no members in the fragments")
                rows.append({**row, "shard": name, "member_sha256": member_sha256_json(members[row["member_key"]])})
        rows.sort(key=lambda r: r["key"])
        schema = load_schema(self.schema)
        data = parquet_bytes(rows, schema.arrow_schema(schema.index_columns))
        storage.write_bytes(shard_object_url(self.out_url, name, INDEX_EXTENSION), data)
        return hashlib.sha256(data).hexdigest()

    def _pack(self, name: str, fragments: list[list[Any]]) -> dict[str, Any]:
        digest_ = hashlib.sha256()
        written = samples = 0
        members: dict[str, dict[str, str]] = {}
        with storage.atomic_open(shard_object_url(self.out_url, name), "wb") as out:
            for url, member_bytes, count, _ in fragments:
                for key, digests in _copy_members(url, out, digest_, int(member_bytes)).items():
                    if key in members:
                        raise ValueError(f"shard {name}: member key {key!r} is in two fragments")
                    members[key] = digests
                written += int(member_bytes)
                samples += int(count)
            end = tar_size(written) - written
            out.write(b"\0" * end)
            digest_.update(b"\0" * end)
        index_sha256 = self._write_index(name, fragments, members)
        sidecar = {"bytes": written + end, "sha256": digest_.hexdigest(), "samples": samples,
                   "index_sha256": index_sha256}
        storage.write_text(shard_object_url(self.out_url, name, "json"), json.dumps(sidecar, sort_keys=True))
        return sidecar

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        size = len(batch["key"])
        items = ItemStatus.of(batch, size)
        sidecars: list[Any] = [None] * size
        for i in items.pending():
            try:
                sidecars[i] = json.dumps(self._pack(str(batch["key"][i]), list(batch["fragments"][i])), sort_keys=True)
            except (OSError, ValueError, KeyError, tarfile.TarError) as exc:
                items.fail(i, f"packing shard {batch['key'][i]}: {type(exc).__name__}: {exc}")
        out = dict(batch)
        out["fragments"] = [None] * size  # nothing heavy goes back
        out["sidecar"] = sidecars
        return items.write(out)
