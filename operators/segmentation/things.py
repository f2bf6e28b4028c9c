"""Things from boxes, per image: :func:`~labelmill.operators.segmentation.box_labels.box_labels` on
the decoded image, the masks as PNG bytes and one segment per labelled box.

:class:`BoxThings` reads ``image_jpeg`` (:class:`~labelmill.operators.segmentation.images.DecodeImage`),
``image_boxes`` (the boxes in stored-image pixels), ``box_categories`` and ``box_ids`` (the
work item) and, when the pipeline adds it, ``box_category_names`` (one name per box). Per
pending item it writes

* ``sem_png``: uint8 PNG, the box's category id where GrabCut and the second cue agree, 255
  where they disagree (or a box is below ``min_box_side``), 0 elsewhere;
* ``inst_png``: uint16 PNG, box index + 1 on the box's labelled pixels, 0 elsewhere;
* ``segments``: one dict per box with labelled pixels, in box order: ``id`` (its value in
  ``inst_png``), ``annotation_id``, ``category_id``, ``category`` (name), ``bbox`` (tight
  ``[x, y, w, h]`` of its pixels), ``area`` (pixels), ``source`` ``"grabcut"`` and ``score``
  (agreed / (agreed + disputed) fraction of the box: 1.0 when both cues agree everywhere);
* ``box_stats``: per box ``status`` (``ok``/``ignored``/``skipped``), ``reason``, ``agreed``,
  ``disputed`` fractions;
* scalars ``boxes_labelled``, ``boxes_ignored``, ``boxes_skipped``, ``box_pixels`` (pixels of
  the union of the usable boxes' windows), ``ignore_fraction`` and ``labelled_fraction``
  (ignore / thing-labelled pixels of that union; None when it is empty).

An image without boxes gets all-background masks, no segments and null fractions (the samples
stage filters it). A decode or labelling error fails the item with its reason.

Hooks for the next stages (stuff from tags with Grad-CAM, dense CRF): they read ``sem_png`` /
``inst_png`` / ``segments`` and write refined columns of the same meaning; the samples stage
reads the names in :data:`LABEL_COLUMNS`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import cv2
import numpy as np

from labelmill.infra.formats.items import ItemStatus
from labelmill.operators.segmentation.box_labels import IGNORE, BoxLabelConfig, box_labels
from labelmill.operators.segmentation.images import decode_image_bytes


__all__ = ["BoxThings", "LABEL_COLUMNS", "encode_png", "decode_png", "image_things", "tight_bbox", "SOURCE_GRABCUT"]

SOURCE_GRABCUT = "grabcut"
# What a labelling stage hands to the samples stage.
LABEL_COLUMNS = ("sem_png", "inst_png", "segments")
_STAT_COLUMNS = ("boxes_labelled", "boxes_ignored", "boxes_skipped", "box_pixels", "ignore_fraction",
                 "labelled_fraction")


def encode_png(array: np.ndarray) -> bytes:
    """Deterministic single-channel PNG bytes of a uint8 or uint16 ``(H, W)`` array."""
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png needs a (H, W) uint8/uint16 array, got {array.shape} {array.dtype}")
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ValueError(f"OpenCV could not PNG-encode an array of shape {array.shape}")
    return buffer.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """The ``(H, W)`` array of PNG bytes as written (uint8 or uint16)."""
    array = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("not a decodable PNG")
    return array


def tight_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def image_things(image_bgr: np.ndarray, boxes: Sequence[Sequence[float]], categories: Sequence[int],
                 box_ids: Sequence[int] | None = None, names: Sequence[str] | None = None, *,
                 config: BoxLabelConfig = BoxLabelConfig()) -> dict[str, Any]:
    """The output columns of :class:`BoxThings` for one image (module docstring), masks as arrays
    ``sem`` / ``inst`` (the operator encodes them)."""
    boxes = [list(map(float, b)) for b in boxes]
    categories = [int(c) for c in categories]
    if len(boxes) != len(categories):
        raise ValueError(f"{len(boxes)} boxes but {len(categories)} box categories")
    box_ids = [int(b) for b in box_ids] if box_ids is not None else list(range(1, len(boxes) + 1))
    names = [str(n) for n in names] if names is not None else [str(c) for c in categories]
    if len(box_ids) != len(boxes) or len(names) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(box_ids)} box ids and {len(names)} category names")
    height, width = image_bgr.shape[:2]
    if boxes:
        sem, inst, stats = box_labels(image_bgr, boxes, categories, config=config)
    else:
        sem, inst, stats = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint16), []
    union = np.zeros((height, width), bool)
    for entry in stats:
        if entry["status"] != "skipped":
            x0, y0, x1, y1 = entry["window"]
            union[y0:y1, x0:x1] = True
    box_pixels = int(union.sum())
    ignore = int((sem[union] == IGNORE).sum())
    labelled = int(((sem[union] != IGNORE) & (sem[union] != 0)).sum())
    segments, box_stats = [], []
    for i, entry in enumerate(stats):
        agreed, disputed = float(entry.get("agreed", 0.0)), float(entry.get("disputed", 0.0))
        box_stats.append({"status": entry["status"], "reason": entry["reason"], "agreed": agreed,
                          "disputed": disputed})
        mask = inst == i + 1
        area = int(mask.sum())
        if entry["status"] != "ok" or area == 0:
            continue
        segments.append({
            "id": i + 1, "annotation_id": box_ids[i], "category_id": categories[i], "category": names[i],
            "bbox": tight_bbox(mask), "area": area, "source": SOURCE_GRABCUT,
            "score": round(agreed / (agreed + disputed), 6) if agreed + disputed > 0 else 0.0,
        })
    counts = {status: sum(1 for e in stats if e["status"] == status) for status in ("ignored", "skipped")}
    return {
        "sem": sem, "inst": inst, "segments": segments, "box_stats": box_stats,
        "boxes_labelled": len(segments), "boxes_ignored": counts["ignored"], "boxes_skipped": counts["skipped"],
        "box_pixels": box_pixels,
        "ignore_fraction": ignore / box_pixels if box_pixels else None,
        "labelled_fraction": labelled / box_pixels if box_pixels else None,
    }


class BoxThings:
    """Operator: per image, pseudo-labels of its thing boxes (module docstring)."""

    resources = {"num_cpus": 1.0, "num_gpus": 0.0, "batch_size": 4}
    reads = ("key", "image_jpeg", "image_boxes", "box_categories", "box_ids", "box_category_names")
    writes = ("sem_png", "inst_png", "segments", "box_stats", *_STAT_COLUMNS)

    def __init__(self, *, things: BoxLabelConfig | None = None) -> None:
        self.config = things or BoxLabelConfig()

    def setup(self) -> None:
        """Nothing to load."""

    def _one(self, key: str, row: dict[str, Any]) -> dict[str, Any]:
        if row.get("image_jpeg") is None:
            raise ValueError(f"image {key!r}: no decoded image (column image_jpeg is empty)")
        image = decode_image_bytes(row["image_jpeg"])
        boxes = list(row.get("image_boxes") if row.get("image_boxes") is not None else [])
        categories = list(row.get("box_categories") if row.get("box_categories") is not None else [])
        ids = row.get("box_ids")
        names = row.get("box_category_names")
        try:
            out = image_things(image, boxes, categories, None if ids is None else list(ids),
                               None if names is None else list(names), config=self.config)
        except ValueError as exc:
            raise ValueError(f"image {key!r}: {exc}") from None
        out["sem_png"] = encode_png(out.pop("sem"))
        out["inst_png"] = encode_png(out.pop("inst"))
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = ItemStatus.of(batch)

        def one(i: int) -> dict[str, Any]:
            return self._one(str(items.keys[i]), {name: batch[name][i] for name in self.reads if name in batch})

        return items.map_pending(batch, self.writes, one, errors=(ValueError, cv2.error))
