"""COCO-17 keypoints: names, order, skeleton, left/right flip, and where each comes from on SMPL.

Twelve body keypoints are SMPL joints (shoulders, elbows, wrists, hips, knees, ankles); the
five face keypoints are SMPL landmark *vertices* named as in ``smplx.vertex_ids`` (nose, eyes,
ears), because SMPL has no face joints. SMPL's "left" is the subject's left, which is +x in
SMPL's rest frame (y up, facing +z). SMPL hip joints sit inside the pelvis (the femoral heads),
so they are narrower than COCO's annotated hips, which lie on the body surface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch


__all__ = [
    "COCO17_NAMES",
    "COCO17_SKELETON",
    "COCO17_FLIP",
    "COCO17_FLIP_INDEX",
    "SMPL_JOINT_NAMES",
    "SMPL_PARENTS",
    "COCO17_FROM_SMPL_JOINT",
    "COCO17_FROM_LANDMARK",
    "COCO17_FACE_INDICES",
    "COCO17_BODY_INDICES",
    "face_landmark_names",
    "face_landmark_vertex_ids",
    "assemble_coco17",
]

COCO17_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

# Limb edges as (index, index) pairs into COCO17_NAMES (the COCO dataset's skeleton, 0-based).
COCO17_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12),
    (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9), (8, 10),
    (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)

# (left, right) index pairs that swap under a horizontal image flip.
COCO17_FLIP: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


def _flip_index() -> tuple[int, ...]:
    index = list(range(len(COCO17_NAMES)))
    for left, right in COCO17_FLIP:
        index[left], index[right] = right, left
    return tuple(index)


# keypoints_flipped = keypoints[..., COCO17_FLIP_INDEX, :] after mirroring x.
COCO17_FLIP_INDEX: tuple[int, ...] = _flip_index()

# SMPL's 24 joints (smplx.joint_names.JOINT_NAMES[:22] plus SMPL's two hand joints).
SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee",
    "spine2", "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot",
    "neck", "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)

# SMPL's kinematic tree: parent joint index of each joint (-1 for the root).
SMPL_PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

# COCO index -> SMPL joint index, for the twelve body keypoints.
COCO17_FROM_SMPL_JOINT: Mapping[int, int] = {
    5: 16,  # left_shoulder
    6: 17,  # right_shoulder
    7: 18,  # left_elbow
    8: 19,  # right_elbow
    9: 20,  # left_wrist
    10: 21,  # right_wrist
    11: 1,  # left_hip
    12: 2,  # right_hip
    13: 4,  # left_knee
    14: 5,  # right_knee
    15: 7,  # left_ankle
    16: 8,  # right_ankle
}

# COCO index -> landmark name in smplx.vertex_ids (the vertex id depends on the topology).
COCO17_FROM_LANDMARK: Mapping[int, str] = {0: "nose", 1: "leye", 2: "reye", 3: "lear", 4: "rear"}

COCO17_FACE_INDICES: tuple[int, ...] = tuple(sorted(COCO17_FROM_LANDMARK))
COCO17_BODY_INDICES: tuple[int, ...] = tuple(sorted(COCO17_FROM_SMPL_JOINT))


def face_landmark_names() -> tuple[str, ...]:
    """Landmark names of the five face keypoints, in COCO order (nose, leye, reye, lear, rear)."""
    return tuple(COCO17_FROM_LANDMARK[i] for i in COCO17_FACE_INDICES)


def face_landmark_vertex_ids(vertex_ids: Mapping[str, int] | None = None) -> tuple[int, ...]:
    """Vertex ids of the five face keypoints in COCO order; default: smplx's SMPL(-H) ids."""
    if vertex_ids is None:
        from smplx.vertex_ids import vertex_ids as smplx_vertex_ids

        vertex_ids = smplx_vertex_ids["smplh"]
    return tuple(int(vertex_ids[name]) for name in face_landmark_names())


_BODY_SOURCE = tuple(COCO17_FROM_SMPL_JOINT[i] for i in COCO17_BODY_INDICES)


def assemble_coco17(joints: torch.Tensor, face_points: torch.Tensor) -> torch.Tensor:
    """COCO-17 keypoints from SMPL joints and face landmark points.

    joints: (B, 24, 3) SMPL joints. face_points: (B, 5, 3) landmark points in COCO face order
    (nose, left eye, right eye, left ear, right ear). Returns (B, 17, 3).
    """
    import torch  # lazily: the name tables above are used by torch-free readers

    body = joints[:, list(_BODY_SOURCE)]
    return torch.cat([face_points, body], dim=1)  # face indices 0..4, then body 5..16 in order
