"""Tracking people across frames and choosing the person of interest."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from labelmill.operators.pose3d.keypoints_format import VideoKeypoints
from labelmill.operators.pose3d.tracking import (
    TrackingConfig,
    TrackPersonOfInterest,
    assign_tracks,
    box_iou,
    choose_main_track,
    main_track_keypoints,
    track_person_of_interest,
    track_statistics,
)

_TEMPLATE = np.random.default_rng(7).uniform([-20, -50], [20, 50], size=(17, 2))  # one body shape for everyone


def _skeleton(
    cx: float, cy: float, scale: float = 1.0, rng: np.random.Generator | None = None, noise: float = 0.0
) -> np.ndarray:
    """(17, 3) keypoints of the shared body shape centred at (cx, cy), scaled, with pixel noise."""
    points = np.zeros((17, 3))
    points[:, :2] = _TEMPLATE * scale + (cx, cy)
    if rng is not None and noise > 0:
        points[:, :2] += rng.normal(0, noise, size=(17, 2))
    points[:, 2] = 0.9
    return points


def _video(
    people_per_frame: list[list[tuple[int, np.ndarray]]], rng: np.random.Generator
) -> tuple[VideoKeypoints, list[list[int]]]:
    """Shuffle each frame's (identity, keypoints) list; returns the video and the identity of each slot."""
    frames, identities = [], []
    for people in people_per_frame:
        order = rng.permutation(len(people))
        frames.append(np.array([people[i][1] for i in order]).reshape(-1, 17, 3))
        identities.append([people[i][0] for i in order])
    return VideoKeypoints.from_frames(frames), identities


def _track_of_identity(track_ids: np.ndarray, identities: list[list[int]]) -> dict[int, set[int]]:
    """identity -> set of track ids it was given over the video."""
    tracks: dict[int, set[int]] = {}
    for t, frame in enumerate(identities):
        for slot, identity in enumerate(frame):
            tracks.setdefault(identity, set()).add(int(track_ids[t, slot]))
    return tracks


@pytest.mark.parametrize("seed", range(6))
def test_identities_survive_a_crossing(seed):
    """Two same-sized people walk past each other; their boxes coincide mid-video."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(41):
        a = _skeleton(60 + 6 * t, 150, rng=rng, noise=1.5)  # left -> right
        b = _skeleton(300 - 6 * t, 160, rng=rng, noise=1.5)  # right -> left; same x at t = 20
        frames.append([(0, a), (1, b)])
    vk, identities = _video(frames, rng)
    iou_at_crossing = box_iou(vk.boxes[20, :1], vk.boxes[20, 1:2])[0, 0]
    assert iou_at_crossing > 0.65  # the boxes really overlap there
    track_ids = assign_tracks(vk, config=TrackingConfig())
    tracks = _track_of_identity(track_ids, identities)
    assert len(tracks[0]) == 1 and len(tracks[1]) == 1, tracks
    assert tracks[0] != tracks[1]
    assert set(np.unique(track_ids).tolist()) == {0, 1}


def test_motion_prediction_resolves_identical_people_crossing():
    """Identical skeletons on the same line coincide exactly at t = 20: only motion tells them apart."""

    def identity_track(config: TrackingConfig, seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        frames = [[(0, _skeleton(60 + 6 * t, 150)), (1, _skeleton(300 - 6 * t, 150))] for t in range(41)]
        vk, identities = _video(frames, rng)
        track_ids = assign_tracks(vk, config=config)
        return [int(track_ids[t, identities[t].index(0)]) for t in range(41) if t != 20]  # t = 20: indistinguishable

    for seed in range(3):
        assert len(set(identity_track(TrackingConfig(), seed))) == 1
    # Control: without the motion model the same videos swap identities after the crossing.
    assert any(len(set(identity_track(TrackingConfig(velocity_smoothing=0.0), seed))) > 1 for seed in range(3))


def test_identity_survives_a_short_dropout_but_not_a_long_one():
    rng = np.random.default_rng(3)
    frames = []
    for t in range(30):
        people = [(1, _skeleton(400, 120, rng=rng, noise=1.0))]
        if not 10 <= t < 14:  # person 0 undetected for 4 frames while it keeps walking
            people.append((0, _skeleton(50 + 4 * t, 150, rng=rng, noise=1.0)))
        frames.append(people)
    vk, identities = _video(frames, rng)
    tracks = _track_of_identity(assign_tracks(vk, config=TrackingConfig(max_gap=5)), identities)
    assert len(tracks[0]) == 1 and len(tracks[1]) == 1
    tracks = _track_of_identity(assign_tracks(vk, config=TrackingConfig(max_gap=3)), identities)
    assert len(tracks[0]) == 2  # the gap exceeds max_gap: the track ended, a new one began


def test_gap_is_counted_in_source_frames():
    person = [_skeleton(100 + 2 * f, 100) for f in (0, 1, 9)]
    vk = VideoKeypoints.from_frames([[p] for p in person], frame_indices=[0, 1, 9])
    assert assign_tracks(vk, config=TrackingConfig(max_gap=7))[:, 0].tolist() == [0, 0, 0]
    assert assign_tracks(vk, config=TrackingConfig(max_gap=6))[:, 0].tolist() == [0, 0, 1]


def test_a_distant_detection_is_gated_into_a_new_track():
    vk = VideoKeypoints.from_frames([[_skeleton(50, 100)], [_skeleton(400, 100)]])
    assert assign_tracks(vk)[:, 0].tolist() == [0, 1]


def test_spurious_one_frame_detection_is_not_the_main_track():
    rng = np.random.default_rng(5)
    frames = []
    for t in range(25):
        people = [(0, _skeleton(100 + t, 150, rng=rng, noise=1.0))]
        if t == 12:
            people.append((1, _skeleton(300, 150, scale=3.0)))  # huge, one frame
        frames.append(people)
    vk, identities = _video(frames, rng)
    result = track_person_of_interest(vk)
    rows, slots = np.nonzero(result.track_ids == result.main_track)
    assert {identities[t][s] for t, s in zip(rows, slots)} == {0}
    assert len(result.tracks) == 2 and result.person[12] >= 0


def test_main_track_prefers_long_then_large():
    rng = np.random.default_rng(11)
    # Both present all the time: the larger person wins.
    frames = [[(0, _skeleton(100, 150)), (1, _skeleton(300, 150, scale=1.4))] for _ in range(20)]
    vk, identities = _video(frames, rng)
    track_ids = assign_tracks(vk)
    main = choose_main_track(vk, track_ids)
    assert {identities[t][s] for t, s in zip(*np.nonzero(track_ids == main))} == {1}
    # A small person present throughout beats a slightly larger one present a third of the time ...
    frames = [[(0, _skeleton(100, 150))] + ([(1, _skeleton(300, 150, scale=1.4))] if t < 7 else []) for t in range(21)]
    vk, identities = _video(frames, rng)
    track_ids = assign_tracks(vk)
    stats = {s.track_id: s for s in track_statistics(vk, track_ids)}
    main = choose_main_track(vk, track_ids)
    assert {identities[t][s] for t, s in zip(*np.nonzero(track_ids == main))} == {0}
    assert stats[main].frames_present == 21
    # ... and with main_size_exponent = 0 only length counts, even against a much larger person.
    frames = [[(0, _skeleton(100, 150))] + ([(1, _skeleton(300, 150, scale=5.0))] if t < 18 else []) for t in range(21)]
    vk, identities = _video(frames, rng)
    track_ids = assign_tracks(vk)
    assert {identities[t][s] for t, s in zip(*np.nonzero(track_ids == choose_main_track(vk, track_ids)))} == {1}
    longest = choose_main_track(vk, track_ids, config=TrackingConfig(main_size_exponent=0.0))
    assert {identities[t][s] for t, s in zip(*np.nonzero(track_ids == longest))} == {0}


def test_main_track_keypoints_are_zero_where_absent_and_detections_untouched():
    frames = [[_skeleton(100 + t, 100)] if t != 3 else [] for t in range(6)]
    frames[1] = [_skeleton(101, 100), _skeleton(400, 100, scale=0.5)]
    vk = VideoKeypoints.from_frames(frames)
    before = {name: getattr(vk, name).copy() for name in ("keypoints", "person_mask", "boxes", "scores")}
    result = track_person_of_interest(vk)
    for name, array in before.items():
        np.testing.assert_array_equal(getattr(vk, name), array, err_msg=name)
    assert result.keypoints.shape == (6, 17, 3) and result.person.tolist() == [0, 0, 0, -1, 0, 0]
    assert np.all(result.keypoints[3] == 0)
    np.testing.assert_allclose(result.keypoints[4], vk.keypoints[4, 0])
    np.testing.assert_allclose(main_track_keypoints(vk, result.track_ids, result.main_track), result.keypoints)
    assert result.track_ids[~vk.person_mask].tolist() == [-1] * int((~vk.person_mask).sum())


def test_empty_video_has_no_main_track():
    vk = VideoKeypoints.from_frames([[], []])
    result = track_person_of_interest(vk)
    assert result.main_track == -1 and result.person.tolist() == [-1, -1] and result.keypoints.shape == (2, 17, 3)


@pytest.mark.parametrize(
    "field, value",
    [("iou_weight", 1.5), ("max_cost", 0.0), ("max_gap", -1), ("max_gap", 2.5), ("keypoint_distance_scale", 0.0),
     ("min_common_keypoints", 0), ("velocity_smoothing", -0.1), ("main_size_exponent", float("nan"))],
)  # fmt: skip
def test_tracking_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"tracking\.{field}"):
        TrackingConfig(**{field: value})


def test_operator_adds_tracks_and_passes_failed_items_through():
    vk = VideoKeypoints.from_frames([[_skeleton(100 + t, 100), _skeleton(300, 100, scale=0.5)] for t in range(5)])
    op = pickle.loads(pickle.dumps(TrackPersonOfInterest(tracking=TrackingConfig(max_gap=3))))
    op.setup()
    batch = {
        "key": ["a", "b", "c"],
        "keypoints": [vk.keypoints, np.zeros((0, 0, 17, 3)), vk.keypoints[:, :, :16]],
        "person_mask": [vk.person_mask, np.zeros((0, 0), bool), vk.person_mask],
        "boxes": [vk.boxes, np.zeros((0, 0, 4)), vk.boxes],
        "status": ["pending", "failed", "pending"],
        "reason": [None, "no keypoints", None],
    }
    out = op(batch)
    assert out["status"] == ["pending", "failed", "failed"]
    assert out["reason"][1] == "no keypoints" and "item c" in out["reason"][2]
    assert out["main_track"].tolist() == [0, -1, -1]
    assert out["track_ids"][0].shape == (5, 2) and out["main_person"][0].tolist() == [0] * 5
    np.testing.assert_allclose(out["main_keypoints"][0], vk.keypoints[:, 0])
    assert out["main_boxes"][0].shape == (5, 4)


def test_person_of_interest_on_a_synthetic_world_video():
    """End to end on the synthetic world: its keypoint document, read back, tracked, against its ground truth."""
    corpus = pytest.importorskip("labelmill.operators.synth.corpus")
    from labelmill.models.body_model import BodyModel
    from labelmill.operators.synth.config import SynthConfig

    cfg = SynthConfig(num_videos=1, num_frames=60, max_people=3, seed=3)
    video = corpus.synthesize_video(0, cfg, BodyModel())
    vk = VideoKeypoints.from_json(corpus.keypoints_document(video, cfg))
    result = track_person_of_interest(vk)
    poi = np.asarray(video.poi_index)
    agreement = float((result.person == poi).mean())
    assert agreement >= 0.9, agreement  # misses: only outlier detections split off for a frame
    main_people = [video.order[t][result.person[t]] for t in range(cfg.num_frames) if result.person[t] >= 0]
    assert set(main_people) == {0}  # the main track never follows a distractor
