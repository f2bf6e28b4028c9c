"""Deterministic WebDataset shards: field encoders, tar member names, shard plans, tar bytes.

Pure and engine-free: nothing here touches a filesystem URL (``infra/dataset_version.py``
writes shards to storage with :func:`write_tar`).

A *sample* is a key plus encoded fields, one tar member per field, named
``<member key>.<extension>`` (WebDataset's layout: a reader splits a member name at the first
dot of its basename into the sample key and the field extension, e.g. ``smpl.npz``).

**Member keys.** Sample keys look like ``<input key>/<frame:06d>`` (DESIGN §5); a '/' would
make tar directories and a '.' would end the key early, so :func:`member_key` maps a sample key
one-to-one onto the characters ``[A-Za-z0-9_%-]``:

* letters, digits and ``-`` stay as they are;
* ``/`` becomes ``__`` (two underscores);
* ``_`` stays, except next to another ``_`` or a ``/`` in the key, where it becomes ``%5F``
  (so every run of underscores in a member key is either one literal ``_`` or pairs standing
  for slashes);
* every other character becomes ``%XX`` for each byte of its UTF-8 form (``.`` -> ``%2E``,
  ``%`` -> ``%25``, space -> ``%20``).

``vid_01/000004`` -> ``vid_01__000004``; ``a.mp4/000000`` -> ``a%2Emp4__000000``.
:func:`sample_key_from_member` inverts it. No member key contains a dot, a slash or a path
component such as ``..``, so extracting a shard can never write outside its directory.

**Length.** A member name is one path component when a shard is extracted, so it must fit the
file-name limit of common filesystems: :data:`MAX_MEMBER_NAME_BYTES` (255, NAME_MAX of ext4,
XFS, btrfs, APFS, ZFS). pax headers carry any length; what ``tar x`` can create does not.
:func:`member_name_problem` checks a sample key against it; the corpus readers keep input keys
short enough that pipeline samples never reach it (``labelmill.infra.corpus.key_problem``).

**Determinism.** For the same samples (in any order) the bytes are identical: samples are
written in sorted key order, members in sorted extension order, every header has mtime 0,
uid/gid 0, empty user/group names and mode 0o644; JSON is canonical (sorted keys, no spaces,
NaN -> null) and ``.npz`` archives carry fixed zip timestamps. Headers are POSIX.1-2001 (pax)
ustar: a pax record appears only for a member name longer than 100 characters and then holds
just that name. The bytes equal what :mod:`tarfile` writes for the same members, and what
``webdataset.TarWriter(f, encoder=False, mtime=0, mode=0o644, user="", group="")`` writes for
the same sorted samples (both tested). Headers are built here with ``tarfile.TarInfo.tobuf``
rather than through ``TarWriter`` so that a shard's exact size is known before it is written
(:func:`plan_shards`), the header format is pinned here (TarWriter 1.0.2 ignores its ``format``
argument) and the output only needs a ``write()`` method.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import tarfile
import zipfile
from typing import IO, Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "ShardConfig",
    "Sample",
    "ShardPlanEntry",
    "encode_json",
    "encode_npz",
    "decode_npz",
    "member_key",
    "MAX_MEMBER_NAME_BYTES",
    "member_name_problem",
    "sample_key_from_member",
    "split_member_name",
    "sample_tar_size",
    "members_tar_size",
    "tar_size",
    "plan_shards",
    "write_tar",
    "tar_bytes",
    "TAR_BLOCK",
    "TAR_RECORD",
]

TAR_BLOCK = tarfile.BLOCKSIZE  # 512 bytes: header and data granularity
TAR_RECORD = tarfile.RECORDSIZE  # 10240 bytes: an archive's length is a multiple of this
_TAR_FORMAT = tarfile.PAX_FORMAT
_TAR_ENCODING = "utf-8"
_MEMBER_MODE = 0o644
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip header can hold
_ZIP_UNIX = 3  # "create_system": Unix, so the mode bits in external_attr mean what they say

_EXTENSION_RE = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")
_ARRAY_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_MIB = 1 << 20


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """How samples are cut into shards (``output.shards.*``)."""

    # A shard is closed once it holds this many samples.
    max_samples_per_shard: int = 1000
    # A shard is closed before it would grow past this many bytes (tar headers and padding
    # included). A single sample larger than this gets a shard of its own.
    max_bytes_per_shard: int = 256 * _MIB
    # str.format pattern of shard file names, given the 0-based shard index; must end in .tar.
    name_pattern: str = "shard-{:06d}.tar"

    def __post_init__(self) -> None:
        for name in ("max_samples_per_shard", "max_bytes_per_shard"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_bytes_per_shard < 2 * TAR_RECORD:
            raise ValueError(
                f"max_bytes_per_shard must be at least {2 * TAR_RECORD} bytes (one tar record per sample "
                f"and the archive end), got {self.max_bytes_per_shard}"
            )
        try:
            first, second = self.name_pattern.format(0), self.name_pattern.format(1)
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(
                f"name_pattern must be a str.format pattern taking one integer, got {self.name_pattern!r} ({exc})"
            ) from None
        if first == second:
            raise ValueError(f"name_pattern must include the shard index, got {self.name_pattern!r}")
        for name in (first, second):
            if not name.endswith(".tar") or "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(
                    f"name_pattern must give plain file names ending in .tar (no '/', no leading '.'), "
                    f"got {name!r} from {self.name_pattern!r}"
                )

    def shard_name(self, index: int) -> str:
        """File name of shard ``index`` (0-based)."""
        return self.name_pattern.format(index)


# ----------------------------------------------------------------------------- samples


@dataclasses.dataclass(frozen=True)
class Sample:
    """One training example: a key, its encoded fields and its index.parquet columns."""

    key: str  # sample key, e.g. "<input key>/<frame:06d>"; mapped to a member key in the tar
    fields: Mapping[str, bytes]  # extension ("jpg", "json", "smpl.npz") -> encoded bytes
    index: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # extra index.parquet columns

    def __post_init__(self) -> None:
        member_key(self.key)  # raises on an empty or non-string key
        if not self.fields:
            raise ValueError(f"sample {self.key!r} has no fields")
        for extension, data in self.fields.items():
            if not isinstance(extension, str) or not _EXTENSION_RE.match(extension):
                raise ValueError(
                    f"sample {self.key!r}: field extension {extension!r} must be lower-case letters/digits "
                    "separated by dots, e.g. 'jpg' or 'smpl.npz'"
                )
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ValueError(
                    f"sample {self.key!r}: field {extension!r} must be encoded bytes, got {type(data).__name__}"
                )

    @property
    def member_key(self) -> str:
        return member_key(self.key)

    @property
    def num_bytes(self) -> int:
        """Payload bytes of all fields (without tar headers)."""
        return sum(len(v) for v in self.fields.values())


@dataclasses.dataclass(frozen=True)
class ShardPlanEntry:
    """Which samples (positions in the sorted sample list) go into one shard."""

    index: int  # 0-based shard index
    name: str  # file name from ShardConfig.name_pattern
    start: int  # first sample position (inclusive)
    stop: int  # last sample position (exclusive)
    num_bytes: int  # exact size of the tar file in bytes


# ----------------------------------------------------------------------------- field encoders


def _plain_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON types: numpy scalars/arrays unwrapped, non-finite floats -> None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.floating):
        # float32 -> its shortest decimal form (0.1, not 0.10000000149011612)
        value = float(str(value)) if isinstance(value, np.float32) else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return [_plain_json(v, where) for v in value.tolist()] if value.ndim else _plain_json(value.item(), where)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"JSON field {where}: object keys must be strings, got {k!r}")
            out[k] = _plain_json(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"JSON field {where}: cannot encode a {type(value).__name__}")


def encode_json(document: Mapping[str, Any]) -> bytes:
    """Canonical UTF-8 JSON: sorted keys, no spaces, NaN/inf -> null, numpy values unwrapped."""
    plain = _plain_json(document, "$")
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_npz(arrays: Mapping[str, np.ndarray], *, dtype: Any = np.float32) -> bytes:
    """An uncompressed ``.npz`` (what ``np.savez`` writes) with fixed zip timestamps.

    Arrays are stored in name order, converted to ``dtype`` (None keeps each array's dtype;
    object arrays are refused), C-contiguous, ``.npy`` format 1.0, never pickled. ``np.load``
    reads the result with ``allow_pickle=False``.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            if not _ARRAY_NAME_RE.match(name):
                raise ValueError(f"npz array name {name!r} must be letters, digits and '_'")
            array = np.asarray(arrays[name]) if dtype is None else np.asarray(arrays[name], dtype=dtype)
            if array.dtype.hasobject:
                raise ValueError(f"npz array {name!r} has dtype object; only numeric arrays are stored (no pickle)")
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE_TIME)
            info.create_system = _ZIP_UNIX
            info.external_attr = (0o100000 | _MEMBER_MODE) << 16  # regular file, rw-r--r--
            info.compress_type = zipfile.ZIP_STORED
            archive.writestr(info, npy.getvalue())
    return buffer.getvalue()


def decode_npz(data: bytes) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` field, read with ``allow_pickle=False``."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


# ----------------------------------------------------------------------------- member names


def member_key(key: str) -> str:
    """The tar member key of sample ``key`` (one-to-one; see the module docstring)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"sample key must be a non-empty string, got {key!r}")
    out: list[str] = []
    for i, char in enumerate(key):
        if char in _PLAIN:
            out.append(char)
        elif char == "/":
            out.append("__")
        elif char == "_":
            before = key[i - 1] if i > 0 else ""
            after = key[i + 1] if i + 1 < len(key) else ""
            out.append("%5F" if before in ("_", "/") or after in ("_", "/") else "_")
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


# Longest tar member name (UTF-8 bytes) that `tar x` can create as a file on common filesystems.
MAX_MEMBER_NAME_BYTES = 255


def member_name_problem(key: str, extensions: Iterable[str]) -> str | None:
    """Why sample ``key`` cannot be extracted with fields ``extensions`` (a member name longer than
    :data:`MAX_MEMBER_NAME_BYTES` bytes), or None when every member name fits."""
    member = member_key(key)
    longest = max((len(f"{member}.{extension}".encode("utf-8")) for extension in extensions), default=0)
    if longest > MAX_MEMBER_NAME_BYTES:
        return (f"sample key {key[:60]!r}{'...' if len(key) > 60 else ''} gives tar member names of {longest} bytes; "
                f"at most {MAX_MEMBER_NAME_BYTES} can be extracted as files (use a shorter input key)")
    return None


def sample_key_from_member(member: str) -> str:
    """Invert :func:`member_key`; raises ValueError for a string it cannot have produced."""
    raw = bytearray()
    i = 0
    while i < len(member):
        char = member[i]
        if char == "_":
            run = len(member) - i - len(member[i:].lstrip("_"))
            if run == 1:
                raw += b"_"
            elif run % 2 == 0:
                raw += b"/" * (run // 2)
            else:
                raise ValueError(f"member key {member!r}: a run of {run} underscores is neither '_' nor slashes")
            i += run
        elif char == "%":
            code = member[i + 1 : i + 3]
            if len(code) != 2 or not all(c in "0123456789ABCDEF" for c in code):
                raise ValueError(f"member key {member!r}: bad escape {member[i:i + 3]!r} at {i}")
            raw.append(int(code, 16))
            i += 3
        elif char in _PLAIN:
            raw += char.encode("ascii")
            i += 1
        else:
            raise ValueError(f"member key {member!r}: character {char!r} is never written by member_key")
    key = raw.decode("utf-8", "surrogatepass")
    if member_key(key) != member:
        raise ValueError(f"member key {member!r} is not in canonical form (expected {member_key(key)!r})")
    return key


def split_member_name(name: str) -> tuple[str, str]:
    """``(member key, extension)`` of a tar member name, split at the first dot like WebDataset."""
    base, dot, extension = name.partition(".")
    if not dot or not base or not extension or "/" in name:
        raise ValueError(f"tar member {name!r} is not '<key>.<extension>'")
    return base, extension


# ----------------------------------------------------------------------------- tar layout


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = _MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _member_header(name: str, size: int) -> bytes:
    return _member_info(name, size).tobuf(_TAR_FORMAT, _TAR_ENCODING, "strict")


def _padded(size: int) -> int:
    return -(-size // TAR_BLOCK) * TAR_BLOCK


def members_tar_size(member: str, field_sizes: Mapping[str, int]) -> int:
    """Bytes the members ``<member>.<extension>`` of the given data sizes take in a tar."""
    return sum(
        len(_member_header(f"{member}.{extension}", size)) + _padded(size) for extension, size in field_sizes.items()
    )


def sample_tar_size(sample: Sample) -> int:
    """Bytes the members of ``sample`` take in a tar (headers, data, padding)."""
    return members_tar_size(sample.member_key, {extension: len(data) for extension, data in sample.fields.items()})


def tar_size(members_bytes: int) -> int:
    """Size of a tar whose members take ``members_bytes``: plus two zero blocks, padded to a record."""
    return -(-(members_bytes + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


def _sorted_samples(samples: Iterable[Sample]) -> list[Sample]:
    ordered = sorted(samples, key=lambda s: s.key)
    for previous, current in zip(ordered, ordered[1:]):
        if previous.key == current.key:
            raise ValueError(f"duplicate sample key {current.key!r}")
    return ordered


def plan_shards(sample_sizes: Sequence[int], config: ShardConfig, *, first_index: int = 0) -> list[ShardPlanEntry]:
    """Cut samples (already in their final order) into consecutive shards.

    ``sample_sizes``: per sample, the bytes of its tar members (:func:`sample_tar_size`).
    A shard is closed when it holds ``max_samples_per_shard`` samples or when the next sample
    would make the tar larger than ``max_bytes_per_shard``; a sample that alone exceeds the
    byte limit gets a shard of its own.
    """
    plan: list[ShardPlanEntry] = []
    start, members = 0, 0
    for position, size in enumerate(sample_sizes):
        count = position - start
        full = count >= config.max_samples_per_shard or tar_size(members + size) > config.max_bytes_per_shard
        if count and full:
            index = first_index + len(plan)
            plan.append(ShardPlanEntry(index, config.shard_name(index), start, position, tar_size(members)))
            start, members = position, 0
        members += size
    if len(sample_sizes) > start:
        index = first_index + len(plan)
        plan.append(ShardPlanEntry(index, config.shard_name(index), start, len(sample_sizes), tar_size(members)))
    return plan


def write_tar(samples: Iterable[Sample], fileobj: IO[bytes]) -> int:
    """Write ``samples`` as one deterministic tar to a binary file object; returns bytes written.

    Samples are sorted by key (duplicates are refused), members of a sample by extension. The
    file object only needs ``write``: nothing is seeked, so streams and uploads work.
    """
    written = 0
    for sample in _sorted_samples(samples):
        key = sample.member_key
        for extension in sorted(sample.fields):
            data = bytes(sample.fields[extension])
            header = _member_header(f"{key}.{extension}", len(data))
            fileobj.write(header)
            fileobj.write(data)
            padding = _padded(len(data)) - len(data)
            if padding:
                fileobj.write(b"\0" * padding)
            written += len(header) + len(data) + padding
    end = tar_size(written) - written
    fileobj.write(b"\0" * end)
    return written + end


def tar_bytes(samples: Iterable[Sample]) -> bytes:
    """The bytes :func:`write_tar` writes."""
    buffer = io.BytesIO()
    write_tar(samples, buffer)
    return buffer.getvalue()
