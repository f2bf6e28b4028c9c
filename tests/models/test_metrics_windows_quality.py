import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from labelmill.models.metrics import accel_error, mpjpe, pa_mpjpe
from labelmill.models.windows import plan_windows, stitch_frames, stitch_shared
from labelmill.operators.pose3d.fit_quality import FilterConfig, decide, frame_losses


def test_mpjpe_root_aligned_and_pa_invariant_to_similarity():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(5, 24, 3))
    shifted = gt + np.array([1.0, 2.0, 3.0])
    assert np.allclose(mpjpe(shifted, gt), 0.0)
    rot = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    transformed = 1.7 * gt @ rot.T + 0.4
    assert np.allclose(pa_mpjpe(transformed, gt), 0.0, atol=1e-6)
    assert (mpjpe(transformed, gt) > 100).all()
    noisy = gt.copy()
    noisy[:, 3] += [0.01, 0.0, 0.0]
    assert np.allclose(mpjpe(noisy, gt), 10.0 / 24)


def test_accel_error():
    t = np.arange(10, dtype=float)
    gt = np.zeros((10, 2, 3))
    gt[:, 1, 0] = 0.001 * t  # constant velocity: zero acceleration
    pred = gt.copy()
    pred[5, 1, 0] += 0.002
    err = accel_error(pred, gt)
    assert err.shape == (8,)
    assert err[3] == pytest.approx(1000 * 0.002 / 2)  # second difference centred at frame 4
    assert err[4] == pytest.approx(1000 * 0.004 / 2)


@pytest.mark.parametrize("n,window,overlap", [(10, 100, 20), (100, 100, 20), (250, 100, 20), (101, 50, 10)])
def test_windows_cover_and_stitch_exactly(n, window, overlap):
    wins = plan_windows(n, window, overlap)
    covered = np.zeros(n, int)
    for s, e in wins:
        assert e - s == min(window, n)
        covered[s:e] += 1
    assert (covered >= 1).all()
    for (s0, e0), (s1, e1) in zip(wins, wins[1:]):
        assert e0 - s1 >= overlap
    truth = np.random.default_rng(1).normal(size=(n, 3))
    parts = [truth[s:e] for s, e in wins]
    assert np.allclose(stitch_frames(wins, parts, n), truth)
    assert np.allclose(stitch_shared(wins, [np.ones(10) * i for i in range(len(wins))]),
                       np.average(np.arange(len(wins)), weights=[e - s for s, e in wins]))


def test_filter_reasons_recorded():
    f = 6
    projected = np.zeros((f, 17, 2))
    det = np.zeros((f, 2, 17, 3))
    det[..., 2] = 1.0
    det[:, 0, :, 0] = 1.0  # person 0: 1 px off everywhere
    det[:, 1, :, 0] = 50.0  # person 1: far away
    det[2, :, :, 2] = 0.0  # frame 2: nothing confident
    det[4, 0, :, 0] = 20.0  # frame 4: the matched person is 20 px off
    pmask = np.ones((f, 2), bool)
    camera = np.tile([100.0, 0.0, 0.0], (f, 1))  # 100 px/m * 1 m = 100 px person height
    losses = frame_losses(projected, det, pmask, camera, 1.0, min_confidence=0.3, min_keypoints=6)
    assert losses.matched_person.tolist() == [0, 0, -1, 0, 0, 0]
    assert losses.loss[0] == pytest.approx(0.01)
    assert losses.loss[4] == pytest.approx(0.2)
    d = decide(losses, FilterConfig(video_loss_threshold=0.06, frame_loss_threshold=0.05))
    assert d.keep_video and d.video_reason == "kept"
    assert d.frame_reason == ["kept", "kept", "no_matching_detection", "kept", "frame_loss_above_threshold", "kept"]
    assert d.video_loss == pytest.approx(0.01)  # the median: the 0.2 frame does not sink the video
    strict = decide(losses, FilterConfig(video_loss_threshold=0.005, frame_loss_threshold=0.05))
    assert not strict.keep_video and strict.video_reason == "video_loss_above_threshold"
    assert set(strict.frame_reason) == {"video_dropped"} and not strict.keep_frame.any()
    sparse = decide(losses, FilterConfig(min_measured_fraction=0.9))
    assert sparse.video_reason == "too_few_measurable_frames"


def test_filter_config_validation():
    with pytest.raises(ValueError, match="min_keypoints"):
        FilterConfig(min_keypoints=0)
