"""Segmentation corpus readers: COCO instances JSON or a PASCAL VOC folder -> work items.

:func:`read_segmentation_corpus` returns a ``pyarrow.Table`` with
:data:`SEGMENTATION_ITEM_SCHEMA`, one row per image, sorted by ``key``:

==============  ======================  ===========================================================
column          type                    meaning
==============  ======================  ===========================================================
key             string                  stable, safe id (:func:`labelmill.infra.corpus.is_safe_key`):
                                        the image's path below the images folder without extension
uri             string                  fsspec URL of the image; null when it cannot be derived
fingerprint     string                  ``stat:``/``sha1:`` fingerprint of the image file; null
                                        when the file is missing
image_id        int64                   COCO image id; VOC: index of the XML in sorted order
file_name       string                  as written in the annotation
width, height   int32                   from the annotation; null when absent
boxes           list<list<float64>>     kept thing boxes, ``[x, y, w, h]`` pixels (COCO convention)
box_categories  list<int32>             category id of each box
box_ids         list<int64>             annotation id of each box (VOC: running object number)
tags            list<string>            stuff / image-level tag names, sorted, unique
dropped         list<string>            one reason per dropped box or tag, naming the annotation
status          string                  ``pending`` or ``failed``
reason          string                  why the row failed, else null
==============  ======================  ===========================================================

Nothing is lost silently: a bad box or tag is dropped with a reason in ``dropped``; a missing
image, an unreadable VOC XML, a duplicate key or an image with neither boxes nor tags fails
its row; annotations pointing at an image id that is not in ``images`` become a failed row
``__unknown_image_<id>``. Images are not decoded here (decode failures happen in the
pipeline); their existence is checked against one recursive listing of the images folder.
Rules and layouts are described in ``docs/segmentation.md`` ("Inputs").
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import posixpath
from typing import Any, Iterable, Literal, Sequence

import pyarrow as pa

from labelmill.infra import storage
from labelmill.infra.corpus import CorpusError, key_from_relpath, key_problem
from labelmill.infra.formats.coco import (
    AnnotationFormatError,
    CocoFormatError,
    parse_coco_instances,
    parse_voc_xml,
)
from labelmill.infra.formats.items import STATUS_FAILED, STATUS_PENDING
from labelmill.infra.storage import FingerprintMode, file_fingerprint

__all__ = [
    "SEGMENTATION_ITEM_SCHEMA",
    "VOC_CLASSES",
    "SegmentationCorpusError",
    "SegmentationInputConfig",
    "read_segmentation_corpus",
    "read_coco_corpus",
    "read_voc_corpus",
    "detect_segmentation_kind",
]

logger = logging.getLogger(__name__)

SEGMENTATION_ITEM_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("fingerprint", pa.string()),
        pa.field("image_id", pa.int64()),
        pa.field("file_name", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("boxes", pa.list_(pa.list_(pa.float64()))),
        pa.field("box_categories", pa.list_(pa.int32())),
        pa.field("box_ids", pa.list_(pa.int64())),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("dropped", pa.list_(pa.string())),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
    ]
)

# PASCAL VOC's 20 classes in their canonical order; category id = position + 1 (0 = background).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


class SegmentationCorpusError(CorpusError):
    """The segmentation source as a whole cannot be read (missing, unknown layout, bad config)."""


@dataclasses.dataclass
class SegmentationInputConfig:
    """How annotations become boxes and tags."""

    # Category names whose annotations give boxes; None: every category with at least one
    # box annotation (minus `stuff`); all other categories are then stuff.
    things: tuple[str, ...] | None = None
    # Category names whose annotations give image-level tags instead of boxes.
    stuff: tuple[str, ...] = ()
    # Boxes narrower or lower than this (pixels, after clipping) are dropped.
    min_box_size: float = 1.0
    # A box partly outside the image is clipped to it (False: dropped). Wholly outside: dropped.
    clip_boxes: bool = True
    # COCO iscrowd=1 boxes are kept (False: dropped with a reason).
    include_crowd: bool = False
    # VOC objects marked difficult are kept (False: dropped with a reason).
    include_difficult: bool = True
    # VOC class names; category id = position + 1.
    voc_classes: tuple[str, ...] = VOC_CLASSES

    def __post_init__(self) -> None:
        if self.things is not None:
            self.things = _names(self.things, "things")
        self.stuff = _names(self.stuff, "stuff")
        self.voc_classes = _names(self.voc_classes, "voc_classes")
        if not self.voc_classes:
            raise ValueError("voc_classes must list at least one class name")
        both = sorted(set(self.things or ()) & set(self.stuff))
        if both:
            raise ValueError(f"things and stuff must not overlap; both list {', '.join(map(repr, both))}")
        size = self.min_box_size
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not math.isfinite(size) or size < 0:
            raise ValueError(f"min_box_size must be a finite number of pixels >= 0, got {size!r}")
        self.min_box_size = float(size)
        for name in ("clip_boxes", "include_crowd", "include_difficult"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


def _names(value: Any, field: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{field} must be a list of category names, got {value!r}")
    out = []
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{field}: {name!r} is not a category name")
        if name.strip() in out:
            raise ValueError(f"{field}: {name!r} is listed twice")
        out.append(name.strip())
    return tuple(out)


# ----------------------------------------------------------------------------- entry points

SegmentationKind = Literal["coco", "voc"]


def detect_segmentation_kind(source: str) -> SegmentationKind:
    """``coco`` for a ``.json`` file, ``voc`` for a folder with ``Annotations/`` and ``JPEGImages/``."""
    fs, path = _filesystem(source)
    if path.lower().endswith(".json"):
        if not fs.isfile(path):
            raise SegmentationCorpusError(f"COCO annotation file {source} does not exist")
        return "coco"
    if fs.isdir(path):
        base = path.rstrip("/")
        missing = [d for d in ("Annotations", "JPEGImages") if not fs.isdir(f"{base}/{d}")]
        if not missing:
            return "voc"
        raise SegmentationCorpusError(
            f"{source} is a folder but not a PASCAL VOC one: it lacks {' and '.join(missing)}/"
        )
    what = "does not exist" if not fs.exists(path) else "is neither a .json file nor a folder"
    raise SegmentationCorpusError(
        f"segmentation source {source} {what}; give a COCO instances .json or a VOC folder "
        "(with Annotations/ and JPEGImages/)"
    )


def read_segmentation_corpus(
    source: str,
    *,
    images: str | None = None,
    config: SegmentationInputConfig = SegmentationInputConfig(),
    fingerprint: FingerprintMode = "stat",
) -> pa.Table:
    """Work items for a COCO instances JSON or a VOC folder at ``source`` (any fsspec URL).

    ``images``: the folder the image file names are relative to (COCO default: the JSON's
    folder; VOC default: ``<source>/JPEGImages``). Raises :class:`SegmentationCorpusError`
    (or :class:`CocoFormatError` for a malformed COCO document) when the source as a whole is
    unusable; per-image and per-box problems become failed rows and ``dropped`` reasons.
    """
    if not source:
        raise SegmentationCorpusError("segmentation source is empty; give a COCO .json or a VOC folder")
    if fingerprint not in ("stat", "sha1"):
        raise ValueError(f"fingerprint must be 'stat' or 'sha1', got {fingerprint!r}")
    if detect_segmentation_kind(source) == "coco":
        return read_coco_corpus(source, images=images, config=config, fingerprint=fingerprint)
    return read_voc_corpus(source, images=images, config=config, fingerprint=fingerprint)


# ----------------------------------------------------------------------------- common model


@dataclasses.dataclass
class _Image:
    image_id: int
    file_name: str | None
    width: int | None
    height: int | None
    where: str  # for messages: "images[3] (id 42)", "Annotations/a.xml"
    relpath: str | None = None  # below the images folder; None when unusable
    key: str | None = None
    tags: tuple[str, ...] = ()
    problem: str | None = None  # the item cannot be processed at all


@dataclasses.dataclass
class _Ann:
    id: int
    image_id: int
    category: int | str  # COCO: category id; VOC: class name
    bbox: tuple[float, float, float, float] | None  # x, y, w, h
    where: str  # "annotation 17", "object 2 (id 9) of Annotations/a.xml"
    iscrowd: bool = False
    difficult: bool = False


@dataclasses.dataclass
class _SegRow:
    key: str
    uri: str | None = None
    fingerprint: str | None = None
    image_id: int | None = None
    file_name: str | None = None
    width: int | None = None
    height: int | None = None
    boxes: list[list[float]] = dataclasses.field(default_factory=list)
    box_categories: list[int] = dataclasses.field(default_factory=list)
    box_ids: list[int] = dataclasses.field(default_factory=list)
    tags: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)
    status: str = STATUS_PENDING
    reason: str | None = None
    where: str = ""


# ----------------------------------------------------------------------------- COCO


def read_coco_corpus(
    source: str,
    *,
    images: str | None = None,
    config: SegmentationInputConfig = SegmentationInputConfig(),
    fingerprint: FingerprintMode = "stat",
) -> pa.Table:
    """Work items for a COCO instances JSON (see the module docstring)."""
    try:
        data = storage.read_bytes(source)
    except FileNotFoundError as exc:
        raise SegmentationCorpusError(f"COCO annotation file {source} does not exist") from exc
    except OSError as exc:
        raise SegmentationCorpusError(f"cannot read {source}: {exc}") from exc
    try:
        doc = parse_coco_instances(data)
    except CocoFormatError as exc:
        raise CocoFormatError(f"{source}: {exc}") from exc
    categories = {c.id: c.name for c in doc.categories}
    coco_images = [
        _Image(image_id=im.id, file_name=im.file_name, width=im.width, height=im.height,
               where=f"images[{i}] (id {im.id})", tags=im.tags)
        for i, im in enumerate(doc.images)
    ]
    anns = [
        _Ann(id=a.id, image_id=a.image_id, category=a.category_id, bbox=a.bbox,
             where=f"annotation {a.id}", iscrowd=a.iscrowd)
        for a in doc.annotations
    ]
    root = images if images is not None else _parent_url(source)
    return _build(coco_images, anns, categories, root, config, fingerprint)


# ----------------------------------------------------------------------------- PASCAL VOC


def read_voc_corpus(
    source: str,
    *,
    images: str | None = None,
    config: SegmentationInputConfig = SegmentationInputConfig(),
    fingerprint: FingerprintMode = "stat",
) -> pa.Table:
    """Work items for a PASCAL VOC folder: ``Annotations/*.xml`` + ``JPEGImages/``.

    One item per XML (sorted by name; ``image_id`` = position). The image is the XML's
    ``<filename>`` (else ``<xml stem>.jpg``) under ``JPEGImages/``; when that name is not
    there but ``<xml stem>`` with the same extension is, that file is used. VOC corners
    (1-based, inclusive) become ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``.
    Category ids come from ``config.voc_classes`` (position + 1). A malformed or unsafe XML
    fails its item.
    """
    base = source.rstrip("/")
    ann_url = storage.join(base, "Annotations")
    xml_urls = storage.list_files(ann_url, "*.xml")
    if not xml_urls:
        logger.warning("no annotation XMLs found in %s", ann_url)
    fs, _ = _filesystem(ann_url)
    paths = [_filesystem(u)[1] for u in xml_urls]
    contents = fs.cat(paths, on_error="return") if paths else {}
    categories = {i + 1: name for i, name in enumerate(config.voc_classes)}
    root = images if images is not None else storage.join(base, "JPEGImages")
    listing = _list_images(root)
    voc_images: list[_Image] = []
    anns: list[_Ann] = []
    next_id = 1
    for index, (url, path) in enumerate(zip(xml_urls, paths)):
        name = url.rsplit("/", 1)[-1]
        stem = name[: -len(".xml")]
        where = f"Annotations/{name}"
        image = _Image(image_id=index, file_name=None, width=None, height=None, where=where,
                       key=key_from_relpath(stem))
        voc_images.append(image)
        data = contents.get(path)
        if isinstance(data, BaseException) or data is None:
            image.problem = f"{where}: cannot read: {data}"
            continue
        try:
            voc = parse_voc_xml(data)
        except AnnotationFormatError as exc:
            image.problem = f"{where}: {exc}"
            continue
        image.width, image.height = voc.width, voc.height
        file_name = voc.filename or f"{stem}.jpg"
        image.file_name = file_name
        image.relpath = _voc_relpath(file_name, stem, listing)
        for obj_index, obj in enumerate(voc.objects):
            bbox = None
            if obj.bbox is not None:
                xmin, ymin, xmax, ymax = obj.bbox
                bbox = (xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0)
            anns.append(_Ann(id=next_id, image_id=index, category=obj.name, bbox=bbox,
                             where=f"object {obj_index} (id {next_id}) of {where}", difficult=obj.difficult))
            next_id += 1
    return _build(voc_images, anns, categories, root, config, fingerprint, listing=listing)


def _voc_relpath(file_name: str, stem: str, listing: dict[str, Any]) -> str:
    rel = file_name.replace("\\", "/")
    if rel in listing:
        return rel
    ext = posixpath.splitext(rel)[1] or ".jpg"
    fallback = stem + ext
    return fallback if fallback in listing else rel


# ----------------------------------------------------------------------------- rows


def _build(
    images: list[_Image],
    anns: list[_Ann],
    categories: dict[int, str],
    root: str,
    config: SegmentationInputConfig,
    mode: FingerprintMode,
    *,
    listing: dict[str, tuple[str, dict[str, Any]]] | None = None,
) -> pa.Table:
    by_name = {name: cid for cid, name in categories.items()}
    things, stuff = _split(anns, categories, by_name, config)
    if listing is None:
        listing = _list_images(root)
    fs, _ = _filesystem(root)

    by_image: dict[int, list[_Ann]] = {}
    for ann in anns:
        by_image.setdefault(ann.image_id, []).append(ann)
    known_ids = {im.image_id for im in images}

    rows: list[_SegRow] = []
    for image in images:
        row = _SegRow(key=image.key or "", image_id=image.image_id, file_name=image.file_name,
                      width=image.width, height=image.height, where=image.where)
        rows.append(row)
        if image.problem is not None:
            row.status, row.reason = STATUS_FAILED, image.problem
            continue
        relpath, problem = _safe_relpath(image.relpath or image.file_name or "")
        if row.key == "":
            row.key = key_from_relpath(posixpath.splitext(relpath)[0]) if relpath else _invalid_key(image)
        if problem is not None:
            row.status, row.reason = STATUS_FAILED, f"{image.where}: {problem}"
            continue
        row.uri = storage.join(root, relpath)
        _fill_boxes_and_tags(row, image, by_image.get(image.image_id, []), categories, by_name, things, stuff, config)
        found = listing.get(relpath)
        if found is None:
            row.status, row.reason = STATUS_FAILED, f"{image.where}: missing image file: {row.uri}"
            continue
        path, info = found
        row.fingerprint = file_fingerprint(row.uri, mode=mode, info=info, fs=fs, path=path)
        if not row.boxes and not row.tags:
            row.status, row.reason = STATUS_FAILED, f"{image.where}: no boxes or tags"
            if row.dropped:  # say why: every annotation it had was dropped
                more = f"; and {len(row.dropped) - 3} more" if len(row.dropped) > 3 else ""
                row.reason += f" (all {len(row.dropped)} dropped: {'; '.join(row.dropped[:3])}{more})"

    for image_id in sorted(set(by_image) - known_ids):
        orphans = by_image[image_id]
        rows.append(_SegRow(
            key=f"__unknown_image_{image_id}", image_id=image_id, status=STATUS_FAILED,
            dropped=[f"{a.where}: image id {image_id} is not in 'images'" for a in orphans],
            reason=f"{len(orphans)} annotation(s) refer to image id {image_id}, which is not in 'images'",
            where=f"image id {image_id}",
        ))
    return _to_table(rows)


def _split(
    anns: Sequence[_Ann], categories: dict[int, str], by_name: dict[str, int], config: SegmentationInputConfig
) -> tuple[set[str], set[str]]:
    """(thing names, stuff names) for this corpus; config names must be known categories."""
    for field in ("things", "stuff"):
        unknown = [n for n in (getattr(config, field) or ()) if n not in by_name]
        if unknown:
            known = sorted(by_name)
            shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
            raise SegmentationCorpusError(
                f"config {field}: unknown category {', '.join(map(repr, unknown))}; known: {shown or 'none'}"
            )
    stuff = set(config.stuff)
    if config.things is not None:
        return set(config.things), stuff
    with_boxes = set()
    for ann in anns:
        if ann.bbox is None:
            continue
        name = categories.get(ann.category) if isinstance(ann.category, int) else ann.category
        if name in by_name:
            with_boxes.add(name)
    things = with_boxes - stuff
    return things, stuff | (set(by_name) - things)


def _fill_boxes_and_tags(
    row: _SegRow,
    image: _Image,
    anns: Iterable[_Ann],
    categories: dict[int, str],
    by_name: dict[str, int],
    things: set[str],
    stuff: set[str],
    config: SegmentationInputConfig,
) -> None:
    tags: set[str] = set()
    for ann in anns:
        if isinstance(ann.category, int):
            name = categories.get(ann.category)
            if name is None:
                row.dropped.append(f"{ann.where}: unknown category id {ann.category}")
                continue
        else:
            name = ann.category
            if name not in by_name:
                row.dropped.append(f"{ann.where}: unknown category {name!r}")
                continue
        if name in stuff:
            tags.add(name)
            continue
        if name not in things:
            row.dropped.append(f"{ann.where}: category {name!r} is in neither things nor stuff")
            continue
        if ann.iscrowd and not config.include_crowd:
            row.dropped.append(f"{ann.where}: crowd annotation (iscrowd=1; include_crowd is off)")
            continue
        if ann.difficult and not config.include_difficult:
            row.dropped.append(f"{ann.where}: difficult object (include_difficult is off)")
            continue
        if ann.bbox is None:
            row.dropped.append(f"{ann.where}: {name!r} is a thing category but the annotation has no bbox")
            continue
        box, problem = _check_box(ann.bbox, image.width, image.height, config)
        if problem is not None:
            row.dropped.append(f"{ann.where}: {problem}")
            continue
        row.boxes.append(box)
        row.box_categories.append(by_name[name])
        row.box_ids.append(ann.id)
    for tag in image.tags:
        if tag not in by_name:
            row.dropped.append(f"tag {tag!r} of {image.where}: unknown category")
        elif tag in things:
            row.dropped.append(f"tag {tag!r} of {image.where}: a thing category (things come from boxes)")
        elif tag not in stuff:
            row.dropped.append(f"tag {tag!r} of {image.where}: category is in neither things nor stuff")
        else:
            tags.add(tag)
    row.tags = sorted(tags)


def _check_box(
    bbox: tuple[float, float, float, float], width: int | None, height: int | None, config: SegmentationInputConfig
) -> tuple[list[float], str | None]:
    """(clipped [x, y, w, h], None) or (_, why the box is dropped)."""
    x, y, w, h = bbox
    shown = "[" + ", ".join(f"{v:g}" for v in bbox) + "]"
    if not all(math.isfinite(v) for v in bbox):
        return [], f"bbox {shown} is not finite"
    if w <= 0 or h <= 0:
        return [], f"bbox {shown} has zero or negative size"
    x0, y0, x1, y1 = x, y, x + w, y + h
    right = float(width) if width is not None else math.inf
    bottom = float(height) if height is not None else math.inf
    image = f"{width}x{height}" if width is not None and height is not None else "image"
    if x1 <= 0 or y1 <= 0 or x0 >= right or y0 >= bottom:
        return [], f"bbox {shown} is wholly outside the {image} image"
    if x0 < 0 or y0 < 0 or x1 > right or y1 > bottom:
        if not config.clip_boxes:
            return [], f"bbox {shown} extends outside the {image} image (clip_boxes is off)"
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, right), min(y1, bottom)
    if x1 - x0 < config.min_box_size or y1 - y0 < config.min_box_size:
        return [], f"bbox {shown} is smaller than min_box_size {config.min_box_size:g} px"
    return [x0, y0, x1 - x0, y1 - y0], None


def _safe_relpath(file_name: str) -> tuple[str, str | None]:
    """(normalised path below the images folder, problem or None)."""
    rel = file_name.replace("\\", "/").strip()
    if not rel:
        return "", "empty file_name"
    if rel.startswith("/") or "://" in rel:
        return "", f"file_name {file_name!r} must be relative to the images folder"
    norm = posixpath.normpath(rel)
    if norm in (".", "..") or norm.startswith("../"):
        return "", f"file_name {file_name!r} escapes the images folder"
    return norm, None


def _invalid_key(image: _Image) -> str:
    return f"__invalid_image_{image.image_id}"


def _to_table(rows: list[_SegRow]) -> pa.Table:
    """Fail later duplicates of a key (input order), then sort by key."""
    first: dict[str, _SegRow] = {}
    for row in rows:
        problem = key_problem(row.key)
        if problem is not None:  # a derived key is well-formed but may be too long or too deep
            row.key = f"__invalid_image_{row.image_id}"
            if row.status != STATUS_FAILED:
                row.status, row.reason = STATUS_FAILED, f"file_name {row.file_name!r}: {problem}"
        if row.key in first:
            original = first[row.key]
            new_key = f"{row.key}__duplicate_{row.image_id}"
            counter = 2
            while new_key in first:
                new_key = f"{row.key}__duplicate_{row.image_id}_{counter}"
                counter += 1
            problem = f"{row.where}: duplicate key {row.key!r} (first at {original.where}, file_name {original.file_name!r})"
            if row.status == STATUS_FAILED and row.reason:
                problem += f"; also {row.reason}"
            row.key, row.status, row.reason = new_key, STATUS_FAILED, problem
        first[row.key] = row
    rows = sorted(rows, key=lambda r: r.key)
    columns = {name: [getattr(r, name) for r in rows] for name in SEGMENTATION_ITEM_SCHEMA.names}
    return pa.table(columns, schema=SEGMENTATION_ITEM_SCHEMA)


# ----------------------------------------------------------------------------- fsspec helpers


def _filesystem(url: str):
    try:
        return storage.filesystem(url)
    except (ValueError, ImportError) as exc:
        raise SegmentationCorpusError(f"cannot open {url}: {exc}") from exc


def _parent_url(url: str) -> str:
    if "://" in url:
        protocol, rest = url.split("://", 1)
        return f"{protocol}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(url) or "."


def _list_images(root: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """{path below ``root``: (filesystem path, fsspec info)} from one recursive listing."""
    fs, path = _filesystem(root)
    base = path.rstrip("/")
    try:
        fs.invalidate_cache(base)
    except Exception:  # noqa: BLE001 - cache invalidation is best effort
        pass
    if not fs.isdir(base):
        raise SegmentationCorpusError(f"images folder {root} does not exist (pass images=... to point at it)")
    try:
        found = fs.find(base, detail=True)
    except OSError as exc:
        raise SegmentationCorpusError(f"cannot list images folder {root}: {exc}") from exc
    prefix = base + "/"
    out = {}
    for file_path, info in found.items():
        if info.get("type", "file") != "file" or not file_path.startswith(prefix):
            continue
        out[file_path[len(prefix):]] = (file_path, info)
    return out
