"""3D pose metrics in millimetres (numpy): MPJPE, PA-MPJPE, acceleration error.

Joints are ``(..., J, 3)`` in metres. MPJPE aligns prediction and ground truth at a root joint
(SMPL pelvis, index 0, by default) before measuring; PA-MPJPE first aligns each frame with the
best similarity transform (rotation, uniform scale, translation; Procrustes). The acceleration
error compares second differences over time of root-aligned joints (mm / frame^2).
"""

from __future__ import annotations

import numpy as np

__all__ = ["mpjpe", "pa_mpjpe", "accel_error", "procrustes_align"]


def _root_aligned(joints: np.ndarray, root: int) -> np.ndarray:
    return joints - joints[..., root : root + 1, :]


def mpjpe(pred: np.ndarray, gt: np.ndarray, *, root: int = 0) -> np.ndarray:
    """Per-frame mean joint error (mm) after root alignment: ``(..., J, 3) -> (...)``."""
    return 1000.0 * np.linalg.norm(_root_aligned(pred, root) - _root_aligned(gt, root), axis=-1).mean(-1)


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Similarity-align ``pred (N, J, 3)`` onto ``gt (N, J, 3)`` frame by frame."""
    mu_p = pred.mean(axis=1, keepdims=True)
    mu_g = gt.mean(axis=1, keepdims=True)
    p, g = pred - mu_p, gt - mu_g
    cov = np.einsum("nji,njk->nik", p, g)  # (N,3,3) = P^T G
    u, sing, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(np.einsum("nij,njk->nik", u, vt)))
    fix = np.ones_like(sing)
    fix[:, -1] = d
    rot = np.einsum("nij,nj,njk->nik", u, fix, vt)  # maps p -> g as p @ rot
    var_p = (p**2).sum(axis=(1, 2))
    scale = (sing * fix).sum(-1) / np.maximum(var_p, 1e-12)
    return scale[:, None, None] * np.einsum("nji,nik->njk", p, rot) + mu_g


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame mean joint error (mm) after Procrustes alignment: ``(N, J, 3) -> (N,)``."""
    aligned = procrustes_align(pred.reshape(-1, *pred.shape[-2:]), gt.reshape(-1, *gt.shape[-2:]))
    err = 1000.0 * np.linalg.norm(aligned - gt.reshape(aligned.shape), axis=-1).mean(-1)
    return err.reshape(pred.shape[:-2])


def accel_error(pred: np.ndarray, gt: np.ndarray, *, root: int = 0) -> np.ndarray:
    """Mean acceleration error (mm/frame^2) per interior frame: ``(T, J, 3) -> (T-2,)``."""
    if pred.shape[0] < 3:
        return np.zeros(0)
    p, g = _root_aligned(pred, root), _root_aligned(gt, root)
    acc_p = p[2:] - 2 * p[1:-1] + p[:-2]
    acc_g = g[2:] - 2 * g[1:-1] + g[:-2]
    return 1000.0 * np.linalg.norm(acc_p - acc_g, axis=-1).mean(-1)
