"""Person boxes for top-down keypoint detection: OpenCV's HOG people detector, NMS, box padding.

Boxes are ``(N, 4)`` float32 ``x0, y0, x1, y1`` in continuous pixel coordinates of the image
that was searched (image corner at 0, so pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``).

The HOG detector (Dalal & Triggs, OpenCV's ``HOGDescriptor_getDefaultPeopleDetector``) finds
upright, mostly whole people at least about 100 pixels tall in the searched image; it misses
seated people, close-ups (head and shoulders) and strongly occluded people. Its score is the
linear SVM margin (about 0 at the decision boundary, 1-3 for clear detections), not a
probability.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import cv2
import numpy as np

__all__ = [
    "HogConfig",
    "HogPersonDetector",
    "non_max_suppression",
    "pad_boxes",
    "clip_boxes",
]


def non_max_suppression(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    iou_threshold: float,
    max_count: int | None = None,
) -> np.ndarray:
    """Greedy NMS: indices of the boxes kept, highest score first.

    boxes: ``(N, 4)`` x0, y0, x1, y1. scores: ``(N,)``. A box is dropped when its IoU with an
    already kept, higher-scoring box exceeds ``iou_threshold``. At most ``max_count`` are kept.
    Returns ``(K,)`` int64. Uses ``cv2.dnn.NMSBoxes``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"non_max_suppression: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
    if boxes.shape[0] == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    # OpenCV wants scores above a threshold >= 0: shift them (order unchanged) so that all count.
    shifted = scores - scores.min() + 1.0
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), shifted.tolist(), 0.0, float(iou_threshold))
    kept = np.asarray(kept, dtype=np.int64).reshape(-1)
    kept = kept[np.argsort(-scores[kept], kind="stable")]
    if max_count is not None:
        kept = kept[:max_count]
    return kept


def pad_boxes(boxes: np.ndarray, *, factor: float, aspect_ratio: float | None = None) -> np.ndarray:
    """Grow boxes about their centres.

    boxes: ``(N, 4)``. Width and height are multiplied by ``factor``; with ``aspect_ratio``
    (width / height) the shorter side is then lengthened until the box has that ratio (the
    top-down convention of RTMPose/ViTPose). Returns ``(N, 4)`` float64.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    size = (boxes[:, 2:] - boxes[:, :2]) * factor
    if aspect_ratio is not None:
        width, height = size[:, 0].copy(), size[:, 1].copy()
        wide = width > height * aspect_ratio
        height = np.where(wide, width / aspect_ratio, height)
        width = np.where(wide, width, height * aspect_ratio)
        size = np.stack([width, height], axis=1)
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def clip_boxes(boxes: np.ndarray, *, width: int, height: int) -> np.ndarray:
    """Clip ``(N, 4)`` boxes to the image ``[0, width] x [0, height]``; returns float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


@dataclasses.dataclass
class HogConfig:
    """Knobs of :class:`HogPersonDetector`."""

    # Keep detections whose SVM margin is at least this (about 0 = boundary, 1-3 = clear people).
    min_score: float = 0.5
    # NMS: drop a box overlapping a higher-scoring one by more than this IoU.
    nms_iou: float = 0.45
    # Keep at most this many boxes per image (highest scores).
    max_boxes: int = 8
    # Images are resized to this height for the search (up or down; boxes are mapped back);
    # null searches the image as it is. People shorter than ~100 px at the searched height are
    # missed; the search time grows with the image area (about 7 frames/s at 768x576 on one core).
    search_height: int | None = None
    # Sliding-window step in pixels (multiple of 8; smaller finds more, slower).
    win_stride: int = 8
    # Ratio between successive pyramid scales (> 1; smaller is finer and slower).
    scale_step: float = 1.05

    def __post_init__(self) -> None:
        if not _finite(self.min_score):
            raise ValueError(f"min_score must be a finite number, got {self.min_score!r}")
        if not _finite(self.nms_iou) or not 0.0 <= self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must lie in [0, 1], got {self.nms_iou!r}")
        if not _integer(self.max_boxes) or self.max_boxes < 1:
            raise ValueError(f"max_boxes must be an integer >= 1, got {self.max_boxes!r}")
        if self.search_height is not None and (not _integer(self.search_height) or self.search_height < 128):
            raise ValueError(
                f"search_height must be an integer >= 128 (the HOG window height) or null, got {self.search_height!r}"
            )
        if not _integer(self.win_stride) or self.win_stride < 8 or self.win_stride % 8:
            raise ValueError(f"win_stride must be a positive multiple of 8, got {self.win_stride!r}")
        if not _finite(self.scale_step) or not 1.0 < self.scale_step <= 2.0:
            raise ValueError(f"scale_step must lie in (1, 2], got {self.scale_step!r}")


class HogPersonDetector:
    """Person boxes from OpenCV's HOG + linear SVM people detector (CPU, no weights to download).

    ``detect(image)`` takes an RGB (or BGR: HOG uses gradients, the channel order hardly
    matters) ``(H, W, 3)`` uint8 image and returns ``(boxes (N, 4) float32, scores (N,)
    float32)`` in that image's pixels, after NMS, highest score first. Picklable; the OpenCV
    object is built in :meth:`setup` (or on first use).
    """

    def __init__(self, *, config: HogConfig | None = None) -> None:
        self.config = config or HogConfig()
        self._hog: Any = None

    def setup(self) -> None:
        if not hasattr(cv2, "HOGDescriptor"):
            raise ImportError(
                f"OpenCV {cv2.__version__} has no HOGDescriptor (OpenCV 5 dropped it); install opencv-contrib-python<5"
            )
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self._hog = hog

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_hog"] = None
        return state

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._hog is None:
            self.setup()
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype != np.uint8:
            found = getattr(image, "shape", type(image).__name__)
            raise ValueError(f"HOG person detection needs an (H, W, 3) uint8 image, got {found!r}")
        cfg = self.config
        height, width = image.shape[:2]
        factor = 1.0 if cfg.search_height is None else cfg.search_height / height
        searched = image
        if factor != 1.0:
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            searched = cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
        if searched.shape[0] < 128 or searched.shape[1] < 64:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        stride = (cfg.win_stride, cfg.win_stride)
        rects, weights = self._hog.detectMultiScale(searched, winStride=stride, padding=(8, 8), scale=cfg.scale_step)
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(weights, dtype=np.float64).reshape(-1)
        keep = scores >= cfg.min_score
        rects, scores = rects[keep], scores[keep]
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / factor
        kept = non_max_suppression(boxes, scores, iou_threshold=cfg.nms_iou, max_count=cfg.max_boxes)
        boxes = clip_boxes(boxes[kept], width=width, height=height)
        return boxes.astype(np.float32), scores[kept].astype(np.float32)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
