"""Stuff from tags: combining Grad-CAM masks under the things, classifier files, the operator, training."""

import io

import cv2
import numpy as np
import pytest
import torch

from labelmill.models.multilabel_classifier import (
    MultiLabelClassifier,
    WeightFileError,
    classifier_bytes,
    load_classifier,
)
from labelmill.operators.segmentation.stuff import StuffConfig, StuffFromTags, combine_things_stuff
from labelmill.operators.segmentation.tag_classifier import (
    ClassifierTrainConfig,
    TagClassifierError,
    train_tag_classifier,
    training_items,
)
from labelmill.operators.segmentation.things import decode_png, encode_png


def _things():
    """8x8: thing 1 (class 2) top-left 3x3 with one disputed pixel, background elsewhere."""
    sem = np.zeros((8, 8), np.uint8)
    inst = np.zeros((8, 8), np.uint16)
    sem[:3, :3], inst[:3, :3] = 2, 1
    sem[0, 0], inst[0, 0] = 255, 0
    segments = [{"id": 1, "annotation_id": 7, "category_id": 2, "category": "box", "bbox": [0, 0, 3, 3], "area": 8,
                 "source": "grabcut", "score": 0.9}]
    return sem, inst, segments


def test_things_take_precedence_and_stuff_fills_the_rest_by_its_largest_map():
    sem, inst, segments = _things()
    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, :4] = 0.8  # "sky" strong in the top half (also under the thing)
    maps[1, 4:] = 0.6  # "grass" in the bottom half
    maps[1, 4:, 6:] = 0.0  # no evidence at the bottom-right corner
    out_sem, out_inst, segs, counts = combine_things_stuff(sem, inst, segments, maps, [5, 4], ["sky", "grass"], 0.0)
    assert (out_sem[:3, :3][sem[:3, :3] == 2] == 2).all() and out_sem[0, 0] == 255  # things untouched
    assert (out_inst[:3, :3] == inst[:3, :3]).all()
    free = sem == 0
    assert (out_sem[:4][free[:4]] == 5).all() and (out_sem[4:, :6] == 4).all()
    assert (out_sem[4:, 6:] == 255).all()  # no map exceeds the threshold there
    assert counts == {"stuff_pixels": int(free[:4].sum()) + 24, "stuff_ignore": 8}
    # one segment per stuff class, ids after the things, in category-id order (grass 4 before sky 5)
    assert [s["id"] for s in segs] == [1, 2, 3] and segs[0] == segments[0]
    grass, sky = segs[1], segs[2]
    assert (grass["category"], grass["category_id"], grass["source"]) == ("grass", 4, "gradcam")
    assert (sky["category"], sky["category_id"], sky["annotation_id"]) == ("sky", 5, None)
    assert grass["area"] == int((out_inst == 2).sum()) == 24 and grass["bbox"] == [0, 4, 6, 4]
    assert sky["area"] == int((out_inst == 3).sum()) and sky["score"] == pytest.approx(0.8)
    assert (out_sem[out_inst == 3] == 5).all()


def test_a_higher_threshold_leaves_weak_evidence_ignore():
    sem, inst, segments = _things()
    maps = np.full((1, 8, 8), 0.3, np.float32)
    out_sem, _, segs, counts = combine_things_stuff(sem, inst, segments, maps, [4], ["grass"], 0.5)
    assert (out_sem[sem == 0] == 255).all() and len(segs) == 1 and counts["stuff_pixels"] == 0
    with pytest.raises(ValueError, match="2 maps for 1 tag ids"):
        combine_things_stuff(sem, inst, segments, np.zeros((2, 8, 8)), [4], ["grass"], 0.0)


def test_stuff_config_names_the_bad_key():
    with pytest.raises(ValueError, match="StuffConfig.layer"):
        StuffConfig(layer="block3")
    with pytest.raises(ValueError, match="StuffConfig.threshold"):
        StuffConfig(threshold=1.5)
    with pytest.raises(ValueError, match="ClassifierTrainConfig.input_size"):
        ClassifierTrainConfig(input_size=8)


def test_classifier_file_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    model = MultiLabelClassifier(2, pretrained=False).eval()
    path = tmp_path / "clf.pt"
    path.write_bytes(classifier_bytes(model, ["grass", "sky"], input_size=64, meta={"images": 3}))
    loaded = load_classifier(str(path))
    assert loaded.tags == ["grass", "sky"] and loaded.input_size == 64 and loaded.meta == {"images": 3}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    # not a classifier: a bare state dict, a wrong shape, and a pickled callable (refused, not run)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(WeightFileError, match="not a labelmill classifier"):
        load_classifier(str(bare))
    doc = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    doc["state_dict"]["head.weight"] = torch.zeros(3, 1280)
    wrong = tmp_path / "wrong.pt"
    torch.save(doc, wrong)
    with pytest.raises(WeightFileError, match="head.weight"):
        load_classifier(str(wrong))
    evil = tmp_path / "evil.pt"
    torch.save({"format": "labelmill-multilabel-classifier", "x": print}, evil)
    with pytest.raises(WeightFileError, match="could not be read"):
        load_classifier(str(evil))
    with pytest.raises(ValueError, match="tag names"):
        classifier_bytes(model, ["a", "a"], input_size=64)


def _jpeg(colour, tmp_path, name):
    image = np.zeros((48, 64, 3), np.uint8)
    image[:] = colour
    path = tmp_path / f"{name}.jpg"
    cv2.imwrite(str(path), image)
    return str(path)


def test_training_needs_tags_skips_undecodable_images_and_learns_colours(tmp_path):
    items = []
    for i in range(8):
        red = i % 2 == 0
        items.append({"key": f"im{i}", "uri": _jpeg((0, 0, 255) if red else (255, 0, 0), tmp_path, f"im{i}"),
                      "tags": ["red"] if red else ["blue"], "status": "pending"})
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    items.append({"key": "broken", "uri": str(broken), "tags": ["red"], "status": "pending"})
    items.append({"key": "failed", "uri": str(broken), "tags": ["red"], "status": "failed"})
    assert [it["key"] for it in training_items(items, 100)].count("failed") == 0
    cfg = ClassifierTrainConfig(input_size=32, epochs=6, batch_size=4, lr=2e-3, pretrained=False)
    data, report = train_tag_classifier(items, cfg)
    assert report["tags"] == ["blue", "red"] and report["images"] == 8 and list(report["skipped"]) == ["broken"]
    assert report["losses"][-1] < report["losses"][0]
    path = tmp_path / "clf.pt"
    path.write_bytes(data)
    assert load_classifier(str(path)).tags == ["blue", "red"]
    again, _ = train_tag_classifier(items, cfg)
    assert again == data  # deterministic on CPU for a seed
    with pytest.raises(TagClassifierError, match="no image-level tags"):
        train_tag_classifier([dict(it, tags=[]) for it in items], cfg)


def _batch(tmp_path, tags, ids):
    image = np.zeros((24, 32, 3), np.uint8)
    image[12:] = (0, 200, 0)
    ok, jpg = cv2.imencode(".jpg", image)
    sem, inst, segments = _things()
    sem, inst = cv2.resize(sem, (32, 24), interpolation=cv2.INTER_NEAREST), cv2.resize(
        inst, (32, 24), interpolation=cv2.INTER_NEAREST)
    n = len(tags)
    return {"key": [f"k{i}" for i in range(n)], "status": ["pending"] * n, "reason": [None] * n,
            "image_jpeg": [jpg.tobytes()] * n, "tags": tags, "tag_category_ids": ids,
            "sem_png": [encode_png(sem)] * n, "inst_png": [encode_png(inst)] * n, "segments": [segments] * n}


def test_operator_labels_known_tags_counts_unknown_ones_and_fails_bad_items(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "clf.pt"
    path.write_bytes(classifier_bytes(MultiLabelClassifier(2, pretrained=False), ["grass", "sky"], input_size=64))
    op = StuffFromTags(config=StuffConfig(device="cpu"), classifier=str(path))
    batch = _batch(tmp_path, [["grass", "lava"], [], ["sky"]], [[4, 9], [], [5, 6]])
    out = op(batch)
    assert out["status"] == ["pending", "pending", "failed"]
    assert "1 tags but 2 tag category ids" in out["reason"][2] and "'k2'" in out["reason"][2]
    assert out["stuff_tags_unknown"][0] == 1 and out["stuff_tags_unknown"][1] == 0
    things = decode_png(batch["sem_png"][0])
    for i in (0, 1):
        sem = decode_png(out["stuff_sem_png"][i])
        assert (sem[things != 0] == things[things != 0]).all()  # things take precedence
        assert set(np.unique(sem[things == 0]).tolist()) <= ({4, 255} if i == 0 else {255})
    assert [s["source"] for s in out["stuff_segments"][1]] == ["grabcut"]  # no known tag: the things only
    # the batch does not change an image's labels (per-image Grad-CAM on the CPU)
    alone = op(_batch(tmp_path, [["grass", "lava"]], [[4, 9]]))
    assert alone["stuff_sem_png"][0] == out["stuff_sem_png"][0]
    with pytest.raises(ValueError, match="needs a classifier"):
        StuffFromTags(config=StuffConfig(), classifier="")
