"""Batched bundle adjustment: independence of problems, convergence masks, padding, gradients."""

import dataclasses

import numpy as np
import pytest
import torch

from labelmill.models.batched_lbfgs import LBFGSConfig
from labelmill.models.body_model import BodyModel
from labelmill.models.pose3d_fit import FitConfig, Pose3dEnergy, VideoBatch, build_problem, fit_videos
from labelmill.models.pose_prior import GMMPosePrior

from fake_videos import make_video


@pytest.fixture(scope="module")
def models():
    return BodyModel(), GMMPosePrior.default()


def batch_of(videos, frames):
    b = len(videos)
    det = np.zeros((b, frames, 1, 17, 3), np.float32)
    fmask = np.zeros((b, frames), bool)
    init = {k: np.zeros((b, frames) + v.shape[1:], np.float32) for k, v in videos[0]["init"].items()}
    for i, v in enumerate(videos):
        n = v["det"].shape[0]
        det[i, :n] = v["det"]
        fmask[i, :n] = True
        for k in init:
            init[k][i, :n] = v["init"][k]
            init[k][i, n:] = v["init"][k][n - 1]
    return VideoBatch(detections=torch.from_numpy(det), person_mask=torch.from_numpy(fmask[..., None].copy()),
                      frame_mask=torch.from_numpy(fmask), **{k: torch.from_numpy(a) for k, a in init.items()})


def energy_with(models, **solver):
    body, prior = models
    cfg = FitConfig(solver=LBFGSConfig(**{"max_iter": 25, **solver}))
    return Pose3dEnergy(body_model=body, prior=prior, config=cfg)


def test_batched_fit_equals_fitting_each_alone(models):
    body, _ = models
    videos = [make_video(body, s, 10) for s in (1, 2, 3)]
    energy = energy_with(models)
    together = fit_videos(energy, batch_of(videos, 10))
    for i, v in enumerate(videos):
        alone = fit_videos(energy, batch_of([v], 10))
        assert torch.allclose(together.joints3d[i], alone.joints3d[0], atol=2e-3), i
        assert together.iterations[i] == alone.iterations[0]


def test_fit_reduces_error_and_converged_video_stops_changing(models):
    body, _ = models
    easy = make_video(body, 7, 8, init_noise=False, kp_noise_px=0.0)
    hard = make_video(body, 8, 8)
    energy = energy_with(models, max_iter=150, tolerance_change=1e-5)
    batch = batch_of([easy, hard], 8)
    res = fit_videos(energy, batch)
    assert bool(res.converged[0]) and int(res.iterations[0]) < int(res.iterations[1])
    # the hard video's fit is much closer to the truth than its init
    with torch.no_grad():
        init_j, _ = energy.body_frames(batch.init_betas, batch.init_global_orient, batch.init_body_pose)
    err = lambda j: np.linalg.norm((j - j[:, :1]) - (hard["joints"] - hard["joints"][:, :1]), axis=-1).mean()
    assert err(res.joints3d[1].numpy()) < 0.6 * err(init_j[1].numpy())
    # more iterations change the hard video but not the converged easy one (bit for bit)
    assert int(res.iterations[1]) == 150  # still going when the budget ran out
    res_more = fit_videos(energy_with(models, max_iter=200, tolerance_change=1e-5), batch)
    assert torch.equal(res_more.body_pose[0], res.body_pose[0]) and torch.equal(res_more.betas[0], res.betas[0])
    assert not torch.equal(res_more.body_pose[1], res.body_pose[1])


def test_padded_frames_are_inert(models):
    body, _ = models
    short = make_video(body, 11, 6)
    long = make_video(body, 12, 10)
    energy = energy_with(models)
    alone = fit_videos(energy, batch_of([short], 6))
    padded = fit_videos(energy, batch_of([short, long], 10))
    assert torch.allclose(padded.joints3d[0, :6], alone.joints3d[0], atol=2e-3)
    # padded frames keep their (repeated last-frame) init exactly
    init_last = torch.from_numpy(short["init"]["init_body_pose"][-1])
    assert torch.equal(padded.body_pose[0, 6:], init_last.expand(4, 69))


def test_gradients_finite_with_missing_keypoints_and_empty_frames(models):
    body, _ = models
    v = make_video(body, 21, 6)
    v["det"][2, :, :, 2] = 0.0  # a frame with no confident keypoint
    v["det"][3, :, :5] = np.nan  # NaN coordinates of missing keypoints ...
    v["det"][3, :, :5, 2] = 0.0  # ... with zero confidence
    batch = batch_of([v], 6)
    batch.detections.nan_to_num_(0.0)
    problem = build_problem(energy_with(models), batch)
    x = problem.x0.clone().requires_grad_(True)
    problem.objective(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    betas_g = x.grad[0, :10]
    per_frame = x.grad[0, 10:].reshape(6, 75)
    # gradients reach shape, orientation, body pose and camera of every real frame
    assert betas_g.abs().sum() > 0
    for part in (slice(0, 3), slice(3, 72), slice(72, 75)):
        assert (per_frame[:, part].abs().sum(-1) > 0).all()


def test_each_term_switch_changes_the_objective(models):
    body, prior = models
    v = make_video(body, 5, 6)
    batch = batch_of([v], 6)
    values = {}
    for name, terms in {"all": {}, "no_t": {"temporal": False}, "no_p": {"prior": False}}.items():
        cfg = dataclasses.replace(FitConfig(), **terms)
        problem = build_problem(Pose3dEnergy(body_model=body, prior=prior, config=cfg), batch)
        values[name] = float(problem.objective(problem.x0))
    assert values["all"] > values["no_t"] and values["all"] != values["no_p"]
    assert FitConfig(temporal=False).terms == "E_R+E_P"
