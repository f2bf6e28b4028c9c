"""The segmentation pipeline's operators one by one: decode (resize, bytes, failures), things, samples."""

import io
import json
import tarfile

import cv2
import numpy as np

from labelmill.infra.schema import check_field, load_schema
from labelmill.operators.segmentation.images import DecodeImage, ImageConfig
from labelmill.operators.segmentation.samples import BuildSegmentationSamples, SegmentationFilterConfig
from labelmill.operators.segmentation.things import BoxThings, decode_png


def _scene(width=200, height=100):
    image = np.full((height, width, 3), (40, 160, 40), np.uint8)  # green ground
    cv2.circle(image, (60, 50), 25, (30, 30, 220), -1)  # a red disc
    return image


def _batch(tmp_path, name, data, boxes, width=None, height=None):
    path = tmp_path / name
    path.write_bytes(data)
    return {"key": [name.split(".")[0]], "uri": [str(path)], "boxes": [boxes], "width": [width], "height": [height],
            "box_categories": [[1] * len(boxes)], "box_ids": [list(range(10, 10 + len(boxes)))],
            "box_category_names": [["disc"] * len(boxes)], "status": ["pending"], "reason": [None]}


def test_decode_keeps_jpeg_bytes_and_resizes_with_boxes(tmp_path):
    jpeg = cv2.imencode(".jpg", _scene())[1].tobytes()
    out = DecodeImage()(_batch(tmp_path, "a.jpg", jpeg, [[30, 20, 60, 60]], 200, 100))
    assert out["status"] == ["pending"] and out["image_jpeg"][0] == jpeg and out["scale_x"][0] == 1.0
    small = DecodeImage(image=ImageConfig(max_side=100))(_batch(tmp_path, "b.jpg", jpeg, [[30, 20, 60, 60]]))
    assert (small["image_width"][0], small["image_height"][0]) == (100, 50)
    assert small["image_boxes"][0] == [[15.0, 10.0, 30.0, 30.0]] and small["image_jpeg"][0] != jpeg
    png = cv2.imencode(".png", _scene())[1].tobytes()
    encoded = DecodeImage()(_batch(tmp_path, "c.png", png, []))["image_jpeg"][0]
    assert encoded[:3] == b"\xff\xd8\xff"


def test_decode_fails_items_with_reasons(tmp_path):
    jpeg = cv2.imencode(".jpg", _scene())[1].tobytes()
    wrong_size = DecodeImage()(_batch(tmp_path, "a.jpg", jpeg, [], 300, 100))
    assert wrong_size["status"] == ["failed"] and "300x100" in wrong_size["reason"][0]
    garbage = DecodeImage()(_batch(tmp_path, "b.jpg", b"nope", []))
    assert garbage["status"] == ["failed"] and "cannot decode" in garbage["reason"][0]
    batch = _batch(tmp_path, "c.jpg", jpeg, [])
    batch["uri"] = [str(tmp_path / "absent.jpg")]
    missing = DecodeImage()(batch)
    assert missing["status"] == ["failed"] and "missing" in missing["reason"][0]


def test_things_and_samples_build_a_valid_sample(tmp_path):
    jpeg = cv2.imencode(".jpg", _scene())[1].tobytes()
    batch = DecodeImage()(_batch(tmp_path, "a.jpg", jpeg, [[30, 20, 60, 60]], 200, 100))
    batch = BoxThings()(batch)
    assert batch["status"] == ["pending"] and batch["boxes_labelled"][0] == 1
    sem, inst = decode_png(batch["sem_png"][0]), decode_png(batch["inst_png"][0])
    assert sem.dtype == np.uint8 and inst.dtype == np.uint16 and sem[50, 60] == 1 and inst[50, 60] == 1
    assert batch["segments"][0][0]["annotation_id"] == 10
    out = BuildSegmentationSamples()(dict(batch, tags=[["grass"]], image_id=[7], file_name=["a.jpg"], dropped=[[]]))
    assert out["num_samples"] == [1] and out["input_row"][0]["status"] == "written"
    schema = load_schema("segmentation")
    with tarfile.open(fileobj=io.BytesIO(out["fragment_tar"][0])) as tar:
        members = {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}
    assert sorted(members) == sorted(schema.extensions)
    for extension, data in members.items():
        assert check_field(schema.field(extension), data) == [], extension
    assert json.loads(members["json"])["segments"][0]["category"] == "disc"
    bad = check_field(schema.field("json"), json.dumps({**json.loads(members["json"]), "quality": [1]}).encode())
    assert [i.item for i in bad] == ["json.quality"]
    doc = json.loads(members["json"])
    assert doc["boxes"] == [{"bbox": [30.0, 20.0, 60.0, 60.0], "category_id": 1, "category": "disc",
                             "annotation_id": 10}]  # the input boxes, in stored pixels
    # "relabel" is optional (absent here, checked when present); "boxes" is required
    assert "relabel" not in doc
    assert [i.item for i in check_field(schema.field("json"), json.dumps({**doc, "relabel": 3}).encode())] == [
        "json.relabel"]
    no_boxes = {k: v for k, v in doc.items() if k != "boxes"}
    assert [(i.item, i.what) for i in check_field(schema.field("json"), json.dumps(no_boxes).encode())] == [
        ("json.boxes", "missing property")]
    strict = BuildSegmentationSamples(filter=SegmentationFilterConfig(max_ignore_fraction=0.0))
    batch["ignore_fraction"] = [0.25]
    filtered = strict(dict(batch, tags=[[]], image_id=[7], file_name=["a.jpg"], dropped=[[]]))
    assert filtered["num_samples"] == [0] and filtered["fragment_tar"] == [None]
    assert filtered["input_row"][0]["status"] == "filtered"
    assert filtered["input_row"][0]["reason"] == "ignore_fraction 0.250 > max_ignore_fraction 0"
