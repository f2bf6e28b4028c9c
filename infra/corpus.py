"""Corpus readers: turn a corpus location into a table of work items, one row per input item.

Every reader returns a ``pyarrow.Table`` with :data:`WORK_ITEM_SCHEMA`, sorted by ``key``:

=============  ==========  =================================================================
column         type        meaning
=============  ==========  =================================================================
key            string      unique, stable id; ``/``-separated parts of ``[A-Za-z0-9_-]``,
                           within the length limits of :func:`key_problem`
uri            string      fsspec URL of the video file (local paths stay plain paths);
                           null only for failed rows whose location could not be derived
start, end     float64     time range to decode inside ``uri``, seconds; null = file start/end
label, split   string      annotation, null when the source has none
fingerprint    string      ``stat:<sha1 hex>`` or ``sha1:<sha1 hex>`` (see below); null when
                           there is no file
status         string      ``pending`` (ready to process) or ``failed``
reason         string      why the row failed (names the line/row and the problem), else null
=============  ==========  =================================================================

A row never disappears: a missing file, a malformed CSV line, a duplicate key or a key beyond
the length limits becomes a ``failed`` row with a reason, so every input item ends in exactly
one status downstream.

Fingerprints: ``stat`` (default, cheap) hashes the file's URL, size and the first available
change marker in its fsspec ``info()`` (etag/md5, else modification/creation time) with sha1;
``sha1`` hashes the file's bytes (reads every file once). Supported layouts are described in
``docs/inputs.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import posixpath
import re
from typing import Any, Iterable, Iterator, Literal, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from labelmill.infra.formats.items import STATUS_FAILED, STATUS_PENDING
from labelmill.infra.formats.shards import MAX_MEMBER_NAME_BYTES, member_key
from labelmill.infra.storage import FingerprintMode, file_fingerprint

__all__ = [
    "WORK_ITEM_SCHEMA",
    "STATUS_PENDING",
    "STATUS_FAILED",
    "DEFAULT_VIDEO_EXTENSIONS",
    "KEY_PATTERN",
    "CorpusError",
    "CorpusConfig",
    "read_corpus",
    "read_corpus_from_config",
    "detect_kind",
    "read_kinetics",
    "read_directory",
    "read_video_file",
    "read_manifest",
    "file_fingerprint",
    "is_safe_key",
    "key_problem",
    "key_from_relpath",
    "MAX_KEY_LENGTH",
    "MAX_KEY_PARTS",
    "MAX_KEY_PART_LENGTH",
    "MAX_MEMBER_KEY_LENGTH",
]

logger = logging.getLogger(__name__)

DEFAULT_VIDEO_EXTENSIONS: tuple[str, ...] = ("mp4", "avi", "mkv", "mov", "webm")

WORK_ITEM_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("label", pa.string()),
        pa.field("split", pa.string()),
        pa.field("fingerprint", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
    ]
)

# One or more '/'-separated parts, each made of letters, digits, '_' and '-'. No '.', so a key
# can never climb out of a directory and WebDataset never mistakes part of it for an extension.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
# Length limits of a key, so that what is named after it stays valid on common filesystems
# (a path component <= 255 bytes): a frame sample's tar member name
# `<member key>__<frame:06d>.<extension>` (infra/formats/shards.py) stays below
# MAX_MEMBER_NAME_BYTES for extensions of up to 20 characters, and a file or folder named
# `<key>.<ext>` / `<key>/` has parts of at most 100 characters and at most 16 levels.
MAX_KEY_LENGTH = 200  # characters
MAX_KEY_PARTS = 16  # '/'-separated parts
MAX_KEY_PART_LENGTH = 100  # characters per part
# Characters of the key's tar member form ('/' -> '__', '_' -> '%5F' beside '_' or '/'); with a
# trailing '%5F', '__<frame:07d>', '.' and a 20-character extension: 220 + 2 + 9 + 1 + 20 <= 255.
MAX_MEMBER_KEY_LENGTH = MAX_MEMBER_NAME_BYTES - 35
_YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]+")
_GLOB_MAGIC = re.compile(r"[*?\[]")

CorpusKind = Literal["auto", "kinetics", "directory", "file", "manifest"]

_KINETICS_REQUIRED = ("youtube_id", "time_start", "time_end")
_MANIFEST_COLUMNS = ("key", "uri", "start", "end", "label", "split")
_PARQUET_SUFFIXES = (".parquet", ".pq")


class CorpusError(ValueError):
    """The corpus source as a whole cannot be read (missing, unknown layout, bad header)."""


@dataclasses.dataclass
class CorpusConfig:
    """Where the corpus is and how to read it."""

    # Corpus location: a Kinetics CSV, a manifest (.parquet/.csv), a directory, a glob or one
    # video file; any fsspec URL or local path.
    source: str = ""
    # Layout of `source`; "auto" decides from the path and, for CSVs, the header.
    kind: Literal["auto", "kinetics", "directory", "file", "manifest"] = "auto"
    # Kinetics only: folder holding the clips (default: `videos/` beside the CSV).
    video_root: str | None = None
    # File name extensions (without dot, case-insensitive) that count as videos.
    extensions: tuple[str, ...] = DEFAULT_VIDEO_EXTENSIONS
    # "stat": sha1 of size + etag/mtime (cheap); "sha1": sha1 of the file bytes (reads all).
    fingerprint: Literal["stat", "sha1"] = "stat"

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "kinetics", "directory", "file", "manifest"):
            raise ValueError(f"kind must be one of auto, kinetics, directory, file, manifest; got {self.kind!r}")
        if self.fingerprint not in ("stat", "sha1"):
            raise ValueError(f"fingerprint must be 'stat' or 'sha1', got {self.fingerprint!r}")
        _normalise_extensions(self.extensions)  # raises ValueError naming `extensions`


# ----------------------------------------------------------------------------- public entry


def read_corpus(
    source: str,
    *,
    kind: CorpusKind = "auto",
    video_root: str | None = None,
    extensions: Sequence[str] = DEFAULT_VIDEO_EXTENSIONS,
    fingerprint: FingerprintMode = "stat",
) -> pa.Table:
    """Work items for the corpus at ``source`` (any fsspec URL), sorted by key.

    ``kind="auto"`` picks: a glob pattern or a directory -> ``directory``; ``.parquet``/``.pq``
    -> ``manifest``; a ``.csv`` with a ``uri`` column -> ``manifest``, with ``youtube_id``,
    ``time_start``, ``time_end`` columns -> ``kinetics``; a file with a video extension ->
    ``file``. Raises :class:`CorpusError` when the source itself is missing or unreadable;
    problems with single items become ``failed`` rows instead.
    """
    if not source:
        raise CorpusError("corpus source is empty; give a CSV, manifest, directory, glob or video file")
    if kind == "auto":
        kind = detect_kind(source, extensions=extensions)
    if video_root is not None and kind != "kinetics":
        raise CorpusError(f"video_root is only used by Kinetics CSVs, but {source} is read as {kind!r}")
    if kind == "kinetics":
        return read_kinetics(source, video_root=video_root, extensions=extensions, fingerprint=fingerprint)
    if kind == "directory":
        return read_directory(source, extensions=extensions, fingerprint=fingerprint)
    if kind == "file":
        return read_video_file(source, fingerprint=fingerprint)
    if kind == "manifest":
        return read_manifest(source, fingerprint=fingerprint)
    raise CorpusError(f"unknown corpus kind {kind!r}; use auto, kinetics, directory, file or manifest")


def read_corpus_from_config(config: CorpusConfig) -> pa.Table:
    """:func:`read_corpus` with the knobs of a :class:`CorpusConfig`."""
    return read_corpus(
        config.source,
        kind=config.kind,
        video_root=config.video_root,
        extensions=config.extensions,
        fingerprint=config.fingerprint,
    )


def detect_kind(source: str, *, extensions: Sequence[str] = DEFAULT_VIDEO_EXTENSIONS) -> str:
    """The corpus kind ``read_corpus(kind="auto")`` would use for ``source``."""
    fs, path = _filesystem(source)
    if _GLOB_MAGIC.search(path):
        return "directory"
    if fs.isdir(path):
        return "directory"
    if not fs.exists(path):
        raise CorpusError(f"corpus source {source} does not exist")
    suffix = posixpath.splitext(path)[1].lower()
    if suffix in _PARQUET_SUFFIXES:
        return "manifest"
    if suffix == ".csv":
        columns = set(_csv_header(fs, path, source))
        if "uri" in columns:
            return "manifest"
        if set(_KINETICS_REQUIRED) <= columns:
            return "kinetics"
        raise CorpusError(
            f"CSV {source} has neither a 'uri' column (manifest) nor the columns "
            f"{', '.join(_KINETICS_REQUIRED)} (Kinetics); found: {', '.join(sorted(columns)) or 'none'}"
        )
    if suffix.lstrip(".") in _normalise_extensions(extensions):
        return "file"
    raise CorpusError(
        f"cannot tell what kind of corpus {source} is (suffix {suffix or 'none'!r}); "
        "pass kind='file', 'manifest', 'kinetics' or 'directory'"
    )


# ----------------------------------------------------------------------------- Kinetics


def read_kinetics(
    csv_url: str,
    *,
    video_root: str | None = None,
    extensions: Sequence[str] = DEFAULT_VIDEO_EXTENSIONS,
    fingerprint: FingerprintMode = "stat",
) -> pa.Table:
    """Work items for a Kinetics annotation CSV.

    Columns are found by header name: ``youtube_id``, ``time_start``, ``time_end`` are
    required; ``label`` and ``split`` are optional (the test CSVs have no ``label``); others
    (e.g. ``is_cc``) are ignored. Each row's clip ``<youtube_id>_<start:06d>_<end:06d>.<ext>``
    (times truncated to whole seconds, as the download scripts name them) is looked up
    anywhere under ``video_root`` (default ``videos/`` beside the CSV): directly, under
    ``<label>/``, ``<split>/<label>/``, ... (when several files match, the shallowest, then
    the lexicographically first path wins). The clip is already cut, so ``start``/``end`` are
    null. When only the full video ``<youtube_id>.<ext>`` is there, it is used with
    ``start=time_start, end=time_end``. Key: ``<youtube_id>_<start:06d>_<end:06d>``.
    Problems with a row (missing clip, malformed line, duplicate key) fail that row only.
    """
    fs, csv_path = _filesystem(csv_url)
    text = _read_text(fs, csv_path, csv_url)
    root = video_root if video_root is not None else _join(_parent_url(csv_url), "videos")
    root_fs, root_path = _filesystem(root)
    files = _find_videos(root_fs, root_path, root, extensions=extensions, must_exist=False)
    if not files:
        logger.warning("no video files found under %s for Kinetics CSV %s", root, csv_url)
    by_stem: dict[str, list[_FileEntry]] = {}
    for entry in sorted(files, key=lambda e: (e.relpath.count("/"), e.relpath)):
        by_stem.setdefault(entry.stem, []).append(entry)
    first_extension = _normalise_extensions(extensions)[0]
    missing_prefix = _url_for(root_fs, root_path.rstrip("/"), root)  # how missing clips are named

    rows: list[_Row] = []
    header: list[str] | None = None
    for line_no, fields, csv_problem in _iter_csv(text):
        where = f"line {line_no}"
        slug = f"line_{line_no:06d}"
        if header is None:
            if csv_problem is not None:
                raise CorpusError(f"Kinetics CSV {csv_url}: header on {where} is not valid CSV: {csv_problem}")
            header = [h.strip().lower() for h in fields]
            missing = [c for c in _KINETICS_REQUIRED if c not in header]
            if missing:
                raise CorpusError(
                    f"Kinetics CSV {csv_url}: header on {where} lacks column(s) {', '.join(missing)}; "
                    f"found {', '.join(header)}"
                )
            continue
        if csv_problem is not None:
            rows.append(_Row.invalid(slug, where, f"{where}: not valid CSV: {csv_problem}"))
            continue
        if len(fields) != len(header):
            rows.append(
                _Row.invalid(
                    slug, where, f"{where}: expected {len(header)} columns ({','.join(header)}), found {len(fields)}"
                )
            )
            continue
        record = dict(zip(header, (f.strip() for f in fields)))
        rows.append(
            _kinetics_row(
                record, where, slug, missing_prefix, by_stem, first_extension, fs_for_hash=root_fs, mode=fingerprint
            )
        )
    if header is None:
        raise CorpusError(f"Kinetics CSV {csv_url} is empty (no header line)")
    return _to_table(rows)


def _kinetics_row(
    record: dict[str, str],
    where: str,
    slug: str,
    missing_prefix: str,
    by_stem: dict[str, list["_FileEntry"]],
    first_extension: str,
    *,
    fs_for_hash: fsspec.AbstractFileSystem,
    mode: FingerprintMode,
) -> "_Row":
    youtube_id = record["youtube_id"]
    label = record.get("label") or None
    split = record.get("split") or None

    def invalid(problem: str) -> _Row:
        return _Row.invalid(slug, where, f"{where}: {problem}", label=label, split=split)

    if not youtube_id:
        return invalid("empty youtube_id")
    if not _YOUTUBE_ID.fullmatch(youtube_id):
        return invalid(f"youtube_id {youtube_id!r} has characters outside [A-Za-z0-9_-]")
    times = []
    for column in ("time_start", "time_end"):
        value = _parse_seconds(record[column])
        if value is None:
            return invalid(f"{column} {record[column]!r} is not a finite number of seconds")
        times.append(value)
    time_start, time_end = times
    if time_start < 0:
        return invalid(f"time_start {time_start:g} is negative")
    if time_end <= time_start:
        return invalid(f"time_end {time_end:g} is not after time_start {time_start:g}")
    key = f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}"
    if key in by_stem:
        entry = by_stem[key][0]
        start = end = None
    elif youtube_id in by_stem:
        entry = by_stem[youtube_id][0]
        start, end = time_start, time_end
    else:
        expected = _join(missing_prefix, f"{key}.{first_extension}")
        return _Row(key=key, uri=expected, label=label, split=split, status=STATUS_FAILED,
                    reason=f"missing file: {expected}", where=where, dup_slug=slug)
    return _Row(
        key=key,
        uri=entry.url,
        start=start,
        end=end,
        label=label,
        split=split,
        fingerprint=file_fingerprint(entry.url, mode=mode, info=entry.info, fs=fs_for_hash, path=entry.path),
        where=where,
        dup_slug=slug,
    )


# ----------------------------------------------------------------------------- directories and files


def read_directory(
    source: str,
    *,
    extensions: Sequence[str] = DEFAULT_VIDEO_EXTENSIONS,
    fingerprint: FingerprintMode = "stat",
) -> pa.Table:
    """Work items for every video under a directory (recursive) or matching a glob.

    ``source`` is a directory URL (``memory://data``, ``s3://bucket/clips``, ``/data``) or a
    glob (``/data/**/*.mp4``; ``**`` must be a whole path component). Files are kept when
    their extension is in ``extensions`` (case-insensitive); names starting with '.' are
    skipped. Key: the path relative to the directory (for a glob: to the part before the first
    wildcard) without the extension; characters outside ``[A-Za-z0-9_-/]`` become '_' and the
    key then ends in ``-<8 hex of sha1(relative path)>`` so different names stay different.
    """
    fs, path = _filesystem(source)
    files = _find_videos(fs, path, source, extensions=extensions, must_exist=True)
    if not files:
        logger.warning("no video files (%s) found in %s", ", ".join(_normalise_extensions(extensions)), source)
    rows = []
    for entry in sorted(files, key=lambda e: e.relpath):
        key = key_from_relpath(posixpath.splitext(entry.relpath)[0])
        rows.append(
            _Row(
                key=key,
                uri=entry.url,
                fingerprint=file_fingerprint(entry.url, mode=fingerprint, info=entry.info, fs=fs, path=entry.path),
                where=entry.relpath,
                dup_slug=key_from_relpath(posixpath.splitext(entry.relpath)[1].lstrip(".") or "noext"),
            )
        )
    return _to_table(rows)


def read_video_file(source: str, *, fingerprint: FingerprintMode = "stat") -> pa.Table:
    """One work item for one video file; key: its file name without extension (sanitised)."""
    fs, path = _filesystem(source)
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise CorpusError(f"video file {source} does not exist") from exc
    if info.get("type") == "directory":
        raise CorpusError(f"{source} is a directory; use kind='directory'")
    stem = posixpath.splitext(posixpath.basename(path))[0]
    row = _Row(
        key=key_from_relpath(stem),
        uri=_url_for(fs, path, source),
        fingerprint=file_fingerprint(source, mode=fingerprint, info=info, fs=fs, path=path),
        where=source,
        dup_slug="file",
    )
    return _to_table([row])


# ----------------------------------------------------------------------------- manifests


def read_manifest(source: str, *, fingerprint: FingerprintMode = "stat") -> pa.Table:
    """Work items from a manifest: parquet (``.parquet``/``.pq``) or CSV with a ``uri`` column.

    Optional columns: ``key``, ``start``, ``end``, ``label``, ``split``; others are ignored.
    Empty strings and NaN count as null. A relative ``uri`` is resolved against the manifest's
    folder. Without a key, the key is the sanitised file name without extension, plus
    ``_<start:06d>_<end:06d>`` (whole seconds; ``end`` when open-ended) when a time range is
    given. A given key must match :data:`KEY_PATTERN`. Files are checked with fsspec
    ``info()``; a missing one fails its row with ``missing file: <uri>``.
    """
    fs, path = _filesystem(source)
    if not fs.exists(path):
        raise CorpusError(f"manifest {source} does not exist")
    if posixpath.splitext(path)[1].lower() in _PARQUET_SUFFIXES:
        records = _parquet_records(fs, path, source)
    else:
        records = _csv_records(_read_text(fs, path, source), source)
    base = _parent_url(source)
    rows = [_manifest_row(values, where, slug, base, fingerprint) for where, slug, values in records]
    return _to_table(rows)


def _parquet_records(fs, path: str, source: str) -> Iterator[tuple[str, str, dict[str, Any] | str]]:
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"manifest {source} is not a readable parquet file: {exc}") from exc
    if "uri" not in table.column_names:
        raise CorpusError(f"manifest {source} has no 'uri' column; found {', '.join(table.column_names)}")
    wanted = [c for c in _MANIFEST_COLUMNS if c in table.column_names]
    for index, values in enumerate(table.select(wanted).to_pylist()):
        yield f"row {index}", f"row_{index:06d}", values


def _csv_records(text: str, source: str) -> Iterator[tuple[str, str, dict[str, Any] | str]]:
    header: list[str] | None = None
    for line_no, fields, csv_problem in _iter_csv(text):
        where, slug = f"line {line_no}", f"line_{line_no:06d}"
        if header is None:
            if csv_problem is not None:
                raise CorpusError(f"manifest {source}: header on {where} is not valid CSV: {csv_problem}")
            header = [h.strip().lower() for h in fields]
            if "uri" not in header:
                raise CorpusError(f"manifest {source} has no 'uri' column; found {', '.join(header)}")
            continue
        if csv_problem is not None:
            yield where, slug, f"{where}: not valid CSV: {csv_problem}"
        elif len(fields) != len(header):
            yield where, slug, f"{where}: expected {len(header)} columns ({','.join(header)}), found {len(fields)}"
        else:
            yield where, slug, {h: f for h, f in zip(header, fields) if h in _MANIFEST_COLUMNS}
    if header is None:
        raise CorpusError(f"manifest {source} is empty (no header line)")


def _manifest_row(values: dict[str, Any] | str, where: str, slug: str, base: str, mode: FingerprintMode) -> "_Row":
    if isinstance(values, str):  # the record could not be parsed; `values` is the reason
        return _Row.invalid(slug, where, values)
    uri_value = _text_or_none(values.get("uri"))
    if uri_value is None:
        return _Row.invalid(slug, where, f"{where}: empty uri")
    uri = uri_value if ("://" in uri_value or posixpath.isabs(uri_value)) else _join(base, uri_value)
    times: dict[str, float | None] = {}
    for column in ("start", "end"):
        raw = values.get(column)
        if _text_or_none(raw) is None:  # null, "" or NaN
            times[column] = None
            continue
        parsed = _parse_seconds(raw)
        if parsed is None:
            return _Row.invalid(slug, where, f"{where}: {column} {raw!r} is not a finite number of seconds")
        times[column] = parsed
    start, end = times["start"], times["end"]
    if start is not None and start < 0:
        return _Row.invalid(slug, where, f"{where}: start {start:g} is negative")
    if start is not None and end is not None and end <= start:
        return _Row.invalid(slug, where, f"{where}: end {end:g} is not after start {start:g}")
    given_key = _text_or_none(values.get("key"))
    problem = None if given_key is None else key_problem(given_key)
    if problem is not None:
        return _Row.invalid(slug, where, f"{where}: {problem}")
    key = given_key or _derived_manifest_key(uri, start, end)
    row = _Row(
        key=key,
        uri=uri,
        start=start,
        end=end,
        label=_text_or_none(values.get("label")),
        split=_text_or_none(values.get("split")),
        where=where,
        dup_slug=slug,
        duplicate_hint="" if given_key else "; add a 'key' column to tell them apart",
    )
    try:
        file_fs, file_path = _filesystem(uri)
        info = file_fs.info(file_path)
    except FileNotFoundError:
        row.status, row.reason = STATUS_FAILED, f"missing file: {uri}"
        return row
    except (OSError, ValueError) as exc:
        row.status, row.reason = STATUS_FAILED, f"{where}: cannot read {uri}: {exc}"
        return row
    if info.get("type") == "directory":
        row.status, row.reason = STATUS_FAILED, f"{where}: {uri} is a directory, not a video file"
        return row
    row.fingerprint = file_fingerprint(uri, mode=mode, info=info, fs=file_fs, path=file_path)
    return row


def _derived_manifest_key(uri: str, start: float | None, end: float | None) -> str:
    stem = posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0] or "video"
    key = key_from_relpath(stem.replace("/", "_"))
    if start is None and end is None:
        return key
    end_part = f"{int(end):06d}" if end is not None else "end"
    return f"{key}_{int(start or 0):06d}_{end_part}"


# ----------------------------------------------------------------------------- fingerprints and keys


def is_safe_key(key: str) -> bool:
    """True when ``key`` is '/'-separated parts of ``[A-Za-z0-9_-]`` (no '.', no empty part)
    within the length limits (see :func:`key_problem`)."""
    return key_problem(key) is None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _preview(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def key_problem(key: Any) -> str | None:
    """Why ``key`` is not a safe work-item key, or None when it is.

    A key is one or more '/'-separated parts of ``[A-Za-z0-9_-]``, at most
    :data:`MAX_KEY_LENGTH` (200) characters, :data:`MAX_KEY_PARTS` (16) parts of at most
    :data:`MAX_KEY_PART_LENGTH` (100) characters, and its tar member form at most
    :data:`MAX_MEMBER_KEY_LENGTH` (220) characters: so every file, folder and tar member named
    after it can be created on common filesystems (255 bytes per path component).
    """
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        shown = _preview(key) if isinstance(key, str) else repr(key)
        return f"key {shown} is not made of '/'-separated [A-Za-z0-9_-] parts"
    limits = (f"keys are limited to {MAX_KEY_LENGTH} characters in at most {MAX_KEY_PARTS} '/'-separated parts "
              f"of at most {MAX_KEY_PART_LENGTH} characters, so that tar member names and result paths stay valid")
    if len(key) > MAX_KEY_LENGTH:
        return f"key {_preview(key)} is {len(key)} characters long; {limits}"
    parts = key.split("/")
    if len(parts) > MAX_KEY_PARTS:
        return f"key {_preview(key)} has {len(parts)} parts; {limits}"
    longest = max(parts, key=len)
    if len(longest) > MAX_KEY_PART_LENGTH:
        return f"key {_preview(key)} has a part of {len(longest)} characters ({_preview(longest, 20)}); {limits}"
    member = member_key(key)
    if len(member) > MAX_MEMBER_KEY_LENGTH:
        return (f"key {_preview(key)} becomes a tar member key of {len(member)} characters (its underscores and "
                f"slashes are escaped); at most {MAX_MEMBER_KEY_LENGTH} fit a file name")
    return None


def key_from_relpath(relpath: str) -> str:
    """Safe key for a relative path without extension (see :func:`read_directory`)."""
    parts = [p for p in relpath.replace("\\", "/").split("/") if p]
    safe = "/".join(_UNSAFE_KEY_CHARS.sub("_", p) for p in parts) or "_"
    if safe != relpath:
        safe += "-" + hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:8]
    return safe


# ----------------------------------------------------------------------------- rows and tables


@dataclasses.dataclass
class _Row:
    key: str
    uri: str | None = None
    start: float | None = None
    end: float | None = None
    label: str | None = None
    split: str | None = None
    fingerprint: str | None = None
    status: str = STATUS_PENDING
    reason: str | None = None
    where: str = ""  # where the row came from, for messages ("line 7", "a/b.mp4")
    dup_slug: str = ""  # suffix that makes this row's key unique if it turns out a duplicate
    duplicate_hint: str = ""

    @classmethod
    def invalid(
        cls, slug: str, where: str, reason: str, *, label: str | None = None, split: str | None = None
    ) -> "_Row":
        """A row that could not be turned into a work item; keyed ``__invalid_<slug>``."""
        return cls(key=f"__invalid_{slug}", label=label, split=split, status=STATUS_FAILED, reason=reason,
                   where=where, dup_slug=slug)


def _limit_key(row: _Row) -> _Row:
    """``row`` failed and re-keyed ``__invalid_key_<sha1 of the key>`` when its key breaks the key rule."""
    problem = key_problem(row.key)
    if problem is None:
        return row
    reason = f"{_clip(row.where, 80) if row.where else 'row'}: {problem}"
    if row.status == STATUS_FAILED and row.reason:
        reason += f"; also {row.reason}"
    digest = hashlib.sha1(str(row.key).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return dataclasses.replace(row, key=f"__invalid_key_{digest}", status=STATUS_FAILED, reason=reason)


def _to_table(rows: Iterable[_Row]) -> pa.Table:
    """Fail rows whose key breaks the key rule, mark duplicate keys failed (later rows, in input
    order, lose) and sort by key."""
    first_seen: dict[str, _Row] = {}
    unique: list[_Row] = []
    for row in map(_limit_key, rows):
        if row.key in first_seen:
            original = first_seen[row.key]
            duplicate_key = f"{row.key}__duplicate_{row.dup_slug}"
            counter = 2
            while duplicate_key in first_seen:
                duplicate_key = f"{row.key}__duplicate_{row.dup_slug}_{counter}"
                counter += 1
            problem = f"duplicate key {row.key!r} (first at {original.where}){original.duplicate_hint}"
            if row.status == STATUS_FAILED and row.reason:
                problem += f"; also {row.reason}"
            row = dataclasses.replace(row, key=duplicate_key, status=STATUS_FAILED, reason=f"{row.where}: {problem}")
        first_seen[row.key] = row
        unique.append(row)
    unique.sort(key=lambda r: r.key)
    columns = {name: [getattr(r, name) for r in unique] for name in WORK_ITEM_SCHEMA.names}
    return pa.table(columns, schema=WORK_ITEM_SCHEMA)


# ----------------------------------------------------------------------------- fsspec helpers


@dataclasses.dataclass(frozen=True)
class _FileEntry:
    path: str  # path inside the filesystem
    url: str  # what goes in the `uri` column
    relpath: str  # relative to the listed root
    info: dict[str, Any]

    @property
    def stem(self) -> str:
        return posixpath.splitext(posixpath.basename(self.path))[0]


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise CorpusError(f"cannot open corpus location {url}: {exc}") from exc


def _url_for(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """URL of ``path``: with the protocol when ``like`` had one, a plain local path otherwise."""
    return fs.unstrip_protocol(path) if "://" in like else path


def _join(url: str, relative: str) -> str:
    return url.rstrip("/") + "/" + relative.lstrip("/")


def _parent_url(url: str) -> str:
    if "://" in url:
        protocol, rest = url.split("://", 1)
        return f"{protocol}://{posixpath.dirname(rest.rstrip('/'))}"
    fs, path = _filesystem(url)
    return posixpath.dirname(path)


def _normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str) or not extensions:
        raise ValueError(f"extensions must be a non-empty list like ['mp4', 'webm'], got {extensions!r}")
    out = []
    for ext in extensions:
        clean = str(ext).lower().lstrip(".")
        if not clean.isalnum():
            raise ValueError(f"extensions: {ext!r} is not a file extension like 'mp4'")
        out.append(clean)
    return tuple(out)


def _find_videos(
    fs: fsspec.AbstractFileSystem, path: str, source: str, *, extensions: Sequence[str], must_exist: bool
) -> list[_FileEntry]:
    """Video files under a directory (recursive) or matching a glob, with their fsspec info."""
    wanted = set(_normalise_extensions(extensions))
    try:
        if _GLOB_MAGIC.search(path):
            root = _glob_root(path)
            found = fs.glob(path, detail=True)
        else:
            root = path.rstrip("/")
            if not fs.isdir(path):
                if must_exist:
                    what = "is not a directory" if fs.exists(path) else "does not exist"
                    raise CorpusError(f"video directory {source} {what}")
                return []
            found = fs.find(path, detail=True)
    except (ValueError, OSError) as exc:
        if isinstance(exc, CorpusError):
            raise
        raise CorpusError(f"cannot list {source}: {exc}") from exc
    entries = []
    for file_path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        name = posixpath.basename(file_path)
        if name.startswith(".") or posixpath.splitext(name)[1].lower().lstrip(".") not in wanted:
            continue
        relpath = posixpath.relpath(file_path, root) if root else file_path.lstrip("/")
        entries.append(_FileEntry(path=file_path, url=_url_for(fs, file_path, source), relpath=relpath, info=info))
    return entries


def _glob_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard component."""
    parts = pattern.split("/")
    fixed = []
    for part in parts:
        if _GLOB_MAGIC.search(part):
            break
        fixed.append(part)
    return "/".join(fixed) or "/"


def _read_text(fs: fsspec.AbstractFileSystem, path: str, source: str) -> str:
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise CorpusError(f"{source} does not exist") from exc
    except OSError as exc:
        raise CorpusError(f"cannot read {source}: {exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{source} is not UTF-8 text: {exc}") from exc


def _csv_header(fs: fsspec.AbstractFileSystem, path: str, source: str) -> list[str]:
    try:
        with fs.open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError as exc:
        raise CorpusError(f"cannot read {source}: {exc}") from exc
    first_line = head.decode("utf-8-sig", errors="replace").splitlines()[:1]
    if not first_line:
        raise CorpusError(f"CSV {source} is empty (no header line)")
    return [h.strip().lower() for h in next(csv.reader(first_line))]


def _iter_csv(text: str) -> Iterator[tuple[int, list[str], str | None]]:
    """(first line number, fields, problem) per non-blank CSV record; problem set on csv.Error."""
    reader = csv.reader(io.StringIO(text, newline=""))
    last_line = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line_no = last_line + 1
            last_line = max(reader.line_num, line_no)
            yield line_no, [], str(exc)
            continue
        line_no = last_line + 1
        last_line = reader.line_num
        if not fields:  # a blank line is not a record
            continue
        yield line_no, fields, None


def _parse_seconds(value: Any) -> float | None:
    """Finite float from a number or numeric text, else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    text = str(value).strip()
    return text or None
