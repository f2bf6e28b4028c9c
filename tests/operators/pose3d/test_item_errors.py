"""One item's error fails that item only, with a reason naming the item and the exception."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from labelmill.operators.pose3d.item_errors import failure_reason, isolate
from labelmill.operators.pose3d.keypoint_init import KeypointInit
from labelmill.operators.pose3d.loss_filter import LossFilter
from labelmill.operators.pose3d.samples import BuildSamples, batch_samples


def test_failure_reason_keeps_value_errors_and_names_unexpected_ones(caplog):
    assert failure_reason("fit", "a", ValueError("bad shape")) == "fit of item a: bad shape"
    with caplog.at_level(logging.WARNING):
        try:
            {}["missing"]
        except KeyError as exc:
            reason = failure_reason("fit", "b", exc)
    assert reason == "fit of item b: unexpected KeyError: 'missing'"
    assert any(record.exc_info for record in caplog.records)  # the traceback is logged, not swallowed


def test_isolate_retries_one_by_one_and_fails_only_the_culprit():
    calls = []

    def compute(members):
        calls.append(list(members))
        if 1 in members:
            raise RuntimeError("item 1 breaks the batch")
        return {i: i * 10 for i in members}

    results, failures = isolate(compute, [0, 1, 2], what="fit", keys=["a", "b", "c"])
    assert results == {0: 0, 2: 20}
    assert failures == {1: "fit of item b: unexpected RuntimeError: item 1 breaks the batch"}
    assert calls == [[0, 1, 2], [0], [1], [2]]
    assert isolate(compute, [0, 2], what="fit", keys="abc") == ({0: 0, 2: 20}, {})
    assert isolate(compute, [], what="fit", keys="") == ({}, {})


class _FlakyInitialiser:
    """Stands in for the keypoint initialiser: fails on a batch holding a frame with x = 666."""

    config = type("Config", (), {"min_confidence": 0.1})()

    def initialise(self, keypoints, batch_size):
        if (keypoints[..., 0] == 666).any():
            raise RuntimeError("the network met a value it cannot take")
        n = keypoints.shape[0]
        return {"betas": np.full((n, 10), 0.5, np.float32), "global_orient": np.zeros((n, 3), np.float32),
                "body_pose": np.zeros((n, 69), np.float32), "camera": np.ones((n, 3), np.float32)}

    def eval(self):
        return self


def test_keypoint_init_fails_only_the_item_that_breaks_the_batched_network():
    op = KeypointInit()
    op.set_model(_FlakyInitialiser())
    good = np.ones((3, 17, 3), np.float32)
    bad = good.copy()
    bad[1, :, 0] = 666
    out = op({"key": ["g1", "bad", "g2"], "main_keypoints": [good, bad, good]})
    assert out["status"] == ["pending", "failed", "pending"]
    assert out["reason"][1] == "initialisation of item bad: unexpected RuntimeError: the network met a value it cannot take"
    assert out["init_betas"][0].shape == (3, 10) and out["init_betas"][2][0, 0] == 0.5
    assert out["init_betas"][1].shape == (0, 10)


def test_loss_filter_and_samples_fail_an_item_on_any_error():
    filtered = LossFilter()({"key": ["x"], "projected2d": [np.zeros((2, 17, 2))], "camera": [None],
                             "body_height": [1.7], "keypoints": [np.zeros((2, 1, 17, 3))],
                             "person_mask": [np.ones((2, 1), bool)]})
    assert filtered["status"] == ["failed"] and filtered["reason"][0].startswith("loss filter of item x: ")
    row = {"key": ["v"], "frames_jpeg": [[b"j"]], "frame_reason": [None], "status": ["pending"], "reason": [None],
           **{name: [None] for name in ("betas", "global_orient", "body_pose", "camera", "joints3d", "keypoints3d",
                                        "projected2d", "keypoints3d_init", "frame_loss", "keep_frame", "video_loss",
                                        "keep_video", "video_reason", "fit_energy", "fit_iterations")}}
    out = BuildSamples()(dict(row))
    assert out["status"] == ["failed"] and "samples of item v: unexpected TypeError" in out["reason"][0]
    samples, rows = batch_samples(dict(row))
    assert samples == [] and rows[0]["status"] == "failed" and "unexpected TypeError" in rows[0]["reason"]


@pytest.mark.parametrize("frames", [1, 3])
def test_samples_refuse_member_names_tar_cannot_extract(frames):
    from labelmill.operators.pose3d.samples import Pose3dSampleError, video_samples

    key = "k" * 300
    row = {"key": key, "frames_jpeg": [b"j"] * frames, "frame_reason": ["kept"] * frames, "betas": np.zeros(10),
           **{name: np.zeros((frames, *shape)) for name, shape in (
               ("global_orient", (3,)), ("body_pose", (69,)), ("camera", (3,)), ("joints3d", (24, 3)),
               ("keypoints3d", (17, 3)), ("projected2d", (17, 2)), ("keypoints3d_init", (17, 3)))},
           "frame_loss": np.zeros(frames), "keep_frame": np.ones(frames, bool), "video_loss": 0.0,
           "keep_video": True, "video_reason": "kept", "fit_energy": 1.0, "fit_iterations": 1}
    with pytest.raises(Pose3dSampleError, match="tar member names of .* bytes; at most 255"):
        video_samples(row)
