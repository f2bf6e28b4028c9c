"""Things from boxes: GrabCut + second cue per box, agreement rule, overlap rule, crop bound."""

from __future__ import annotations

import numpy as np
import pytest

from labelmill.operators.segmentation import box_labels as bl
from labelmill.operators.segmentation.box_labels import (
    DISPUTED,
    FOREGROUND,
    BoxLabelConfig,
    box_labels,
    box_labels_batch,
    colour_ratio_box,
    combine_cues,
    crop_for_box,
    grabcut_box,
    paint_boxes,
    superpixel_box,
)


def _disc_scene(h=96, w=128, cx=60, cy=50, r=24, seed=0):
    """Textured reddish disc on a textured green-grey background (BGR), its mask and tight box."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    img = np.empty((h, w, 3), np.float64)
    img[:] = (60, 140, 70)
    img += 25 * np.sin(xx / 2.0)[..., None]  # background stripes
    img[disc] = (40, 50, 200)
    img[disc] += 20 * ((xx[disc] // 4 + yy[disc] // 4) % 2)[:, None]  # checker on the disc
    img += rng.normal(0, 6, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(disc)
    box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    return img, disc, box


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_grabcut_mask_overlaps_the_disc():
    img, disc, box = _disc_scene()
    mask = grabcut_box(img, box, iterations=5, max_side=128, margin=0.15)
    assert mask.shape == disc.shape and mask.dtype == bool
    assert _iou(mask, disc) > 0.8
    x, y, w, h = (int(v) for v in box)
    outside = np.ones_like(mask)
    outside[y : y + h, x : x + w] = False
    assert not mask[outside].any()  # nothing outside the box


@pytest.mark.parametrize("cue", [colour_ratio_box, superpixel_box])
def test_second_cues_overlap_the_disc(cue):
    img, disc, box = _disc_scene()
    assert _iou(cue(img, box), disc) > 0.8


def test_grabcut_is_deterministic():
    img, _, box = _disc_scene(seed=3)
    a = grabcut_box(img, box, iterations=3)
    b = grabcut_box(img, box, iterations=3)
    np.testing.assert_array_equal(a, b)
    s1 = box_labels(img, [box], [1])[0]
    s2 = box_labels(img, [box], [1])[0]
    np.testing.assert_array_equal(s1, s2)


def test_combine_cues_agreement_rule_exactly():
    first = np.array([[1, 1, 0, 0]], bool)
    second = np.array([[1, 0, 1, 0]], bool)
    np.testing.assert_array_equal(combine_cues(first, second), [[FOREGROUND, DISPUTED, DISPUTED, 0]])
    with pytest.raises(ValueError, match="shape"):
        combine_cues(first, second[:, :3])


def test_paint_boxes_classes_ignore_and_background():
    state = combine_cues(np.array([[1, 1], [0, 0]], bool), np.array([[1, 0], [1, 0]], bool))
    sem, inst = paint_boxes((3, 4), [(1, 1, 3, 3)], [state], [7])
    expected = np.zeros((3, 4), np.uint8)
    expected[1, 1], expected[1, 2], expected[2, 1] = 7, 255, 255
    np.testing.assert_array_equal(sem, expected)  # outside the box and both-background: 0
    assert inst[1, 1] == 1 and inst.sum() == 1  # ignore pixels carry no instance


def test_overlap_smaller_box_on_top_whatever_the_order():
    big = np.full((10, 10), FOREGROUND, np.uint8)
    small = np.full((4, 4), FOREGROUND, np.uint8)
    for order in ([0, 1], [1, 0]):
        windows = [(0, 0, 10, 10), (3, 3, 7, 7)]
        states, classes = [big, small], [1, 2]
        sem, inst = paint_boxes((10, 10), [windows[i] for i in order], [states[i] for i in order],
                                [classes[i] for i in order])  # fmt: skip
        assert (sem[3:7, 3:7] == 2).all() and sem[0, 0] == 1
        assert (sem == 1).sum() == 100 - 16
    # a smaller box's background pixels do not erase the larger box's label
    sem, _ = paint_boxes((10, 10), [(0, 0, 10, 10), (3, 3, 7, 7)], [big, np.zeros((4, 4), np.uint8)], [1, 2])
    assert (sem == 1).all()


def test_box_labels_small_box_inside_large_keeps_its_class():
    img, disc, box = _disc_scene(h=120, w=160, cx=80, cy=60, r=14)
    # a large "object" box around a background rectangle containing the disc
    img[20:100, 30:130] = (200, 200, 60)
    img[disc] = (40, 50, 200)
    sem, inst, stats = box_labels(img, [[30, 20, 100, 80], box], [1, 2])
    assert [s["status"] for s in stats] == ["ok", "ok"]
    on_disc = sem[disc]
    assert (on_disc == 2).mean() > 0.8  # the small box's class wins on its object
    assert (inst[disc][on_disc == 2] == 2).all()
    assert (sem[25:30, 35:125] == 1).mean() > 0.8  # the large box keeps its own object
    assert sem[0:15, :].max() == 0  # outside every box: background


def test_crop_scaling_bounds_the_work(monkeypatch):
    h = w = 2100
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (60, 140, 70)
    img[(xx - 1050) ** 2 + (yy - 1050) ** 2 <= 900**2] = (40, 50, 200)
    box = [50.0, 50.0, 2000.0, 2000.0]
    seen = []
    real = bl.cv2.grabCut

    def spy(crop, *args):
        seen.append(crop.shape)
        return real(crop, *args)

    monkeypatch.setattr(bl.cv2, "grabCut", spy)
    geom = crop_for_box(box, h, w, max_side=96, margin=0.15)
    assert max(geom.work_size) <= 96 and geom.scale < 0.05
    mask = grabcut_box(img, box, iterations=2, max_side=96, margin=0.15)
    assert len(seen) == 1 and max(seen[0][:2]) <= 96
    disc = (xx - 1050) ** 2 + (yy - 1050) ** 2 <= 900**2
    assert _iou(mask, disc) > 0.9  # upscaled back to image coordinates


def test_bad_boxes_raise_alone_and_are_skipped_in_box_labels():
    img, _, box = _disc_scene()
    for bad, message in (([200, 200, 10, 10], "outside"), ([5, 5, 0, 10], "zero"), ([np.nan, 0, 5, 5], "non-finite")):
        with pytest.raises(ValueError, match=message):
            grabcut_box(img, bad)
    sem, inst, stats = box_labels(img, [[200, 200, 10, 10], [5, 5, 0, 10], [2, 2, 2, 2], box], [1, 1, 3, 2])
    assert [s["status"] for s in stats] == ["skipped", "skipped", "ignored", "ok"]
    assert "outside" in stats[0]["reason"] and "min_box_side" in stats[2]["reason"]
    assert (sem[2:4, 2:4] == 255).all()  # too small for the cues: ignore, not background
    assert set(np.unique(inst)) <= {0, 4}  # instance ids are box index + 1


def test_batch_is_parallel_and_matches_sequential():
    scenes = [_disc_scene(seed=s, cx=40 + 10 * s) for s in range(4)]
    samples = [(img, [box], [1]) for img, _, box in scenes]
    seq = box_labels_batch(samples, workers=1)
    par = box_labels_batch(samples, workers=2)
    for (a, _, _), (b, _, _) in zip(seq, par):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"iterations": 0}, "iterations"), ({"second_cue": "mcg"}, "second_cue"), ({"margin": -1.0}, "margin"),
     ({"max_side": 4}, "max_side"), ({"ratio_threshold": 2}, "ratio_threshold")],  # fmt: skip
)
def test_config_names_the_bad_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"BoxLabelConfig\.{key} "):
        BoxLabelConfig(**kwargs)


def test_box_covering_the_whole_image_still_labels():
    img, disc, _ = _disc_scene(h=48, w=64, cx=32, cy=24, r=20)
    sem, _, stats = box_labels(img, [[0, 0, 64, 48]], [3])
    assert stats[0]["status"] == "ok"
    assert (sem[disc] != 0).mean() > 0.9  # no ring: the colour cue defers to GrabCut's frame-based cut


def test_an_unsure_smaller_box_defers_its_disputes_to_agreed_labels():
    big = np.full((10, 10), FOREGROUND, np.uint8)
    unsure = np.full((4, 4), DISPUTED, np.uint8)
    unsure[0, 0] = FOREGROUND  # agrees on 1 of 16 claimed pixels
    windows, classes = [(0, 0, 10, 10), (3, 3, 7, 7)], [1, 2]
    old, _ = paint_boxes((10, 10), windows, [big, unsure], classes)
    assert (old[3:7, 3:7] == 255).sum() == 15 and old[3, 3] == 2
    sem, inst = paint_boxes((10, 10), windows, [big, unsure], classes, defer_agreement=0.3)
    assert sem[3, 3] == 2 and inst[3, 3] == 2  # its agreed pixel still wins
    assert (sem == 1).sum() == 99 and (sem == 255).sum() == 0  # its disputes leave the big box's labels
    sure = np.full((4, 4), FOREGROUND, np.uint8)
    sure[1:, :] = DISPUTED  # agrees on 4 of 16 >= 0.2: its disputes overwrite
    sem, _ = paint_boxes((10, 10), windows, [big, sure], classes, defer_agreement=0.2)
    assert (sem[4:7, 3:7] == 255).all()
