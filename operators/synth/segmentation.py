"""Synthetic check data for the segmentation pipeline: textured things on textured stuff.

``write_segmentation_corpus(out_dir, cfg)`` writes, under ``out_dir`` (any fsspec URL; every
file atomically)::

    images/<name>.jpg        the RGB image (JPEG, cfg.jpeg_quality)
    gt/<name>_sem.png        uint8 semantic mask: the pixel's category id (see below)
    gt/<name>_inst.png       uint16 instance mask: a thing's ``instance_id``, 0 on stuff
    annotations.json         COCO instances with per-image ``tags`` (the stuff classes present)
    synth_config.yaml        the resolved SegmentationSynthConfig

``<name>`` is ``synth_<image index:06d>``.

Category ids (one layout for COCO ``category_id`` and the sem mask, so the sem value of a pixel
is the category id of what covers it, as DESIGN §5 asks of segmentation samples):

* ``1 .. T``          thing classes, in ``cfg.thing_classes`` order (supercategory "thing")
* ``T+1 .. T+S``      stuff classes, in ``cfg.stuff_classes`` order (supercategory "stuff")
* ``0``               never written (every pixel is covered by a stuff region); reserved for
                      "background" as in the pipeline's masks; ``255`` stays "ignore".

Scene of one image: 1..3 stuff regions are horizontal bands with wavy borders, each a distinct
stuff class with its own base colour and texture; then ``objects_min..objects_max`` things
(filled disc / square / triangle / diamond / ellipse, rotated), painted larger first so a
smaller thing lies on top of a larger one. A thing that would stay less than
``min_visible_fraction`` visible is removed before anything is rendered. Masks and boxes are
the *visible* pixels. Image ``i`` draws everything from ``SeedSequence(seed, spawn_key=(i,))``,
so the same config writes the same bytes and a larger corpus starts with the smaller one.
Schema and details: docs/segmentation.md ("Synthetic check data").
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import time
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from labelmill.infra import storage
from labelmill.infra.formats.config_yaml import dump_yaml
from labelmill.operators.common.decode import encode_jpeg

__all__ = [
    "SegmentationSynthConfig",
    "SegmentationCorpusSummary",
    "SyntheticSegmentationImage",
    "SHAPES",
    "synthesize_segmentation_image",
    "coco_document",
    "image_record",
    "image_name",
    "write_segmentation_corpus",
]

SHAPES = ("disc", "square", "triangle", "diamond", "ellipse")  # a thing class named so gets that shape
THING_TEXTURES = ("stripes", "checker", "noise")
STUFF_TEXTURES = {"grass": "blades", "sky": "gradient", "water": "waves"}  # other names cycle over these
_STUFF_TEXTURE_CYCLE = ("blades", "gradient", "waves", "noise")


@dataclasses.dataclass
class SegmentationSynthConfig:
    """Knobs of :func:`write_segmentation_corpus`. Sizes are fractions of the image's shorter side."""

    num_images: int = 8  # images to write
    width: int = 160  # image width in pixels
    height: int = 120  # image height in pixels
    seed: int = 0  # master seed; image i uses SeedSequence(seed, spawn_key=(i,))
    thing_classes: list[str] = dataclasses.field(default_factory=lambda: ["disc", "square", "triangle"])
    stuff_classes: list[str] = dataclasses.field(default_factory=lambda: ["grass", "sky", "water"])
    stuff_regions_min: int = 1  # stuff bands per image, distinct classes
    stuff_regions_max: int = 3
    objects_min: int = 1  # things drawn per image (before hidden ones are removed)
    objects_max: int = 4
    object_size_min: float = 0.2  # a thing's extent (circumscribed diameter) / shorter image side
    object_size_max: float = 0.5
    min_visible_fraction: float = 0.3  # a thing less visible than this (of its full area) is removed
    texture_strength: float = 0.5  # 0: flat colours; 1: textures swing about +-70 grey levels
    colour_jitter: float = 12.0  # per-image uniform jitter of a class's base colour, grey levels
    jpeg_quality: int = 92  # JPEG quality of images/*.jpg

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, what: str) -> None:
            if not ok:
                raise ValueError(f"synth.{field} {what}, got {getattr(self, field)!r}")

        need(self.num_images >= 1, "num_images", "must be >= 1")
        need(self.seed >= 0, "seed", "must be >= 0")
        for f in ("width", "height"):
            need(16 <= getattr(self, f) <= 8192, f, "must be in [16, 8192]")
        for f in ("thing_classes", "stuff_classes"):
            names = getattr(self, f)
            need(len(names) >= 1, f, "must name at least one class")
            need(all(isinstance(n, str) and n.strip() for n in names), f, "must hold non-empty strings")
            need(len(set(names)) == len(names), f, "must not repeat a name")
        both = sorted(set(self.thing_classes) & set(self.stuff_classes))
        need(not both, "stuff_classes", f"shares names {both} with thing_classes")
        need(len(self.thing_classes) + len(self.stuff_classes) <= 254, "stuff_classes",
             "plus thing_classes must be <= 254 classes (uint8 sem mask, 255 = ignore)")  # fmt: skip
        need(self.stuff_regions_min >= 1, "stuff_regions_min", "must be >= 1")
        need(self.stuff_regions_max >= self.stuff_regions_min, "stuff_regions_max", "must be >= stuff_regions_min")
        need(self.stuff_regions_max <= min(len(self.stuff_classes), 8), "stuff_regions_max",
             f"must be <= the number of stuff classes ({len(self.stuff_classes)}) and <= 8")  # fmt: skip
        need(self.objects_min >= 0, "objects_min", "must be >= 0")
        need(self.objects_max >= self.objects_min, "objects_max", "must be >= objects_min")
        need(self.objects_max <= 64, "objects_max", "must be <= 64")
        need(0.02 <= self.object_size_min <= 1.0, "object_size_min", "must be in [0.02, 1]")
        need(self.object_size_min <= self.object_size_max <= 1.0, "object_size_max", "must be in [object_size_min, 1]")
        need(0.0 <= self.min_visible_fraction <= 1.0, "min_visible_fraction", "must be in [0, 1]")
        need(0.0 <= self.texture_strength <= 1.0, "texture_strength", "must be in [0, 1]")
        need(0.0 <= self.colour_jitter <= 64.0, "colour_jitter", "must be in [0, 64]")
        need(0 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in [0, 100]")

    # ---- category id layout (documented in the module docstring)
    def thing_category_id(self, index: int) -> int:
        return 1 + index

    def stuff_category_id(self, index: int) -> int:
        return 1 + len(self.thing_classes) + index

    def categories(self) -> list[dict[str, Any]]:
        """COCO categories: things ``1..T`` then stuff ``T+1..T+S``."""
        out = [{"id": self.thing_category_id(i), "name": n, "supercategory": "thing", "isthing": 1}
               for i, n in enumerate(self.thing_classes)]  # fmt: skip
        out += [{"id": self.stuff_category_id(i), "name": n, "supercategory": "stuff", "isthing": 0}
                for i, n in enumerate(self.stuff_classes)]  # fmt: skip
        return out


@dataclasses.dataclass(frozen=True)
class SegmentationCorpusSummary:
    """What :func:`write_segmentation_corpus` wrote."""

    out_dir: str
    image_names: list[str]
    num_things: int  # thing annotations over all images
    num_stuff: int  # stuff annotations over all images
    seconds: float  # wall time


@dataclasses.dataclass
class SyntheticSegmentationImage:
    """One synthesised image and its exact ground truth."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    sem: np.ndarray  # (H, W) uint8 category ids
    inst: np.ndarray  # (H, W) uint16 thing instance ids (1..n, paint order bottom to top), 0 elsewhere
    things: list[dict[str, Any]]  # per instance: instance_id, category_id, shape, full_area (unoccluded)
    stuff_category_ids: list[int]  # stuff classes of the bands, top to bottom
    amodal_masks: list[np.ndarray]  # per instance (same order as things): (H, W) bool unoccluded shape


# ----------------------------------------------------------------------------- appearance


def class_colour(class_index: int) -> np.ndarray:
    """Base RGB colour (float, 0..255) of the class at global index ``class_index`` (things first).

    Hues step by the golden ratio, so neighbouring classes differ clearly.
    """
    hue = (class_index * 0.6180339887498949 + 0.08) % 1.0
    saturation = 0.55 + 0.3 * ((class_index * 0.37) % 1.0)
    value = 0.55 + 0.3 * ((class_index * 0.53 + 0.5) % 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), np.float64) * 255.0


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """(H, W) noise in [-1, 1] varying over about ``cell`` pixels (bilinear upsampled grid)."""
    grid = rng.standard_normal((max(2, height // cell + 2), max(2, width // cell + 2))).astype(np.float32)
    up = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(up / 2.0, -1.0, 1.0).astype(np.float64)


def texture(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) texture in about [-1, 1] of one ``kind``; consumes ``rng`` in a fixed order."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = rng.uniform(0.0, math.pi)
    period = rng.uniform(5.0, 12.0)
    phase = rng.uniform(0.0, 2 * math.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    if kind == "stripes":
        return np.sign(np.sin(2 * math.pi * u / period + phase)) * 0.8
    if kind == "checker":
        v = -x * math.sin(angle) + y * math.cos(angle)
        return (np.floor(u / period) + np.floor(v / period)) % 2 * 1.6 - 0.8
    if kind == "noise":
        return _smooth_noise(rng, height, width, cell=3)
    if kind == "blades":  # fine near-vertical streaks plus speckle
        streaks = np.sin(2 * math.pi * (x + 0.15 * y) / (period / 2.5) + phase)
        return 0.6 * streaks + 0.4 * _smooth_noise(rng, height, width, cell=2)
    if kind == "gradient":  # smooth vertical ramp plus clouds
        return 0.6 * (y / max(height - 1, 1) * 2 - 1) + 0.4 * _smooth_noise(rng, height, width, cell=12)
    if kind == "waves":
        return 0.8 * np.sin(2 * math.pi * y / (period / 1.5) + 0.6 * np.sin(2 * math.pi * x / (period * 3) + phase))
    raise ValueError(f"unknown texture kind {kind!r}")


def _stuff_texture(name: str, index: int) -> str:
    return STUFF_TEXTURES.get(name, _STUFF_TEXTURE_CYCLE[index % len(_STUFF_TEXTURE_CYCLE)])


def _thing_shape(name: str, index: int) -> str:
    return name if name in SHAPES else SHAPES[index % len(SHAPES)]


# ----------------------------------------------------------------------------- geometry


def _band_labels(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """(H, W) int band index 0..n-1, top to bottom; borders are sine waves that never cross."""
    labels = np.zeros((height, width), np.int64)
    base = height / n
    x = np.arange(width, dtype=np.float64)
    for k in range(1, n):
        cut = k * base + rng.uniform(-0.2, 0.2) * base
        amplitude = rng.uniform(0.0, 0.12) * base
        period = rng.uniform(0.4, 1.2) * width
        phase = rng.uniform(0.0, 2 * math.pi)
        border = cut + amplitude * np.sin(2 * math.pi * x / period + phase)
        labels += (np.arange(height, dtype=np.float64)[:, None] >= border[None, :]).astype(np.int64)
    return labels


def _shape_mask(shape: str, height: int, width: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """(H, W) bool mask of a filled shape (aliased, so the mask is exactly the painted pixels)."""
    canvas = np.zeros((height, width), np.uint8)
    centre = (int(round(cx)), int(round(cy)))
    if shape == "disc":
        cv2.circle(canvas, centre, max(1, int(round(radius))), 1, thickness=-1, lineType=cv2.LINE_8)
    elif shape == "ellipse":
        axes = (max(1, int(round(radius))), max(1, int(round(radius * 0.55))))
        cv2.ellipse(canvas, centre, axes, math.degrees(angle), 0, 360, 1, thickness=-1, lineType=cv2.LINE_8)
    else:
        corners = {"square": 4, "triangle": 3, "diamond": 4}[shape]
        squash = 0.6 if shape == "diamond" else 1.0
        t = np.arange(corners) * (2 * math.pi / corners)
        local = np.stack([np.cos(t) * radius, np.sin(t) * radius * squash], axis=1)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = np.round(local @ rot.T + np.array([cx, cy])).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8)
    return canvas.astype(bool)


def _compose(masks: list[np.ndarray], keep: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Paint ``masks[k]`` for k in ``keep`` in order (later on top); pixel value = position in keep + 1."""
    inst = np.zeros(shape, np.uint16)
    for position, k in enumerate(keep):
        inst[masks[k]] = position + 1
    return inst


# ----------------------------------------------------------------------------- one image


def image_name(index: int) -> str:
    return f"synth_{index:06d}"


def synthesize_segmentation_image(index: int, cfg: SegmentationSynthConfig) -> SyntheticSegmentationImage:
    """Image ``index`` of the corpus, from ``SeedSequence(cfg.seed, spawn_key=(index,))``."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(index,)))
    h, w = cfg.height, cfg.width
    short = min(h, w)
    amplitude = 70.0 * cfg.texture_strength
    T = len(cfg.thing_classes)

    # --- stuff bands
    n_bands = int(rng.integers(cfg.stuff_regions_min, cfg.stuff_regions_max + 1))
    stuff_indices = [int(i) for i in rng.choice(len(cfg.stuff_classes), size=n_bands, replace=False)]
    bands = _band_labels(rng, n_bands, h, w)
    image = np.zeros((h, w, 3), np.float64)
    sem = np.zeros((h, w), np.uint8)
    for band, s in enumerate(stuff_indices):
        colour = class_colour(T + s) + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, 3)
        tex = texture(_stuff_texture(cfg.stuff_classes[s], s), rng, h, w)
        region = bands == band
        image[region] = colour + amplitude * tex[region][:, None]
        sem[region] = cfg.stuff_category_id(s)

    # --- things: draw, order larger first, drop the ones that would stay mostly hidden
    n_things = int(rng.integers(cfg.objects_min, cfg.objects_max + 1))
    drawn = []
    for _ in range(n_things):
        c = int(rng.integers(T))
        radius = rng.uniform(cfg.object_size_min, cfg.object_size_max) * short / 2
        margin = min(radius, short / 2 - 1)
        cx = rng.uniform(margin, w - 1 - margin)
        cy = rng.uniform(margin, h - 1 - margin)
        angle = rng.uniform(0.0, 2 * math.pi)
        colour = class_colour(c) + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, 3)
        shape = _thing_shape(cfg.thing_classes[c], c)
        tex = texture(THING_TEXTURES[c % len(THING_TEXTURES)], rng, h, w)
        mask = _shape_mask(shape, h, w, cx, cy, radius, angle)
        drawn.append(dict(category=c, shape=shape, colour=colour, texture=tex, mask=mask, area=int(mask.sum())))
    drawn = [d for d in drawn if d["area"] > 0]
    order = sorted(range(len(drawn)), key=lambda k: (-drawn[k]["area"], k))  # larger first -> smaller on top
    masks = [d["mask"] for d in drawn]
    keep = list(order)
    while True:
        inst = _compose(masks, keep, (h, w))
        visible = [float(np.count_nonzero(inst == p + 1)) / drawn[k]["area"] for p, k in enumerate(keep)]
        worst = int(np.argmin(visible)) if visible else -1
        if worst < 0 or (visible[worst] >= cfg.min_visible_fraction and visible[worst] > 0):
            break
        del keep[worst]  # removing a thing only uncovers the others; the top one is always fully visible
    things = []
    for position, k in enumerate(keep):
        d = drawn[k]
        region = inst == position + 1
        image[region] = d["colour"] + amplitude * d["texture"][region][:, None]
        sem[region] = cfg.thing_category_id(d["category"])
        things.append({"instance_id": position + 1, "category_id": cfg.thing_category_id(d["category"]),
                       "shape": d["shape"], "full_area": d["area"]})  # fmt: skip
    pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return SyntheticSegmentationImage(
        name=image_name(index),
        image=pixels,
        sem=sem,
        inst=inst,
        things=things,
        stuff_category_ids=[cfg.stuff_category_id(s) for s in stuff_indices],
        amodal_masks=[drawn[k]["mask"] for k in keep],
    )


# ----------------------------------------------------------------------------- COCO


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _tight_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def _annotations(
    sample: SyntheticSegmentationImage, image_id: int, first_id: int, cfg: SegmentationSynthConfig
) -> list[dict[str, Any]]:
    """Thing annotations (paint order) then stuff annotations (bands top to bottom) of one image."""
    out = []
    for thing in sample.things:
        mask = sample.inst == thing["instance_id"]
        out.append({"instance_id": thing["instance_id"], "category_id": thing["category_id"], "mask": mask,
                    "isthing": 1, "shape": thing["shape"]})  # fmt: skip
    for cid in sample.stuff_category_ids:
        mask = sample.sem == cid
        if mask.any():
            out.append({"instance_id": 0, "category_id": cid, "mask": mask, "isthing": 0})
    docs = []
    for j, a in enumerate(out):
        mask = a.pop("mask")
        doc = {"id": first_id + j, "image_id": image_id, "category_id": a["category_id"], "bbox": _tight_bbox(mask),
               "area": int(np.count_nonzero(mask)), "iscrowd": 0, "segmentation": _rle(mask),
               "isthing": a["isthing"], "instance_id": a["instance_id"]}  # fmt: skip
        if "shape" in a:
            doc["shape"] = a["shape"]
        docs.append(doc)
    return docs


def image_record(sample: SyntheticSegmentationImage, image_id: int, cfg: SegmentationSynthConfig) -> dict[str, Any]:
    """The COCO ``images`` entry of one sample; ``tags``: stuff classes with a pixel in the sem mask."""
    stuff_names = {cfg.stuff_category_id(i): n for i, n in enumerate(cfg.stuff_classes)}
    present = sorted(int(v) for v in np.unique(sample.sem) if int(v) in stuff_names)
    return {
        "id": image_id,
        "file_name": f"{sample.name}.jpg",
        "width": cfg.width,
        "height": cfg.height,
        "tags": [stuff_names[v] for v in present],
        "sem_file": f"gt/{sample.name}_sem.png",
        "inst_file": f"gt/{sample.name}_inst.png",
    }


def _document(images: list[dict], annotations: list[dict], cfg: SegmentationSynthConfig) -> dict[str, Any]:
    return {
        "info": {"description": "labelmill synthetic segmentation check data", "version": "1", "seed": cfg.seed},
        "images": images,
        "annotations": annotations,
        "categories": cfg.categories(),
    }


def coco_document(samples: list[SyntheticSegmentationImage], cfg: SegmentationSynthConfig) -> dict[str, Any]:
    """The COCO instances document of ``samples`` (image ids 1.., annotation ids 1..)."""
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, sample in enumerate(samples, start=1):
        images.append(image_record(sample, image_id, cfg))
        annotations += _annotations(sample, image_id, len(annotations) + 1, cfg)
    return _document(images, annotations, cfg)


def _png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ValueError(f"OpenCV could not PNG-encode an array of shape {array.shape} dtype {array.dtype}")
    return buffer.tobytes()


def write_segmentation_corpus(out_dir: str, cfg: SegmentationSynthConfig) -> SegmentationCorpusSummary:
    """Write ``cfg.num_images`` images with COCO annotations and GT masks under ``out_dir``.

    Deterministic: the same config writes the same bytes. ``annotations.json`` is written after
    every image and mask, ``synth_config.yaml`` last.
    """
    start = time.perf_counter()
    names: list[str] = []
    images: list[dict] = []
    annotations: list[dict] = []
    for index in range(cfg.num_images):  # one image's arrays in memory at a time
        sample = synthesize_segmentation_image(index, cfg)
        jpg = encode_jpeg(sample.image, cfg.jpeg_quality)
        storage.write_bytes(storage.join(out_dir, "images", f"{sample.name}.jpg"), jpg)
        storage.write_bytes(storage.join(out_dir, "gt", f"{sample.name}_sem.png"), _png(sample.sem))
        storage.write_bytes(storage.join(out_dir, "gt", f"{sample.name}_inst.png"), _png(sample.inst))
        images.append(image_record(sample, index + 1, cfg))
        annotations += _annotations(sample, index + 1, len(annotations) + 1, cfg)
        names.append(sample.name)
    document = _document(images, annotations, cfg)
    storage.write_text(storage.join(out_dir, "annotations.json"), json.dumps(document, separators=(",", ":")) + "\n")
    storage.write_text(storage.join(out_dir, "synth_config.yaml"), dump_yaml(cfg))
    things = sum(1 for a in document["annotations"] if a["isthing"])
    return SegmentationCorpusSummary(
        out_dir=out_dir,
        image_names=names,
        num_things=things,
        num_stuff=len(document["annotations"]) - things,
        seconds=time.perf_counter() - start,
    )
