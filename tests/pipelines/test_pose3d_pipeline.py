"""The pose3d pipeline end to end on the three engines (small synthetic corpus)."""

import hashlib
import json

import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.config import load_config
from labelmill.infra.dataset_version import read_inputs, read_latest
from labelmill.infra.validate import validate_version
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import write_synthetic_corpus
from labelmill.pipelines.config import Pose3dConfig
from labelmill.pipelines.pose3d import run_pose3d

OVERRIDES = ["keypoints.backend=precomputed", "fit.solver.max_iter=20"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_synthetic_corpus(str(root), SynthConfig(num_videos=3, num_frames=16, seed=3))
    # one broken input: a video that is not a video, and its keypoints file
    (root / "videos" / "brokenvideo_000001_000011.mp4").write_bytes(b"not a video at all")
    (root / "keypoints" / "brokenvideo.json").write_text((next((root / "keypoints").glob("*.json"))).read_text())
    with open(root / "manifest.csv", "a") as f:
        f.write("brokenvideo,1,11,wave,train\n")
    return root


def _digest(version_url):
    """sha256 of every shard, of the fit results fits.json names, and of the parquet files."""
    files = {url.rsplit("/", 1)[1]: url for url in dv.shard_urls(version_url)}
    root = version_url.rsplit("/", 2)[0]
    for where in json.loads(storage.read_text(storage.join(version_url, "fits.json"))).values():
        files.update({path.rsplit("/", 1)[1]: storage.join(root, path) for path in where.values()})
    files["index.parquet"] = storage.join(version_url, "index.parquet")
    files["inputs.parquet"] = storage.join(version_url, "inputs.parquet")
    return {name: hashlib.sha256(storage.read_bytes(url)).hexdigest() for name, url in files.items()}


def test_three_engines_write_identical_valid_datasets(corpus, tmp_path, ray_session):
    cfg = load_config(Pose3dConfig, None, OVERRIDES)
    digests, runs = {}, {}
    for engine in ("local", "ray", "beam"):
        out = str(tmp_path / engine)
        run = run_pose3d(cfg, input_url=str(corpus / "manifest.csv"), output_url=out, engine_name=engine)
        assert validate_version(out) == [], engine
        assert read_latest(out) == run.version_id
        digests[engine], runs[engine] = _digest(run.version_url), run
    assert digests["local"] == digests["ray"] == digests["beam"]
    assert any(name.endswith(".npz") for name in digests["local"])  # fits/ compared too
    stats = runs["local"].stats
    inputs = stats["inputs"]
    assert inputs["in"] == 4 == inputs["written"] + inputs["filtered"] + inputs["failed"]
    assert inputs["failed"] == 1 and inputs["written"] >= 1
    assert stats["frames"]["kept"] == stats["samples"] > 0
    assert set(stats["stages"]) == {"decode", "keypoints", "track", "init", "fit", "filter", "samples", "pack"}
    table = read_inputs(runs["local"].version_url).to_pylist()
    broken = [r for r in table if r["input_key"].startswith("brokenvideo")]
    assert broken and broken[0]["status"] == "failed" and "brokenvideo" in broken[0]["reason"]
    config_text = storage.read_text(storage.join(runs["local"].version_url, "config.yaml"))
    assert "# code: " in config_text and "# prior: embedded:" in config_text


def test_cli_run_prints_location_and_funnel(corpus, tmp_path, capsys):
    from labelmill.pipelines.cli import main

    out = tmp_path / "cli"
    args = ["-q", "run", "pose3d", "--input", str(corpus / "manifest.csv"), "--output", str(out)]
    for o in OVERRIDES:
        args += ["--set", o]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"dataset {out}/versions/" in printed and "inputs 4: written" in printed


def test_pipeline_accuracy_equals_operator_level_result(corpus, tmp_path):
    """The dataset's fits are the operators' fits (bit for bit), and eval pose3d measures them."""
    import numpy as np

    from labelmill.infra.corpus import read_corpus
    from labelmill.pipelines.pose3d import build_pose3d_pipeline
    from labelmill.pipelines.pose3d_eval import _read_samples, evaluate_pose3d

    cfg = load_config(Pose3dConfig, None, OVERRIDES)
    manifest = str(corpus / "manifest.csv")
    run = run_pose3d(cfg, input_url=manifest, output_url=str(tmp_path / "out"), engine_name="local")
    # operator level: the same operators called in sequence on one batch, no engine
    items = read_corpus(manifest).to_pylist()
    batch = {k: [row[k] for row in items] for k in items[0]}
    for stage in build_pose3d_pipeline(cfg, manifest).stages:
        stage.operator.setup()
        batch = stage.operator(batch)
    samples = _read_samples(run.version_url)
    compared = 0
    for i, key in enumerate(batch["key"]):
        for frame, arrays in samples.get(key, {}).items():
            assert np.array_equal(arrays["joints3d"], batch["joints3d"][i][frame])
            compared += 1
    assert compared == run.stats["samples"] > 0
    report = evaluate_pose3d(str(tmp_path / "out"), str(corpus / "gt"))
    kept, every = report["over_kept_frames"], report["over_all_frames"]
    assert report["frames"] == compared
    assert kept["final"]["mpjpe_mm"] < kept["init"]["mpjpe_mm"]
    # fits/ holds every fitted frame, kept or dropped: the "all frames" figures
    assert every["frames"] == run.stats["frames"]["fitted"] >= compared
    assert every["final"]["mpjpe_mm"] < every["init"]["mpjpe_mm"]
