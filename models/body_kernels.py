"""Pure tensor kernels for the body model's joints-only fast path (no nn.Module state here).

The full SMPL forward (``smplx.lbs.lbs``) blends, poses and skins all 6890 vertices to get 24
joints and a handful of landmark vertices. Everything that path computes for the joints is
linear in the shape coefficients before posing, so the joint regressor can be folded into the
template and shape directions once (24 rows instead of 6890), and the landmark vertices can be
skinned on their own with their rows of the template, shape/pose directions and weights.
"""

from __future__ import annotations

import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues

__all__ = ["fold_joint_regressor", "shape_blend", "pose_features", "skin_points", "joints_and_landmarks"]


def fold_joint_regressor(
    j_regressor: torch.Tensor, v_template: torch.Tensor, shapedirs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the joint regressor to template and shape directions once.

    j_regressor (J, V), v_template (V, 3), shapedirs (V, 3, K) ->
    joint_template (J, 3), joint_shapedirs (J, 3, K).
    """
    joint_template = j_regressor @ v_template
    joint_shapedirs = torch.einsum("jv,vkl->jkl", j_regressor, shapedirs)
    return joint_template, joint_shapedirs


def shape_blend(template: torch.Tensor, shapedirs: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """template (N, 3) + shapedirs (N, 3, K) . betas (B, K) -> (B, N, 3)."""
    return template + torch.einsum("bl,nkl->bnk", betas, shapedirs)


def pose_features(rot_mats: torch.Tensor) -> torch.Tensor:
    """SMPL's pose-corrective features: (R_j - I) for joints 1..23, flattened. (B, 24, 3, 3) -> (B, 207)."""
    ident = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    return (rot_mats[:, 1:] - ident).reshape(rot_mats.shape[0], -1)


def skin_points(points: torch.Tensor, point_weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning of a few points.

    points (B, L, 3) in the rest frame (shape and pose correctives applied), point_weights (L, J),
    transforms (B, J, 4, 4) relative joint transforms from ``batch_rigid_transform`` -> (B, L, 3).
    """
    blended = torch.einsum("lj,bjmn->blmn", point_weights, transforms)
    return torch.einsum("blmn,bln->blm", blended[..., :3, :3], points) + blended[..., :3, 3]


def joints_and_landmarks(
    betas: torch.Tensor,
    full_pose: torch.Tensor,
    *,
    joint_template: torch.Tensor,
    joint_shapedirs: torch.Tensor,
    parents: torch.Tensor,
    landmark_template: torch.Tensor,
    landmark_shapedirs: torch.Tensor,
    landmark_posedirs: torch.Tensor,
    landmark_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posed joints and landmark vertices without the full mesh (same maths as ``smplx.lbs.lbs``).

    betas (B or 1, K); full_pose (B, 72) axis-angle (global orientation, then 23 joints);
    joint_template (J, 3), joint_shapedirs (J, 3, K), parents (J,);
    landmark_template (L, 3), landmark_shapedirs (L, 3, K), landmark_posedirs (207, L*3),
    landmark_weights (L, J). Returns joints (B, J, 3) and landmarks (B, L, 3).
    """
    batch = full_pose.shape[0]
    betas = betas.expand(batch, -1)
    rest_joints = shape_blend(joint_template, joint_shapedirs, betas)
    rot_mats = batch_rodrigues(full_pose.reshape(-1, 3)).reshape(batch, -1, 3, 3)
    joints, transforms = batch_rigid_transform(rot_mats, rest_joints, parents, dtype=full_pose.dtype)
    rest_landmarks = shape_blend(landmark_template, landmark_shapedirs, betas)
    rest_landmarks = rest_landmarks + (pose_features(rot_mats) @ landmark_posedirs).reshape(batch, -1, 3)
    landmarks = skin_points(rest_landmarks, landmark_weights, transforms)
    return joints, landmarks
