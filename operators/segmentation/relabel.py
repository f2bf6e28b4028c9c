"""Relabelling: new pseudo-labels of one image from a segmentation network's confident predictions.

:func:`relabel_image` is the pure kernel; :class:`RelabelImages` applies a stored
:class:`~labelmill.models.segnet.TrainedSegNet` to each work item and hands the labels to the
samples stage (:func:`relabel_samples`). Rules (docs/segmentation.md, "Relabelling"):

1. a pixel takes the class of the largest probability when that probability is
   ``>= threshold``, else ignore (255);
2. a pixel predicted as a **thing class** lying outside every box *of that class* becomes
   ignore (boxes are complete for things: a thing of class c exists only inside a box of class
   c). A box whose class is unknown (``None``) counts as a box of every thing class. Background
   and stuff classes (every class that is not a thing class) are allowed anywhere, inside boxes
   too;
3. instances: boxes are painted from the largest window to the smallest (ties: earlier box
   first; the smaller box ends on top, as in
   :func:`~labelmill.operators.segmentation.box_labels.paint_boxes`), each taking the pixels of
   its window whose new class is the box's class; instance id = box index + 1. A box of unknown
   class takes the most frequent thing class among the pixels of its window. Thing pixels that no
   box took (possible only with unknown-class boxes) become ignore, so every thing pixel belongs
   to exactly one instance;
4. one segment per box with pixels: ``id``, ``annotation_id``, ``category_id``, ``category``,
   ``bbox`` (tight), ``area``, ``source`` ``"relabel"``, ``score`` (mean top probability over
   its pixels);
5. one segment per stuff class present (the COCO panoptic convention, as the stuff stage
   writes them): ``id`` = number of boxes + 1, + 2, ... in class-id order, on every pixel of
   the class in ``inst``; ``annotation_id`` null. Background (0) gets no segment (instance 0).

Statistics, over the union of the box windows (as :mod:`~labelmill.operators.segmentation.things`
computes them): ``box_pixels``, ``ignore_fraction``, ``labelled_fraction`` (thing pixels), and
``boxes_labelled`` (boxes with a segment), ``boxes_ignored`` (boxes left without pixels),
``boxes_skipped`` (boxes wholly outside the image); ``image_ignore_fraction`` over the whole
image, ``stuff_pixels`` (pixels of stuff classes).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from labelmill.infra import storage
from labelmill.infra.formats.items import ItemStatus
from labelmill.operators.segmentation.box_labels import IGNORE, box_window
from labelmill.operators.segmentation.images import decode_image_bytes
from labelmill.operators.segmentation.samples import BuildSegmentationSamples, SegmentationFilterConfig
from labelmill.operators.segmentation.things import encode_png

__all__ = ["relabel_image", "RelabelImages", "relabel_samples", "SOURCE_RELABEL", "read_member"]

SOURCE_RELABEL = "relabel"


def _tight_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def relabel_image(
    probs: np.ndarray,
    classes: Sequence[int],
    boxes: Sequence[Sequence[float]],
    box_categories: Sequence[int | None],
    *,
    thing_classes: Sequence[int],
    threshold: float,
    box_ids: Sequence[int] | None = None,
    names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """New labels of one image (module docstring).

    ``probs``: float ``(K, H, W)``, channel k the probability of class ``classes[k]``;
    ``boxes``: ``[x, y, w, h]`` in the image's pixels with ``box_categories`` (``None``:
    unknown) and ``box_ids`` (annotation ids or ``None``, default 1..n); ``names``: class id -> name.
    Returns ``sem`` uint8 ``(H, W)``, ``inst`` uint16 ``(H, W)``, ``segments``, the statistics
    and ``box_stats`` (per box ``status`` ``ok`` / ``ignored`` / ``skipped`` and ``reason``).
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != len(classes) or probs.shape[0] < 1:
        raise ValueError(f"probs must be (K, H, W) with K = {len(classes)} classes, got {probs.shape}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in 0..1, got {threshold!r}")
    if len(box_categories) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(box_categories)} box categories")
    box_ids = ([None if b is None else int(b) for b in box_ids] if box_ids is not None
               else list(range(1, len(boxes) + 1)))
    if len(box_ids) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(box_ids)} box ids")
    if len(boxes) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 boxes in one image")
    lut = np.asarray([int(c) for c in classes], np.int64)
    if (lut < 0).any() or (lut > 254).any():
        raise ValueError(f"classes must be ids in 0..254, got {list(classes)}")
    things = {int(c) for c in thing_classes}
    if any(not 1 <= c <= 254 for c in things):
        raise ValueError(f"thing classes must be ids in 1..254, got {sorted(things)}")
    names = dict(names or {})
    _, height, width = probs.shape

    confidence = probs.max(axis=0)
    sem = lut[probs.argmax(axis=0)].astype(np.uint8)
    sem[~(confidence >= threshold)] = IGNORE  # NaN probabilities are not confident

    windows: list[tuple[int, int, int, int] | None] = []
    box_stats: list[dict[str, Any]] = []
    for i, box in enumerate(boxes):
        try:
            windows.append(box_window(box, height, width))
            box_stats.append({"status": "ok", "reason": None})
        except ValueError as exc:
            windows.append(None)
            box_stats.append({"status": "skipped", "reason": str(exc)})
        category = box_categories[i]
        if category is not None and not 1 <= int(category) <= 254:
            raise ValueError(f"box {i} has class {category}; box classes must be in 1..254")

    # rule 2: a thing class outside every box of that class (or of unknown class) -> ignore
    unknown = np.zeros((height, width), bool)
    allowed: dict[int, np.ndarray] = {}
    for window, category in zip(windows, box_categories):
        if window is None:
            continue
        x0, y0, x1, y1 = window
        target = unknown if category is None else allowed.setdefault(int(category), np.zeros((height, width), bool))
        target[y0:y1, x0:x1] = True
    for cls in things:
        region = allowed.get(cls, np.zeros((height, width), bool)) | unknown
        sem[(sem == cls) & ~region] = IGNORE

    # rule 3: instances, largest window first
    inst = np.zeros((height, width), np.uint16)
    resolved: list[int | None] = [None if c is None else int(c) for c in box_categories]
    thing_lut = np.zeros(256, bool)
    thing_lut[list(things)] = True
    areas = [0 if w is None else (w[2] - w[0]) * (w[3] - w[1]) for w in windows]
    for i in sorted(range(len(boxes)), key=lambda k: (-areas[k], k)):
        if windows[i] is None:
            continue
        x0, y0, x1, y1 = windows[i]
        s, n = sem[y0:y1, x0:x1], inst[y0:y1, x0:x1]
        if resolved[i] is None:
            values = s[thing_lut[s]]
            if not values.size:
                continue
            counts = np.bincount(values, minlength=256)
            resolved[i] = int(counts.argmax())
        n[s == resolved[i]] = i + 1
    stray = thing_lut[sem] & (inst == 0)
    sem[stray] = IGNORE

    segments = []
    for i in range(len(boxes)):
        mask = inst == i + 1
        area = int(mask.sum())
        if area == 0:
            if box_stats[i]["status"] == "ok":
                box_stats[i] = {"status": "ignored", "reason": "no confident pixel of the box's class in it"}
            continue
        cls = int(resolved[i])
        segments.append({
            "id": i + 1, "annotation_id": box_ids[i], "category_id": cls, "category": names.get(cls, str(cls)),
            "bbox": _tight_bbox(mask), "area": area, "source": SOURCE_RELABEL,
            "score": round(float(confidence[mask].mean()), 6),
        })
    boxes_labelled = len(segments)
    # rule 5: one segment per stuff class present, ids after the boxes' (COCO panoptic convention)
    present = np.bincount(sem.ravel(), minlength=256)
    stuff = [c for c in range(1, IGNORE) if present[c] and c not in things]
    for k, cls in enumerate(stuff):
        mask = sem == cls
        segment_id = len(boxes) + 1 + k
        inst[mask] = segment_id
        segments.append({
            "id": segment_id, "annotation_id": None, "category_id": cls, "category": names.get(cls, str(cls)),
            "bbox": _tight_bbox(mask), "area": int(present[cls]), "source": SOURCE_RELABEL,
            "score": round(float(confidence[mask].mean()), 6),
        })

    union = np.zeros((height, width), bool)
    for window in windows:
        if window is not None:
            x0, y0, x1, y1 = window
            union[y0:y1, x0:x1] = True
    box_pixels = int(union.sum())
    ignore_in_boxes = int((sem[union] == IGNORE).sum())
    thing_in_boxes = int(thing_lut[sem[union]].sum())
    counts = Counter(entry["status"] for entry in box_stats)
    return {
        "sem": sem, "inst": inst, "segments": segments, "box_stats": box_stats,
        "boxes_labelled": boxes_labelled, "boxes_ignored": counts["ignored"], "boxes_skipped": counts["skipped"],
        "box_pixels": box_pixels,
        "ignore_fraction": ignore_in_boxes / box_pixels if box_pixels else None,
        "labelled_fraction": thing_in_boxes / box_pixels if box_pixels else None,
        "image_ignore_fraction": float((sem == IGNORE).mean()),
        "stuff_pixels": int(sum(int(present[c]) for c in stuff)),
    }


def read_member(url: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of the file at ``url`` (any fsspec URL: one ranged read)."""
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        handle.seek(int(offset))
        data = handle.read(int(size))
    if len(data) != int(size):
        raise ValueError(f"{url}: {int(size)} bytes at offset {int(offset)} asked for, {len(data)} read")
    return data


_STAT_COLUMNS = ("boxes_labelled", "boxes_ignored", "boxes_skipped", "box_pixels", "ignore_fraction",
                 "labelled_fraction", "image_ignore_fraction", "stuff_pixels")


class RelabelImages:
    """Operator: per image, labels from the stored network's confident predictions (module docstring).

    Reads the work item: ``uri`` (the source shard), ``jpg_offset`` / ``jpg_size`` (the sample's
    ``jpg`` member in it), ``boxes`` (``[x, y, w, h]`` in the stored image's pixels),
    ``box_categories`` (``None``: unknown), ``box_ids``, ``scale``. Writes ``image_jpeg`` (the
    source jpg, unchanged), ``image_width``, ``image_height``, ``scale_x``, ``sem_png``,
    ``inst_png``, ``segments``, ``box_stats`` and the statistics.

    ``model_url`` names the weight file, ``model_sha256`` its content: the fingerprint (hence
    every result key of this stage) holds the hash, not the URL, and :meth:`setup` refuses a file
    whose bytes do not have it. ``device``: where the net runs (``auto``: cuda when present); on
    the CPU every image is its own forward pass, so its labels do not depend on the batching.
    """

    resources = {"num_cpus": 1.0, "num_gpus": 0.0, "batch_size": 8}
    reads = ("key", "uri", "jpg_offset", "jpg_size", "boxes", "box_categories", "box_ids", "scale")
    writes = ("image_jpeg", "image_width", "image_height", "scale_x", "sem_png", "inst_png", "segments", "box_stats",
              *_STAT_COLUMNS)

    def __init__(self, *, model_url: str, model_sha256: str, threshold: float, thing_classes: Sequence[int],
                 names: Mapping[int, str] | None = None, device: str = "auto") -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"RelabelImages: threshold must be in 0..1, got {threshold!r}")
        self.model_url = model_url
        self.model_sha256 = model_sha256
        self.threshold = float(threshold)
        self.thing_classes = tuple(sorted(int(c) for c in thing_classes))
        self.names = {int(k): str(v) for k, v in (names or {}).items()}
        self.device = device
        self._net = None

    def fingerprint(self) -> dict[str, Any]:
        """What decides the labels: the model's content, the threshold, the thing classes, the names."""
        return {"model_sha256": self.model_sha256, "threshold": self.threshold,
                "thing_classes": list(self.thing_classes), "names": {str(k): v for k, v in sorted(self.names.items())}}

    def setup(self) -> None:
        from labelmill.models.model_files import read_model_bytes
        from labelmill.models.segnet import TrainedSegNet, resolve_device

        data = read_model_bytes(self.model_url, what="relabel model file")
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.model_sha256:
            raise ValueError(f"relabel model file {self.model_url} has sha256 {digest}, expected {self.model_sha256}")
        self._net = TrainedSegNet.from_bytes(data, where=f"relabel model file {self.model_url}")
        self._device = resolve_device(self.device)

    def _image(self, key: str, row: Mapping[str, Any]) -> tuple[bytes, np.ndarray]:
        if not row.get("uri") or row.get("jpg_offset") is None or row.get("jpg_size") is None:
            raise ValueError(f"image {key!r}: no jpg member reference (uri, jpg_offset, jpg_size)")
        try:
            data = read_member(str(row["uri"]), int(row["jpg_offset"]), int(row["jpg_size"]))
        except (OSError, ValueError) as exc:
            raise ValueError(f"image {key!r}: cannot read its jpg: {exc}") from None
        try:
            image = decode_image_bytes(data)
        except ValueError as exc:
            raise ValueError(f"image {key!r}: {exc}") from None
        return data, image

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self._net is None:
            self.setup()
        items = ItemStatus.of(batch)
        rows = {i: {name: batch[name][i] for name in self.reads if name in batch} for i in items.pending()}
        decoded: dict[int, tuple[bytes, np.ndarray] | ValueError] = {}
        for i, row in rows.items():
            try:
                decoded[i] = self._image(str(items.keys[i]), row)
            except ValueError as exc:
                decoded[i] = exc
        ok = [i for i, d in decoded.items() if not isinstance(d, ValueError)]
        rgb = [cv2.cvtColor(decoded[i][1], cv2.COLOR_BGR2RGB) for i in ok]
        # one image per forward pass on the CPU: a label must not depend on which images share
        # its batch (the engines batch differently and the shards must be byte-identical)
        per_call = 1 if self._device.type == "cpu" else max(1, len(rgb))
        probs = dict(zip(ok, self._net.predict(rgb, device=self._device, batch_size=per_call))) if ok else {}

        def one(i: int) -> dict[str, Any]:
            key = str(items.keys[i])
            if isinstance(decoded[i], ValueError):
                raise decoded[i]
            row, (jpeg, image) = rows[i], decoded[i]
            boxes = list(row.get("boxes") if row.get("boxes") is not None else [])
            categories = list(row.get("box_categories") if row.get("box_categories") is not None else [])
            ids = row.get("box_ids")
            try:
                out = relabel_image(probs[i], self._net.classes, boxes, categories, thing_classes=self.thing_classes,
                                    threshold=self.threshold, box_ids=None if ids is None else list(ids),
                                    names=self.names)
            except ValueError as exc:
                raise ValueError(f"image {key!r}: {exc}") from None
            out["sem_png"] = encode_png(out.pop("sem"))
            out["inst_png"] = encode_png(out.pop("inst"))
            out.update(image_jpeg=jpeg, image_width=int(image.shape[1]), image_height=int(image.shape[0]),
                       scale_x=float(row.get("scale") or 1.0))
            return out

        return items.map_pending(batch, self.writes, one, errors=(ValueError, cv2.error))


def relabel_samples(*, filter: SegmentationFilterConfig | None = None, round: int, model_sha256: str,
                    threshold: float) -> BuildSegmentationSamples:
    """The samples operator of a relabel round: the segmentation samples stage (same members, same
    quality filter ``filter``) reading the round's ``boxes`` (already in stored pixels) into json
    ``boxes``, which the next round reads, plus a json ``relabel`` entry (``round``, ``model``: the
    weight file's sha256, ``threshold``)."""
    return BuildSegmentationSamples(filter=filter, boxes_column="boxes", extra_json={
        "relabel": {"round": int(round), "model": str(model_sha256), "threshold": float(threshold)}})
