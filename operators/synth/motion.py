"""Procedural human motions as SMPL pose sequences.

A motion is a function of time that sets anatomical *channels* (see
:mod:`labelmill.operators.synth.rig`): periodic, smooth curves (sines and smooth bumps) scaled
by per-video parameters. A video's motion is one primary motion (its label), optionally blended
with the upper-body channels of a second motion, plus a personal neutral posture and slow
"style" noise, all drawn from one ``numpy.random.Generator``. The rig turns the channels into
``body_pose (T, 69)`` and ``global_orient (T, 3)`` inside the joint limits.

Root motion is returned separately: ``travel (T, 3)`` (horizontal displacement in metres along
the facing direction, e.g. walking) and ``airborne (T,)`` (height of the feet above the ground
in metres, e.g. a jump's flight). Keeping the feet on the ground needs the body model and is
done by :func:`ground_offsets`.

:func:`sample_poses` draws random frames of random motions, for fitting a pose prior.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np

from labelmill.operators.synth.rig import channels_to_smpl

__all__ = [
    "MOTION_NAMES",
    "MotionParams",
    "MotionClip",
    "sample_motion_params",
    "motion_channels",
    "make_motion_clip",
    "sample_poses",
    "ground_offsets",
    "smooth_noise",
]

TWO_PI = 2.0 * np.pi


@dataclasses.dataclass(frozen=True)
class MotionParams:
    """Per-video parameters of one motion."""

    speed: float  # tempo multiplier (1 = the motion's natural period)
    amplitude: float  # scales the motion's excursions (1 = typical)
    phase: float  # radians: where in its cycle the motion is at t = 0
    side: int  # +1: the left limb leads / acts (wave, kick, turn direction); -1: the right
    yaw: float  # radians: facing direction at t = 0 (0 = facing the camera)


class _Channels(NamedTuple):
    channels: dict[str, np.ndarray]  # name -> (T,) radians, offsets from the neutral posture
    forward_speed: np.ndarray  # (T,) m/s along the facing direction
    airborne: np.ndarray  # (T,) m: feet above the ground


@dataclasses.dataclass(frozen=True)
class MotionClip:
    """One video's motion. Shapes: T frames."""

    label: str  # primary motion name
    secondary: str  # blended motion name, "" when none
    blend_weight: float  # weight of the secondary motion's upper-body channels
    params: MotionParams
    body_pose: np.ndarray  # (T, 69) axis-angle, SMPL joints 1..23
    global_orient: np.ndarray  # (T, 3) axis-angle, includes the camera elevation
    travel: np.ndarray  # (T, 3) m: horizontal root displacement in the world (y = 0)
    airborne: np.ndarray  # (T,) m: height of the flight phase (jumps), 0 on the ground


# ----------------------------------------------------------------------------- shapes of time


def _bump(x: np.ndarray, power: float = 2.0) -> np.ndarray:
    """Smooth periodic bump in [0, 1], 1 at x = 0 (mod 2 pi)."""
    return ((1.0 + np.cos(x)) / 2.0) ** power


def _window(u: np.ndarray) -> np.ndarray:
    """``sin(pi u)^2`` on u in [0, 1], 0 outside: a smooth (C1) pulse."""
    inside = (u >= 0.0) & (u <= 1.0)
    return np.where(inside, np.sin(np.pi * np.clip(u, 0.0, 1.0)) ** 2, 0.0)


def smooth_noise(t: np.ndarray, rng: np.random.Generator, *, amplitude: float, max_hz: float = 0.5) -> np.ndarray:
    """Slow random curve ``(T,)`` over times ``t (T,)`` seconds, std about ``amplitude``.

    A sum of three sines with random frequencies in ``[0.05, max_hz]`` Hz and random phases.
    """
    freqs = rng.uniform(0.05, max_hz, size=3)
    phases = rng.uniform(0.0, TWO_PI, size=3)
    weights = rng.uniform(0.5, 1.0, size=3)
    weights = weights / np.sqrt((weights**2).sum() / 2.0)
    return amplitude * (weights[:, None] * np.sin(TWO_PI * freqs[:, None] * t[None, :] + phases[:, None])).sum(0)


def _cycle(t: np.ndarray, p: MotionParams, period_s: float) -> np.ndarray:
    """Phase angle ``(T,)`` of a cycle of ``period_s`` seconds at tempo ``p.speed``."""
    return TWO_PI * p.speed * t / period_s + p.phase


def _sided(p: MotionParams) -> tuple[str, str]:
    """(active side prefix, other side prefix)."""
    return ("l", "r") if p.side > 0 else ("r", "l")


def _squat_channels(depth: np.ndarray) -> dict[str, np.ndarray]:
    """Both-leg crouch of ``depth (T,)`` (0 standing, 1 deep) with balanced torso and flat feet."""
    pitch = 0.45 * depth  # the whole body leans forward ...
    thigh = 1.45 * depth  # ... thighs swing forward in the world ...
    shin = 0.6 * depth  # ... shins tilt forward over flat feet
    ch = {"pitch": pitch, "spine_flex": 0.15 * depth, "neck_flex": -0.3 * depth}
    for s in ("l", "r"):
        ch[f"{s}_hip_flex"] = thigh + pitch
        ch[f"{s}_knee_flex"] = thigh + shin
        ch[f"{s}_ankle_flex"] = shin
        ch[f"{s}_hip_abd"] = 0.12 * depth
        ch[f"{s}_hip_twist"] = 0.15 * depth
    return ch


# ----------------------------------------------------------------------------- the motions


def _walk(t: np.ndarray, p: MotionParams) -> _Channels:
    a = p.amplitude
    phi = _cycle(t, p, 1.1)
    ch: dict[str, np.ndarray] = {}
    for s, off in (("l", 0.0), ("r", np.pi)):
        ph = phi + off
        ch[f"{s}_hip_flex"] = 0.08 + 0.42 * a * np.sin(ph)
        ch[f"{s}_knee_flex"] = 0.08 + 0.85 * a * _bump(ph + 0.5, 3.0)
        ch[f"{s}_ankle_flex"] = 0.15 * a * np.sin(ph + 0.6)
        ch[f"{s}_sh_flex"] = 0.38 * a * np.sin(ph + np.pi)
        ch[f"{s}_elbow_flex"] = 0.2 + 0.3 * a * (1.0 + np.sin(ph + np.pi)) / 2.0
    ch["spine_twist"] = 0.12 * a * np.sin(phi)
    ch["spine_flex"] = np.full_like(t, 0.06)
    ch["roll"] = 0.035 * a * np.sin(phi)
    speed = np.full_like(t, 1.27 * a * p.speed)
    return _Channels(ch, speed, np.zeros_like(t))


def _wave(t: np.ndarray, p: MotionParams) -> _Channels:
    a = p.amplitude
    act, _ = _sided(p)
    phi = _cycle(t, p, 0.8)
    ch = {
        f"{act}_sh_abd": np.full_like(t, 1.45 + 0.25 * a),
        f"{act}_sh_flex": np.full_like(t, 0.25),
        f"{act}_sh_twist": np.full_like(t, 1.4),
        f"{act}_elbow_flex": 1.15 + 0.45 * a * np.sin(phi),
        f"{act}_wrist_flex": 0.25 * a * np.sin(phi - 0.6),
        "spine_side": -0.06 * p.side * (1.0 + 0.5 * np.sin(phi)),
        "neck_side": 0.08 * p.side * np.ones_like(t),
        "neck_twist": 0.15 * p.side * np.ones_like(t),
    }
    return _Channels(ch, np.zeros_like(t), np.zeros_like(t))


def _squat(t: np.ndarray, p: MotionParams) -> _Channels:
    a = p.amplitude
    phi = _cycle(t, p, 2.6)
    depth = np.clip(0.9 * a, 0.2, 1.0) * (1.0 - np.cos(phi)) / 2.0
    ch = _squat_channels(depth)
    for s in ("l", "r"):
        ch[f"{s}_sh_flex"] = 1.35 * depth
        ch[f"{s}_elbow_flex"] = 0.25 * depth
    return _Channels(ch, np.zeros_like(t), np.zeros_like(t))


def _jump(t: np.ndarray, p: MotionParams) -> _Channels:
    a = p.amplitude
    tau = np.mod(_cycle(t, p, 1.5) / TWO_PI, 1.0)  # [0, 1) through one jump
    crouch = 0.5 * a * _window(tau / 0.35) + 0.35 * a * _window((tau - 0.65) / 0.25)
    u = (tau - 0.35) / 0.3  # flight: [0, 1]
    flight = np.clip(u, 0.0, 1.0)
    in_air = (u > 0.0) & (u < 1.0)
    height = np.where(in_air, 4.0 * 0.32 * a * flight * (1.0 - flight), 0.0)
    air_pose = _window(u)
    ch = _squat_channels(np.clip(crouch, 0.0, 1.0))
    for s in ("l", "r"):
        ch[f"{s}_knee_flex"] = ch[f"{s}_knee_flex"] + 0.45 * air_pose
        ch[f"{s}_hip_flex"] = ch[f"{s}_hip_flex"] + 0.25 * air_pose
        ch[f"{s}_ankle_flex"] = ch[f"{s}_ankle_flex"] - 0.55 * air_pose
        ch[f"{s}_sh_flex"] = -0.5 * _window(tau / 0.3) + 1.7 * a * _window((tau - 0.2) / 0.6)
        ch[f"{s}_sh_abd"] = 0.35 * air_pose
        ch[f"{s}_elbow_flex"] = 0.3 * air_pose
    return _Channels(ch, np.zeros_like(t), height)


def _turn(t: np.ndarray, p: MotionParams) -> _Channels:
    a = p.amplitude
    phi = _cycle(t, p, 4.0)
    turn = p.side * min(a, 1.0) * np.pi * (1.0 - np.cos(phi)) / 2.0
    turn_rate = np.abs(np.sin(phi))  # 0..1, largest mid-turn
    step = TWO_PI * 1.8 * t
    ch: dict[str, np.ndarray] = {"yaw": turn, "neck_twist": 0.35 * p.side * np.sin(phi)}
    for s, off in (("l", 0.0), ("r", np.pi)):
        lift = turn_rate * np.clip(np.sin(step + off), 0.0, None)
        ch[f"{s}_hip_flex"] = 0.35 * lift
        ch[f"{s}_knee_flex"] = 0.7 * lift
        ch[f"{s}_sh_flex"] = 0.15 * np.sin(step + off + np.pi) * turn_rate
    ch["spine_twist"] = 0.15 * p.side * np.sin(phi)
    return _Channels(ch, np.zeros_like(t), np.zeros_like(t))


def _arm_circles(t: np.ndarray, p: MotionParams) -> _Channels:
    a = p.amplitude
    phi = _cycle(t, p, 1.3)
    ch: dict[str, np.ndarray] = {}
    for s in ("l", "r"):
        ch[f"{s}_sh_abd"] = 1.45 + 0.5 * a * np.cos(phi)
        ch[f"{s}_sh_flex"] = 0.5 * a * np.sin(phi)
        ch[f"{s}_elbow_flex"] = np.full_like(t, 0.08)
        ch[f"{s}_collar_elev"] = 0.1 * (1.0 + np.cos(phi)) / 2.0
    ch["spine_flex"] = 0.04 * np.sin(phi)
    return _Channels(ch, np.zeros_like(t), np.zeros_like(t))


def _reach(t: np.ndarray, p: MotionParams) -> _Channels:
    a = p.amplitude
    phi = _cycle(t, p, 3.2)
    reach = {"l": np.clip(np.sin(phi), 0.0, None) ** 2, "r": np.clip(-np.sin(phi), 0.0, None) ** 2}
    ch: dict[str, np.ndarray] = {}
    for s in ("l", "r"):
        e = reach[s] * min(a, 1.1)
        ch[f"{s}_sh_flex"] = 1.9 * e
        ch[f"{s}_sh_abd"] = 0.45 * e
        ch[f"{s}_elbow_flex"] = 0.3 * (1.0 - e)
        ch[f"{s}_ankle_flex"] = -0.35 * (reach["l"] + reach["r"]) * min(a, 1.0)
        ch[f"{s}_collar_elev"] = 0.25 * e
    ch["spine_side"] = -0.22 * (reach["l"] - reach["r"]) * a
    ch["neck_flex"] = -0.4 * (reach["l"] + reach["r"])
    return _Channels(ch, np.zeros_like(t), np.zeros_like(t))


def _kick(t: np.ndarray, p: MotionParams) -> _Channels:
    a = p.amplitude
    act, other = _sided(p)
    tau = np.mod(_cycle(t, p, 1.8) / TWO_PI, 1.0)
    u = tau / 0.6
    lift = _window(u)
    extend = _window((u - 0.2) / 0.6) ** 2
    ch = {
        f"{act}_hip_flex": 1.25 * min(a, 1.2) * lift,
        f"{act}_knee_flex": 1.9 * lift - 1.45 * min(a, 1.0) * extend,
        f"{act}_ankle_flex": -0.4 * lift,
        f"{other}_knee_flex": 0.15 + 0.1 * lift,
        "pitch": -0.12 * lift,
        "spine_flex": 0.1 * lift,
    }
    for s in ("l", "r"):
        ch[f"{s}_sh_flex"] = np.full_like(t, 0.55)
        ch[f"{s}_sh_abd"] = np.full_like(t, 0.3)
        ch[f"{s}_elbow_flex"] = np.full_like(t, 1.7)
    return _Channels(ch, np.zeros_like(t), np.zeros_like(t))


def _idle(t: np.ndarray, p: MotionParams) -> _Channels:
    a = p.amplitude
    phi = _cycle(t, p, 4.5)
    sway = np.sin(phi)
    ch = {
        "roll": 0.05 * a * sway,
        "l_hip_abd": 0.05 * a * sway,
        "r_hip_abd": -0.05 * a * sway,
        "l_knee_flex": 0.12 * a * np.clip(-sway, 0.0, None),
        "r_knee_flex": 0.12 * a * np.clip(sway, 0.0, None),
        "neck_twist": 0.5 * a * np.sin(0.5 * phi + 1.0),
        "spine_twist": 0.1 * a * np.sin(0.5 * phi + 0.7),
        "l_sh_flex": 0.12 * a * np.sin(phi + 0.3),
        "r_sh_flex": 0.12 * a * np.sin(phi + 1.9),
    }
    return _Channels(ch, np.zeros_like(t), np.zeros_like(t))


_MOTIONS: dict[str, Callable[[np.ndarray, MotionParams], _Channels]] = {
    "walk": _walk,
    "wave": _wave,
    "squat": _squat,
    "jump": _jump,
    "turn": _turn,
    "arm_circles": _arm_circles,
    "reach": _reach,
    "kick": _kick,
    "idle": _idle,
}
#: Names of the motions, in a fixed order (labels of the synthetic corpus).
MOTION_NAMES: tuple[str, ...] = tuple(_MOTIONS)

# Channels a secondary motion may contribute when blended (the upper body).
_UPPER_BODY = tuple(
    f"{s}_{c}" for s in ("l", "r") for c in ("collar_elev", "sh_abd", "sh_flex", "sh_twist", "elbow_flex", "wrist_flex")
) + ("neck_flex", "neck_side", "neck_twist")


def sample_motion_params(
    rng: np.random.Generator,
    *,
    speed_range: tuple[float, float] = (0.8, 1.25),
    amplitude_range: tuple[float, float] = (0.7, 1.15),
) -> MotionParams:
    """Random :class:`MotionParams`: uniform tempo/amplitude/phase, random side, and a facing
    direction within 50 degrees of the camera 60% of the time, anywhere otherwise."""
    speed = rng.uniform(*speed_range)
    amplitude = rng.uniform(*amplitude_range)
    phase = rng.uniform(0.0, TWO_PI)
    side = 1 if rng.random() < 0.5 else -1
    yaw = rng.uniform(-0.87, 0.87) if rng.random() < 0.6 else rng.uniform(-np.pi, np.pi)
    return MotionParams(speed=float(speed), amplitude=float(amplitude), phase=float(phase), side=side, yaw=float(yaw))


def _neutral_and_style(t: np.ndarray, rng: np.random.Generator, style_amplitude: float) -> dict[str, np.ndarray]:
    """A person's neutral posture (arms relaxed, small random offsets) plus slow style noise."""
    ones = np.ones_like(t)
    ch = {
        "spine_flex": rng.uniform(-0.05, 0.12) * ones,
        "neck_flex": rng.uniform(-0.1, 0.2) * ones,
        "neck_twist": rng.uniform(-0.15, 0.15) * ones,
    }
    for s in ("l", "r"):
        ch[f"{s}_sh_abd"] = rng.uniform(0.1, 0.25) * ones
        ch[f"{s}_elbow_flex"] = rng.uniform(0.1, 0.35) * ones
        ch[f"{s}_sh_twist"] = rng.uniform(-0.1, 0.3) * ones
        ch[f"{s}_hip_abd"] = rng.uniform(0.02, 0.1) * ones
        ch[f"{s}_hip_twist"] = rng.uniform(0.0, 0.2) * ones
        ch[f"{s}_knee_flex"] = rng.uniform(0.0, 0.08) * ones
    if style_amplitude > 0:
        for name in ("spine_flex", "spine_twist", "spine_side", "neck_flex", "neck_twist", "neck_side"):
            ch[name] = ch.get(name, 0.0 * ones) + smooth_noise(t, rng, amplitude=style_amplitude)
        for s in ("l", "r"):
            for c in ("sh_abd", "sh_flex", "elbow_flex"):
                ch[f"{s}_{c}"] = ch.get(f"{s}_{c}", 0.0 * ones) + smooth_noise(t, rng, amplitude=style_amplitude)
    return ch


def _add(
    into: dict[str, np.ndarray], add: dict[str, np.ndarray], weight: float = 1.0, keys: Sequence[str] | None = None
) -> None:
    for name, values in add.items():
        if keys is not None and name not in keys:
            continue
        into[name] = into[name] + weight * values if name in into else weight * values


def motion_channels(name: str, t: np.ndarray, params: MotionParams) -> dict[str, np.ndarray]:
    """Channel offsets of motion ``name`` at times ``t (T,)`` seconds (without neutral posture)."""
    if name not in _MOTIONS:
        raise ValueError(f"unknown motion {name!r}; known motions: {', '.join(MOTION_NAMES)}")
    return _MOTIONS[name](t, params).channels


def make_motion_clip(
    rng: np.random.Generator,
    *,
    t: np.ndarray,
    motion_names: Sequence[str] = MOTION_NAMES,
    label: str | None = None,
    blend_prob: float = 0.35,
    blend_weight_range: tuple[float, float] = (0.3, 0.6),
    speed_range: tuple[float, float] = (0.8, 1.25),
    amplitude_range: tuple[float, float] = (0.7, 1.15),
    style_amplitude: float = 0.05,
    camera_elevation: float = 0.0,
) -> MotionClip:
    """Draw one video's motion at times ``t (T,)`` seconds.

    The primary motion is ``label`` or uniform over ``motion_names``; with probability
    ``blend_prob`` a different motion's upper-body channels are added with a weight drawn from
    ``blend_weight_range``. ``camera_elevation`` (radians, camera above the person > 0) is folded
    into ``global_orient``.
    """
    for name in motion_names:
        if name not in _MOTIONS:
            raise ValueError(f"unknown motion {name!r}; known motions: {', '.join(MOTION_NAMES)}")
    if not motion_names:
        raise ValueError("motion_names must name at least one motion")
    primary = label if label is not None else str(motion_names[rng.integers(len(motion_names))])
    params = sample_motion_params(rng, speed_range=speed_range, amplitude_range=amplitude_range)
    out = _MOTIONS[primary](t, params)
    channels = _neutral_and_style(t, rng, style_amplitude)
    _add(channels, out.channels)
    secondary, weight = "", 0.0
    others = [m for m in MOTION_NAMES if m != primary]
    if rng.random() < blend_prob:
        secondary = others[rng.integers(len(others))]
        weight = float(rng.uniform(*blend_weight_range))
        second_params = sample_motion_params(rng, speed_range=speed_range, amplitude_range=amplitude_range)
        _add(channels, _MOTIONS[secondary](t, second_params).channels, weight, _UPPER_BODY)
    yaw_drift = smooth_noise(t, rng, amplitude=0.1, max_hz=0.2)
    channels["yaw"] = channels.get("yaw", 0.0 * t) + params.yaw + yaw_drift
    channels["cam_elev"] = np.full_like(t, camera_elevation)
    body_pose, global_orient = channels_to_smpl(channels, len(t))
    travel = _integrate_travel(t, out.forward_speed, channels["yaw"])
    return MotionClip(
        label=primary,
        secondary=secondary,
        blend_weight=weight,
        params=params,
        body_pose=body_pose,
        global_orient=global_orient,
        travel=travel,
        airborne=out.airborne,
    )


def _integrate_travel(t: np.ndarray, forward_speed: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Horizontal root displacement ``(T, 3)``: speed along the facing direction (sin yaw, 0, cos yaw)."""
    dt = np.diff(t, prepend=t[:1])
    velocity = forward_speed[:, None] * np.stack([np.sin(yaw), np.zeros_like(yaw), np.cos(yaw)], -1)
    return np.cumsum(velocity * dt[:, None], axis=0)


def ground_offsets(
    joints: np.ndarray, airborne: np.ndarray, *, foot_joints: Sequence[int] = (7, 8, 10, 11)
) -> np.ndarray:
    """Vertical root translation ``(T,)`` that keeps the lowest foot joint on the ground (y = 0).

    ``joints (T, 24, 3)`` are body-model joints without translation; ``airborne (T,)`` lifts the
    body off the ground (jumps).
    """
    lowest = joints[:, list(foot_joints), 1].min(axis=1)
    return -lowest + airborne


def sample_poses(
    n: int, *, seed: int, motion_names: Sequence[str] = MOTION_NAMES, frames_per_clip: int = 16
) -> np.ndarray:
    """``(n, 69)`` body poses: random frames of random motions (with blending and style noise).

    Deterministic given ``seed``. Each group of ``frames_per_clip`` poses shares one motion
    draw, evaluated at random times within a 20-second window.
    """
    if n < 0:
        raise ValueError(f"sample_poses: n must be >= 0, got {n}")
    if frames_per_clip < 1:
        raise ValueError(f"sample_poses: frames_per_clip must be >= 1, got {frames_per_clip}")
    rng = np.random.default_rng(seed)
    poses = np.zeros((n, 69))
    for start in range(0, n, frames_per_clip):
        count = min(frames_per_clip, n - start)
        t = np.sort(rng.uniform(0.0, 20.0, size=count))
        clip = make_motion_clip(rng, t=t, motion_names=motion_names)
        poses[start : start + count] = clip.body_pose
    return poses
