"""COCO instances JSON and PASCAL VOC XML parsers: good documents, typed errors naming the entry, unsafe XML."""

from __future__ import annotations

import json
import math

import pytest

from labelmill.infra.formats.coco import (
    CocoAnnotation,
    CocoCategory,
    CocoFormatError,
    CocoImage,
    VocFormatError,
    VocObject,
    parse_coco_instances,
    parse_voc_xml,
)


def coco(**overrides) -> dict:
    doc = {
        "info": {"year": 2017},
        "licenses": [],
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48, "coco_url": "http://x"},
            {"id": 2, "file_name": "sub/b.png", "tags": ["sky", "grass"]},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2.5, 10, 20], "iscrowd": 0,
             "area": 200, "segmentation": [[1, 2, 11, 2, 11, 22]]},
            {"id": 11, "image_id": 2, "category_id": 2, "iscrowd": 1, "segmentation": {"counts": "abc", "size": [4, 4]}},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 2, "name": "sky"}],
    }
    doc.update(overrides)
    return doc


def parse(doc) -> object:
    return parse_coco_instances(json.dumps(doc))


def test_parses_images_annotations_categories():
    doc = parse(coco())
    assert doc.images == (
        CocoImage(id=1, file_name="a.jpg", width=64, height=48, tags=()),
        CocoImage(id=2, file_name="sub/b.png", width=None, height=None, tags=("sky", "grass")),
    )
    first, second = doc.annotations
    assert first == CocoAnnotation(id=10, image_id=1, category_id=1, bbox=(1.0, 2.5, 10.0, 20.0),
                                   segmentation=[[1, 2, 11, 2, 11, 22]], iscrowd=False, area=200.0)
    assert second.bbox is None and second.iscrowd is True and second.segmentation["counts"] == "abc"
    assert doc.categories == (CocoCategory(1, "person", "person"), CocoCategory(2, "sky", None))


def test_bytes_with_bom_and_missing_optional_sections():
    doc = parse_coco_instances(b"\xef\xbb\xbf" + json.dumps({"images": [{"id": 3, "file_name": "c.jpg"}]}).encode())
    assert doc.annotations == () and doc.categories == () and doc.images[0].id == 3


def test_nan_bbox_values_are_kept_for_the_reader_to_judge():
    doc = parse_coco_instances('{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, '
                               '"bbox": [NaN, 0, -5, Infinity]}]}')
    x, y, w, h = doc.annotations[0].bbox
    assert math.isnan(x) and w == -5 and math.isinf(h)


def test_integral_floats_are_ids():
    doc = parse(coco(images=[{"id": 7.0, "file_name": "a.jpg", "width": 10.0, "height": 5}]))
    assert doc.images[0].id == 7 and isinstance(doc.images[0].id, int) and doc.images[0].width == 10


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"images": {"id": 1}}, "'images' must be a list, got an object"),
        ({"images": [{"id": 1, "file_name": "a.jpg"}, "oops"]}, "images[1] must be a JSON object, got a string"),
        ({"images": [{"file_name": "a.jpg"}]}, "images[0]: missing 'id'"),
        ({"images": [{"id": "1", "file_name": "a.jpg"}]}, "images[0]: 'id' must be an integer, got '1'"),
        ({"images": [{"id": True, "file_name": "a.jpg"}]}, "images[0]: 'id' must be an integer"),
        ({"images": [{"id": 5, "file_name": ""}]}, "images[0] (id 5): 'file_name' must be a non-empty string"),
        ({"images": [{"id": 5, "file_name": "a.jpg", "width": -3}]}, "images[0] (id 5): 'width' must be positive"),
        ({"images": [{"id": 5, "file_name": "a.jpg", "tags": "sky"}]}, "images[0] (id 5): 'tags' must be a list"),
        ({"images": [{"id": 5, "file_name": "a.jpg", "tags": ["sky", 3]}]}, "images[0] (id 5): 'tags'"),
        ({"images": [{"id": 5, "file_name": "a"}, {"id": 5, "file_name": "b"}]},
         "images[1]: duplicate id 5 (first at images[0])"),
        ({"annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]},
         "annotations[0] (id 9): 'bbox' must be a list of 4 numbers"),
        ({"annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 2, "3", 4]}]},
         "annotations[0] (id 9): 'bbox' must be a list of 4 numbers"),
        ({"annotations": [{"id": 9, "image_id": 1, "category_id": None}]},
         "annotations[0] (id 9): 'category_id' must be an integer, got None"),
        ({"annotations": [{"id": 9, "image_id": 1, "category_id": 1, "iscrowd": 2}]},
         "annotations[0] (id 9): 'iscrowd' must be 0 or 1"),
        ({"annotations": [{"id": 9, "image_id": 1, "category_id": 1, "segmentation": "poly"}]},
         "annotations[0] (id 9): 'segmentation' must be a list of polygons or an RLE object"),
        ({"annotations": [{"id": 9, "image_id": 1, "category_id": 1, "area": "big"}]},
         "annotations[0] (id 9): 'area' must be a number"),
        ({"categories": [{"id": 1, "name": 4}]}, "categories[0] (id 1): 'name' must be a non-empty string"),
        ({"categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]},
         "categories[1]: duplicate name 'a' (first at categories[0])"),
    ],
)
def test_wrong_types_name_the_entry_and_field(overrides, message):
    with pytest.raises(CocoFormatError) as info:
        parse(coco(**overrides))
    assert message in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got a list"),
        ('{"annotations": []}', "no 'images' list"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_documents(text, message):
    with pytest.raises(CocoFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_coco_instances(text)


def test_size_limit_and_encoding():
    with pytest.raises(CocoFormatError, match="over the limit of 10"):
        parse_coco_instances(json.dumps(coco()), max_bytes=10)
    with pytest.raises(CocoFormatError, match="not UTF-8"):
        parse_coco_instances(b'{"images": ["\xff"]}')


VOC_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotation>
  <folder>VOC2012</folder>
  <filename>2007_000027.jpg</filename>
  <size><width>486</width><height>500</height><depth>3</depth></size>
  <object>
    <name>person</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>174</xmin><ymin>101</ymin><xmax>349</xmax><ymax>351</ymax></bndbox>
  </object>
  <object>
    <name> dog </name><truncated>1</truncated><difficult>1</difficult>
    <bndbox><xmin>1.5</xmin><ymin>2</ymin><xmax>30.0</xmax><ymax>40</ymax></bndbox>
  </object>
  <object><name>cat</name></object>
</annotation>
"""


def test_parse_voc_xml():
    voc = parse_voc_xml(VOC_XML)
    assert (voc.filename, voc.width, voc.height) == ("2007_000027.jpg", 486, 500)
    assert voc.objects == (
        VocObject("person", (174.0, 101.0, 349.0, 351.0), difficult=False, truncated=False),
        VocObject("dog", (1.5, 2.0, 30.0, 40.0), difficult=True, truncated=True),
        VocObject("cat", None),
    )
    assert parse_voc_xml(VOC_XML.encode()) == voc


def test_voc_without_size_or_filename():
    voc = parse_voc_xml("<annotation><size><width>0</width><height>0</height></size></annotation>")
    assert (voc.filename, voc.width, voc.height, voc.objects) == (None, None, None, ())


@pytest.mark.parametrize(
    "text, message",
    [
        ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><annotation>&lol;</annotation>', "DOCTYPE"),
        ('<annotation><!ENTITY x SYSTEM "file:///etc/passwd"></annotation>', "ENTITY"),
        ("<!doctype annotation><annotation/>", "DOCTYPE"),
        ("<annotation><object>", "not well-formed"),
        ("<root/>", "root element must be <annotation>, got <root>"),
        ("<annotation><object><bndbox/></object></annotation>", r"object\[0\]: missing <name>"),
        ("<annotation><object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object></annotation>",
         r"object\[0\] \(dog\): <bndbox> lacks <ymin>"),
        ("<annotation><object><name>dog</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax>"
         "</bndbox></object></annotation>", r"object\[0\] \(dog\): <xmin> must be a number, got 'a'"),
        ("<annotation><object><name>dog</name><difficult>yes</difficult></object></annotation>",
         r"<difficult> must be 0 or 1"),
        ("<annotation><size><width>12.5</width></size></annotation>", "whole number of pixels"),
    ],
)
def test_voc_refuses_unsafe_or_malformed(text, message):
    with pytest.raises(VocFormatError, match=message):
        parse_voc_xml(text)


def test_voc_size_limit():
    with pytest.raises(VocFormatError, match="over the limit"):
        parse_voc_xml(VOC_XML, max_bytes=100)
