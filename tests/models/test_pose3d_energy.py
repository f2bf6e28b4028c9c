"""Each energy term against hand-computed values on tiny cases."""

import math

import pytest
import torch

from labelmill.models.pose3d_energy import huber_norm, init_energy, reprojection_energy, temporal_energy


def test_huber_norm_quadratic_and_linear_regions():
    r = torch.tensor([[0.3, 0.4], [3.0, 4.0], [0.0, 0.0]])  # norms 0.5, 5, 0
    out = huber_norm(r, delta=1.0)
    assert out.tolist() == pytest.approx([0.125, 1.0 * (5.0 - 0.5), 0.0])


def test_huber_gradient_finite_at_zero():
    r = torch.zeros(3, 2, requires_grad=True)
    huber_norm(r, 0.1).sum().backward()
    assert torch.isfinite(r.grad).all() and (r.grad == 0).all()


def _one_frame(projected, people, conf=None):
    """projected (17,2); people list of (17,2) -> tensors for B=F=1."""
    p = len(people)
    det = torch.zeros(1, 1, p, 17, 3)
    for i, xy in enumerate(people):
        det[0, 0, i, :, :2] = xy
        det[0, 0, i, :, 2] = 1.0 if conf is None else conf[i]
    return projected.view(1, 1, 17, 2), det, torch.ones(1, 1, p, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)


def test_reprojection_hand_computed_and_confidence_weighting():
    proj = torch.zeros(17, 2)
    det_xy = torch.zeros(17, 2)
    det_xy[0] = torch.tensor([0.3, 0.4])  # residual norm 0.5 -> 0.125 under delta 1
    det_xy[1] = torch.tensor([3.0, 4.0])  # residual norm 5 -> 4.5
    conf = torch.ones(17)
    conf[1] = 0.5
    projected, det, pm, fm = _one_frame(proj, [det_xy], conf=[conf])
    e, idx = reprojection_energy(projected, det, pm, fm, delta=1.0, tau=None)
    assert e.item() == pytest.approx(0.125 + 0.5 * 4.5)
    assert idx.item() == 0
    # a keypoint below min_confidence is ignored
    e2, _ = reprojection_energy(projected, det, pm, fm, delta=1.0, tau=None, min_confidence=0.6)
    assert e2.item() == pytest.approx(0.125)


def test_multi_person_min_picks_the_matching_person_and_tau_caps():
    proj = torch.randn(17, 2)
    far = proj + 10.0
    near = proj + 0.01
    projected, det, pm, fm = _one_frame(proj, [far, near])
    e, idx = reprojection_energy(projected, det, pm, fm, delta=1.0, tau=None)
    assert idx.item() == 1
    assert e.item() == pytest.approx(17 * 0.5 * 2 * 0.01**2, rel=1e-4)
    # only the outlier is detected: the clamp caps the frame's energy at tau
    projected, det, pm, fm = _one_frame(proj, [far])
    e, _ = reprojection_energy(projected, det, pm, fm, delta=1.0, tau=3.0)
    assert e.item() == pytest.approx(3.0)
    proj_g = proj.clone().requires_grad_(True)
    projected, det, pm, fm = _one_frame(proj_g, [far])
    e, _ = reprojection_energy(projected, det, pm, fm, delta=1.0, tau=3.0)
    e.sum().backward()
    assert (proj_g.grad == 0).all()  # a capped outlier frame pulls nothing


def test_missing_keypoints_and_empty_frames_are_inert_with_finite_gradients():
    proj = torch.randn(1, 2, 17, 2, requires_grad=True)
    det = torch.zeros(1, 2, 1, 17, 3)
    det[0, 0, 0, :, :2] = torch.nan_to_num(torch.full((17, 2), float("nan")))  # garbage coords, conf 0
    det[0, 1, 0, :5, :2] = proj.detach()[0, 1, :5] + 0.1
    det[0, 1, 0, :5, 2] = 1.0
    person_mask = torch.tensor([[[True], [True]]])
    frame_mask = torch.ones(1, 2, dtype=torch.bool)
    e, idx = reprojection_energy(proj, det, person_mask, frame_mask, delta=1.0, tau=5.0)
    assert e[0, 0].item() == 0.0 and idx[0, 0].item() == -1  # zero-confidence frame
    assert e[0, 1].item() == pytest.approx(5 * 0.5 * 2 * 0.01, rel=1e-4)
    e.sum().backward()
    assert torch.isfinite(proj.grad).all()
    assert (proj.grad[0, 0] == 0).all() and (proj.grad[0, 1, 5:] == 0).all()


def test_padded_frames_contribute_nothing():
    proj = torch.randn(1, 3, 17, 2, requires_grad=True)
    det = torch.zeros(1, 3, 1, 17, 3)
    det[..., 2] = 1.0
    pm = torch.ones(1, 3, 1, dtype=torch.bool)
    fm = torch.tensor([[True, True, False]])
    e, _ = reprojection_energy(proj, det, pm, fm, delta=1.0, tau=None)
    assert e[0, 2].item() == 0.0
    e.sum().backward()
    assert (proj.grad[0, 2] == 0).all()


def test_temporal_energy_hand_computed():
    joints = torch.zeros(1, 3, 2, 3)
    joints[0, 1, 0, 0] = 0.5  # frame 1 joint 0 moved 0.5 -> huber(0.5, delta=1) = 0.125, back at frame 2
    proj = torch.zeros(1, 3, 17, 2)
    proj[0, 2, 3] = torch.tensor([0.0, 2.0])  # frame 2 keypoint moved 2 -> 1*(2-0.5) = 1.5
    cam = torch.zeros(1, 3, 3)
    cam[0, 2, 0] = 0.1  # camera scale change 0.1 -> 0.005
    fm = torch.ones(1, 3, dtype=torch.bool)
    e = temporal_energy(joints, proj, cam, fm, lambda_joints3d=2.0, lambda_joints2d=3.0, lambda_camera=4.0,
                        delta3d=1.0, delta2d=1.0, delta_camera=1.0)
    assert e[0, 0].item() == 0.0
    assert e[0, 1].item() == pytest.approx(2.0 * 0.125)
    assert e[0, 2].item() == pytest.approx(2.0 * 0.125 + 3.0 * 1.5 + 4.0 * 0.005)
    # a padded frame breaks the pair on both sides
    fm2 = torch.tensor([[True, False, True]])
    e2 = temporal_energy(joints, proj, cam, fm2, lambda_joints3d=2.0, lambda_joints2d=3.0, lambda_camera=4.0,
                         delta3d=1.0, delta2d=1.0, delta_camera=1.0)
    assert e2.abs().sum().item() == 0.0


def test_init_energy_hand_computed():
    joints = torch.zeros(1, 2, 2, 3)
    init = joints.clone()
    init[0, 0, 1, 2] = 0.2  # 0.5 * 0.04 = 0.02
    betas = torch.zeros(1, 10)
    betas_init = torch.zeros(1, 2, 10)
    betas_init[0, 1, 0] = 3.0  # huber(3, delta 1) = 2.5
    fm = torch.ones(1, 2, dtype=torch.bool)
    e = init_energy(joints, init, betas, betas_init, fm, lambda_beta=0.1, delta3d=1.0, delta_beta=1.0)
    assert e[0, 0].item() == pytest.approx(0.02)
    assert e[0, 1].item() == pytest.approx(0.1 * 2.5)
