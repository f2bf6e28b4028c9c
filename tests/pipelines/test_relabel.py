"""Iterative relabelling: the per-image rules, the network, and `labelmill run relabel` end to end."""

import io
import json

import numpy as np
import pytest
import torch

from labelmill.infra import storage
from labelmill.infra.config import load_config
from labelmill.infra.dataset_version import list_versions, read_inputs, read_latest
from labelmill.infra.validate import validate_version
from labelmill.models.segnet import SegNetConfig, TrainedSegNet, train_segnet
from labelmill.operators.segmentation.relabel import SOURCE_RELABEL, relabel_image
from labelmill.operators.synth.segmentation import SegmentationSynthConfig, write_segmentation_corpus
from labelmill.pipelines.cli import main
from labelmill.pipelines.config import SegmentationConfig
from labelmill.pipelines.relabel import RelabelConfig, read_source_samples, run_relabel
from labelmill.pipelines.segmentation import run_segmentation

# ----------------------------------------------------------------------------- relabel_image

CLASSES = (0, 1, 2, 5)  # background, two thing classes, one stuff class


def _probs(labels: np.ndarray, confidence: float | np.ndarray = 0.97) -> np.ndarray:
    """(K, H, W) probabilities putting ``confidence`` on each pixel's class in ``labels``."""
    k = len(CLASSES)
    conf = np.broadcast_to(np.asarray(confidence, np.float32), labels.shape)
    probs = np.repeat(((1.0 - conf) / (k - 1))[None], k, axis=0).astype(np.float32)
    for index, cls in enumerate(CLASSES):
        probs[index][labels == cls] = conf[labels == cls]
    return probs


def test_unconfident_pixels_become_ignore_and_confident_ones_keep_their_class():
    labels = np.zeros((10, 10), np.uint8)
    labels[2:6, 2:6] = 1
    confidence = np.full((10, 10), 0.97, np.float32)
    confidence[:, 8:] = 0.6  # below the threshold
    out = relabel_image(_probs(labels, confidence), CLASSES, [[2, 2, 4, 4]], [1], thing_classes=[1, 2], threshold=0.9)
    assert (out["sem"][:, 8:] == 255).all() and (out["inst"][:, 8:] == 0).all()
    assert (out["sem"][2:6, 2:6] == 1).all() and (out["inst"][2:6, 2:6] == 1).all()
    assert (out["sem"][:, :8][labels[:, :8] == 0] == 0).all()
    (segment,) = out["segments"]
    assert segment["id"] == 1 and segment["category_id"] == 1 and segment["source"] == SOURCE_RELABEL
    assert segment["area"] == 16 and segment["bbox"] == [2, 2, 4, 4] and segment["score"] == pytest.approx(0.97)
    assert out["ignore_fraction"] == 0.0 and out["labelled_fraction"] == 1.0 and out["boxes_labelled"] == 1


def test_a_thing_outside_every_box_of_its_class_becomes_ignore_and_stuff_is_kept_anywhere():
    labels = np.full((12, 12), 5, np.uint8)  # stuff everywhere ...
    labels[1:4, 1:4] = 1  # class 1 inside its box
    labels[1:4, 8:11] = 1  # class 1 inside a box of class 2 only
    labels[8:11, 1:4] = 2  # class 2 outside every box
    labels[9:11, 8:11] = 5  # stuff inside the class-2 box
    boxes, cats = [[0, 0, 5, 5], [7, 0, 5, 12]], [1, 2]
    out = relabel_image(_probs(labels), CLASSES, boxes, cats, thing_classes=[1, 2], threshold=0.5, box_ids=[70, 71])
    sem, inst = out["sem"], out["inst"]
    assert (sem[1:4, 1:4] == 1).all() and (inst[1:4, 1:4] == 1).all()
    assert (sem[1:4, 8:11] == 255).all() and (inst[1:4, 8:11] == 0).all()  # wrong box class
    assert (sem[8:11, 1:4] == 255).all()  # outside every box
    assert (sem[9:11, 8:11] == 5).all()  # stuff inside a thing box stays
    stuff = [s for s in out["segments"] if s["category_id"] == 5]
    things = [s for s in out["segments"] if s["category_id"] != 5]
    assert [s["annotation_id"] for s in things] == [70] and out["boxes_ignored"] == 1  # box 2 got no pixel
    (segment,) = stuff
    assert segment["id"] == 3 and segment["annotation_id"] is None  # after the boxes' ids
    assert (inst[sem == 5] == 3).all() and segment["area"] == int((sem == 5).sum())


def test_the_smaller_box_wins_an_overlap_and_an_unknown_box_takes_the_majority_thing_class():
    labels = np.zeros((12, 12), np.uint8)
    labels[0:10, 0:10] = 1
    labels[8:12, 8:12] = 2
    boxes = [[0, 0, 10, 10], [4, 4, 4, 4], [8, 8, 4, 4]]
    out = relabel_image(_probs(labels), CLASSES, boxes, [1, 1, None], thing_classes=[1, 2], threshold=0.5)
    inst = out["inst"]
    assert (inst[4:8, 4:8] == 2).all() and inst[0, 0] == 1  # the small class-1 box on top
    assert (inst[10:12, 10:12] == 3).all()
    unknown = next(s for s in out["segments"] if s["id"] == 3)
    assert unknown["category_id"] == 2  # class 2 is the most frequent thing class in its window
    # every thing pixel belongs to an instance
    assert not ((np.isin(out["sem"], [1, 2])) & (inst == 0)).any()


def test_relabel_image_refuses_bad_input():
    with pytest.raises(ValueError, match="probs must be"):
        relabel_image(np.zeros((3, 4, 4), np.float32), CLASSES, [], [], thing_classes=[1], threshold=0.5)
    with pytest.raises(ValueError, match="box categories"):
        relabel_image(np.zeros((4, 4, 4), np.float32), CLASSES, [[0, 0, 2, 2]], [], thing_classes=[1], threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        relabel_image(np.zeros((4, 4, 4), np.float32), CLASSES, [], [], thing_classes=[1], threshold=1.5)


# ----------------------------------------------------------------------------- the network


def _toy(n=6, size=32, seed=0):
    """Images with a red square (class 3) on a grey textured background (class 0); a stripe of ignore."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        image = rng.integers(90, 140, (size, size, 3), dtype=np.uint8)
        label = np.zeros((size, size), np.uint8)
        x, y = rng.integers(2, size - 14, 2)
        image[y:y + 12, x:x + 12] = (200, 30, 30)
        label[y:y + 12, x:x + 12] = 3
        label[:, :3] = 255
        images.append(image)
        labels.append(label)
    return images, labels


def test_segnet_learns_a_toy_pattern_deterministically_and_round_trips_through_its_file():
    images, labels = _toy()
    cfg = SegNetConfig(side=32, epochs=15, lr=3e-3, batch_size=3)
    net, losses = train_segnet(images, labels, config=cfg, seed=1)
    assert net.classes == (0, 3)  # ignore is no class
    assert losses[-1] < 0.5 * losses[0]
    probs = net.predict(images)
    assert probs[0].shape == (2, 32, 32) and np.allclose(probs[0].sum(0), 1.0, atol=1e-4)
    pred = [np.asarray(net.classes)[p.argmax(0)] for p in probs]
    accuracy = np.mean([(p == lab)[lab != 255].mean() for p, lab in zip(pred, labels)])
    assert accuracy > 0.9
    again, _ = train_segnet(images, labels, config=cfg, seed=1)
    assert again.to_bytes() == net.to_bytes()  # same seed, same CPU weights
    loaded = TrainedSegNet.from_bytes(net.to_bytes())
    assert loaded.classes == net.classes and np.allclose(loaded.predict(images[:1])[0], probs[0], atol=1e-6)


def test_segnet_files_are_checked_when_loaded():
    buffer = io.BytesIO()
    torch.save({"format": 1, "state_dict": {"x": torch.zeros(1)}, "classes": [0, 1], "encoder": "lite0", "side": 32},
               buffer)
    with pytest.raises(ValueError, match="key"):
        TrainedSegNet.from_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="could not be read"):
        TrainedSegNet.from_bytes(b"not a torch file")
    images, labels = _toy(n=2)
    with pytest.raises(ValueError, match=r"label 0: class ids \[3\]"):
        train_segnet(images, labels, classes=[0], config=SegNetConfig(side=32, epochs=1))


# ----------------------------------------------------------------------------- end to end

SEG_OVERRIDES = ["input.stuff=[grass,sky,water]", "stuff.train.epochs=2", "stuff.train.input_size=64"]
RELABEL_OVERRIDES = ["model.side=112", "model.epochs=30", "model.lr=0.003", "model.device=cpu"]


@pytest.fixture(scope="module")
def relabelled(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("relabel_corpus")
    write_segmentation_corpus(str(corpus), SegmentationSynthConfig(num_images=5, seed=0))
    out = tmp_path_factory.mktemp("relabel_out")
    seg = run_segmentation(load_config(SegmentationConfig, None, SEG_OVERRIDES),
                           input_url=str(corpus / "annotations.json"), output_url=str(out),
                           images=str(corpus / "images"), engine_name="local")
    cfg = load_config(RelabelConfig, None, RELABEL_OVERRIDES)
    rounds = run_relabel(str(out), 2, gt=str(corpus / "annotations.json"), config=cfg)
    return corpus, out, seg, rounds


def test_two_rounds_write_two_valid_versions_with_per_round_metrics(relabelled):
    corpus, out, seg, rounds = relabelled
    assert [r.round for r in rounds] == [0, 1, 2]
    assert rounds[0].version_id == seg.version_id and rounds[0].up_to_date
    ids = [r.version_id for r in rounds]
    assert len(set(ids)) == 3 and set(ids) <= set(list_versions(str(out)))
    assert read_latest(str(out)) == rounds[2].version_id
    assert rounds[1].source_url == seg.version_url and rounds[2].source_url == rounds[1].version_url
    for r in rounds:
        assert validate_version(r.version_url) == [], r.version_url
        m = r.metrics
        assert m is not None and m["images"] > 0 and 0.0 < m["miou"] <= 1.0 and 0.0 <= m["pq"] <= 1.0
        assert 0.0 < m["labelled_fraction"] <= 1.0 and m["thing_classes"] == [1, 2, 3]
    for r in rounds[1:]:
        assert not r.up_to_date and not r.model_reused and r.losses[-1] < r.losses[0]
        assert storage.exists(r.model) and r.model.endswith(".pt") and r.thing_classes == [1, 2, 3]
        record = json.loads(storage.read_text(storage.join(r.version_url, "relabel.json")))
        assert record["round"] == r.round and record["source_version"] == r.source_url
        # every input of a round is one written sample of its source, accounted for
        inputs = read_inputs(r.version_url).to_pylist()
        source_written = read_inputs(r.source_url).to_pylist()
        assert sorted(i["input_key"] for i in inputs) == sorted(
            i["input_key"] for i in source_written if i["status"] == "written")
        assert r.stats["stages"]["relabel"]["computed"] == len(inputs)
    # every round reads the boxes its source's samples record (the segmentation version's too)
    box_sources = [json.loads(storage.read_text(storage.join(r.version_url, "relabel.json")))["box_sources"]
                   for r in rounds[1:]]
    assert all(b["json"] > 0 and b["segments"] == 0 for b in box_sources)
    docs = [s.doc for s in read_source_samples(rounds[2].version_url)]
    assert docs and all(d["boxes"] and d["relabel"]["round"] == 2 for d in docs)
    segments = [seg for d in docs for seg in d["segments"]]
    assert segments and {seg["source"] for seg in segments} == {SOURCE_RELABEL}


def test_a_rerun_through_the_cli_is_up_to_date_and_writes_nothing(relabelled, capsys):
    corpus, out, seg, rounds = relabelled
    before = list_versions(str(out))
    args = ["run", "relabel", "--dataset", seg.version_url, "--rounds", "2", "--gt", str(corpus / "annotations.json")]
    for override in RELABEL_OVERRIDES:
        args += ["--set", override]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"round 1: {rounds[1].version_id} (up to date)" in text
    assert f"round 2: {rounds[2].version_id} (up to date)" in text and "mIoU" in text
    assert list_versions(str(out)) == before and read_latest(str(out)) == rounds[2].version_id
    assert main([*args, "--set", "model.epochz=3"]) == 2
    assert "model.epochz" in capsys.readouterr().err
