"""Crash-resume: SIGKILL a real run (its whole process tree) mid-way, rerun the same command.

The rerun must redo no completed stage result (stats.json: per stage ``reused`` equals what was
stored when the run died), write the same bytes as an uninterrupted run, and LATEST must name a
complete version at every moment (here: the version committed before the killed run).
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.memory import process_table, tree_members
from labelmill.infra.validate import validate_version
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import write_synthetic_corpus

VIDEOS = 8
STAGES = ("decode", "keypoints", "track", "init", "fit", "filter", "samples")
# Small fit batches so that fit results land one batch at a time and a kill falls between them.
SETTINGS = ["keypoints.backend=precomputed", "fit.solver.max_iter=40",
            "engine.stages={decode: {batch_size: 2}, fit: {batch_size: 2}, samples: {batch_size: 2}}"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_synthetic_corpus(str(root), SynthConfig(num_videos=VIDEOS, num_frames=20, seed=11))
    return root / "manifest.csv"


def _command(corpus, out, engine, *extra):
    args = [sys.executable, "-m", "labelmill.pipelines", "-q", "run", "pose3d", "--input", str(corpus),
            "--output", str(out), "--engine", engine]
    for setting in [*SETTINGS, *extra]:
        args += ["--set", setting]
    return args


@pytest.fixture
def env():
    """The runs' environment; the embedded Ray cluster's files go to a short temp dir of the test's
    own (Ray's socket paths must stay under ~100 characters), removed afterwards."""
    short = tempfile.mkdtemp(prefix="lm-", dir="/tmp")
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["TMPDIR"] = short
    yield env
    shutil.rmtree(short, ignore_errors=True)


def _stored(out, stage):
    root = os.path.join(out, "results", stage)
    if not os.path.isdir(root):
        return 0
    return sum(1 for _, _, files in os.walk(root) for f in files
               if f.endswith(".npz") or f.endswith(".failed.json"))


def _kill_tree(process):
    """SIGSTOP then SIGKILL the process and every descendant (Ray's raylet, GCS and workers too)."""
    members = tree_members(process_table(), process.pid)
    for info in members:
        try:
            os.kill(info.pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    members = tree_members(process_table(), process.pid, known={(m.pid, m.start_ticks) for m in members})
    for info in members:
        try:
            os.kill(info.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=60)
    return len(members)


def _run_and_kill(command, env, out, log_path, fits_before, timeout_s=300.0):
    """Start ``command`` and kill its tree once it stored some but not all of its fit results."""
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    pytest.fail(f"the run ended (code {process.returncode}) before it could be killed; "
                                f"log:\n{open(log_path, encoding='utf-8', errors='replace').read()[-3000:]}")
                if 0 < _stored(out, "fit") - fits_before < VIDEOS:
                    return _kill_tree(process)
                time.sleep(0.02)
            pytest.fail("no fit result appeared in time")
        finally:
            if process.poll() is None:
                _kill_tree(process)


def _shard_digests(url):
    return [hashlib.sha256(storage.read_bytes(u)).hexdigest() for u in dv.shard_urls(url)]


def _finish(command, env):
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_killed_run_resumes_without_redoing_stored_work_and_writes_the_same_bytes(corpus, tmp_path, env, engine):
    out = str(tmp_path / "out")
    # v1: a complete version with other fit settings (decode..init are shared with the next run);
    # LATEST must still name it after the kill
    _finish(_command(corpus, out, "local", "fit.solver.max_iter=30"), env)
    first = dv.read_latest(out)
    before = {stage: _stored(out, stage) for stage in STAGES}
    killed = _run_and_kill(_command(corpus, out, engine), env, out, tmp_path / "killed.log", before["fit"])
    assert killed >= 1
    assert dv.read_latest(out) == first
    assert dv.list_versions(out) == [first]
    assert validate_version(dv.resolve_version(out).url) == []
    new = {stage: _stored(out, stage) - before[stage] for stage in STAGES}  # stored by the killed run
    assert 0 < new["fit"] < VIDEOS

    _finish(_command(corpus, out, engine), env)
    resumed = dv.resolve_version(out).url
    assert dv.read_latest(out) != first
    work = dv.read_stats(resumed)["stages"]
    for stage in STAGES:
        expected = VIDEOS if stage in ("decode", "keypoints", "track", "init") else new[stage]
        assert work[stage]["reused"] == expected, (stage, work[stage], new)
        assert work[stage]["computed"] + work[stage]["reused"] == VIDEOS
    assert validate_version(resumed) == []

    clean = str(tmp_path / "clean")
    _finish(_command(corpus, clean, "local"), env)
    clean_url = dv.resolve_version(clean).url
    assert _shard_digests(resumed) == _shard_digests(clean_url)
    for name in ("index.parquet", "inputs.parquet", "results.parquet"):
        assert storage.read_bytes(storage.join(resumed, name)) == storage.read_bytes(storage.join(clean_url, name))
    # no partial or duplicate shard in the store: every object has its sidecar, nothing temporary
    names = os.listdir(os.path.join(out, "objects", "shards"))
    assert not [n for n in names if n.startswith(".")]
    assert sorted(n[:-4] for n in names if n.endswith(".tar")) == sorted(n[:-5] for n in names if n.endswith(".json"))


def test_a_killed_ray_worker_is_survived_within_the_run(corpus, tmp_path, env):
    """SIGKILL a stage actor mid-run: Ray restarts it and retries its batch; the run finishes with
    every input and the same bytes as an undisturbed run."""
    out = str(tmp_path / "out")
    command = _command(corpus, out, "ray")
    with open(tmp_path / "run.log", "wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        victim = None
        try:
            deadline = time.monotonic() + 300
            while victim is None and time.monotonic() < deadline and process.poll() is None:
                if _stored(out, "decode") > 0:
                    workers = [m for m in tree_members(process_table(), process.pid)
                               if m.name.startswith("ray::MapWorker")]
                    if workers:
                        victim = workers[0]
                        os.kill(victim.pid, signal.SIGKILL)
                time.sleep(0.02)
            code = process.wait(timeout=600)
        finally:
            if process.poll() is None:
                _kill_tree(process)
    log = open(tmp_path / "run.log", encoding="utf-8", errors="replace").read()
    assert victim is not None, "no stage actor was seen to kill; log:\n" + log[-3000:]
    assert code == 0, log[-3000:]
    assert _stored(out, "fit") >= VIDEOS
    version = dv.resolve_version(out).url
    assert dv.read_stats(version)["inputs"]["in"] == VIDEOS
    assert dv.read_stats(version)["inputs"].get("failed", 0) == 0
    clean = str(tmp_path / "clean")
    _finish(_command(corpus, clean, "local"), env)
    assert _shard_digests(version) == _shard_digests(dv.resolve_version(clean).url)
