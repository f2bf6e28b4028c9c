"""Live keypoint backends: BlazePose mapping, person boxes, ONNX decoding, the operator and the CLI."""

from __future__ import annotations

import argparse
import json
import pickle
import warnings

import numpy as np
import pytest

from labelmill.infra.config import ConfigError, load_config
from labelmill.models.coco import COCO17_NAMES
from labelmill.operators.common.decode import encode_jpeg
from labelmill.operators.pose3d.keypoints_backend import (
    DetectKeypoints,
    KeypointDetector,
    KeypointsConfig,
    Person,
    build_keypoints_operator,
    finish_people,
)
from labelmill.operators.pose3d.keypoints_mediapipe import BLAZEPOSE_NAMES, COCO17_FROM_BLAZEPOSE, blazepose_to_coco17
from labelmill.operators.pose3d.keypoints_onnx import (
    OnnxPoseDetector,
    crop_affine,
    decode_heatmaps,
    decode_simcc,
    input_to_image,
)
from labelmill.operators.pose3d.keypoints_precomputed import PrecomputedKeypoints, read_labelmill_keypoints
from labelmill.operators.pose3d.person_boxes import HogConfig, HogPersonDetector, non_max_suppression, pad_boxes

INPUT_W, INPUT_H = 48, 64
# Normalised value of a full-intensity channel (255) after RTMPose's mean/std, per channel.
PEAK = (255 - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])


# ----------------------------------------------------------------------------- BlazePose mapping


def test_coco17_from_blazepose_names_match():
    assert len(BLAZEPOSE_NAMES) == 33 and len(COCO17_FROM_BLAZEPOSE) == 17
    for coco_index, blaze_index in enumerate(COCO17_FROM_BLAZEPOSE):
        assert BLAZEPOSE_NAMES[blaze_index] == COCO17_NAMES[coco_index]
    assert COCO17_FROM_BLAZEPOSE == (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)


def test_blazepose_to_coco17_picks_rows():
    landmarks = np.arange(33 * 3, dtype=np.float32).reshape(33, 3)
    coco = blazepose_to_coco17(landmarks[None])[0]
    assert coco.shape == (17, 3)
    np.testing.assert_array_equal(coco[:, 0], np.array(COCO17_FROM_BLAZEPOSE) * 3)
    with pytest.raises(ValueError, match="33 BlazePose landmarks"):
        blazepose_to_coco17(np.zeros((17, 3)))


def test_blazepose_names_are_mediapipes_enum():
    mp_pose = pytest.importorskip("mediapipe.python.solutions.pose")
    assert tuple(m.name.lower() for m in sorted(mp_pose.PoseLandmark, key=int)) == BLAZEPOSE_NAMES


# ----------------------------------------------------------------------------- person boxes


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.5, 0.9, -0.2, 0.1])
    kept = non_max_suppression(boxes, scores, iou_threshold=0.5)
    assert kept.tolist() == [1, 2]  # 0 and 3 overlap box 1 by IoU > 0.5; negative scores still count
    assert non_max_suppression(boxes, scores, iou_threshold=0.5, max_count=1).tolist() == [1]
    assert non_max_suppression(boxes, scores, iou_threshold=1.0).tolist() == [1, 0, 3, 2]
    assert non_max_suppression(np.zeros((0, 4)), np.zeros(0), iou_threshold=0.5).shape == (0,)


def test_pad_boxes_grows_and_fixes_aspect():
    grown = pad_boxes(np.array([[10, 20, 30, 60]]), factor=1.5)
    np.testing.assert_allclose(grown, [[5, 10, 35, 70]])
    fixed = pad_boxes(np.array([[0, 0, 40, 40]]), factor=1.0, aspect_ratio=0.75)  # taller
    np.testing.assert_allclose(fixed, [[0, 20 - 40 / 0.75 / 2, 40, 20 + 40 / 0.75 / 2]])


def test_hog_finds_nobody_in_flat_images_and_validates():
    detector = HogPersonDetector(config=HogConfig(min_score=0.0))
    boxes, scores = detector.detect(np.full((200, 120, 3), 128, np.uint8))
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    boxes, _ = detector.detect(np.zeros((50, 40, 3), np.uint8))  # smaller than the HOG window
    assert boxes.shape == (0, 4)
    pickle.loads(pickle.dumps(detector))
    with pytest.raises(ValueError, match="win_stride"):
        HogConfig(win_stride=12)
    with pytest.raises(ValueError, match="nms_iou"):
        HogConfig(nms_iou=1.5)


# ----------------------------------------------------------------------------- tiny ONNX models


def _export(module, path, output_names):
    torch = pytest.importorskip("torch")
    dynamic = {name: {0: "batch"} for name in ["input", *output_names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, torch.zeros(1, 3, INPUT_H, INPUT_W), str(path), input_names=["input"],
            output_names=output_names, dynamic_axes=dynamic, opset_version=17, dynamo=False,
        )  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two ONNX models with RTMPose/ViTPose inputs; keypoint k follows the brightest pixel of channel k % 3."""
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    channel = torch.tensor([k % 3 for k in range(17)])

    class SimccNet(torch.nn.Module):
        def forward(self, x):  # (N, 3, H, W) -> simcc_x (N, 17, 2W), simcc_y (N, 17, 2H)
            ch = x[:, channel]
            return ch.amax(dim=2).repeat_interleave(2, dim=-1), ch.amax(dim=3).repeat_interleave(2, dim=-1)

    class HeatmapNet(torch.nn.Module):
        def forward(self, x):  # (N, 3, H, W) -> (N, 17, H/4, W/4): sum of the positive part per 4x4 cell
            return torch.nn.functional.avg_pool2d(torch.relu(x[:, channel]), 4) * 16

    folder = tmp_path_factory.mktemp("onnx")
    return {
        "simcc": _export(SimccNet(), folder / "simcc.onnx", ["simcc_x", "simcc_y"]),
        "heatmap": _export(HeatmapNet(), folder / "heatmap.onnx", ["heatmaps"]),
    }


def _dots(width, height, points):
    """Black RGB image with a full-intensity dot of channel c at each (x, y) pixel index in points[c]."""
    image = np.zeros((height, width, 3), np.uint8)
    for c, (x, y) in enumerate(points):
        image[y, x, c] = 255
    return image


def _onnx_detector(path, **options):
    detector = OnnxPoseDetector(model_path=path, **options)
    detector.setup()
    return detector


def test_simcc_decoding_is_exact_on_the_whole_frame(tiny_models):
    detector = _onnx_detector(tiny_models["simcc"])
    assert detector.input_size == (INPUT_W, INPUT_H)
    dots = [(10, 20), (30, 50), (5, 7)]
    people = detector.detect([_dots(INPUT_W, INPUT_H, dots)])[0]
    assert len(people) == 1
    keypoints = people[0].keypoints
    for k in range(17):
        x, y = dots[k % 3]
        np.testing.assert_allclose(keypoints[k, :2], [x + 0.5, y + 0.5])  # pixel centres, corner at 0
        assert keypoints[k, 2] == pytest.approx(PEAK[k % 3], rel=1e-5)  # min of the two maxima
    np.testing.assert_allclose(people[0].bbox, [5.5, 7.5, 30.5, 50.5])  # extent: no person detector


class _FixedBoxes:
    def __init__(self, boxes):
        self.boxes = np.asarray(boxes, np.float32)

    def detect(self, image):
        return self.boxes, np.ones(len(self.boxes), np.float32)


def test_simcc_decoding_maps_crops_back_through_the_affine(tiny_models):
    # Two people: a box of the model's size (a shift) and one twice as large (scale 1/2).
    boxes = [[40, 30, 40 + INPUT_W, 30 + INPUT_H], [100, 10, 100 + 2 * INPUT_W, 10 + 2 * INPUT_H]]
    detector = _onnx_detector(tiny_models["simcc"], person_detector=_FixedBoxes(boxes), box_padding=1.0)
    image = np.zeros((160, 220, 3), np.uint8)
    image[50, 60] = 255  # inside the first box: a single white pixel
    image[40:42, 150:152] = 255  # inside the second: a 2x2 block, one input pixel after halving
    people = detector.detect([image])[0]
    assert len(people) == 2
    by_x = sorted(people, key=lambda p: p.keypoints[0, 0])
    np.testing.assert_allclose(by_x[0].keypoints[:, :2], np.tile([60.5, 50.5], (17, 1)))
    np.testing.assert_allclose(by_x[1].keypoints[:, :2], np.tile([151.0, 41.0], (17, 1)))
    np.testing.assert_allclose(by_x[0].bbox, boxes[0])  # the person detector's box is kept


def test_heatmap_decoding_with_quarter_offset(tiny_models):
    detector = _onnx_detector(tiny_models["heatmap"], decoder="heatmap")
    image = np.zeros((INPUT_H, INPUT_W, 3), np.uint8)
    image[21, 13, 0] = 255  # red: cell (5, 3), equal neighbours -> no shift
    image[9, 35, 1] = 255  # green: cell (2, 8) ...
    image[9, 36, 1] = 128  # ... with a weaker right neighbour cell (2, 9) -> +0.25 cell in x
    image[45, 4, 2] = 255  # blue: cell (11, 1)
    keypoints = detector.detect([image])[0][0].keypoints
    expected = {0: (12.5, 20.5), 1: (33.5, 8.5), 2: (4.5, 44.5)}  # cell * 4 (+ 1 for the offset) + 0.5
    for k in range(17):
        np.testing.assert_allclose(keypoints[k, :2], expected[k % 3])
    assert keypoints[0, 2] == pytest.approx(PEAK[0], rel=1e-5)


def test_decoders_and_affine_kernels():
    simcc_x = np.zeros((1, 2, 8), np.float32)
    simcc_y = np.zeros((1, 2, 6), np.float32)
    simcc_x[0, 0, 5], simcc_y[0, 0, 3] = 0.8, 0.6
    simcc_x[0, 1, 1], simcc_y[0, 1, 2] = -1.0, -1.0
    out_min = decode_simcc(simcc_x, simcc_y, split_ratio=2.0, confidence="min")
    out_mean = decode_simcc(simcc_x, simcc_y, split_ratio=2.0, confidence="mean")
    np.testing.assert_allclose(out_min[0, 0], [2.5, 1.5, 0.6])
    assert out_mean[0, 0, 2] == pytest.approx(0.7)
    assert out_min[0, 1, 2] == 0.0  # a negative maximum is clipped to 0
    heat = np.zeros((1, 1, 4, 4), np.float32)
    heat[0, 0, 0, 3] = 1.0  # at the border: no neighbour on one side, no shift
    np.testing.assert_allclose(decode_heatmaps(heat, input_size=(16, 16))[0, 0], [12.0, 0.0, 1.0])
    affine = crop_affine(np.array([[10.0, 20.0, 30.0, 60.0]]), input_size=(20, 40), padding=1.0)
    np.testing.assert_allclose(affine[0], [[1, 0, -10], [0, 1, -20]])
    np.testing.assert_allclose(input_to_image(np.array([[[0.0, 0.0]]]), affine), [[[10.5, 20.5]]])


def test_onnx_detector_errors(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        _onnx_detector(str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError, match="SimCC decoding needs two outputs"):
        _onnx_detector(tiny_models["heatmap"], decoder="simcc")
    with pytest.raises(ValueError, match="onnx_input_size"):
        _onnx_detector(tiny_models["simcc"], input_size=(64, 64))
    detector = _onnx_detector(tiny_models["simcc"])
    clone = pickle.loads(pickle.dumps(detector))  # the session is rebuilt on first use
    assert len(clone.detect([_dots(INPUT_W, INPUT_H, [(1, 1), (2, 2), (3, 3)])])[0]) == 1


# ----------------------------------------------------------------------------- config


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="onnx_path is required"):
        KeypointsConfig(backend="onnx")
    with pytest.raises(ValueError, match="mediapipe_model_complexity"):
        KeypointsConfig(mediapipe_model_complexity=2)
    with pytest.raises(ValueError, match="max_people"):
        KeypointsConfig(max_people=0)
    with pytest.raises(ValueError, match="onnx_input_size"):
        KeypointsConfig(onnx_input_size=(192,))
    with pytest.raises(ValueError, match="precomputed_root"):  # checked when the operator is built
        build_keypoints_operator(KeypointsConfig(backend="precomputed"))
    with pytest.raises(ValueError, match="hog_win_stride"):
        KeypointsConfig(hog_win_stride=12)
    cfg = load_config(KeypointsConfig, None, ["onnx_input_size=[192, 256]", "backend=onnx", "onnx_path=m.onnx"])
    assert cfg.onnx_input_size == (192, 256)
    with pytest.raises(ConfigError, match="person_detector"):
        load_config(KeypointsConfig, None, ["person_detector=yolo"])


def test_build_keypoints_operator_picks_the_backend(tmp_path):
    assert isinstance(build_keypoints_operator(KeypointsConfig()), DetectKeypoints)
    reader = build_keypoints_operator(KeypointsConfig(backend="precomputed", precomputed_root=str(tmp_path)))
    assert isinstance(reader, PrecomputedKeypoints)
    with pytest.raises(ValueError, match="build_keypoints_operator"):
        DetectKeypoints(config=KeypointsConfig(backend="precomputed", precomputed_root=str(tmp_path)))


def test_finish_people_filters_and_dedupes():
    person = np.zeros((17, 3), np.float32)
    person[:, 0] = np.linspace(10, 50, 17)
    person[:, 1] = np.linspace(20, 90, 17)
    person[:, 2] = 0.9
    person[3, 2] = 0.01  # below min_keypoint_confidence
    outside = person.copy()
    outside[16, :2] = (500.0, 20.0)  # outside the 100 x 100 frame
    copy = person.copy()
    copy[:, 2] = np.where(person[:, 2] > 0.5, 0.6, person[:, 2])  # a duplicate of the first, less confident
    faint = person.copy()
    faint[:, 0] += 40
    faint[:, 2] = 0.05  # mean score 0.05 < min_pose_score
    people = finish_people(
        np.stack([outside, copy, faint]), None, min_keypoint_confidence=0.05, min_pose_score=0.1,
        duplicate_iou=0.7, max_people=4, frame_size=(100, 100),
    )  # fmt: skip
    assert len(people) == 1
    kept = people[0].keypoints
    assert kept[3, 2] == 0 and tuple(kept[3, :2]) == (0, 0)
    assert kept[16, 2] == 0  # dropped: outside the frame
    assert people[0].score == pytest.approx(0.9 * 15 / 17)
    np.testing.assert_allclose(people[0].bbox, [10, 20, person[15, 0], person[15, 1]])


# ----------------------------------------------------------------------------- operator


class FakeDetector(KeypointDetector):
    """One person per frame whose nose sits at the frame's mean brightness (x) and 20 (y); stored pixels."""

    def __init__(self):
        self.resets = 0
        self.ready = False

    def setup(self):
        self.ready = True

    def reset(self):
        self.resets += 1

    def detect(self, frames):
        out = []
        for frame in frames:
            keypoints = np.zeros((17, 3), np.float32)
            keypoints[:, 0] = round(float(frame.mean()) / 10) * 10
            keypoints[:, 1] = 20
            keypoints[:, 2] = 0.5
            keypoints[1, 2] = 0.0
            keypoints[1, :2] = 0.0
            out.append([Person(keypoints=keypoints, bbox=np.array([4, 6, 8, 10], np.float32), score=0.5)])
        return out


def _batch(items):
    return {
        "key": [k for k, _ in items],
        "frames_jpeg": [frames for _, frames in items],
        "frame_times": [[i / 10 for i in range(len(frames))] for _, frames in items],
        "scale_x": np.array([0.5] * len(items)),
        "scale_y": np.array([0.25] * len(items)),
        "original_width": np.array([128] * len(items), np.int32),
        "original_height": np.array([256] * len(items), np.int32),
        "status": ["pending"] * (len(items) - 1) + ["failed"],
        "reason": [None] * (len(items) - 1) + ["decode failed earlier"],
    }


def test_operator_adds_columns_in_original_pixels_and_marks_failures(caplog):
    frames = [encode_jpeg(np.full((64, 64, 3), value, np.uint8), 95) for value in (40, 80, 120)]
    batch = _batch([("good", frames), ("corrupt", [frames[0], b"not a jpeg"]), ("empty", []), ("earlier", frames)])
    detector = FakeDetector()
    op = DetectKeypoints(config=KeypointsConfig(batch_size=2), detector=detector)
    op.setup()
    with caplog.at_level("INFO", logger="labelmill.operators.pose3d.keypoints_backend"):
        out = op(batch)
    assert "3 frames of 4 items" in caplog.text and "frames/s" in caplog.text
    assert detector.ready and detector.resets >= 1
    assert out["status"] == ["pending", "failed", "failed", "failed"]
    assert "item corrupt" in out["reason"][1] and "not a readable JPEG" in out["reason"][1]
    assert "no decoded frames" in out["reason"][2]
    assert out["reason"][3] == "decode failed earlier"
    keypoints = out["keypoints"][0]
    assert keypoints.shape == (3, 1, 17, 3) and keypoints.dtype == np.float32
    np.testing.assert_allclose(keypoints[:, 0, 0, 0], [80, 160, 240])  # x / scale_x
    np.testing.assert_allclose(keypoints[:, 0, 0, 1], 80)  # y / scale_y
    assert (keypoints[:, 0, 1] == 0).all()  # undetected stays zero
    np.testing.assert_allclose(out["boxes"][0][0, 0], [8, 24, 16, 40])
    assert out["person_mask"][0].shape == (3, 1) and out["person_mask"][0].all()
    np.testing.assert_allclose(out["scores"][0], 0.5)
    assert out["keypoint_fps"][0] == pytest.approx(10.0) and np.isnan(out["keypoint_fps"][1])
    assert out["keypoint_width"].tolist() == [128, 0, 0, 0] and out["keypoint_height"][0] == 256
    assert out["keypoints"][1].shape == (0, 0, 17, 3) and out["keypoints_uri"] == [None] * 4
    assert out["frame_times"] is batch["frame_times"]  # input columns pass through
    assert op.resources["num_gpus"] == 0
    pickle.loads(pickle.dumps(op))


def test_operator_needs_frames_column():
    op = DetectKeypoints(detector=FakeDetector())
    with pytest.raises(ValueError, match="frames_jpeg"):
        op({"key": ["a"]})


def test_operator_runs_the_onnx_backend(tiny_models):
    config = KeypointsConfig(backend="onnx", onnx_path=tiny_models["simcc"], onnx_provider="cpu")
    op = DetectKeypoints(config=config)
    image = np.zeros((INPUT_H * 2, INPUT_W * 2, 3), np.uint8)
    image[29:33, 19:23] = 255  # a white 4x4 square centred on (21, 31); survives JPEG and halving
    frames = [encode_jpeg(image, 95)]
    out = op(
        {"key": ["k"], "frames_jpeg": [frames], "scale_x": [1.0], "scale_y": [1.0],
         "original_width": [INPUT_W * 2], "original_height": [INPUT_H * 2]}
    )  # fmt: skip
    assert out["status"] == ["pending"]
    nose = out["keypoints"][0][0, 0, 0]
    assert abs(nose[0] - 21.0) <= 2 and abs(nose[1] - 31.0) <= 2  # JPEG blurs the dot a little


# ----------------------------------------------------------------------------- CLI


def _run_cli(argv):
    """``labelmill keypoints ...`` through the real CLI once registered, else through a tiny harness."""
    from labelmill.pipelines import cli

    if "keypoints" in cli.COMMAND_MODULES:
        return cli.main(argv)
    from labelmill.pipelines.commands import keypoints

    parser = argparse.ArgumentParser(prog="labelmill")
    keypoints.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, cli.UsageError):
        return 2


# Three coloured 6x6 squares moving right by 4 pixels a frame; centres at frame 0 (x, y), by channel.
_SQUARES = ((23.0, 33.0), (43.0, 83.0), (33.0, 113.0))


def _write_dot_video(path, frames=6):
    from labelmill.operators.synth.render import Mp4Writer

    with Mp4Writer(width=96, height=128, fps=10, crf=10) as writer:
        for t in range(frames):
            image = np.zeros((128, 96, 3), np.uint8)
            for channel, (x, y) in enumerate(_SQUARES):
                x0, y0 = int(x) - 3 + 4 * t, int(y) - 3
                image[y0 : y0 + 6, x0 : x0 + 6, 2 - channel] = 255  # BGR frames
            writer.write(image)
        data = writer.close()
    path.write_bytes(data)
    return str(path)


def test_cli_writes_keypoints_json_and_overlay(tiny_models, tmp_path):
    video = _write_dot_video(tmp_path / "dots clip.mp4")
    out, overlay = tmp_path / "kp.json", tmp_path / "overlay"
    code = _run_cli(
        ["keypoints", video, "--out", str(out), "--backend", "onnx", "--onnx-model", tiny_models["simcc"],
         "--overlay", str(overlay), "--set", "keypoints.max_people=1", "--set", "tracking.max_gap=3", "--fps", "5"]
    )  # fmt: skip
    assert code == 0
    vk = read_labelmill_keypoints(str(out))
    assert vk.video == "dots_clip" and vk.fps == pytest.approx(10.0) and (vk.width, vk.height) == (96, 128)
    assert vk.frame_indices.tolist() == [0, 2, 4]  # 10 fps resampled to 5 fps
    assert vk.person_mask.all() and vk.max_people == 1
    for k in range(17):
        x, y = _SQUARES[k % 3]
        np.testing.assert_allclose(vk.keypoints[:, 0, k, 0], x + 4 * vk.frame_indices, atol=2.0)
        np.testing.assert_allclose(vk.keypoints[:, 0, k, 1], y, atol=2.0)
    document = json.loads(out.read_text())
    assert document["main_track"] == 0
    assert [p["track_id"] for f in document["frames"] for p in f["people"]] == [0, 0, 0]
    assert sorted(p.name for p in overlay.iterdir()) == ["frame_000000.png", "frame_000002.png", "frame_000004.png"]


def test_cli_rejects_bad_configuration(tmp_path):
    video = _write_dot_video(tmp_path / "v.mp4", frames=2)
    assert _run_cli(["keypoints", video, "--out", str(tmp_path / "kp.json"), "--backend", "onnx"]) == 2
    assert _run_cli(["keypoints", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "kp.json")]) == 2
    assert not (tmp_path / "kp.json").exists()


# ----------------------------------------------------------------------------- MediaPipe (fast checks)


def test_mediapipe_detector_on_an_empty_frame():
    pytest.importorskip("mediapipe")
    from labelmill.operators.pose3d.keypoints_mediapipe import MediaPipePoseDetector

    detector = MediaPipePoseDetector.from_config(KeypointsConfig())
    detector.setup()
    assert detector.detect([np.zeros((120, 160, 3), np.uint8)]) == [[]]
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.detect([np.full((120, 160, 3), 90, np.uint8)]) == [[]]
    detector.close()
    clone.close()
