"""Stuff from image tags: Grad-CAM of a tag classifier, thresholded, under the things from boxes.

:class:`StuffFromTags` reads the decoded image (``image_jpeg``), the item's ``tags`` (names)
and ``tag_category_ids`` (their category ids, added by the pipeline), and the things labels of
:class:`~labelmill.operators.segmentation.things.BoxThings` (``sem_png``, ``inst_png``,
``segments``). Per pending item it runs :func:`~labelmill.models.gradcam.gradcam` of the
classifier file (``labelmill train classifier``, or the one the pipeline trained on the corpus)
for each of the image's tags that the classifier knows, on the image resized to the
classifier's ``input_size`` square (:func:`~labelmill.operators.segmentation.tag_classifier.classifier_input`),
upsamples the maps bilinearly to the image, and writes

* ``stuff_sem_png``: the things' sem where it is not background (**things take precedence**:
  a thing pixel keeps its class and a disputed thing pixel stays ignore 255); on the rest, the
  tag whose map is largest where it exceeds ``threshold`` (:func:`~labelmill.models.gradcam.maps_to_stuff_mask`),
  else 255 (no tag has evidence there). An image without any known tag keeps the things' maps;
* ``stuff_inst_png``: the things' instance ids, plus one segment id per stuff class present
  (after the largest thing id, in category-id order) on its pixels: one segment per stuff
  class and image, the COCO panoptic convention;
* ``stuff_segments``: the thing segments, then one per stuff class with pixels: ``id``,
  ``annotation_id`` null, ``category_id``, ``category`` (the tag), tight ``bbox``, ``area``,
  ``source`` ``"gradcam"``, ``score`` (the mean of its map over its pixels);
* scalars ``stuff_pixels`` (pixels labelled stuff), ``stuff_ignore`` (non-thing pixels left
  ignore), ``stuff_tags_unknown`` (tags of the image the classifier was not trained on;
  they get no mask).

**Determinism.** On the CPU every image is its own Grad-CAM call (its tags batched into one
backward pass) with ``cpu_threads`` torch threads, so a label does not depend on which other
images share its batch: the engines batch differently and the shards must be byte-identical.
Measured on one CPU thread this is no slower than 16 images per call (19.8 vs 15.3 images/s
at 160 px; docs/segmentation.md). ``batch_images > 1`` batches images (worth it on a GPU;
the maps then differ at float rounding between batchings).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

from labelmill.infra.formats.items import ItemStatus
from labelmill.models.device import torch_threads, usable_device
from labelmill.models.gradcam import gradcam, maps_to_stuff_mask
from labelmill.models.multilabel_classifier import LAYERS, LoadedClassifier, WeightFileError, load_classifier
from labelmill.operators.segmentation.box_labels import IGNORE
from labelmill.operators.segmentation.images import decode_image_bytes
from labelmill.operators.segmentation.tag_classifier import ClassifierTrainConfig, classifier_input
from labelmill.operators.segmentation.things import decode_png, encode_png, tight_bbox

__all__ = ["StuffConfig", "StuffFromTags", "combine_things_stuff", "SOURCE_GRADCAM", "STUFF_LABEL_COLUMNS"]

SOURCE_GRADCAM = "gradcam"
STUFF_LABEL_COLUMNS = ("stuff_sem_png", "stuff_inst_png", "stuff_segments")
_DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class StuffConfig:
    """Stuff from tags (``stuff.*``)."""

    enabled: bool = True  # label stuff when the corpus has image tags
    # Classifier file from `labelmill train classifier` (any fsspec URL). Empty: the pipeline
    # trains one on the corpus's own tags (stored under OUTPUT/models/classifier/, reused).
    classifier: str = ""
    layer: str = "block10"  # Grad-CAM layer: block10 (stride 16) or head (stride 32)
    threshold: float = 0.0  # a pixel takes a tag only where its map exceeds this (maps are in 0..1)
    device: str = "auto"  # auto: the worker's GPU when it has one; cpu; cuda (asks the engine for a GPU)
    cpu_threads: int = 1  # torch threads on the CPU (1: labels independent of the machine)
    batch_images: int = 1  # images per Grad-CAM call (module docstring)
    train: ClassifierTrainConfig = dataclasses.field(default_factory=ClassifierTrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"StuffConfig.enabled must be true or false, got {self.enabled!r}")
        if not isinstance(self.classifier, str):
            raise ValueError(f"StuffConfig.classifier must be a path or URL string, got {self.classifier!r}")
        if self.layer not in LAYERS:
            raise ValueError(f"StuffConfig.layer must be one of {LAYERS}, got {self.layer!r}")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t < 1.0:
            raise ValueError(f"StuffConfig.threshold must be a number in [0, 1), got {t!r}")
        if self.device not in _DEVICES:
            raise ValueError(f"StuffConfig.device must be one of {_DEVICES}, got {self.device!r}")
        for key, lo, hi in (("cpu_threads", 1, 256), ("batch_images", 1, 4096)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"StuffConfig.{key} must be an integer in {lo}..{hi}, got {value!r}")


def combine_things_stuff(
    thing_sem: np.ndarray,
    thing_inst: np.ndarray,
    thing_segments: Sequence[Mapping[str, Any]],
    maps: np.ndarray,
    tag_ids: Sequence[int],
    tag_names: Sequence[str],
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], dict[str, int]]:
    """``(sem, inst, segments, counts)`` of things plus stuff (module docstring, ``stuff_*`` columns).

    ``thing_sem`` uint8 / ``thing_inst`` uint16 ``(H, W)``; ``maps`` float ``(K, H, W)`` in 0..1,
    one per tag of ``tag_ids`` (category ids 1..254) / ``tag_names``.
    """
    if maps.shape[0] != len(tag_ids) or len(tag_ids) != len(tag_names):
        raise ValueError(f"{maps.shape[0]} maps for {len(tag_ids)} tag ids and {len(tag_names)} names")
    if maps.shape[1:] != thing_sem.shape or thing_inst.shape != thing_sem.shape:
        raise ValueError(f"maps {maps.shape[1:]}, sem {thing_sem.shape} and inst {thing_inst.shape} differ in size")
    free = thing_sem == 0  # background of the things: the only pixels stuff may take
    stuff = maps_to_stuff_mask(maps, list(tag_ids), threshold, ignore=IGNORE)
    sem = thing_sem.copy()
    sem[free] = stuff[free]
    inst = thing_inst.copy()
    segments = [dict(s) for s in thing_segments]
    next_id = max([int(s["id"]) for s in segments] + [int(thing_inst.max()) if thing_inst.size else 0]) + 1
    stuff_pixels = 0
    for k in sorted(range(len(tag_ids)), key=lambda j: int(tag_ids[j])):
        mask = free & (sem == int(tag_ids[k]))
        area = int(mask.sum())
        if area == 0:
            continue
        if next_id > np.iinfo(np.uint16).max:
            raise ValueError("more segments than a uint16 instance map holds")
        inst[mask] = next_id
        segments.append({"id": next_id, "annotation_id": None, "category_id": int(tag_ids[k]),
                         "category": str(tag_names[k]), "bbox": tight_bbox(mask), "area": area,
                         "source": SOURCE_GRADCAM, "score": round(float(maps[k][mask].mean()), 6)})
        next_id += 1
        stuff_pixels += area
    counts = {"stuff_pixels": stuff_pixels, "stuff_ignore": int((free & (sem == IGNORE)).sum())}
    return sem, inst, segments, counts


class StuffFromTags:
    """Operator: stuff masks from image tags under the things (module docstring)."""

    reads = ("key", "image_jpeg", "tags", "tag_category_ids", "sem_png", "inst_png", "segments")
    writes = (*STUFF_LABEL_COLUMNS, "stuff_pixels", "stuff_ignore", "stuff_tags_unknown")

    def __init__(self, *, config: StuffConfig, classifier: str) -> None:
        if not classifier:
            raise ValueError("StuffFromTags needs a classifier file (stuff.classifier, or one the pipeline trained)")
        self.config = config
        self.classifier = classifier
        self.resources = {"num_cpus": 1.0, "num_gpus": 1.0 if config.device == "cuda" else 0.0, "batch_size": 8}
        self._loaded: LoadedClassifier | None = None
        self._device: torch.device | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_loaded"], state["_device"] = None, None  # loaded again by setup() on the worker
        return state

    def fingerprint(self) -> dict[str, Any]:
        """What shapes the labels: the Grad-CAM settings and the classifier file's contents."""
        from labelmill.infra.storage import file_fingerprint

        cfg = self.config
        return {"layer": cfg.layer, "threshold": cfg.threshold, "batch_images": cfg.batch_images,
                "cpu_threads": cfg.cpu_threads, "classifier": file_fingerprint(self.classifier, mode="sha1")}

    def setup(self) -> None:
        """Load the classifier once per worker."""
        if self._loaded is not None:
            return
        if self.config.device == "auto":
            self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self._device = usable_device(self.config.device, what="stuff from tags (stuff.device)")
        self._loaded = load_classifier(self.classifier)
        self._loaded.model.to(self._device)

    def _maps(self, images: list[np.ndarray], classes: list[list[int]]) -> list[np.ndarray]:
        """Grad-CAM maps ``(K_i, H_i, W_i)`` per image at its own size."""
        loaded, device = self._loaded, self._device
        layer = loaded.model.layer(self.config.layer)
        out: list[np.ndarray] = []
        step = self.config.batch_images
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            x = torch.stack([classifier_input(im, loaded.input_size) for im in chunk]).to(device)
            maps = gradcam(loaded.model, x, classes[start : start + step], layer)
            for image, m in zip(chunk, maps):
                m = m.detach().cpu().numpy()
                height, width = image.shape[:2]
                out.append(np.stack([cv2.resize(k, (width, height), interpolation=cv2.INTER_LINEAR) for k in m])
                           if len(m) else np.zeros((0, height, width), np.float32))
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.setup()
        items = ItemStatus.of(batch)
        known = {t: i for i, t in enumerate(self._loaded.tags)}
        pending = list(items.pending())
        prepared: dict[int, tuple[np.ndarray, list[int], list[int], list[str], list[str]]] = {}
        errors: dict[int, str] = {}
        for i in pending:
            key = str(items.keys[i])
            try:
                image = decode_image_bytes(batch["image_jpeg"][i])
            except (ValueError, TypeError) as exc:
                errors[i] = f"image {key!r}: {exc}"
                continue
            tags = [str(t) for t in (batch["tags"][i] if batch["tags"][i] is not None else [])]
            ids = [int(c) for c in (batch["tag_category_ids"][i] if batch["tag_category_ids"][i] is not None else [])]
            if len(ids) != len(tags):
                errors[i] = f"image {key!r}: {len(tags)} tags but {len(ids)} tag category ids"
                continue
            use = [j for j, t in enumerate(tags) if t in known]
            prepared[i] = (image, [known[tags[j]] for j in use], [ids[j] for j in use], [tags[j] for j in use],
                           [t for t in tags if t not in known])
        order = sorted(prepared)
        with torch_threads(self.config.cpu_threads if self._device.type == "cpu" else 0):
            maps = self._maps([prepared[i][0] for i in order], [prepared[i][1] for i in order])
        maps_of = dict(zip(order, maps))

        def one(i: int) -> dict[str, Any]:
            if i in errors:
                raise ValueError(errors[i])
            _, _, ids, names, unknown = prepared[i]
            thing_sem, thing_inst = decode_png(batch["sem_png"][i]), decode_png(batch["inst_png"][i])
            segments = [dict(s) for s in (batch["segments"][i] or [])]
            try:
                sem, inst, segs, counts = combine_things_stuff(thing_sem, thing_inst, segments, maps_of[i], ids, names,
                                                               self.config.threshold)
            except ValueError as exc:
                raise ValueError(f"image {items.keys[i]!r}: {exc}") from None
            return {"stuff_sem_png": encode_png(sem), "stuff_inst_png": encode_png(inst), "stuff_segments": segs,
                    **counts, "stuff_tags_unknown": len(unknown)}

        return items.map_pending(batch, self.writes, one, errors=(ValueError, WeightFileError, cv2.error))
