"""`labelmill eval segmentation` on a tiny synthetic corpus, plus hand-built checks of the scoring."""

import json

import numpy as np
import pytest

from labelmill.infra import storage
from labelmill.infra.config import load_config
from labelmill.infra.formats.coco import parse_coco_instances
from labelmill.operators.synth.segmentation import SegmentationSynthConfig, write_segmentation_corpus
from labelmill.pipelines.config import SegmentationConfig
from labelmill.pipelines.segmentation import run_segmentation
from labelmill.pipelines.segmentation_eval import (
    SegmentationScorer,
    evaluate_segmentation,
    gt_for_sample,
    iter_samples,
)

OVERRIDES = ["input.stuff=[grass,sky,water]"]
THINGS_ONLY = "stuff.enabled=false"  # most checks score the things; test_stuff_... scores a version with stuff
THINGS = (1, 2, 3)  # disc, square, triangle; 4..6 are stuff


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("segeval_corpus")
    write_segmentation_corpus(str(root), SegmentationSynthConfig(num_images=4, seed=0))
    return root


def _run(corpus, out, *extra):
    cfg = load_config(SegmentationConfig, None, [*OVERRIDES, *extra])
    return run_segmentation(cfg, input_url=str(corpus / "annotations.json"), output_url=str(out),
                            images=str(corpus / "images"), engine_name="local")


@pytest.fixture(scope="module")
def dataset(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("segeval_out")
    _run(corpus, out, THINGS_ONLY)
    return out


def test_pipeline_labels_score_well_against_the_corpus_gt(corpus, dataset):
    report = evaluate_segmentation(str(dataset), str(corpus / "annotations.json"))
    assert report["images"] == 4 and report["missing"] == [] and report["resized"] == 0
    assert report["skipped"] == {} and report["samples_without_gt"] == []
    assert report["thing_classes"] == list(THINGS)  # stuff from the version's config.yaml
    assert report["miou"] >= 0.85, report["iou"]
    assert 0.0 < report["box_labelled_fraction"] <= 1.0
    assert set(report["iou"]) <= {"background", "disc", "square", "triangle"} and "background" in report["iou"]
    assert 0.0 < report["pq"] <= 1.0 and report["pq"] == pytest.approx(report["panoptic"]["things"]["pq"])
    assert report["panoptic"]["stuff"]["classes"] == 0 and report["panoptic"]["tp"] > 0
    # stuff GT is background here: the labels never claim a stuff class
    assert not {"grass", "sky", "water"} & set(report["iou"])


def test_a_version_with_stuff_is_scored_on_its_tagged_stuff_classes(corpus, dataset, tmp_path):
    things_only = evaluate_segmentation(str(dataset), str(corpus / "annotations.json"))
    _run(corpus, tmp_path / "stuff")  # default: the stuff stage trains a classifier on the 4 images' tags
    report = evaluate_segmentation(str(tmp_path / "stuff"), str(corpus / "annotations.json"))
    assert report["stuff_labelled"] is True and things_only["stuff_labelled"] is False
    tagged = {t for s in iter_samples(str(tmp_path / "stuff")) for t in s["json"]["tags"]}
    assert tagged and tagged <= set(report["iou"]) and report["panoptic"]["stuff"]["classes"] == len(tagged)
    assert "background" not in report["iou"]  # stuff covers every non-thing pixel of the synthetic GT
    # things take precedence: thing pixels and segments are the things-only version's; a GT
    # thing pixel the things left to background may now be stuff (still a miss) or ignore (not
    # scored), so a thing IoU can only rise
    for name in ("disc", "square", "triangle"):
        if name in things_only["iou"]:
            assert report["iou"][name] >= things_only["iou"][name], name
    assert report["panoptic"]["things"] == things_only["panoptic"]["things"]
    assert report["box_labelled_fraction"] <= things_only["box_labelled_fraction"]  # stuff may leave ignore


def test_perfect_prediction_scores_one_and_errors_score_less(corpus):
    doc = parse_coco_instances((corpus / "annotations.json").read_bytes())
    perfect = SegmentationScorer(num_classes=7, thing_classes=THINGS)
    shifted = SegmentationScorer(num_classes=7, thing_classes=THINGS)
    unlabelled = SegmentationScorer(num_classes=7, thing_classes=THINGS)
    for image in doc.images:
        anns = [a for a in doc.annotations if a.image_id == image.id and a.category_id in THINGS]
        size = (image.height, image.width)
        sem, inst, classes, boxes = gt_for_sample(anns, size, size, 7)
        assert boxes.any() and set(classes.values()) <= set(THINGS)
        perfect.add(sem, inst, classes, sem, inst, classes, boxes)
        shifted.add(np.roll(sem, 6, axis=1), np.roll(inst, 6, axis=1), classes, sem, inst, classes, boxes)
        unlabelled.add(np.where(boxes, 255, sem).astype(np.uint8), inst * ~boxes, classes, sem, inst, classes, boxes)
    r = perfect.result()
    assert r["miou"] == 1.0 and r["pq"] == r["sq"] == r["rq"] == 1.0
    assert r["box_labelled_fraction"] == 1.0 == r["labelled_fraction"] and r["panoptic"]["fp"] == r["panoptic"]["fn"] == 0
    s = shifted.result()
    assert s["miou"] < 1.0 and s["pq"] < 1.0 and s["box_labelled_fraction"] == 1.0
    u = unlabelled.result()
    assert u["box_labelled_fraction"] == 0.0 and u["labelled_fraction"] < 1.0
    assert u["panoptic"]["tp"] == 0 and u["pq"] == 0.0


def test_resized_gt_matches_the_stored_size(corpus):
    doc = parse_coco_instances((corpus / "annotations.json").read_bytes())
    image = doc.images[0]
    anns = [a for a in doc.annotations if a.image_id == image.id and a.category_id in THINGS]
    full = gt_for_sample(anns, (image.height, image.width), (image.height, image.width), 7)
    half = gt_for_sample(anns, (image.height, image.width), (image.height // 2, image.width // 2), 7)
    assert half[0].shape == half[1].shape == half[3].shape == (image.height // 2, image.width // 2)
    assert np.array_equal(half[0], full[0][::2, ::2])  # nearest at an exact factor 2 picks the even pixels
    assert set(np.unique(half[1]).tolist()) - {0} == set(half[2])


def test_resized_version_is_scored_at_its_stored_size(corpus, tmp_path):
    _run(corpus, tmp_path / "small", "image.max_side=80", THINGS_ONLY)
    samples = list(iter_samples(str(tmp_path / "small")))
    assert samples and all(s["sem"].shape == (60, 80) and s["json"]["scale"] == 0.5 for s in samples)
    report = evaluate_segmentation(str(tmp_path / "small"), str(corpus / "annotations.json"))
    assert report["resized"] == report["images"] == len(samples)
    assert report["images"] + len(report["missing"]) == 4
    assert report["miou"] >= 0.6 and 0.0 < report["box_labelled_fraction"] <= 1.0


def test_gt_image_without_a_sample_is_missing_and_unannotated_ones_are_skipped(corpus, dataset, tmp_path):
    doc = json.loads((corpus / "annotations.json").read_text())
    first = doc["images"][0]
    doc["images"] += [dict(first, id=99, file_name="extra.jpg"), dict(first, id=100, file_name="empty.jpg")]
    ann = next(a for a in doc["annotations"] if a["image_id"] == first["id"] and a["isthing"])
    doc["annotations"].append(dict(ann, id=10_000, image_id=99))
    doc["images"] = [im for im in doc["images"] if im["id"] != doc["images"][1]["id"]]  # a sample without GT
    dropped = {im["id"] for im in json.loads((corpus / "annotations.json").read_text())["images"]} - {
        im["id"] for im in doc["images"]}
    bare = doc["images"][1]["id"]  # has a sample, but its GT loses every annotation: skipped
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] not in dropped | {bare}]
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(doc))
    report = evaluate_segmentation(str(dataset), str(gt))
    assert report["missing"] == [99] and report["images"] == 2
    assert report["skipped"] == {"no_annotations": 1}
    assert len(report["samples_without_gt"]) == 1 and report["gt_images"] == 5


def test_cli_prints_json_and_a_table(corpus, dataset, capsys):
    from labelmill.pipelines.cli import main

    args = ["eval", "segmentation", "--dataset", str(dataset), "--gt", str(corpus / "annotations.json")]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("miou", "iou", "pq", "sq", "rq", "box_labelled_fraction", "images", "missing", "skipped", "panoptic"):
        assert key in report
    assert report["images"] == 4 and report["miou"] >= 0.85
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "4 images evaluated" in text and "mIoU" in text and "triangle" in text and "PQ" in text
    assert storage.exists(report["dataset"])
