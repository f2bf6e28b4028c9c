"""No single input can abort a pose3d run: each bad input ends as its own row, the rest is unchanged.

One small synthetic corpus, read through a manifest whose rows are the two good videos plus inputs
that used to stop the whole run or be written wrongly: a time range starting after 0 s, a
1000-character key, a 100-part key, keypoints far outside the frame (and NaN), a malformed
keypoint file, a file that is not a video; and a run with ``decode.fps``.
"""

import csv
import io
import json
import tarfile

import numpy as np
import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.config import load_config
from labelmill.infra.dataset_version import read_inputs
from labelmill.infra.validate import validate_version
from labelmill.operators.common.decode import DecodeVideo
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import write_synthetic_corpus
from labelmill.pipelines.config import Pose3dConfig
from labelmill.pipelines.pose3d import run_pose3d

OVERRIDES = ["keypoints.backend=precomputed", "fit.solver.max_iter=15"]
FPS, FRAMES, WIDTH, HEIGHT = 30, 16, 320, 240  # SynthConfig defaults for fps and size
START = 0.2  # seconds: source frames 6..15
LONG_KEY = "k" * 1000
DEEP_KEY = "/".join(["p"] * 100)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    summary = write_synthetic_corpus(str(root), SynthConfig(num_videos=2, num_frames=FRAMES, seed=3))
    ids = summary.video_ids
    videos = {p.name.split("_0")[0]: str(p) for p in (root / "videos").glob("*.mp4")}
    a, b = (videos[i] for i in ids)
    # keypoints of video b pushed far out of the frame: wrist x = -500, the other wrist 1e7, a NaN
    # nose in frame 1, and in frame 2 every keypoint of every person outside (nobody is left)
    document = json.loads((root / "keypoints" / f"{ids[1]}.json").read_text())
    for frame in document["frames"]:
        for person in frame["people"]:
            person["keypoints"][9][0] = -500.0
            person["keypoints"][10][0] = 1e7
            if frame["frame"] == 1:
                person["keypoints"][0] = [float("nan"), 10.0, 0.9]
            if frame["frame"] == 2:
                for point in person["keypoints"]:
                    point[1] = -500.0
    (root / "keypoints" / "outside.json").write_text(json.dumps(document))  # NaN written as NaN
    (root / "keypoints" / "badjson.json").write_text("{not json")
    (root / "notvideo.mp4").write_bytes(b"not a video at all")
    rows = [("good_a", a, ""), ("good_b", b, ""), ("ranged", a, START), (LONG_KEY, a, ""), (DEEP_KEY, a, ""),
            ("outside", b, ""), ("badjson", a, ""), ("notvideo", str(root / "notvideo.mp4"), "")]
    _manifest(root / "bad.csv", rows)
    _manifest(root / "clean.csv", rows[:2])
    return {"root": root, "ids": ids, "a": a, "b": b}


def _manifest(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "uri", "start", "end"])
        writer.writerows([(key, uri, start, "") for key, uri, start in rows])


def _run(corpus, name, out, *extra, engine="local"):
    cfg = load_config(Pose3dConfig, None, [*OVERRIDES, *extra])
    return run_pose3d(cfg, input_url=str(corpus["root"] / name), output_url=str(out), engine_name=engine)


def _members(run):
    """{tar member name: bytes} over every shard of the run's version."""
    out = {}
    for url in dv.shard_urls(run.version_url):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as tar:
            for member in tar.getmembers():
                out[member.name] = tar.extractfile(member).read()
    return out


def _samples(members, prefix):
    """{frame: (json document, smpl arrays)} of the samples whose member names start with ``prefix``."""
    out = {}
    for name, data in members.items():
        if name.startswith(prefix) and name.endswith(".json"):
            document = json.loads(data)
            smpl = np.load(io.BytesIO(members[name[: -len("json")] + "smpl.npz"]))
            out[document["frame"]] = (document, {k: smpl[k] for k in smpl.files})
    return out


def _file_people(corpus, video_id):
    """{source frame: (P, 17, 3) keypoints} of a video's keypoint file."""
    document = json.loads((corpus["root"] / "keypoints" / f"{video_id}.json").read_text())
    return {f["frame"]: np.array([p["keypoints"] for p in f["people"]], np.float32).reshape(-1, 17, 3)
            for f in document["frames"]}


def _matches_file_frame(keypoints2d, people):
    return any(np.array_equal(keypoints2d, person) for person in people)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_out")
    return {"clean": _run(corpus, "clean.csv", out / "clean"), "bad": _run(corpus, "bad.csv", out / "bad")}


def test_decode_reports_the_source_frames_it_kept(corpus):
    out = DecodeVideo(fps=10)({"key": ["x", "y"], "uri": [corpus["a"]] * 2, "start": [None, START],
                               "end": [None, None]})
    assert out["frame_indices"][0] == [0, 3, 6, 9, 12, 15]
    assert out["frame_indices"][1] == [6, 9, 12, 15]
    whole = DecodeVideo()({"key": ["x"], "uri": [corpus["a"]], "start": [START], "end": [None]})
    assert whole["frame_indices"][0] == list(range(6, FRAMES))


def test_bad_inputs_fail_alone_with_specific_reasons(runs):
    run = runs["bad"]
    assert validate_version(run.version_url) == []
    rows = {r["input_key"]: r for r in read_inputs(run.version_url).to_pylist()}
    assert len(rows) == 8 and run.stats["inputs"]["in"] == 8
    by_reason = {r["reason"]: r for r in rows.values() if r["status"] == "failed"}
    assert len(by_reason) == 4, by_reason  # long key, deep key, bad keypoint file, not a video
    long_row = next(r for reason, r in by_reason.items() if "1000 characters long" in reason)
    assert "line 5" in long_row["reason"] and "limited to 200 characters" in long_row["reason"]
    assert long_row["input_key"].startswith("__invalid_")
    deep_row = next(r for reason, r in by_reason.items() if "has 100 parts" in reason)
    assert "line 6" in deep_row["reason"] and "at most 16" in deep_row["reason"]
    assert "badjson.json: malformed JSON" in rows["badjson"]["reason"]
    assert "notvideo.mp4" in rows["notvideo"]["reason"] and rows["notvideo"]["status"] == "failed"
    for key in ("good_a", "good_b", "ranged", "outside"):
        assert rows[key]["status"] in ("written", "filtered"), rows[key]
    assert rows["ranged"]["frames_in"] == FRAMES - 6 and rows["good_a"]["frames_in"] == FRAMES


def test_good_items_bytes_equal_a_clean_run(runs):
    clean, bad = _members(runs["clean"]), _members(runs["bad"])
    good = {name: data for name, data in bad.items() if name.startswith(("good_a__", "good_b__"))}
    assert good and good == clean


def test_time_range_cuts_precomputed_keypoints_to_the_decoded_frames(corpus, runs):
    samples = _samples(_members(runs["bad"]), "ranged__")
    assert samples
    people = _file_people(corpus, corpus["ids"][0])
    for frame, (document, smpl) in samples.items():
        assert document["num_frames"] == FRAMES - 6
        assert document["time"] == pytest.approx((frame + 6) / FPS, abs=1e-3)
        # the detection stored with frame t is one of the file's people of source frame t + 6
        assert _matches_file_frame(smpl["keypoints2d"], people[frame + 6])


def test_keypoints_far_outside_the_frame_become_undetected(runs):
    samples = _samples(_members(runs["bad"]), "outside__")
    assert samples
    for frame, (document, smpl) in samples.items():
        keypoints = smpl["keypoints2d"]
        assert (keypoints[[9, 10], 2] == 0).all() and (keypoints[[9, 10], :2] == 0).all()
        detected = keypoints[keypoints[:, 2] > 0]
        assert np.isfinite(detected).all()
        assert (detected[:, 0] >= -0.1 * WIDTH).all() and (detected[:, 0] <= 1.1 * WIDTH).all()
        x0, y0, x1, y1 = document["bbox"]
        assert -0.1 * WIDTH <= x0 <= x1 <= 1.1 * WIDTH and -0.1 * HEIGHT <= y0 <= y1 <= 1.1 * HEIGHT
        if frame == 1:
            assert keypoints[0, 2] == 0  # the NaN nose
    assert 2 not in samples  # nobody was left in frame 2: no detection to match, the frame is dropped


def test_decode_fps_resamples_precomputed_keypoints(corpus, tmp_path):
    run = _run(corpus, "clean.csv", tmp_path / "fps", "decode.fps=10")
    rows = {r["input_key"]: r for r in read_inputs(run.version_url).to_pylist()}
    assert rows["good_a"]["frames_in"] == 6 and rows["good_a"]["status"] == "written", rows
    people = _file_people(corpus, corpus["ids"][0])
    samples = _samples(_members(run), "good_a__")
    assert samples
    for frame, (document, smpl) in samples.items():
        assert document["time"] == pytest.approx(3 * frame / FPS, abs=1e-3)
        assert _matches_file_frame(smpl["keypoints2d"], people[3 * frame])


@pytest.mark.parametrize("engine", ["ray", "beam"])
def test_other_engines_write_the_same_bytes(corpus, runs, tmp_path, engine, request):
    if engine == "ray":
        request.getfixturevalue("ray_session")
    run = _run(corpus, "bad.csv", tmp_path / engine, engine=engine)
    assert _members(run) == _members(runs["bad"])
    assert read_inputs(run.version_url).to_pylist() == read_inputs(runs["bad"].version_url).to_pylist()
