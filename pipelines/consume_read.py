"""Find, read and decode single samples of a dataset version by byte range.

``index.parquet`` lists every sample with its shard and ``num_bytes`` (its members' tar size,
headers and padding included), and a shard holds its samples in key order from byte 0, so a
sample's byte range is the sum of the ``num_bytes`` before it in its shard. :func:`locate`
computes those ranges; :func:`read_members` reads one range (``fs.cat_file``: one request on an
object store) and checks that it holds exactly that sample's members, with the sha256 the index
records. Decoders turn members into tensors and raise ``ValueError`` naming the shard, the
sample key and the field on anything that breaks the schema.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from typing import IO, Any, Iterable, Mapping

import cv2
import numpy as np
import pyarrow as pa
import torch

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.formats.shards import split_member_name
from labelmill.infra.schema import DatasetSchema, check_field

__all__ = ["SampleRef", "locate", "read_members", "read_member_sequential", "decode_pose3d", "decode_segmentation"]


@dataclasses.dataclass(frozen=True)
class SampleRef:
    """Where one sample's members are: ``num_bytes`` bytes of ``shard_url`` from ``offset``."""

    key: str
    member_key: str
    shard_url: str
    offset: int
    num_bytes: int
    sha256: Mapping[str, str]


def _shard_url_map(version_url: str) -> dict[str, str]:
    manifest = dv.read_manifest(version_url)
    if manifest is None:
        return {}
    root = version_url.rstrip("/").rsplit("/", 2)[0]
    return {entry["name"]: storage.safe_join(root, entry["path"]) for entry in manifest}


def locate(version_url: str, index: pa.Table) -> list[SampleRef]:
    """A :class:`SampleRef` per row of ``index`` (the version's whole ``index.parquet``), in key order."""
    for column in ("key", "member_key", "shard", "num_bytes", "member_sha256"):
        if column not in index.column_names:
            raise ValueError(f"{version_url}/index.parquet: missing column {column!r}")
    shared = _shard_url_map(version_url)
    rows = sorted(zip(*(index.column(c).to_pylist() for c in ("key", "member_key", "shard", "num_bytes",
                                                               "member_sha256"))))
    offsets: dict[str, int] = {}
    refs = []
    for key, member, shard, num_bytes, sha in rows:
        url = shared.get(shard) or storage.safe_join(version_url, f"{dv.SHARDS_DIR}/{shard}")
        offset = offsets.get(shard, 0)
        offsets[shard] = offset + int(num_bytes)
        refs.append(SampleRef(key, member, url, offset, int(num_bytes), json.loads(sha)))
    return refs


def _where(ref: SampleRef) -> str:
    return f"{ref.shard_url} sample {ref.key!r}"


def _members(ref: SampleRef, tar: tarfile.TarFile, wanted: Iterable[str] | None, verify: bool) -> dict[str, bytes]:
    wanted = None if wanted is None else set(wanted)
    out = {}
    for member in tar:
        try:
            stem, extension = split_member_name(member.name)
        except ValueError:
            stem, extension = None, None
        if not member.isfile() or stem != ref.member_key:
            raise ValueError(f"{_where(ref)}: bytes {ref.offset}..{ref.offset + ref.num_bytes} hold member "
                             f"{member.name!r}, not this sample's (index.parquet and the shard disagree)")
        if wanted is not None and extension not in wanted:
            continue
        data = tar.extractfile(member).read()
        expected = ref.sha256.get(extension)
        if verify and expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise ValueError(f"{_where(ref)}: field {extension!r}: sha256 differs from index.parquet (corrupted member)")
        out[extension] = data
    return out


def read_members(ref: SampleRef, *, verify: bool = True) -> dict[str, bytes]:
    """``{extension: bytes}`` of one sample, read as one byte range."""
    fs, path = storage.filesystem(ref.shard_url)
    try:
        data = fs.cat_file(path, start=ref.offset, end=ref.offset + ref.num_bytes)
    except FileNotFoundError:
        raise FileNotFoundError(f"{_where(ref)}: shard not found") from None
    if len(data) != ref.num_bytes:
        raise ValueError(f"{_where(ref)}: shard ends before the sample's bytes "
                         f"{ref.offset}..{ref.offset + ref.num_bytes} (got {len(data)} bytes)")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            return _members(ref, tar, None, verify)
    except tarfile.TarError as exc:
        raise ValueError(f"{_where(ref)}: not a tar sample at bytes {ref.offset}..: {exc}") from None


class _Window(io.RawIOBase):
    """``length`` bytes of a seekable file from ``start``, as a file of its own."""

    def __init__(self, handle: IO[bytes], start: int, length: int) -> None:
        self._handle, self._start, self._length, self._pos = handle, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._length if size is None or size < 0 else min(self._length, self._pos + size)
        self._handle.seek(self._start + self._pos)
        data = self._handle.read(end - self._pos)
        self._pos += len(data)
        return data


def read_member_sequential(handle: IO[bytes], ref: SampleRef, extension: str, *, verify: bool = True) -> bytes:
    """One member of a sample from an open shard ``handle``, skipping the other members' data
    (tar headers are read, data is seeked over): the load-time filters that need a member's
    values read only that member. Missing member: ``ValueError``."""
    try:
        with tarfile.open(fileobj=_Window(handle, ref.offset, ref.num_bytes), mode="r:") as tar:
            found = _members(ref, tar, (extension,), verify)
    except tarfile.TarError as exc:
        raise ValueError(f"{_where(ref)}: not a tar sample at bytes {ref.offset}..: {exc}") from None
    if extension not in found:
        raise ValueError(f"{_where(ref)}: missing field {extension!r}")
    return found[extension]


# ----------------------------------------------------------------------------- decoding


def _require_fields(ref: SampleRef, fields: Mapping[str, bytes], schema: DatasetSchema) -> None:
    missing = [e for e in schema.extensions if e not in fields]
    if missing:
        raise ValueError(f"{_where(ref)}: missing field {', '.join(map(repr, missing))} (schema {schema.id})")


def decode_json(ref: SampleRef, data: bytes, schema: DatasetSchema) -> dict[str, Any]:
    """The ``json`` field, checked against the schema's properties."""
    issues = check_field(schema.field("json"), data)
    if issues:
        raise ValueError(f"{_where(ref)}: field 'json' breaks schema {schema.id}: " + "; ".join(map(str, issues)))
    return json.loads(data)


def decode_npz(ref: SampleRef, data: bytes, schema: DatasetSchema, extension: str) -> dict[str, np.ndarray]:
    """The arrays of an npz field, each with the schema's dtype and shape (no pickle)."""
    spec = schema.field(extension)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:  # numpy raises many types for a broken archive
        raise ValueError(f"{_where(ref)}: field {extension!r}: not a readable npz ({exc})") from None
    for array_spec in spec.arrays:
        array = arrays.get(array_spec.name)
        item = f"field {extension!r} array {array_spec.name!r}"
        if array is None:
            raise ValueError(f"{_where(ref)}: {item}: missing")
        if array.dtype != np.dtype(array_spec.dtype) or array.shape != array_spec.shape:
            raise ValueError(f"{_where(ref)}: {item}: expected {array_spec.dtype} {array_spec.shape}, "
                             f"got {array.dtype} {array.shape}")
    return {a.name: arrays[a.name] for a in spec.arrays}


def _decode_image(ref: SampleRef, data: bytes, extension: str, flags: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ValueError(f"{_where(ref)}: field {extension!r}: not a decodable image")
    return image


def decode_rgb(ref: SampleRef, data: bytes) -> torch.Tensor:
    """A JPEG as a uint8 ``(3, H, W)`` RGB tensor."""
    image = _decode_image(ref, data, "jpg", cv2.IMREAD_COLOR)
    return torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)))


def decode_pose3d(ref: SampleRef, fields: Mapping[str, bytes], schema: DatasetSchema, *,
                  images: bool = True, kept_only: bool = True) -> dict[str, Any]:
    """One pose3d sample as tensors (docs/consume.md, *pose3d_frames*)."""
    _require_fields(ref, fields, schema)
    meta = decode_json(ref, fields["json"], schema)
    if kept_only and not (meta["keep_frame"] and meta["keep_video"]):
        raise ValueError(f"{_where(ref)}: field 'json': keep_frame/keep_video false in a pose3d sample "
                         f"(schema {schema.id} stores kept frames only)")
    arrays = decode_npz(ref, fields["smpl.npz"], schema, "smpl.npz")
    sample: dict[str, Any] = {"key": ref.key}
    if images:
        sample["image"] = decode_rgb(ref, fields["jpg"])
    sample.update({name: torch.from_numpy(array) for name, array in arrays.items()})
    sample["frame"] = torch.tensor(meta["frame"], dtype=torch.int64)
    sample["frame_loss"] = torch.tensor(meta["frame_loss"], dtype=torch.float32)
    sample["video_loss"] = torch.tensor(meta["video_loss"], dtype=torch.float32)
    sample["label"] = meta["label"]
    sample["meta"] = meta
    return sample


def decode_segmentation(ref: SampleRef, fields: Mapping[str, bytes], schema: DatasetSchema, *,
                        images: bool = True) -> dict[str, Any]:
    """One segmentation sample as tensors (docs/consume.md, *segmentation_images*)."""
    _require_fields(ref, fields, schema)
    meta = decode_json(ref, fields["json"], schema)
    size = (int(meta["height"]), int(meta["width"]))
    sem = _decode_image(ref, fields["sem.png"], "sem.png", cv2.IMREAD_UNCHANGED)
    inst = _decode_image(ref, fields["inst.png"], "inst.png", cv2.IMREAD_UNCHANGED)
    for extension, mask, dtype in (("sem.png", sem, np.uint8), ("inst.png", inst, np.uint16)):
        if mask.dtype != dtype or mask.shape != size:
            raise ValueError(f"{_where(ref)}: field {extension!r}: expected a {np.dtype(dtype)} {size} mask "
                             f"(json height, width), got {mask.dtype} {mask.shape}")
    sample: dict[str, Any] = {"key": ref.key}
    if images:
        image = decode_rgb(ref, fields["jpg"])
        if tuple(image.shape[1:]) != size:
            raise ValueError(f"{_where(ref)}: field 'jpg': size {tuple(image.shape[1:])} differs from json {size}")
        sample["image"] = image
    sample["sem"] = torch.from_numpy(sem)
    sample["inst"] = torch.from_numpy(inst.astype(np.int32))
    sample["meta"] = meta
    return sample
