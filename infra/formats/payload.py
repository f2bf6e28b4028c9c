"""The engines' wire format: one work item <-> one ``bytes`` payload, lossless and pickle-free.

Ray Data turns batches into Arrow tables and Beam moves elements through coders; neither keeps
ragged numpy arrays, lists of JPEG bytes and ``None`` intact. So engines move each item as one
opaque payload (plus its ``key`` beside it) and only the stage workers decode it.

Layout of a payload::

    b"LMP1"                      magic + format version
    uint32 little-endian H       length of the header
    H bytes                      JSON header (ASCII): {"root": <node>, "blobs": [len, ...]}
    blob 0, blob 1, ...          raw bytes, concatenated in header order

A node is a JSON value: ``null``, booleans, integers, floats (NaN/Infinity allowed), strings and
lists stand for themselves; a JSON object is always a tagged value:

    {"d": {name: node}}   dict with string keys (insertion order kept)
    {"t": [node, ...]}    tuple
    {"b": i}              bytes (blob i, stored raw)
    {"a": [i, dtype, shape, fortran]}
                          numpy array of a plain dtype: blob i holds its raw bytes (C order,
                          or Fortran order when ``fortran``); dtype as numpy's descr ("<f4")
    {"n": [i, dtype]}     numpy scalar of a plain dtype (same scalar type after decoding)
    {"A": i}, {"N": i}    array / scalar of a structured dtype: blob i in ``.npy`` format

Decoding returns exactly the types that went in (``bytearray``/``memoryview`` come back as
``bytes``; ``int``/``float``/``str`` subclasses other than numpy scalars come back as the base
type). Encoding is deterministic: the same item gives the same bytes.
"""

from __future__ import annotations

import functools
import io
import json
import math
import struct
from typing import Any, Iterable, Iterator

import numpy as np

__all__ = [
    "PayloadError",
    "MAGIC",
    "encode_item",
    "decode_item",
    "find_unsupported",
    "items_to_table",
    "table_to_items",
    "iter_payloads",
    "KEY_COLUMN",
    "PAYLOAD_COLUMN",
]

MAGIC = b"LMP1"
KEY_COLUMN = "key"
PAYLOAD_COLUMN = "payload"

_HEADER_LENGTH = struct.Struct("<I")


class PayloadError(ValueError):
    """A value cannot be encoded (unsupported type) or a payload is malformed."""


# ----------------------------------------------------------------------------- encode


def _check_dtype(dtype: np.dtype, path: str) -> None:
    if dtype.hasobject:
        raise PayloadError(f"field {path!r}: numpy arrays of dtype object cannot be encoded")


def _plain_descr(dtype: np.dtype) -> str | None:
    """numpy's descr string for dtypes without fields ("<f4", "|b1", "<U3"), else None."""
    if dtype.names is not None or dtype.subdtype is not None or dtype.metadata:
        return None
    descr = np.lib.format.dtype_to_descr(dtype)
    return descr if isinstance(descr, str) else None


def _raw_bytes(array: np.ndarray) -> tuple[Any, bool]:
    """(zero-copy view of the data bytes, stored in Fortran order?)."""
    fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
    data = np.ascontiguousarray(array.T if fortran else array)
    return (memoryview(data.reshape(-1).view(np.uint8)) if data.size else b""), fortran


def _npy_parts(array: np.ndarray) -> list[Any]:
    """``.npy`` header bytes plus a zero-copy view of the data (structured dtypes)."""
    header_fields = np.lib.format.header_data_from_array_1_0(array)
    header = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(header, header_fields)
    except ValueError:  # header longer than 64 KiB (huge structured dtypes)
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, header_fields)
    data, _ = _raw_bytes(array.T if header_fields["fortran_order"] else array)
    return [header.getvalue(), data]


class _Encoder:
    def __init__(self) -> None:
        self.blobs: list[list[Any]] = []  # each blob: list of byte chunks

    def _blob(self, parts: list[Any]) -> int:
        self.blobs.append(parts)
        return len(self.blobs) - 1

    def node(self, value: Any, path: str) -> Any:
        # numpy scalars first: np.float64 is a float and np.str_ a str.
        if isinstance(value, (np.generic, np.ndarray)):
            _check_dtype(value.dtype, path)
            descr = _plain_descr(value.dtype)
            if isinstance(value, np.generic):
                if descr is None:
                    return {"N": self._blob(_npy_parts(np.asarray(value)))}
                return {"n": [self._blob([np.asarray(value).tobytes()]), descr]}
            if descr is None:
                return {"A": self._blob(_npy_parts(value))}
            data, fortran = _raw_bytes(value)
            return {"a": [self._blob([data]), descr, list(value.shape), fortran]}
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (bytes, bytearray)):
            return {"b": self._blob([value])}
        if isinstance(value, memoryview):
            return {"b": self._blob([value.tobytes()])}
        if isinstance(value, list):
            return [self.node(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {"t": [self.node(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise PayloadError(f"field {path!r}: dict keys must be strings, got {type(k).__name__} {k!r}")
                out[k] = self.node(v, f"{path}.{k}" if path else k)
            return {"d": out}
        raise PayloadError(
            f"field {path!r} holds a {type(value).__module__}.{type(value).__qualname__}, which the engine wire "
            "format cannot carry (use numpy arrays, bytes, str, numbers, None, lists, tuples or dicts)"
        )


def encode_item(item: dict[str, Any]) -> bytes:
    """One work item (dict with string keys) -> payload bytes. Raises :class:`PayloadError`."""
    if not isinstance(item, dict):
        raise PayloadError(f"a work item must be a dict, got {type(item).__name__}")
    encoder = _Encoder()
    root = encoder.node(item, "")
    blob_lengths = [sum(memoryview(p).nbytes for p in parts) for parts in encoder.blobs]
    header = json.dumps({"root": root, "blobs": blob_lengths}, separators=(",", ":")).encode("ascii")
    chunks: list[Any] = [MAGIC, _HEADER_LENGTH.pack(len(header)), header]
    for parts in encoder.blobs:
        chunks.extend(parts)
    return b"".join(chunks)


_SCALAR_TYPES = (type(None), bool, int, float, str, bytes, bytearray, memoryview)


def find_unsupported(value: Any, path: str = "") -> str | None:
    """The first reason ``value`` cannot be encoded (naming the field path), or None if it can.

    A type walk only: no bytes are produced, so it is cheap enough to run on every output item.
    """
    if isinstance(value, _SCALAR_TYPES):
        return None
    if isinstance(value, (np.ndarray, np.generic)):
        return f"field {path!r}: numpy arrays of dtype object cannot be encoded" if value.dtype.hasobject else None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            problem = find_unsupported(v, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"field {path!r}: dict keys must be strings, got {type(k).__name__} {k!r}"
            problem = find_unsupported(v, f"{path}.{k}" if path else k)
            if problem:
                return problem
        return None
    try:
        _Encoder().node(value, path)
    except PayloadError as exc:
        return str(exc)
    return None


# ----------------------------------------------------------------------------- decode


@functools.lru_cache(maxsize=256)
def _dtype(descr: str) -> np.dtype:
    return np.lib.format.descr_to_dtype(descr)


def _read_raw(blob: memoryview, dtype: np.dtype, shape: tuple[int, ...], fortran: bool, where: str) -> np.ndarray:
    """Array from raw data bytes with one copy (the result is writable and owns its memory)."""
    if dtype.hasobject:
        raise PayloadError(f"{where}: object arrays are not allowed")
    count = math.prod(shape)
    if len(blob) != count * dtype.itemsize:
        raise PayloadError(f"{where}: array blob holds {len(blob)} bytes, expected {count * dtype.itemsize} for {dtype} {shape}")
    flat = np.frombuffer(blob, dtype=dtype, count=count)
    if fortran:
        return flat.reshape(shape[::-1]).T.copy(order="F")
    return flat.reshape(shape).copy()


def _read_npy(blob: memoryview, where: str) -> np.ndarray:
    """Array from ``.npy`` bytes with one copy (the result is writable and owns its memory)."""
    header = io.BytesIO(blob[: min(len(blob), 70000)])
    try:
        version = np.lib.format.read_magic(header)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(header)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(header)
        else:
            return np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
    except ValueError as exc:
        raise PayloadError(f"{where}: bad .npy blob: {exc}") from exc
    return _read_raw(blob[header.tell() :], dtype, shape, fortran_order, where)


class _Decoder:
    def __init__(self, blobs: list[memoryview], where: str) -> None:
        self.blobs = blobs
        self.where = where

    def _blob(self, index: Any) -> memoryview:
        if not isinstance(index, int) or not 0 <= index < len(self.blobs):
            raise PayloadError(f"{self.where}: blob index {index!r} out of range")
        return self.blobs[index]

    def node(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.node(v) for v in node]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            raise PayloadError(f"{self.where}: malformed node {node!r}")
        (tag, body), = node.items()
        if tag == "d":
            return {k: self.node(v) for k, v in body.items()}
        if tag == "t":
            return tuple(self.node(v) for v in body)
        if tag == "b":
            return bytes(self._blob(body))
        try:
            if tag == "a":
                index, descr, shape, fortran = body
                return _read_raw(self._blob(index), _dtype(descr), tuple(shape), fortran, self.where)
            if tag == "n":
                index, descr = body
                return _read_raw(self._blob(index), _dtype(descr), (), False, self.where)[()]
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PayloadError):
                raise
            raise PayloadError(f"{self.where}: malformed numpy node {node!r}: {exc}") from exc
        if tag == "A":
            return _read_npy(self._blob(body), self.where)
        if tag == "N":
            return _read_npy(self._blob(body), self.where)[()]
        raise PayloadError(f"{self.where}: unknown node tag {tag!r}")


def decode_item(payload: bytes | memoryview) -> dict[str, Any]:
    """Payload bytes -> the work item that :func:`encode_item` was given."""
    view = memoryview(payload).cast("B")
    if bytes(view[:4]) != MAGIC:
        raise PayloadError(f"not a labelmill payload (magic {bytes(view[:4])!r}, expected {MAGIC!r})")
    if len(view) < 8:
        raise PayloadError("truncated payload header")
    (header_length,) = _HEADER_LENGTH.unpack(view[4:8])
    try:
        header = json.loads(bytes(view[8 : 8 + header_length]))
        root, blob_lengths = header["root"], header["blobs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PayloadError(f"malformed payload header: {exc}") from exc
    blobs, position = [], 8 + header_length
    for length in blob_lengths:
        blobs.append(view[position : position + length])
        position += length
    if position != len(view):
        raise PayloadError(f"payload length {len(view)} does not match its header (expected {position})")
    item = _Decoder(blobs, "payload").node(root)
    if not isinstance(item, dict):
        raise PayloadError("payload root is not a work item dict")
    return item


# ----------------------------------------------------------------------------- Arrow tables


def items_to_table(items: Iterable[dict[str, Any]], extra_columns: dict[str, list] | None = None) -> "Any":
    """Arrow table with columns ``key`` (string), ``payload`` (large_binary) and ``extra_columns``."""
    import pyarrow as pa

    keys, payloads = [], []
    for item in items:
        keys.append(item["key"])
        payloads.append(encode_item(item))
    columns = {KEY_COLUMN: pa.array(keys, type=pa.string()), PAYLOAD_COLUMN: pa.array(payloads, type=pa.large_binary())}
    for name, values in (extra_columns or {}).items():
        columns[name] = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    return pa.table(columns)


def iter_payloads(table: Any) -> Iterator[memoryview]:
    """Zero-copy views of the ``payload`` column of an Arrow table or record batch (binary or large_binary)."""
    import pyarrow as pa

    column = table.column(PAYLOAD_COLUMN)
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if chunk.null_count:
            raise PayloadError("the payload column holds nulls")
        offsets_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        _, offsets_buffer, data_buffer = chunk.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=offsets_type)[chunk.offset : chunk.offset + len(chunk) + 1]
        data = memoryview(data_buffer) if data_buffer is not None else memoryview(b"")
        for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            yield data[start:end]


def table_to_items(table: Any) -> list[dict[str, Any]]:
    """Decode every payload of an Arrow table (inverse of :func:`items_to_table`)."""
    return [decode_item(p) for p in iter_payloads(table)]
