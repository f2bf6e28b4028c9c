"""Multi-label image classifier on an EfficientNet-Lite backbone (stuff tags -> Grad-CAM).

``MultiLabelClassifier``: backbone features ``(B, 1280, h, w)`` -> global average pool ->
linear ``(B, num_tags)`` logits; a tag's probability is the sigmoid of its logit and training
uses binary cross-entropy per tag. ``gradcam_layer`` is the module whose output is the last
feature map (pass it to :func:`labelmill.models.gradcam.gradcam`); ``layer("block10")`` the
output of MBConv block 10 (stride 16), the one the stuff masks use.

Classifier files (:func:`classifier_bytes` / :func:`load_classifier`) are one ``torch.save`` of
plain containers: ``{"format": "labelmill-multilabel-classifier", "version": 1, "backbone",
"tags": [names], "input_size": int, "meta": {str: str | int | float}, "state_dict": {name: tensor}}``.
They are read only with ``torch.load(weights_only=True)`` (PyTorch's restricted unpickler), and
every field, key and shape is checked before the weights are loaded.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import torch
from torch import nn

from labelmill.models.efficientnet_lite import WeightFileError, check_state_dict, efficientnet_lite0, imagenet_normalize
from labelmill.models.model_files import read_model_bytes

__all__ = ["MultiLabelClassifier", "train_multilabel", "imagenet_normalize", "BACKBONES", "LAYERS",
           "CLASSIFIER_FORMAT", "LoadedClassifier", "classifier_bytes", "load_classifier", "WeightFileError"]

BACKBONES = ("efficientnet_lite0",)
# Grad-CAM layers by name: the head (stride 32) and MBConv block 10's output (stride 16).
LAYERS = ("head", "block10")
CLASSIFIER_FORMAT = "labelmill-multilabel-classifier"
_CLASSIFIER_VERSION = 1


class MultiLabelClassifier(nn.Module):
    """``(B, 3, H, W)`` ImageNet-normalised images -> ``(B, num_tags)`` logits."""

    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", pretrained: bool = True) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r} is not one of {BACKBONES}")
        net = efficientnet_lite0(pretrained=pretrained)
        net._fc = nn.Identity()  # the ImageNet head is not used
        self.backbone = net
        self.head = nn.Linear(net.num_features, num_tags)
        self.num_tags = num_tags
        self.pretrained_loaded = bool(net.pretrained_loaded)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.backbone.head_layer

    def layer(self, name: str) -> nn.Module:
        """The module of a Grad-CAM layer named in :data:`LAYERS`."""
        if name == "head":
            return self.backbone.head_layer
        if name == "block10":
            return self.backbone._blocks[10]
        raise ValueError(f"Grad-CAM layer {name!r} is not one of {LAYERS}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone.features(images).mean(dim=(2, 3))
        return self.head(pooled)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(images))


def train_multilabel(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
    weight_decay: float = 1e-4,
    freeze_batchnorm: bool | None = None,
) -> list[float]:
    """Train ``model`` with BCE-with-logits and AdamW; returns the mean training loss per epoch.

    ``images (N, 3, H, W)`` float, normalised (:func:`imagenet_normalize`); ``targets (N, T)``
    in {0, 1}. Deterministic for a given seed on CPU: the shuffle uses its own generator and
    the torch seed is set before training. The model ends in eval mode on ``device``.

    ``freeze_batchnorm`` (default: whether the model's ``pretrained_loaded`` is true) keeps the
    BatchNorm layers in eval mode: their running statistics stay the ImageNet ones and only
    their affine parameters train. With a few small batches the running averages (momentum
    0.01) would otherwise lag far behind the batch statistics used in training, and the
    model would behave differently in eval mode than it trained (seen on the tests' tiny
    problem: training loss 0.03, eval accuracy of one tag 58%).
    """
    if images.ndim != 4 or targets.ndim != 2 or images.shape[0] != targets.shape[0]:
        raise ValueError(f"images (N, 3, H, W) and targets (N, T) must agree, got {tuple(images.shape)} and {tuple(targets.shape)}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs, batch_size and lr must be positive, got {epochs}, {batch_size}, {lr}")
    torch.manual_seed(seed)
    device = torch.device(device)
    model.to(device)
    if freeze_batchnorm is None:
        freeze_batchnorm = bool(getattr(model, "pretrained_loaded", False))
    model.train()
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    losses = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = images[idx].to(device)
            y = targets[idx].to(device=device, dtype=x.dtype)
            loss = loss_fn(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    model.eval()
    return losses


@dataclasses.dataclass
class LoadedClassifier:
    """A classifier file's model (eval mode, CPU), its tag names (logit order) and input side."""

    model: MultiLabelClassifier
    tags: list[str]
    input_size: int
    meta: dict[str, Any]


def classifier_bytes(model: MultiLabelClassifier, tags: list[str], *, input_size: int,
                     meta: dict[str, Any] | None = None) -> bytes:
    """The bytes of a classifier file (module docstring) for ``model`` trained on ``tags``."""
    if len(tags) != model.num_tags or len(set(tags)) != len(tags):
        raise ValueError(f"{len(tags)} tag names (unique: {len(set(tags))}) for a model with {model.num_tags} tags")
    meta = dict(meta or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"classifier meta {k!r}: only str keys and str/int/float/bool values are stored")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"format": CLASSIFIER_FORMAT, "version": _CLASSIFIER_VERSION, "backbone": "efficientnet_lite0",
                "tags": [str(t) for t in tags], "input_size": int(input_size), "meta": meta, "state_dict": state},
               buffer)
    return buffer.getvalue()


def load_classifier(path: str) -> LoadedClassifier:
    """Read and check a classifier file (any fsspec URL); :class:`WeightFileError` names what is wrong."""
    what = f"classifier file {path}"
    data = read_model_bytes(path, what="classifier file")
    try:
        doc = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler refuses anything but tensors/containers
        raise WeightFileError(f"{what} could not be read as a labelmill classifier: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != CLASSIFIER_FORMAT:
        raise WeightFileError(f"{what} is not a labelmill classifier (no format {CLASSIFIER_FORMAT!r}; "
                              "write one with `labelmill train classifier`)")
    if doc.get("version") != _CLASSIFIER_VERSION:
        raise WeightFileError(f"{what} has version {doc.get('version')!r}; this labelmill reads {_CLASSIFIER_VERSION}")
    tags, size, backbone = doc.get("tags"), doc.get("input_size"), doc.get("backbone")
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags) or len(set(tags)) != len(tags):
        raise WeightFileError(f"{what}: 'tags' must be a non-empty list of unique names")
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 4096:
        raise WeightFileError(f"{what}: 'input_size' must be an integer in 32..4096, got {size!r}")
    if backbone not in BACKBONES:
        raise WeightFileError(f"{what}: backbone {backbone!r} is not one of {BACKBONES}")
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    model = MultiLabelClassifier(len(tags), backbone=backbone, pretrained=False)
    check_state_dict(model, doc.get("state_dict"), source=what)
    model.load_state_dict(doc["state_dict"], strict=True)
    model.pretrained_loaded = True  # trained weights: BatchNorm statistics are real
    return LoadedClassifier(model=model.eval(), tags=list(tags), input_size=size, meta=dict(meta))
