"""The CRF stage: refinement toward image edges, ignore kept, instances from boxes, stuff segments."""

import cv2
import numpy as np
import pytest

from labelmill.models.dense_crf import DenseCRFConfig
from labelmill.operators.segmentation.crf_refine import RefineCRF, SegmentationCRFConfig, refine_image_labels
from labelmill.operators.segmentation.things import decode_png, encode_png

CFG = SegmentationCRFConfig(enabled=True, confidence=0.6, dense=DenseCRFConfig(theta_alpha=10.0, w1=10.0))


def _scene():
    """40x40: a red square (thing, class 1) at rows/cols 10..29 on a green field (stuff, class 4)."""
    image = np.zeros((40, 40, 3), np.uint8)
    image[:] = (0, 160, 0)
    image[10:30, 10:30] = (0, 0, 220)
    truth = np.full((40, 40), 4, np.uint8)
    truth[10:30, 10:30] = 1
    return image, truth


def _labels(truth, rng):
    """The truth with a sloppy square (2 px too big on two sides) and a few disputed pixels."""
    sem = truth.copy()
    sem[8:30, 8:30] = 1  # bleeds onto the field above and left of the square
    sem[rng.random(sem.shape) < 0.03] = 255
    inst = np.where(sem == 1, 1, np.where(sem == 4, 2, 0)).astype(np.uint16)
    segments = [
        {"id": 1, "annotation_id": 5, "category_id": 1, "category": "box", "bbox": [8, 8, 22, 22],
         "area": int((inst == 1).sum()), "source": "grabcut", "score": 0.8},
        {"id": 2, "annotation_id": None, "category_id": 4, "category": "grass", "bbox": [0, 0, 40, 40],
         "area": int((inst == 2).sum()), "source": "gradcam", "score": 0.5},
    ]
    return sem, inst, segments


def test_crf_moves_labels_to_the_edges_keeps_ignore_and_rebuilds_segments():
    image, truth = _scene()
    sem, inst, segments = _labels(truth, np.random.default_rng(0))
    out_sem, out_inst, segs, changed = refine_image_labels(image, sem, inst, segments, [[6, 6, 28, 28]], [1], CFG)
    labelled = sem != 255
    before = (sem[labelled] == truth[labelled]).mean()
    after = (out_sem[labelled] == truth[labelled]).mean()
    assert before < 0.95 and after > 0.99 and changed == int((out_sem != sem).sum()) > 0
    assert (out_sem[~labelled] == 255).all()  # keep_ignore: disputed pixels stay disputed
    assert (out_inst[out_sem == 1] == 1).all() and (out_inst[out_sem == 4] == 2).all()
    assert (out_inst[out_sem == 255] == 0).all()
    by_id = {s["id"]: s for s in segs}
    for sid in (1, 2):
        mask = out_inst == sid
        ys, xs = np.nonzero(mask)
        assert by_id[sid]["area"] == int(mask.sum())
        assert by_id[sid]["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert by_id[1]["score"] == 0.8 and by_id[2]["source"] == "gradcam"


def test_thing_pixels_outside_every_box_of_their_class_become_ignore_and_the_smaller_box_wins():
    image, truth = _scene()
    sem, inst, segments = _labels(truth, np.random.default_rng(1))
    # a box that covers only the left half of the square, and a larger one over all of it
    out_sem, out_inst, _, _ = refine_image_labels(image, sem, inst, segments, [[10, 10, 10, 20]], [1], CFG)
    square = truth == 1
    assert (out_sem[:, 20:][square[:, 20:]] == 255).all()  # class 1 outside its only box
    # two boxes of the class: box 0 (instance 1) over all of the square, box 1 (instance 2) its left half
    boxes = [[6, 6, 28, 28], [10, 10, 10, 20]]
    segments = [segments[0], dict(segments[0], id=2, annotation_id=6), dict(segments[1], id=3)]
    inst = np.where(inst == 2, 3, inst).astype(np.uint16)  # the stuff segment after both boxes
    out_sem, out_inst, segs, _ = refine_image_labels(image, sem, inst, segments, boxes, [1, 1], CFG)
    inner = out_sem[10:30, 10:20] == 1
    assert (out_inst[10:30, 10:20][inner] == 2).all()  # the smaller box on top
    assert (out_inst[10:30, 20:30][out_sem[10:30, 20:30] == 1] == 1).all()
    assert {s["id"] for s in segs} == {1, 2, 3}


def test_a_single_class_map_is_returned_unchanged():
    image, _ = _scene()
    sem = np.zeros((40, 40), np.uint8)
    sem[0, 0] = 255
    inst = np.zeros((40, 40), np.uint16)
    out_sem, out_inst, segs, changed = refine_image_labels(image, sem, inst, [], [], [], CFG)
    assert np.array_equal(out_sem, sem) and changed == 0 and segs == []


def test_operator_reads_the_previous_stage_columns_and_fails_bad_items():
    image, truth = _scene()
    sem, inst, segments = _labels(truth, np.random.default_rng(2))
    ok, jpg = cv2.imencode(".png", image)  # lossless, so the colours are exact
    batch = {"key": ["a", "b"], "status": ["pending", "pending"], "reason": [None, None],
             "image_jpeg": [jpg.tobytes(), b"broken"], "stuff_sem_png": [encode_png(sem)] * 2,
             "stuff_inst_png": [encode_png(inst)] * 2, "stuff_segments": [segments] * 2,
             "image_boxes": [[[6, 6, 28, 28]]] * 2, "box_categories": [[1]] * 2}
    op = RefineCRF(config=CFG, label_columns=("stuff_sem_png", "stuff_inst_png", "stuff_segments"))
    assert "stuff_sem_png" in op.reads and "sem_png" not in op.reads
    out = op(batch)
    assert out["status"] == ["pending", "failed"] and "'b'" in out["reason"][1]
    refined = decode_png(out["crf_sem_png"][0])
    assert out["crf_changed"][0] == int((refined != sem).sum()) > 0


def test_config_names_the_bad_key():
    with pytest.raises(ValueError, match="SegmentationCRFConfig.confidence"):
        SegmentationCRFConfig(confidence=0.2)
    with pytest.raises(ValueError, match="SegmentationCRFConfig.enabled"):
        SegmentationCRFConfig(enabled="yes")
