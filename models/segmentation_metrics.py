"""Segmentation metrics (numpy): confusion matrix / IoU, panoptic quality, COCO GT rasterisation.

Definitions follow seed 001 (IoU per class averaged; PQ = SQ x RQ with matches at IoU > 0.5);
the void rule and the uniqueness of IoU > 0.5 matches are those of the panoptic-segmentation
metric (Kirillov et al., CVPR 2019), which the seed's PQ formula comes from.

Semantic maps are ``uint8 (H, W)`` with class ids ``0 .. num_classes-1`` and ``ignore``
(255 by default). Instance maps are integer ``(H, W)`` with ``0`` meaning "no segment".

Semantic (``confusion_matrix`` / ``SemanticAccumulator``)
    * pixels whose GT is ``ignore`` are excluded from everything;
    * of the remaining ("GT-labelled") pixels, those the prediction labels ``ignore`` are
      "unlabelled": they are counted per GT class in ``unlabelled`` and do not enter the
      confusion matrix, the IoU or the pixel accuracy. Every IoU here is therefore measured
      over *labelled* pixels (GT not ignore and prediction not ignore), i.e. over the pixels a
      pseudo-label claims; how many it claims is the ``labelled_fraction``.
    * ``IoU_c = C[c,c] / (sum_k C[c,k] + sum_k C[k,c] - C[c,c])`` with ``C[gt, pred]``;
      a class is *present* when that union is > 0 (it occurs in the GT or in the prediction on
      labelled pixels); absent classes get IoU NaN. ``mIoU`` is the mean IoU over present
      classes (NaN if none). A class whose GT pixels are all unlabelled by the prediction is
      therefore absent from the mIoU and shows up only in the labelled fraction.
    * pixel accuracy = ``trace(C) / sum(C)`` (labelled pixels);
      labelled fraction = ``sum(C) / (sum(C) + sum(unlabelled))`` (GT-labelled pixels).

Panoptic (``panoptic_stats`` / ``PanopticAccumulator``)
    * void = ``ignore_mask`` (nothing else: GT id 0 is "no segment", so a prediction there is
      penalised; to get COCO-panoptic behaviour where unannotated GT is void, pass
      ``ignore_mask=(gt_inst == 0)``). Void pixels are removed from every GT segment.
    * ``IoU(p, g) = |p & g| / (|p| + |g| - |p & g| - |p & void|)``: predicted pixels on void
      do not count against the match.
    * per class, a pair (p, g) of the same class matches iff ``IoU > 0.5`` (strictly; compared
      in integers as ``2 |p & g| > union``, so IoU exactly 0.5 is not a match). Segments are
      disjoint, so each segment has at most one such partner and the matching is unique.
    * TP: matched pairs. FN: unmatched GT segments. FP: unmatched predicted segments, except
      those with ``|p & void| > 0.5 |p|``, which are not counted at all.
    * per class c with ``TP + FP + FN > 0``:
      ``PQ = sum_TP IoU / (TP + FP/2 + FN/2)``, ``RQ = TP / (TP + FP/2 + FN/2)``,
      ``SQ = sum_TP IoU / TP`` (0 when TP = 0), so ``PQ = SQ * RQ`` per class.
      Averages are plain means of the per-class PQ, SQ, RQ over those classes (over all, over
      ``thing_classes``, over the rest = stuff); the averaged PQ is in general not the
      product of the averaged SQ and RQ.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "confusion_matrix",
    "semantic_scores",
    "SemanticAccumulator",
    "panoptic_stats",
    "PanopticAccumulator",
    "coco_gt_masks",
]


# --------------------------------------------------------------------------- semantic


def confusion_matrix(
    pred_sem: np.ndarray, gt_sem: np.ndarray, num_classes: int, ignore: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix over labelled pixels and unlabelled counts per GT class.

    ``pred_sem, gt_sem (H, W)`` integer maps. Returns ``(conf (C, C) int64, unlabelled (C,)
    int64)``: ``conf[g, p]`` counts pixels with GT ``g`` and prediction ``p`` (neither is
    ``ignore``); ``unlabelled[g]`` counts pixels with GT ``g`` predicted ``ignore``. Pixels
    with GT ``ignore`` are excluded. Any other value outside ``0 .. C-1`` is a ValueError.
    """
    pred = np.asarray(pred_sem)
    gt = np.asarray(gt_sem)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    if not 0 < num_classes <= 65536:
        raise ValueError(f"num_classes must be in 1..65536, got {num_classes}")
    pred = pred.astype(np.int64).ravel()
    gt = gt.astype(np.int64).ravel()
    keep = gt != ignore
    gt, pred = gt[keep], pred[keep]
    for name, values, allowed_ignore in (("ground truth", gt, False), ("prediction", pred, True)):
        bad = (values < 0) | (values >= num_classes)
        if allowed_ignore:
            bad &= values != ignore
        if bad.any():
            raise ValueError(
                f"{name} has class id {int(values[bad][0])} outside 0..{num_classes - 1} "
                f"(ignore={ignore})"
            )
    unlabelled_px = pred == ignore
    unlabelled = np.bincount(gt[unlabelled_px], minlength=num_classes).astype(np.int64)
    gt, pred = gt[~unlabelled_px], pred[~unlabelled_px]
    conf = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return conf.reshape(num_classes, num_classes).astype(np.int64), unlabelled


def semantic_scores(conf: np.ndarray, unlabelled: np.ndarray) -> dict[str, Any]:
    """Scores from a confusion matrix and unlabelled counts (module docstring for the rules).

    Returns ``iou (C,)`` (NaN for absent classes), ``present (C,) bool``, ``miou``,
    ``pixel_accuracy``, ``labelled_fraction``, ``labelled_fraction_per_class (C,)`` (NaN where
    the class has no GT-labelled pixels), ``labelled_pixels``, ``gt_pixels`` and copies of
    ``confusion`` and ``unlabelled``.
    """
    conf = np.asarray(conf, dtype=np.int64)
    unlabelled = np.asarray(unlabelled, dtype=np.int64)
    tp = np.diag(conf)
    union = conf.sum(1) + conf.sum(0) - tp
    present = union > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / np.maximum(union, 1), np.nan)
        gt_per_class = conf.sum(1) + unlabelled
        lf_class = np.where(gt_per_class > 0, conf.sum(1) / np.maximum(gt_per_class, 1), np.nan)
    labelled = int(conf.sum())
    gt_total = labelled + int(unlabelled.sum())
    return {
        "iou": iou,
        "present": present,
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / labelled) if labelled else float("nan"),
        "labelled_fraction": labelled / gt_total if gt_total else float("nan"),
        "labelled_fraction_per_class": lf_class,
        "labelled_pixels": labelled,
        "gt_pixels": gt_total,
        "confusion": conf.copy(),
        "unlabelled": unlabelled.copy(),
    }


class SemanticAccumulator:
    """Sums ``confusion_matrix`` over images; ``result()`` gives ``semantic_scores``.

    Usage: ``acc = SemanticAccumulator(num_classes=3)``; ``acc.add(pred, gt)`` for each image
    (uint8 ``(H, W)`` each); ``acc.result()["miou"]``.
    """

    def __init__(self, *, num_classes: int, ignore: int = 255) -> None:
        self.num_classes = int(num_classes)
        self.ignore = int(ignore)
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.unlabelled = np.zeros(self.num_classes, dtype=np.int64)
        self.images = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        conf, unl = confusion_matrix(pred, gt, self.num_classes, self.ignore)
        self.confusion += conf
        self.unlabelled += unl
        self.images += 1

    def result(self) -> dict[str, Any]:
        out = semantic_scores(self.confusion, self.unlabelled)
        out["images"] = self.images
        return out


# --------------------------------------------------------------------------- panoptic


def _segment_table(inst: np.ndarray, classes: Mapping[int, int], name: str) -> dict[int, int]:
    ids = np.unique(inst)
    ids = ids[ids != 0]
    missing = [int(i) for i in ids if int(i) not in classes]
    if missing:
        raise ValueError(f"{name} instance ids {missing[:5]} have no entry in {name}_classes")
    return {int(i): int(classes[int(i)]) for i in ids}


def panoptic_stats(
    pred_inst: np.ndarray,
    pred_classes: Mapping[int, int],
    gt_inst: np.ndarray,
    gt_classes: Mapping[int, int],
    ignore_mask: np.ndarray | None = None,
) -> dict[int, dict[str, float]]:
    """Per-class ``{"tp", "fp", "fn", "iou_sum"}`` for one image (rules: module docstring).

    ``pred_inst, gt_inst (H, W)`` integer id maps (0 = no segment); ``*_classes`` map every
    non-zero id present to its class id; ``ignore_mask (H, W) bool`` marks void pixels.
    Only classes with at least one segment in this image appear in the result.
    """
    pred_inst = np.asarray(pred_inst).astype(np.int64)
    gt_inst = np.asarray(gt_inst).astype(np.int64)
    if pred_inst.shape != gt_inst.shape:
        raise ValueError(f"prediction shape {pred_inst.shape} != ground-truth shape {gt_inst.shape}")
    if (pred_inst < 0).any() or (gt_inst < 0).any():
        raise ValueError("instance ids must be >= 0")
    if ignore_mask is None:
        void = np.zeros(gt_inst.shape, dtype=bool)
    else:
        void = np.asarray(ignore_mask, dtype=bool)
        if void.shape != gt_inst.shape:
            raise ValueError(f"ignore_mask shape {void.shape} != ground-truth shape {gt_inst.shape}")
    gt_inst = np.where(void, 0, gt_inst)  # void pixels belong to no GT segment
    pred_cls = _segment_table(pred_inst, pred_classes, "pred")
    gt_cls = _segment_table(gt_inst, gt_classes, "gt")

    p_flat, g_flat, v_flat = pred_inst.ravel(), gt_inst.ravel(), void.ravel()
    p_area = dict(zip(*np.unique(p_flat[p_flat != 0], return_counts=True)))
    g_area = dict(zip(*np.unique(g_flat[g_flat != 0], return_counts=True)))
    p_void = dict(zip(*np.unique(p_flat[(p_flat != 0) & v_flat], return_counts=True)))
    both = (p_flat != 0) & (g_flat != 0)
    pairs, inter = np.unique(
        np.stack([p_flat[both], g_flat[both]], axis=1), axis=0, return_counts=True
    ) if both.any() else (np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64))

    stats: dict[int, dict[str, float]] = {}

    def entry(c: int) -> dict[str, float]:
        return stats.setdefault(c, {"tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0})

    matched_p: set[int] = set()
    matched_g: set[int] = set()
    for (p, g), n in zip(pairs.tolist(), inter.tolist()):
        c = pred_cls[p]
        if gt_cls[g] != c:
            continue
        union = int(p_area[p]) + int(g_area[g]) - n - int(p_void.get(p, 0))
        if 2 * n <= union:  # IoU <= 0.5: not a match
            continue
        if p in matched_p or g in matched_g:  # impossible for disjoint segments
            raise AssertionError(f"non-unique IoU > 0.5 match for pred {p} / gt {g}")
        matched_p.add(p)
        matched_g.add(g)
        e = entry(c)
        e["tp"] += 1
        e["iou_sum"] += n / union
    for g, c in gt_cls.items():
        e = entry(c)
        if g not in matched_g:
            e["fn"] += 1
    for p, c in pred_cls.items():
        e = entry(c)
        if p not in matched_p and 2 * int(p_void.get(p, 0)) <= int(p_area[p]):
            e["fp"] += 1
    return stats


def _pq_of(s: Mapping[str, float]) -> dict[str, float]:
    tp, fp, fn, iou_sum = s["tp"], s["fp"], s["fn"], s["iou_sum"]
    denom = tp + 0.5 * fp + 0.5 * fn
    return {
        "pq": iou_sum / denom,
        "sq": iou_sum / tp if tp else 0.0,
        "rq": tp / denom,
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "iou_sum": float(iou_sum),
    }


class PanopticAccumulator:
    """Sums ``panoptic_stats`` over images; ``result()`` gives PQ / SQ / RQ (module docstring).

    ``thing_classes``: class ids that are things; every other class seen is stuff. Without it
    only the ``"all"`` average is reported.
    """

    def __init__(self, *, thing_classes: Iterable[int] | None = None) -> None:
        self.thing_classes = None if thing_classes is None else frozenset(int(c) for c in thing_classes)
        self.stats: dict[int, dict[str, float]] = {}
        self.images = 0

    def add(
        self,
        pred_inst: np.ndarray,
        pred_classes: Mapping[int, int],
        gt_inst: np.ndarray,
        gt_classes: Mapping[int, int],
        ignore_mask: np.ndarray | None = None,
    ) -> None:
        for c, s in panoptic_stats(pred_inst, pred_classes, gt_inst, gt_classes, ignore_mask).items():
            acc = self.stats.setdefault(c, {"tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0})
            for k in acc:
                acc[k] += s[k]
        self.images += 1

    def result(self) -> dict[str, Any]:
        """``per_class {c: {pq, sq, rq, tp, fp, fn, iou_sum}}`` for classes with TP+FP+FN > 0,
        ``all`` (and ``things`` / ``stuff`` with ``thing_classes``) ``{pq, sq, rq, n}`` means over
        those classes (NaN when n = 0), and summed ``tp``, ``fp``, ``fn``."""
        per_class = {
            c: _pq_of(s) for c, s in sorted(self.stats.items()) if s["tp"] + s["fp"] + s["fn"] > 0
        }

        def mean(classes: Sequence[int]) -> dict[str, float]:
            rows = [per_class[c] for c in classes]
            out = {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in ("pq", "sq", "rq")}
            out["n"] = len(rows)
            return out

        out: dict[str, Any] = {"per_class": per_class, "all": mean(list(per_class))}
        if self.thing_classes is not None:
            out["things"] = mean([c for c in per_class if c in self.thing_classes])
            out["stuff"] = mean([c for c in per_class if c not in self.thing_classes])
        for k in ("tp", "fp", "fn"):
            out[k] = int(sum(r[k] for r in per_class.values()))
        out["images"] = self.images
        return out


# --------------------------------------------------------------------------- COCO GT


def _decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` (polygon list, uncompressed or compressed RLE) -> bool (H, W)."""
    if isinstance(seg, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        polys = [list(map(float, p)) for p in seg if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(s) for s in seg["size"]] != [height, width]:
            raise ValueError(f"RLE size {list(seg['size'])} != image size {[height, width]}")
        if isinstance(seg["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            counts = seg["counts"]
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"unsupported COCO segmentation of type {type(seg).__name__}")
    return mask_utils.decode(rle).astype(bool)


def coco_gt_masks(
    annotations: Sequence[Mapping[str, Any]],
    height: int,
    width: int,
    categories: Mapping[int, int],
    *,
    background: int = 0,
    ignore: int = 255,
    unknown: str = "raise",
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Rasterise one image's COCO annotations: ``(sem uint8 (H, W), inst uint16 (H, W), {id: class})``.

    ``categories`` maps COCO ``category_id`` -> contiguous class id (0..254, not ``ignore``).
    Rasterisation is pycocotools' (a polygon's corners are pixel corners: the square with
    corners (x0, y0), (x1, y1) covers pixels ``[y0:y1, x0:x1]``).

    Rules:
      * non-crowd annotations get instance ids 1, 2, ... in list order (an annotation left with
        no visible pixel is dropped from the returned mapping; its id is not reused);
      * overlaps between non-crowd annotations go to the one with the smallest rasterised area
        (small objects in front of large ones); equal areas go to the one listed first;
      * ``iscrowd`` annotations are not instances: their pixels not covered by any non-crowd
        annotation become ``ignore`` in ``sem`` (instance 0);
      * uncovered pixels are ``background`` in ``sem`` and 0 in ``inst``;
      * a ``category_id`` missing from ``categories``: ``unknown="raise"`` (ValueError),
        ``"skip"`` (as if not annotated) or ``"ignore"`` (treated like a crowd region).
    """
    if unknown not in ("raise", "skip", "ignore"):
        raise ValueError(f"unknown must be 'raise', 'skip' or 'ignore', got {unknown!r}")
    for cat, cls in categories.items():
        if not 0 <= int(cls) <= 255 or int(cls) == ignore:
            raise ValueError(f"categories[{cat}] = {cls}: class ids must be 0..255 and not ignore={ignore}")
    sem = np.full((height, width), background, dtype=np.uint8)
    inst = np.zeros((height, width), dtype=np.uint16)
    crowd = np.zeros((height, width), dtype=bool)
    things: list[tuple[int, int, int, np.ndarray]] = []  # (area, order, class, mask)
    next_id = 0
    for ann in annotations:
        cat = ann.get("category_id")
        is_crowd = bool(ann.get("iscrowd", 0))
        if cat not in categories:
            if unknown == "raise":
                raise ValueError(f"annotation {ann.get('id')} has category_id {cat} not in categories")
            if unknown == "skip":
                continue
            is_crowd = True
        m = _decode_segmentation(ann["segmentation"], height, width)
        if is_crowd:
            crowd |= m
            continue
        next_id += 1
        if next_id > np.iinfo(np.uint16).max:
            raise ValueError("more than 65535 instances in one image")
        things.append((int(m.sum()), next_id, int(categories[cat]), m))
    sem[crowd] = ignore
    classes: dict[int, int] = {}
    # paint largest first, so the smallest ends on top; among equal areas the first listed last
    for _, iid, cls, m in sorted(things, key=lambda t: (-t[0], -t[1])):
        sem[m] = cls
        inst[m] = iid
    visible = set(np.unique(inst).tolist())
    for _, iid, cls, _m in things:
        if iid in visible:
            classes[iid] = cls
    return sem, inst, classes
