"""Things from boxes: GrabCut, each second cue and their agreement, scored on a synthetic corpus.

``evaluate_box_cues(corpus_dir)`` reads a corpus written by
:func:`labelmill.operators.synth.segmentation.write_segmentation_corpus` (``annotations.json``,
``images/*.jpg``, ``gt/*_sem.png``), runs every cue of
:mod:`labelmill.operators.segmentation.box_labels` once per box on the same work crop, and
scores each method on the pixels of the union of the image's boxes (GT stuff -> background 0,
pixels outside every box are not scored):

* ``miou``: ``SemanticAccumulator`` mIoU over labelled pixels (classes: background + things);
* ``labelled`` / ``ignore``: the fraction of box pixels a method labels / leaves at 255;
* ``boxes_per_s``: boxes over the seconds spent in that method's cues (crop included; an
  agreement costs both of its cues).

A single cue labels its foreground with the box class and never ignores; an agreement is
:func:`combine_cues` + :func:`paint_boxes`, exactly as :func:`box_labels` does it.

``agreement+crf (c=<confidence>, keep_ignore=<bool>)``: the ``grabcut+<second_cue>`` map
refined by :func:`~labelmill.models.dense_crf.refine_labels` over the image (BGR 0..255,
``crf_config``), one row per confidence in ``crf_confidences`` and keep_ignore True / False.
The CRF runs over the classes of the image's boxes plus background (relabelled 0..k-1, so its
cost does not grow with the corpus's class count), and its result obeys the boxes: a pixel
outside every box stays background 0, and a pixel may only take background or the class of a
box covering it (otherwise it keeps its agreement label). ``boxes_per_s`` of a CRF row counts
both cues plus the CRF.

Corpora: the synthetic one, and a real photo written by
:func:`~labelmill.pipelines.experiments.real_photo.write_voc_npz_corpus` (same layout).
``python -m labelmill.pipelines.experiments.box_cues_eval CORPUS [--limit N] [--crf-confidence C ...]``
prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

import cv2
import numpy as np

from labelmill.models.dense_crf import DenseCRFConfig, refine_labels
from labelmill.models.segmentation_metrics import SemanticAccumulator
from labelmill.operators.segmentation.box_labels import (
    CUES,
    FOREGROUND,
    BoxLabelConfig,
    crop_mask_to_box,
    box_labels_batch,
    combine_cues,
    crop_for_box,
    paint_boxes,
    work_crop,
)

__all__ = ["evaluate_box_cues", "markdown_table", "main"]

SINGLE = ("grabcut", "colour_ratio", "superpixel")
AGREEMENTS = (("grabcut", "colour_ratio"), ("grabcut", "superpixel"))
CRF_CONFIDENCES = (0.6, 0.8)


def crf_method_name(confidence: float, keep_ignore: bool) -> str:
    return f"agreement+crf (c={confidence:g}, keep_ignore={keep_ignore})"


def refine_within_boxes(sem: np.ndarray, image_bgr: np.ndarray, windows, classes, *, confidence: float,
                        keep_ignore: bool, config: DenseCRFConfig) -> np.ndarray:  # fmt: skip
    """The dense CRF on one painted map under the box rules of the module docstring."""
    h, w = sem.shape
    present = sorted({0, *(int(c) for c in classes)})
    to_local = np.full(256, 255, np.uint8)
    to_local[present] = np.arange(len(present), dtype=np.uint8)
    image = np.ascontiguousarray(image_bgr.transpose(2, 0, 1), dtype=np.float32)
    local = refine_labels(to_local[sem], image, num_classes=len(present), confidence=confidence, config=config,
                          keep_ignore=keep_ignore)  # fmt: skip
    out = np.where(local == 255, 255, np.asarray(present, np.uint8)[np.minimum(local, len(present) - 1)]).astype(np.uint8)
    allowed = out == 255
    allowed |= out == 0
    in_box = np.zeros((h, w), bool)
    for (x0, y0, x1, y1), cls in zip(windows, classes):
        allowed[y0:y1, x0:x1] |= out[y0:y1, x0:x1] == int(cls)
        in_box[y0:y1, x0:x1] = True
    out = np.where(allowed, out, sem)
    out[~in_box] = 0
    return out


def _read_corpus(corpus_dir: str, limit: int | None):
    with open(os.path.join(corpus_dir, "annotations.json")) as f:
        doc = json.load(f)
    things = {c["id"] for c in doc["categories"] if c.get("isthing")}
    by_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        if ann.get("isthing"):
            by_image.setdefault(ann["image_id"], []).append(ann)
    images = sorted(doc["images"], key=lambda r: r["id"])
    if limit is not None:
        images = images[:limit]
    out = []
    for rec in images:
        image = cv2.imread(os.path.join(corpus_dir, "images", rec["file_name"]), cv2.IMREAD_COLOR)
        sem = cv2.imread(os.path.join(corpus_dir, rec["sem_file"]), cv2.IMREAD_UNCHANGED)
        if image is None or sem is None:
            raise FileNotFoundError(f"cannot read image or sem mask of {rec['file_name']} in {corpus_dir}")
        anns = by_image.get(rec["id"], [])
        out.append((image, [a["bbox"] for a in anns], [a["category_id"] for a in anns], sem))
    return out, max(things) + 1


def evaluate_box_cues(corpus_dir: str, *, limit: int | None = None, config: BoxLabelConfig = BoxLabelConfig(),
                      workers: int = 2, crf_confidences: tuple[float, ...] = CRF_CONFIDENCES,
                      crf_config: DenseCRFConfig = DenseCRFConfig()) -> dict[str, Any]:  # fmt: skip
    """Scores per method (module docstring): ``{"methods": {name: {miou, labelled, ignore, boxes_per_s,
    iou}}, "images", "boxes", "box_pixels", "pipeline": {workers, boxes_per_s, seconds}, "config"}``."""
    data, num_classes = _read_corpus(corpus_dir, limit)
    crf_rows = [(c, k) for c in crf_confidences for k in (True, False)]
    methods = list(SINGLE) + [f"{a}+{b}" for a, b in AGREEMENTS] + [crf_method_name(c, k) for c, k in crf_rows]
    crf_seconds = {crf_method_name(c, k): 0.0 for c, k in crf_rows}
    acc = {m: SemanticAccumulator(num_classes=num_classes) for m in methods}
    seconds = {c: 0.0 for c in SINGLE}
    crop_seconds = 0.0
    n_boxes = box_pixels = 0
    for image, boxes, classes, gt_sem in data:
        h, w = gt_sem.shape
        in_box = np.zeros((h, w), bool)
        windows, masks = [], {c: [] for c in SINGLE}
        for box in boxes:
            t0 = time.perf_counter()
            geom = crop_for_box(box, h, w, max_side=config.max_side, margin=config.margin, margin_px=config.margin_px)
            crop = work_crop(image, geom)
            crop_seconds += time.perf_counter() - t0
            for c in SINGLE:
                t0 = time.perf_counter()
                masks[c].append(crop_mask_to_box(CUES[c](crop, geom.rect, config), geom))
                seconds[c] += time.perf_counter() - t0
            x0, y0, x1, y1 = geom.box
            in_box[y0:y1, x0:x1] = True
            windows.append(geom.box)
            n_boxes += 1
        gt = np.where(gt_sem < num_classes, gt_sem, 0).astype(np.uint8)  # stuff -> background
        gt[~in_box] = 255
        box_pixels += int(in_box.sum())
        for c in SINGLE:
            states = [np.where(m, FOREGROUND, 0).astype(np.uint8) for m in masks[c]]
            acc[c].add(paint_boxes((h, w), windows, states, classes)[0], gt)
        for a, b in AGREEMENTS:
            states = [combine_cues(ma, mb) for ma, mb in zip(masks[a], masks[b])]
            painted = paint_boxes((h, w), windows, states, classes, defer_agreement=config.defer_agreement)[0]
            acc[f"{a}+{b}"].add(painted, gt)
            if b == config.second_cue:
                agreement = painted
        for c, k in crf_rows:
            t0 = time.perf_counter()
            refined = refine_within_boxes(agreement, image, windows, classes, confidence=c, keep_ignore=k,
                                          config=crf_config)  # fmt: skip
            crf_seconds[crf_method_name(c, k)] += time.perf_counter() - t0
            acc[crf_method_name(c, k)].add(refined, gt)
    crop_share = crop_seconds / max(n_boxes, 1)
    out: dict[str, Any] = {"methods": {}, "images": len(data), "boxes": n_boxes, "box_pixels": box_pixels}
    for m in methods:
        r = acc[m].result()
        cues = ["grabcut", config.second_cue] if m in crf_seconds else m.split("+")
        spent = sum(seconds[c] for c in cues) + crop_share * n_boxes + crf_seconds.get(m, 0.0)
        out["methods"][m] = {
            "miou": r["miou"],
            "labelled": r["labelled_fraction"],
            "ignore": 1.0 - r["labelled_fraction"],
            "boxes_per_s": n_boxes / spent if spent else float("nan"),
            "iou": [None if np.isnan(v) else float(v) for v in r["iou"]],
        }
    # the production path end to end (both cues + combine + paint), threaded over images
    samples = [(im, b, c) for im, b, c, _ in data]
    for cue in ("colour_ratio", "superpixel"):
        cfg = dataclasses.replace(config, second_cue=cue)
        t0 = time.perf_counter()
        box_labels_batch(samples, config=cfg, workers=workers)
        wall = time.perf_counter() - t0
        out.setdefault("pipeline", {})[cue] = {"workers": workers, "seconds": wall, "boxes_per_s": n_boxes / wall}
    out["config"] = dataclasses.asdict(config)
    out["crf_config"] = dataclasses.asdict(crf_config)
    out["opencv"] = cv2.__version__
    return out


def markdown_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['images']} images, {result['boxes']} boxes, {result['box_pixels']} box pixels; OpenCV {result['opencv']}",
        "",
        "| method | mIoU (labelled px) | labelled | ignore | boxes/s (1 thread) |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["methods"].items():
        lines.append(f"| {name} | {m['miou']:.3f} | {m['labelled']:.3f} | {m['ignore']:.3f} | {m['boxes_per_s']:.1f} |")
    lines.append("")
    for cue, p in result.get("pipeline", {}).items():
        lines.append(f"box_labels (grabcut+{cue}) end to end: {p['boxes_per_s']:.1f} boxes/s on {p['workers']} thread(s)  ")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crf-confidence", type=float, nargs="*", default=list(CRF_CONFIDENCES),
                        help="one agreement+crf row pair per value (none: no CRF rows)")
    args = parser.parse_args(argv)
    result = evaluate_box_cues(args.corpus, limit=args.limit, workers=args.workers,
                               crf_confidences=tuple(args.crf_confidence))  # fmt: skip
    sys.stdout.write(markdown_table(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
