"""labelmill export --format npz: one pickle-free npz per video that round-trips the samples."""

import json

import numpy as np
import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra.config import load_config
from labelmill.infra.formats.shards import decode_npz
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import write_synthetic_corpus
from labelmill.pipelines.config import Pose3dConfig
from labelmill.pipelines.pose3d import run_pose3d


@pytest.fixture(scope="module")
def pose_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_pose")
    write_synthetic_corpus(str(root / "corpus"), SynthConfig(num_videos=2, num_frames=8, seed=4, width=160, height=120))
    cfg = load_config(Pose3dConfig, None, ["keypoints.backend=precomputed", "fit.solver.max_iter=10"])
    run_pose3d(cfg, input_url=str(root / "corpus" / "manifest.csv"), output_url=str(root / "out"), engine_name="local")
    return root / "out"


def test_npz_per_video_round_trips_every_sample(pose_out, tmp_path, capsys):
    from labelmill.pipelines.cli import main

    out = tmp_path / "npz"
    assert main(["-q", "export", str(pose_out), "--format", "npz", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    samples = {}
    for _, key, members in dv.iter_shard_samples(dv.resolve_version(str(pose_out)).url):
        doc = json.loads(members["json"][1])
        samples.setdefault(doc["input_key"], []).append((doc, decode_npz(members["smpl.npz"][1])))
    assert summary["videos"] == len(samples) > 0 and summary["frames"] == sum(map(len, samples.values()))
    for video, frames in samples.items():
        frames.sort(key=lambda f: f[0]["frame"])
        with np.load(out / f"{video}.npz", allow_pickle=False) as z:
            assert z["frame"].tolist() == [d["frame"] for d, _ in frames]
            assert np.allclose(z["frame_loss"], [d["frame_loss"] for d, _ in frames])
            for name in frames[0][1]:
                assert z[name].shape == (len(frames), *frames[0][1][name].shape)
                assert np.array_equal(z[name], np.stack([a[name] for _, a in frames])), name
            meta = json.loads(str(z["metadata"]))
            assert meta["input_key"] == video and meta["num_frames"] == len(frames) and meta["schema"] == "pose3d"


def test_export_refuses_what_it_cannot_write(pose_out, tmp_path, capsys):
    from labelmill.operators.synth.segmentation import SegmentationSynthConfig, write_segmentation_corpus
    from labelmill.pipelines.cli import main
    from labelmill.pipelines.config import SegmentationConfig
    from labelmill.pipelines.segmentation import run_segmentation

    assert main(["-q", "export", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    write_segmentation_corpus(str(tmp_path / "seg"), SegmentationSynthConfig(num_images=2, seed=0))
    run_segmentation(load_config(SegmentationConfig, None, ["stuff.enabled=false"]),
                     input_url=str(tmp_path / "seg" / "annotations.json"), output_url=str(tmp_path / "segout"),
                     images=str(tmp_path / "seg" / "images"), engine_name="local")
    assert main(["-q", "export", str(tmp_path / "segout"), "--out", str(tmp_path / "o")]) == 2
    assert "export writes pose3d versions" in capsys.readouterr().err
