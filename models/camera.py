"""The seed's scaled orthographic camera, one per frame: ``x = s * Pi(R X) + u``.

``X`` are body-model points that already carry the global rotation ``R`` (SMPL applies
``global_orient`` to its joints). ``Pi`` drops depth and flips the y axis so that SMPL's "up"
(+y) maps to image rows going up:

    x_img = s * X_x + u_x
    y_img = -s * X_y + u_y

``camera = (s, u_x, u_y)``: ``s`` in pixels per metre, ``u`` in pixels. The same function works
on numpy arrays and torch tensors.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

__all__ = ["project", "camera_from_points"]


def project(points3d: ArrayT, camera: ArrayT) -> ArrayT:
    """Project ``points3d (..., J, 3)`` with ``camera (..., 3)`` to pixels ``(..., J, 2)``."""
    s = camera[..., 0:1]
    u = camera[..., 1:3]
    x = s * points3d[..., 0] + u[..., 0:1]
    y = -s * points3d[..., 1] + u[..., 1:2]
    if isinstance(points3d, torch.Tensor):
        return torch.stack([x, y], dim=-1)
    return np.stack([x, y], axis=-1)


def camera_from_points(points3d: np.ndarray, points2d: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares scaled orthographic camera mapping ``points3d (J,3)`` onto ``points2d (J,2)``.

    ``weights (J,)`` (e.g. detector confidences) weight each correspondence; at least two
    points with positive weight are needed. Returns ``(3,)``: ``(s, u_x, u_y)``, with s > 0.
    """
    w = np.ones(len(points3d)) if weights is None else np.asarray(weights, dtype=np.float64)
    if (w > 0).sum() < 2:
        raise ValueError("camera_from_points needs at least two points with positive weight")
    a = np.stack([points3d[:, 0], -points3d[:, 1]], axis=-1)  # (J,2): what s multiplies
    wsum = w.sum()
    a_mean = (w[:, None] * a).sum(0) / wsum
    b_mean = (w[:, None] * points2d).sum(0) / wsum
    a_c, b_c = a - a_mean, points2d - b_mean
    denom = (w[:, None] * a_c**2).sum()
    s = float((w[:, None] * a_c * b_c).sum() / max(denom, 1e-12))
    s = max(s, 1e-6)
    u = b_mean - s * a_mean
    return np.array([s, u[0], u[1]], dtype=np.float64)
