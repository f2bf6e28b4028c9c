"""The synthetic ground-truth world: motions, camera, detector noise, rendering, corpus, CLI."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from labelmill.models.body_model import BodyModel
from labelmill.operators.synth.camera import project
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import MANIFEST_HEADER, npz_bytes, write_synthetic_corpus
from labelmill.operators.synth.motion import MOTION_NAMES, make_motion_clip, sample_poses
from labelmill.operators.synth.rig import JOINT_LIMITS, joint_limit_violations, within_joint_limits
from labelmill.pipelines.cli import main

# Noisier than the defaults so that every noise path (drops, low confidence, outliers, misses,
# distractors) shows up in a few short videos.
NOISY = dict(
    num_videos=2,
    num_frames=24,
    max_people=3,
    drop_prob=0.1,
    low_conf_prob=0.15,
    outlier_frame_prob=0.15,
    miss_prob=0.05,
    distractor_presence=0.8,
)


def _tree_digest(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def body_model() -> BodyModel:
    return BodyModel()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, body_model) -> tuple[Path, SynthConfig]:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    cfg = SynthConfig(seed=7, **NOISY)
    write_synthetic_corpus(str(out), cfg, body_model=body_model)
    return out, cfg


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == MANIFEST_HEADER
        return list(reader)


def test_manifest_parses_and_matches_files(corpus):
    root, cfg = corpus
    rows = _manifest(root)
    assert len(rows) == cfg.num_videos
    videos = sorted(p.name for p in (root / "videos").iterdir())
    expected = sorted(f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}.mp4" for r in rows)
    assert videos == expected
    for row in rows:
        assert re.fullmatch(r"[A-Za-z0-9_-]{11}", row["youtube_id"])
        assert int(row["time_end"]) - int(row["time_start"]) == -(-cfg.num_frames // cfg.fps)
        assert row["label"] in MOTION_NAMES
        assert row["split"] in ("train", "val", "test")
        assert (root / "keypoints" / f"{row['youtube_id']}.json").is_file()
        assert (root / "gt" / f"{row['youtube_id']}.npz").is_file()
        with np.load(root / "gt" / f"{row['youtube_id']}.npz", allow_pickle=False) as gt:
            assert str(gt["label"]) == row["label"]
    assert len({r["youtube_id"] for r in rows}) == len(rows)


def test_videos_decode_to_frame_count_and_size(corpus):
    root, cfg = corpus
    for path in sorted((root / "videos").glob("*.mp4")):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.average_rate == cfg.fps
            frames = [f for f in container.decode(video=0)]
        assert len(frames) == cfg.num_frames
        assert {(f.width, f.height) for f in frames} == {(cfg.width, cfg.height)}
        assert [f.pts for f in frames] == sorted(f.pts for f in frames)
        # The frame is not blank: a textured background with a figure.
        assert frames[0].to_ndarray(format="gray").std() > 5


def test_detections_are_projection_of_gt_plus_recorded_noise(corpus, body_model):
    root, _ = corpus
    checked = outliers = dropped = low = 0
    for row in _manifest(root):
        vid = row["youtube_id"]
        doc = json.loads((root / "keypoints" / f"{vid}.json").read_text())
        with np.load(root / "gt" / f"{vid}.npz", allow_pickle=False) as npz:
            gt = {k: npz[k] for k in npz.files}
        with torch.no_grad():
            out = body_model.joints_only(
                torch.as_tensor(gt["betas"][None], dtype=torch.float32),
                torch.as_tensor(gt["global_orient"], dtype=torch.float32),
                torch.as_tensor(gt["body_pose"], dtype=torch.float32),
            )
        reprojected = project(out.keypoints3d.double().numpy(), gt["camera"])
        np.testing.assert_allclose(reprojected, gt["keypoints2d"], atol=1e-3)
        np.testing.assert_allclose(out.keypoints3d.double().numpy(), gt["keypoints3d"], atol=1e-5)
        for t, frame in enumerate(doc["frames"]):
            assert frame["frame"] == t
            poi = int(gt["poi_index"][t])
            assert len(frame["people"]) == int(gt["num_people"][t])
            if poi < 0:
                assert not gt["detected"][t]
                continue
            kp = np.asarray(frame["people"][poi]["keypoints"])  # (17, 3)
            np.testing.assert_array_equal(kp, gt["keypoints2d_detected"][t])
            keep = ~gt["dropped"][t]
            assert np.all(kp[~keep] == 0.0)
            assert np.all((kp[keep, 2] > 0) & (kp[keep, 2] <= 1))
            expected = reprojected[t] + gt["noise2d"][t]
            err = np.abs(kp[keep, :2] - expected[keep]).max(initial=0.0)
            assert err < 1e-3, f"{vid} frame {t}: detected != projection + noise by {err} px"
            if gt["outlier_frame"][t]:
                outliers += 1
            else:  # ordinary noise is small next to the person's size
                height = gt["camera"][t, 0] * float(gt["stature"])
                scale = np.where(gt["low_confidence"][t][keep], 3.0, 1.0) * 0.012 * height
                assert np.all(np.abs(gt["noise2d"][t][keep]) < 6 * scale[:, None] + 1e-3)
            checked += int(keep.sum())
            dropped += int((~keep).sum())
            low += int((gt["low_confidence"][t] & keep).sum())
    assert checked > 500 and outliers > 0 and dropped > 0 and low > 0


def test_people_order_does_not_reveal_the_person_of_interest(corpus):
    root, _ = corpus
    positions = []
    for row in _manifest(root):
        with np.load(root / "gt" / f"{row['youtube_id']}.npz", allow_pickle=False) as gt:
            many = gt["num_people"] >= 2
            positions.extend(gt["poi_index"][many & (gt["poi_index"] >= 0)].tolist())
    assert len(positions) > 10
    assert len(set(positions)) >= 2  # the person of interest is not always first


def test_gt_schema(corpus):
    root, cfg = corpus
    vid = _manifest(root)[0]["youtube_id"]
    t = cfg.num_frames
    shapes = {
        "betas": (10,), "global_orient": (t, 3), "body_pose": (t, 69), "camera": (t, 3),
        "joints3d": (t, 24, 3), "keypoints3d": (t, 17, 3), "keypoints2d": (t, 17, 2),
        "noise2d": (t, 17, 2), "dropped": (t, 17), "outlier_frame": (t,), "poi_index": (t,),
    }  # fmt: skip
    with np.load(root / "gt" / f"{vid}.npz", allow_pickle=False) as gt:
        for key, shape in shapes.items():
            assert gt[key].shape == shape, key
        assert str(gt["video_id"]) == vid
        assert np.all(gt["camera"][:, 0] > 0)


def test_same_seed_same_bytes_and_video_independent_of_corpus_size(corpus, tmp_path, body_model):
    root, cfg = corpus
    again = tmp_path / "again"
    write_synthetic_corpus(str(again), cfg, body_model=body_model)
    assert _tree_digest(again) == _tree_digest(root)
    # Video 0 of a one-video corpus is video 0 of the two-video corpus.
    single = tmp_path / "single"
    write_synthetic_corpus(str(single), dataclasses.replace(cfg, num_videos=1), body_model=body_model)
    first = _manifest(root)[0]["youtube_id"]
    digest = _tree_digest(single)
    assert _manifest(single)[0]["youtube_id"] == first
    assert digest[f"gt/{first}.npz"] == _tree_digest(root)[f"gt/{first}.npz"]
    assert digest[f"keypoints/{first}.json"] == _tree_digest(root)[f"keypoints/{first}.json"]


def test_different_seeds_differ(corpus, tmp_path, body_model):
    root, cfg = corpus
    other = tmp_path / "other"
    write_synthetic_corpus(str(other), dataclasses.replace(cfg, seed=cfg.seed + 1, num_videos=1), body_model=body_model)
    row = _manifest(other)[0]
    assert row["youtube_id"] not in {r["youtube_id"] for r in _manifest(root)}
    with np.load(other / "gt" / f"{row['youtube_id']}.npz") as a, np.load(
        root / "gt" / f"{_manifest(root)[0]['youtube_id']}.npz"
    ) as b:
        assert not np.allclose(a["body_pose"], b["body_pose"])


@pytest.mark.parametrize("name", MOTION_NAMES)
def test_motions_within_joint_limits_and_smooth(name):
    fps = 30
    t = np.arange(150) / fps
    for seed in range(3):
        clip = make_motion_clip(np.random.default_rng(seed), t=t, motion_names=[name], blend_prob=0.5)
        assert clip.label == name
        assert within_joint_limits(clip.body_pose)
        # Bounded frame-to-frame change of every joint angle and of the global rotation.
        assert np.abs(np.diff(clip.body_pose, axis=0)).max() < 0.3
        rot = Rotation.from_rotvec(clip.global_orient)
        step = (rot[1:] * rot[:-1].inv()).magnitude()
        assert step.max() < 0.2
        assert np.all(clip.airborne >= 0) and clip.airborne.max() < 0.6
        speed = np.linalg.norm(np.diff(clip.travel, axis=0), axis=1) * fps
        assert speed.max() < 2.5  # m/s
        assert clip.body_pose.std(axis=0).max() > 0.02  # it moves


def test_sample_poses_deterministic_and_within_limits():
    poses = sample_poses(300, seed=3)
    assert poses.shape == (300, 69)
    np.testing.assert_array_equal(poses, sample_poses(300, seed=3))
    assert not np.allclose(poses, sample_poses(300, seed=4))
    assert not joint_limit_violations(poses).any()
    assert np.unique(poses.round(6), axis=0).shape[0] == 300


def test_joint_limits_table_is_mirrored():
    left = [1, 4, 7, 10, 13, 16, 18, 20, 22]  # l_hip .. l_hand, joint index - 1 below
    for j in left:
        lo_l, lo_r = JOINT_LIMITS[j - 1], JOINT_LIMITS[j]  # the right joint follows the left
        np.testing.assert_array_equal(lo_l[0], lo_r[0])
        np.testing.assert_array_equal(lo_l[1:], -lo_r[1:, ::-1])


def test_projection_convention():
    points = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 5.0]]])  # origin, +x (left), +y (up)
    camera = np.array([[100.0, 160.0, 120.0]])
    xy = project(points, camera)
    np.testing.assert_allclose(xy[0], [[160, 120], [260, 120], [160, 20]])
    torch_xy = project(torch.as_tensor(points), torch.as_tensor(camera))
    np.testing.assert_allclose(torch_xy.numpy(), xy)


def test_npz_bytes_deterministic_and_pickle_free():
    arrays = {"a": np.arange(5.0), "name": np.array("abc")}
    blob = npz_bytes(arrays)
    assert blob == npz_bytes(arrays)
    import io

    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["a"], arrays["a"])
        assert str(npz["name"]) == "abc"
    with pytest.raises(TypeError, match="object"):
        npz_bytes({"bad": np.array([{"x": 1}], dtype=object)})


@pytest.mark.parametrize(
    "kwargs, field",
    [({"width": 321}, "width"), ({"motions": ["moonwalk"]}, "motions"), ({"drop_prob": 1.5}, "drop_prob"),
     ({"speed_min": 2.0, "speed_max": 1.0}, "speed_max"), ({"num_frames": 0}, "num_frames")],
)  # fmt: skip
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"synth.{field}"):
        SynthConfig(**kwargs)


def test_cli_synth_pose(tmp_path, capfd):
    out = tmp_path / "cli"
    argv = ["synth", "pose", "--videos", "1", "--frames", "6", "--seed", "5", "--people", "1", "--out", str(out)]
    assert main(argv + ["--set", "synth.width=160", "--set", "synth.height=120"]) == 0
    log = capfd.readouterr().err  # the CLI logs to stderr
    assert "frames/s" in log and str(out) in log
    row = _manifest(out)[0]
    with av.open(str(next((out / "videos").glob("*.mp4")))) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 6 and (frames[0].width, frames[0].height) == (160, 120)
    with np.load(out / "gt" / f"{row['youtube_id']}.npz") as gt:
        assert np.all(gt["num_people"] <= 1)
    assert main(["synth", "pose", "--out", str(tmp_path / "bad"), "--set", "synth.width=7"]) == 2
    assert main(["synth", "pose", "--out", str(tmp_path / "bad"), "--set", "nosuch.key=1"]) == 2
