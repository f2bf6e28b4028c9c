"""The engine-free BundleAdjust operator: columns in/out, windows, filtering reasons."""

import pickle

import numpy as np
import pytest

from labelmill.models.batched_lbfgs import LBFGSConfig
from labelmill.models.body_model import BodyModel
from labelmill.models.pose3d_fit import FitConfig
from labelmill.operators.pose3d.bundle_adjust import BundleAdjust
from labelmill.operators.pose3d.fit_quality import FilterConfig

from fake_videos import make_video


@pytest.fixture(scope="module")
def body():
    return BodyModel()


def columns(videos):
    batch = {k: [] for k in ("key", "keypoints", "person_mask", "init_betas", "init_global_orient",
                             "init_body_pose", "init_camera")}
    for i, v in enumerate(videos):
        batch["key"].append(f"video{i}")
        batch["keypoints"].append(v["det"])
        batch["person_mask"].append(np.ones(v["det"].shape[:2], bool))
        for k, a in v["init"].items():
            batch[k].append(a)
    return batch


def test_operator_fits_windows_and_filters_with_reasons(body):
    long = make_video(body, 31, 26)
    short = make_video(body, 32, 7)
    bad = make_video(body, 33, 7)
    bad["det"][..., :2] += np.random.default_rng(0).normal(0, 80, bad["det"][..., :2].shape)  # garbage detections
    op = BundleAdjust(fit=FitConfig(window=12, window_overlap=4, solver=LBFGSConfig(max_iter=30)),
                      filter=FilterConfig(video_loss_threshold=0.06, frame_loss_threshold=0.08))
    op = pickle.loads(pickle.dumps(op))  # operators must be picklable before setup()
    out = op(columns([long, short, bad]))
    assert out["key"] == ["video0", "video1", "video2"]
    for i, n in enumerate((26, 7, 7)):
        assert out["body_pose"][i].shape == (n, 69) and out["joints3d"][i].shape == (n, 24, 3)
        assert out["projected2d"][i].shape == (n, 17, 2) and out["keypoints3d_init"][i].shape == (n, 17, 3)
        assert out["betas"][i].shape == (10,) and len(out["frame_reason"][i]) == n
        assert np.isfinite(out["joints3d"][i]).all()
    # the long video was fitted in 3 windows and stitched: no jump at the seams
    step = np.linalg.norm(np.diff(out["joints3d"][0], axis=0), axis=-1).max(-1)
    assert step.max() < 0.15
    # good videos are kept, the garbage one is dropped with a reason
    assert out["keep_video"][:2] == [True, True]
    assert out["video_reason"][2] == "video_loss_above_threshold" and not out["keep_video"][2]
    assert set(out["frame_reason"][2]) == {"video_dropped"}
    assert out["video_loss"][0] < 0.06 and out["video_loss"][2] > 0.06
    # projections of kept frames lie close to the detections (relative to person size)
    err = np.linalg.norm(out["projected2d"][1] - short["det"][:, 0, :, :2], axis=-1).mean()
    assert err < 0.05 * 150 * 1.6


def test_operator_handles_an_empty_video_and_missing_columns(body):
    v = make_video(body, 41, 5)
    empty = {"det": np.zeros((0, 1, 17, 3), np.float32),
             "init": {k: a[:0] for k, a in v["init"].items()}}
    op = BundleAdjust(fit=FitConfig(solver=LBFGSConfig(max_iter=5)))
    out = op(columns([v, empty]))
    assert out["video_reason"][1] == "no_frames" and not out["keep_video"][1]
    assert out["body_pose"][1].shape == (0, 69)
    with pytest.raises(KeyError, match="init_camera"):
        op({"key": ["x"], "keypoints": [v["det"]]})


def test_failed_and_malformed_items_pass_through_with_reasons(body):
    good = make_video(body, 51, 6)
    broken = make_video(body, 52, 6)
    broken["init"]["init_body_pose"] = broken["init"]["init_body_pose"][:, :60]  # wrong shape
    upstream = make_video(body, 53, 6)
    batch = columns([good, broken, upstream])
    batch["status"] = ["pending", "pending", "failed"]
    batch["reason"] = [None, None, "decode failed: truncated file"]
    out = BundleAdjust(fit=FitConfig(solver=LBFGSConfig(max_iter=5)))(batch)
    assert out["status"] == ["pending", "failed", "failed"]
    assert "video1" in out["reason"][1] and "init_body_pose has shape (6, 60), expected (F?, 69)".replace("F?", "6") in out["reason"][1]
    assert out["reason"][2] == "decode failed: truncated file"
    assert out["body_pose"][0].shape == (6, 69) and out["body_pose"][1] is None and out["body_pose"][2] is None


def test_results_do_not_depend_on_batch_composition(body):
    """Bit-identical per video whether fitted alone or with others (what byte-identical shards
    on every engine rest on): padding depends on the video only, one CPU thread."""
    import torch

    videos = [make_video(body, s, n) for s, n in ((61, 9), (62, 14), (63, 7))]
    op = BundleAdjust(fit=FitConfig(solver=LBFGSConfig(max_iter=15), cpu_threads=1))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the operator must pin its own threads
    try:
        together = op(columns(videos))
        assert torch.get_num_threads() == 2  # and restores them
        for i, v in enumerate(videos):
            alone = op(columns([v]))
            for name in ("body_pose", "camera", "betas", "joints3d"):
                assert np.array_equal(alone[name][0], together[name][i]), (i, name)
    finally:
        torch.set_num_threads(previous)
