"""``labelmill eval initializer``: the keypoint initialiser on held-out synthetic videos.

Videos come from the synthetic world (:func:`labelmill.operators.synth.scene.synthesize_video`,
no rendering) with seed ``seed`` (default 1; the default initialiser trains on poses drawn with
seed 7000 from a different random stream). The person of interest's detected keypoints
(``gt["keypoints2d_detected"]``: noise, low-confidence guesses, dropped joints, outlier and
missed frames included) go through the pipeline's operator
(:class:`labelmill.operators.pose3d.keypoint_init.KeypointInit`, so unusable frames copy the nearest
usable frame), and the 24 SMPL joints of its estimate are compared with ``gt["joints3d"]`` on
every frame: MPJPE after aligning the pelvis and PA-MPJPE (:mod:`labelmill.models.metrics`).

Baselines, with the same metrics on the same frames:

* ``mean_pose_*``: the initialiser's own mean parameters, i.e. its output before any
  iteration (``iterations=0``): the mean body pose of its training poses, zero betas, and the
  identity global orientation (upright, facing the camera). This is the best guess without
  looking at the keypoints.
* ``mean_pose_gt_orient_*``: the same mean pose and zero betas with the ground-truth global
  orientation (an oracle for facing; it shows what the pose alone is worth).
* ``noisy_init_*``: the HMR-like noisy copy of the ground truth used by the synthetic
  experiments (:mod:`labelmill.operators.pose3d.noisy_init`, default noise), for reference.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch

from labelmill.models.body_model import BodyModel
from labelmill.models.keypoint_initializer import KeypointInitializer, rotmat_to_axis_angle, split_params
from labelmill.models.metrics import mpjpe, pa_mpjpe
from labelmill.operators.pose3d.keypoint_init import KeypointInit
from labelmill.operators.pose3d.noisy_init import NoisyInitConfig, noisy_init
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import gt_arrays
from labelmill.operators.synth.scene import single_threaded, synthesize_video
from labelmill.pipelines.commands.eval_initializer import register_initializer_eval  # the CLI; imports nothing heavy

log = logging.getLogger(__name__)

__all__ = ["evaluate_initializer", "register_initializer_eval", "format_report"]


def _joints(body: BodyModel, betas: np.ndarray, global_orient: np.ndarray, body_pose: np.ndarray) -> np.ndarray:
    """Body-model joints ``(N, 24, 3)`` float64 for per-frame parameters ``(N, 10)``, ``(N, 3)``, ``(N, 69)``."""
    with torch.no_grad():
        out = body.joints_only(torch.as_tensor(betas, dtype=torch.float32),
                               torch.as_tensor(global_orient, dtype=torch.float32),
                               torch.as_tensor(body_pose, dtype=torch.float32))  # fmt: skip
    return out.joints.double().numpy()


def _scores(pred: np.ndarray, gt: np.ndarray, prefix: str) -> dict[str, float]:
    return {f"{prefix}mpjpe_mm": round(float(mpjpe(pred, gt).mean()), 2),
            f"{prefix}pa_mpjpe_mm": round(float(pa_mpjpe(pred, gt).mean()), 2)}  # fmt: skip


def evaluate_initializer(
    videos: int = 32,
    frames: int = 100,
    seed: int = 1,
    *,
    model: KeypointInitializer | None = None,
    weights: str | None = None,
    synth: SynthConfig | None = None,
) -> dict[str, Any]:
    """MPJPE / PA-MPJPE (mm) of the initialiser and its baselines on held-out synthetic videos.

    ``model`` (or ``weights``, a file) is the initialiser to test; neither: the embedded
    default. Returns ``mpjpe_mm``, ``pa_mpjpe_mm``, ``mean_pose_mpjpe_mm``,
    ``mean_pose_pa_mpjpe_mm``, ``mean_pose_gt_orient_*``, ``noisy_init_*``, ``frames``,
    ``frames_filled`` (frames that copied a neighbour), ``frames_per_s`` (the operator,
    network and fill, on this machine's current torch threads) and the arguments.
    """
    if videos < 1 or frames < 1:
        raise ValueError(f"videos and frames must be >= 1, got {videos} and {frames}")
    synth = dataclasses.replace(synth or SynthConfig(), num_videos=videos, num_frames=frames, seed=seed)
    body = BodyModel(path=synth.body_model_path)
    operator = KeypointInit(weights=weights)
    if model is not None:
        operator.set_model(model)
    operator.setup()
    initializer = operator.model

    keypoints, gt_joints, gts = [], [], []
    with single_threaded():
        for index in range(videos):
            gt = gt_arrays(synthesize_video(index, synth, body), synth)
            keypoints.append(gt["keypoints2d_detected"].astype(np.float32))
            gt_joints.append(gt["joints3d"])
            gts.append(gt)
    batch = {"key": [str(g["video_id"]) for g in gts], "main_keypoints": keypoints,
             "keypoint_width": np.full(videos, synth.width), "keypoint_height": np.full(videos, synth.height)}  # fmt: skip
    started = time.perf_counter()
    out = operator(batch)
    seconds = time.perf_counter() - started

    gt_all = np.concatenate(gt_joints)
    cat = {name: np.concatenate(out[name]) for name in ("init_betas", "init_global_orient", "init_body_pose")}
    pred = _joints(body, cat["init_betas"], cat["init_global_orient"], cat["init_body_pose"])

    with torch.no_grad():
        rotmats, mean_betas, _ = split_params(initializer.mean_params[None].float().cpu())
        mean_aa = rotmat_to_axis_angle(rotmats[0]).double().numpy()
    count = gt_all.shape[0]
    zeros = np.zeros((count, mean_betas.shape[1]))
    mean_pose = np.repeat(mean_aa[1:].reshape(1, -1), count, 0)
    mean_joints = _joints(body, zeros, np.repeat(mean_aa[:1], count, 0), mean_pose)
    gt_orient = np.concatenate([g["global_orient"] for g in gts])
    oracle_joints = _joints(body, zeros, gt_orient, mean_pose)

    noisy = []
    for index, g in enumerate(gts):  # the same stream as pose3d_experiments.make_experiment_data
        rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x1A17]))
        noisy.append(noisy_init(g["betas"], g["global_orient"], g["body_pose"], g["camera"],
                                config=NoisyInitConfig(), rng=rng))  # fmt: skip
    noisy_joints = _joints(body, *(np.concatenate([n[k] for n in noisy]) for k in
                                   ("init_betas", "init_global_orient", "init_body_pose")))  # fmt: skip

    report: dict[str, Any] = {
        **_scores(pred, gt_all, ""),
        **_scores(mean_joints, gt_all, "mean_pose_"),
        **_scores(oracle_joints, gt_all, "mean_pose_gt_orient_"),
        **_scores(noisy_joints, gt_all, "noisy_init_"),
        "frames": int(count),
        "frames_filled": int(np.concatenate(out["init_filled"]).sum()),
        "frames_per_s": round(count / max(seconds, 1e-9), 1),
        "videos": videos,
        "frames_per_video": frames,
        "seed": seed,
        "weights": weights or ("<in-memory model>" if model is not None else "<embedded default>"),
    }
    log.info("initialiser: MPJPE %.1f mm, PA-MPJPE %.1f mm; mean pose: %.1f / %.1f mm (%d frames, %.0f frames/s)",
             report["mpjpe_mm"], report["pa_mpjpe_mm"], report["mean_pose_mpjpe_mm"],
             report["mean_pose_pa_mpjpe_mm"], count, report["frames_per_s"])  # fmt: skip
    return report


def format_report(report: dict[str, Any]) -> str:
    """A small text table of :func:`evaluate_initializer`'s result."""
    rows = [("keypoint initialiser", ""), ("mean pose (iterations=0)", "mean_pose_"),
            ("mean pose, gt orientation", "mean_pose_gt_orient_"), ("noisy init (HMR-like, reference)", "noisy_init_")]  # fmt: skip
    lines = [f"{'method':<34} {'MPJPE (mm)':>11} {'PA-MPJPE (mm)':>14}"]
    for name, prefix in rows:
        lines.append(f"{name:<34} {report[prefix + 'mpjpe_mm']:>11.1f} {report[prefix + 'pa_mpjpe_mm']:>14.1f}")
    lines.append(f"{report['frames']} frames ({report['frames_filled']} filled from a neighbour), "
                 f"{report['frames_per_s']:.0f} frames/s")  # fmt: skip
    return "\n".join(lines) + "\n"

