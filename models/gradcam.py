"""Grad-CAM (Selvaraju et al., ICCV 2017) on torch hooks, batched, and stuff masks from its maps.

For an image, a class c and a layer with activations ``A (C, h, w)``:
``alpha_k = mean_{y,x} d y_c / d A_k[y, x]``, ``cam = ReLU(sum_k alpha_k A_k)``, upsampled
bilinearly to the image size and divided by its maximum (a map that is 0 everywhere stays 0).

Batching: one forward pass for the whole batch; a forward hook keeps the layer's output. The
classes asked of image i are put in slots ``j = 0 .. K-1`` (``K`` = the most classes any image
asks for). Slot j's score is ``sum_i logits[i, c_ij]`` (a one-hot mask per image, zero for an
image with fewer than j+1 classes). Because the images of a batch do not interact in eval mode
(BatchNorm uses running stats), ``d score_j / d A[i] = d logits[i, c_ij] / d A[i]``: one
backward pass per slot gives the gradients of every image at once. All K slots go through a
single ``torch.autograd.grad(..., is_grads_batched=True)`` call (vmap over the backward pass);
where an operator does not support that, it falls back to K calls with ``retain_graph``.
So the cost is one forward plus K (usually 1..3) backward passes per batch, not one per
(image, class). The model is put in eval mode for the call and restored after.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["gradcam", "maps_to_stuff_mask"]


def _layer_output(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    store: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"Grad-CAM layer {type(layer).__name__} returns {type(output).__name__}, not a tensor")
        # a leaf copy: the gradient stops here (the layers below need no backward pass) and a
        # layer whose output does not depend on any parameter still gets a gradient
        acts = output.detach().requires_grad_(True)
        store.append(acts)
        return acts

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(images)
    finally:
        handle.remove()
    if len(store) != 1:
        raise ValueError(f"Grad-CAM layer ran {len(store)} times in one forward pass (expected once)")
    acts = store[0]
    if acts.ndim != 4 or acts.shape[0] != images.shape[0]:
        raise ValueError(f"Grad-CAM layer output must be (B, C, h, w), got {tuple(acts.shape)}")
    return logits, acts


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    class_indices_per_image: Sequence[Sequence[int]],
    layer: nn.Module,
) -> list[torch.Tensor]:
    """Grad-CAM maps of ``layer`` for the given classes of each image (module docstring).

    ``images (B, 3, H, W)`` (already normalised); ``class_indices_per_image[i]``: the logit
    indices to explain for image i (may be empty). Returns B float tensors ``(K_i, H, W)`` in
    [0, 1] on the images' device, in the order the indices were given.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if len(class_indices_per_image) != batch:
        raise ValueError(f"{len(class_indices_per_image)} class lists for {batch} images")
    classes = [[int(c) for c in cs] for cs in class_indices_per_image]
    slots = max((len(cs) for cs in classes), default=0)
    if slots == 0:
        return [images.new_zeros((0, height, width)) for _ in range(batch)]

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits, acts = _layer_output(model, layer, images)
            if logits.ndim != 2 or logits.shape[0] != batch:
                raise ValueError(f"model must return logits (B, N), got {tuple(logits.shape)}")
            n = logits.shape[1]
            onehot = logits.new_zeros((slots, batch, n))
            for i, cs in enumerate(classes):
                for j, c in enumerate(cs):
                    if not 0 <= c < n:
                        raise ValueError(f"image {i}: class index {c} outside 0..{n - 1}")
                    onehot[j, i, c] = 1.0
            grads = _slot_gradients(logits, acts, onehot)  # (K, B, C, h, w)
        weights = grads.mean(dim=(3, 4), keepdim=True)  # alpha: (K, B, C, 1, 1)
        cams = F.relu((weights * acts.detach().unsqueeze(0)).sum(dim=2))  # (K, B, h, w)
        cams = F.interpolate(cams, size=(height, width), mode="bilinear", align_corners=False)
        peak = cams.flatten(2).amax(dim=2).clamp_min(1e-12)[..., None, None]
        cams = cams / peak
    finally:
        model.train(was_training)
    return [cams[: len(cs), i].contiguous() for i, cs in enumerate(classes)]


def _slot_gradients(logits: torch.Tensor, acts: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``d (sum_i onehot[j, i] . logits[i]) / d acts`` for every slot j: ``(K, B, C, h, w)``."""
    if onehot.shape[0] > 1:
        try:
            (grads,) = torch.autograd.grad(logits, acts, grad_outputs=onehot, is_grads_batched=True, retain_graph=True)
            return grads
        except RuntimeError:  # an op without a batching rule: one backward per slot
            pass
    out = []
    for j in range(onehot.shape[0]):
        (g,) = torch.autograd.grad(logits, acts, grad_outputs=onehot[j], retain_graph=j + 1 < onehot.shape[0])
        out.append(g)
    return torch.stack(out)


def maps_to_stuff_mask(maps: torch.Tensor | np.ndarray, tags: Sequence[int], threshold: float, *, ignore: int = 255) -> np.ndarray:
    """uint8 ``(H, W)`` class map from ``maps (K, H, W)`` of the classes ``tags`` (K ids).

    A pixel takes the tag whose map is largest there, among the maps that exceed
    ``threshold`` (strictly); where none does it is ``ignore``.
    """
    arr = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    if arr.ndim != 3:
        raise ValueError(f"maps must be (K, H, W), got shape {arr.shape}")
    if arr.shape[0] != len(tags):
        raise ValueError(f"{arr.shape[0]} maps for {len(tags)} tags")
    for t in tags:
        if not 0 <= int(t) <= 255 or int(t) == ignore:
            raise ValueError(f"tag id {t} does not fit a uint8 mask with ignore={ignore}")
    out = np.full(arr.shape[1:], ignore, dtype=np.uint8)
    if arr.shape[0] == 0:
        return out
    best = arr.argmax(axis=0)
    above = arr.max(axis=0) > threshold
    ids = np.asarray([int(t) for t in tags], dtype=np.uint8)
    out[above] = ids[best[above]]
    return out
