"""Reading and writing model files (weights, priors, body models) on any fsspec URL.

Loaders that are given a path fetch their bytes here; writes are whole-file (a temporary name,
then a rename). Embedded model files ship in the ``labelmill.models.data`` package.
"""

from __future__ import annotations

import importlib.resources
import io
import uuid
import zipfile

import fsspec
import numpy as np

__all__ = ["read_model_bytes", "write_model_bytes", "embedded_model_file", "npz_arrays", "ZIP_MAGIC"]

ZIP_MAGIC = b"PK\x03\x04"


def embedded_model_file(name: str) -> str | None:
    """Local path of the embedded model file ``name`` (in labelmill/models/data), or None if absent."""
    resource = importlib.resources.files("labelmill.models.data") / name
    return str(resource) if resource.is_file() else None


def read_model_bytes(path: str, *, what: str) -> bytes:
    """The bytes of the model file ``path``; ``what`` names it in errors ("pose prior file")."""
    try:
        with fsspec.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise FileNotFoundError(f"{what} {path} is a directory, not a file") from None


def write_model_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole: a reader never sees a partial file."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    parent = fs._parent(fs_path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{fs_path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as handle:
            handle.write(data)
        fs.mv(tmp, fs_path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def npz_arrays(data: bytes, *, what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` bytes ``data``, read without pickle; ``ValueError`` naming
    ``what`` ("body model file X") for anything else: not a zip (numpy would call it "pickled
    data"), a single ``.npy``, a truncated or corrupt archive, an object array."""
    if data[:4] != ZIP_MAGIC:
        raise ValueError(f"{what}: not an .npz (zip) archive (starts with {bytes(data[:8])!r})")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in npz.files}
    except (OSError, ValueError, EOFError, KeyError, NotImplementedError, RuntimeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{what}: not a readable .npz ({type(exc).__name__}: {exc})") from None
