"""Safe parsers for image annotation documents: COCO instances JSON and PASCAL VOC XML.

Pure functions from text to small frozen dataclasses; no file or network access. Types are
checked strictly (a ``bool`` is not an int, a string is not a number) and every problem
raises :class:`CocoFormatError` / :class:`VocFormatError` naming the entry and the field::

    doc = parse_coco_instances(text)          # CocoDocument(images, annotations, categories)
    voc = parse_voc_xml(xml_text)             # VocAnnotation(filename, width, height, objects)

Values are checked for *type* only: a box with NaN, a negative size or outside its image is
well-formed here and is judged by the reader (``infra/segmentation_corpus.py``), which drops
it with a reason instead of refusing the whole document.

Safety: input is capped in size (``max_bytes``); JSON nested too deeply is refused instead of
overflowing the stack; VOC XML carrying a ``<!DOCTYPE`` or ``<!ENTITY`` declaration is refused
before it reaches the XML parser (no entity expansion, no external entities), as defusedxml
does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import xml.etree.ElementTree as ET
from typing import Any, Mapping

__all__ = [
    "AnnotationFormatError",
    "CocoFormatError",
    "VocFormatError",
    "CocoImage",
    "CocoAnnotation",
    "CocoCategory",
    "CocoDocument",
    "VocObject",
    "VocAnnotation",
    "parse_coco_instances",
    "parse_voc_xml",
    "DEFAULT_COCO_MAX_BYTES",
    "DEFAULT_VOC_MAX_BYTES",
]

# COCO train2017 instances is ~450 MB; leave headroom, refuse anything absurd.
DEFAULT_COCO_MAX_BYTES = 2 << 30
# A VOC annotation is a few KiB.
DEFAULT_VOC_MAX_BYTES = 1 << 20


class AnnotationFormatError(ValueError):
    """An annotation document is malformed; the message names the entry and the field."""


class CocoFormatError(AnnotationFormatError):
    """A COCO instances document is malformed."""


class VocFormatError(AnnotationFormatError):
    """A PASCAL VOC annotation XML is malformed or unsafe."""


# ----------------------------------------------------------------------------- COCO


@dataclasses.dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int | None = None
    height: int | None = None
    tags: tuple[str, ...] = ()  # per-image tag names (an extension: COCO has no such field)


@dataclasses.dataclass(frozen=True)
class CocoAnnotation:
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float] | None = None  # [x, y, w, h] pixels, as written
    segmentation: Any = None  # polygons (list of lists) or RLE (dict), passed through
    iscrowd: bool = False
    area: float | None = None


@dataclasses.dataclass(frozen=True)
class CocoCategory:
    id: int
    name: str
    supercategory: str | None = None


@dataclasses.dataclass(frozen=True)
class CocoDocument:
    images: tuple[CocoImage, ...]
    annotations: tuple[CocoAnnotation, ...]
    categories: tuple[CocoCategory, ...]


def _bounded_text(data: bytes | str, max_bytes: int, what: str, error: type[Exception]) -> str:
    """``data`` as text, refused (``error``) over ``max_bytes`` or when it is not UTF-8."""
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data)} bytes, over the limit of {max_bytes}")
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise error(f"{what} is not UTF-8: {exc}") from exc
    return data


def parse_coco_instances(data: str | bytes, *, max_bytes: int = DEFAULT_COCO_MAX_BYTES) -> CocoDocument:
    """Parse a COCO instances document (``images``, ``annotations``, ``categories``).

    ``images`` is required; ``annotations`` and ``categories`` may be absent (image-info
    files) and then are empty. Ids must be unique within their list, category names unique.
    Unknown top-level keys and unknown entry fields (``info``, ``licenses``, ``coco_url``...)
    are ignored. Raises :class:`CocoFormatError`.
    """
    data = _bounded_text(data, max_bytes, "COCO document", CocoFormatError)
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise CocoFormatError(f"COCO document is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise CocoFormatError("COCO document is nested too deeply") from exc
    if not isinstance(doc, dict):
        raise CocoFormatError(f"COCO document must be a JSON object, got {_json_type(doc)}")
    if "images" not in doc:
        raise CocoFormatError("COCO document has no 'images' list")
    images = tuple(_coco_image(e, i) for i, e in enumerate(_list_field(doc, "images")))
    annotations = tuple(_coco_annotation(e, i) for i, e in enumerate(_list_field(doc, "annotations")))
    categories = tuple(_coco_category(e, i) for i, e in enumerate(_list_field(doc, "categories")))
    _unique(images, "images", "id")
    _unique(annotations, "annotations", "id")
    _unique(categories, "categories", "id")
    _unique(categories, "categories", "name")
    return CocoDocument(images=images, annotations=annotations, categories=categories)


def _list_field(doc: Mapping[str, Any], name: str) -> list[Any]:
    value = doc.get(name, [])
    if not isinstance(value, list):
        raise CocoFormatError(f"COCO '{name}' must be a list, got {_json_type(value)}")
    return value


def _unique(entries: tuple[Any, ...], section: str, field: str) -> None:
    seen: dict[Any, int] = {}
    for index, entry in enumerate(entries):
        value = getattr(entry, field)
        if value in seen:
            raise CocoFormatError(
                f"{section}[{index}]: duplicate {field} {value!r} (first at {section}[{seen[value]}])"
            )
        seen[value] = index


def _entry(value: Any, section: str, index: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CocoFormatError(f"{section}[{index}] must be a JSON object, got {_json_type(value)}")
    return value


def _where(section: str, index: int, entry: Mapping[str, Any]) -> str:
    ident = entry.get("id")
    return f"{section}[{index}] (id {ident})" if _is_int(ident) else f"{section}[{index}]"


def _coco_image(value: Any, index: int) -> CocoImage:
    entry = _entry(value, "images", index)
    where = _where("images", index, entry)
    ident = _int(entry, "id", where)
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name.strip():
        raise CocoFormatError(f"{where}: 'file_name' must be a non-empty string, got {file_name!r}")
    width = _optional_size(entry, "width", where)
    height = _optional_size(entry, "height", where)
    tags = entry.get("tags", [])
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise CocoFormatError(f"{where}: 'tags' must be a list of non-empty strings, got {tags!r}")
    return CocoImage(id=ident, file_name=file_name, width=width, height=height, tags=tuple(t.strip() for t in tags))


def _coco_annotation(value: Any, index: int) -> CocoAnnotation:
    entry = _entry(value, "annotations", index)
    where = _where("annotations", index, entry)
    ident = _int(entry, "id", where)
    image_id = _int(entry, "image_id", where)
    category_id = _int(entry, "category_id", where)
    bbox = entry.get("bbox")
    if bbox is not None:
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise CocoFormatError(f"{where}: 'bbox' must be a list of 4 numbers [x, y, w, h], got {bbox!r}")
        bbox = tuple(float(v) for v in bbox)
    segmentation = entry.get("segmentation")
    if segmentation is not None and not isinstance(segmentation, (list, dict)):
        raise CocoFormatError(
            f"{where}: 'segmentation' must be a list of polygons or an RLE object, got {_json_type(segmentation)}"
        )
    iscrowd = entry.get("iscrowd", 0)
    if iscrowd is None:
        iscrowd = 0
    if isinstance(iscrowd, bool):
        crowd = iscrowd
    elif _is_int(iscrowd) and iscrowd in (0, 1):
        crowd = bool(iscrowd)
    else:
        raise CocoFormatError(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
    area = entry.get("area")
    if area is not None:
        if not _is_number(area):
            raise CocoFormatError(f"{where}: 'area' must be a number, got {area!r}")
        area = float(area)
    return CocoAnnotation(id=ident, image_id=image_id, category_id=category_id, bbox=bbox,
                          segmentation=segmentation, iscrowd=crowd, area=area)


def _coco_category(value: Any, index: int) -> CocoCategory:
    entry = _entry(value, "categories", index)
    where = _where("categories", index, entry)
    ident = _int(entry, "id", where)
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CocoFormatError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    supercategory = entry.get("supercategory")
    if supercategory is not None and not isinstance(supercategory, str):
        raise CocoFormatError(f"{where}: 'supercategory' must be a string, got {supercategory!r}")
    return CocoCategory(id=ident, name=name.strip(), supercategory=supercategory)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(entry: Mapping[str, Any], field: str, where: str) -> int:
    if field not in entry:
        raise CocoFormatError(f"{where}: missing '{field}'")
    value = entry[field]
    if _is_int(value):
        return value
    # 12.0 from tools that write every number as a float is an int in disguise
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise CocoFormatError(f"{where}: '{field}' must be an integer, got {value!r}")


def _optional_size(entry: Mapping[str, Any], field: str, where: str) -> int | None:
    if entry.get(field) is None:
        return None
    value = _int(entry, field, where)
    if value <= 0:
        raise CocoFormatError(f"{where}: '{field}' must be positive, got {value}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------- PASCAL VOC


@dataclasses.dataclass(frozen=True)
class VocObject:
    name: str
    # (xmin, ymin, xmax, ymax) as written: VOC's 1-based, inclusive pixel corners; None when
    # the object has no <bndbox>.
    bbox: tuple[float, float, float, float] | None
    difficult: bool = False
    truncated: bool = False


@dataclasses.dataclass(frozen=True)
class VocAnnotation:
    filename: str | None
    width: int | None
    height: int | None
    objects: tuple[VocObject, ...]


def parse_voc_xml(data: str | bytes, *, max_bytes: int = DEFAULT_VOC_MAX_BYTES) -> VocAnnotation:
    """Parse one PASCAL VOC ``<annotation>`` document. Raises :class:`VocFormatError`.

    Refuses documents over ``max_bytes`` and any with a DOCTYPE or ENTITY declaration.
    ``<size>`` is optional (width/height None when absent or 0, as some exporters write);
    ``difficult``/``truncated`` default to 0. Numbers may be written as floats ("12.0").
    """
    text = _bounded_text(data, max_bytes, "VOC annotation", VocFormatError)
    upper = text.upper()
    for marker in ("<!DOCTYPE", "<!ENTITY"):
        if marker in upper:
            raise VocFormatError(f"VOC annotation contains a {marker[2:]} declaration; refused (unsafe XML)")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise VocFormatError(f"VOC annotation is not well-formed XML: {exc}") from exc
    if root.tag != "annotation":
        raise VocFormatError(f"VOC root element must be <annotation>, got <{root.tag}>")
    filename = _xml_text(root, "filename")
    width = height = None
    size = root.find("size")
    if size is not None:
        width = _xml_size(size, "width")
        height = _xml_size(size, "height")
    objects = []
    for index, obj in enumerate(root.findall("object")):
        where = f"object[{index}]"
        name = _xml_text(obj, "name")
        if not name:
            raise VocFormatError(f"{where}: missing <name>")
        where = f"object[{index}] ({name})"
        bbox = None
        box = obj.find("bndbox")
        if box is not None:
            bbox = tuple(_xml_float(box, f, where) for f in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(VocObject(name=name, bbox=bbox, difficult=_xml_flag(obj, "difficult", where),
                                 truncated=_xml_flag(obj, "truncated", where)))
    return VocAnnotation(filename=filename, width=width, height=height, objects=tuple(objects))


def _xml_text(parent: ET.Element, tag: str) -> str | None:
    node = parent.find(tag)
    if node is None or node.text is None:
        return None
    return node.text.strip() or None


def _xml_float(parent: ET.Element, tag: str, where: str) -> float:
    text = _xml_text(parent, tag)
    if text is None:
        raise VocFormatError(f"{where}: <bndbox> lacks <{tag}>")
    try:
        return float(text)
    except ValueError:
        raise VocFormatError(f"{where}: <{tag}> must be a number, got {text!r}") from None


def _xml_size(size: ET.Element, tag: str) -> int | None:
    text = _xml_text(size, tag)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise VocFormatError(f"<size>: <{tag}> must be a number, got {text!r}") from None
    if not math.isfinite(value) or not value.is_integer() or value < 0:
        raise VocFormatError(f"<size>: <{tag}> must be a whole number of pixels, got {text!r}")
    return int(value) or None


def _xml_flag(parent: ET.Element, tag: str, where: str) -> bool:
    text = _xml_text(parent, tag)
    if text is None:
        return False
    if text in ("0", "1"):
        return text == "1"
    raise VocFormatError(f"{where}: <{tag}> must be 0 or 1, got {text!r}")
