"""A per-frame initialisation that mimics HMR's errors, for experiments on synthetic videos.

HMR regresses every frame on its own, so its errors are independent from frame to frame:
pose errors on every joint (including the depth-ambiguous bends that reprojection alone cannot
see), a shape that wobbles per frame, and a camera that is roughly right. We perturb the ground
truth the same way (all Gaussian, per frame, independently):

- body pose: each of the 69 axis-angle components + N(0, ``pose_sigma``) radians;
- global orientation: + N(0, ``orient_sigma``) radians per component;
- shape: betas + N(0, ``betas_sigma``);
- camera: scale x (1 + N(0, ``scale_sigma``)), translation + N(0, ``translation_sigma``) metres
  at the person's scale (i.e. ``translation_sigma * s`` pixels).

With the defaults the initial MPJPE on the synthetic benchmark is in the range HMR reaches on
Human3.6M (~80-90 mm); docs/pose3d.md records the measured figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NoisyInitConfig", "noisy_init"]


@dataclass
class NoisyInitConfig:
    """Per-frame noise of the HMR-like initialisation (``init.*`` in experiments)."""

    pose_sigma: float = 0.13  # radians, per body-pose axis-angle component
    orient_sigma: float = 0.08  # radians, per global-orientation component
    betas_sigma: float = 0.6  # per shape coefficient
    scale_sigma: float = 0.05  # relative camera scale error
    translation_sigma: float = 0.03  # camera translation error, metres at the person's scale

    def __post_init__(self) -> None:
        for name in ("pose_sigma", "orient_sigma", "betas_sigma", "scale_sigma", "translation_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


def noisy_init(
    betas: np.ndarray,
    global_orient: np.ndarray,
    body_pose: np.ndarray,
    camera: np.ndarray,
    *,
    config: NoisyInitConfig,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Per-frame noisy copies of ground truth.

    Args:
        betas: ``(10,)``; global_orient ``(F, 3)``; body_pose ``(F, 69)``; camera ``(F, 3)`` pixels.

    Returns:
        ``init_betas (F, 10)``, ``init_global_orient (F, 3)``, ``init_body_pose (F, 69)``,
        ``init_camera (F, 3)``, all float32.
    """
    num_frames = global_orient.shape[0]
    init_betas = betas[None, :] + rng.normal(0.0, config.betas_sigma, size=(num_frames, betas.shape[-1]))
    init_orient = global_orient + rng.normal(0.0, config.orient_sigma, size=global_orient.shape)
    init_pose = body_pose + rng.normal(0.0, config.pose_sigma, size=body_pose.shape)
    scale = camera[:, 0] * (1.0 + rng.normal(0.0, config.scale_sigma, size=num_frames))
    shift = rng.normal(0.0, config.translation_sigma, size=(num_frames, 2)) * camera[:, :1]
    init_camera = np.concatenate([scale[:, None], camera[:, 1:3] + shift], axis=1)
    return {
        "init_betas": init_betas.astype(np.float32),
        "init_global_orient": init_orient.astype(np.float32),
        "init_body_pose": init_pose.astype(np.float32),
        "init_camera": init_camera.astype(np.float32),
    }
