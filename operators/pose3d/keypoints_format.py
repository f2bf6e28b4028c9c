"""`VideoKeypoints`: every detected person's COCO-17 keypoints over one video, and its JSON form.

In memory (F frames listed, P = most people in any listed frame, padded with zeros)::

    keypoints      (F, P, 17, 3) float32  x, y (pixels of the original frame), confidence >= 0
    person_mask    (F, P) bool            detection p exists in row t
    boxes          (F, P, 4) float32      x0, y0, x1, y1 pixels (detector box, else keypoint extent)
    scores         (F, P) float32         detection score (detector's, else mean visible confidence)
    frame_indices  (F,) int64             source frame index of each row, strictly increasing

Rows where ``person_mask`` is False are all zeros. A keypoint with confidence 0 is "not
detected" and has x = y = 0. ``width``/``height`` (pixels) and ``fps`` are ``None`` when the
source does not say. The JSON schema (the one ``labelmill synth pose`` writes; see
docs/keypoints.md) is read by :meth:`VideoKeypoints.from_json` and written by
:meth:`VideoKeypoints.to_json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from labelmill.models.coco import COCO17_NAMES

__all__ = [
    "NUM_KEYPOINTS",
    "KeypointsFormatError",
    "VideoKeypoints",
    "boxes_from_keypoints",
    "mean_visible_confidence",
    "OUTSIDE_FRAME_TOLERANCE",
    "undetect_non_finite",
    "undetect_outside_frame",
]

NUM_KEYPOINTS = len(COCO17_NAMES)  # 17
# A keypoint more than this fraction of the frame's width (height) left of / right of (above /
# below) the frame is not a detection: it becomes undetected (see undetect_outside_frame).
OUTSIDE_FRAME_TOLERANCE = 0.1


class KeypointsFormatError(ValueError):
    """A keypoint file or document cannot be read; the message names the source and the reason."""


def boxes_from_keypoints(keypoints: np.ndarray, *, min_confidence: float = 0.0) -> np.ndarray:
    """Tight boxes around the keypoints whose confidence exceeds ``min_confidence``.

    keypoints: ``(..., 17, 3)``. Returns ``(..., 4)`` float32 x0, y0, x1, y1; all zeros where
    no keypoint is confident enough.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    visible = keypoints[..., 2] > min_confidence
    any_visible = visible.any(axis=-1)
    inf = np.float32(np.inf)
    x = keypoints[..., 0]
    y = keypoints[..., 1]
    with np.errstate(invalid="ignore"):
        boxes = np.stack(
            [
                np.where(visible, x, inf).min(axis=-1),
                np.where(visible, y, inf).min(axis=-1),
                np.where(visible, x, -inf).max(axis=-1),
                np.where(visible, y, -inf).max(axis=-1),
            ],
            axis=-1,
        )
    return np.where(any_visible[..., None], boxes, 0.0).astype(np.float32)


def mean_visible_confidence(keypoints: np.ndarray) -> np.ndarray:
    """Mean confidence of the keypoints with confidence > 0. ``(..., 17, 3)`` -> ``(...)``; 0 if none."""
    confidence = np.asarray(keypoints, dtype=np.float32)[..., 2]
    visible = confidence > 0
    count = visible.sum(axis=-1)
    return np.where(count > 0, confidence.sum(axis=-1) / np.maximum(count, 1), 0.0).astype(np.float32)


def undetect_non_finite(triples: np.ndarray) -> np.ndarray:
    """``(..., 3)`` x, y, confidence with every keypoint whose x, y or confidence is NaN or
    infinite turned into an undetected one (``0, 0, 0``); float64 copy."""
    triples = np.array(triples, dtype=np.float64)
    bad = ~np.isfinite(triples).all(axis=-1)
    triples[bad] = 0.0
    return triples


def undetect_outside_frame(video: "VideoKeypoints", width: int | None, height: int | None, *,
                           tolerance: float = OUTSIDE_FRAME_TOLERANCE) -> tuple["VideoKeypoints", int]:
    """``video`` with keypoints far outside a ``width`` x ``height`` frame made undetected.

    A detected keypoint is kept when ``-tolerance * width <= x <= (1 + tolerance) * width`` and
    the same for ``y`` with ``height``; others get confidence 0 and x = y = 0. A person left
    without any detected keypoint is removed from its frame (``person_mask`` False, zeros);
    every box is clipped to the same bounds. Without a frame size (``None`` or 0) nothing
    changes. Returns the new keypoints and how many keypoints were made undetected.
    """
    if not width or not height or not video.keypoints.size:
        return video, 0
    low = np.array([-tolerance * width, -tolerance * height], np.float64)
    high = np.array([(1 + tolerance) * width, (1 + tolerance) * height], np.float64)
    keypoints = video.keypoints.copy()
    xy = keypoints[..., :2].astype(np.float64)
    detected = (keypoints[..., 2] > 0) & video.person_mask[..., None]
    outside = detected & ((xy < low) | (xy > high)).any(axis=-1)
    count = int(outside.sum())
    boxes = np.clip(video.boxes, np.tile(low, 2), np.tile(high, 2)).astype(np.float32)
    if not count and np.array_equal(boxes, video.boxes):
        return video, 0
    keypoints[outside] = 0.0
    mask = video.person_mask & (keypoints[..., 2] > 0).any(axis=-1)
    return dataclasses.replace(video, keypoints=keypoints, person_mask=mask, boxes=boxes,
                               scores=np.where(mask, video.scores, 0.0)), count


def _optional_positive(value: Any, name: str, kind: type) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    if not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ValueError(f"{name} must be a whole number of pixels, got {value!r}")
        return int(value)
    return float(value)


@dataclasses.dataclass(eq=False)
class VideoKeypoints:
    """All detected people of one video (see the module docstring for shapes and units).

    Validated on construction (``ValueError`` naming the field): shapes agree, coordinates
    are finite, confidences and scores are finite and >= 0, ``frame_indices`` are >= 0 and
    strictly increasing. Arrays are copied to the canonical dtypes; padded rows and
    undetected keypoints are zeroed.
    """

    keypoints: np.ndarray  # (F, P, 17, 3) float32 x, y pixels, confidence
    person_mask: np.ndarray  # (F, P) bool
    boxes: np.ndarray  # (F, P, 4) float32 x0, y0, x1, y1 pixels
    scores: np.ndarray  # (F, P) float32
    frame_indices: np.ndarray  # (F,) int64 source frame index per row
    width: int | None = None  # frame width, pixels; None when unknown
    height: int | None = None  # frame height, pixels; None when unknown
    fps: float | None = None  # frames per second; None when unknown
    video: str | None = None  # video id, when the source names one
    video_frames: int | None = None  # frames in the whole video (> every frame index); None when unknown

    def __post_init__(self) -> None:
        keypoints = np.array(self.keypoints, dtype=np.float32)
        if keypoints.ndim != 4 or keypoints.shape[2:] != (NUM_KEYPOINTS, 3):
            raise ValueError(f"keypoints must have shape (F, P, {NUM_KEYPOINTS}, 3), got {keypoints.shape}")
        num_frames, num_people = keypoints.shape[:2]
        mask = np.array(self.person_mask)
        if mask.shape != (num_frames, num_people):
            raise ValueError(f"person_mask must have shape {(num_frames, num_people)}, got {mask.shape}")
        if mask.dtype != bool:
            if not np.isin(mask, (0, 1)).all():
                raise ValueError("person_mask must be boolean (or 0/1)")
            mask = mask.astype(bool)
        boxes = np.array(self.boxes, dtype=np.float32)
        if boxes.shape != (num_frames, num_people, 4):
            raise ValueError(f"boxes must have shape {(num_frames, num_people, 4)}, got {boxes.shape}")
        scores = np.array(self.scores, dtype=np.float32)
        if scores.shape != (num_frames, num_people):
            raise ValueError(f"scores must have shape {(num_frames, num_people)}, got {scores.shape}")
        frames = np.array(self.frame_indices)
        if frames.shape != (num_frames,):
            raise ValueError(f"frame_indices must have shape ({num_frames},), got {frames.shape}")
        if frames.size and (not np.issubdtype(frames.dtype, np.number) or (frames != np.round(frames)).any()):
            raise ValueError("frame_indices must be whole numbers")
        frames = frames.astype(np.int64)
        if frames.size and (frames[0] < 0 or (np.diff(frames) <= 0).any()):
            raise ValueError(f"frame_indices must be >= 0 and strictly increasing, got {frames.tolist()[:20]}")

        present = mask[..., None]
        confidence = keypoints[..., 2]
        if not np.isfinite(confidence[mask]).all() or (confidence[mask] < 0).any():
            raise ValueError("keypoint confidences must be finite and >= 0")
        detected = (confidence > 0) & present
        if not np.isfinite(keypoints[..., :2][detected]).all():
            raise ValueError("coordinates of detected keypoints (confidence > 0) must be finite")
        if not np.isfinite(boxes[mask]).all():
            raise ValueError("boxes must be finite")
        if not np.isfinite(scores[mask]).all() or (scores[mask] < 0).any():
            raise ValueError("scores must be finite and >= 0")
        keypoints = np.where(detected[..., None], keypoints, 0.0).astype(np.float32)
        self.keypoints = keypoints
        self.person_mask = mask
        self.boxes = np.where(present, boxes, 0.0).astype(np.float32)
        self.scores = np.where(mask, scores, 0.0).astype(np.float32)
        self.frame_indices = frames
        self.width = _optional_positive(self.width, "width", int)
        self.height = _optional_positive(self.height, "height", int)
        self.fps = _optional_positive(self.fps, "fps", float)
        if self.video is not None and not isinstance(self.video, str):
            raise ValueError(f"video must be a string or None, got {self.video!r}")
        if self.video_frames is not None:
            if isinstance(self.video_frames, bool) or not isinstance(self.video_frames, (int, np.integer)):
                raise ValueError(f"video_frames must be an integer or None, got {self.video_frames!r}")
            self.video_frames = int(self.video_frames)
            last = int(frames[-1]) if frames.size else -1
            if self.video_frames <= last:
                raise ValueError(f"video_frames ({self.video_frames}) must exceed the last frame index ({last})")

    # ------------------------------------------------------------------ shape helpers

    @property
    def num_frames(self) -> int:
        """F: rows (listed frames)."""
        return int(self.keypoints.shape[0])

    @property
    def max_people(self) -> int:
        """P: person slots per row."""
        return int(self.keypoints.shape[1])

    def people_per_frame(self) -> np.ndarray:
        """``(F,)`` int: detected people per row."""
        return self.person_mask.sum(axis=1)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_frames(
        cls,
        keypoints: Sequence[Any],
        *,
        boxes: Sequence[Any | None] | None = None,
        scores: Sequence[Any | None] | None = None,
        frame_indices: Sequence[int] | None = None,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        video: str | None = None,
        video_frames: int | None = None,
    ) -> "VideoKeypoints":
        """Build from ragged per-frame lists.

        ``keypoints[t]``: ``(P_t, 17, 3)`` (P_t may be 0). ``boxes[t]``: ``(P_t, 4)`` or None
        (boxes from the keypoints' extent, confidence > 0). ``scores[t]``: ``(P_t,)`` or None
        (mean confidence of the detected keypoints). ``frame_indices``: default ``0..F-1``.
        """
        num_frames = len(keypoints)
        per_frame = []
        for t, people in enumerate(keypoints):
            array = np.asarray(people, dtype=np.float32)
            if array.size == 0:
                array = array.reshape(0, NUM_KEYPOINTS, 3)
            if array.ndim != 3 or array.shape[1:] != (NUM_KEYPOINTS, 3):
                raise ValueError(f"keypoints[{t}] must have shape (P_t, {NUM_KEYPOINTS}, 3), got {array.shape}")
            per_frame.append(array)
        for name, column in (("boxes", boxes), ("scores", scores)):
            if column is not None and len(column) != num_frames:
                raise ValueError(f"{name} must list {num_frames} frames like keypoints, got {len(column)}")
        num_people = max((a.shape[0] for a in per_frame), default=0)
        out_keypoints = np.zeros((num_frames, num_people, NUM_KEYPOINTS, 3), np.float32)
        out_mask = np.zeros((num_frames, num_people), bool)
        out_boxes = np.zeros((num_frames, num_people, 4), np.float32)
        out_scores = np.zeros((num_frames, num_people), np.float32)
        for t, array in enumerate(per_frame):
            count = array.shape[0]
            out_keypoints[t, :count] = array
            out_mask[t, :count] = True
            frame_boxes = None if boxes is None else boxes[t]
            if frame_boxes is None:
                out_boxes[t, :count] = boxes_from_keypoints(array)
            else:
                frame_boxes = np.asarray(frame_boxes, dtype=np.float32).reshape(-1, 4) if count else np.zeros((0, 4))
                if frame_boxes.shape != (count, 4):
                    raise ValueError(f"boxes[{t}] must have shape ({count}, 4), got {frame_boxes.shape}")
                out_boxes[t, :count] = frame_boxes
            frame_scores = None if scores is None else scores[t]
            if frame_scores is None:
                out_scores[t, :count] = mean_visible_confidence(array)
            else:
                frame_scores = np.asarray(frame_scores, dtype=np.float32).reshape(-1)
                if frame_scores.shape != (count,):
                    raise ValueError(f"scores[{t}] must have shape ({count},), got {frame_scores.shape}")
                out_scores[t, :count] = frame_scores
        indices = np.arange(num_frames) if frame_indices is None else np.asarray(frame_indices)
        return cls(
            keypoints=out_keypoints,
            person_mask=out_mask,
            boxes=out_boxes,
            scores=out_scores,
            frame_indices=indices,
            width=width,
            height=height,
            fps=fps,
            video=video,
            video_frames=video_frames,
        )

    @classmethod
    def empty(cls, **metadata: Any) -> "VideoKeypoints":
        """No frames listed (``F = P = 0``); ``metadata``: width, height, fps, video, video_frames."""
        return cls.from_frames([], **metadata)

    # ------------------------------------------------------------------ views

    def densify(self, num_frames: int | None = None) -> "VideoKeypoints":
        """One row per source frame ``0..num_frames-1`` (row t = frame t); unlisted frames are empty.

        ``num_frames`` defaults to ``video_frames``, else the last frame index + 1. Frames at or
        beyond ``num_frames`` are dropped.
        """
        if num_frames is None:
            num_frames = self.video_frames
        if num_frames is None:
            num_frames = int(self.frame_indices[-1]) + 1 if self.num_frames else 0
        if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 0:
            raise ValueError(f"num_frames must be an integer >= 0, got {num_frames!r}")
        num_frames = int(num_frames)
        rows = self.frame_indices < num_frames
        target = self.frame_indices[rows]
        keypoints = np.zeros((num_frames, self.max_people, NUM_KEYPOINTS, 3), np.float32)
        mask = np.zeros((num_frames, self.max_people), bool)
        boxes = np.zeros((num_frames, self.max_people, 4), np.float32)
        scores = np.zeros((num_frames, self.max_people), np.float32)
        keypoints[target] = self.keypoints[rows]
        mask[target] = self.person_mask[rows]
        boxes[target] = self.boxes[rows]
        scores[target] = self.scores[rows]
        video_frames = self.video_frames
        if video_frames is not None and video_frames < num_frames:
            video_frames = num_frames
        return dataclasses.replace(
            self,
            keypoints=keypoints,
            person_mask=mask,
            boxes=boxes,
            scores=scores,
            frame_indices=np.arange(num_frames),
            video_frames=video_frames,
        )

    def at_frames(self, frames: Sequence[int]) -> "VideoKeypoints":
        """One row per source frame in ``frames`` (row t = frame ``frames[t]``, strictly
        increasing, >= 0); frames the source does not list are empty rows."""
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        if frames.size and (frames[0] < 0 or (np.diff(frames) <= 0).any()):
            raise ValueError(f"frames must be >= 0 and strictly increasing, got {frames.tolist()[:20]}")
        position = np.searchsorted(self.frame_indices, frames)
        listed = position < self.num_frames
        listed[listed] = self.frame_indices[position[listed]] == frames[listed]
        rows, source = np.flatnonzero(listed), position[listed]
        keypoints = np.zeros((frames.size, self.max_people, NUM_KEYPOINTS, 3), np.float32)
        mask = np.zeros((frames.size, self.max_people), bool)
        boxes = np.zeros((frames.size, self.max_people, 4), np.float32)
        scores = np.zeros((frames.size, self.max_people), np.float32)
        keypoints[rows] = self.keypoints[source]
        mask[rows] = self.person_mask[source]
        boxes[rows] = self.boxes[source]
        scores[rows] = self.scores[source]
        video_frames = self.video_frames
        if video_frames is not None and frames.size and video_frames <= frames[-1]:
            video_frames = int(frames[-1]) + 1
        return dataclasses.replace(self, keypoints=keypoints, person_mask=mask, boxes=boxes, scores=scores,
                                   frame_indices=frames, video_frames=video_frames)

    def as_columns(self) -> dict[str, np.ndarray]:
        """The four arrays as a dict: ``keypoints``, ``person_mask``, ``boxes``, ``scores``."""
        return {
            "keypoints": self.keypoints,
            "person_mask": self.person_mask,
            "boxes": self.boxes,
            "scores": self.scores,
        }

    # ------------------------------------------------------------------ JSON

    def to_json(self, *, decimals: int | None = 4) -> dict[str, Any]:
        """The JSON document (a dict of plain Python values; schema in docs/keypoints.md).

        ``decimals`` rounds coordinates, confidences, boxes and scores (None: full float32
        precision written as float64).
        """

        def rounded(values: np.ndarray) -> Any:
            values = values.astype(np.float64)
            return (values if decimals is None else np.round(values, decimals)).tolist()

        frames = []
        for t in range(self.num_frames):
            people = []
            for p in np.flatnonzero(self.person_mask[t]):
                people.append(
                    {
                        "keypoints": rounded(self.keypoints[t, p]),
                        "bbox": rounded(self.boxes[t, p]),
                        "score": rounded(self.scores[t, p]),
                    }
                )
            frames.append({"frame": int(self.frame_indices[t]), "people": people})
        return {
            "video": self.video,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "num_frames": self.video_frames,
            "keypoint_names": list(COCO17_NAMES),
            "frames": frames,
        }

    def to_json_text(self, *, decimals: int | None = 4) -> str:
        """:meth:`to_json` as compact JSON text ending in a newline."""
        return json.dumps(self.to_json(decimals=decimals), separators=(",", ":"), allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, document: Mapping[str, Any] | str | bytes, *, source: str = "<document>") -> "VideoKeypoints":
        """Parse a document of the labelmill keypoints schema (a dict, or JSON text/bytes).

        Raises :class:`KeypointsFormatError` naming ``source``, the frame and person at fault
        and the reason. Unknown top-level keys are ignored.
        """
        if isinstance(document, (str, bytes, bytearray)):
            try:
                document = json.loads(document)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise KeypointsFormatError(f"{source}: malformed JSON: {exc}") from None
        return _parse_document(document, source)


# ----------------------------------------------------------------------------- parsing


def _fail(source: str, reason: str) -> KeypointsFormatError:
    return KeypointsFormatError(f"{source}: {reason}")


def _parse_document(document: Any, source: str) -> VideoKeypoints:
    if not isinstance(document, Mapping):
        raise _fail(source, f"expected a JSON object with a 'frames' list, got {type(document).__name__}")
    frames = document.get("frames")
    if not isinstance(frames, list):
        raise _fail(source, "missing 'frames' list")
    names = document.get("keypoint_names")
    if names is not None and list(names) != list(COCO17_NAMES):
        raise _fail(source, f"keypoint_names must be the COCO-17 names in order {list(COCO17_NAMES)}, got {names}")
    per_frame_keypoints, per_frame_boxes, per_frame_scores, indices = [], [], [], []
    for position, frame in enumerate(frames):
        if not isinstance(frame, Mapping):
            raise _fail(source, f"frames[{position}] is not an object")
        index = frame.get("frame", position)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise _fail(source, f"frames[{position}]: 'frame' must be an integer >= 0, got {index!r}")
        people = frame.get("people", [])
        if not isinstance(people, list):
            raise _fail(source, f"frame {index}: 'people' must be a list")
        keypoints, boxes, scores = [], [], []
        for p, person in enumerate(people):
            where = f"frame {index}, person {p}"
            if not isinstance(person, Mapping):
                raise _fail(source, f"{where}: not an object")
            points = _keypoint_array(person.get("keypoints"), source, where)
            keypoints.append(points)
            box = person.get("bbox")
            if box is None:
                boxes.append(boxes_from_keypoints(points))
            else:
                boxes.append(_number_array(box, (4,), source, f"{where}: bbox"))
            score = person.get("score")
            if score is None:
                scores.append(mean_visible_confidence(points))
            else:
                scores.append(_number(score, source, f"{where}: score"))
        per_frame_keypoints.append(np.asarray(keypoints, np.float32).reshape(-1, NUM_KEYPOINTS, 3))
        per_frame_boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        per_frame_scores.append(np.asarray(scores, np.float32).reshape(-1))
        indices.append(index)
    order = np.argsort(indices, kind="stable")
    sorted_indices = np.asarray(indices, np.int64)[order]
    duplicated = sorted_indices[1:][np.diff(sorted_indices) == 0]
    if duplicated.size:
        raise _fail(source, f"frame {int(duplicated[0])} is listed more than once")
    metadata = {}
    for name, kind in (("width", int), ("height", int), ("fps", float)):
        value = document.get(name)
        try:
            metadata[name] = _optional_positive(value, name, kind)
        except ValueError as exc:
            raise _fail(source, str(exc)) from None
    video = document.get("video")
    if video is not None and not isinstance(video, str):
        raise _fail(source, f"'video' must be a string or null, got {video!r}")
    video_frames = document.get("num_frames")
    if video_frames is not None and (isinstance(video_frames, bool) or not isinstance(video_frames, int)):
        raise _fail(source, f"'num_frames' must be an integer or null, got {video_frames!r}")
    try:
        return VideoKeypoints.from_frames(
            [per_frame_keypoints[i] for i in order],
            boxes=[per_frame_boxes[i] for i in order],
            scores=[per_frame_scores[i] for i in order],
            frame_indices=sorted_indices,
            video=video,
            video_frames=video_frames,
            **metadata,
        )
    except ValueError as exc:
        raise _fail(source, str(exc)) from None


def _number(value: Any, source: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(source, f"{where} must be a finite number, got {value!r}")
    if value < 0:
        raise _fail(source, f"{where} must be >= 0, got {value!r}")
    return float(value)


def _number_array(value: Any, shape: tuple[int, ...], source: str, where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(source, f"{where} must be numbers of shape {shape}") from None
    if array.shape != shape:
        raise _fail(source, f"{where} must have shape {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise _fail(source, f"{where} must be finite numbers")
    return array


def _keypoint_array(value: Any, source: str, where: str) -> np.ndarray:
    """``(17, 3)`` from ``[[x, y, c]] * 17`` or a flat ``[x, y, c] * 17``; checks count and confidence.

    A keypoint with a NaN or infinite x, y or confidence is undetected (``0, 0, 0``)."""
    if not isinstance(value, list):
        raise _fail(source, f"{where}: 'keypoints' must be a list, got {type(value).__name__}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(source, f"{where}: 'keypoints' must be {NUM_KEYPOINTS} [x, y, confidence] triples") from None
    if array.ndim == 1:
        if array.size != 3 * NUM_KEYPOINTS:
            expected = f"{NUM_KEYPOINTS} keypoints ({3 * NUM_KEYPOINTS} numbers)"
            raise _fail(source, f"{where}: expected {expected}, got {array.size} numbers")
        array = array.reshape(NUM_KEYPOINTS, 3)
    if array.shape != (NUM_KEYPOINTS, 3):
        raise _fail(
            source, f"{where}: expected {NUM_KEYPOINTS} keypoints of [x, y, confidence], got shape {array.shape}"
        )
    array = undetect_non_finite(array)  # NaN / infinite values: not a detection
    confidence = array[:, 2]
    negative = np.flatnonzero(confidence < 0)
    if negative.size:
        j = int(negative[0])
        raise _fail(source, f"{where}: negative confidence {confidence[j]} at keypoint {j} ({COCO17_NAMES[j]})")
    return array


def empty_keypoint_columns() -> dict[str, Any]:
    """The keypoint columns an operator gives an item it could not read or detect (no frames)."""
    return {
        "keypoints": np.zeros((0, 0, NUM_KEYPOINTS, 3), np.float32),
        "person_mask": np.zeros((0, 0), bool),
        "boxes": np.zeros((0, 0, 4), np.float32),
        "scores": np.zeros((0, 0), np.float32),
        "keypoint_fps": math.nan,
        "keypoint_width": 0,
        "keypoint_height": 0,
    }
