"""The stage-result codec: one work item's columns from one stage <-> one ``.npz`` (zip) archive.

A stage result holds the columns a stage added to an item. The archive is an uncompressed zip
whose member names say how each column is stored, so a reader can open one column without
reading the others (frames stay on storage until a stage needs them):

    <column>.npy              a numpy array (or numpy scalar: a 0-d array), ``allow_pickle=False``
    <column>.json             a JSON value (None, bool, int, float incl. NaN, str, lists, dicts)
    <column>/<i:06d>.bin      element i of a list of bytes (JPEG frames)
    <column>/<i:06d>.npy      element i of a list of numpy arrays (ragged per-frame arrays)
    <column>.list.json        {"length": n, "kind": "bin" | "npy"} for the two list forms

``np.load`` opens the archive and reads its ``.npy`` arrays. Nothing is pickled; encoding is
deterministic (members in name order, fixed zip timestamps), so the same columns give the same
bytes. Decoding returns the same types: numpy arrays and scalars keep their dtype, lists of
bytes or arrays come back as lists, JSON values as Python values (tuples become lists).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import IO, Any, Iterable, Mapping

import numpy as np

__all__ = ["ResultCodecError", "encode_result", "decode_result", "result_columns"]

_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_COLUMN_RE = re.compile(r"^[A-Za-z0-9_]+$")


class ResultCodecError(ValueError):
    """A column cannot be stored, or an archive is not a stage result (the message says which)."""


def _json_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ResultCodecError(f"{where}: mapping keys must be strings, got {k!r}")
            out[k] = _json_value(v, f"{where}.{k}")
        return out
    if isinstance(value, np.generic) and not value.dtype.hasobject:
        return value.item()
    raise ResultCodecError(f"{where}: cannot store a {type(value).__name__} (arrays, bytes lists or JSON values only)")


def _npy(array: np.ndarray, where: str) -> bytes:
    if array.dtype.hasobject:
        raise ResultCodecError(f"{where}: arrays of Python objects are not stored (no pickle)")
    buffer = io.BytesIO()
    array = np.asarray(array, order="C")  # (np.ascontiguousarray would turn a 0-d array into shape (1,))
    np.lib.format.write_array(buffer, array, version=(1, 0), allow_pickle=False)
    return buffer.getvalue()


def _members(name: str, value: Any) -> Iterable[tuple[str, bytes]]:
    where = f"column {name!r}"
    if isinstance(value, np.ndarray):
        yield f"{name}.npy", _npy(value, where)
    elif isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        yield f"{name}.npy", _npy(np.asarray(value), where)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        yield f"{name}.list.json", json.dumps({"length": 1, "kind": "bin", "single": True}).encode()
        yield f"{name}/{0:06d}.bin", bytes(value)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (bytes, bytearray, memoryview)) for v in value):
        yield f"{name}.list.json", json.dumps({"length": len(value), "kind": "bin"}).encode()
        for i, v in enumerate(value):
            yield f"{name}/{i:06d}.bin", bytes(v)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
        yield f"{name}.list.json", json.dumps({"length": len(value), "kind": "npy"}).encode()
        for i, v in enumerate(value):
            yield f"{name}/{i:06d}.npy", _npy(v, f"{where}[{i}]")
    else:
        yield f"{name}.json", json.dumps(_json_value(value, where), sort_keys=True, allow_nan=True).encode()


def encode_result(columns: Mapping[str, Any]) -> bytes:
    """The archive of ``columns`` (see the module docstring); raises :class:`ResultCodecError`."""
    members: list[tuple[str, bytes]] = []
    for name in sorted(columns):
        if not isinstance(name, str) or not _COLUMN_RE.match(name):
            raise ResultCodecError(f"column name {name!r} must be letters, digits and '_'")
        members.extend(_members(name, columns[name]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for member, data in sorted(members):
            info = zipfile.ZipInfo(member, date_time=_ZIP_DATE_TIME)
            info.create_system = 3
            info.external_attr = (0o100000 | 0o644) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def _load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise ResultCodecError(f"{where}: not a plain .npy array ({exc})") from None


def result_columns(archive: zipfile.ZipFile) -> list[str]:
    """Column names stored in an open result archive."""
    names = set()
    for member in archive.namelist():
        if "/" in member:
            continue
        for suffix in (".list.json", ".npy", ".json"):
            if member.endswith(suffix):
                names.add(member[: -len(suffix)])
                break
    return sorted(names)


def decode_result(source: bytes | IO[bytes], columns: Iterable[str] | None = None, *, where: str = "result",
                  listed_in: str | None = None) -> dict[str, Any]:
    """Columns of an archive (all of them, or only ``columns``; absent ones are skipped).

    ``listed_in``: instead of ``columns``, the column (a JSON list of names) that names the columns
    to read, read first from the same open archive. ``source`` is the archive's bytes or a seekable
    binary file (an fsspec file reads only the members asked for). Raises
    :class:`ResultCodecError` naming ``where`` for a damaged archive.
    """
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        archive = zipfile.ZipFile(handle)
    except zipfile.BadZipFile as exc:
        raise ResultCodecError(f"{where}: not a stage result archive ({exc})") from None
    out: dict[str, Any] = {}
    with archive:
        present = set(archive.namelist())
        if listed_in is not None:
            columns = json.loads(archive.read(f"{listed_in}.json")) if f"{listed_in}.json" in present else []
        wanted = result_columns(archive) if columns is None else list(columns)
        for name in wanted:
            try:
                if f"{name}.npy" in present:
                    array = _load_npy(archive.read(f"{name}.npy"), f"{where}: column {name!r}")
                    out[name] = array[()] if array.ndim == 0 else array
                elif f"{name}.list.json" in present:
                    spec = json.loads(archive.read(f"{name}.list.json"))
                    kind, length = spec["kind"], int(spec["length"])
                    if kind == "bin":
                        values: list[Any] = [archive.read(f"{name}/{i:06d}.bin") for i in range(length)]
                    else:
                        values = [_load_npy(archive.read(f"{name}/{i:06d}.npy"), f"{where}: column {name!r}[{i}]")
                                  for i in range(length)]
                    out[name] = values[0] if spec.get("single") else values
                elif f"{name}.json" in present:
                    out[name] = json.loads(archive.read(f"{name}.json"))
            except (KeyError, ValueError, zipfile.BadZipFile) as exc:
                if isinstance(exc, ResultCodecError):
                    raise
                raise ResultCodecError(f"{where}: column {name!r} is damaged ({type(exc).__name__}: {exc})") from None
    return out

