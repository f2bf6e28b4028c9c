"""`labelmill synth bad`: both pipelines, on every engine, get through a corpus of bad inputs.

The corpus is written once through the CLI; each pipeline runs through the CLI on it and on its
clean subset. Every run exits 0 and validates, every input of expected.json ends with the
outcome and reason it names, and the good items' samples are byte-identical to the clean run's
(and, on Beam and Ray, to the local run's).
"""

import json

import pytest

from labelmill.infra import dataset_version as dv
from labelmill.operators.synth.bad_inputs import BadCorpusConfig, write_bad_corpus
from labelmill.pipelines.cli import main

POSE_SETS = ["keypoints.backend=precomputed", "fit.solver.max_iter=10"]
SEGMENTATION_SETS = ["input.stuff=[grass,sky,water]"]  # stuff on: a classifier trained on the corpus's tags


def _sets(values):
    return [arg for value in values for arg in ("--set", value)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_bad") / "corpus"
    assert main(["synth", "bad", "--out", str(root), "--seed", "0"]) == 0
    return {"root": root, "expected": json.loads((root / "expected.json").read_text())}


def _run(corpus, out, pipeline, source, *extra, engine="local"):
    root = corpus["root"]
    if pipeline == "pose3d":
        args = ["run", "pose3d", "--input", str(root / "pose" / source), *_sets([*POSE_SETS, *extra])]
    else:
        args = ["run", "segmentation", "--input", str(root / "segmentation" / source),
                "--images", str(root / "segmentation" / "images"), *_sets([*SEGMENTATION_SETS, *extra])]
    assert main([*args, "--output", str(out), "--engine", engine]) == 0
    version = dv.version_url(str(out), dv.read_latest(str(out)))
    assert main(["validate", version]) == 0
    return version


def _samples(version):
    """{sample key: {extension: bytes}} of a version."""
    return {key: {ext: data for ext, (_, data) in members.items()}
            for _, key, members in dv.iter_shard_samples(version)}


def _inputs(version):
    return {row["input_key"]: row for row in dv.read_inputs(version).to_pylist()}


def _input_key(pipeline, sample_key):
    """pose3d samples are keyed ``<input key>/<frame:06d>``, segmentation samples by the input key."""
    return sample_key.rsplit("/", 1)[0] if pipeline == "pose3d" else sample_key


@pytest.fixture(scope="module")
def local_runs(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_bad_runs")
    runs = {}
    for pipeline, bad, clean in (("pose3d", "manifest.csv", "clean.csv"),
                                 ("segmentation", "annotations.json", "clean.json")):
        runs[pipeline] = {"bad": _run(corpus, out / f"{pipeline}_bad", pipeline, bad),
                          "clean": _run(corpus, out / f"{pipeline}_clean", pipeline, clean)}
    (classifier,) = sorted((out / "segmentation_bad" / "models" / "classifier").glob("*.pt"))
    runs["classifier"] = str(classifier)
    return runs


def test_the_corpus_is_deterministic_and_covers_every_case(corpus, tmp_path):
    again = write_bad_corpus(str(tmp_path / "again"), BadCorpusConfig(seed=0))
    for name in ("expected.json", "pose/manifest.csv", "pose/clean.csv", "segmentation/annotations.json"):
        assert (tmp_path / "again" / name).read_bytes() == (corpus["root"] / name).read_bytes(), name
    assert again.pose_inputs == len(corpus["expected"]["pose"])
    cases = {case["case"] for group in corpus["expected"].values() for case in group.values()}
    for words in ("zero-byte", "first half", "random bytes", "text file", "missing", "after the end", "reversed",
                  "starting after 0 s", "duplicated key", "1000-character key", "100-part key", "3840x2160",
                  "without people", "NaN", "infinite", "1e12", "negative confidence", "string value",
                  "outside the frame", "malformed JSON", "does not decode", "wholly outside", "partly outside"):
        assert any(words in case for case in cases), words
    with pytest.raises(ValueError, match="num_clips"):
        BadCorpusConfig(num_clips=0)


@pytest.mark.parametrize("pipeline, group", [("pose3d", "pose"), ("segmentation", "segmentation")])
def test_every_input_ends_with_its_expected_outcome_and_reason(corpus, local_runs, pipeline, group):
    expected = corpus["expected"][group]
    rows = _inputs(local_runs[pipeline]["bad"])
    assert set(rows) == set(expected)
    for key, case in expected.items():
        row = rows[key]
        assert row["status"] == case["outcome"], (case["case"], row)
        assert case["reason"] in (row["reason"] or ""), (case["case"], row["reason"])
        if row["status"] != "written":
            assert row["reason"] and row["reason"].lower() not in ("error", "failed", "unknown"), row
    written = {_input_key(pipeline, key) for key in _samples(local_runs[pipeline]["bad"])}
    assert written == {key for key, case in expected.items() if case["outcome"] == "written"}


@pytest.mark.parametrize("pipeline", ["pose3d", "segmentation"])
def test_good_items_are_byte_identical_to_a_clean_run(local_runs, pipeline):
    bad, clean = _samples(local_runs[pipeline]["bad"]), _samples(local_runs[pipeline]["clean"])
    assert clean and bad == clean  # every sample of the bad run is a good item's, byte for byte
    clean_rows = _inputs(local_runs[pipeline]["clean"])
    bad_rows = _inputs(local_runs[pipeline]["bad"])
    assert clean_rows == {key: bad_rows[key] for key in clean_rows}


def test_a_late_range_and_a_4k_clip_are_written_with_their_frames(corpus, local_runs):
    rows = _inputs(local_runs["pose3d"]["bad"])
    frames = BadCorpusConfig().num_frames
    assert rows["good_0"]["frames_in"] == frames
    assert rows["range_late_start"]["frames_in"] == frames - 10  # source frames 10.. of the same clip
    assert rows["video_4k"]["frames_in"] == BadCorpusConfig().big_frames
    samples = _samples(local_runs["pose3d"]["bad"])
    late = sorted(json.loads(m["json"])["time"] for key, m in samples.items() if key.startswith("range_late_start/"))
    assert late and late[0] >= 10 / 30 - 1e-3


def test_decode_fps_cuts_precomputed_keypoints_of_the_bad_corpus_too(corpus, tmp_path):
    bad = _run(corpus, tmp_path / "bad", "pose3d", "manifest.csv", "decode.fps=10")
    clean = _run(corpus, tmp_path / "clean", "pose3d", "clean.csv", "decode.fps=10")
    rows = _inputs(bad)
    for key, case in corpus["expected"]["pose"].items():
        assert rows[key]["status"] == case["outcome"] and case["reason"] in (rows[key]["reason"] or ""), rows[key]
    frames = BadCorpusConfig().num_frames
    assert rows["good_0"]["frames_in"] == frames // 3  # 30 fps -> 10 fps: source frames 0, 3, 6, ...
    assert rows["range_late_start"]["frames_in"] == len(range(10, frames, 3))
    assert _samples(bad) == _samples(clean)


@pytest.mark.parametrize("engine", ["beam", "ray"])
@pytest.mark.parametrize("pipeline, source", [("pose3d", "manifest.csv"), ("segmentation", "annotations.json")])
def test_other_engines_write_what_local_writes(corpus, local_runs, tmp_path, engine, pipeline, source, request):
    if engine == "ray":
        request.getfixturevalue("ray_session")
    extra = [f"stuff.classifier={local_runs['classifier']}"] if pipeline == "segmentation" else []
    version = _run(corpus, tmp_path / engine, pipeline, source, *extra, engine=engine)
    assert _samples(version) == _samples(local_runs[pipeline]["bad"])
    assert _inputs(version) == _inputs(local_runs[pipeline]["bad"])
