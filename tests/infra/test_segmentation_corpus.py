"""Segmentation readers: COCO JSON and VOC folders into work items, with every drop and failure explained."""

from __future__ import annotations

import json
import math
import uuid

import cv2
import fsspec
import numpy as np
import pyarrow as pa
import pytest

from labelmill.infra.corpus import is_safe_key
from labelmill.infra.formats.coco import CocoFormatError
from labelmill.infra.segmentation_corpus import (
    SEGMENTATION_ITEM_SCHEMA,
    VOC_CLASSES,
    SegmentationCorpusError,
    SegmentationInputConfig,
    detect_segmentation_kind,
    read_segmentation_corpus,
)
from labelmill.infra.storage import file_fingerprint


def image_bytes(ext: str, width: int = 40, height: int = 30) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (0, 128, 255)
    ok, buf = cv2.imencode(ext, pixels)
    assert ok
    return buf.tobytes()


def put(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as f:
        f.write(data)


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path) -> str:
    return str(tmp_path) if request.param == "local" else f"memory://seg-{uuid.uuid4().hex}"


CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 90, "name": "sky"}]


def coco_doc() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "img/a.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "img/b.png", "width": 40, "height": 30, "tags": ["sky"]},
            {"id": 3, "file_name": "img/gone.jpg", "width": 40, "height": 30},
            {"id": 4, "file_name": "img/c.jpg", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 100, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12]},
            {"id": 101, "image_id": 1, "category_id": 3, "bbox": [30, 20, 20, 20]},  # partly outside: clipped
            {"id": 102, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 5]},  # zero width
            {"id": 103, "image_id": 1, "category_id": 1, "bbox": [5, 5, -4, 5]},  # negative
            {"id": 104, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 2, 2]},
            {"id": 105, "image_id": 1, "category_id": 1, "bbox": [50, 1, 5, 5]},  # wholly outside
            {"id": 106, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]},  # unknown category
            {"id": 107, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8], "iscrowd": 1},
            {"id": 108, "image_id": 1, "category_id": 90},  # stuff (no bbox): a tag
            {"id": 109, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0.5, 9]},  # under min_box_size
            {"id": 200, "image_id": 2, "category_id": 3, "bbox": [0, 0, 40, 30]},
            {"id": 300, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 900, "image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5]},  # no such image
        ],
        "categories": CATEGORIES,
    }


def write_coco(root: str, doc: dict | None = None, *, name: str = "instances.json",
               files=("img/a.jpg", "img/b.png", "img/c.jpg")) -> str:
    put(f"{root}/{name}", json.dumps(doc if doc is not None else coco_doc()).encode())
    for rel in files:
        put(f"{root}/{rel}", image_bytes("." + rel.rsplit(".", 1)[-1]))
    return f"{root}/{name}"


def rows(table: pa.Table) -> dict[str, dict]:
    return {r["key"]: r for r in table.to_pylist()}


def test_coco_items_boxes_tags_and_drops(root):
    source = write_coco(root)
    table = read_segmentation_corpus(source)
    assert table.schema == SEGMENTATION_ITEM_SCHEMA
    assert table.column("key").to_pylist() == sorted(table.column("key").to_pylist())
    by_key = rows(table)
    assert set(by_key) == {"img/a", "img/b", "img/gone", "img/c", "__unknown_image_77"}
    assert all(is_safe_key(k) for k in by_key)

    a = by_key["img/a"]
    assert a["status"] == "pending" and a["reason"] is None
    assert a["uri"] == f"{root}/img/a.jpg" and a["image_id"] == 1 and a["file_name"] == "img/a.jpg"
    assert (a["width"], a["height"]) == (40, 30)
    assert a["boxes"] == [[2.0, 3.0, 10.0, 12.0], [30.0, 20.0, 10.0, 10.0]]  # 101 clipped to 40x30
    assert a["box_categories"] == [1, 3] and a["box_ids"] == [100, 101]
    assert a["tags"] == ["sky"]  # 'sky' has no box annotations: stuff by default
    dropped = a["dropped"]
    assert len(dropped) == 7  # 102..107 and 109: one reason each, nothing silent
    expect = {
        102: "zero or negative size", 103: "zero or negative size", 104: "not finite",
        105: "wholly outside the 40x30 image", 106: "unknown category id 42",
        107: "crowd annotation", 109: "smaller than min_box_size 1 px",
    }
    for ann_id, words in expect.items():
        assert any(d.startswith(f"annotation {ann_id}: ") and words in d for d in dropped), (ann_id, dropped)

    b = by_key["img/b"]
    assert b["status"] == "pending" and b["tags"] == ["sky"] and b["boxes"] == [[0.0, 0.0, 40.0, 30.0]]
    assert b["fingerprint"] == file_fingerprint(f"{root}/img/b.png")
    assert a["fingerprint"].startswith("stat:") and a["fingerprint"] != b["fingerprint"]

    gone = by_key["img/gone"]
    assert gone["status"] == "failed" and gone["fingerprint"] is None
    assert "missing image file" in gone["reason"] and "img/gone.jpg" in gone["reason"]

    c = by_key["img/c"]  # exists but has neither boxes nor tags
    assert c["status"] == "failed" and c["reason"].endswith("no boxes or tags")

    orphan = by_key["__unknown_image_77"]
    assert orphan["status"] == "failed" and "image id 77" in orphan["reason"]
    assert orphan["dropped"] == ["annotation 900: image id 77 is not in 'images'"]


def test_clip_off_min_size_and_crowd_on(tmp_path):
    source = write_coco(str(tmp_path))
    config = SegmentationInputConfig(clip_boxes=False, include_crowd=True, min_box_size=0.25)
    a = rows(read_segmentation_corpus(source, config=config))["img/a"]
    assert a["box_ids"] == [100, 107, 109]
    assert [2.0, 3.0, 10.0, 12.0] in a["boxes"] and [1.0, 1.0, 0.5, 9.0] in a["boxes"]
    assert any(d.startswith("annotation 101: ") and "clip_boxes is off" in d for d in a["dropped"])
    assert not any("crowd" in d for d in a["dropped"])


def test_partly_outside_on_the_low_side_is_clipped(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [-5, -2.5, 10, 10]}],
           "categories": CATEGORIES}
    item = read_segmentation_corpus(write_coco(str(tmp_path), doc, files=("a.jpg",))).to_pylist()[0]
    assert item["boxes"] == [[0.0, 0.0, 5.0, 7.5]] and item["status"] == "pending"


def test_things_and_stuff_split_by_config(tmp_path):
    source = write_coco(str(tmp_path))
    # car as stuff: its boxes become the tag 'car'; sky is then neither things nor stuff
    config = SegmentationInputConfig(things=["person"], stuff=["car"])
    by_key = rows(read_segmentation_corpus(source, config=config))
    a, b = by_key["img/a"], by_key["img/b"]
    assert a["box_ids"] == [100] and a["box_categories"] == [1] and a["tags"] == ["car"]
    assert any(d.startswith("annotation 108: ") and "neither things nor stuff" in d for d in a["dropped"])
    assert b["boxes"] == [] and b["tags"] == ["car"] and b["status"] == "pending"
    assert b["dropped"] == ["tag 'sky' of images[1] (id 2): category is in neither things nor stuff"]


def test_per_image_tags(tmp_path):
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "tags": ["sky", "water", "person"]},
                   {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4]}],
        "categories": CATEGORIES,
    }
    by_key = rows(read_segmentation_corpus(write_coco(str(tmp_path), doc, files=("a.jpg", "b.jpg"))))
    a = by_key["a"]
    assert a["status"] == "pending" and a["tags"] == ["sky"] and a["boxes"] == []
    assert a["width"] is None and a["height"] is None
    assert sorted(a["dropped"]) == [
        "tag 'person' of images[0] (id 1): a thing category (things come from boxes)",
        "tag 'water' of images[0] (id 1): unknown category",
    ]
    # unknown image size: only the low side can be clipped, nothing is "outside"
    assert by_key["b"]["boxes"] == [[1.0, 1.0, 4.0, 4.0]]


def test_duplicate_file_names_and_unsafe_names(tmp_path):
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "a.jpg"}, {"id": 3, "file_name": "./a.jpg"},
            {"id": 4, "file_name": "../outside.jpg"}, {"id": 5, "file_name": "my photo.jpg"},
        ],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 4, 4]} for i in range(1, 6)],
        "categories": CATEGORIES,
    }
    table = read_segmentation_corpus(write_coco(str(tmp_path), doc, files=("a.jpg", "my photo.jpg")))
    by_key = rows(table)
    assert len(table) == 5 and all(is_safe_key(k) for k in by_key)
    assert by_key["a"]["image_id"] == 1 and by_key["a"]["status"] == "pending"
    for image_id in (2, 3):
        dup = by_key[f"a__duplicate_{image_id}"]
        assert dup["status"] == "failed" and "duplicate key 'a' (first at images[0] (id 1)" in dup["reason"]
    escaped = [r for r in by_key.values() if r["image_id"] == 4][0]
    assert escaped["status"] == "failed" and "escapes the images folder" in escaped["reason"]
    spaced = [r for r in by_key.values() if r["image_id"] == 5][0]
    assert spaced["key"].startswith("my_photo-") and spaced["status"] == "pending"


def test_a_key_too_long_or_too_deep_fails_its_image(tmp_path):
    long_name, deep_name = "x" * 150 + "/" + "y" * 120 + ".jpg", "/".join("d" * 20) + "/im.jpg"
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": long_name}, {"id": 3, "file_name": deep_name}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 4, 4]} for i in (1, 2, 3)],
        "categories": CATEGORIES,
    }
    by_id = {r["image_id"]: r for r in rows(read_segmentation_corpus(
        write_coco(str(tmp_path), doc, files=("a.jpg", long_name, deep_name)))).values()}
    assert by_id[1]["status"] == "pending"
    assert by_id[2]["status"] == "failed" and "characters" in by_id[2]["reason"] and long_name[:20] in by_id[2]["reason"]
    assert by_id[3]["status"] == "failed" and "21 parts" in by_id[3]["reason"]
    assert all(is_safe_key(r["key"]) for r in by_id.values())


def test_images_folder_option(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "x.jpg"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}],
           "categories": CATEGORIES}
    put(str(tmp_path / "annotations" / "instances_val.json"), json.dumps(doc).encode())
    put(str(tmp_path / "val2017" / "x.jpg"), image_bytes(".jpg"))
    source = str(tmp_path / "annotations" / "instances_val.json")
    with pytest.raises(SegmentationCorpusError, match="images folder"):
        read_segmentation_corpus(source, images=str(tmp_path / "nope"))
    # default: beside the JSON, where x.jpg is not
    assert read_segmentation_corpus(source).column("status").to_pylist() == ["failed"]
    item = read_segmentation_corpus(source, images=str(tmp_path / "val2017")).to_pylist()[0]
    assert item["status"] == "pending" and item["uri"] == str(tmp_path / "val2017" / "x.jpg")


def test_existence_is_checked_with_one_listing(tmp_path, monkeypatch):
    """Per-file lookups outside the one recursive listing must not grow with the image count."""

    def lookups(n_images: int) -> tuple[int, int]:
        folder = tmp_path / f"n{n_images}"
        doc = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(n_images)],
               "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 2, 2]}
                               for i in range(n_images)],
               "categories": CATEGORIES}
        source = write_coco(str(folder), doc, files=[f"{i}.jpg" for i in range(n_images)])
        cls = type(fsspec.filesystem("file"))
        calls = {"find": 0, "lookups": 0}
        inside_find = []
        original_find = cls.find

        def find(self, *args, **kwargs):
            calls["find"] += 1
            inside_find.append(True)
            try:
                return original_find(self, *args, **kwargs)
            finally:
                inside_find.pop()

        monkeypatch.setattr(cls, "find", find)
        for name in ("info", "exists", "isfile", "isdir"):
            original = getattr(cls, name)

            def counted(self, *args, _original=original, **kwargs):
                if not inside_find:
                    calls["lookups"] += 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, name, counted)
        table = read_segmentation_corpus(source)
        monkeypatch.undo()
        assert table.column("status").to_pylist() == ["pending"] * n_images
        return calls["find"], calls["lookups"]

    few, many = lookups(2), lookups(25)
    assert few[0] == many[0] == 1
    assert few[1] == many[1]


def test_config_names_must_be_categories(tmp_path):
    source = write_coco(str(tmp_path))
    with pytest.raises(SegmentationCorpusError, match="config stuff: unknown category 'lava'"):
        read_segmentation_corpus(source, config=SegmentationInputConfig(stuff=["lava"]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"things": "person"}, "things must be a list"),
        ({"stuff": ["sky", ""]}, "stuff: '' is not a category name"),
        ({"things": ["a"], "stuff": ["a"]}, "things and stuff must not overlap"),
        ({"min_box_size": -1}, "min_box_size"),
        ({"min_box_size": float("nan")}, "min_box_size"),
        ({"clip_boxes": "yes"}, "clip_boxes must be true or false"),
        ({"include_crowd": 1}, "include_crowd"),
        ({"voc_classes": []}, "voc_classes"),
        ({"stuff": ["sky", "sky"]}, "stuff: 'sky' is listed twice"),
    ],
)
def test_config_validation_names_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentationInputConfig(**kwargs)


def test_malformed_coco_names_source_and_entry(tmp_path):
    doc = coco_doc()
    doc["annotations"][2]["bbox"] = "oops"
    source = write_coco(str(tmp_path), doc)
    with pytest.raises(CocoFormatError) as info:
        read_segmentation_corpus(source)
    assert source in str(info.value) and "annotations[2] (id 102): 'bbox'" in str(info.value)
    put(source, b"{bad")
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        read_segmentation_corpus(source)


def test_source_detection(tmp_path):
    with pytest.raises(SegmentationCorpusError, match="does not exist"):
        read_segmentation_corpus(str(tmp_path / "missing.json"))
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(SegmentationCorpusError, match="lacks JPEGImages"):
        detect_segmentation_kind(str(tmp_path))
    (tmp_path / "JPEGImages").mkdir()
    assert detect_segmentation_kind(str(tmp_path)) == "voc"
    assert detect_segmentation_kind(write_coco(str(tmp_path))) == "coco"


# ----------------------------------------------------------------------------- VOC


def voc_xml(filename: str | None, objects: list[tuple], size=(40, 30), extra: str = "") -> bytes:
    parts = ["<annotation>", "<folder>VOC2012</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, box, difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult>")
        if box is not None:
            parts.append("<bndbox>" + "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
                         + "</bndbox>")
        parts.append("</object>")
    parts.append("</annotation>")
    return (extra + "".join(parts)).encode()


def write_voc(root: str) -> str:
    base = f"{root}/VOC2012"
    put(f"{base}/Annotations/2007_000001.xml",
        voc_xml("2007_000001.jpg", [("dog", (1, 1, 10, 20), 0), ("person", (5, 5, 30, 25), 1),
                                    ("unicorn", (1, 1, 5, 5), 0), ("cat", (20, 20, 10, 25), 0),
                                    ("cat", None, 0)]))
    put(f"{base}/Annotations/2007_000002.xml", voc_xml("renamed.jpg", [("car", (1, 1, 40, 30), 0)], size=None))
    put(f"{base}/Annotations/2007_000003.xml", voc_xml("2007_000003.jpg", [("car", (1, 1, 4, 4), 0)]))
    put(f"{base}/Annotations/2007_000004.xml",
        voc_xml("2007_000004.jpg", [], extra='<!DOCTYPE x [<!ENTITY a "b">]>'))
    put(f"{base}/Annotations/readme.txt", b"not an annotation")
    for stem in ("2007_000001", "2007_000002", "2007_000004"):
        put(f"{base}/JPEGImages/{stem}.jpg", image_bytes(".jpg"))
    return base


def test_voc_items(root):
    source = write_voc(root)
    table = read_segmentation_corpus(source)
    assert table.schema == SEGMENTATION_ITEM_SCHEMA
    by_key = rows(table)
    assert list(by_key) == ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]
    assert [r["image_id"] for r in by_key.values()] == [0, 1, 2, 3]

    first = by_key["2007_000001"]
    assert first["status"] == "pending" and first["uri"] == f"{source}/JPEGImages/2007_000001.jpg"
    assert (first["width"], first["height"]) == (40, 30)
    dog, person = VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1
    # 1-based inclusive corners -> [x, y, w, h]; the difficult person is kept by default
    assert first["boxes"] == [[0.0, 0.0, 10.0, 20.0], [4.0, 4.0, 26.0, 21.0]]
    assert first["box_categories"] == [dog, person] and first["box_ids"] == [1, 2]
    assert len(first["dropped"]) == 3
    assert "unknown category 'unicorn'" in first["dropped"][0] and "2007_000001.xml" in first["dropped"][0]
    assert "zero or negative size" in first["dropped"][1]
    assert "no bbox" in first["dropped"][2]

    renamed = by_key["2007_000002"]  # <filename> is wrong, <stem>.jpg is there; size absent
    assert renamed["status"] == "pending" and renamed["uri"].endswith("JPEGImages/2007_000002.jpg")
    assert renamed["width"] is None and renamed["boxes"] == [[0.0, 0.0, 40.0, 30.0]]

    missing = by_key["2007_000003"]
    assert missing["status"] == "failed" and "missing image file" in missing["reason"]
    assert "2007_000003.jpg" in missing["reason"]

    unsafe = by_key["2007_000004"]
    assert unsafe["status"] == "failed" and "DOCTYPE" in unsafe["reason"]
    assert "Annotations/2007_000004.xml" in unsafe["reason"]


def test_voc_difficult_dropped_when_configured(tmp_path):
    source = write_voc(str(tmp_path))
    first = rows(read_segmentation_corpus(source, config=SegmentationInputConfig(include_difficult=False)))["2007_000001"]
    assert first["box_ids"] == [1]
    assert any(d.startswith("object 1 (id 2) of Annotations/2007_000001.xml: difficult") for d in first["dropped"])


def test_voc_stuff_and_custom_classes(tmp_path):
    source = write_voc(str(tmp_path))
    config = SegmentationInputConfig(voc_classes=["dog", "person", "cat", "car"], stuff=["car"])
    by_key = rows(read_segmentation_corpus(source, config=config))
    assert by_key["2007_000001"]["box_categories"] == [1, 2]
    assert by_key["2007_000002"]["tags"] == ["car"] and by_key["2007_000002"]["boxes"] == []


def test_sha1_fingerprints(tmp_path):
    source = write_coco(str(tmp_path))
    by_key = rows(read_segmentation_corpus(source, fingerprint="sha1"))
    assert by_key["img/a"]["fingerprint"] == file_fingerprint(str(tmp_path / "img" / "a.jpg"), mode="sha1")
    with pytest.raises(ValueError, match="fingerprint"):
        read_segmentation_corpus(source, fingerprint="md5")


def test_reads_are_stable(root):
    source = write_coco(root)
    assert read_segmentation_corpus(source).equals(read_segmentation_corpus(source))
    assert not any(math.isnan(v) for box in read_segmentation_corpus(source).column("boxes").to_pylist()
                   for b in box for v in b)
