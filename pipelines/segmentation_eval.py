"""`labelmill eval segmentation`: a segmentation dataset version scored against COCO ground truth.

Reads every sample of the version (``sem.png``, ``inst.png``, ``json``; tar shards streamed
member by member), finds its GT image by the json's ``image_id`` in a COCO instances document,
rasterises the GT with :func:`~labelmill.models.segmentation_metrics.coco_gt_masks` and reports
(definitions: docs/segmentation.md, "Metrics" and "Evaluation"):

* ``miou`` and per-class ``iou`` over labelled pixels (:class:`SemanticAccumulator`: GT ignore
  excluded, pixels the labels mark 255 kept out of the IoU and counted in the labelled
  fraction), ``pixel_accuracy``, ``labelled_fraction``;
* ``pq``, ``sq``, ``rq`` (:class:`PanopticAccumulator`, matches at IoU > 0.5, void = GT ignore,
  i.e. crowd regions) with the things / stuff split;
* ``box_labelled_fraction``: pixels inside GT thing boxes that the labels do not mark 255, over
  all pixels inside GT thing boxes (summed over images);
* ``images`` (evaluated), ``missing`` (ids of annotated GT images without a sample),
  ``skipped`` (counts by reason), ``samples_without_gt`` (keys).

Classes are the COCO category ids themselves (``sem.png`` stores them), so ``num_classes`` is the
largest category id + 1 and class 0 is background. Stuff categories (those the version's
``config.yaml`` names in ``input.stuff``, or, with ``input.things`` set, every category not in
it) are rasterised only when the version labelled stuff (``stuff.enabled`` in its config) and
only the classes the sample's ``tags`` name (the pipeline labels stuff from tags); otherwise
their pixels are background, as a things-only version writes them.

Sizes: a sample is scored at its stored size. When that differs from the GT image size (the
pipeline shrank the image to ``image.max_side``), the GT is rasterised at the GT size and the
GT maps and box mask are resized to the sample size with nearest-neighbour interpolation.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from typing import Any, Iterable, Iterator, Mapping

import cv2
import numpy as np
import yaml

from labelmill.infra import storage
from labelmill.infra.dataset_version import CONFIG_FILE, iter_shard_samples, resolve_version
from labelmill.infra.formats.coco import CocoAnnotation, CocoDocument, parse_coco_instances
from labelmill.models.segmentation_metrics import PanopticAccumulator, SemanticAccumulator, coco_gt_masks

__all__ = ["evaluate_segmentation", "SegmentationScorer", "iter_samples", "register_segmentation_eval"]

IGNORE = 255


# --------------------------------------------------------------------------- reading samples


def _decode_png(data: bytes, name: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 2:
        raise ValueError(f"{name}: not a single-channel PNG")
    return image


def _sample(key: str, fields: Mapping[str, bytes]) -> dict[str, Any]:
    missing = [f for f in ("sem.png", "inst.png", "json") if f not in fields]
    if missing:
        raise ValueError(f"sample {key!r} lacks {', '.join(missing)}")
    doc = json.loads(fields["json"])
    sem = _decode_png(fields["sem.png"], f"sample {key!r} sem.png")
    inst = _decode_png(fields["inst.png"], f"sample {key!r} inst.png")
    if sem.shape != inst.shape or sem.shape != (int(doc["height"]), int(doc["width"])):
        raise ValueError(f"sample {key!r}: sem {sem.shape} / inst {inst.shape} / json size "
                         f"{(doc['height'], doc['width'])} disagree")
    return {"key": key, "json": doc, "sem": sem, "inst": inst}


def iter_samples(version_url: str) -> Iterator[dict[str, Any]]:
    """Every sample of a version: ``{"key", "json", "sem" uint8, "inst" uint16}``.

    Shards are streamed (``tarfile`` mode ``r|``); a sample's members are consecutive in a shard
    (WebDataset layout), a key met again after another key is a ValueError.
    """
    for _, key, members in iter_shard_samples(version_url):
        yield _sample(key, {extension: data for extension, (_, data) in members.items()})


# --------------------------------------------------------------------------- scoring


class SegmentationScorer:
    """Accumulates the evaluation's metrics over images given as arrays.

    ``num_classes``: semantic classes (ids ``0 .. num_classes-1``, 255 ignore);
    ``thing_classes``: class ids that are things (the PQ things / stuff split).
    """

    def __init__(self, *, num_classes: int, thing_classes: Iterable[int] | None = None) -> None:
        self.semantic = SemanticAccumulator(num_classes=num_classes, ignore=IGNORE)
        self.panoptic = PanopticAccumulator(thing_classes=thing_classes)
        self.box_pixels = 0
        self.box_labelled = 0

    def add(
        self,
        pred_sem: np.ndarray,
        pred_inst: np.ndarray,
        pred_classes: Mapping[int, int],
        gt_sem: np.ndarray,
        gt_inst: np.ndarray,
        gt_classes: Mapping[int, int],
        box_mask: np.ndarray,
    ) -> None:
        """One image: labels (``pred_*``), GT maps and the union of the GT boxes (bool ``(H, W)``)."""
        box_mask = np.asarray(box_mask, dtype=bool)
        if box_mask.shape != np.shape(pred_sem):
            raise ValueError(f"box mask shape {box_mask.shape} != label shape {np.shape(pred_sem)}")
        self.semantic.add(pred_sem, gt_sem)
        self.panoptic.add(pred_inst, pred_classes, gt_inst, gt_classes, ignore_mask=np.asarray(gt_sem) == IGNORE)
        self.box_pixels += int(box_mask.sum())
        self.box_labelled += int((box_mask & (np.asarray(pred_sem) != IGNORE)).sum())

    def result(self, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        """JSON-ready scores; NaN becomes None. ``names`` labels the per-class entries."""
        names = names or {}
        sem = self.semantic.result()
        pan = self.panoptic.result()

        def label(c: int) -> str:
            return names.get(c, "background" if c == 0 else str(c))

        def avg(key: str) -> dict[str, Any] | None:
            if key not in pan:
                return None
            return {k: _num(pan[key][k]) for k in ("pq", "sq", "rq")} | {"classes": pan[key]["n"]}

        return {
            "miou": _num(sem["miou"]),
            "pixel_accuracy": _num(sem["pixel_accuracy"]),
            "labelled_fraction": _num(sem["labelled_fraction"]),
            "box_labelled_fraction": self.box_labelled / self.box_pixels if self.box_pixels else None,
            "box_pixels": self.box_pixels,
            "iou": {label(c): _num(sem["iou"][c]) for c in range(len(sem["iou"])) if sem["present"][c]},
            "labelled_fraction_per_class": {
                label(c): _num(v) for c, v in enumerate(sem["labelled_fraction_per_class"]) if not math.isnan(v)
            },
            "pq": _num(pan["all"]["pq"]),
            "sq": _num(pan["all"]["sq"]),
            "rq": _num(pan["all"]["rq"]),
            "panoptic": {"all": avg("all"), "things": avg("things"), "stuff": avg("stuff"),
                         "tp": pan["tp"], "fp": pan["fp"], "fn": pan["fn"],
                         "per_class": {label(c): {k: _num(v) for k, v in s.items()}
                                       for c, s in pan["per_class"].items()}},
        }


def _num(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def box_mask(boxes: Iterable[Iterable[float]], height: int, width: int) -> np.ndarray:
    """Union of ``[x, y, w, h]`` boxes as a bool mask (pixels ``floor(y):ceil(y+h), floor(x):ceil(x+w)``)."""
    mask = np.zeros((height, width), dtype=bool)
    for x, y, w, h in boxes:
        x0, y0 = max(0, int(math.floor(x))), max(0, int(math.floor(y)))
        x1, y1 = min(width, int(math.ceil(x + w))), min(height, int(math.ceil(y + h)))
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = True
    return mask


# --------------------------------------------------------------------------- ground truth


def _version_config(version_url: str) -> dict[str, Any]:
    url = storage.join(version_url, CONFIG_FILE)
    doc = yaml.safe_load(storage.read_text(url)) if storage.exists(url) else None
    return doc if isinstance(doc, dict) else {}


def _labels_stuff(version_url: str) -> bool:
    """Whether the version ran the stuff stage (its config's ``stuff.enabled``; absent: older versions, no)."""
    section = _version_config(version_url).get("stuff")
    return isinstance(section, dict) and section.get("enabled") is True


def _stuff_ids(version_url: str, doc: CocoDocument) -> set[int]:
    """Category ids the version did not label as things (its config's ``input.things``/``stuff``)."""
    section = _version_config(version_url).get("input") or {}
    things, stuff = section.get("things"), set(section.get("stuff") or ())
    by_name = {c.name: c.id for c in doc.categories}
    if things is not None:
        return {c.id for c in doc.categories if c.name not in set(things)}
    with_box = {a.category_id for a in doc.annotations if a.bbox is not None}
    return {c.id for c in doc.categories if c.id not in with_box} | {by_name[n] for n in stuff if n in by_name}


def _gt_size(image: Any, sample_doc: Mapping[str, Any], images: str | None, gt_url: str) -> tuple[int, int]:
    """(height, width) of the GT image: the annotation's, else the image file's, else size / scale."""
    if image.width is not None and image.height is not None:
        return int(image.height), int(image.width)
    for root in ([images] if images else []) + [gt_url.rsplit("/", 1)[0]]:
        url = storage.safe_join(root, image.file_name)
        if storage.exists(url):
            decoded = cv2.imdecode(np.frombuffer(storage.read_bytes(url), np.uint8), cv2.IMREAD_UNCHANGED)
            if decoded is not None:
                return int(decoded.shape[0]), int(decoded.shape[1])
    scale = float(sample_doc.get("scale") or 1.0)
    return round(int(sample_doc["height"]) / scale), round(int(sample_doc["width"]) / scale)


def _ann_dict(a: CocoAnnotation) -> dict[str, Any]:
    return {"id": a.id, "category_id": a.category_id, "iscrowd": int(a.iscrowd), "segmentation": a.segmentation}


def gt_for_sample(
    annotations: list[CocoAnnotation], gt_size: tuple[int, int], size: tuple[int, int], num_classes: int,
    box_classes: Iterable[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, int], np.ndarray]:
    """GT ``(sem, inst, classes, box mask)`` at ``size`` for the given (thing + crowd + tagged
    stuff) annotations; the box mask is the union of the boxes of ``box_classes`` (default: all)."""
    gh, gw = gt_size
    categories = {c: c for c in range(num_classes)}
    sem, inst, classes = coco_gt_masks([_ann_dict(a) for a in annotations], gh, gw, categories)
    keep = None if box_classes is None else set(box_classes)
    boxes = box_mask([a.bbox for a in annotations if a.bbox is not None and not a.iscrowd
                      and (keep is None or a.category_id in keep)], gh, gw)
    if (gh, gw) != size:
        h, w = size
        sem = cv2.resize(sem, (w, h), interpolation=cv2.INTER_NEAREST)
        inst = cv2.resize(inst, (w, h), interpolation=cv2.INTER_NEAREST)
        boxes = cv2.resize(boxes.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        present = set(np.unique(inst).tolist())
        classes = {i: c for i, c in classes.items() if i in present}
    return sem, inst, classes, boxes


# --------------------------------------------------------------------------- evaluation


def evaluate_segmentation(
    dataset_url: str,
    gt_url: str,
    *,
    thing_classes: Iterable[int] | None = None,
    images: str | None = None,
    stuff_labels: bool | None = None,
) -> dict[str, Any]:
    """Scores of ``dataset_url`` (an output root or a version directory) against the COCO ``gt_url``.

    ``thing_classes``: category ids that are things (default: every category the version
    labelled as things, from its ``config.yaml`` as the corpus reader decides); annotations of
    other categories are not rasterised (background), except the stuff classes an image is
    tagged with when the version labelled stuff (``stuff_labels``; default: its ``config.yaml``
    has ``stuff.enabled: true``). ``images``: folder of the GT images, read only for an image
    whose size the GT does not give.
    """
    version = resolve_version(dataset_url)
    doc = parse_coco_instances(storage.read_bytes(gt_url))
    if any(not 0 < c.id < IGNORE for c in doc.categories):
        raise ValueError(f"{gt_url}: category ids must be in 1..254 to be compared with sem.png")
    num_classes = max((c.id for c in doc.categories), default=0) + 1
    stuff = _stuff_ids(version.url, doc)
    if thing_classes is None:
        things = {c.id for c in doc.categories} - stuff
    else:
        things = {int(c) for c in thing_classes}
        stuff = {c.id for c in doc.categories} - things
    # stuff GT counts only where the version labelled stuff, and only for the image's tagged classes
    with_stuff = _labels_stuff(version.url) if stuff_labels is None else bool(stuff_labels)
    by_name = {c.name: c.id for c in doc.categories}
    names = {c.id: c.name for c in doc.categories}
    by_image: dict[int, list[CocoAnnotation]] = {}
    for a in doc.annotations:
        by_image.setdefault(a.image_id, []).append(a)
    gt_images = {im.id: im for im in doc.images}

    scorer = SegmentationScorer(num_classes=num_classes, thing_classes=things)
    evaluated: set[int] = set()
    sampled: set[int] = set()
    skipped: Counter = Counter()
    without_gt: list[str] = []
    resized = 0
    for sample in iter_samples(version.url):
        meta = sample["json"]
        image_id = meta.get("image_id")
        if image_id not in gt_images:
            without_gt.append(sample["key"])
            continue
        if image_id in sampled:
            raise ValueError(f"two samples of {version.url} have image_id {image_id} (second: {sample['key']!r})")
        sampled.add(image_id)
        anns = by_image.get(image_id, [])
        if not anns:
            skipped["no_annotations"] += 1
            continue
        tagged = {by_name[t] for t in meta.get("tags") or () if t in by_name} & stuff if with_stuff else set()
        used = [a for a in anns if a.iscrowd or a.category_id in things or a.category_id in tagged]
        if any(a.segmentation is None for a in used):
            skipped["no_segmentation"] += 1
            continue
        size = sample["sem"].shape
        gt_size = _gt_size(gt_images[image_id], meta, images, gt_url)
        resized += gt_size != size
        gt_sem, gt_inst, gt_classes, boxes = gt_for_sample(used, gt_size, size, num_classes, things)
        pred_classes = {int(s["id"]): int(s["category_id"]) for s in meta.get("segments", [])}
        scorer.add(sample["sem"], sample["inst"], pred_classes, gt_sem, gt_inst, gt_classes, boxes)
        evaluated.add(image_id)
    # GT images with annotations and no sample; GT images without annotations never count as missing
    missing = sorted(i for i in gt_images if i not in sampled and by_image.get(i))
    report: dict[str, Any] = {
        "dataset": version.url,
        "gt": gt_url,
        "images": len(evaluated),
        "resized": int(resized),
        "missing": missing,
        "skipped": dict(skipped),  # samples not scored, by reason
        "gt_images": len(gt_images),
        "samples_without_gt": without_gt,
        "thing_classes": sorted(things),
        "stuff_labelled": with_stuff,
    }
    report.update(scorer.result(names))
    return report


# --------------------------------------------------------------------------- CLI


def register_segmentation_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "segmentation",
        help="mIoU / per-class IoU / PQ, SQ, RQ / labelled box fraction of a segmentation dataset against COCO GT",
        description="Read every sample of a segmentation dataset version and score its sem.png / inst.png "
        "against the masks of a COCO instances document (docs/segmentation.md, 'Evaluation').",
    )
    parser.add_argument("--dataset", required=True, help="dataset root (uses LATEST) or a version directory")
    parser.add_argument("--gt", required=True, help="COCO instances JSON with segmentation masks")
    parser.add_argument("--images", default=None, help="GT images folder (read only for images without width/height)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_run)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_report(report: Mapping[str, Any]) -> str:
    lines = [
        f"{report['dataset']}: {report['images']} images evaluated, {len(report['missing'])} missing, "
        f"skipped {report['skipped'] or 'none'}",
        f"  mIoU {_fmt(report['miou'])}  pixel acc {_fmt(report['pixel_accuracy'])}  "
        f"labelled {_fmt(report['labelled_fraction'])}  labelled in boxes {_fmt(report['box_labelled_fraction'])}",
    ]
    pan = report["panoptic"]
    for split in ("all", "things", "stuff"):
        row = pan.get(split)
        if row and row["classes"]:
            lines.append(f"  PQ {_fmt(row['pq'])}  SQ {_fmt(row['sq'])}  RQ {_fmt(row['rq'])}  "
                         f"({split}, {row['classes']} classes)")
    lines.append(f"  {'class':<20} {'IoU':>6} {'PQ':>6} {'SQ':>6} {'RQ':>6}")
    for name in sorted(set(report["iou"]) | set(pan["per_class"]), key=str):
        pc = pan["per_class"].get(name, {})
        lines.append(f"  {name:<20} {_fmt(report['iou'].get(name)):>6} {_fmt(pc.get('pq')):>6} "
                     f"{_fmt(pc.get('sq')):>6} {_fmt(pc.get('rq')):>6}")
    return "\n".join(lines) + "\n"


def _run(args: argparse.Namespace) -> int:
    report = evaluate_segmentation(args.dataset, args.gt, images=args.images)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(format_report(report))
    return 0
