"""Readers of precomputed 2D keypoints (labelmill JSON, OpenPose JSON, COCO results) and the
`PrecomputedKeypoints` operator that attaches them to work items.

Every reader returns a :class:`~labelmill.operators.pose3d.keypoints_format.VideoKeypoints` in COCO-17
order and raises :class:`KeypointsFormatError` (a ``ValueError``) naming the file and the
reason. Files are read with fsspec, so any fsspec URL works. Formats and index maps are
documented in docs/keypoints.md.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import re
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np
from fsspec.core import url_to_fs

from labelmill.infra.formats.items import ItemStatus
from labelmill.infra.storage import file_fingerprint
from labelmill.models.coco import COCO17_NAMES
from labelmill.operators.pose3d.keypoints_format import (
    empty_keypoint_columns,
    NUM_KEYPOINTS,
    KeypointsFormatError,
    VideoKeypoints,
    boxes_from_keypoints,
    mean_visible_confidence,
    undetect_non_finite,
    undetect_outside_frame,
)

__all__ = [
    "KeypointsFormatError",
    "KeypointFileFormat",
    "BODY25_NAMES",
    "COCO18_NAMES",
    "COCO17_FROM_BODY25",
    "COCO17_FROM_COCO18",
    "OPENPOSE_FILE_PATTERN",
    "MAX_DENSE_FRAMES",
    "openpose_to_coco17",
    "parse_openpose_frame",
    "read_openpose",
    "parse_coco_results",
    "read_coco_results",
    "read_labelmill_keypoints",
    "read_keypoints",
    "PrecomputedKeypoints",
]

logger = logging.getLogger(__name__)

KeypointFileFormat = Literal["auto", "labelmill", "openpose", "coco"]
_FORMATS = ("auto", "labelmill", "openpose", "coco")

# OpenPose BODY_25 output order (index 25, "Background", exists only in heatmaps).
BODY25_NAMES: tuple[str, ...] = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip",
    "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
    "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
)  # fmt: skip
# OpenPose COCO (18-keypoint) model output order.
COCO18_NAMES: tuple[str, ...] = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
    "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
)  # fmt: skip

# COCO-17 keypoint j is OpenPose keypoint COCO17_FROM_<LAYOUT>[j]. Neck, MidHip, feet: dropped.
_OPENPOSE_NAME_OF_COCO17 = {
    "nose": "Nose", "left_eye": "LEye", "right_eye": "REye", "left_ear": "LEar", "right_ear": "REar",
    "left_shoulder": "LShoulder", "right_shoulder": "RShoulder", "left_elbow": "LElbow",
    "right_elbow": "RElbow", "left_wrist": "LWrist", "right_wrist": "RWrist", "left_hip": "LHip",
    "right_hip": "RHip", "left_knee": "LKnee", "right_knee": "RKnee", "left_ankle": "LAnkle",
    "right_ankle": "RAnkle",
}  # fmt: skip
COCO17_FROM_BODY25: tuple[int, ...] = tuple(BODY25_NAMES.index(_OPENPOSE_NAME_OF_COCO17[n]) for n in COCO17_NAMES)
COCO17_FROM_COCO18: tuple[int, ...] = tuple(COCO18_NAMES.index(_OPENPOSE_NAME_OF_COCO17[n]) for n in COCO17_NAMES)
_OPENPOSE_LAYOUTS: dict[int, tuple[str, tuple[int, ...]]] = {
    len(BODY25_NAMES): ("BODY_25", COCO17_FROM_BODY25),
    len(COCO18_NAMES): ("COCO-18", COCO17_FROM_COCO18),
}

# <video name>_<frame:012d>_keypoints.json, as OpenPose --write_json names the files of a video.
OPENPOSE_FILE_PATTERN = re.compile(r"^(?P<video>.+)_(?P<frame>\d{12})_keypoints\.json$")
_OPENPOSE_SUFFIX = "_keypoints.json"
# Kinetics clip keys <youtube_id>_<start:06d>_<end:06d> (labelmill.infra.corpus); synthetic
# corpora name their keypoint files by <youtube_id> alone.
_KINETICS_CLIP_KEY = re.compile(r"^(?P<video>.+)_\d{6}_\d{6}$")
# The operator refuses to densify a file that claims more frames than this (about 5.5 h at 25 fps).
MAX_DENSE_FRAMES = 500_000


# ----------------------------------------------------------------------------- file access


def _display(fs: Any, path: str, like: str) -> str:
    """A path as the user would write it: with the protocol when ``like`` had one."""
    return fs.unstrip_protocol(path) if "://" in like else path


def _read_json_file(fs: Any, path: str, source: str) -> Any:
    try:
        with fs.open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise KeypointsFormatError(f"{source}: file not found") from None
    except IsADirectoryError:
        raise KeypointsFormatError(f"{source}: is a directory, expected a JSON file") from None
    except OSError as exc:
        raise KeypointsFormatError(f"{source}: cannot read: {exc}") from None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeypointsFormatError(f"{source}: malformed JSON: {exc}") from None


def _load_json(uri: str) -> Any:
    fs, path = url_to_fs(uri)
    return _read_json_file(fs, path, uri)


# ----------------------------------------------------------------------------- labelmill


def read_labelmill_keypoints(uri: str) -> VideoKeypoints:
    """Read a labelmill keypoints JSON file (the schema ``labelmill synth pose`` writes)."""
    return VideoKeypoints.from_json(_load_json(uri), source=uri)


# ----------------------------------------------------------------------------- OpenPose


def openpose_to_coco17(points: np.ndarray) -> np.ndarray:
    """OpenPose BODY_25 ``(25, 3)`` or COCO-18 ``(18, 3)`` keypoints -> COCO-17 ``(17, 3)``."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] not in _OPENPOSE_LAYOUTS:
        raise ValueError(f"expected OpenPose keypoints of shape (25, 3) or (18, 3), got {points.shape}")
    return points[list(_OPENPOSE_LAYOUTS[points.shape[0]][1])]


def parse_openpose_frame(document: Any, *, source: str) -> np.ndarray:
    """The people of one OpenPose frame document as COCO-17 keypoints ``(P, 17, 3)`` float32.

    Reads ``pose_keypoints_2d`` (or ``pose_keypoints`` of OpenPose < 1.2) of every entry of
    ``people``; the layout (BODY_25 or COCO-18) follows from the number of values. Raises
    :class:`KeypointsFormatError` naming ``source``.
    """
    if not isinstance(document, Mapping):
        raise KeypointsFormatError(
            f"{source}: expected an OpenPose JSON object with 'people', got {type(document).__name__}"
        )
    people = document.get("people")
    if not isinstance(people, list):
        raise KeypointsFormatError(f"{source}: missing 'people' list (not an OpenPose keypoints file)")
    out = np.zeros((len(people), NUM_KEYPOINTS, 3), np.float32)
    for p, person in enumerate(people):
        if not isinstance(person, Mapping):
            raise KeypointsFormatError(f"{source}: people[{p}] is not an object")
        values = person.get("pose_keypoints_2d", person.get("pose_keypoints"))
        if not isinstance(values, list):
            raise KeypointsFormatError(f"{source}: people[{p}] has no 'pose_keypoints_2d' list")
        try:
            flat = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise KeypointsFormatError(
                f"{source}: people[{p}]: 'pose_keypoints_2d' must be a flat list of numbers"
            ) from None
        sizes = " or ".join(f"{3 * n} ({name})" for n, (name, _) in _OPENPOSE_LAYOUTS.items())
        if flat.ndim != 1 or flat.size % 3 or flat.size // 3 not in _OPENPOSE_LAYOUTS:
            raise KeypointsFormatError(
                f"{source}: people[{p}]: wrong number of keypoint values {flat.size}; expected {sizes}"
            )
        points = undetect_non_finite(flat.reshape(-1, 3))  # NaN / infinite values: not a detection
        confidence = points[:, 2]
        if (confidence < 0).any():
            j = int(np.flatnonzero(confidence < 0)[0])
            raise KeypointsFormatError(f"{source}: people[{p}]: negative confidence {confidence[j]} at keypoint {j}")
        out[p] = openpose_to_coco17(points)
    return out


def _openpose_files(source: str | Sequence[str], video: str | None) -> list[tuple[int, str, Any, str]]:
    """``(frame, display name, fs, path)`` of the OpenPose files of one video, sorted by frame."""
    entries: list[tuple[str, Any, str]] = []  # (display, fs, path)
    if isinstance(source, str):
        fs, root = url_to_fs(source)
        if not fs.isdir(root):
            if fs.isfile(root):
                entries.append((source, fs, root))
            else:
                raise KeypointsFormatError(f"{source}: no such OpenPose directory or file")
        else:
            for path in sorted(fs.find(root)):
                if posixpath.basename(path).endswith(_OPENPOSE_SUFFIX):
                    entries.append((_display(fs, path, source), fs, path))
            if not entries:
                raise KeypointsFormatError(f"{source}: no OpenPose *{_OPENPOSE_SUFFIX} files in the directory")
    else:
        for uri in source:
            fs, path = url_to_fs(uri)
            entries.append((uri, fs, path))
        if not entries:
            raise KeypointsFormatError("OpenPose reader: no files given")
    files: list[tuple[int, str, Any, str]] = []
    videos: set[str] = set()
    for display, fs, path in entries:
        match = OPENPOSE_FILE_PATTERN.match(posixpath.basename(path))
        if match is None:
            raise KeypointsFormatError(
                f"{display}: file name does not follow OpenPose's <video>_<frame:012d>_keypoints.json"
            )
        if video is not None and match["video"] != video:
            continue
        videos.add(match["video"])
        files.append((int(match["frame"]), display, fs, path))
    where = source if isinstance(source, str) else f"{len(entries)} OpenPose files"
    if not files:
        raise KeypointsFormatError(f"{where}: no OpenPose files of video {video!r}")
    if len(videos) > 1:
        raise KeypointsFormatError(f"{where}: files of several videos ({', '.join(sorted(videos))}); pass video=")
    files.sort(key=lambda item: item[0])
    for (frame_a, name_a, _, _), (frame_b, name_b, _, _) in zip(files, files[1:]):
        if frame_a == frame_b:
            raise KeypointsFormatError(f"{name_b}: frame {frame_b} is also in {name_a}")
    return files


def read_openpose(
    source: str | Sequence[str],
    *,
    video: str | None = None,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    video_frames: int | None = None,
) -> VideoKeypoints:
    """Read one video's OpenPose ``--write_json`` output.

    ``source``: a directory (searched recursively for ``*_keypoints.json``), one file, or a
    list of file URLs, each named ``<video>_<frame:012d>_keypoints.json``; ``video`` keeps
    only that video's files (required when a directory mixes videos). BODY_25 and COCO-18
    are mapped to COCO-17 (:data:`COCO17_FROM_BODY25`, :data:`COCO17_FROM_COCO18`);
    coordinates are taken as pixels (OpenPose's default ``--keypoint_scale 0``). OpenPose
    writes no boxes or scores: boxes are the detected keypoints' extent, scores their mean
    confidence. OpenPose files do not record the frame size: pass ``width``/``height``.
    """
    files = _openpose_files(source, video)
    per_frame = [
        parse_openpose_frame(_read_json_file(fs, path, display), source=display) for _, display, fs, path in files
    ]
    name = OPENPOSE_FILE_PATTERN.match(posixpath.basename(files[0][3]))["video"]
    try:
        return VideoKeypoints.from_frames(
            per_frame,
            frame_indices=[frame for frame, _, _, _ in files],
            width=width,
            height=height,
            fps=fps,
            video=name,
            video_frames=video_frames,
        )
    except ValueError as exc:
        raise KeypointsFormatError(f"{source if isinstance(source, str) else files[0][1]}: {exc}") from None


# ----------------------------------------------------------------------------- COCO results


def _frame_of_image(
    image_ids: list[Any], image_to_frame: Mapping[Any, int] | Literal["sorted", "identity"], source: str
) -> dict[Any, int]:
    if isinstance(image_to_frame, Mapping):
        mapping = {}
        for image_id in image_ids:
            if image_id not in image_to_frame:
                raise KeypointsFormatError(f"{source}: image_id {image_id!r} is not in image_to_frame")
            frame = image_to_frame[image_id]
            if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or frame < 0:
                raise KeypointsFormatError(
                    f"{source}: image_to_frame[{image_id!r}] must be an integer >= 0, got {frame!r}"
                )
            mapping[image_id] = int(frame)
        return mapping
    unique = set(image_ids)
    if image_to_frame == "identity":
        bad = [i for i in unique if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad:
            raise KeypointsFormatError(
                f"{source}: image_to_frame='identity' needs integer image ids >= 0, got {bad[0]!r}"
            )
        return {i: i for i in unique}
    if image_to_frame == "sorted":
        if len({type(i) for i in unique}) > 1:
            raise KeypointsFormatError(f"{source}: image ids mix numbers and strings; pass image_to_frame")
        return {image_id: frame for frame, image_id in enumerate(sorted(unique))}
    raise ValueError(f"image_to_frame must be a mapping, 'sorted' or 'identity', got {image_to_frame!r}")


def parse_coco_results(
    document: Any,
    *,
    source: str,
    image_to_frame: Mapping[Any, int] | Literal["sorted", "identity"] = "sorted",
    confidence: Literal["auto", "visibility", "confidence"] = "auto",
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    video: str | None = None,
    video_frames: int | None = None,
) -> VideoKeypoints:
    """A COCO keypoint-results list (``[{"image_id", "category_id", "keypoints", "score"}]``).

    ``image_to_frame``: a mapping image_id -> frame index; ``"sorted"`` (default) numbers the
    distinct image ids in sorted order 0, 1, ... (frames without any detection then shift the
    numbering: pass a mapping when some frames have none); ``"identity"`` uses integer ids as
    frame indices. ``confidence``: ``"visibility"`` reads the third value v as a COCO flag
    (c = score, or 1 without a score, where v > 0; else 0); ``"confidence"`` passes the value
    through; ``"auto"`` takes flags when every third value of the file is 0, 1 or 2, else
    confidences. An optional ``bbox`` is COCO's ``[x, y, w, h]``; without one the box is the
    detected keypoints' extent. An entry's ``score`` defaults to its mean visible confidence.
    """
    if confidence not in ("auto", "visibility", "confidence"):
        raise ValueError(f"confidence must be 'auto', 'visibility' or 'confidence', got {confidence!r}")
    if not isinstance(document, list):
        raise KeypointsFormatError(
            f"{source}: expected a JSON list of COCO keypoint results, got {type(document).__name__}"
        )
    image_ids, points, boxes, scores = [], [], [], []
    for n, entry in enumerate(document):
        where = f"result {n}"
        if not isinstance(entry, Mapping):
            raise KeypointsFormatError(f"{source}: {where} is not an object")
        if "image_id" not in entry:
            raise KeypointsFormatError(f"{source}: {where} has no image_id")
        image_id = entry["image_id"]
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise KeypointsFormatError(f"{source}: {where}: image_id must be an integer or a string, got {image_id!r}")
        where = f"result {n} (image {image_id!r})"
        values = entry.get("keypoints")
        try:
            flat = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise KeypointsFormatError(f"{source}: {where}: 'keypoints' must be a flat list of numbers") from None
        if flat.ndim != 1 or flat.size != 3 * NUM_KEYPOINTS:
            raise KeypointsFormatError(
                f"{source}: {where}: wrong number of keypoint values {flat.size}; "
                f"expected {3 * NUM_KEYPOINTS} (17 x [x, y, v])"
            )
        triples = undetect_non_finite(flat.reshape(NUM_KEYPOINTS, 3))  # NaN / infinite values: not a detection
        third = triples[:, 2]
        if (third < 0).any():
            j = int(np.flatnonzero(third < 0)[0])
            raise KeypointsFormatError(
                f"{source}: {where}: negative confidence {third[j]} at keypoint {j} ({COCO17_NAMES[j]})"
            )
        score = entry.get("score")
        is_number = isinstance(score, (int, float)) and not isinstance(score, bool)
        if score is not None and not (is_number and math.isfinite(score) and score >= 0):
            raise KeypointsFormatError(f"{source}: {where}: score must be a finite number >= 0, got {score!r}")
        box = entry.get("bbox")
        if box is not None:
            try:
                xywh = np.asarray(box, dtype=np.float64)
            except (TypeError, ValueError):
                xywh = np.zeros(0)
            if xywh.shape != (4,) or not np.isfinite(xywh).all() or (xywh[2:] < 0).any():
                raise KeypointsFormatError(f"{source}: {where}: bbox must be [x, y, w, h] with w, h >= 0, got {box!r}")
            box = np.array([xywh[0], xywh[1], xywh[0] + xywh[2], xywh[1] + xywh[3]])
        image_ids.append(image_id)
        points.append(triples)
        boxes.append(box)
        scores.append(score)
    thirds = np.array([p[:, 2] for p in points]).reshape(-1)
    is_flags = bool(np.isin(thirds, (0.0, 1.0, 2.0)).all())
    mode = confidence if confidence != "auto" else ("visibility" if is_flags else "confidence")
    frame_of = _frame_of_image(image_ids, image_to_frame, source)
    frames = sorted(set(frame_of.values()))
    row_of = {frame: row for row, frame in enumerate(frames)}
    per_frame: list[list[int]] = [[] for _ in frames]
    for n, image_id in enumerate(image_ids):
        per_frame[row_of[frame_of[image_id]]].append(n)
    keypoints_rows, boxes_rows, scores_rows = [], [], []
    for members in per_frame:
        frame_points = np.zeros((len(members), NUM_KEYPOINTS, 3), np.float32)
        frame_boxes = np.zeros((len(members), 4), np.float32)
        frame_scores = np.zeros(len(members), np.float32)
        for k, n in enumerate(members):
            triples = points[n].copy()
            if mode == "visibility":
                triples[:, 2] = np.where(triples[:, 2] > 0, 1.0 if scores[n] is None else scores[n], 0.0)
            frame_points[k] = triples
            frame_boxes[k] = boxes_from_keypoints(triples) if boxes[n] is None else boxes[n]
            frame_scores[k] = mean_visible_confidence(triples) if scores[n] is None else scores[n]
        keypoints_rows.append(frame_points)
        boxes_rows.append(frame_boxes)
        scores_rows.append(frame_scores)
    try:
        return VideoKeypoints.from_frames(
            keypoints_rows,
            boxes=boxes_rows,
            scores=scores_rows,
            frame_indices=frames,
            width=width,
            height=height,
            fps=fps,
            video=video,
            video_frames=video_frames,
        )
    except ValueError as exc:
        raise KeypointsFormatError(f"{source}: {exc}") from None


def read_coco_results(uri: str, **options: Any) -> VideoKeypoints:
    """Read a COCO keypoint-results JSON file of one video; ``options`` as :func:`parse_coco_results`."""
    return parse_coco_results(_load_json(uri), source=uri, **options)


# ----------------------------------------------------------------------------- any format


def _sniff_document(document: Any, source: str) -> str:
    if isinstance(document, list):
        return "coco"
    if isinstance(document, Mapping) and "frames" in document:
        return "labelmill"
    if isinstance(document, Mapping) and "people" in document:
        return "openpose"
    raise KeypointsFormatError(
        f"{source}: unknown keypoint format (expected a labelmill object with 'frames', "
        "a COCO results list, or an OpenPose object with 'people')"
    )


def read_keypoints(uri: str, *, format: KeypointFileFormat = "auto", **options: Any) -> VideoKeypoints:
    """Read keypoints of one video in any supported format.

    ``format="auto"``: a directory is OpenPose output; a JSON file is a labelmill document
    (object with ``frames``), COCO results (a list) or one OpenPose frame (object with
    ``people``). ``options`` go to the format's reader (e.g. ``image_to_frame`` for COCO,
    ``width``/``height``/``fps`` for OpenPose and COCO).
    """
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {', '.join(_FORMATS)}, got {format!r}")
    fs, path = url_to_fs(uri)
    if format == "openpose" or (format == "auto" and fs.isdir(path)):
        return read_openpose(uri, **options)
    document = _read_json_file(fs, path, uri)
    kind = _sniff_document(document, uri) if format == "auto" else format
    if kind == "labelmill":
        if options:
            raise TypeError(f"labelmill keypoint files take no reader options, got {', '.join(options)}")
        return VideoKeypoints.from_json(document, source=uri)
    if kind == "coco":
        return parse_coco_results(document, source=uri, **options)
    return read_openpose([uri], **options)


# ----------------------------------------------------------------------------- operator


def _candidate_names(key: Any, uri: Any) -> list[str]:
    """Names a video's keypoint file may have: the key, the video file's stem, the YouTube id of a clip key."""
    names: list[str] = []
    if isinstance(key, str) and key:
        names.append(key)
        match = _KINETICS_CLIP_KEY.match(posixpath.basename(key))
        if match:
            names.append(posixpath.join(posixpath.dirname(key), match["video"]))
    if isinstance(uri, str) and uri:
        stem = posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]
        if stem:
            names.append(stem)
            match = _KINETICS_CLIP_KEY.match(stem)
            if match:
                names.append(match["video"])
    return list(dict.fromkeys(names))


def _positive_int(value: Any) -> int | None:
    """``value`` as a positive int (a decoded frame size), None when absent, 0 or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number >= 1 else None


def _rows_for(keypoints: VideoKeypoints, frames: Any, found: str) -> VideoKeypoints:
    """The file's rows for the decoded source ``frames`` (None: dense over the file's frames)."""
    if frames is None:
        last = int(keypoints.frame_indices[-1]) if keypoints.num_frames else -1
        span = keypoints.video_frames or last + 1
        if span > MAX_DENSE_FRAMES:
            raise KeypointsFormatError(f"{found}: {span} frames exceed the limit of {MAX_DENSE_FRAMES}")
        return keypoints.densify()
    frames = np.asarray(frames, dtype=np.int64).reshape(-1)
    if not frames.size:
        raise KeypointsFormatError(f"{found}: the item has no decoded frames to attach keypoints to")
    last = int(keypoints.frame_indices[-1]) if keypoints.num_frames else -1
    covered = keypoints.video_frames or last + 1
    if frames[0] >= covered:
        listed = f"source frames 0..{covered - 1}" if covered else "no frame"
        raise KeypointsFormatError(
            f"{found}: the file covers {listed} but the decoded frames are {int(frames[0])}..{int(frames[-1])} "
            "(frame t of a keypoint file is source frame t of the video; is it this video's file?)")
    return keypoints.at_frames(frames)


def _empty_columns() -> dict[str, Any]:
    return {**empty_keypoint_columns(), "keypoints_uri": None}


class PrecomputedKeypoints:
    """Operator: attach precomputed 2D keypoints to work items (engine-free, picklable).

    Input columns: ``key``, ``uri`` (the video); optional ``keypoints_uri`` (the keypoint
    file or OpenPose directory of the item; null: look it up), ``frame_indices`` (the source
    frames :class:`~labelmill.operators.common.decode.DecodeVideo` kept), ``original_width``/
    ``original_height`` (the decoded frame size), ``status``/``reason`` (items already
    ``failed`` pass through). Lookup under ``root`` tries, for each candidate name (the key;
    for a Kinetics clip key ``<id>_<start>_<end>`` also ``<id>``; the video file's stem):
    ``<root>/<name>.json`` (labelmill or COCO results) and, for OpenPose, ``<root>/<name>/`` or
    ``<root>/<name>_<frame:012d>_keypoints.json``.

    Row t of a keypoint file is source frame t of the video at ``uri``. With ``frame_indices``
    the added columns have one row per decoded frame (row t = source frame
    ``frame_indices[t]``: a time range and ``decode.fps`` cut the file to the frames decoded);
    without it they are dense over source frames (row t = frame t, t < the file's
    ``num_frames`` or the last listed frame + 1). Frames the file does not list are empty; an
    item none of whose decoded frames the file covers fails. Keypoints more than
    :data:`~labelmill.operators.pose3d.keypoints_format.OUTSIDE_FRAME_TOLERANCE` of the frame
    size outside the frame (decoded size, else the file's) and NaN/infinite ones are undetected.

    Added columns, one entry per item:

    * ``keypoints (F, P, 17, 3)`` float32, ``person_mask (F, P)`` bool, ``boxes (F, P, 4)``
      float32, ``scores (F, P)`` float32 (see :class:`VideoKeypoints`; zero-size when failed)
    * ``keypoint_fps`` float (NaN unknown), ``keypoint_width``/``keypoint_height`` int32
      pixels (0 unknown), ``keypoints_uri`` the file or directory read (None when none was found)
    * ``status`` ``failed`` with a ``reason`` naming the file when the keypoints are missing,
      malformed or do not cover the decoded frames; otherwise the input status (``pending``
      when absent) and reason.

    A failing item never stops the batch.
    """

    resources: ClassVar[dict[str, int]] = {"num_cpus": 1, "num_gpus": 0, "batch_size": 16}

    # Columns read and added (the persisted pipeline loads exactly these from stored results).
    reads = ("key", "uri", "keypoints_uri", "frame_indices", "original_width", "original_height")
    writes = ("keypoints", "person_mask", "boxes", "scores", "keypoint_fps", "keypoint_width", "keypoint_height", "keypoints_uri")

    def __init__(self, *, root: str, format: KeypointFileFormat = "auto") -> None:
        if not isinstance(root, str) or not root:
            raise ValueError(f"root must be a non-empty fsspec URL or path, got {root!r}")
        if format not in _FORMATS:
            raise ValueError(f"format must be one of {', '.join(_FORMATS)}, got {format!r}")
        self.root = root.rstrip("/") or "/"
        self.format = format
        self._fs: Any = None
        self._root_path: str | None = None

    def setup(self) -> None:
        """Open the filesystem of ``root`` (cheap; nothing heavy to load)."""
        self._fs, self._root_path = url_to_fs(self.root)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs"] = None
        state["_root_path"] = None
        return state

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "key" not in batch and "uri" not in batch:
            found = ", ".join(batch) or "no columns"
            raise ValueError(f"PrecomputedKeypoints needs a 'key' or 'uri' column; the batch has {found}")
        if self._fs is None:
            self.setup()
        sizes = {name: len(column) for name, column in batch.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch columns have different lengths: {sizes}")
        size = next(iter(sizes.values()))
        items = ItemStatus.of(batch, size)
        keys = items.keys
        uris = list(batch.get("uri", [None] * size))
        explicit = list(batch.get("keypoints_uri", [None] * size))
        decoded = list(batch.get("frame_indices", [None] * size))
        widths = list(batch.get("original_width", [None] * size))
        heights = list(batch.get("original_height", [None] * size))
        columns: dict[str, list] = {name: [] for name in _empty_columns()}
        for i in range(size):
            result = _empty_columns()
            if isinstance(explicit[i], str) and explicit[i]:
                result["keypoints_uri"] = explicit[i]
            if not items.is_failed(i):
                try:
                    found, keypoints = self._read_item(keys[i], uris[i], explicit[i])
                    dense = _rows_for(keypoints, decoded[i], found)
                    width = _positive_int(widths[i]) or dense.width
                    height = _positive_int(heights[i]) or dense.height
                    dense, outside = undetect_outside_frame(dense, width, height)
                    if outside:
                        logger.info("item %s: %d keypoints of %s outside the %sx%s frame made undetected",
                                    keys[i], outside, found, width, height)
                    result.update(dense.as_columns())
                    result["keypoint_fps"] = math.nan if dense.fps is None else dense.fps
                    result["keypoint_width"] = dense.width or 0
                    result["keypoint_height"] = dense.height or 0
                    result["keypoints_uri"] = found
                except (KeypointsFormatError, FileNotFoundError) as exc:
                    items.fail(i, f"item {keys[i]}: {exc}")
                except Exception as exc:  # an item must never stop the batch: it goes out marked failed
                    logger.warning("item %s: unexpected error reading keypoints", keys[i], exc_info=True)
                    reason = f"item {keys[i]}: unexpected {type(exc).__name__} reading keypoints: {exc}"
                    items.fail(i, reason)
            for name, column in columns.items():
                column.append(result[name])
        out = dict(batch)
        out.update({name: columns[name] for name in ("keypoints", "person_mask", "boxes", "scores", "keypoints_uri")})
        out["keypoint_fps"] = np.asarray(columns["keypoint_fps"], np.float64)
        out["keypoint_width"] = np.asarray(columns["keypoint_width"], np.int32)
        out["keypoint_height"] = np.asarray(columns["keypoint_height"], np.int32)
        items.write(out)
        return out

    # ------------------------------------------------------------------ lookup

    def _locate(self, key: Any, uri: Any, explicit: Any) -> tuple[str, Any, list[str]]:
        """(what is read, a reader returning its VideoKeypoints, the storage paths it reads)."""
        if isinstance(explicit, str) and explicit:
            fs, path = url_to_fs(explicit)
            paths = sorted(fs.find(path)) if fs.isdir(path) else [path]
            return explicit, lambda: read_keypoints(explicit, format=self.format), paths
        if self._fs is None:
            self.setup()
        fs, root = self._fs, self._root_path
        names = _candidate_names(key, uri)
        if not names:
            raise KeypointsFormatError("no key or uri to look up keypoints by")
        tried: list[str] = []
        # Every name's file and folder first (one stat each); the flat-OpenPose glob lists a whole
        # folder, so it comes last: one per item would make a corpus of N videos cost N listings of N.
        for name in names:
            if self.format in ("auto", "labelmill", "coco"):
                path = posixpath.join(root, f"{name}.json")
                tried.append(_display(fs, path, self.root))
                if fs.isfile(path):
                    shown = _display(fs, path, self.root)
                    return shown, lambda shown=shown: read_keypoints(shown, format=self.format), [path]
            if self.format in ("auto", "openpose"):
                folder = posixpath.join(root, name)
                tried.append(_display(fs, folder, self.root) + "/")
                if fs.isdir(folder):
                    shown = _display(fs, folder, self.root)
                    return shown, lambda shown=shown: read_openpose(shown), sorted(fs.find(folder))
        for name in names:
            if self.format in ("auto", "openpose"):
                parent, stem = posixpath.split(posixpath.join(root, name))
                flat = sorted(
                    p for p in fs.glob(posixpath.join(parent, f"{stem}_" + "[0-9]" * 12 + _OPENPOSE_SUFFIX))
                )
                tried.append(_display(fs, posixpath.join(parent, f"{stem}_<frame>{_OPENPOSE_SUFFIX}"), self.root))
                if flat:
                    shown = [_display(fs, p, self.root) for p in flat]
                    return (_display(fs, parent, self.root), lambda shown=shown, stem=stem: read_openpose(shown, video=stem),
                            flat)
        raise FileNotFoundError(f"no keypoint file found; tried {', '.join(tried)}")

    def _read_item(self, key: Any, uri: Any, explicit: Any) -> tuple[str, VideoKeypoints]:
        """(the file or directory read, its keypoints); raises KeypointsFormatError / FileNotFoundError."""
        shown, read, _ = self._locate(key, uri, explicit)
        return shown, read()

    def item_fingerprint(self, item: dict[str, Any]) -> str:
        """Which version of which keypoint file(s) the item reads (path, size, time or etag of each).

        A stage result keyed with it is recomputed when a keypoint file is rewritten. An item whose
        file cannot be found gets a fingerprint saying so (the stage then fails it with the reason).
        """
        try:
            shown, _, paths = self._locate(item.get("key"), item.get("uri"), item.get("keypoints_uri"))
        except (KeypointsFormatError, FileNotFoundError) as exc:
            return f"missing: {exc}"
        fs = url_to_fs(shown if isinstance(shown, str) else self.root)[0]
        return " ".join(file_fingerprint(path, fs=fs, path=path) for path in paths)
