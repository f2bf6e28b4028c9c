"""Multi-label image classifier on an EfficientNet-Lite backbone (stuff tags -> Grad-CAM).

``MultiLabelClassifier``: backbone features ``(B, 1280, h, w)`` -> global average pool ->
linear ``(B, num_tags)`` logits; a tag's probability is the sigmoid of its logit and training
uses binary cross-entropy per tag. ``gradcam_layer`` is the module whose output is the last
feature map (pass it to :func:`labelmill.models.gradcam.gradcam`).
"""

from __future__ import annotations

import torch
from torch import nn

from labelmill.models.efficientnet_lite import efficientnet_lite0, imagenet_normalize

__all__ = ["MultiLabelClassifier", "train_multilabel", "imagenet_normalize", "BACKBONES"]

BACKBONES = ("efficientnet_lite0",)


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
