"""Bundle adjustment over SMPL for whole videos, many videos per batch (DESIGN.md §3).

Each problem in a batch is one video (or one window of a long video) with F frames:
shape ``beta (10)`` shared over the problem, and per frame ``global_orient (3)``,
``body_pose (69)``, camera ``(s, u_x, u_y)``: 10 + 75F parameters, solved by the batched
per-problem L-BFGS in :mod:`labelmill.models.batched_lbfgs`.

Units. Pixels are mapped to *normalised image units* per problem: ``x_n = (x - c) / s0`` with
``s0`` the median initial camera scale (pixels per metre) and ``c`` the median initial
translation. A residual of 0.05 then means "5 cm at the person's scale" whatever the
resolution, so Huber thresholds and weights are in metres and one set serves every corpus.
The camera is optimised in the same units (``s/s0``, ``(u - c)/s0``), which also keeps the
problem well conditioned.

The objective of a problem is the *mean over its real frames* of
``E_R + E_T + E_P`` (scale-free in the video length; same minimiser as the sum).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from labelmill.models.batched_lbfgs import LBFGSConfig, minimize_batched
from labelmill.models.camera import project
from labelmill.models.pose3d_energy import init_energy, reprojection_energy, temporal_energy

__all__ = ["FitConfig", "VideoBatch", "FitResult", "Pose3dEnergy", "Pose3dProblem", "build_problem", "finish", "fit_videos"]

NUM_BETAS, NUM_GLOBAL, NUM_BODY, NUM_CAMERA = 10, 3, 69, 3
PER_FRAME = NUM_GLOBAL + NUM_BODY + NUM_CAMERA  # 75


@dataclass
class FitConfig:
    """Weights and switches of the bundle-adjustment energy (``fit.*`` in the config)."""

    reprojection: bool = True  # E_R on/off
    temporal: bool = True  # E_T on/off
    prior: bool = True  # E_P (GMM prior + stay-close-to-init) on/off
    lambda_r: float = 400.0  # E_R weight (residuals in normalised units ~ metres)
    huber_delta_2d: float = 0.04  # Huber threshold of 2D residuals (normalised units)
    tau_r: float | None = 75.0  # outlier cap of a frame's E_R (after lambda_r; ~ mean residual 0.3); null disables
    min_confidence: float = 0.1  # detections below this confidence get weight 0
    lambda_temporal_3d: float = 200.0  # lambda_1: 3D joint velocity
    lambda_temporal_2d: float = 200.0  # lambda_2: 2D keypoint velocity
    lambda_temporal_camera: float = 200.0  # lambda_3: camera velocity (normalised units)
    huber_delta_3d: float = 0.05  # Huber threshold of 3D residuals (metres)
    huber_delta_camera: float = 0.05  # Huber threshold of camera differences
    lambda_gmm: float = 0.02  # weight of the GMM pose prior E_J
    lambda_init: float = 20.0  # lambda_I: stay close to the initial 3D joints
    lambda_beta: float = 0.5  # lambda_beta inside E_I: stay close to the initial shapes
    huber_delta_beta: float = 1.0  # Huber threshold on beta differences
    window: int = 100  # frames per problem; longer videos are split into overlapping windows
    window_overlap: int = 20  # frames shared by consecutive windows (cross-faded when stitching)
    pad_multiple: int = 20  # problems are padded to a multiple of this many frames (depends on the video only)
    cpu_threads: int = 1  # torch threads while fitting on CPU; 1 keeps results independent of batching; 0 = torch's
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    solver: LBFGSConfig = field(default_factory=lambda: LBFGSConfig(max_iter=300))  # run to convergence

    def __post_init__(self) -> None:
        for name in (
            "lambda_r", "huber_delta_2d", "lambda_temporal_3d", "lambda_temporal_2d", "lambda_temporal_camera",
            "huber_delta_3d", "huber_delta_camera", "lambda_gmm", "lambda_init", "lambda_beta", "huber_delta_beta",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("huber_delta_2d", "huber_delta_3d", "huber_delta_camera", "huber_delta_beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.tau_r is not None and self.tau_r <= 0:
            raise ValueError("tau_r must be > 0 or null")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError("min_confidence must be in [0, 1]")
        if self.window < 2:
            raise ValueError("window must be >= 2 frames")
        if not 0 <= self.window_overlap < self.window:
            raise ValueError("window_overlap must be in [0, window)")
        if self.pad_multiple < 1:
            raise ValueError("pad_multiple must be >= 1")
        if self.cpu_threads < 0:
            raise ValueError("cpu_threads must be >= 0 (0: torch's default)")

    @property
    def terms(self) -> str:
        """Name of the enabled energy, as in the seed's ablation table (``E_R+E_P+E_T``)."""
        names = [n for n, on in (("E_R", self.reprojection), ("E_P", self.prior), ("E_T", self.temporal)) if on]
        return "+".join(names) or "none"


@dataclass
class VideoBatch:
    """Inputs of a batch of B problems, padded to F frames and P people.

    detections: ``(B, F, P, 17, 3)`` detected COCO keypoints (x, y, confidence) in pixels.
    person_mask: ``(B, F, P)`` bool, a detection exists.  frame_mask: ``(B, F)`` bool, real frame.
    init_betas ``(B, F, 10)``, init_global_orient ``(B, F, 3)``, init_body_pose ``(B, F, 69)``,
    init_camera ``(B, F, 3)`` (s px/m, u_x, u_y px): the per-frame initialisation.
    """

    detections: Tensor
    person_mask: Tensor
    frame_mask: Tensor
    init_betas: Tensor
    init_global_orient: Tensor
    init_body_pose: Tensor
    init_camera: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.frame_mask.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.frame_mask.shape[1])

    def select(self, rows: slice) -> "VideoBatch":
        """The problems ``rows`` of this batch."""
        return VideoBatch(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "VideoBatch":
        out = {}
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            out[f.name] = t.to(device=device) if t.dtype == torch.bool else t.to(device=device, dtype=dtype)
        return VideoBatch(**out)


@dataclass
class FitResult:
    """Per-frame fitted parameters ``(B, F, ...)`` in pixel units, plus solver diagnostics ``(B,)``."""

    betas: Tensor  # (B, 10)
    global_orient: Tensor  # (B, F, 3)
    body_pose: Tensor  # (B, F, 69)
    camera: Tensor  # (B, F, 3) pixels
    joints3d: Tensor  # (B, F, 24, 3)
    keypoints3d: Tensor  # (B, F, 17, 3)
    projected2d: Tensor  # (B, F, 17, 2) pixels
    energy: Tensor  # (B,) final objective
    iterations: Tensor  # (B,)
    converged: Tensor  # (B,) bool


def _median_over_frames(x: Tensor, frame_mask: Tensor) -> Tensor:
    """Median of ``x (B, F)`` over real frames -> ``(B,)``."""
    filled = torch.where(frame_mask, x, torch.full_like(x, float("nan")))
    return torch.nanmedian(filled, dim=1).values


class Pose3dEnergy(torch.nn.Module):
    """The seed's energy for a batch of problems; holds the body model and prior.

    ``joints_fn(betas (N,10), global_orient (N,3), body_pose (N,69)) -> (joints (N,24,3),
    keypoints3d (N,17,3))`` chooses the body forward: the joints-only fast path by default;
    the SMPLify-style baseline passes the full-mesh forward.
    """

    def __init__(self, *, body_model: torch.nn.Module, prior: torch.nn.Module, config: FitConfig,
                 joints_fn: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None) -> None:
        super().__init__()
        self.body_model = body_model
        self.prior = prior
        self.config = config
        self._joints_fn = joints_fn

    def joints(self, betas: Tensor, global_orient: Tensor, body_pose: Tensor) -> tuple[Tensor, Tensor]:
        if self._joints_fn is not None:
            return self._joints_fn(betas, global_orient, body_pose)
        out = self.body_model.joints_only(betas, global_orient, body_pose)
        return out.joints, out.keypoints3d

    def body_frames(self, betas: Tensor, global_orient: Tensor, body_pose: Tensor) -> tuple[Tensor, Tensor]:
        """SMPL over all frames: betas ``(B, 10)`` or ``(B, F, 10)`` -> joints ``(B,F,24,3)``, kp ``(B,F,17,3)``."""
        b, f = global_orient.shape[:2]
        if betas.dim() == 2:
            betas = betas.unsqueeze(1).expand(b, f, betas.shape[-1])
        joints, kp = self.joints(
            betas.reshape(b * f, -1), global_orient.reshape(b * f, 3), body_pose.reshape(b * f, NUM_BODY)
        )
        return joints.reshape(b, f, *joints.shape[1:]), kp.reshape(b, f, *kp.shape[1:])

    def per_frame(
        self,
        betas: Tensor,
        global_orient: Tensor,
        body_pose: Tensor,
        camera_n: Tensor,
        detections_n: Tensor,
        batch: VideoBatch,
        init_joints: Tensor,
    ) -> dict[str, Tensor]:
        """Energy terms per frame ``(B, F)`` for normalised camera/detections."""
        cfg = self.config
        joints, kp3d = self.body_frames(betas, global_orient, body_pose)
        projected = project(kp3d, camera_n)
        zeros = torch.zeros_like(camera_n[..., 0])
        terms: dict[str, Tensor] = {}
        if cfg.reprojection:
            e_r, _ = reprojection_energy(
                projected, detections_n, batch.person_mask, batch.frame_mask,
                delta=cfg.huber_delta_2d, tau=None, min_confidence=cfg.min_confidence,
            )
            e_r = cfg.lambda_r * e_r
            if cfg.tau_r is not None:
                e_r = torch.clamp(e_r, max=cfg.tau_r)
            terms["E_R"] = e_r
        if cfg.temporal:
            terms["E_T"] = temporal_energy(
                joints, projected, camera_n, batch.frame_mask,
                lambda_joints3d=cfg.lambda_temporal_3d, lambda_joints2d=cfg.lambda_temporal_2d,
                lambda_camera=cfg.lambda_temporal_camera, delta3d=cfg.huber_delta_3d,
                delta2d=cfg.huber_delta_2d, delta_camera=cfg.huber_delta_camera,
            )
        if cfg.prior:
            b, f = body_pose.shape[:2]
            e_j = self.prior(body_pose.reshape(b * f, NUM_BODY)).reshape(b, f)
            e_j = torch.where(batch.frame_mask, cfg.lambda_gmm * e_j, zeros)
            e_i = init_energy(
                joints, init_joints, betas, batch.init_betas, batch.frame_mask,
                lambda_beta=cfg.lambda_beta, delta3d=cfg.huber_delta_3d, delta_beta=cfg.huber_delta_beta,
            )
            terms["E_P"] = e_j + cfg.lambda_init * e_i
        terms["projected"] = projected
        terms["joints3d"] = joints
        terms["keypoints3d"] = kp3d
        return terms


def _normalisation(batch: VideoBatch) -> tuple[Tensor, Tensor]:
    """Per-problem scale ``s0 (B,)`` and centre ``c (B, 2)`` from the initial cameras."""
    s0 = _median_over_frames(batch.init_camera[..., 0], batch.frame_mask).clamp(min=1e-6)
    cx = _median_over_frames(batch.init_camera[..., 1], batch.frame_mask)
    cy = _median_over_frames(batch.init_camera[..., 2], batch.frame_mask)
    return s0, torch.stack([cx, cy], dim=-1)


@dataclass
class Pose3dProblem:
    """A batch of problems packed for a flat-vector solver.

    ``x0 (B, N)`` initial parameters (N = 10 + 75F, normalised camera), ``free (B, N)`` bool
    (False for padded frames), ``objective(x (B, N)) -> (B,)`` per-problem energy.
    """

    energy: Pose3dEnergy
    batch: VideoBatch
    x0: Tensor
    free: Tensor
    scale: Tensor  # (B,) s0, pixels per normalised unit
    centre: Tensor  # (B, 2) pixels
    detections_n: Tensor  # (B, F, P, 17, 3) normalised
    init_joints: Tensor  # (B, F, 24, 3)
    num_real: Tensor  # (B,) real frames per problem

    def unpack(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``x (B, N)`` -> betas ``(B,10)``, global_orient ``(B,F,3)``, body_pose ``(B,F,69)``, camera_n ``(B,F,3)``."""
        b, f = x.shape[0], self.batch.num_frames
        per = x[:, NUM_BETAS:].reshape(b, f, PER_FRAME)
        return x[:, :NUM_BETAS], per[..., :3], per[..., 3:72], per[..., 72:75]

    def objective(self, x: Tensor) -> Tensor:
        """Per-problem objective ``(B,)``: mean per-frame energy over each problem's real frames."""
        betas, go, bp, cam = self.unpack(x)
        terms = self.energy.per_frame(betas, go, bp, cam, self.detections_n, self.batch, self.init_joints)
        total = torch.zeros_like(cam[..., 0])
        for name in ("E_R", "E_T", "E_P"):
            if name in terms:
                total = total + terms[name]
        return total.sum(1) / self.num_real

    def to_pixels(self, camera_n: Tensor) -> Tensor:
        """Normalised camera ``(B, F, 3)`` -> pixels."""
        s0, c = self.scale, self.centre
        return torch.cat([camera_n[..., :1] * s0[:, None, None], camera_n[..., 1:] * s0[:, None, None] + c[:, None, :]], dim=-1)


def build_problem(energy: Pose3dEnergy, batch: VideoBatch) -> Pose3dProblem:
    """Normalise units, compute the initial joints and pack the initial parameters."""
    device = torch.device(energy.config.device)
    batch = batch.to(device, torch.float32)
    b, f = batch.batch_size, batch.num_frames
    frame_mask = batch.frame_mask
    s0, centre = _normalisation(batch)
    s0 = torch.nan_to_num(s0, nan=1.0)
    centre = torch.nan_to_num(centre, nan=0.0)
    det_n = batch.detections.clone()
    det_n[..., :2] = (det_n[..., :2] - centre[:, None, None, None, :]) / s0[:, None, None, None, None]
    cam_n0 = torch.cat(
        [batch.init_camera[..., :1] / s0[:, None, None], (batch.init_camera[..., 1:] - centre[:, None, :]) / s0[:, None, None]],
        dim=-1,
    )
    n_real = frame_mask.sum(1).clamp(min=1).to(torch.float32)
    with torch.no_grad():
        init_joints, _ = energy.body_frames(batch.init_betas, batch.init_global_orient, batch.init_body_pose)
        # The shared shape starts at the frame-mean of the initial shapes.
        beta0 = (batch.init_betas * frame_mask[..., None]).sum(1) / n_real[:, None]
    x0 = torch.cat(
        [beta0, torch.cat([batch.init_global_orient, batch.init_body_pose, cam_n0], dim=-1).reshape(b, f * PER_FRAME)],
        dim=1,
    )
    free = torch.cat(
        [torch.ones(b, NUM_BETAS, dtype=torch.bool, device=device),
         frame_mask[..., None].expand(b, f, PER_FRAME).reshape(b, f * PER_FRAME)],
        dim=1,
    )
    free = free & frame_mask.any(1, keepdim=True)
    return Pose3dProblem(energy=energy, batch=batch, x0=x0, free=free, scale=s0, centre=centre,
                         detections_n=det_n, init_joints=init_joints, num_real=n_real)


def finish(problem: Pose3dProblem, x: Tensor, energy_value: Tensor, iterations: Tensor, converged: Tensor) -> FitResult:
    """Unpack solved parameters into pixel-unit per-frame results."""
    with torch.no_grad():
        betas, go, bp, cam_n = problem.unpack(x)
        joints, kp3d = problem.energy.body_frames(betas, go, bp)
        cam = problem.to_pixels(cam_n)
        projected = project(kp3d, cam)
    return FitResult(
        betas=betas, global_orient=go, body_pose=bp, camera=cam, joints3d=joints, keypoints3d=kp3d,
        projected2d=projected, energy=energy_value, iterations=iterations, converged=converged,
    )


def fit_videos(energy: Pose3dEnergy, batch: VideoBatch) -> FitResult:
    """Fit every problem of ``batch`` at once with the batched L-BFGS; pixel-unit results.

    Padded frames keep their initial values and get no gradient. A problem with no real frame
    is returned unchanged.
    """
    problem = build_problem(energy, batch)
    result = minimize_batched(problem.objective, problem.x0, config=energy.config.solver, mask=problem.free)
    return finish(problem, result.x, result.loss, result.iterations, result.converged)
