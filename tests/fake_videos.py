"""Synthetic single-person videos for fitter and operator tests: ground truth, detections, noisy init."""

import numpy as np
import torch

from labelmill.models.camera import project
from labelmill.operators.pose3d.noisy_init import NoisyInitConfig, noisy_init
from labelmill.operators.synth.motion import sample_poses


def make_video(body, seed, frames, *, init_noise=True, kp_noise_px=1.0):
    """One synthetic video: gt from the motion library, detections = projection + noise."""
    rng = np.random.default_rng(seed)
    poses = sample_poses(frames, seed=seed).astype(np.float32)
    # smooth the sampled frames in time so the temporal term has something to be right about
    poses = np.cumsum(poses, 0) / np.arange(1, frames + 1)[:, None]
    betas = rng.normal(0, 0.8, 10).astype(np.float32)
    go = np.zeros((frames, 3), np.float32)
    cam = np.tile(np.array([150.0, 160.0, 120.0], np.float32), (frames, 1))
    with torch.no_grad():
        out = body.joints_only(torch.from_numpy(betas)[None], torch.from_numpy(go), torch.from_numpy(poses))
    kp2d = project(out.keypoints3d.numpy(), cam) + rng.normal(0, kp_noise_px, (frames, 17, 2))
    det = np.concatenate([kp2d, np.ones((frames, 17, 1))], -1)[:, None].astype(np.float32)
    cfg = NoisyInitConfig() if init_noise else NoisyInitConfig(0, 0, 0, 0, 0)
    init = noisy_init(betas, go, poses, cam, config=cfg, rng=rng)
    return {"det": det, "init": init, "joints": out.joints.numpy()}
