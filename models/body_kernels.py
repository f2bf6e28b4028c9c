"""Pure tensor kernels for the body model's joints-only fast path (no nn.Module state here).

The full SMPL forward (``smplx.lbs.lbs``) blends, poses and skins all 6890 vertices to get 24
joints and a handful of landmark vertices. Everything that path computes for the joints is
linear in the shape coefficients before posing, so the joint regressor can be folded into the
template and shape directions once (24 rows instead of 6890), and the landmark vertices can be
skinned on their own with their rows of the template, shape/pose directions and weights.
"""

from __future__ import annotations

import torch
from smplx.lbs import batch_rodrigues

__all__ = [
    "fold_joint_regressor",
    "shape_blend",
    "pose_features",
    "kinematic_levels",
    "forward_kinematics",
    "skin_points",
    "joints_and_landmarks",
]


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


def kinematic_levels(parents: list[int]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Group a kinematic tree by depth: ``((joints, parent positions in the previous level), ...)``.

    Level 0 is the root. Every parent of a level-d joint is at level d - 1, so a whole level is
    posed with one batched operation: SMPL's 24 joints take 9 levels instead of 23 sequential
    steps. Returned as plain tuples so the result can be cached per model.
    """
    depth = [0] * len(parents)
    for j in range(1, len(parents)):  # parents[0] is the root (-1 or anything)
        if not 0 <= parents[j] < j:
            raise ValueError(f"parents must list every parent before its child; joint {j} has parent {parents[j]}")
        depth[j] = depth[parents[j]] + 1
    levels: list[list[int]] = [[] for _ in range(max(depth) + 1)]
    for j, d in enumerate(depth):
        levels[d].append(j)
    out = [(tuple(levels[0]), ())]
    for d in range(1, len(levels)):
        previous = levels[d - 1]
        out.append((tuple(levels[d]), tuple(previous.index(parents[j]) for j in levels[d])))
    return tuple(out)


def _matmul3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (..., 3, 3) @ b (..., 3, k)``. (Measured: torch.matmul beats broadcast-multiply-sum
    on CPU, 65 vs 106 ms fwd+bwd for 3200 bodies.)"""
    return torch.matmul(a, b)


def forward_kinematics(
    rot_mats: torch.Tensor, rest_joints: torch.Tensor, parents: list[int], levels=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pose a kinematic tree level by level.

    rot_mats (B, J, 3, 3) local rotations, rest_joints (B, J, 3), parents (J,) ->
    posed joints (B, J, 3), global rotations (B, J, 3, 3) and the skinning translations
    (B, J, 3) (``t_j - G_j rest_j``), the same quantities as ``smplx.lbs.batch_rigid_transform``.
    """
    levels = levels or kinematic_levels(parents)
    parent_index = torch.tensor(parents[1:], device=rest_joints.device)
    offsets = torch.cat([rest_joints[:, :1], rest_joints[:, 1:] - rest_joints.index_select(1, parent_index)], dim=1)
    root = levels[0][0]
    g_prev = rot_mats[:, list(root)]
    t_prev = offsets[:, list(root)]
    rots, trans, order = [g_prev], [t_prev], list(root)
    for joints, parent_pos in levels[1:]:
        g_par = g_prev[:, list(parent_pos)]
        g_prev = _matmul3(g_par, rot_mats[:, list(joints)])
        t_prev = _matmul3(g_par, offsets[:, list(joints)].unsqueeze(-1)).squeeze(-1) + t_prev[:, list(parent_pos)]
        rots.append(g_prev)
        trans.append(t_prev)
        order.extend(joints)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    inverse = inverse.to(rest_joints.device)
    global_rot = torch.cat(rots, dim=1).index_select(1, inverse)
    posed = torch.cat(trans, dim=1).index_select(1, inverse)
    skin_trans = posed - _matmul3(global_rot, rest_joints.unsqueeze(-1)).squeeze(-1)
    return posed, global_rot, skin_trans


def skin_points(
    points: torch.Tensor, point_weights: torch.Tensor, global_rot: torch.Tensor, skin_trans: torch.Tensor
) -> torch.Tensor:
    """Linear blend skinning of a few points.

    points (B, L, 3) in the rest frame (shape and pose correctives applied), point_weights (L, J),
    global_rot (B, J, 3, 3) and skin_trans (B, J, 3) from :func:`forward_kinematics` -> (B, L, 3).
    """
    rot = torch.einsum("lj,bjmn->blmn", point_weights, global_rot)
    trans = torch.einsum("lj,bjm->blm", point_weights, skin_trans)
    return _matmul3(rot, points.unsqueeze(-1)).squeeze(-1) + trans


def joints_and_landmarks(
    betas: torch.Tensor,
    full_pose: torch.Tensor,
    *,
    joint_template: torch.Tensor,
    joint_shapedirs: torch.Tensor,
    parents: list[int],
    landmark_template: torch.Tensor,
    landmark_shapedirs: torch.Tensor,
    landmark_posedirs: torch.Tensor,
    landmark_weights: torch.Tensor,
    levels=None,
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
    joints, global_rot, skin_trans = forward_kinematics(rot_mats, rest_joints, parents, levels)
    rest_landmarks = shape_blend(landmark_template, landmark_shapedirs, betas)
    rest_landmarks = rest_landmarks + (pose_features(rot_mats) @ landmark_posedirs).reshape(batch, -1, 3)
    landmarks = skin_points(rest_landmarks, landmark_weights, global_rot, skin_trans)
    return joints, landmarks
