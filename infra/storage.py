"""fsspec helpers: read, write atomically, list, join safely, on any URL.

Local paths, ``memory://`` and ``file://`` work out of the box; ``s3://``/``gs://`` work when
their fsspec packages (s3fs, gcsfs) are installed. Writes go to a temporary name beside the
target and are renamed (local: ``os.replace``; object stores: the upload itself is atomic per
object, so the temp object is moved/committed) so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import posixpath
import uuid
from typing import IO, Any, Iterator, Literal

import fsspec
from fsspec.core import url_to_fs

__all__ = [
    "PathEscapeError",
    "filesystem",
    "join",
    "safe_join",
    "exists",
    "makedirs",
    "read_bytes",
    "read_text",
    "write_bytes",
    "write_text",
    "atomic_open",
    "list_files",
    "file_fingerprint",
    "FingerprintMode",
    "remove",
]


class PathEscapeError(ValueError):
    """A relative path would leave its root (absolute, or climbs with '..')."""


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL or local path."""
    return url_to_fs(url)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def join(url: str, *parts: str) -> str:
    """Join URL parts with '/', keeping the protocol prefix."""
    out = url.rstrip("/")
    for p in parts:
        out = out + "/" + p.strip("/")
    return out


def safe_join(root: str, relative: str) -> str:
    """Join ``relative`` under ``root``, refusing anything that would escape ``root``."""
    rel = relative.replace("\\", "/")
    if rel.startswith("/") or "://" in rel:
        raise PathEscapeError(f"path {relative!r} must be relative to the output root")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise PathEscapeError(f"path {relative!r} escapes the output root {root!r}")
    return join(root, norm)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(url: str, encoding: str = "utf-8") -> str:
    return read_bytes(url).decode(encoding)


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb") -> Iterator[IO]:
    """Open ``url`` for writing through a temporary sibling; rename into place on success.

    On an exception the temporary file is removed and the target is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'wb' and 'w', not {mode!r}")
    fs, path = filesystem(url)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with fs.open(tmp, mode) as f:
            yield f
        if _is_local(fs):
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def write_bytes(url: str, data: bytes) -> None:
    """Atomically write ``data`` to ``url``."""
    with atomic_open(url, "wb") as f:
        f.write(data)


def write_text(url: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(url, text.encode(encoding))


def list_files(url: str, pattern: str = "*") -> list[str]:
    """Sorted URLs of files under ``url`` matching the glob ``pattern`` (may contain '**').

    One listing (``glob`` with details: no per-match lookups, which on an object store are one
    request each). Each URL is ``url`` joined with the match's path below it, so it keeps the
    caller's form (``memory://root/...``, ``s3://bucket/...``, a relative local path).
    """
    fs, path = filesystem(url)
    base = path.rstrip("/")
    with contextlib.suppress(Exception):  # a listing cached by this process must not hide new files
        fs.invalidate_cache(base)
    matches = fs.glob(posixpath.join(base, pattern) if base else pattern, detail=True)
    prefix = base + "/"
    out = []
    for match, info in sorted(matches.items()):
        if info.get("type") == "directory":
            continue
        out.append(join(url, match[len(prefix):]) if match.startswith(prefix) else fs.unstrip_protocol(match))
    return out


def remove(url: str, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


# 'stat': names one version of one file (cheap: from a listing); 'sha1': its bytes alone.
FingerprintMode = Literal["stat", "sha1"]


def file_fingerprint(
    url: str,
    *,
    mode: FingerprintMode = "stat",
    info: dict[str, Any] | None = None,
    fs: fsspec.AbstractFileSystem | None = None,
    path: str | None = None,
) -> str:
    """Content fingerprint of the file at ``url``: ``stat:<hex>`` or ``sha1:<hex>``.

    ``stat``: sha1 of the JSON ``{"path": ..., "size": ..., <marker>: ...}`` where the marker
    is the first of etag / ETag / md5Hash / mtime / LastModified / updated / created present
    in fsspec ``info()`` (datetimes as POSIX seconds). It names one version of one file: it
    changes when the file is rewritten, and two files never share it even when their size and
    time agree. ``sha1``: sha1 of the bytes alone, read in 1 MiB blocks (same content, same
    fingerprint, wherever it lives). ``info``/``fs``/``path`` may be passed to skip lookups.
    """
    if fs is None or path is None:
        fs, path = filesystem(url)
    if mode == "sha1":
        digest = hashlib.sha1()
        with fs.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return "sha1:" + digest.hexdigest()
    if mode != "stat":
        raise ValueError(f"fingerprint mode must be 'stat' or 'sha1', got {mode!r}")
    if info is None:
        info = fs.info(path)
    token: dict[str, Any] = {"path": fs.unstrip_protocol(path), "size": info.get("size")}
    for marker in ("etag", "ETag", "md5Hash", "mtime", "LastModified", "updated", "created"):
        if info.get(marker) is not None:
            token[marker] = _plain_marker(info[marker])
            break
    return "stat:" + hashlib.sha1(json.dumps(token, sort_keys=True).encode()).hexdigest()


def _plain_marker(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return round(value.timestamp(), 6)
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (int, str)):
        return value
    return str(value)
