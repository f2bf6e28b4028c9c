"""Training data and training loop of the keypoint initialiser (:mod:`labelmill.models.keypoint_initializer`).

Every training example is made on the fly from a body model:

1. a body pose and the motion's own global orientation (lean, roll) drawn from a pool of
   motion frames (``sources.sample_frames``, e.g. the synthetic world's motion library,
   drawn once per run from ``seed``), turned to a uniformly random yaw (360 degrees), tilted
   by a random camera elevation and by a little extra pitch and roll;
2. a shape ``betas ~ N(0, beta_std)`` clipped to ``+-beta_clip``;
3. a scaled orthographic camera: the person stands ``U(person_height_min, person_height_max)``
   of a frame of ``U(frame_height_min, frame_height_max)`` rows (4:3), centred anywhere within
   ``center_margin`` of the borders (limbs may leave the frame and are then dropped);
4. COCO-17 keypoints projected with the body model (``joints_only``) and corrupted like a
   detector (``sources.detector_noise``: Gaussian noise of ``U(keypoint_sigma_min,
   keypoint_sigma_max)`` person heights, low-confidence guesses, dropped joints).

Losses (on the last iteration's prediction; examples with fewer than 3 detected keypoints are
left out): mean per-joint 3D distance of the 24 joints and 5 face points after aligning the
pelvis (metres), 2D distance between the predicted keypoints projected with the predicted
camera and the clean keypoints (in the normalised frame: units of the keypoint box size),
squared error of the 24 rotation matrices and of the betas.

Batches are drawn from ``numpy.random.SeedSequence([seed, step])`` and the network is
initialised from ``torch.manual_seed(seed)``, so a run is reproducible from its seed (on the
same torch build and thread count).

This module does not import the synthetic world (``models`` never imports ``operators``): the
pose pool and the detector noise are passed in as :class:`TrainingSources`;
:func:`labelmill.operators.pose3d.keypoint_init.synthetic_training_sources` wires the synthetic
world's motion library and detector-noise function.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Protocol

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from smplx.lbs import batch_rodrigues

from labelmill.models import body_kernels, coco
from labelmill.models.body_model import BodyModel
from labelmill.models.camera import project
from labelmill.models.device import torch_threads
from labelmill.models.keypoint_initializer import (
    NUM_ROTATIONS,
    InitializerNetConfig,
    KeypointInitializer,
    normalize_camera,
    normalize_keypoints,
    pack_params,
    split_params,
)

log = logging.getLogger(__name__)

__all__ = [
    "InitializerTrainingConfig",
    "FrameSampler",
    "DetectorNoise",
    "TrainingSources",
    "TrainingBatch",
    "joints_from_rotmats",
    "sample_training_batch",
    "mean_parameters",
    "initializer_losses",
    "train_initializer",
    "describe",
]

_NOMINAL_STATURE_M = 1.72  # standing height of the default body at betas = 0 (sets camera scales)
_FACE_KEYPOINTS = 5  # COCO-17 indices 0..4 are face points (not SMPL joints)
_MIN_DETECTED = 3
_CALIBRATION_STEP = 2**32 - 1  # batch index of the mean-camera batch (no training step uses it)


@dataclasses.dataclass
class InitializerTrainingConfig:
    """Knobs of ``labelmill train initializer`` (defaults: the shipped weights' recipe)."""

    steps: int = 2500  # optimiser steps
    batch_size: int = 256  # examples per step (fresh every step)
    learning_rate: float = 1e-3  # Adam, cosine-decayed ...
    final_learning_rate: float = 1e-5  # ... to this at the last step
    seed: int = 7000  # data and weights; keep it apart from evaluation seeds (synthetic world: 0..99)
    pose_pool: int = 40_000  # motion frames drawn once and reused with fresh orientation/shape/camera/noise
    threads: int = 1  # torch intra-op threads while training (2 can be far slower on a busy 2-core machine)
    log_every: int = 100  # log the losses every this many steps (0: never)
    # --- scene
    elevation_max_deg: float = 20.0  # camera elevation U(-this, this), folded into the global orientation
    pitch_sigma: float = 0.1  # radians: extra body pitch N(0, this) on top of the motion's
    roll_sigma: float = 0.08  # radians: extra body roll N(0, this)
    beta_std: float = 1.0  # betas ~ N(0, beta_std) ...
    beta_clip: float = 2.5  # ... clipped to +-beta_clip
    frame_height_min: int = 240  # frame rows U(min, max); width = 4/3 height
    frame_height_max: int = 480
    person_height_min: float = 0.4  # standing person / frame height
    person_height_max: float = 0.8
    center_margin: float = 0.15  # person's box centre at least this fraction of the frame from its borders
    # --- detector corruption
    keypoint_sigma_min: float = 0.005  # noise std per coordinate, fraction of person height, U(min, max)
    keypoint_sigma_max: float = 0.025
    drop_prob: float = 0.05  # chance a keypoint is missing (confidence 0)
    low_conf_prob: float = 0.08  # chance a keypoint is a low-confidence guess (larger noise)
    # --- loss weights
    weight_joints3d: float = 1.0  # metres, root-aligned joints and face points
    weight_keypoints2d: float = 1.0  # normalised image units (fractions of the keypoint box)
    weight_rotations: float = 0.1  # squared error of rotation matrices (24 x 9 entries)
    weight_betas: float = 0.01  # squared error of betas

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{name} {what}, got {getattr(self, name)!r}")

        for name in ("steps", "batch_size", "pose_pool", "threads"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        need(self.log_every >= 0, "log_every", "must be >= 0")
        need(self.seed >= 0, "seed", "must be >= 0")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(0 < self.final_learning_rate <= self.learning_rate, "final_learning_rate", "must be in (0, learning_rate]")
        need(0 <= self.elevation_max_deg <= 60, "elevation_max_deg", "must be in [0, 60]")
        for name in ("pitch_sigma", "roll_sigma", "beta_std", "weight_joints3d", "weight_keypoints2d",
                     "weight_rotations", "weight_betas"):  # fmt: skip
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(self.beta_clip > 0, "beta_clip", "must be > 0")
        need(32 <= self.frame_height_min <= self.frame_height_max, "frame_height_max", "must be >= frame_height_min >= 32")
        need(0 < self.person_height_min <= self.person_height_max <= 1.0, "person_height_max",
             "must be in [person_height_min, 1] with person_height_min > 0")  # fmt: skip
        need(0 <= self.center_margin < 0.5, "center_margin", "must be in [0, 0.5)")
        need(0 <= self.keypoint_sigma_min <= self.keypoint_sigma_max <= 0.2, "keypoint_sigma_max",
             "must be in [keypoint_sigma_min, 0.2] with keypoint_sigma_min >= 0")  # fmt: skip
        for name in ("drop_prob", "low_conf_prob"):
            need(0 <= getattr(self, name) <= 1, name, "must be in [0, 1]")


class FrameSampler(Protocol):
    """``(n, seed) -> (body_pose (n, 69), global_orient (n, 3))`` axis-angle, deterministic in ``seed``."""

    def __call__(self, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]: ...


class DetectorNoise(Protocol):
    """Corrupt clean keypoints like a detector.

    ``clean (B, 17, 2)`` pixels, ``sigma_px (B,)`` noise std per coordinate -> ``(B, 17, 3)``
    x, y, confidence, with ``(0, 0, 0)`` for missing keypoints (dropped, outside the
    ``width`` x ``height`` frame, or all of a person with fewer than 3 left).
    """

    def __call__(
        self,
        clean: np.ndarray,
        sigma_px: np.ndarray,
        rng: np.random.Generator,
        *,
        width: int,
        height: int,
        drop_prob: float,
        low_conf_prob: float,
    ) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class TrainingSources:
    """Where training poses and detector noise come from."""

    sample_frames: FrameSampler
    detector_noise: DetectorNoise


@dataclasses.dataclass
class TrainingBatch:
    """One batch of B examples (torch, float32)."""

    features: torch.Tensor  # (B, 51) normalised detected keypoints
    rotmats: torch.Tensor  # (B, 24, 3, 3) ground-truth rotations (global orientation first)
    betas: torch.Tensor  # (B, 10)
    camera_norm: torch.Tensor  # (B, 3) ground-truth camera in the normalised frame
    joints3d: torch.Tensor  # (B, 24, 3) metres, no translation
    keypoints3d: torch.Tensor  # (B, 17, 3) metres
    clean2d_norm: torch.Tensor  # (B, 17, 2) clean projections in the normalised frame
    valid: torch.Tensor  # (B,) bool: at least 3 keypoints detected


# --------------------------------------------------------------------------- body model on rotations


def joints_from_rotmats(
    body_model: BodyModel, betas: torch.Tensor, rotmats: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joints ``(B, 24, 3)`` and COCO-17 keypoints ``(B, 17, 3)`` from rotation matrices.

    The same maths as :meth:`BodyModel.joints_only` (which takes axis-angle), entered after
    Rodrigues so that predicted 6D rotations need no conversion to axis-angle.
    ``betas (B, 10)``, ``rotmats (B, 24, 3, 3)`` (global orientation first); differentiable.
    """
    batch = rotmats.shape[0]
    parents = [int(p) for p in body_model.parents.tolist()]
    parents[0] = -1
    rest_joints = body_kernels.shape_blend(body_model.joint_template, body_model.joint_shapedirs, betas)
    joints, global_rot, skin_trans = body_kernels.forward_kinematics(rotmats, rest_joints, parents)
    rest_landmarks = body_kernels.shape_blend(body_model.landmark_template, body_model.landmark_shapedirs, betas)
    correctives = body_kernels.pose_features(rotmats) @ body_model.landmark_posedirs
    rest_landmarks = rest_landmarks + correctives.reshape(batch, -1, 3)
    landmarks = body_kernels.skin_points(rest_landmarks, body_model.landmark_weights, global_rot, skin_trans)
    return joints, coco.assemble_coco17(joints, landmarks)


# --------------------------------------------------------------------------- data


def _orientations(global_orient: np.ndarray, rng: np.random.Generator, cfg: InitializerTrainingConfig) -> np.ndarray:
    """Turn motion orientations ``(B, 3)`` to a random yaw, elevation and extra pitch/roll -> ``(B, 3)``."""
    n = global_orient.shape[0]
    yaw = rng.uniform(-math.pi, math.pi, n)
    elevation = np.radians(rng.uniform(-cfg.elevation_max_deg, cfg.elevation_max_deg, n))
    pitch = rng.normal(0.0, cfg.pitch_sigma, n)
    roll = rng.normal(0.0, cfg.roll_sigma, n)
    outer = Rotation.from_rotvec(np.stack([elevation, np.zeros(n), np.zeros(n)], -1)) * Rotation.from_rotvec(
        np.stack([np.zeros(n), yaw, np.zeros(n)], -1)
    )
    inner = Rotation.from_rotvec(np.stack([pitch, np.zeros(n), np.zeros(n)], -1)) * Rotation.from_rotvec(
        np.stack([np.zeros(n), np.zeros(n), roll], -1)
    )
    return (outer * Rotation.from_rotvec(global_orient) * inner).as_rotvec()


def sample_training_batch(
    pool_pose: np.ndarray,
    pool_orient: np.ndarray,
    body_model: BodyModel,
    sources: TrainingSources,
    cfg: InitializerTrainingConfig,
    rng: np.random.Generator,
    *,
    batch_size: int,
    min_confidence: float,
) -> TrainingBatch:
    """Draw ``batch_size`` examples from the pose pool (``(P, 69)``, ``(P, 3)``) with ``rng``."""
    index = rng.integers(0, pool_pose.shape[0], batch_size)
    body_pose = pool_pose[index]
    global_orient = _orientations(pool_orient[index], rng, cfg)
    betas = np.clip(rng.normal(0.0, cfg.beta_std, (batch_size, 10)), -cfg.beta_clip, cfg.beta_clip)
    height = 2 * int(rng.integers(cfg.frame_height_min // 2, cfg.frame_height_max // 2 + 1))
    width = 2 * int(round(height * 4 / 6))
    fraction = rng.uniform(cfg.person_height_min, cfg.person_height_max, batch_size)
    scale = fraction * height / _NOMINAL_STATURE_M
    sigma_frac = rng.uniform(cfg.keypoint_sigma_min, cfg.keypoint_sigma_max, batch_size)
    target = np.stack(
        [rng.uniform(cfg.center_margin, 1 - cfg.center_margin, batch_size) * width,
         rng.uniform(cfg.center_margin, 1 - cfg.center_margin, batch_size) * height], -1,
    )  # fmt: skip

    aa = torch.as_tensor(np.concatenate([global_orient, body_pose], 1), dtype=torch.float32)
    betas_t = torch.as_tensor(betas, dtype=torch.float32)
    with torch.no_grad():
        out = body_model.joints_only(betas_t, aa[:, :3], aa[:, 3:])
    keypoints3d = out.keypoints3d.double().numpy()
    unplaced = project(keypoints3d, np.stack([scale, np.zeros(batch_size), np.zeros(batch_size)], -1))
    box_centre = 0.5 * (unplaced.min(1) + unplaced.max(1))
    camera = np.concatenate([scale[:, None], target - box_centre], 1)
    clean = project(keypoints3d, camera)
    detected = sources.detector_noise(
        clean, sigma_frac * scale * _NOMINAL_STATURE_M, rng, width=width, height=height,
        drop_prob=cfg.drop_prob, low_conf_prob=cfg.low_conf_prob,
    )  # fmt: skip
    detected_t = torch.as_tensor(detected, dtype=torch.float32)
    features, centre, size = normalize_keypoints(detected_t, min_confidence=min_confidence)
    camera_norm = normalize_camera(torch.as_tensor(camera, dtype=torch.float32), centre, size)
    clean_norm = (torch.as_tensor(clean, dtype=torch.float32) - centre[:, None]) / size[:, None, None]
    return TrainingBatch(
        features=features,
        rotmats=batch_rodrigues(aa.reshape(-1, 3)).reshape(batch_size, NUM_ROTATIONS, 3, 3),
        betas=betas_t,
        camera_norm=camera_norm,
        joints3d=out.joints,
        keypoints3d=out.keypoints3d,
        clean2d_norm=clean_norm,
        valid=(detected_t[..., 2] > 0).sum(1) >= _MIN_DETECTED,
    )


def mean_parameters(pool_pose: np.ndarray, camera_norm: torch.Tensor) -> torch.Tensor:
    """HMR-style mean parameters ``(157,)``: the pool's mean body rotations (chordal mean, projected
    onto SO(3)), the identity global orientation (upright, facing the camera), zero betas and the
    mean normalised camera of ``camera_norm (N, 3)`` (geometric mean of the scale)."""
    rot = batch_rodrigues(torch.as_tensor(pool_pose, dtype=torch.float64).reshape(-1, 3)).reshape(-1, 23, 3, 3)
    u, _, vh = torch.linalg.svd(rot.mean(0))
    fix = torch.ones(23, 3, dtype=torch.float64)
    fix[:, 2] = torch.sign(torch.linalg.det(u @ vh))
    body = (u * fix[:, None, :]) @ vh
    rotmats = torch.cat([torch.eye(3, dtype=torch.float64)[None], body])[None].float()
    scale = camera_norm[:, 0].clamp(min=1e-6).log().mean().exp()
    camera = torch.cat([scale.reshape(1), camera_norm[:, 1:].mean(0)]).reshape(1, 3)
    return pack_params(rotmats, torch.zeros(1, 10), camera)[0]


# --------------------------------------------------------------------------- losses


def initializer_losses(
    model_params: torch.Tensor, batch: TrainingBatch, body_model: BodyModel, cfg: InitializerTrainingConfig
) -> dict[str, torch.Tensor]:
    """Weighted total and its terms for predicted parameters ``(B, 157)`` (means over valid examples)."""
    rotmats, betas, camera_norm = split_params(model_params)
    joints, keypoints3d = joints_from_rotmats(body_model, betas, rotmats)
    weight = batch.valid.to(joints.dtype)
    denom = weight.sum().clamp(min=1.0)

    def aligned(j: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        points = torch.cat([j, k[:, :_FACE_KEYPOINTS]], dim=1)
        return points - j[:, :1]

    joint_err = (aligned(joints, keypoints3d) - aligned(batch.joints3d, batch.keypoints3d)).norm(dim=-1).mean(-1)
    reproj = project(keypoints3d, camera_norm)
    reproj_err = (reproj - batch.clean2d_norm).norm(dim=-1).mean(-1)
    rot_err = (rotmats - batch.rotmats).pow(2).sum((-1, -2)).mean(-1)
    betas_err = (betas - batch.betas).pow(2).mean(-1)
    terms = {
        "joints3d": (joint_err * weight).sum() / denom,
        "keypoints2d": (reproj_err * weight).sum() / denom,
        "rotations": (rot_err * weight).sum() / denom,
        "betas": (betas_err * weight).sum() / denom,
    }
    terms["total"] = (
        cfg.weight_joints3d * terms["joints3d"]
        + cfg.weight_keypoints2d * terms["keypoints2d"]
        + cfg.weight_rotations * terms["rotations"]
        + cfg.weight_betas * terms["betas"]
    )
    return terms


# --------------------------------------------------------------------------- loop


def _batch_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, step]))


def train_initializer(
    sources: TrainingSources,
    *,
    config: InitializerTrainingConfig | None = None,
    net: InitializerNetConfig | None = None,
    body_model: BodyModel | None = None,
) -> KeypointInitializer:
    """Train a :class:`KeypointInitializer` from scratch; deterministic given ``config.seed``.

    The returned model (in eval mode) carries ``metadata["training"]``: the config, the body
    model, the seconds taken and the last logged losses.
    """
    cfg = config or InitializerTrainingConfig()
    net = net or InitializerNetConfig()
    body_model = body_model or BodyModel()
    started = time.perf_counter()
    with torch_threads(cfg.threads):
        pool_pose, pool_orient = sources.sample_frames(cfg.pose_pool, seed=cfg.seed)
        pool_pose = np.asarray(pool_pose, np.float64)
        pool_orient = np.asarray(pool_orient, np.float64)
        if pool_pose.shape != (cfg.pose_pool, 69) or pool_orient.shape != (cfg.pose_pool, 3):
            raise ValueError(
                f"sources.sample_frames returned shapes {pool_pose.shape} and {pool_orient.shape}, "
                f"expected ({cfg.pose_pool}, 69) and ({cfg.pose_pool}, 3)"
            )
        log.info("drew %d training poses (seed %d) in %.1f s", cfg.pose_pool, cfg.seed, time.perf_counter() - started)

        def draw(step: int, size: int) -> TrainingBatch:
            return sample_training_batch(pool_pose, pool_orient, body_model, sources, cfg, _batch_rng(cfg.seed, step),
                                         batch_size=size, min_confidence=net.min_confidence)  # fmt: skip

        calibration = draw(_CALIBRATION_STEP, 2048)
        torch.manual_seed(cfg.seed)
        model = KeypointInitializer(config=net, mean_params=mean_parameters(pool_pose, calibration.camera_norm))
        model.train()
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        ratio = cfg.final_learning_rate / cfg.learning_rate
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
        )
        running: dict[str, float] = {}
        last: dict[str, float] = {}
        history: list[list[float]] = []  # [step, total loss, joints3d (m)] at every log
        loop_start = time.perf_counter()
        for step in range(cfg.steps):
            batch = draw(step, cfg.batch_size)
            params = model(batch.features)[-1]
            terms = initializer_losses(params, batch, body_model, cfg)
            optimiser.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimiser.step()
            schedule.step()
            for name, value in terms.items():
                running[name] = running.get(name, 0.0) + float(value.detach())
            done = step + 1
            if cfg.log_every and (done % cfg.log_every == 0 or done == cfg.steps):
                count = done % cfg.log_every or cfg.log_every
                last = {name: total / count for name, total in running.items()}
                running = {}
                history.append([done, round(last["total"], 6), round(last["joints3d"], 6)])
                elapsed = time.perf_counter() - loop_start
                log.info(
                    "step %d/%d  loss %.4f  joints3d %.1f mm  2d %.4f  rot %.4f  betas %.3f  lr %.2e  (%.0f s, %.0f ex/s)",
                    done, cfg.steps, last["total"], 1000 * last["joints3d"], last["keypoints2d"], last["rotations"],
                    last["betas"], schedule.get_last_lr()[0], elapsed, done * cfg.batch_size / max(elapsed, 1e-9),
                )  # fmt: skip
        model.eval()
    seconds = time.perf_counter() - started
    model.metadata["training"] = {
        "config": dataclasses.asdict(cfg),
        "body_model": body_model.source,
        "seconds": round(seconds, 1),
        "threads": cfg.threads,
        "torch": torch.__version__,
        "last_losses": {k: round(v, 6) for k, v in last.items()},
        "loss_history": history,
    }
    log.info("trained the keypoint initialiser in %.0f s (%d steps of %d)", seconds, cfg.steps, cfg.batch_size)
    return model


def describe(model: KeypointInitializer) -> dict[str, Any]:
    """Size and provenance of a model (for logs and docs)."""
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "float32_mb": round(params * 4 / 2**20, 2), **model.metadata}
