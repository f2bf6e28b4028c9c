"""Work-unit backbone: content-keyed stage results make reruns, resumes and regenerations cheap.

Each case counts per stage what was computed and what was reused (stats.json) and compares the
bytes of the shards with those of a full run.
"""

import hashlib
import shutil

import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.config import load_config
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import write_synthetic_corpus
from labelmill.pipelines.config import Pose3dConfig
from labelmill.pipelines.pose3d import run_pose3d

OVERRIDES = ["keypoints.backend=precomputed", "fit.solver.max_iter=15"]
STAGES = ("decode", "keypoints", "track", "init", "fit", "filter", "samples")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_synthetic_corpus(str(root), SynthConfig(num_videos=4, num_frames=12, seed=5))
    return root


def _run(corpus_dir, out, *extra, full=False):
    cfg = load_config(Pose3dConfig, None, [*OVERRIDES, *extra])
    return run_pose3d(cfg, input_url=str(corpus_dir / "manifest.csv"), output_url=str(out), engine_name="local",
                      full=full)


def _work(run):
    return {name: (s["computed"], s["reused"]) for name, s in run.stats["stages"].items() if name in STAGES}


def _shard_digests(run):
    return [hashlib.sha256(storage.read_bytes(u)).hexdigest() for u in dv.shard_urls(run.version_url)]


def test_rerun_with_nothing_changed_is_up_to_date_and_writes_nothing(corpus, tmp_path):
    first = _run(corpus, tmp_path / "out")
    assert _work(first) == {name: (4, 0) for name in STAGES}
    assert not first.up_to_date
    again = _run(corpus, tmp_path / "out")
    assert again.up_to_date and again.version_id == first.version_id
    assert dv.list_versions(str(tmp_path / "out")) == [first.version_id]
    # the engine is not part of what a version holds: another engine is up to date too
    cfg = load_config(Pose3dConfig, None, OVERRIDES)
    other = run_pose3d(cfg, input_url=str(corpus / "manifest.csv"), output_url=str(tmp_path / "out"),
                       engine_name="beam")
    assert other.up_to_date


def test_a_rerun_that_only_reuses_writes_the_same_shards(corpus, tmp_path):
    """A changed setting that no stage reads (the shard writer's) reuses every stage result."""
    first = _run(corpus, tmp_path / "out")
    again = _run(corpus, tmp_path / "out", "write_fits=false")
    assert not again.up_to_date
    assert _work(again) == {name: (0, 4) for name in STAGES}
    assert _shard_digests(again) == _shard_digests(first)
    assert again.stats["stages"]["pack"]["computed"] == 0
    assert storage.read_bytes(storage.join(again.version_url, "index.parquet")) == \
        storage.read_bytes(storage.join(first.version_url, "index.parquet"))


def test_a_new_threshold_reruns_only_the_filter_and_samples(corpus, tmp_path):
    _run(corpus, tmp_path / "out")
    changed = _run(corpus, tmp_path / "out", "filter.frame_loss_threshold=0.02")
    work = _work(changed)
    assert all(work[s] == (0, 4) for s in ("decode", "keypoints", "track", "init", "fit"))
    assert work["filter"] == (4, 0) and work["samples"] == (4, 0)


def test_new_fit_settings_rerun_the_fit_and_later_stages_only(corpus, tmp_path):
    _run(corpus, tmp_path / "out")
    changed = _run(corpus, tmp_path / "out", "fit.solver.max_iter=10")
    work = _work(changed)
    assert all(work[s] == (0, 4) for s in ("decode", "keypoints", "track", "init"))
    assert all(work[s] == (4, 0) for s in ("fit", "filter", "samples"))
    fresh = _run(corpus, tmp_path / "fresh", "fit.solver.max_iter=10")
    assert _shard_digests(changed) == _shard_digests(fresh)


def test_added_removed_and_rewritten_inputs(corpus, tmp_path):
    local = tmp_path / "corpus"
    shutil.copytree(corpus, local)
    lines = (local / "manifest.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    (local / "manifest.csv").write_text("\n".join([header, *rows[:3]]) + "\n")
    first = _run(local, tmp_path / "out")
    assert first.stats["inputs"]["in"] == 3
    # one input added, one removed
    (local / "manifest.csv").write_text("\n".join([header, *rows[1:4]]) + "\n")
    second = _run(local, tmp_path / "out")
    assert _work(second)["decode"] == (1, 2) and _work(second)["fit"] == (1, 2)
    keys = {r["input_key"] for r in dv.read_inputs(second.version_url).to_pylist()}
    assert len(keys) == 3 and rows[0].split(",")[0] not in " ".join(keys)
    # same name, new bytes: the input counts as new
    video = sorted((local / "videos").glob("*.mp4"))[-1]
    video.write_bytes(video.read_bytes() + b"\0")
    third = _run(local, tmp_path / "out")
    assert _work(third)["decode"] == (1, 2)
    # the incremental result equals a run from scratch
    full = _run(local, tmp_path / "full", full=True)
    assert _shard_digests(third) == _shard_digests(full)


def test_full_recomputes_every_stage(corpus, tmp_path):
    _run(corpus, tmp_path / "out")
    again = _run(corpus, tmp_path / "out", full=True)
    assert _work(again) == {name: (4, 0) for name in STAGES}


def test_validate_checks_shared_shards_against_the_manifest(corpus, tmp_path):
    from labelmill.infra.validate import validate_version

    run = _run(corpus, tmp_path / "out")
    assert validate_version(str(tmp_path / "out")) == []
    shard = dv.shard_urls(run.version_url)[0]
    data = bytearray(storage.read_bytes(shard))
    data[600] ^= 0xFF  # inside the first member's data
    storage.write_bytes(shard, bytes(data))
    problems = [str(p) for p in validate_version(run.version_url)]
    assert any("sha256 differs from the manifest" in p for p in problems), problems
