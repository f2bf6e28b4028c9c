"""The `make run` job: synthetic corpus -> per-frame init -> batched bundle adjustment -> filter.

Until the perception stages and the engine-backed pose3d pipeline exist, the demo runs every
stage that does, in process, on the embedded defaults:

1. ``labelmill synth pose`` writes a Kinetics-style corpus with ground truth;
2. the detector-like keypoints of every person are read from ``keypoints/<id>.json``;
3. the per-frame initialisation is the HMR-like noisy ground truth of
   :mod:`labelmill.operators.noisy_init` (stand-in for the HMR initialiser);
4. :class:`~labelmill.operators.bundle_adjust.BundleAdjust` fits all videos in one batch and
   filters them by normalised loss;
5. per-video fits go to ``fits/<id>.npz`` (plain arrays, no pickle) and a ``report.json``
   records the funnel, the reason of every drop and the accuracy before and after fitting.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from labelmill.infra import storage
from labelmill.infra.config import dump_yaml, to_dict
from labelmill.models.metrics import mpjpe, pa_mpjpe
from labelmill.operators.bundle_adjust import BundleAdjust
from labelmill.operators.noisy_init import noisy_init
from labelmill.operators.synth.corpus import write_synthetic_corpus

log = logging.getLogger(__name__)

__all__ = ["DemoSummary", "run_demo", "read_keypoints_json"]


@dataclass
class DemoSummary:
    out: str
    videos: int
    videos_kept: int
    frames: int
    frames_kept: int
    init_mpjpe_mm: float
    fit_mpjpe_mm: float
    fit_pa_mpjpe_mm: float
    seconds: float


def read_keypoints_json(text: str) -> tuple[np.ndarray, np.ndarray]:
    """labelmill keypoints JSON -> ``(F, P, 17, 3)`` keypoints and ``(F, P)`` person mask."""
    doc = json.loads(text)
    frames = doc["frames"]
    people = max([len(f["people"]) for f in frames] + [1])
    keypoints = np.zeros((len(frames), people, 17, 3), np.float32)
    mask = np.zeros((len(frames), people), bool)
    for t, frame in enumerate(frames):
        for p, person in enumerate(frame["people"]):
            keypoints[t, p] = np.asarray(person["keypoints"], np.float32).reshape(17, 3)
            mask[t, p] = True
    return keypoints, mask


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def run_demo(out: str, cfg: Any) -> DemoSummary:
    """Run the demo into ``out`` (any fsspec URL) with a resolved :class:`Pose3dConfig`."""
    t0 = time.perf_counter()
    corpus = storage.join(out, "corpus")
    log.info("writing a synthetic corpus of %d videos x %d frames to %s", cfg.synth.num_videos, cfg.synth.num_frames, corpus)
    write_synthetic_corpus(corpus, cfg.synth)
    ids = sorted(f.rsplit("/", 1)[1][: -len(".json")] for f in storage.list_files(storage.join(corpus, "keypoints"), "*.json"))

    batch: dict[str, list] = {k: [] for k in ("key", "keypoints", "person_mask", "init_betas", "init_global_orient",
                                             "init_body_pose", "init_camera")}
    gts = []
    for i, vid in enumerate(ids):
        keypoints, mask = read_keypoints_json(storage.read_text(storage.join(corpus, "keypoints", f"{vid}.json")))
        with np.load(io.BytesIO(storage.read_bytes(storage.join(corpus, "gt", f"{vid}.npz"))), allow_pickle=False) as z:
            gt = {k: z[k] for k in ("betas", "global_orient", "body_pose", "camera", "joints3d", "label")}
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, i, 0xDE30]))
        init = noisy_init(gt["betas"], gt["global_orient"], gt["body_pose"], gt["camera"], config=cfg.init, rng=rng)
        batch["key"].append(vid)
        batch["keypoints"].append(keypoints)
        batch["person_mask"].append(mask)
        for k, v in init.items():
            batch[k].append(v)
        gts.append(gt)

    op = BundleAdjust(body_model=cfg.body_model, prior=cfg.prior, fit=cfg.fit, filter=cfg.filter)
    op.setup()
    result = op(batch)

    videos = []
    all_fit, all_gt, all_init = [], [], []
    for i, vid in enumerate(ids):
        fit_joints = result["joints3d"][i].astype(np.float64)
        gt_joints = gts[i]["joints3d"].astype(np.float64)
        init_joints = _init_joints(op, batch, i)
        all_fit.append(fit_joints)
        all_gt.append(gt_joints)
        all_init.append(init_joints)
        reasons = result["frame_reason"][i]
        storage.write_bytes(storage.join(out, "fits", f"{vid}.npz"), _npz_bytes({
            name: np.asarray(result[name][i]) for name in (
                "betas", "global_orient", "body_pose", "camera", "joints3d", "keypoints3d", "projected2d",
                "keypoints3d_init", "frame_loss", "keep_frame")
        }))
        videos.append({
            "key": vid,
            "label": str(gts[i]["label"]),
            "frames": len(reasons),
            "frames_kept": int(np.sum(result["keep_frame"][i])),
            "video_loss": _finite_or_none(result["video_loss"][i]),
            "keep_video": bool(result["keep_video"][i]),
            "video_reason": result["video_reason"][i],
            "frame_reasons": {r: reasons.count(r) for r in sorted(set(reasons))},
            "init_mpjpe_mm": round(float(mpjpe(init_joints, gt_joints).mean()), 2),
            "fit_mpjpe_mm": round(float(mpjpe(fit_joints, gt_joints).mean()), 2),
            "fit_iterations": result["fit_iterations"][i],
        })
    fit_j, gt_j, init_j = (np.concatenate(a) for a in (all_fit, all_gt, all_init))
    summary = DemoSummary(
        out=out,
        videos=len(ids),
        videos_kept=sum(v["keep_video"] for v in videos),
        frames=sum(v["frames"] for v in videos),
        frames_kept=sum(v["frames_kept"] for v in videos),
        init_mpjpe_mm=round(float(mpjpe(init_j, gt_j).mean()), 2),
        fit_mpjpe_mm=round(float(mpjpe(fit_j, gt_j).mean()), 2),
        fit_pa_mpjpe_mm=round(float(pa_mpjpe(fit_j, gt_j).mean()), 2),
        seconds=round(time.perf_counter() - t0, 1),
    )
    report = {"summary": summary.__dict__, "videos": videos}
    storage.write_text(storage.join(out, "report.json"), json.dumps(report, indent=2) + "\n")
    storage.write_text(storage.join(out, "config.yaml"), dump_yaml(cfg))
    return summary


def _init_joints(op: BundleAdjust, batch: dict[str, list], i: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = op.energy.body_model.joints_only(
            torch.from_numpy(batch["init_betas"][i]), torch.from_numpy(batch["init_global_orient"][i]),
            torch.from_numpy(batch["init_body_pose"][i]),
        )
    return out.joints.numpy().astype(np.float64)


def _finite_or_none(x: float) -> float | None:
    return round(float(x), 5) if np.isfinite(x) else None
