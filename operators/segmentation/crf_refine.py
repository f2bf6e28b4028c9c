"""Dense CRF refinement of an image's pseudo-labels (``crf`` stage), keeping ignore where the cues disagree.

:class:`RefineCRF` reads the decoded image, the label columns of the stage before it (the stuff
stage's ``stuff_*`` when it ran, else the things') and the boxes (``image_boxes``,
``box_categories``), and writes ``crf_sem_png``, ``crf_inst_png``, ``crf_segments`` and
``crf_changed`` (pixels whose class changed). Per image (:func:`refine_image_labels`):

1. the classes present (0 and every id in sem but 255) are renumbered 0..C-1 and the map is
   refined by :func:`~labelmill.models.dense_crf.refine_labels` (``confidence`` on a labelled
   pixel's class; ignore pixels uniform; with ``keep_ignore`` an ignore pixel stays ignore), on
   the image in 0..255 RGB; a map with one class is returned as it is;
2. **instances**: a pixel of a thing class takes the instance of the smallest box of that class
   containing it (the overlap rule of the things; boxes without a segment take no part), and a
   thing-class pixel outside every such box of its class becomes ignore; a stuff class keeps
   one segment per class;
3. ``segments`` are those of the input with their ``bbox``/``area`` recomputed (``score``
   kept); a segment left without pixels is dropped.

A thing class is one with a box in the image (``box_categories``); every other class is stuff.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from labelmill.infra.formats.items import ItemStatus
from labelmill.models.dense_crf import DenseCRFConfig, refine_labels
from labelmill.operators.segmentation.box_labels import IGNORE
from labelmill.operators.segmentation.images import decode_image_bytes
from labelmill.operators.segmentation.things import LABEL_COLUMNS, decode_png, encode_png, tight_bbox

__all__ = ["SegmentationCRFConfig", "RefineCRF", "refine_image_labels", "CRF_LABEL_COLUMNS"]

CRF_LABEL_COLUMNS = ("crf_sem_png", "crf_inst_png", "crf_segments")


@dataclasses.dataclass(frozen=True)
class SegmentationCRFConfig:
    """The dense CRF stage (``crf.*``); ``dense`` holds the kernel parameters."""

    enabled: bool = False  # off by default: measured not to help (docs/segmentation.md, "Does it help?")
    confidence: float = 0.95  # unary probability of a labelled pixel's class
    keep_ignore: bool = True  # ignore pixels (disputed by the cues) stay ignore
    dense: DenseCRFConfig = dataclasses.field(default_factory=DenseCRFConfig)

    def __post_init__(self) -> None:
        for key in ("enabled", "keep_ignore"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"SegmentationCRFConfig.{key} must be true or false, got {getattr(self, key)!r}")
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.5 <= c < 1.0:
            raise ValueError(f"SegmentationCRFConfig.confidence must be a number in [0.5, 1), got {c!r}")


def _box_window(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    x, y, w, h = (float(v) for v in box)
    return (max(0, int(np.floor(x))), max(0, int(np.floor(y))), min(width, int(np.ceil(x + w))),
            min(height, int(np.ceil(y + h))))


def refine_image_labels(
    image_bgr: np.ndarray,
    sem: np.ndarray,
    inst: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    boxes: Sequence[Sequence[float]],
    box_categories: Sequence[int],
    config: SegmentationCRFConfig,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], int]:
    """``(sem, inst, segments, changed pixels)`` after the CRF (module docstring).

    ``image_bgr`` uint8 ``(H, W, 3)``; ``sem`` uint8 / ``inst`` uint16 ``(H, W)``; ``boxes``
    ``[x, y, w, h]`` with their ``box_categories``; instance ``k + 1`` belongs to box ``k``.
    """
    height, width = sem.shape
    present = sorted({0, *np.unique(sem).tolist()} - {IGNORE})
    if len(present) < 2:
        return sem.copy(), inst.copy(), [dict(s) for s in segments], 0
    lut = np.full(256, IGNORE, np.uint8)
    lut[present] = np.arange(len(present), dtype=np.uint8)
    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1)).astype(np.float32)
    refined = refine_labels(lut[sem], rgb, num_classes=len(present), confidence=float(config.confidence),
                            config=config.dense, keep_ignore=config.keep_ignore)
    back = np.full(256, IGNORE, np.uint8)
    back[: len(present)] = present
    out_sem = back[refined]
    things = {int(c) for c in box_categories}
    # instances of thing pixels: the smallest box of the class containing the pixel (painted
    # last); only boxes that have a segment, so an id never collides with a stuff segment's
    labelled_boxes = {int(s["id"]) - 1 for s in segments if int(s["category_id"]) in things}
    out_inst = np.zeros((height, width), np.uint16)
    covered = np.zeros((height, width), bool)
    order = sorted((k for k in range(len(boxes)) if k in labelled_boxes),
                   key=lambda k: (-float(boxes[k][2]) * float(boxes[k][3]), k))
    for k in order:
        x0, y0, x1, y1 = _box_window(boxes[k], height, width)
        if x1 <= x0 or y1 <= y0:
            continue
        window = out_sem[y0:y1, x0:x1] == int(box_categories[k])
        out_inst[y0:y1, x0:x1][window] = k + 1
        covered[y0:y1, x0:x1] |= window
    outside = np.isin(out_sem, list(things)) & ~covered
    out_sem[outside] = IGNORE
    # stuff segments keep their ids, on every pixel of their class
    new_segments: list[dict[str, Any]] = []
    for seg in segments:
        seg = dict(seg)
        if int(seg["category_id"]) not in things:
            out_inst[out_sem == int(seg["category_id"])] = int(seg["id"])
        mask = out_inst == int(seg["id"])
        area = int(mask.sum())
        if area == 0:
            continue
        seg["bbox"], seg["area"] = tight_bbox(mask), area
        new_segments.append(seg)
    return out_sem, out_inst, new_segments, int((out_sem != sem).sum())


class RefineCRF:
    """Operator: the dense CRF over the previous stage's labels (module docstring)."""

    resources = {"num_cpus": 1.0, "num_gpus": 0.0, "batch_size": 4}
    writes = (*CRF_LABEL_COLUMNS, "crf_changed")

    def __init__(self, *, config: SegmentationCRFConfig, label_columns: tuple[str, str, str] = LABEL_COLUMNS) -> None:
        self.config = config
        self.label_columns = tuple(label_columns)
        self.reads = ("key", "image_jpeg", *self.label_columns, "image_boxes", "box_categories")

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = ItemStatus.of(batch)
        sem_col, inst_col, seg_col = self.label_columns

        def one(i: int) -> dict[str, Any]:
            key = str(items.keys[i])
            try:
                image = decode_image_bytes(batch["image_jpeg"][i])
                boxes = list(batch["image_boxes"][i] if batch["image_boxes"][i] is not None else [])
                cats = list(batch["box_categories"][i] if batch["box_categories"][i] is not None else [])
                sem, inst, segs, changed = refine_image_labels(
                    image, decode_png(batch[sem_col][i]), decode_png(batch[inst_col][i]), batch[seg_col][i] or [],
                    boxes, cats, self.config)
            except ValueError as exc:
                raise ValueError(f"image {key!r}: {exc}") from None
            return {"crf_sem_png": encode_png(sem), "crf_inst_png": encode_png(inst), "crf_segments": segs,
                    "crf_changed": changed}

        return items.map_pending(batch, self.writes, one, errors=(ValueError, cv2.error))
