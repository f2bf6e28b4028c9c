"""Anatomical pose channels -> SMPL axis-angle, and the joint-limit tables.

Motions (:mod:`labelmill.operators.synth.motion`) are written as *channels*: named anatomical
angles in radians (``l_knee_flex``, ``spine_twist``, ...) whose zero is the SMPL rest pose
(T-pose) except for the shoulders, whose zero is the arm hanging at the side. The rig turns
channels into SMPL's ``body_pose (T, 69)`` (joints 1..23, axis-angle relative to the parent)
and ``global_orient (T, 3)``.

SMPL frame at rest: metres, +y up, the body faces +z, the body's left is +x. Signs used by the
rig (``Rx(a)`` = rotation by ``a`` about x, composed right to left, i.e. the right-most factor
acts first, in the joint's parent frame):

========================  ==============================================================
joint                     rotation
========================  ==============================================================
left hip                  ``Rx(-hip_flex) Rz(+hip_abd) Ry(+hip_twist)`` (flex: thigh forward)
left knee                 ``Rx(+knee_flex)`` (shin backward)
left ankle                ``Rx(-ankle_flex)`` (toes up)
spine1/2/3 (share)        ``Rx(+w*spine_flex) Rz(-w*spine_side) Ry(+w*spine_twist)``; w = .4/.3/.3
neck, head (share)        same as spine with ``neck_*`` channels; w = .5/.5
left collar               ``Rz(+collar_elev)`` (shrug)
left shoulder             ``Rx(-sh_flex) Rz(sh_abd - pi/2) Rx(-sh_twist)``
                          (abd 0: arm hangs; pi/2: horizontal; flex: arm forward;
                          twist > 0 turns the elbow's bending plane up/outward)
left elbow                ``Ry(-elbow_flex)``; left wrist ``Ry(-wrist_flex)``
right side                mirror image of the left: axis-angle ``(x, y, z) -> (x, -y, -z)``
global orient             ``Rx(cam_elev) Ry(yaw) Rx(pitch) Rz(-roll)``
========================  ==============================================================

Two limit tables guard plausibility: :data:`CHANNEL_LIMITS` (anatomical ranges, motions are
clipped to them before rigging) and :data:`JOINT_LIMITS` (a box on each axis-angle component
of each body joint, ``(23, 3, 2)`` radians) that every produced ``body_pose`` satisfies
(:func:`clip_to_joint_limits`, :func:`joint_limit_violations`).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "SMPL_JOINT_NAMES",
    "CHANNELS",
    "CHANNEL_LIMITS",
    "JOINT_LIMITS",
    "channels_to_smpl",
    "clip_channels",
    "clip_to_joint_limits",
    "joint_limit_violations",
    "within_joint_limits",
]

SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "l_hip", "r_hip", "spine1", "l_knee", "r_knee", "spine2", "l_ankle", "r_ankle",
    "spine3", "l_foot", "r_foot", "neck", "l_collar", "r_collar", "head", "l_shoulder",
    "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist", "l_hand", "r_hand",
)  # fmt: skip

_SIDED = (
    "hip_flex", "hip_abd", "hip_twist", "knee_flex", "ankle_flex", "collar_elev",
    "sh_abd", "sh_flex", "sh_twist", "elbow_flex", "wrist_flex",
)  # fmt: skip
_CENTRAL = ("spine_flex", "spine_side", "spine_twist", "neck_flex", "neck_side", "neck_twist")
_GLOBAL = ("yaw", "pitch", "roll", "cam_elev")

#: Every channel name a motion may set (radians). Missing channels are 0.
CHANNELS: tuple[str, ...] = tuple(f"{s}_{c}" for s in ("l", "r") for c in _SIDED) + _CENTRAL + _GLOBAL

# Anatomical range of each channel (radians), the same for both sides. yaw is unbounded.
_SIDED_LIMITS = {
    "hip_flex": (-0.5, 2.0),  # extension .. flexion (thigh forward)
    "hip_abd": (-0.35, 0.9),  # adduction .. abduction
    "hip_twist": (-0.6, 0.7),  # internal .. external rotation
    "knee_flex": (0.0, 2.4),
    "ankle_flex": (-0.8, 0.5),  # plantar .. dorsal flexion
    "collar_elev": (-0.2, 0.35),
    "sh_abd": (0.0, 2.9),  # hanging .. overhead
    "sh_flex": (-0.8, 2.0),  # backward .. forward
    "sh_twist": (-1.2, 1.7),
    "elbow_flex": (0.0, 2.5),
    "wrist_flex": (-0.9, 0.9),
}
CHANNEL_LIMITS: dict[str, tuple[float, float]] = {
    **{f"{s}_{c}": lim for s in ("l", "r") for c, lim in _SIDED_LIMITS.items()},
    "spine_flex": (-0.45, 1.2),  # backward .. forward bend, summed over spine1..3
    "spine_side": (-0.6, 0.6),
    "spine_twist": (-0.9, 0.9),
    "neck_flex": (-0.7, 0.9),  # look up .. down, summed over neck and head
    "neck_side": (-0.6, 0.6),
    "neck_twist": (-1.2, 1.2),
    "yaw": (-np.inf, np.inf),
    "pitch": (-0.6, 1.0),  # whole-body lean backward .. forward
    "roll": (-0.4, 0.4),
    "cam_elev": (-0.5, 0.5),
}

# Box limits on each axis-angle component (x, y, z) of the 23 body joints, left side; the right
# side mirrors it (y and z ranges negated and swapped). Loose enough for every pose the rig can
# produce from channels inside CHANNEL_LIMITS, tight enough to reject broken poses.
_LEFT_AA_LIMITS = {
    "hip": ((-2.1, 0.6), (-0.9, 0.9), (-0.7, 1.1)),
    "knee": ((0.0, 2.45), (-0.05, 0.05), (-0.05, 0.05)),
    "ankle": ((-0.55, 0.85), (-0.05, 0.05), (-0.05, 0.05)),
    "foot": ((-0.05, 0.05), (-0.05, 0.05), (-0.05, 0.05)),
    "collar": ((-0.05, 0.05), (-0.05, 0.05), (-0.25, 0.4)),
    "shoulder": ((-2.85, 1.2), (-1.9, 1.9), (-1.65, 1.4)),
    "elbow": ((-0.05, 0.05), (-2.55, 0.05), (-0.05, 0.05)),
    "wrist": ((-0.05, 0.05), (-0.95, 0.95), (-0.05, 0.05)),
    "hand": ((-0.05, 0.05), (-0.05, 0.05), (-0.05, 0.05)),
}
_CENTRAL_AA_LIMITS = {
    "spine1": ((-0.25, 0.55), (-0.4, 0.4), (-0.3, 0.3)),
    "spine2": ((-0.2, 0.4), (-0.3, 0.3), (-0.22, 0.22)),
    "spine3": ((-0.2, 0.4), (-0.3, 0.3), (-0.22, 0.22)),
    "neck": ((-0.4, 0.5), (-0.65, 0.65), (-0.35, 0.35)),
    "head": ((-0.4, 0.5), (-0.65, 0.65), (-0.35, 0.35)),
}


def _build_joint_limits() -> np.ndarray:
    limits = np.zeros((23, 3, 2))
    for j, name in enumerate(SMPL_JOINT_NAMES[1:]):
        if name in _CENTRAL_AA_LIMITS:
            limits[j] = _CENTRAL_AA_LIMITS[name]
            continue
        side, part = name.split("_", 1)
        left = np.array(_LEFT_AA_LIMITS[part])
        if side == "l":
            limits[j] = left
        else:  # mirror: x unchanged, y and z negated (so lo/hi swap)
            limits[j, 0] = left[0]
            limits[j, 1:] = -left[1:, ::-1]
    return limits


#: ``(23, 3, 2)``: [joint 1..23, axis-angle component x/y/z, (min, max)] in radians.
JOINT_LIMITS: np.ndarray = _build_joint_limits()
JOINT_LIMITS.setflags(write=False)

_MIRROR = np.array([1.0, -1.0, -1.0])


def _rx(a: np.ndarray) -> Rotation:
    return Rotation.from_rotvec(np.stack([a, np.zeros_like(a), np.zeros_like(a)], -1))


def _ry(a: np.ndarray) -> Rotation:
    return Rotation.from_rotvec(np.stack([np.zeros_like(a), a, np.zeros_like(a)], -1))


def _rz(a: np.ndarray) -> Rotation:
    return Rotation.from_rotvec(np.stack([np.zeros_like(a), np.zeros_like(a), a], -1))


def _compose(*rots: Rotation) -> np.ndarray:
    """Axis-angle ``(T, 3)`` of the product of rotations (left-most applied last)."""
    out = rots[0]
    for r in rots[1:]:
        out = out * r
    return out.as_rotvec()


def clip_channels(channels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Clip every channel ``(T,)`` into :data:`CHANNEL_LIMITS`; unknown names raise KeyError."""
    out = {}
    for name, values in channels.items():
        if name not in CHANNEL_LIMITS:
            raise KeyError(f"unknown pose channel {name!r}; known channels: {', '.join(CHANNELS)}")
        lo, hi = CHANNEL_LIMITS[name]
        out[name] = np.clip(values, lo, hi)
    return out


def channels_to_smpl(channels: dict[str, np.ndarray], num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Rig channels (each ``(T,)``, radians) into ``(body_pose (T, 69), global_orient (T, 3))``.

    Channels are clipped to :data:`CHANNEL_LIMITS` and the body pose to :data:`JOINT_LIMITS`.
    """
    ch = clip_channels(channels)
    zero = np.zeros(num_frames)

    def get(name: str) -> np.ndarray:
        value = ch.get(name, zero)
        if value.shape != (num_frames,):
            raise ValueError(f"pose channel {name!r} has shape {value.shape}, expected ({num_frames},)")
        return value

    pose = np.zeros((num_frames, 23, 3))
    index = {name: i - 1 for i, name in enumerate(SMPL_JOINT_NAMES)}
    for side, mirror in (("l", np.ones(3)), ("r", _MIRROR)):
        c = {k: get(f"{side}_{k}") for k in _SIDED}
        pose[:, index[f"{side}_hip"]] = mirror * _compose(_rx(-c["hip_flex"]), _rz(c["hip_abd"]), _ry(c["hip_twist"]))
        pose[:, index[f"{side}_knee"], 0] = c["knee_flex"]
        pose[:, index[f"{side}_ankle"], 0] = -c["ankle_flex"]
        pose[:, index[f"{side}_collar"], 2] = mirror[2] * c["collar_elev"]
        pose[:, index[f"{side}_shoulder"]] = mirror * _compose(
            _rx(-c["sh_flex"]), _rz(c["sh_abd"] - np.pi / 2), _rx(-c["sh_twist"])
        )
        pose[:, index[f"{side}_elbow"], 1] = mirror[1] * -c["elbow_flex"]
        pose[:, index[f"{side}_wrist"], 1] = mirror[1] * -c["wrist_flex"]
    for prefix, joints, weights in (
        ("spine", ("spine1", "spine2", "spine3"), (0.4, 0.3, 0.3)),
        ("neck", ("neck", "head"), (0.5, 0.5)),
    ):
        flex, side_bend, twist = get(f"{prefix}_flex"), get(f"{prefix}_side"), get(f"{prefix}_twist")
        for joint, w in zip(joints, weights):
            pose[:, index[joint]] = _compose(_rx(w * flex), _rz(-w * side_bend), _ry(w * twist))
    global_orient = _compose(_rx(get("cam_elev")), _ry(get("yaw")), _rx(get("pitch")), _rz(-get("roll")))
    body_pose = clip_to_joint_limits(pose.reshape(num_frames, 69))
    return body_pose, global_orient


def clip_to_joint_limits(body_pose: np.ndarray) -> np.ndarray:
    """Clip ``body_pose (..., 69)`` component-wise into :data:`JOINT_LIMITS`."""
    shaped = body_pose.reshape(*body_pose.shape[:-1], 23, 3)
    return np.clip(shaped, JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1]).reshape(body_pose.shape)


def joint_limit_violations(body_pose: np.ndarray, *, tolerance: float = 1e-9) -> np.ndarray:
    """Boolean ``(..., 23, 3)``: which axis-angle components of ``body_pose (..., 69)`` leave the box."""
    shaped = body_pose.reshape(*body_pose.shape[:-1], 23, 3)
    return (shaped < JOINT_LIMITS[..., 0] - tolerance) | (shaped > JOINT_LIMITS[..., 1] + tolerance)


def within_joint_limits(body_pose: np.ndarray, *, tolerance: float = 1e-9) -> bool:
    """True when every pose in ``body_pose (..., 69)`` lies inside :data:`JOINT_LIMITS`."""
    return not bool(joint_limit_violations(body_pose, tolerance=tolerance).any())
