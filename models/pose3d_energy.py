"""Pure tensor kernels of the bundle-adjustment energy (DESIGN.md §3, seed 000).

Shapes: B videos (or windows), F frames, P detected people per frame, J = 17 COCO keypoints,
K = 24 SMPL joints. All 2D quantities arrive in *normalised image units* (pixels divided by the
video's reference person height, see :mod:`labelmill.models.pose3d_fit`), 3D joints in metres,
so one set of weights serves any resolution. Every kernel returns a per-frame energy ``(B, F)``;
frames outside ``frame_mask`` contribute exactly 0 and receive no gradient.

    E_R(t) = min( min_p sum_i w_i h(x_i^t - x_det,i^{t,p}), tau_R )
    E_T(t) = sum_i l1 h(X_i^t - X_i^{t-1}) + l2 h(x_i^t - x_i^{t-1}) + l3 h(Omega^t - Omega^{t-1})   (t >= 1)
    E_I(t) = sum_i h(X_i^t - X~_i^t) + l_beta h(beta - beta~^t)

``h`` is the Huber function of the Euclidean norm of a residual vector.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["huber_norm", "reprojection_energy", "temporal_energy", "init_energy"]


def huber_norm(residual: Tensor, delta: float) -> Tensor:
    """Huber of the Euclidean norm of ``residual (..., D)`` -> ``(...)``.

    ``0.5 r^2`` for ``r <= delta`` and ``delta (r - 0.5 delta)`` beyond; smooth at r = 0 (the
    square root is only taken where r > delta, so gradients are finite everywhere).
    """
    sq = (residual * residual).sum(-1)
    quadratic = 0.5 * sq
    norm = torch.sqrt(torch.clamp(sq, min=delta * delta))
    linear = delta * (norm - 0.5 * delta)
    return torch.where(sq <= delta * delta, quadratic, linear)


def reprojection_energy(
    projected: Tensor,
    detections: Tensor,
    person_mask: Tensor,
    frame_mask: Tensor,
    *,
    delta: float,
    tau: float | None,
    min_confidence: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Multi-person robust reprojection energy per frame.

    Args:
        projected: ``(B, F, J, 2)`` projected model keypoints.
        detections: ``(B, F, P, J, 3)`` detected keypoints ``(x, y, confidence)``; a missing
            keypoint has confidence 0 (its coordinates are ignored).
        person_mask: ``(B, F, P)`` bool, True where person p was detected in frame t.
        frame_mask: ``(B, F)`` bool, True for real (non-padded) frames.
        delta: Huber threshold (normalised units).
        tau: outlier cap ``tau_R`` on a frame's energy; None disables the outer min.
        min_confidence: keypoints below this confidence get weight 0.

    Returns:
        ``energy (B, F)`` and ``best_person (B, F)`` (index of the matched detection, -1 if none).
    """
    conf = detections[..., 2]
    weight = torch.where(conf >= min_confidence, conf, torch.zeros_like(conf))
    # Coordinates of missing keypoints may be garbage (0, NaN-free): zero their residual.
    residual = projected.unsqueeze(2) - detections[..., :2]  # (B,F,P,J,2)
    residual = torch.where((weight > 0).unsqueeze(-1), residual, torch.zeros_like(residual))
    per_person = (weight * huber_norm(residual, delta)).sum(-1)  # (B,F,P)
    has_any = person_mask & (weight.sum(-1) > 0)
    big = torch.finfo(per_person.dtype).max
    per_person = torch.where(has_any, per_person, torch.full_like(per_person, big))
    if per_person.shape[-1] == 0:
        best = torch.zeros(per_person.shape[:-1], dtype=per_person.dtype, device=per_person.device)
        idx = torch.full(per_person.shape[:-1], -1, dtype=torch.long, device=per_person.device)
    else:
        best, idx = per_person.min(-1)  # (B,F)
    detected = has_any.any(-1)
    idx = torch.where(detected, idx, torch.full_like(idx, -1))
    best = torch.where(detected, best, torch.zeros_like(best))
    if tau is not None:
        best = torch.clamp(best, max=tau)
    energy = torch.where(frame_mask & detected, best, torch.zeros_like(best))
    return energy, idx


def _frame_pairs(frame_mask: Tensor) -> Tensor:
    """``(B, F)`` mask of frames t >= 1 whose predecessor is also a real frame."""
    pair = torch.zeros_like(frame_mask)
    pair[:, 1:] = frame_mask[:, 1:] & frame_mask[:, :-1]
    return pair


def _diff(x: Tensor) -> Tensor:
    """Backward difference along the frame axis (dim 1), zero at t = 0."""
    out = torch.zeros_like(x)
    out[:, 1:] = x[:, 1:] - x[:, :-1]
    return out


def temporal_energy(
    joints3d: Tensor,
    projected: Tensor,
    camera: Tensor,
    frame_mask: Tensor,
    *,
    lambda_joints3d: float,
    lambda_joints2d: float,
    lambda_camera: float,
    delta3d: float,
    delta2d: float,
    delta_camera: float,
) -> Tensor:
    """Temporal smoothness per frame ``(B, F)`` (frame t carries the t-1 -> t difference).

    Args:
        joints3d: ``(B, F, K, 3)`` metres.  projected: ``(B, F, J, 2)`` normalised units.
        camera: ``(B, F, 3)`` normalised ``(s, u_x, u_y)``.  frame_mask: ``(B, F)`` bool.
    """
    e = lambda_joints3d * huber_norm(_diff(joints3d), delta3d).sum(-1)
    e = e + lambda_joints2d * huber_norm(_diff(projected), delta2d).sum(-1)
    e = e + lambda_camera * huber_norm(_diff(camera), delta_camera)
    return torch.where(_frame_pairs(frame_mask), e, torch.zeros_like(e))


def init_energy(
    joints3d: Tensor,
    joints3d_init: Tensor,
    betas: Tensor,
    betas_init: Tensor,
    frame_mask: Tensor,
    *,
    lambda_beta: float,
    delta3d: float,
    delta_beta: float,
) -> Tensor:
    """Stay-close-to-initialisation energy per frame ``(B, F)``.

    Args:
        joints3d, joints3d_init: ``(B, F, K, 3)``.  betas: ``(B, 10)`` shared over the video.
        betas_init: ``(B, F, 10)`` the per-frame initial shapes.  frame_mask: ``(B, F)``.
    """
    e = huber_norm(joints3d - joints3d_init, delta3d).sum(-1)
    e = e + lambda_beta * huber_norm(betas.unsqueeze(1) - betas_init, delta_beta)
    return torch.where(frame_mask, e, torch.zeros_like(e))
