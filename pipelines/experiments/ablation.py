"""pose3d experiments on the synthetic world: the seed's ablation table and the fit benchmark.

Both build held-out synthetic videos in memory (ground truth + detector-like keypoints, no
rendering), an HMR-like noisy per-frame initialisation (:mod:`labelmill.operators.pose3d.noisy_init`),
and fit them with the batched bundle adjustment.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from labelmill.models.body_model import BodyModel, BodyModelConfig
from labelmill.models.metrics import accel_error, mpjpe, pa_mpjpe
from labelmill.pipelines.experiments.smplify_baseline import fit_videos_one_by_one, full_mesh_joints_fn
from labelmill.models.pose3d_fit import FitConfig, FitResult, Pose3dEnergy, VideoBatch, fit_videos
from labelmill.models.pose_prior import GMMPosePrior, PriorConfig
from labelmill.operators.pose3d.keypoint_init import KeypointInit, KeypointInitConfig
from labelmill.operators.pose3d.noisy_init import NoisyInitConfig, noisy_init
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import gt_arrays
from labelmill.operators.synth.scene import SyntheticVideo, synthesize_video

log = logging.getLogger(__name__)

__all__ = ["ExperimentData", "make_experiment_data", "ablation_rows", "bench_fit", "ABLATION_ROWS"]

# (row name, terms on, keypoints): the seed's table.
ABLATION_ROWS: tuple[tuple[str, dict[str, bool], str], ...] = (
    ("E_R", {"reprojection": True, "prior": False, "temporal": False}, "detected"),
    ("E_R+E_P", {"reprojection": True, "prior": True, "temporal": False}, "detected"),
    ("E_R+E_P+E_T", {"reprojection": True, "prior": True, "temporal": True}, "detected"),
    ("E_R (gt keypoints)", {"reprojection": True, "prior": False, "temporal": False}, "gt"),
    ("E_R+E_P (gt keypoints)", {"reprojection": True, "prior": True, "temporal": False}, "gt"),
    ("E_R+E_P+E_T (gt keypoints)", {"reprojection": True, "prior": True, "temporal": True}, "gt"),
)


@dataclass
class ExperimentData:
    """Padded arrays of V synthetic videos with F frames."""

    detected: VideoBatch  # detector-like keypoints, every person per frame
    gt_keypoints: VideoBatch  # clean projections of the person of interest, confidence 1
    gt_joints3d: np.ndarray  # (V, F, 24, 3)
    labels: list[str] = field(default_factory=list)


def detection_arrays(video: SyntheticVideo) -> tuple[np.ndarray, np.ndarray]:
    """Every detected person per frame, in detector output order: ``(F, P, 17, 3)``, mask ``(F, P)``."""
    num_frames = len(video.order)
    people = max(1, max(len(o) for o in video.order))
    keypoints = np.zeros((num_frames, people, 17, 3), np.float32)
    mask = np.zeros((num_frames, people), bool)
    for t, order in enumerate(video.order):
        for slot, p in enumerate(order):
            keypoints[t, slot] = video.people[p].detections.keypoints[t]
            mask[t, slot] = True
    return keypoints, mask


def make_experiment_data(
    *,
    videos: int,
    frames: int,
    seed: int,
    synth: SynthConfig | None = None,
    init: NoisyInitConfig | None = None,
    init_source: str = "noisy",
    keypoint_init: KeypointInitConfig | None = None,
) -> ExperimentData:
    """Generate ``videos`` held-out synthetic videos of ``frames`` frames and their per-frame init.

    ``init_source``: ``"noisy"`` perturbs the ground truth like HMR (:mod:`~labelmill.operators.pose3d.noisy_init`);
    ``"keypoints"`` runs the embedded keypoint initialiser on the person of interest's detected keypoints.
    """
    if init_source not in ("noisy", "keypoints"):
        raise ValueError(f"init_source must be 'noisy' or 'keypoints', got {init_source!r}")
    initializer = None
    if init_source == "keypoints":
        initializer = KeypointInit.from_config(keypoint_init or KeypointInitConfig())
        initializer.setup()
    synth = dataclasses.replace(synth or SynthConfig(), num_videos=videos, num_frames=frames, seed=seed)
    init = init or NoisyInitConfig()
    body_model = BodyModel(path=synth.body_model_path)
    dets, masks, gts, inits, j3d, labels = [], [], [], [], [], []
    for index in range(videos):
        video = synthesize_video(index, synth, body_model)
        gt = gt_arrays(video, synth)
        if init_source == "noisy":
            rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x1A17]))
            inits.append(noisy_init(gt["betas"], gt["global_orient"], gt["body_pose"], gt["camera"], config=init, rng=rng))
        else:
            inits.append(_keypoint_init(initializer, gt, synth))
        det, mask = detection_arrays(video)
        dets.append(det)
        masks.append(mask)
        clean = np.concatenate([gt["keypoints2d"], np.ones(gt["keypoints2d"].shape[:-1] + (1,))], axis=-1)
        gts.append(clean[:, None].astype(np.float32))
        j3d.append(gt["joints3d"])
        labels.append(str(gt["label"]))
    p_max = max(d.shape[1] for d in dets)

    def batch_of(detections: list[np.ndarray], person_masks: list[np.ndarray], people: int) -> VideoBatch:
        det = np.zeros((videos, frames, people, 17, 3), np.float32)
        pm = np.zeros((videos, frames, people), bool)
        for i, (d, m) in enumerate(zip(detections, person_masks)):
            det[i, :, : d.shape[1]] = np.nan_to_num(d)
            pm[i, :, : m.shape[1]] = m
        return VideoBatch(
            detections=torch.from_numpy(det), person_mask=torch.from_numpy(pm),
            frame_mask=torch.ones(videos, frames, dtype=torch.bool),
            **{k: torch.from_numpy(np.stack([x[k] for x in inits])) for k in inits[0]},
        )

    return ExperimentData(
        detected=batch_of(dets, masks, p_max),
        gt_keypoints=batch_of(gts, [np.ones((frames, 1), bool)] * videos, 1),
        gt_joints3d=np.stack(j3d).astype(np.float64),
        labels=labels,
    )


def _keypoint_init(op: Any, gt: dict[str, np.ndarray], synth: SynthConfig) -> dict[str, np.ndarray]:
    """The keypoint initialiser operator on the person of interest's detected keypoints ``(F, 17, 3)``."""
    out = op({"key": [str(gt["video_id"])], "main_keypoints": [gt["keypoints2d_detected"].astype(np.float32)],
              "keypoint_width": [synth.width], "keypoint_height": [synth.height]})
    if out.get("status", ["pending"])[0] == "failed":
        raise RuntimeError(out["reason"][0])
    return {k: np.asarray(out[k][0], np.float32) for k in ("init_betas", "init_global_orient", "init_body_pose", "init_camera")}


def _metrics(pred_joints: np.ndarray, gt_joints: np.ndarray) -> dict[str, float]:
    """MPJPE / PA-MPJPE (mm) over all frames and acceleration error (mm/frame^2) of ``(V,F,24,3)``."""
    flat_p = pred_joints.reshape(-1, *pred_joints.shape[-2:])
    flat_g = gt_joints.reshape(-1, *gt_joints.shape[-2:])
    accel = np.concatenate([accel_error(p, g) for p, g in zip(pred_joints, gt_joints)])
    return {
        "mpjpe_mm": float(mpjpe(flat_p, flat_g).mean()),
        "pa_mpjpe_mm": float(pa_mpjpe(flat_p, flat_g).mean()),
        "accel_error_mm": float(accel.mean()) if accel.size else 0.0,
    }


def _load_models(body: BodyModelConfig, prior: PriorConfig, device: str) -> tuple[BodyModel, GMMPosePrior]:
    return BodyModel.from_config(body).to(device), GMMPosePrior.from_config(prior).to(device)


def ablation_rows(
    data: ExperimentData, *, body: BodyModelConfig, prior: PriorConfig, fit: FitConfig
) -> list[dict[str, Any]]:
    """The seed's ablation: ``init`` then one fit per energy and keypoint source."""
    body_model, prior_model = _load_models(body, prior, fit.device)
    base_energy = Pose3dEnergy(body_model=body_model, prior=prior_model, config=fit)
    with torch.no_grad():
        init_joints, _ = base_energy.body_frames(
            data.detected.init_betas.to(fit.device), data.detected.init_global_orient.to(fit.device),
            data.detected.init_body_pose.to(fit.device),
        )
    rows = [{"name": "init", **_metrics(init_joints.cpu().double().numpy(), data.gt_joints3d), "seconds": 0.0}]
    for name, terms, source in ABLATION_ROWS:
        cfg = dataclasses.replace(fit, **terms)
        energy = Pose3dEnergy(body_model=body_model, prior=prior_model, config=cfg)
        batch = data.detected if source == "detected" else data.gt_keypoints
        t0 = time.perf_counter()
        result = fit_videos(energy, batch)
        seconds = time.perf_counter() - t0
        row = {"name": name, **_metrics(result.joints3d.cpu().double().numpy(), data.gt_joints3d),
               "seconds": round(seconds, 2)}
        log.info("%-28s mpjpe %.1f mm  pa-mpjpe %.1f mm  accel %.2f  (%.1fs)", name, row["mpjpe_mm"],
                 row["pa_mpjpe_mm"], row["accel_error_mm"], seconds)
        rows.append(row)
    return rows


def _frames_per_second(fn, energy: Pose3dEnergy, batch: VideoBatch) -> tuple[FitResult, float]:
    frames = int(batch.frame_mask.sum())
    t0 = time.perf_counter()
    result = fn(energy, batch)
    if str(energy.config.device).startswith("cuda"):
        torch.cuda.synchronize()
    return result, frames / (time.perf_counter() - t0)


def bench_fit(
    data: ExperimentData,
    *,
    body: BodyModelConfig,
    prior: PriorConfig,
    fit: FitConfig,
    baseline_videos: int | None = None,
    batch_sizes: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Ours (all videos batched, joints-only body) vs the SMPLify-style baseline, same energy.

    ``baseline_videos`` limits the baseline to the first N videos (it is slow); both
    throughputs are frames/s, and accuracy is compared on the videos both fitted.
    """
    body_model, prior_model = _load_models(body, prior, fit.device)
    ours_energy = Pose3dEnergy(body_model=body_model, prior=prior_model, config=fit)
    base_energy = Pose3dEnergy(body_model=body_model, prior=prior_model, config=fit,
                               joints_fn=full_mesh_joints_fn(body_model))
    batch = data.detected
    n_all = batch.batch_size
    n_base = min(n_all, baseline_videos or n_all)
    ours, ours_fps = _frames_per_second(fit_videos, ours_energy, batch)
    base, base_fps = _frames_per_second(fit_videos_one_by_one, base_energy, batch.select(slice(0, n_base)))
    ours_j = ours.joints3d.cpu().double().numpy()
    base_j = base.joints3d.cpu().double().numpy()
    out: dict[str, Any] = {
        "videos": n_all,
        "frames": int(batch.num_frames),
        "baseline_videos": n_base,
        "ours_frames_per_s": round(ours_fps, 1),
        "baseline_frames_per_s": round(base_fps, 2),
        "speedup": round(ours_fps / base_fps, 1),
        "ours_mpjpe_mm": round(_metrics(ours_j[:n_base], data.gt_joints3d[:n_base])["mpjpe_mm"], 2),
        "baseline_mpjpe_mm": round(_metrics(base_j, data.gt_joints3d[:n_base])["mpjpe_mm"], 2),
        "ours_mpjpe_all_mm": round(_metrics(ours_j, data.gt_joints3d)["mpjpe_mm"], 2),
        "device": str(torch.device(fit.device)) + ("" if not torch.cuda.is_available() else f" ({torch.cuda.get_device_name()})"),
    }
    sweep = []
    for size in batch_sizes:
        reps = -(-size // n_all)
        big = VideoBatch(**{f.name: torch.cat([getattr(batch, f.name)] * reps)[:size] for f in dataclasses.fields(batch)})
        _, fps = _frames_per_second(fit_videos, ours_energy, big)
        sweep.append({"videos": size, "frames_per_s": round(fps, 1)})
        log.info("batch of %d videos: %.0f frames/s", size, fps)
    if sweep:
        out["batch_sweep"] = sweep
    return out
