"""Keypoint structure, JSON schema, precomputed-keypoint readers and the PrecomputedKeypoints operator."""

from __future__ import annotations

import json
import pickle
import types
import uuid

import fsspec
import numpy as np
import pytest

from labelmill.models.coco import COCO17_NAMES
from labelmill.operators.pose3d.keypoints_format import KeypointsFormatError, VideoKeypoints, boxes_from_keypoints
from labelmill.operators.pose3d.keypoints_precomputed import (
    PrecomputedKeypoints,
    parse_coco_results,
    read_coco_results,
    read_keypoints,
    read_labelmill_keypoints,
    read_openpose,
)

# Written out by hand from OpenPose's documented output orders (not derived from the module).
BODY25 = [
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip",
    "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
    "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
]  # fmt: skip
COCO18 = [
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
    "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
]  # fmt: skip
# COCO-17 name -> OpenPose name, joint by joint.
COCO17_TO_OPENPOSE = {
    "nose": "Nose", "left_eye": "LEye", "right_eye": "REye", "left_ear": "LEar", "right_ear": "REar",
    "left_shoulder": "LShoulder", "right_shoulder": "RShoulder", "left_elbow": "LElbow",
    "right_elbow": "RElbow", "left_wrist": "LWrist", "right_wrist": "RWrist", "left_hip": "LHip",
    "right_hip": "RHip", "left_knee": "LKnee", "right_knee": "RKnee", "left_ankle": "LAnkle",
    "right_ankle": "RAnkle",
}  # fmt: skip


def _person(cx: float, cy: float, confidence: float = 0.8) -> np.ndarray:
    """(17, 3) keypoints spread around (cx, cy)."""
    points = np.zeros((17, 3), np.float32)
    points[:, 0] = cx + np.linspace(-10, 10, 17)
    points[:, 1] = cy + np.linspace(-30, 30, 17)
    points[:, 2] = confidence
    return points


def _write_json(path, document) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return str(path)


def _openpose_person(names: list[str], frame: int) -> list[float]:
    """Flat [x, y, c] * N where joint j has x = 1000 j + frame, y = 2000 + j, c = (j + 1) / 100."""
    values = []
    for j in range(len(names)):
        values += [1000.0 * j + frame, 2000.0 + j, (j + 1) / 100]
    return values


# ----------------------------------------------------------------------------- VideoKeypoints


def test_from_frames_pads_and_derives_boxes_and_scores():
    a, b = _person(100, 200), _person(300, 200, confidence=0.5)
    a[3, 2] = 0.0  # one undetected keypoint: ignored by box and score
    a[3, :2] = 9999.0
    vk = VideoKeypoints.from_frames([[a], [a, b], []], frame_indices=[4, 5, 9], width=640, height=480, fps=25)
    assert vk.keypoints.shape == (3, 2, 17, 3) and vk.keypoints.dtype == np.float32
    assert vk.person_mask.tolist() == [[True, False], [True, True], [False, False]]
    assert np.all(vk.keypoints[0, 1] == 0) and np.all(vk.boxes[2] == 0)
    assert np.all(vk.keypoints[0, 0, 3] == 0)  # undetected keypoint zeroed
    np.testing.assert_allclose(vk.boxes[1, 0], [90, 170, 110, 230], atol=1e-4)
    np.testing.assert_allclose(vk.scores[1], [0.8, 0.5], atol=1e-6)
    assert vk.frame_indices.tolist() == [4, 5, 9]
    assert vk.people_per_frame().tolist() == [1, 2, 0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda k: k.__setitem__((0, 0, 2, 2), -0.1), "confidences"),
        (lambda k: k.__setitem__((0, 0, 2, 0), np.nan), "finite"),
    ],
)
def test_video_keypoints_rejects_bad_values(change, message):
    keypoints = _person(10, 10)[None, None].copy()
    change(keypoints)
    with pytest.raises(ValueError, match=message):
        VideoKeypoints(
            keypoints=keypoints, person_mask=[[True]], boxes=np.zeros((1, 1, 4)), scores=[[1.0]], frame_indices=[0]
        )


def test_video_keypoints_rejects_bad_shapes_and_frames():
    with pytest.raises(ValueError, match=r"keypoints\[0\] must have shape"):
        VideoKeypoints.from_frames([np.zeros((1, 18, 3))])
    with pytest.raises(ValueError, match="strictly increasing"):
        VideoKeypoints.from_frames([[_person(1, 1)], [_person(1, 1)]], frame_indices=[3, 3])
    with pytest.raises(ValueError, match="width"):
        VideoKeypoints.from_frames([], width=-5)


def test_json_round_trip_and_densify():
    vk = VideoKeypoints.from_frames(
        [[_person(100, 200)], [_person(110, 200), _person(300, 100, 0.4)]],
        boxes=[[[80, 160, 120, 240]], None],
        scores=[[0.95], None],
        frame_indices=[2, 5],
        width=320,
        height=240,
        fps=30,
        video="abc",
        video_frames=8,
    )
    text = vk.to_json_text()
    document = json.loads(text)
    assert document["keypoint_names"] == list(COCO17_NAMES)
    assert [f["frame"] for f in document["frames"]] == [2, 5]
    back = VideoKeypoints.from_json(text)
    for name in ("keypoints", "person_mask", "boxes", "scores", "frame_indices"):
        np.testing.assert_allclose(getattr(back, name), getattr(vk, name), atol=1e-4, err_msg=name)
    assert (back.width, back.height, back.fps, back.video, back.video_frames) == (320, 240, 30.0, "abc", 8)
    dense = back.densify()
    assert dense.num_frames == 8 and dense.frame_indices.tolist() == list(range(8))
    assert dense.person_mask.sum(axis=1).tolist() == [0, 0, 1, 0, 0, 2, 0, 0]
    np.testing.assert_allclose(dense.boxes[2, 0], [80, 160, 120, 240])


def test_from_json_errors_name_the_source_and_place():
    good = VideoKeypoints.from_frames([[_person(1, 1)]]).to_json()
    bad = json.loads(json.dumps(good))
    bad["frames"][0]["people"][0]["keypoints"] = bad["frames"][0]["people"][0]["keypoints"][:16]
    with pytest.raises(KeypointsFormatError, match=r"vid\.json: frame 0, person 0: expected 17 keypoints"):
        VideoKeypoints.from_json(bad, source="vid.json")
    bad = json.loads(json.dumps(good))
    bad["frames"][0]["people"][0]["keypoints"][5][2] = -1
    expected = r"vid\.json: .*negative confidence -1.0 at keypoint 5 \(left_shoulder\)"
    with pytest.raises(KeypointsFormatError, match=expected):
        VideoKeypoints.from_json(bad, source="vid.json")
    with pytest.raises(KeypointsFormatError, match=r"vid\.json: malformed JSON"):
        VideoKeypoints.from_json("{not json", source="vid.json")
    bad = json.loads(json.dumps(good))
    bad["frames"].append(bad["frames"][0])
    with pytest.raises(KeypointsFormatError, match="frame 0 is listed more than once"):
        VideoKeypoints.from_json(bad, source="vid.json")


# ----------------------------------------------------------------------------- synthetic (labelmill) format


def _synthetic_document_from_writer() -> dict:
    """A document made by the synthetic-corpus writer itself, on a stub video (no rendering)."""
    corpus = pytest.importorskip("labelmill.operators.synth.corpus")
    frames = 3
    keypoints = np.stack([_person(50 + 5 * t, 120) for t in range(frames)]).astype(np.float64)
    other = np.stack([_person(250, 100, 0.6) for _ in range(frames)]).astype(np.float64)
    people = [
        types.SimpleNamespace(detections=types.SimpleNamespace(
            keypoints=kp, bbox=boxes_from_keypoints(kp).astype(np.float64), score=kp[:, :, 2].mean(1)))
        for kp in (keypoints, other)
    ]  # fmt: skip
    video = types.SimpleNamespace(video_id="dm7kAdE-C5h", order=[[0, 1], [1, 0], [1]], people=people)
    cfg = types.SimpleNamespace(fps=30, width=320, height=240, num_frames=frames)
    return corpus.keypoints_document(video, cfg)


def test_reads_the_synthetic_writer_output(tmp_path):
    document = _synthetic_document_from_writer()
    path = _write_json(tmp_path / "keypoints" / "dm7kAdE-C5h.json", document)
    vk = read_labelmill_keypoints(path)
    assert (vk.video, vk.fps, vk.width, vk.height, vk.video_frames) == ("dm7kAdE-C5h", 30.0, 320, 240, 3)
    assert vk.person_mask.sum(axis=1).tolist() == [2, 2, 1]
    np.testing.assert_allclose(vk.keypoints[1, 1], _person(55, 120), atol=1e-4)  # order [1, 0]: slot 1 is person 0
    np.testing.assert_allclose(vk.keypoints[2, 0], _person(250, 100, 0.6), atol=1e-4)
    assert read_keypoints(path).person_mask.tolist() == vk.person_mask.tolist()  # auto-detected


def test_reads_the_planned_synthetic_shape_with_missing_optional_fields(tmp_path):
    document = {
        "video": "v1",
        "fps": 25,
        "width": 64,
        "height": 48,
        "frames": [
            {"frame": 1, "people": [{"keypoints": _person(20, 20).tolist()}]},  # no bbox, no score
            {"frame": 0, "people": []},
        ],
    }
    vk = read_labelmill_keypoints(_write_json(tmp_path / "v1.json", document))
    assert vk.frame_indices.tolist() == [0, 1]  # sorted by frame
    np.testing.assert_allclose(vk.boxes[1, 0], [10, -10, 30, 50], atol=1e-4)
    np.testing.assert_allclose(vk.scores[1, 0], 0.8, atol=1e-6)


# ----------------------------------------------------------------------------- OpenPose


@pytest.mark.parametrize("names", [BODY25, COCO18], ids=["BODY_25", "COCO-18"])
def test_openpose_layout_maps_to_coco17_joint_by_joint(tmp_path, names):
    folder = tmp_path / "clip"
    for frame in (0, 1, 3):  # frame 2 missing: indices come from the file names
        people = [] if frame == 1 else [{"person_id": [-1], "pose_keypoints_2d": _openpose_person(names, frame)}]
        _write_json(folder / f"clip_{frame:012d}_keypoints.json", {"version": 1.3, "people": people})
    vk = read_openpose(str(folder), width=640, height=360, fps=30)
    assert vk.frame_indices.tolist() == [0, 1, 3]
    assert vk.person_mask[:, 0].tolist() == [True, False, True]
    assert (vk.width, vk.height, vk.video) == (640, 360, "clip")
    for k, coco_name in enumerate(COCO17_NAMES):
        j = names.index(COCO17_TO_OPENPOSE[coco_name])
        np.testing.assert_allclose(
            vk.keypoints[2, 0, k], [1000.0 * j + 3, 2000.0 + j, (j + 1) / 100], rtol=1e-6, err_msg=coco_name
        )


def test_openpose_errors_name_the_file(tmp_path):
    folder = tmp_path / "bad"
    _write_json(folder / "bad_000000000000_keypoints.json", {"people": [{"pose_keypoints_2d": [1.0] * 60}]})
    name = r"bad_000000000000_keypoints\.json"
    with pytest.raises(KeypointsFormatError, match=rf"{name}: .*wrong number of keypoint values 60"):
        read_openpose(str(folder))

    (folder / "bad_000000000000_keypoints.json").write_text('{"people": [')
    with pytest.raises(KeypointsFormatError, match=rf"{name}: malformed JSON"):
        read_openpose(str(folder))

    values = _openpose_person(BODY25, 0)
    values[3 * 7 + 2] = -0.5
    _write_json(folder / "bad_000000000000_keypoints.json", {"people": [{"pose_keypoints_2d": values}]})
    with pytest.raises(KeypointsFormatError, match=rf"{name}: .*negative .*confidence -0.5 at keypoint 7"):
        read_openpose(str(folder))

    _write_json(tmp_path / "odd" / "frame_keypoints.json", {"people": []})
    with pytest.raises(KeypointsFormatError, match=r"frame_keypoints\.json: file name does not follow"):
        read_openpose(str(tmp_path / "odd"))


def test_openpose_directory_with_several_videos_needs_a_name(tmp_path):
    for name in ("a", "b"):
        _write_json(tmp_path / f"{name}_000000000000_keypoints.json", {"people": []})
    with pytest.raises(KeypointsFormatError, match="several videos"):
        read_openpose(str(tmp_path))
    assert read_openpose(str(tmp_path), video="b").video == "b"


# ----------------------------------------------------------------------------- COCO results


def _coco_entry(image_id, cx, v_or_c, score=None, bbox=None) -> dict:
    points = _person(cx, 100)
    points[:, 2] = v_or_c
    entry = {"image_id": image_id, "category_id": 1, "keypoints": points.reshape(-1).tolist()}
    if score is not None:
        entry["score"] = score
    if bbox is not None:
        entry["bbox"] = bbox
    return entry


def test_coco_results_visibility_flags_and_sorted_ids(tmp_path):
    results = [
        _coco_entry(17, 50, 2, score=0.9, bbox=[40, 60, 20, 80]),
        _coco_entry(12, 60, 1),
        _coco_entry(17, 200, 0, score=0.3),
    ]
    results[1]["keypoints"][2] = 0  # nose of image 12 not labelled
    vk = read_coco_results(_write_json(tmp_path / "r.json", results))
    assert vk.frame_indices.tolist() == [0, 1]  # image 12 -> frame 0, image 17 -> frame 1
    assert vk.person_mask.tolist() == [[True, False], [True, True]]
    assert vk.keypoints[0, 0, 0, 2] == 0 and np.all(vk.keypoints[0, 0, 1:, 2] == 1.0)  # v > 0 and no score -> 1
    np.testing.assert_allclose(vk.keypoints[1, 0, :, 2], 0.9)  # v > 0 -> the result's score
    assert np.all(vk.keypoints[1, 1, :, 2] == 0)  # v = 0 -> 0
    np.testing.assert_allclose(vk.boxes[1, 0], [40, 60, 60, 140])  # [x, y, w, h] -> corners
    np.testing.assert_allclose(vk.scores[1], [0.9, 0.3], atol=1e-6)


def test_coco_results_confidences_pass_through_with_a_mapping():
    results = [_coco_entry("img_b", 10, 0.37), _coco_entry("img_a", 20, 0.52, score=0.8)]
    vk = parse_coco_results(results, source="r.json", image_to_frame={"img_a": 0, "img_b": 7})
    assert vk.frame_indices.tolist() == [0, 7]
    np.testing.assert_allclose(vk.keypoints[0, 0, :, 2], 0.52, atol=1e-6)
    np.testing.assert_allclose(vk.keypoints[1, 0, :, 2], 0.37, atol=1e-6)
    with pytest.raises(KeypointsFormatError, match=r"r\.json: image_id 'img_b' is not in image_to_frame"):
        parse_coco_results(results, source="r.json", image_to_frame={"img_a": 0})
    identity = parse_coco_results([_coco_entry(4, 10, 0.5)], source="r.json", image_to_frame="identity")
    assert identity.frame_indices.tolist() == [4]


def test_coco_results_errors_name_the_file(tmp_path):
    entry = _coco_entry(1, 10, 2)
    entry["keypoints"] = entry["keypoints"][:-3]
    path = _write_json(tmp_path / "short.json", [entry])
    expected = r"short\.json: result 0 \(image 1\): wrong number of keypoint values 48"
    with pytest.raises(KeypointsFormatError, match=expected):
        read_coco_results(path)
    negative = _coco_entry(1, 10, 0.5)
    negative["keypoints"][5] = -2
    expected = r"neg\.json: result 0 \(image 1\): negative confidence -2.0 at keypoint 1"
    with pytest.raises(KeypointsFormatError, match=expected):
        read_coco_results(_write_json(tmp_path / "neg.json", [negative]))
    with pytest.raises(KeypointsFormatError, match=r"obj\.json: unknown keypoint format"):
        read_keypoints(_write_json(tmp_path / "obj.json", {"hello": 1}))


# ----------------------------------------------------------------------------- operator


@pytest.fixture()
def memory_root():
    root = f"memory://kp-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root.removeprefix("memory://")):
        fs.rm(root.removeprefix("memory://"), recursive=True)


def _put(url: str, document) -> None:
    with fsspec.open(url, "w") as handle:
        handle.write(json.dumps(document))


def test_operator_reads_good_items_and_fails_missing_and_malformed(memory_root):
    # Synthetic corpus layout: clip key <id>_<start>_<end>, file keypoints/<id>.json.
    synthetic = VideoKeypoints.from_frames(
        [[_person(30, 40)], [], [_person(32, 40)]], width=320, height=240, fps=30, video_frames=4
    )
    _put(f"{memory_root}/kp/yt_ABC-1.json", synthetic.to_json())
    for frame in (0, 2):
        document = {"people": [{"pose_keypoints_2d": _openpose_person(BODY25, frame)}]}
        _put(f"{memory_root}/kp/walk/walk_{frame:012d}_keypoints.json", document)
    _put(f"{memory_root}/kp/broken.json", {"frames": [{"frame": 0, "people": [{"keypoints": [[1, 2, 3]]}]}]})
    batch = {
        "key": ["yt_ABC-1_000010_000020", "walk", "absent", "broken", "earlier"],
        "uri": ["v/yt_ABC-1_000010_000020.mp4", "v/walk.mp4", "v/absent.mp4", "v/broken.mp4", "v/earlier.mp4"],
        "status": ["pending", "pending", "pending", "pending", "failed"],
        "reason": [None, None, None, None, "decode failed"],
    }
    op = PrecomputedKeypoints(root=f"{memory_root}/kp")
    op = pickle.loads(pickle.dumps(op))  # engines ship operators to workers
    op.setup()
    out = op(batch)
    assert out["status"] == ["pending", "pending", "failed", "failed", "failed"]
    assert out["reason"][0] is None and out["reason"][4] == "decode failed"
    assert "absent" in out["reason"][2] and "no keypoint file found" in out["reason"][2]
    assert "broken.json" in out["reason"][3] and "expected 17 keypoints" in out["reason"][3]
    assert out["keypoints"][0].shape == (4, 1, 17, 3)  # dense to num_frames = 4
    assert out["person_mask"][0][:, 0].tolist() == [True, False, True, False]
    np.testing.assert_allclose(out["keypoints"][0][2, 0], _person(32, 40), atol=1e-4)
    assert out["keypoint_width"].tolist()[:2] == [320, 0] and out["keypoint_fps"][0] == 30
    assert out["keypoints_uri"][0].endswith("kp/yt_ABC-1.json")
    assert out["keypoints"][1].shape == (3, 1, 17, 3) and out["person_mask"][1][:, 0].tolist() == [True, False, True]
    assert out["keypoints"][2].shape == (0, 0, 17, 3) and out["boxes"][3].shape == (0, 0, 4)
    assert out["key"] == batch["key"]  # input columns pass through


def test_operator_uses_an_explicit_keypoints_uri_and_flat_openpose_files(tmp_path):
    flat = tmp_path / "openpose"
    for frame in (0, 1):
        document = {"people": [{"pose_keypoints_2d": _openpose_person(COCO18, frame)}]}
        _write_json(flat / f"clip7_{frame:012d}_keypoints.json", document)
    _write_json(flat / "clip70_000000000000_keypoints.json", {"people": []})  # a different video
    coco = _write_json(tmp_path / "elsewhere" / "results.json", [_coco_entry(0, 10, 2)])
    op = PrecomputedKeypoints(root=str(flat), format="auto")
    out = op({"key": ["clip7", "other"], "uri": ["a/clip7.mp4", "b/other.mp4"], "keypoints_uri": [None, coco]})
    assert out["status"] == ["pending", "pending"]
    assert out["keypoints"][0].shape == (2, 1, 17, 3)
    assert out["keypoints"][1].shape == (1, 1, 17, 3)
    with pytest.raises(ValueError, match="format"):
        PrecomputedKeypoints(root=str(flat), format="yaml")


# ----------------------------------------------------------------------------- decoded frames, frame bounds


def test_at_frames_picks_source_frames_and_leaves_unlisted_ones_empty():
    a, b = _person(10, 50), _person(20, 50)
    vk = VideoKeypoints.from_frames([[a], [a, b], [b]], frame_indices=[2, 5, 9], fps=30, video_frames=12)
    picked = vk.at_frames([5, 6, 9, 15])
    assert picked.frame_indices.tolist() == [5, 6, 9, 15] and picked.video_frames == 16
    assert picked.person_mask.tolist() == [[True, True], [False, False], [True, False], [False, False]]
    np.testing.assert_array_equal(picked.keypoints[2, 0], vk.keypoints[2, 0])
    np.testing.assert_array_equal(picked.boxes[0], vk.boxes[1])
    with pytest.raises(ValueError, match="strictly increasing"):
        vk.at_frames([3, 3])


def test_keypoints_far_outside_the_frame_become_undetected():
    from labelmill.operators.pose3d.keypoints_format import OUTSIDE_FRAME_TOLERANCE, undetect_outside_frame

    inside, gone = _person(100, 100), _person(100, 100)
    inside[0, 0] = -0.1 * 320 + 1  # within the tolerance: kept
    inside[1, 0], inside[2, 0], inside[3, 1] = -500.0, 1e7, 240 * (1 + OUTSIDE_FRAME_TOLERANCE) + 1
    gone[:, 0] = -500.0
    vk = VideoKeypoints.from_frames([[inside, gone]], boxes=[[[-500, 0, 1e7, 200], [-600, 0, -400, 50]]])
    out, count = undetect_outside_frame(vk, 320, 240)
    assert count == 3 + 17
    assert out.keypoints[0, 0, 1:4].tolist() == [[0.0, 0.0, 0.0]] * 3
    assert out.keypoints[0, 0, 0, 2] > 0 and out.keypoints[0, 0, 4:, 2].min() > 0
    assert out.person_mask.tolist() == [[True, False]] and out.scores[0, 1] == 0
    np.testing.assert_allclose(out.boxes[0, 0], [-32, 0, 352, 200])
    same, none = undetect_outside_frame(VideoKeypoints.from_frames([[_person(100, 100)]]), 320, 240)
    assert none == 0 and np.array_equal(same.keypoints[0, 0], _person(100, 100))
    assert undetect_outside_frame(vk, None, 240) == (vk, 0)  # no frame size: nothing to judge by


def test_non_finite_keypoints_are_read_as_undetected(tmp_path):
    document = VideoKeypoints.from_frames([[_person(30, 40)]]).to_json()
    document["frames"][0]["people"][0]["keypoints"][4] = [float("nan"), 3.0, 0.9]
    document["frames"][0]["people"][0]["keypoints"][5] = [1.0, float("inf"), 0.9]
    document["frames"][0]["people"][0]["keypoints"][6] = [1.0, 2.0, float("nan")]
    vk = read_keypoints(_write_json(tmp_path / "nan.json", document))  # json writes NaN / Infinity
    assert vk.keypoints[0, 0, 4:7].tolist() == [[0.0, 0.0, 0.0]] * 3 and vk.keypoints[0, 0, 7, 2] > 0
    values = _openpose_person(BODY25, 0)
    values[3 * 7] = float("nan")  # LWrist x
    _write_json(tmp_path / "op" / "v_000000000000_keypoints.json", {"people": [{"pose_keypoints_2d": values}]})
    openpose = read_openpose(str(tmp_path / "op"))
    assert openpose.keypoints[0, 0, COCO17_NAMES.index("left_wrist")].tolist() == [0.0, 0.0, 0.0]
    entry = _coco_entry(1, 10, 0.5)
    entry["keypoints"][0] = float("inf")
    coco = parse_coco_results([entry], source="c.json", confidence="confidence")
    assert coco.keypoints[0, 0, 0].tolist() == [0.0, 0.0, 0.0] and coco.keypoints[0, 0, 1, 2] == 0.5


def test_operator_cuts_keypoints_to_the_decoded_frames_and_frame(memory_root):
    people = [[_person(100 + t, 100)] for t in range(10)]
    people[3][0][0, 0] = -500.0  # far left of a 320-pixel frame
    _put(f"{memory_root}/kp/clip.json", VideoKeypoints.from_frames(people, width=320, height=240, fps=30).to_json())
    batch = {
        "key": ["clip", "clip", "clip", "clip"],
        "uri": ["v/clip.mp4"] * 4,
        "frame_indices": [[3, 6, 9], None, [10, 11], []],  # a range at 10 fps; no decode; past the file; none
        "original_width": np.array([320, 0, 320, 320], np.int32),
        "original_height": np.array([240, 0, 240, 240], np.int32),
    }
    out = PrecomputedKeypoints(root=f"{memory_root}/kp")(batch)
    assert out["status"] == ["pending", "pending", "failed", "failed"]
    assert out["keypoints"][0].shape == (3, 1, 17, 3)
    for row, frame in enumerate((3, 6, 9)):
        np.testing.assert_allclose(out["keypoints"][0][row, 0, 1:], people[frame][0][1:], atol=1e-4)
    assert out["keypoints"][0][0, 0, 0].tolist() == [0.0, 0.0, 0.0]  # outside the decoded frame
    assert out["keypoints"][1].shape == (10, 1, 17, 3)  # dense without frame_indices
    assert out["keypoints"][1][3, 0, 0, 2] == 0  # the file's own width judged it
    assert "covers source frames 0..9 but the decoded frames are 10..11" in out["reason"][2]
    assert "no decoded frames" in out["reason"][3]
