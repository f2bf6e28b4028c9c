"""Segmentation metrics on hand-made masks; every expected number is worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labelmill.models.segmentation_metrics import (
    PanopticAccumulator,
    SemanticAccumulator,
    coco_gt_masks,
    confusion_matrix,
    panoptic_stats,
)

I = 255  # ignore

GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, I, I],
        [2, 2, 2, 2],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, I, 1, 1],
        [2, 0, 1, 2],
        [I, 2, 2, 2],
    ],
    dtype=np.uint8,
)


# --------------------------------------------------------------------------- semantic


def test_confusion_matrix_excludes_gt_ignore_and_counts_unlabelled_per_gt_class():
    conf, unlabelled = confusion_matrix(PRED, GT, 3)
    # GT 0: pred 0 at (0,0),(1,0); pred 1 at (0,1); pred-ignore at (1,1)
    # GT 1: pred 1 at all 4 pixels
    # GT 2: pred 2 at (2,0),(3,1),(3,2),(3,3); pred 0 at (2,1); pred-ignore at (3,0)
    # GT-ignore pixels (2,2),(2,3) are nowhere, although the prediction labels them 1 and 2.
    np.testing.assert_array_equal(conf, [[2, 1, 0], [0, 4, 0], [1, 0, 4]])
    np.testing.assert_array_equal(unlabelled, [1, 0, 1])


def test_miou_is_over_labelled_pixels_and_labelled_fraction():
    acc = SemanticAccumulator(num_classes=3)
    acc.add(PRED, GT)
    r = acc.result()
    # IoU_0 = 2 / (3 + 3 - 2) = 1/2   (had the pred-ignore pixel counted as a miss: 2/5)
    # IoU_1 = 4 / (4 + 5 - 4) = 4/5   (had GT-ignore pixels counted: 4/6)
    # IoU_2 = 4 / (5 + 4 - 4) = 4/5
    np.testing.assert_allclose(r["iou"], [0.5, 0.8, 0.8])
    assert r["miou"] == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert r["pixel_accuracy"] == pytest.approx(10 / 12)
    assert r["labelled_fraction"] == pytest.approx(12 / 14)
    np.testing.assert_allclose(r["labelled_fraction_per_class"], [3 / 4, 1.0, 5 / 6])
    assert (r["labelled_pixels"], r["gt_pixels"]) == (12, 14)


def test_miou_averages_only_classes_present_in_gt_or_prediction():
    acc = SemanticAccumulator(num_classes=5)
    acc.add(PRED, GT)
    r = acc.result()
    # classes 3 and 4 occur nowhere: NaN and out of the mean
    assert math.isnan(r["iou"][3]) and math.isnan(r["iou"][4])
    assert r["miou"] == pytest.approx(0.7)
    # a class only predicted (on a GT-labelled pixel) is present with IoU 0
    pred = PRED.copy()
    pred[3, 3] = 3
    acc2 = SemanticAccumulator(num_classes=5)
    acc2.add(pred, GT)
    r2 = acc2.result()
    # IoU_2 becomes 3 / (5 + 3 - 3) = 3/5, IoU_3 = 0 / 1
    np.testing.assert_allclose(r2["iou"][:4], [0.5, 0.8, 0.6, 0.0])
    assert r2["miou"] == pytest.approx((0.5 + 0.8 + 0.6 + 0.0) / 4)


def test_class_whose_gt_is_all_unlabelled_is_absent_from_miou():
    gt = np.array([[0, 0], [1, 1]], dtype=np.uint8)
    pred = np.array([[0, 0], [I, I]], dtype=np.uint8)
    acc = SemanticAccumulator(num_classes=2)
    acc.add(pred, gt)
    r = acc.result()
    assert r["miou"] == 1.0 and math.isnan(r["iou"][1])
    assert r["labelled_fraction"] == 0.5
    np.testing.assert_allclose(r["labelled_fraction_per_class"], [1.0, 0.0])


def test_accumulator_sums_over_images():
    acc = SemanticAccumulator(num_classes=3)
    acc.add(PRED, GT)
    gt2 = np.full((2, 2), 2, np.uint8)
    pred2 = np.array([[2, 2], [1, I]], np.uint8)
    acc.add(pred2, gt2)
    r = acc.result()
    np.testing.assert_array_equal(r["confusion"], [[2, 1, 0], [0, 4, 0], [1, 1, 6]])
    np.testing.assert_array_equal(r["unlabelled"], [1, 0, 2])
    # IoU_1 = 4 / (4 + 6 - 4) = 2/3; IoU_2 = 6 / (8 + 6 - 6) = 3/4
    np.testing.assert_allclose(r["iou"], [0.5, 2 / 3, 0.75])
    assert r["labelled_fraction"] == pytest.approx(15 / 18)
    assert r["images"] == 2


def test_empty_accumulator_is_nan_and_bad_ids_raise():
    r = SemanticAccumulator(num_classes=2).result()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_accuracy"]) and math.isnan(r["labelled_fraction"])
    with pytest.raises(ValueError, match="prediction has class id 7"):
        confusion_matrix(np.full((2, 2), 7, np.uint8), np.zeros((2, 2), np.uint8), 3)
    with pytest.raises(ValueError, match="ground truth has class id 9"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.full((2, 2), 9, np.uint8), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3), np.uint8), np.zeros((2, 2), np.uint8), 3)


# --------------------------------------------------------------------------- panoptic


def _box(shape, r0, r1, c0, c1):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def _one_tp_one_fp_one_fn():
    gt = np.zeros((6, 6), np.uint16)
    gt[0:2, 0:3] = 1  # g1: 6 px
    gt[4:6, 4:6] = 2  # g2: 4 px, nothing predicted there -> FN
    pred = np.zeros((6, 6), np.uint16)
    pred[0:2, 0:3] = 7  # p7 = g1 minus (1,2) plus (2,0): |p|=6, |p&g|=5, union=7
    pred[1, 2] = 0
    pred[2, 0] = 7
    pred[3:5, 0:2] = 8  # p8: no GT under it -> FP
    return pred, {7: 1, 8: 1}, gt, {1: 1, 2: 1}


def test_pq_sq_rq_with_one_tp_one_fp_one_fn():
    acc = PanopticAccumulator()
    acc.add(*_one_tp_one_fp_one_fn())
    r = acc.result()
    c = r["per_class"][1]
    assert (c["tp"], c["fp"], c["fn"]) == (1, 1, 1)
    sq, rq = 5 / 7, 1 / (1 + 0.5 + 0.5)
    assert c["sq"] == pytest.approx(sq)
    assert c["rq"] == pytest.approx(0.5)
    assert c["pq"] == pytest.approx(5 / 14)
    assert c["pq"] == pytest.approx(c["sq"] * c["rq"])
    assert r["all"] == pytest.approx({"pq": 5 / 14, "sq": sq, "rq": rq, "n": 1})
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    # a second identical image doubles the counts and keeps the scores
    acc.add(*_one_tp_one_fp_one_fn())
    r2 = acc.result()
    assert (r2["tp"], r2["fp"], r2["fn"]) == (2, 2, 2)
    assert r2["all"]["pq"] == pytest.approx(5 / 14)


def test_iou_exactly_half_is_not_a_match():
    gt = np.zeros((4, 4), np.uint16)
    gt[0:2, 0:2] = 1  # 4 px
    pred = np.zeros((4, 4), np.uint16)
    pred[0:2, 0:4] = 1  # 8 px, |p&g| = 4, union 8: IoU = 0.5 exactly
    s = panoptic_stats(pred, {1: 3}, gt, {1: 3})
    assert s[3] == {"tp": 0, "fp": 1, "fn": 1, "iou_sum": 0.0}
    pred[1, 3] = 0  # 7 px, union 7: IoU = 4/7 > 0.5
    s = panoptic_stats(pred, {1: 3}, gt, {1: 3})
    assert (s[3]["tp"], s[3]["fp"], s[3]["fn"]) == (1, 0, 0)
    assert s[3]["iou_sum"] == pytest.approx(4 / 7)


def test_void_rule_for_iou_and_false_positives():
    shape = (6, 8)
    void = _box(shape, 0, 6, 6, 8) | _box(shape, 5, 6, 0, 2)
    gt = np.zeros(shape, np.uint16)
    gt[0:2, 2:6] = 1  # g1: 8 px, none on void
    pred = np.zeros(shape, np.uint16)
    pred[0:2, 2:6] = 1  # p1 = g1 plus 8 void px (rows 0-3, cols 6-7)
    pred[0:4, 6:8] = 1
    pred[4:6, 5:8] = 2  # p2: 6 px, 4 on void (> half): unmatched but not an FP
    pred[4:6, 0:2] = 3  # p3: 4 px, 2 on void (exactly half): an FP
    classes = {1: 1, 2: 1, 3: 1}
    s = panoptic_stats(pred, classes, gt, {1: 1}, ignore_mask=void)
    # p1: |p|=16, |p&void|=8, |p&g|=8 -> IoU = 8 / (16 + 8 - 8 - 8) = 1 (without the rule: 8/16)
    assert s[1] == {"tp": 1, "fp": 1, "fn": 0, "iou_sum": 1.0}
    # without a void mask the same prediction is no match and every segment counts
    s = panoptic_stats(pred, classes, gt, {1: 1})
    assert s[1] == {"tp": 0, "fp": 3, "fn": 1, "iou_sum": 0.0}
    acc = PanopticAccumulator()
    acc.add(pred, classes, gt, {1: 1}, ignore_mask=void)
    assert acc.result()["per_class"][1] == pytest.approx(
        {"pq": 2 / 3, "sq": 1.0, "rq": 2 / 3, "tp": 1, "fp": 1, "fn": 0, "iou_sum": 1.0}
    )


def test_void_pixels_are_removed_from_gt_segments():
    gt = np.zeros((4, 4), np.uint16)
    gt[0:4, 0:2] = 1  # 8 px, 4 of them under the ignore mask
    void = _box((4, 4), 2, 4, 0, 4)
    pred = np.zeros((4, 4), np.uint16)
    pred[0:2, 0:2] = 1  # = the non-void part of g: IoU 1 (without the mask: 4/8, no match)
    s = panoptic_stats(pred, {1: 1}, gt, {1: 1}, ignore_mask=void)
    assert s[1] == {"tp": 1, "fp": 0, "fn": 0, "iou_sum": 1.0}
    # a GT segment entirely under void is no segment at all (no FN)
    gt[0:2, 2:4] = 2
    void2 = void | _box((4, 4), 0, 2, 2, 4)
    s = panoptic_stats(pred, {1: 1}, gt, {1: 1, 2: 1}, ignore_mask=void2)
    assert s[1] == {"tp": 1, "fp": 0, "fn": 0, "iou_sum": 1.0}


def test_matching_is_per_class_and_things_stuff_split():
    gt = np.zeros((4, 4), np.uint16)
    gt[0:2, :] = 1  # thing, class 1
    gt[2:4, :] = 2  # stuff, class 5
    pred = gt.copy()
    # same pixels but the thing is predicted as class 2: FP of class 2, FN of class 1
    pred_classes = {1: 2, 2: 5}
    acc = PanopticAccumulator(thing_classes=[1, 2])
    acc.add(pred, pred_classes, gt, {1: 1, 2: 5})
    r = acc.result()
    assert (r["per_class"][1]["fn"], r["per_class"][1]["tp"]) == (1, 0)
    assert (r["per_class"][2]["fp"], r["per_class"][2]["tp"]) == (1, 0)
    assert r["per_class"][5]["pq"] == 1.0
    assert r["things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}
    assert r["stuff"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}
    assert r["all"]["pq"] == pytest.approx(1 / 3)
    assert "things" not in PanopticAccumulator().result()


def test_panoptic_rejects_ids_without_a_class():
    inst = np.ones((2, 2), np.uint16)
    with pytest.raises(ValueError, match="pred instance ids \\[1\\]"):
        panoptic_stats(inst, {}, inst, {1: 1})
    with pytest.raises(ValueError, match="gt instance ids \\[1\\]"):
        panoptic_stats(inst, {1: 1}, inst, {})


# --------------------------------------------------------------------------- COCO GT

SQUARE = _box((6, 6), 1, 4, 1, 4)  # numpy-drawn: rows 1..3, cols 1..3


def test_polygon_square_matches_numpy_square_exactly():
    # pycocotools' convention: polygon vertices are pixel corners, so the square with
    # corners (1,1)-(4,4) covers pixels [1:4, 1:4] exactly
    ann = {"id": 10, "category_id": 18, "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]], "iscrowd": 0}
    sem, inst, classes = coco_gt_masks([ann], 6, 6, {18: 3})
    assert sem.dtype == np.uint8 and inst.dtype == np.uint16
    np.testing.assert_array_equal(sem, np.where(SQUARE, 3, 0))
    np.testing.assert_array_equal(inst, SQUARE.astype(np.uint16))
    assert classes == {1: 3}


def test_rle_square_uncompressed_and_compressed():
    # column-major runs of SQUARE: 6+1 zeros, 3 ones, 2+1 zeros, 3 ones, 3 zeros, 3 ones, 2+6+6 zeros
    rle = {"size": [6, 6], "counts": [7, 3, 3, 3, 3, 3, 14]}
    sem, inst, _ = coco_gt_masks([{"category_id": 1, "segmentation": rle}], 6, 6, {1: 4})
    np.testing.assert_array_equal(sem, np.where(SQUARE, 4, 0))
    from pycocotools import mask as mask_utils

    compressed = mask_utils.encode(np.asfortranarray(SQUARE.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode("ascii")  # as in COCO json
    _, inst2, _ = coco_gt_masks([{"category_id": 1, "segmentation": compressed}], 6, 6, {1: 4})
    np.testing.assert_array_equal(inst2, SQUARE.astype(np.uint16))
    with pytest.raises(ValueError, match="RLE size"):
        coco_gt_masks([{"category_id": 1, "segmentation": rle}], 6, 7, {1: 4})


def _poly(r0, r1, c0, c1):
    return [[c0, r0, c1, r0, c1, r1, c0, r1]]


@pytest.mark.parametrize("small_first", [False, True])
def test_overlap_goes_to_the_smaller_annotation(small_first):
    big = {"category_id": 1, "segmentation": _poly(0, 5, 0, 5)}  # 25 px
    small = {"category_id": 2, "segmentation": _poly(1, 3, 1, 3)}  # 4 px inside it
    anns = [small, big] if small_first else [big, small]
    sem, inst, classes = coco_gt_masks(anns, 6, 6, {1: 1, 2: 2})
    small_mask = _box((6, 6), 1, 3, 1, 3)
    big_mask = _box((6, 6), 0, 5, 0, 5)
    np.testing.assert_array_equal(sem, np.where(small_mask, 2, np.where(big_mask, 1, 0)))
    small_id, big_id = (1, 2) if small_first else (2, 1)
    assert classes == {small_id: 2, big_id: 1}
    assert (inst[small_mask] == small_id).all() and (inst[big_mask & ~small_mask] == big_id).all()


def test_equal_areas_go_to_the_first_listed_and_hidden_instances_are_dropped():
    a = {"category_id": 1, "segmentation": _poly(0, 2, 0, 2)}
    b = {"category_id": 2, "segmentation": _poly(1, 3, 1, 3)}  # same area, overlaps a at (1,1)
    sem, inst, classes = coco_gt_masks([a, b], 4, 4, {1: 1, 2: 2})
    assert (sem[1, 1], inst[1, 1]) == (1, 1)
    assert classes == {1: 1, 2: 2}
    # an annotation wholly covered by an equal-area one listed before it keeps no pixel: dropped
    sem, inst, classes = coco_gt_masks([a, dict(a, category_id=2)], 4, 4, {1: 1, 2: 2})
    assert classes == {1: 1} and set(np.unique(inst)) == {0, 1}


def test_crowd_and_unknown_categories():
    crowd = {"category_id": 1, "iscrowd": 1, "segmentation": _poly(0, 4, 0, 4)}
    person = {"category_id": 1, "segmentation": _poly(0, 2, 0, 2)}
    sem, inst, classes = coco_gt_masks([crowd, person], 6, 6, {1: 7})
    crowd_only = _box((6, 6), 0, 4, 0, 4) & ~_box((6, 6), 0, 2, 0, 2)
    np.testing.assert_array_equal(sem, np.where(crowd_only, 255, np.where(_box((6, 6), 0, 2, 0, 2), 7, 0)))
    assert classes == {1: 7} and (inst[crowd_only] == 0).all()
    other = {"id": 99, "category_id": 42, "segmentation": _poly(4, 6, 4, 6)}
    with pytest.raises(ValueError, match="category_id 42"):
        coco_gt_masks([other], 6, 6, {1: 7})
    sem, _, classes = coco_gt_masks([other], 6, 6, {1: 7}, unknown="skip")
    assert (sem == 0).all() and classes == {}
    sem, _, _ = coco_gt_masks([other], 6, 6, {1: 7}, unknown="ignore")
    assert (sem[4:, 4:] == 255).all() and (sem[:4] == 0).all()
    with pytest.raises(ValueError, match="class ids"):
        coco_gt_masks([], 6, 6, {1: 255})
