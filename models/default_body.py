"""The embedded default body: a human-shaped body model in SMPL's exact format, made by our code.

This is NOT SMPL. It is a stand-in generated in closed form (no randomness, no downloads) so
that every code path runs as it would with the licensed ``SMPL_NEUTRAL.pkl``: the same array
names and shapes (6890 vertices, 13776 faces, 24 joints in SMPL's kinematic tree, 10 shape
directions, 207 pose-corrective directions) and the landmark vertex ids smplx reads for SMPL
(``smplx.vertex_ids.vertex_ids['smplh']``) placed on the matching body parts.

How it is built (metres; SMPL's rest frame: y up, facing +z, subject's left = +x, arms out):

* Eight closed tubes swept along the skeleton: torso+neck, head, two arms (collar to
  fingertips, hand flattened), two legs (hip to ankle), two feet. Each tube is rings of
  vertices on (super-)ellipses around a centre line, closed by a pole at each end, so each is a
  closed genus-0 surface. Seven small three-sided tunnels join the tubes along the tree (a
  connected sum), which makes the whole mesh one closed genus-0 surface with F = 2V - 4 =
  13776 faces, exactly like SMPL's.
* Every joint is the centroid of one ring centred on it, so each ``J_regressor`` row is a
  uniform average over one ring (rows sum to 1) and ``J_regressor @ v_template`` lands on the
  designed joint (pelvis, hips, spine, knees, ankles, feet, neck, collars, head, shoulders,
  elbows, wrists, hands).
* Skinning weights follow the chain of joints along each tube with smooth blends across each
  joint; the lower torso blends into the hips and the upper-outer torso into collar/shoulder.
* ``posedirs`` are small corrective blend shapes: a bulge of the skin around each bent joint,
  proportional to (1 - cos angle), plus a small skin-slide term linear in (R - I). They are
  non-zero for all 23 joints and all 9 rotation-matrix entries.
* ``shapedirs``: see :data:`SHAPE_DIRECTIONS` (one physically meaningful change per direction).
* Landmark vertices (nose tip, eyes, ears, heels, toes, finger tips) are found on the tubes and
  the vertex order is then permuted so each sits at the index smplx expects.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from typing import Mapping

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.spatial import cKDTree

__all__ = [
    "NUM_VERTICES",
    "NUM_FACES",
    "NUM_JOINTS",
    "NUM_BETAS",
    "NUM_POSE_FEATURES",
    "SHAPE_DIRECTIONS",
    "default_body_arrays",
    "save_body_npz",
]

NUM_VERTICES = 6890
NUM_FACES = 13776
NUM_JOINTS = 24
NUM_BETAS = 10
NUM_POSE_FEATURES = 9 * (NUM_JOINTS - 1)

PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
# Joint index -> its mirror image (left <-> right).
_MIRROR_JOINT = np.array([0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22])
_MIRROR_LANDMARK = {
    "leye": "reye", "lear": "rear", "LBigToe": "RBigToe", "LSmallToe": "RSmallToe", "LHeel": "RHeel",
    "lthumb": "rthumb", "lindex": "rindex", "lmiddle": "rmiddle", "lring": "rring", "lpinky": "rpinky",
}

# What each shape direction does (per unit of beta), in order.
SHAPE_DIRECTIONS: tuple[tuple[str, str], ...] = (
    ("stature", "scales the body about the pelvis: +4.5% in height, +2% in width and depth (~7.7 cm taller)"),
    ("girth", "overall weight: belly/waist up to +18%, thighs +10%, upper arms +9%, hips +9%, shoulders +5%, "
              "head/feet +3% thicker around their centre lines; joints unchanged"),
    ("leg_length", "thighs and shins 5% longer (feet move down ~4 cm); torso unchanged"),
    ("arm_length", "upper arms and forearms 6% longer (hands move out ~3 cm)"),
    ("torso_length", "pelvis-to-neck 6% longer (neck, head and arms move up ~3 cm)"),
    ("shoulder_width", "shoulders and arms 1.5 cm further out on each side"),
    ("hip_width", "hips and legs 1.2 cm further out on each side"),
    ("head_size", "head 8% larger about its centre"),
    ("belly", "belly pushed forward up to 3 cm"),
    ("limb_girth", "upper arms, forearms, thighs and calves up to 12% thicker (muscle); torso unchanged"),
)

# ----------------------------------------------------------------------------------------------
# Design: joint positions of the rest pose (left side; right side is the mirror image, x -> -x).
_PELVIS = np.array([0.0, -0.23, 0.0])
_SPINE_Y = {0: -0.23, 3: -0.12, 6: 0.02, 9: 0.08, 12: 0.28}  # torso joints: height on the torso
# Reach of the pose correctives around each joint (metres); the head's reaches the face.
_CORRECTIVE_REACH = {3: 0.22, 6: 0.22, 9: 0.22, 15: 0.18}
_HIP = np.array([0.08, -0.32, 0.0])
_KNEE = np.array([0.10, -0.70, 0.02])
_ANKLE = np.array([0.09, -1.11, -0.03])
_COLLAR = np.array([0.08, 0.21, -0.02])
_SHOULDER = np.array([0.18, 0.23, -0.03])
_ELBOW = np.array([0.43, 0.22, -0.04])
_WRIST = np.array([0.67, 0.22, -0.04])
_HAND = np.array([0.76, 0.215, -0.04])
_FINGER_TIP = np.array([0.855, 0.21, -0.04])
_HEAD_CENTRE = np.array([0.0, 0.425, 0.02])
_HEAD_SEMI_AXES = np.array([0.078, 0.107, 0.097])  # x, y, z
_HEAD_JOINT_Y = 0.37
_FOOT_BALL_Z = 0.10  # the SMPL "foot" joint sits at the ball of the foot

# Vertex budget: ring size and number of rings per tube (the torso's are solved to hit 6890).
_ARM_RING, _ARM_STATIONS = 20, 40
_LEG_RING, _LEG_STATIONS = 24, 40
_FOOT_RING, _FOOT_STATIONS = 16, 16
_HEAD_RING = 40


@dataclasses.dataclass
class _Part:
    """One closed tube of the body, in its own local vertex numbering."""

    kind: str  # torso | head | arm | leg | foot
    side: int  # +1 left, -1 right, 0 centre
    vertices: np.ndarray  # (n, 3)
    faces: np.ndarray  # (f, 3)
    axis_points: np.ndarray  # (n, 3) centre-line point each vertex belongs to
    weights: np.ndarray  # (n, 24) skinning weights
    joint_rings: dict[int, np.ndarray]  # joint index -> local vertex ids of the ring centred on it
    landmarks: dict[str, int]  # smplx landmark name -> local vertex id

    def mirrored(self) -> "_Part":
        flip = np.array([-1.0, 1.0, 1.0])
        return _Part(
            kind=self.kind,
            side=-self.side,
            vertices=self.vertices * flip,
            faces=self.faces[:, ::-1].copy(),
            axis_points=self.axis_points * flip,
            weights=self.weights[:, _MIRROR_JOINT],
            joint_rings={int(_MIRROR_JOINT[j]): ids for j, ids in self.joint_rings.items()},
            landmarks={_MIRROR_LANDMARK.get(k, k): v for k, v in self.landmarks.items()},
        )


# ----------------------------------------------------------------------------------------------
# Small geometric helpers.


def _smoothstep(x: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    t = np.clip((np.asarray(x, dtype=float) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _raised_cosine(distance: np.ndarray, radius: float) -> np.ndarray:
    """1 at distance 0, falling smoothly to 0 at ``radius`` (compact support)."""
    d = np.clip(np.abs(distance) / radius, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * d))


def _profile(knots: list[tuple[float, float]]):
    """Smooth monotone-preserving curve through (position, value) knots, constant beyond the ends."""
    s, v = (np.array(a) for a in zip(*sorted(knots)))
    curve = PchipInterpolator(s, v)
    return lambda x: curve(np.clip(x, s[0], s[-1]))


def _signed_power(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.abs(x) ** exponent


def _stations(start: float, stop: float, count: int, knots: list[float]) -> np.ndarray:
    """``count`` evenly spaced values in [start, stop], the nearest one snapped onto each knot."""
    s = np.linspace(start, stop, count)
    for knot in knots:
        s[int(np.argmin(np.abs(s - knot)))] = knot
    if np.any(np.diff(s) <= 0):
        raise RuntimeError("default body: two joints snapped onto the same ring; use more stations")
    return s


def _arc_lengths(points: np.ndarray) -> np.ndarray:
    """(K,) arc length of each knot of a polyline (K, 3), starting at 0."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def _polyline(points: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (S, 3) and unit tangents (S, 3) at arc lengths ``s`` along a polyline (K, 3)."""
    seg = np.diff(points, axis=0)
    lengths = np.linalg.norm(seg, axis=1)
    knot_s = _arc_lengths(points)
    idx = np.clip(np.searchsorted(knot_s, s, side="right") - 1, 0, len(seg) - 1)
    t = (s - knot_s[idx]) / lengths[idx]
    centres = points[idx] + t[:, None] * seg[idx]
    # Central differences: the tangent turns smoothly at a bend, so rings do not cross.
    tangents = np.gradient(centres, s, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    return centres, tangents


def _frames(tangents: np.ndarray, forward_hint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward, side) unit axes perpendicular to each tangent; forward closest to the hint."""
    fwd = forward_hint[None, :] - (tangents @ forward_hint)[:, None] * tangents
    fwd /= np.linalg.norm(fwd, axis=1, keepdims=True)
    side = np.cross(tangents, fwd)
    return fwd, side


def _tube(
    centres: np.ndarray,
    forward: np.ndarray,
    side: np.ndarray,
    r_forward: np.ndarray,
    r_side: np.ndarray,
    exponent: np.ndarray,
    ring: int,
    pole_start: np.ndarray,
    pole_end: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A closed tube: pole, ``S`` rings of ``ring`` vertices, pole.

    Ring vertex k sits at angle 2*pi*k/ring: k = 0 points along ``forward``, k = ring/4 along
    ``side``. Cross-sections are super-ellipses (exponent 2 = ellipse, larger = boxier); with an
    even ring size each ring's centroid is exactly its centre. Returns vertices (1 + S*ring + 1, 3),
    faces (2*S*ring, 3) and each vertex's centre-line point.
    """
    num = len(centres)
    phi = 2.0 * np.pi * np.arange(ring) / ring
    q = 2.0 / exponent[:, None]
    cos_part = _signed_power(np.cos(phi)[None, :], q) * r_forward[:, None]
    sin_part = _signed_power(np.sin(phi)[None, :], q) * r_side[:, None]
    rings = centres[:, None, :] + cos_part[..., None] * forward[:, None, :] + sin_part[..., None] * side[:, None, :]
    vertices = np.concatenate([pole_start[None], rings.reshape(-1, 3), pole_end[None]])
    axis = np.concatenate([pole_start[None], np.repeat(centres, ring, axis=0), pole_end[None]])

    def vid(station: np.ndarray, k: np.ndarray) -> np.ndarray:
        return 1 + station * ring + (k % ring)

    k = np.arange(ring)
    faces = [np.stack([np.zeros(ring, int), vid(np.zeros(ring, int), k + 1), vid(np.zeros(ring, int), k)], 1)]
    for st in range(num - 1):
        a, b = vid(np.full(ring, st), k), vid(np.full(ring, st), k + 1)
        c, d = vid(np.full(ring, st + 1), k + 1), vid(np.full(ring, st + 1), k)
        faces += [np.stack([a, b, c], 1), np.stack([a, c, d], 1)]
    last = len(vertices) - 1
    faces.append(np.stack([np.full(ring, last), vid(np.full(ring, num - 1), k), vid(np.full(ring, num - 1), k + 1)], 1))
    faces = np.concatenate(faces).astype(np.int64)
    return vertices, _outward(vertices, faces), axis


def _outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces re-oriented (if needed) so the closed surface has positive signed volume."""
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    volume = np.einsum("ij,ij->", v0, np.cross(v1, v2)) / 6.0
    return faces if volume > 0 else faces[:, ::-1].copy()


def _chain_weights(s: np.ndarray, knots: list[tuple[float, int, float]]) -> np.ndarray:
    """Skinning weights (N, 24) along a chain of joints.

    ``knots``: (arc length, joint index, blend half-width) in order; the stretch after knot i is
    driven by its joint; around knot i (i >= 1) weights blend smoothly from the previous joint.
    """
    weights = np.zeros((len(s), NUM_JOINTS))
    progress = [np.ones(len(s))]
    for position, _, half in knots[1:]:
        progress.append(_smoothstep(s, position - half, position + half))
    progress.append(np.zeros(len(s)))
    for i, (_, joint, _) in enumerate(knots):
        weights[:, joint] += progress[i] * (1.0 - progress[i + 1])
    return weights


# ----------------------------------------------------------------------------------------------
# The parts.


def _torso(ring: int, stations: int) -> _Part:
    y_lo, y_hi = -0.395, 0.385
    y = _stations(y_lo, y_hi, stations, list(_SPINE_Y.values()))
    half_width = _profile([(-0.395, 0.07), (-0.38, 0.13), (-0.35, 0.160), (-0.30, 0.172), (-0.23, 0.172),
                           (-0.15, 0.158), (-0.08, 0.146), (0.00, 0.150), (0.08, 0.160), (0.15, 0.168),
                           (0.21, 0.172), (0.245, 0.160), (0.27, 0.115), (0.29, 0.068), (0.31, 0.058),
                           (0.385, 0.055)])
    half_depth = _profile([(-0.395, 0.05), (-0.38, 0.085), (-0.35, 0.10), (-0.30, 0.11), (-0.23, 0.115),
                           (-0.15, 0.108), (-0.08, 0.10), (0.00, 0.10), (0.08, 0.108), (0.15, 0.108),
                           (0.21, 0.095), (0.245, 0.08), (0.27, 0.068), (0.29, 0.06), (0.31, 0.056),
                           (0.385, 0.055)])
    centre_z = _profile([(-0.395, 0.0), (-0.23, 0.0), (-0.12, -0.006), (0.02, -0.004), (0.08, 0.0),
                         (0.16, 0.0), (0.28, -0.02), (0.385, -0.01)])
    boxiness = _profile([(-0.395, 2.0), (-0.30, 2.3), (0.20, 2.5), (0.27, 2.2), (0.31, 2.0), (0.385, 2.0)])
    centres = np.stack([np.zeros_like(y), y, centre_z(y)], 1)
    n = len(y)
    vertices, faces, axis = _tube(
        centres, np.tile([0.0, 0.0, 1.0], (n, 1)), np.tile([1.0, 0.0, 0.0], (n, 1)),
        half_depth(y), half_width(y), boxiness(y), ring,
        np.array([0.0, -0.41, 0.0]), np.array([0.0, 0.40, -0.01]),
    )
    vy, ax = vertices[:, 1], np.abs(vertices[:, 0])
    chain = _chain_weights(vy, [(_SPINE_Y[0], 0, 0.0), (_SPINE_Y[3], 3, 0.05), (_SPINE_Y[6], 6, 0.03),
                                (_SPINE_Y[9], 9, 0.025), (_SPINE_Y[12], 12, 0.04), (_HEAD_JOINT_Y, 15, 0.02)])
    left = vertices[:, 0] >= 0
    # Lower outer torso (buttocks, hip sides) partly follows the thigh.
    hip_share = 0.6 * _smoothstep(-vy, 0.24, 0.38) * _smoothstep(ax, 0.02, 0.12)
    hip = np.zeros_like(chain)
    hip[np.arange(len(vy)), np.where(left, 1, 2)] = 1.0
    # Upper outer torso (shoulder girdle) follows the collar, its outer edge the shoulder.
    collar_share = _smoothstep(vy, 0.12, 0.22) * _smoothstep(ax, 0.06, 0.15)
    shoulder_share = _smoothstep(ax, 0.15, 0.19) * _smoothstep(vy, 0.15, 0.22)
    girdle = np.zeros_like(chain)
    girdle[np.arange(len(vy)), np.where(left, 13, 14)] = 1.0 - shoulder_share
    girdle[np.arange(len(vy)), np.where(left, 16, 17)] = shoulder_share
    weights = (1 - hip_share - collar_share)[:, None] * chain + hip_share[:, None] * hip
    weights += collar_share[:, None] * girdle
    rings = {j: 1 + int(np.argmin(np.abs(y - yj))) * ring + np.arange(ring) for j, yj in _SPINE_Y.items()}
    return _Part("torso", 0, vertices, faces, axis, weights, rings, {})


def _head(ring: int, stations: int) -> _Part:
    cy, (sx, sy, sz) = _HEAD_CENTRE[1], _HEAD_SEMI_AXES
    nose_y, eye_y, ear_y = 0.40, 0.437, 0.42
    y = _stations(cy - sy + 0.004, cy + sy - 0.004, stations, [_HEAD_JOINT_Y, nose_y, eye_y, ear_y])
    q = np.sqrt(np.clip(1.0 - ((y - cy) / sy) ** 2, 0.0, None))
    jaw = 1.0 - 0.15 * _smoothstep(0.40 - y, 0.0, 0.07)  # narrower jaw and chin
    n = len(y)
    centres = np.stack([np.zeros(n), y, np.full(n, _HEAD_CENTRE[2])], 1)
    vertices, faces, axis = _tube(
        centres, np.tile([0.0, 0.0, 1.0], (n, 1)), np.tile([1.0, 0.0, 0.0], (n, 1)),
        sz * q, sx * q * jaw, np.full(n, 2.0), ring,
        np.array([0.0, cy - sy, _HEAD_CENTRE[2]]), np.array([0.0, cy + sy, _HEAD_CENTRE[2]]),
    )
    rel = vertices - _HEAD_CENTRE
    front = np.clip(rel[:, 2] / np.maximum(np.linalg.norm(rel[:, [0, 2]], axis=1), 1e-9), 0.0, 1.0)
    nose = 0.024 * _raised_cosine(vertices[:, 1] - nose_y, 0.03) * _raised_cosine(vertices[:, 0], 0.022) * front**4
    vertices[:, 2] += nose
    ears = 0.012 * _raised_cosine(vertices[:, 1] - ear_y, 0.03) * _raised_cosine(vertices[:, 2] - 0.005, 0.03)
    vertices[:, 0] += np.sign(vertices[:, 0]) * ears * (np.abs(rel[:, 0]) > 0.03)

    def ring_ids(yv: float) -> np.ndarray:
        return 1 + int(np.argmin(np.abs(y - yv))) * ring + np.arange(ring)

    nose_ring, eye_ring, ear_ring = ring_ids(nose_y), ring_ids(eye_y), ring_ids(ear_y)
    eye_front = eye_ring[vertices[eye_ring, 2] > _HEAD_CENTRE[2]]
    landmarks = {
        "nose": int(nose_ring[0]),  # k = 0 points straight forward
        "leye": int(eye_front[np.argmin(np.abs(vertices[eye_front, 0] - 0.033))]),
        "reye": int(eye_front[np.argmin(np.abs(vertices[eye_front, 0] + 0.033))]),
        "lear": int(ear_ring[ring // 4]),
        "rear": int(ear_ring[3 * ring // 4]),
    }
    weights = np.zeros((len(vertices), NUM_JOINTS))
    weights[:, 15] = 1.0
    return _Part("head", 0, vertices, faces, axis, weights, {15: ring_ids(_HEAD_JOINT_Y)}, landmarks)


def _left_arm(ring: int, stations: int) -> _Part:
    points = np.stack([_COLLAR, _SHOULDER, _ELBOW, _WRIST, _HAND, _FINGER_TIP])
    knot_s = _arc_lengths(points)
    s_col, s_sho, s_elb, s_wri, s_han, s_tip = knot_s
    s = _stations(0.0, s_tip - 0.006, stations, [s_col, s_sho, s_elb, s_wri, s_han])
    centres, tangents = _polyline(points, s)
    forward, side = _frames(tangents, np.array([0.0, 0.0, 1.0]))
    up_radius = _profile([(0.0, 0.045), (s_sho - 0.03, 0.052), (s_sho, 0.056), (s_sho + 0.05, 0.054),
                          (s_sho + 0.12, 0.046), (s_elb, 0.037), (s_elb + 0.07, 0.041), (s_wri - 0.05, 0.030),
                          (s_wri, 0.022), (s_wri + 0.04, 0.017), (s_han, 0.015), (s_han + 0.05, 0.011),
                          (s_tip - 0.006, 0.008)])
    fwd_radius = _profile([(0.0, 0.045), (s_sho - 0.03, 0.052), (s_sho, 0.054), (s_sho + 0.05, 0.052),
                           (s_sho + 0.12, 0.046), (s_elb, 0.040), (s_elb + 0.07, 0.043), (s_wri - 0.05, 0.036),
                           (s_wri, 0.030), (s_wri + 0.04, 0.041), (s_han, 0.044), (s_han + 0.05, 0.040),
                           (s_tip - 0.006, 0.030)])
    boxiness = 2.0 + 1.5 * _smoothstep(s, s_wri - 0.02, s_wri + 0.03)
    t0, t1 = tangents[0], tangents[-1]
    vertices, faces, axis = _tube(
        centres, forward, side, fwd_radius(s), up_radius(s), boxiness, ring,
        centres[0] - 0.02 * t0, centres[-1] + 0.008 * t1,
    )
    station_s = np.concatenate([[s[0] - 0.02], np.repeat(s, ring), [s[-1] + 0.008]])
    weights = _chain_weights(station_s, [(s_col, 13, 0.0), (s_sho, 16, 0.03), (s_elb, 18, 0.04),
                                         (s_wri, 20, 0.02), (s_han, 22, 0.015)])

    def ring_ids(sv: float) -> np.ndarray:
        return 1 + int(np.argmin(np.abs(s - sv))) * ring + np.arange(ring)

    rings = {13: ring_ids(s_col), 16: ring_ids(s_sho), 18: ring_ids(s_elb), 20: ring_ids(s_wri), 22: ring_ids(s_han)}
    # Finger tips across the end of the (palm-down, thumb-forward) hand; the thumb on its front edge.
    tip_ring = ring_ids(s[-1])
    top = tip_ring[vertices[tip_ring, 1] >= centres[-1, 1]]
    landmarks = {
        name: int(top[np.argmin(np.abs(vertices[top, 2] - centres[-1, 2] - dz))])
        for name, dz in (("lindex", 0.022), ("lmiddle", 0.007), ("lring", -0.008), ("lpinky", -0.022))
    }
    landmarks["lthumb"] = int(ring_ids(s_han)[0])  # k = 0: the forward (+z) edge of the hand
    return _Part("arm", 1, vertices, faces, axis, weights, rings, landmarks)


def _left_leg(ring: int, stations: int) -> _Part:
    top = _HIP + np.array([0.0, 0.05, 0.0])
    bottom = _ANKLE + np.array([0.0, -0.02, 0.0])
    points = np.stack([top, _HIP, _KNEE, _ANKLE, bottom])
    knot_s = _arc_lengths(points)
    s_top, s_hip, s_kne, s_ank, s_end = knot_s
    s = _stations(s_top, s_end, stations, [s_hip, s_kne, s_ank])
    centres, tangents = _polyline(points, s)
    forward, side = _frames(tangents, np.array([0.0, 0.0, 1.0]))
    side_radius = _profile([(s_top, 0.07), (s_hip, 0.085), (s_hip + 0.10, 0.080), (s_kne - 0.10, 0.060),
                            (s_kne, 0.052), (s_kne + 0.12, 0.056), (s_ank - 0.10, 0.040), (s_ank, 0.034),
                            (s_end, 0.030)])
    fwd_radius = _profile([(s_top, 0.07), (s_hip, 0.088), (s_hip + 0.10, 0.083), (s_kne - 0.10, 0.063),
                           (s_kne, 0.055), (s_kne + 0.12, 0.062), (s_ank - 0.10, 0.042), (s_ank, 0.038),
                           (s_end, 0.032)])
    vertices, faces, axis = _tube(
        centres, forward, side, fwd_radius(s), side_radius(s), np.full(len(s), 2.0), ring,
        top + np.array([0.0, 0.015, 0.0]), bottom + np.array([0.0, -0.012, 0.0]),
    )
    station_s = np.concatenate([[s[0] - 0.015], np.repeat(s, ring), [s[-1] + 0.012]])
    weights = _chain_weights(station_s, [(s_top, 0, 0.0), (s_hip, 1, 0.04), (s_kne, 4, 0.05), (s_ank, 7, 0.03)])

    def ring_ids(sv: float) -> np.ndarray:
        return 1 + int(np.argmin(np.abs(s - sv))) * ring + np.arange(ring)

    rings = {1: ring_ids(s_hip), 4: ring_ids(s_kne), 7: ring_ids(s_ank)}
    return _Part("leg", 1, vertices, faces, axis, weights, rings, {})


def _left_foot(ring: int, stations: int) -> _Part:
    z = _stations(-0.075, 0.165, stations, [_FOOT_BALL_Z, 0.14])
    x = _ANKLE[0] + 0.15 * (z - _ANKLE[2])  # toes turned slightly out
    top = _profile([(-0.075, -1.13), (-0.04, -1.08), (0.0, -1.08), (0.05, -1.11), (0.10, -1.14), (0.165, -1.16)])(z)
    sole = _profile([(-0.075, -1.18), (-0.05, -1.19), (0.13, -1.19), (0.165, -1.185)])(z)
    half_width = _profile([(-0.075, 0.028), (-0.04, 0.035), (0.03, 0.040), (0.10, 0.047), (0.14, 0.044),
                           (0.165, 0.035)])(z)
    centres = np.stack([x, 0.5 * (top + sole), z], 1)
    tangent = np.array([0.15, 0.0, 1.0]) / np.hypot(0.15, 1.0)
    n = len(z)
    up = np.tile([0.0, 1.0, 0.0], (n, 1))
    lateral = np.cross(up[0], tangent)
    lateral = np.tile(lateral / np.linalg.norm(lateral), (n, 1))
    vertices, faces, axis = _tube(
        centres, up, lateral, 0.5 * (top - sole), half_width, np.full(n, 2.6), ring,
        np.array([x[0] - 0.0015, -1.175, -0.088]), np.array([x[-1] + 0.002, -1.172, 0.178]),
    )
    weights = _chain_weights(vertices[:, 2], [(-0.1, 7, 0.0), (_FOOT_BALL_Z, 10, 0.02)])

    def ring_ids(zv: float) -> np.ndarray:
        return 1 + int(np.argmin(np.abs(z - zv))) * ring + np.arange(ring)

    toe_ring, small_toe_ring = ring_ids(z[-1]), ring_ids(0.14)
    landmarks = {
        "LHeel": 0,  # the back pole, low on the heel
        "LBigToe": int(toe_ring[np.argmin(vertices[toe_ring, 0])]),  # medial front
        "LSmallToe": int(small_toe_ring[np.argmax(vertices[small_toe_ring, 0])]),  # lateral front
    }
    return _Part("foot", 1, vertices, faces, axis, weights, {10: ring_ids(_FOOT_BALL_Z)}, landmarks)


# ----------------------------------------------------------------------------------------------
# Assembly.


def _torso_budget(other_vertices: int) -> tuple[int, int] | None:
    remaining = NUM_VERTICES - other_vertices - 2
    for ring in range(48, 38, -2):
        if remaining % ring == 0 and 30 <= remaining // ring <= 60:
            return ring, remaining // ring
    return None


def _build_parts() -> list[_Part]:
    limbs = 2 * (_ARM_RING * _ARM_STATIONS + 2 + _LEG_RING * _LEG_STATIONS + 2 + _FOOT_RING * _FOOT_STATIONS + 2)
    for head_stations in range(24, 40):
        budget = _torso_budget(limbs + _HEAD_RING * head_stations + 2)
        if budget is not None:
            break
    else:  # pragma: no cover - the constants above always admit a solution
        raise RuntimeError("default body: no ring layout reaches 6890 vertices")
    arm = _left_arm(_ARM_RING, _ARM_STATIONS)
    leg = _left_leg(_LEG_RING, _LEG_STATIONS)
    foot = _left_foot(_FOOT_RING, _FOOT_STATIONS)
    return [
        _head(_HEAD_RING, head_stations),
        _torso(*budget),
        arm, leg, foot,
        arm.mirrored(), leg.mirrored(), foot.mirrored(),
    ]


def _tunnel(faces_a: np.ndarray, faces_b: np.ndarray, centroids_a: np.ndarray, centroids_b: np.ndarray,
            vertices: np.ndarray, used: set[int]) -> tuple[int, int, np.ndarray]:
    """Join two closed surfaces: drop their closest pair of free faces, link the holes by a prism."""
    tree = cKDTree(centroids_b)
    dist, nearest = tree.query(centroids_a)
    for ia in np.argsort(dist, kind="stable"):
        ib = int(nearest[ia])
        if used.isdisjoint(faces_a[ia]) and used.isdisjoint(faces_b[ib]):
            break
    else:  # pragma: no cover
        raise RuntimeError("default body: no free faces to join two parts")
    a, b = faces_a[ia], faces_b[ib]
    # Corner a_i is linked to corner b_(c - i): the two holes are walked in opposite senses,
    # which keeps the surface consistently oriented. Pick the shift c with the shortest links.
    def link_length(c: int) -> float:
        return sum(float(np.linalg.norm(vertices[a[i]] - vertices[b[(c - i) % 3]])) for i in range(3))

    shift = min(range(3), key=link_length)
    new = []
    for i in range(3):
        # Quad over edge a_i -> a_(i+1), whose corners link to b_(c-i) and b_(c-i-1).
        a0, a1 = a[i], a[(i + 1) % 3]
        b0, b1 = b[(shift - i - 1) % 3], b[(shift - i) % 3]
        new += [(a0, a1, b0), (a0, b0, b1)]
    used.update(a.tolist() + b.tolist())
    return int(ia), int(ib), np.array(new, dtype=np.int64)


def _assemble(parts: list[_Part]) -> dict[str, np.ndarray]:
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])
    vertices = np.concatenate([p.vertices for p in parts])
    if len(vertices) != NUM_VERTICES:
        raise RuntimeError(f"default body: built {len(vertices)} vertices, expected {NUM_VERTICES}")
    part_faces = [p.faces + offsets[i] for i, p in enumerate(parts)]
    centroids = [vertices[f].mean(axis=1) for f in part_faces]
    # The tree of joins: head, arms and legs to the torso; each foot to its leg.
    joins = [(1, 0), (1, 2), (1, 3), (3, 4), (1, 5), (1, 6), (6, 7)]
    dropped: list[set[int]] = [set() for _ in parts]
    tunnels, used = [], set()
    for pa, pb in joins:
        ia, ib, new = _tunnel(part_faces[pa], part_faces[pb], centroids[pa], centroids[pb], vertices, used)
        dropped[pa].add(ia)
        dropped[pb].add(ib)
        tunnels.append(new)
    kept = [np.delete(f, sorted(d), axis=0) for f, d in zip(part_faces, dropped)]
    faces = np.concatenate(kept + tunnels)

    weights = np.concatenate([p.weights for p in parts])
    weights /= weights.sum(axis=1, keepdims=True)
    regressor = np.zeros((NUM_JOINTS, NUM_VERTICES))
    landmarks: dict[str, int] = {}
    for i, part in enumerate(parts):
        for joint, ids in part.joint_rings.items():
            regressor[joint, ids + offsets[i]] = 1.0 / len(ids)
        landmarks.update({name: int(v + offsets[i]) for name, v in part.landmarks.items()})
    if (regressor.sum(axis=1) == 0).any():
        raise RuntimeError("default body: a joint has no ring to regress it from")

    axis = np.concatenate([p.axis_points for p in parts])
    kind = np.concatenate([np.full(len(p.vertices), p.kind) for p in parts])
    joints = regressor @ vertices
    return {
        "vertices": vertices, "faces": faces, "weights": weights, "regressor": regressor, "axis": axis,
        "kind": kind, "joints": joints, "landmarks": landmarks,
    }


def _pose_directions(vertices: np.ndarray, axis: np.ndarray, weights: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(V, 3, 207) correctives: skin bulge ~ (1 - cos angle) around each joint, and a small slide.

    Joint k acts on the skin of the two bones that meet at it (weight on k or its parent),
    fading with distance from the joint (raised cosine, 0.12 m; the spine's 0.22 m to reach
    the skin of the trunk, the head's 0.18 m to reach the face).
    """
    radial = vertices - axis
    norm = np.linalg.norm(radial, axis=1, keepdims=True)
    outward = np.where(norm > 1e-9, radial / np.maximum(norm, 1e-9), 0.0)
    bulge, slide = 0.012, 0.05
    posedirs = np.zeros((NUM_VERTICES, 3, NUM_POSE_FEATURES))
    for joint in range(1, NUM_JOINTS):
        reach = _CORRECTIVE_REACH.get(joint, 0.12)
        distance = np.linalg.norm(vertices - joints[joint], axis=1)
        near = _raised_cosine(distance, reach) * (weights[:, joint] + weights[:, PARENTS[joint]])
        base = 9 * (joint - 1)
        offset = vertices - joints[joint]
        for d in range(3):
            # sum of the diagonal of (R - I) is -2 (1 - cos angle)
            posedirs[:, :, base + 4 * d] += (-0.5 * bulge) * near[:, None] * outward
            for c in range(3):
                posedirs[:, d, base + 3 * d + c] += slide * near * offset[:, c]
    return posedirs


def _shape_directions(vertices: np.ndarray, axis: np.ndarray, kind: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(V, 3, 10) shape directions; see SHAPE_DIRECTIONS.

    Rates along the body are read at each vertex's centre-line point (``axis``), so a limb ring
    scales about its centre or moves as a whole and the joint regressed from it stays exact.
    """
    dirs = np.zeros((NUM_VERTICES, 3, NUM_BETAS))
    x, y = vertices[:, 0], vertices[:, 1]
    ax, ay = np.abs(axis[:, 0]), axis[:, 1]
    radial = vertices - axis
    torso, head, arm, leg, foot = (kind == k for k in ("torso", "head", "arm", "leg", "foot"))
    sign = np.where(torso, np.sign(x), np.sign(axis[:, 0]))  # limbs: the side their centre line is on
    pelvis, neck = joints[0], joints[12]
    hip_y, ankle_y = joints[1, 1], joints[7, 1]
    shoulder_x, wrist_x = joints[16, 0], joints[20, 0]

    dirs[:, :, 0] = (vertices - pelvis) * np.array([0.02, 0.045, 0.02])
    # Fat goes to the belly, waist and thighs; shoulders and pelvis are bone and change little.
    torso_girth = _profile([(-0.40, 0.08), (-0.30, 0.09), (-0.15, 0.16), (-0.05, 0.18), (0.08, 0.14),
                            (0.18, 0.07), (0.25, 0.05), (0.30, 0.08)])(ay)
    leg_girth = _profile([(-0.32, 0.10), (-0.70, 0.08), (-1.10, 0.05)])(ay)
    arm_girth = _profile([(0.08, 0.04), (0.18, 0.06), (0.30, 0.09), (0.43, 0.07), (0.67, 0.04), (0.76, 0.03)])(ax)
    girth = torso_girth * torso + arm_girth * arm + leg_girth * leg + 0.03 * (head + foot)
    dirs[:, :, 1] = girth[:, None] * radial
    dirs[:, 1, 2] = -0.05 * np.clip(hip_y - ay, 0.0, hip_y - ankle_y) * leg - 0.05 * (hip_y - ankle_y) * foot
    dirs[:, 0, 3] = sign * 0.06 * np.clip(ax - shoulder_x, 0.0, wrist_x - shoulder_x) * arm
    dirs[:, 1, 4] = 0.06 * np.clip(ay - pelvis[1], 0.0, neck[1] - pelvis[1]) * (torso | head | arm)
    shoulders = torso * _smoothstep(np.abs(x), 0.04, 0.17) * _smoothstep(y, 0.02, 0.2)
    dirs[:, 0, 5] = sign * 0.015 * np.where(arm, 1.0, shoulders)
    hips = torso * _smoothstep(np.abs(x), 0.03, 0.15) * _smoothstep(-y, 0.05, 0.25)
    dirs[:, 0, 6] = sign * 0.012 * np.where(leg | foot, 1.0, hips)
    dirs[:, :, 7] = 0.08 * (vertices - _HEAD_CENTRE) * head[:, None]
    front = np.clip(radial[:, 2] / np.maximum(np.linalg.norm(radial, axis=1), 1e-9), 0.0, 1.0) ** 1.5
    dirs[:, 2, 8] = 0.03 * np.exp(-0.5 * ((y + 0.08) / 0.08) ** 2) * front * torso
    limb_leg = _profile([(-0.30, 0.04), (-0.45, 0.12), (-0.70, 0.10), (-1.10, 0.06)])(ay)
    limb_arm = _profile([(0.08, 0.02), (0.18, 0.06), (0.30, 0.12), (0.43, 0.08), (0.55, 0.10), (0.67, 0.04),
                         (0.76, 0.0)])(ax)
    dirs[:, :, 9] = (limb_arm * arm + limb_leg * leg)[:, None] * radial
    return dirs


def _permute_for_landmarks(body: dict) -> np.ndarray:
    """new -> old vertex order that puts each landmark at the index smplx expects."""
    from smplx.vertex_ids import vertex_ids

    targets = vertex_ids["smplh"]
    missing = set(targets) - set(body["landmarks"])
    if missing:
        raise RuntimeError(f"default body: landmarks not placed: {sorted(missing)}")
    order = np.full(NUM_VERTICES, -1)
    for name, target in targets.items():
        order[target] = body["landmarks"][name]
    taken = np.zeros(NUM_VERTICES, bool)
    taken[order[order >= 0]] = True
    order[order < 0] = np.flatnonzero(~taken)
    return order


@functools.lru_cache(maxsize=1)
def _default_body() -> Mapping[str, np.ndarray]:
    body = _assemble(_build_parts())
    order = _permute_for_landmarks(body)
    new_index = np.empty(NUM_VERTICES, np.int64)
    new_index[order] = np.arange(NUM_VERTICES)
    vertices, axis, kind = body["vertices"][order], body["axis"][order], body["kind"][order]
    weights, joints = body["weights"][order], body["joints"]
    arrays = {
        "v_template": vertices,
        "f": new_index[body["faces"]],
        "kintree_table": np.stack([np.array(PARENTS), np.arange(NUM_JOINTS)]).astype(np.int64),
        "J_regressor": body["regressor"][:, order],
        "weights": weights,
        "shapedirs": _shape_directions(vertices, axis, kind, joints),
        "posedirs": _pose_directions(vertices, axis, weights, joints),
    }
    if arrays["f"].shape != (NUM_FACES, 3):
        raise RuntimeError(f"default body: built {len(arrays['f'])} faces, expected {NUM_FACES}")
    for value in arrays.values():
        value.setflags(write=False)
    return arrays


def default_body_arrays() -> dict[str, np.ndarray]:
    """The embedded default body in SMPL's format (read-only arrays, generated once per process).

    Keys and shapes: ``v_template (6890, 3)``, ``f (13776, 3)`` int64, ``kintree_table (2, 24)``
    (row 0 = parents, -1 for the root), ``J_regressor (24, 6890)``, ``weights (6890, 24)``,
    ``shapedirs (6890, 3, 10)``, ``posedirs (6890, 3, 207)``; float64, metres.
    """
    return dict(_default_body())


def save_body_npz(path: str, arrays: Mapping[str, np.ndarray] | None = None) -> None:
    """Write body arrays (default: the embedded body) as an ``.npz`` that ``BodyModel(path=...)`` reads.

    ``path`` may be any fsspec URL; the file is written whole (no partial file on failure).
    """
    from labelmill.models.model_files import write_model_bytes

    arrays = default_body_arrays() if arrays is None else arrays
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    write_model_bytes(path, buffer.getvalue())
