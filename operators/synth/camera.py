"""The seed's scaled orthographic camera, per frame, and a smooth hand-held camera path.

Convention (one pure function, :func:`project`, shared with the bundle adjustment; it is
:func:`labelmill.models.camera.project`): a frame's camera is ``(s, u_x, u_y)`` and

    x_img = s * X_x + u_x
    y_img = -s * X_y + u_y

for body-model points ``X`` in metres that already carry the body's global rotation ``R``
(SMPL applies ``global_orient`` to its joints, so ``X = R X_rest``): ``Pi`` drops depth z and
flips y so that SMPL's up (+y) is up in the image. ``s`` is pixels per metre, ``u`` pixels.
The view direction is -z (the camera sits at +z): a person facing +z faces the camera and
their left (+x) appears on the image's right. Larger z is closer to the camera.

The stored camera of a frame maps the body model's output *without* root translation; the
person's world translation ``transl`` is folded into it: ``u = u_bg + s * (transl_x, -transl_y)``
where ``u_bg`` is where the world origin (on the ground, y = 0) projects, i.e. the background
camera used to draw the backdrop.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from labelmill.models.camera import project

__all__ = ["project", "CameraPath", "sample_camera_path", "compose_cameras", "distractor_cameras", "bounded_wave"]


@dataclasses.dataclass(frozen=True)
class CameraPath:
    """A smooth pan/zoom over one video. Shapes: T frames."""

    scale: np.ndarray  # (T,) pixels per metre
    pan: np.ndarray  # (T, 2) pixels: offset of the tracked person's centre from the frame centre
    elevation: float  # radians: camera above the person (> 0), folded into global_orient


def bounded_wave(t: np.ndarray, rng: np.random.Generator, *, min_hz: float = 0.05, max_hz: float = 0.35) -> np.ndarray:
    """Smooth random curve ``(T,)`` in [-1, 1]: 0.6 sin + 0.4 sin with random low frequencies."""
    f = rng.uniform(min_hz, max_hz, size=2)
    ph = rng.uniform(0.0, 2.0 * np.pi, size=2)
    return 0.6 * np.sin(2.0 * np.pi * f[0] * t + ph[0]) + 0.4 * np.sin(2.0 * np.pi * f[1] * t + ph[1])


def sample_camera_path(
    rng: np.random.Generator,
    *,
    t: np.ndarray,
    width: int,
    height: int,
    stature_m: float,
    person_height_range: tuple[float, float] = (0.45, 0.75),
    zoom_amplitude: float = 0.08,
    pan_amplitude: float = 0.12,
    elevation_max_rad: float = 0.2,
) -> CameraPath:
    """Draw a camera path over times ``t (T,)`` seconds.

    The mean scale makes a person of height ``stature_m`` metres span a fraction of the frame
    height drawn uniformly from ``person_height_range``; the scale then varies smoothly by up to
    ``zoom_amplitude`` (relative) and the framing by up to ``pan_amplitude`` of the frame width
    horizontally (half that vertically).
    """
    if stature_m <= 0:
        raise ValueError(f"stature_m must be > 0, got {stature_m}")
    fraction = rng.uniform(*person_height_range)
    mean_scale = fraction * height / stature_m
    scale = mean_scale * (1.0 + zoom_amplitude * bounded_wave(t, rng))
    pan = np.stack(
        [pan_amplitude * width * bounded_wave(t, rng), 0.5 * pan_amplitude * height * bounded_wave(t, rng)], -1
    )
    elevation = float(rng.uniform(-elevation_max_rad, elevation_max_rad))
    return CameraPath(scale=scale, pan=pan, elevation=elevation)


def compose_cameras(
    path: CameraPath,
    *,
    translation: np.ndarray,
    width: int,
    height: int,
    stature_m: float,
    center_offset: np.ndarray | None = None,
    headroom_m: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame cameras of a person whose root moves by ``translation (T, 3)`` metres.

    The camera follows the person horizontally but not vertically, so jumps show against the
    background. The span from the ground to ``stature_m + headroom_m`` (``headroom_m``: the
    highest jump of the video) is centred at the frame centre plus ``path.pan`` plus
    ``center_offset (T, 2)`` pixels.

    Returns ``(camera (T, 3), background (T, 3))``: ``camera`` maps body-model points without
    translation (what is stored as ground truth); ``background = (s, u_bg)`` maps world points
    (the backdrop, the ground at y = 0).
    """
    s = path.scale
    offset = np.zeros_like(path.pan) if center_offset is None else center_offset
    ground_row = height / 2.0 + s * (stature_m + headroom_m) / 2.0 + path.pan[:, 1] + offset[:, 1]
    person_col = width / 2.0 + path.pan[:, 0] + offset[:, 0]
    u_bg_x = person_col - s * translation[:, 0]
    u_bg = np.stack([u_bg_x, ground_row], -1)
    u = u_bg + s[:, None] * np.stack([translation[:, 0], -translation[:, 1]], -1)
    camera = np.concatenate([s[:, None], u], -1)
    background = np.concatenate([s[:, None], u_bg], -1)
    return camera, background


def distractor_cameras(
    background: np.ndarray,
    *,
    scale_factor: float,
    world_x: float,
    translation: np.ndarray,
    height: int,
) -> np.ndarray:
    """Per-frame cameras ``(T, 3)`` of another person standing ``world_x`` metres beside the world
    origin of ``background (T, 3)`` (the person of interest's background camera).

    The person is drawn ``scale_factor`` times the size of the person of interest (< 1: farther
    away, so standing higher in the frame, by ``(1 - scale_factor) / 4`` of the frame ``height``)
    and moves with its own root ``translation (T, 3)`` (horizontally at the world's scale, its
    jumps at its own).
    """
    s = background[:, 0]
    s_person = s * scale_factor
    ground_row = background[:, 2] - (1.0 - scale_factor) * 0.25 * height
    u_x = background[:, 1] + s * (world_x + translation[:, 0])
    u_y = ground_row - s_person * translation[:, 1]
    return np.stack([s_person, u_x, u_y], -1)
