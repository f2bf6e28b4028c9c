"""pose3d samples from fitted videos, and dataset versions: layout, determinism, atomic commit."""

import io
import json
import os
import random
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.formats import shards as shard_writer
from labelmill.operators.common.decode import encode_jpeg
from labelmill.operators.pose3d.samples import (
    Pose3dSampleConfig,
    batch_samples,
    failed_input_row,
    video_samples,
)
from labelmill.infra.formats.shards import ShardConfig, decode_npz

CONFIG_YAML = "pipeline: pose3d\nseed: 0\n"


# ----------------------------------------------------------------------------- fakes (shared with test_validate)


def fake_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 255, (8, 12, 3), dtype=np.uint8), quality=80)


def fake_video_row(key: str, num_frames: int = 5, *, seed: int = 0, keep_video: bool = True,
                   keep_frame=None, label: str | None = "dancing") -> dict:
    """A BundleAdjust output row (plus DecodeVideo columns) without any fitting.

    Two detected people: person 0 is far from the projection, person 1 matches it.
    """
    rng = np.random.default_rng(seed)
    f = num_frames
    projected = rng.uniform(40, 90, (f, 17, 2)).astype(np.float32)
    keypoints = np.zeros((f, 2, 17, 3), np.float32)
    keypoints[:, 0, :, :2] = projected + 300.0
    keypoints[:, 1, :, :2] = projected + rng.normal(0, 1.0, projected.shape)
    keypoints[:, :, :, 2] = 0.9
    keypoints[:, 1, :3, 2] = 0.1  # three unconfident keypoints of the matched person
    keep = np.ones(f, bool) if keep_frame is None else np.asarray(keep_frame, bool)
    if not keep_video:
        keep[:] = False
    reasons = ["kept" if k else ("video_dropped" if not keep_video else "frame_loss_above_threshold") for k in keep]
    return {
        "key": key,
        "frames_jpeg": [fake_jpeg(seed * 100 + t) for t in range(f)],
        "frame_times": [t / 25.0 for t in range(f)],
        "label": label,
        "keypoints": keypoints,
        "person_mask": np.ones((f, 2), bool),
        "betas": rng.normal(0, 1, 10).astype(np.float32),
        "global_orient": rng.normal(0, 0.3, (f, 3)).astype(np.float32),
        "body_pose": rng.normal(0, 0.2, (f, 69)).astype(np.float32),
        "camera": np.tile(np.array([150.0, 64.0, 64.0], np.float32), (f, 1)),
        "joints3d": rng.normal(0, 0.4, (f, 24, 3)).astype(np.float32),
        "keypoints3d": rng.normal(0, 0.4, (f, 17, 3)).astype(np.float32),
        "projected2d": projected,
        "keypoints3d_init": rng.normal(0, 0.4, (f, 17, 3)).astype(np.float32),
        "frame_loss": rng.uniform(0.005, 0.03, f).astype(np.float32),
        "keep_frame": keep,
        "frame_reason": reasons,
        "video_loss": 0.012 if keep_video else 0.2,
        "keep_video": keep_video,
        "video_reason": "kept" if keep_video else "video_loss_above_threshold",
        "fit_energy": 3.5,
        "fit_iterations": 40,
    }


def fake_batch(rows: list[dict]) -> dict:
    names = sorted({name for row in rows for name in row})
    return {name: [row.get(name) for row in rows] for name in names}


def fake_rows() -> list[dict]:
    """Four videos: written (all kept), written (some kept), filtered (video), failed (decode)."""
    rows = [
        fake_video_row("vid_a", 4, seed=1),
        fake_video_row("clip.b/x", 5, seed=2, keep_frame=[1, 0, 1, 0, 1], label="running"),
        fake_video_row("vid_c", 3, seed=3, keep_video=False),
        fake_video_row("vid_d", 3, seed=4),
    ]
    rows[3].update(status="failed", reason="cannot decode vid_d.mp4: empty file", frames_jpeg=None)
    return rows


def write_version(out: str, rows: list[dict], *, version_id: str | None = "v1", shard_config=None,
                  shuffle_seed: int | None = None, stats=None) -> str:
    samples, inputs = batch_samples(fake_batch(rows))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(samples)
        random.Random(shuffle_seed).shuffle(inputs)
    with dv.DatasetVersionWriter(out, version_id=version_id, shard_config=shard_config or ShardConfig(),
                                 config_yaml=CONFIG_YAML) as writer:
        half = len(samples) // 2
        writer.add_samples(samples[:half])
        writer.record_inputs(inputs)
        writer.add_samples(samples[half:])
        return writer.commit(stats=stats or {"stages": {"fit": {"items": 12, "seconds": 3.0}}})


# ----------------------------------------------------------------------------- pose3d samples


def test_video_samples_keep_frames_and_account_every_input():
    samples, inputs = batch_samples(fake_batch(fake_rows()))
    by_input = {row["input_key"]: row for row in inputs}
    expected_keys = [f"vid_a/{t:06d}" for t in range(4)] + [f"clip.b/x/{t:06d}" for t in (0, 2, 4)]
    assert [s.key for s in samples] == expected_keys
    assert by_input["vid_a"] | {"frame_reasons": None} == {
        "input_key": "vid_a", "status": "written", "reason": "kept", "label": "dancing", "frames_in": 4,
        "frames_fitted": 4, "frames_written": 4, "video_loss": 0.012, "frame_reasons": None}
    assert json.loads(by_input["clip.b/x"]["frame_reasons"]) == {"frame_loss_above_threshold": 2, "kept": 3}
    assert (by_input["vid_c"]["status"], by_input["vid_c"]["reason"]) == ("filtered", "video_loss_above_threshold")
    assert by_input["vid_c"]["frames_written"] == 0 and by_input["vid_c"]["frames_fitted"] == 3
    assert by_input["vid_d"]["status"] == "failed" and "empty file" in by_input["vid_d"]["reason"]

    row = fake_rows()[1]
    sample = samples[5]  # clip.b/x frame 2
    assert sample.fields["jpg"] == row["frames_jpeg"][2]
    doc = json.loads(sample.fields["json"])
    assert doc["key"] == "clip.b/x/000002" and doc["frame"] == 2 and doc["input_key"] == "clip.b/x"
    assert doc["time"] == pytest.approx(0.08) and doc["label"] == "running" and doc["person"] == 1
    assert doc["keep_frame"] is True and doc["keep_video"] is True and doc["fit_iterations"] == 40
    assert doc["frame_loss"] == pytest.approx(float(row["frame_loss"][2]), rel=1e-6)
    arrays = decode_npz(sample.fields["smpl.npz"])
    shapes = {k: v.shape for k, v in arrays.items()}
    assert shapes == {"betas": (10,), "global_orient": (3,), "body_pose": (69,), "camera": (3,), "joints3d": (24, 3),
                      "keypoints3d": (17, 3), "keypoints2d": (17, 3), "projected2d": (17, 2),
                      "keypoints3d_init": (17, 3)}
    assert all(a.dtype == np.float32 for a in arrays.values())
    np.testing.assert_array_equal(arrays["keypoints2d"], row["keypoints"][2, 1])  # the matching person, not person 0
    np.testing.assert_array_equal(arrays["body_pose"], row["body_pose"][2])
    confident = row["keypoints"][2, 1, 3:, :2]  # the first three are below min_confidence
    assert doc["bbox"] == pytest.approx([*confident.min(0), *confident.max(0)], rel=1e-6)
    assert doc["bbox_source"] == "keypoints2d"
    assert sample.index == {"input_key": "clip.b/x", "frame": 2, "time": 0.08, "label": "running",
                            "frame_loss": doc["frame_loss"], "video_loss": 0.012}


def test_main_keypoints_column_and_bbox_fallback():
    row = fake_video_row("v", 2, seed=5)
    main = np.zeros((2, 17, 3), np.float32)
    main[..., :2] = 7.0
    main[0, :, 2] = 1.0  # frame 0: confident
    main[1, :, 2] = 0.2  # frame 1: present but nothing confident -> bbox from projected2d
    row["main_keypoints"] = main
    result = video_samples(row, config=Pose3dSampleConfig(min_confidence=0.5))
    docs = [json.loads(s.fields["json"]) for s in result.samples]
    assert [d["person"] for d in docs] == [None, None]
    assert docs[0]["bbox"] == [7.0, 7.0, 7.0, 7.0] and docs[0]["bbox_source"] == "keypoints2d"
    proj = row["projected2d"][1]
    assert docs[1]["bbox_source"] == "projected2d"
    assert docs[1]["bbox"] == pytest.approx([*proj.min(0), *proj.max(0)], rel=1e-6)
    np.testing.assert_array_equal(decode_npz(result.samples[0].fields["smpl.npz"])["keypoints2d"], main[0])


def test_frames_without_the_person_of_interest_store_the_matched_detection():
    row = fake_video_row("v", 2, seed=5)
    main = np.zeros((2, 17, 3), np.float32)
    main[0, :, :2], main[0, :, 2] = 7.0, 1.0  # frame 1: the person of interest is absent (broken track)
    row["main_keypoints"] = main
    result = video_samples(row)
    docs = [json.loads(s.fields["json"]) for s in result.samples]
    assert docs[0]["person"] is None and docs[1]["person"] is not None
    stored = decode_npz(result.samples[1].fields["smpl.npz"])["keypoints2d"]
    np.testing.assert_array_equal(stored, np.nan_to_num(row["keypoints"][1][docs[1]["person"]]))


def test_inconsistent_video_becomes_failed_row_naming_the_problem():
    good, bad = fake_video_row("good", 3, seed=6), fake_video_row("bad", 3, seed=7)
    bad["frames_jpeg"] = bad["frames_jpeg"][:2]
    samples, inputs = batch_samples(fake_batch([good, bad]))
    assert len(samples) == 3 and inputs[1]["status"] == "failed"
    assert "'bad'" in inputs[1]["reason"] and "2 decoded JPEG frames but 3 fitted frames" in inputs[1]["reason"]
    kept_all_dropped = fake_video_row("none", 2, seed=8, keep_frame=[0, 0])
    result = video_samples(kept_all_dropped)
    assert result.samples == [] and result.input_row["reason"] == "no_frames_kept"
    assert failed_input_row("x", "boom", frames_in=3)["status"] == "failed"
    # engines such as Ray hand columns over as numpy arrays (object arrays for bytes)
    row = fake_video_row("arr", 3, seed=9)
    row["frames_jpeg"] = np.array(row["frames_jpeg"] + [b""], dtype=object)[:3]
    row["frame_reason"] = np.array(row["frame_reason"])
    assert [s.key for s in video_samples(row).samples] == ["arr/000000", "arr/000001", "arr/000002"]
    with pytest.raises(ValueError, match="min_confidence"):
        Pose3dSampleConfig(min_confidence=2.0)


# ----------------------------------------------------------------------------- versions


@pytest.mark.parametrize("root_kind", ["local", "memory"])
def test_commit_writes_the_layout_and_moves_latest(tmp_path, root_kind):
    out = str(tmp_path / "out") if root_kind == "local" else f"memory://lm-dv-{os.getpid()}-{id(tmp_path)}"
    vid = write_version(out, fake_rows(), shard_config=ShardConfig(max_samples_per_shard=3))
    assert vid == "v1" and dv.read_latest(out) == "v1" and dv.list_versions(out) == ["v1"]
    version = dv.version_url(out, "v1")
    names = sorted(u.split("/versions/v1/", 1)[1] for u in storage.list_files(version, "**"))
    assert names == ["_SUCCESS", "config.yaml", "index.parquet", "inputs.parquet", "shards/shard-000000.tar",
                     "shards/shard-000001.tar", "shards/shard-000002.tar", "stats.json"]
    assert storage.read_text(storage.join(version, "config.yaml")) == CONFIG_YAML
    stats = dv.read_stats(version)
    assert stats["schema"] == "pose3d/1" and stats["version"] == "v1"
    assert stats["inputs"] == {"in": 4, "written": 2, "filtered": 1, "failed": 1}
    assert stats["frames"] == {"in": 12, "fitted": 12, "kept": 7}  # the failed video decoded nothing
    assert stats["samples"] == 7 and stats["shards"] == 3
    assert stats["bytes"] == sum(len(storage.read_bytes(u)) for u in dv.shard_urls(version))
    assert stats["input_reasons"]["filtered"] == {"video_loss_above_threshold": 1}
    assert stats["frame_reasons"] == {"frame_loss_above_threshold": 2, "kept": 7, "video_dropped": 3}
    assert stats["stages"]["fit"]["items_per_s"] == pytest.approx(4.0)
    index = dv.read_index(version).to_pydict()
    assert index["key"] == sorted(index["key"]) and len(index["key"]) == 7
    assert index["shard"] == ["shard-000000.tar"] * 3 + ["shard-000001.tar"] * 3 + ["shard-000002.tar"]
    assert index["member_key"][0] == "clip%2Eb__x__000000"
    assert dv.read_inputs(version).column("input_key").to_pylist() == ["clip.b/x", "vid_a", "vid_c", "vid_d"]
    assert dv.resolve_version(out) == dv.VersionRef(out, "v1", version)
    assert dv.resolve_version(version).url == version
    # a second version becomes LATEST; the first stays
    write_version(out, fake_rows()[:1], version_id="v2")
    assert dv.read_latest(out) == "v2" and dv.list_versions(out) == ["v1", "v2"]


def test_same_input_gives_identical_bytes_in_any_order(tmp_path):
    config = ShardConfig(max_samples_per_shard=2)
    write_version(str(tmp_path / "a"), fake_rows(), shard_config=config)
    write_version(str(tmp_path / "b"), list(reversed(fake_rows())), shard_config=config, shuffle_seed=3)
    for name in ("index.parquet", "inputs.parquet", *(f"shards/shard-00000{i}.tar" for i in range(4))):
        a = (tmp_path / "a/versions/v1" / name).read_bytes()
        b = (tmp_path / "b/versions/v1" / name).read_bytes()
        assert a == b, name
    meta = pq.read_metadata(io.BytesIO((tmp_path / "a/versions/v1/index.parquet").read_bytes()))
    assert b"pandas" not in meta.metadata  # no pandas metadata (it would carry library versions)


def test_crash_leaves_no_success_no_latest_change_no_partial_shard(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    write_version(out, fake_rows())
    samples, inputs = batch_samples(fake_batch(fake_rows()))
    # 1) an exception inside the with block after a shard was written
    with pytest.raises(RuntimeError, match="worker died"):
        with dv.DatasetVersionWriter(out, version_id="v2", config_yaml=CONFIG_YAML) as writer:
            writer.write_shard(samples[:2], index=0)
            writer.add_samples(samples[2:])
            raise RuntimeError("worker died")
    assert not (tmp_path / "out/versions/v2/_SUCCESS").exists()
    assert dv.read_latest(out) == "v1" and dv.list_versions(out) == ["v1"]

    # 2) a crash while a shard is being written: nothing under the shard's final name
    def failing_write_tar(samples, handle):
        handle.write(b"partial tar bytes")
        raise OSError("disk full")

    monkeypatch.setattr(dv, "write_tar", failing_write_tar)
    with pytest.raises(OSError, match="disk full"):
        with dv.DatasetVersionWriter(out, version_id="v3", config_yaml=CONFIG_YAML) as writer:
            writer.add_samples(samples)
            writer.record_inputs(inputs)
            writer.commit()
    assert os.listdir(tmp_path / "out/versions/v3/shards") == []  # no shard, no temporary file
    assert not (tmp_path / "out/versions/v3/_SUCCESS").exists() and dv.read_latest(out) == "v1"
    monkeypatch.undo()

    # 3) a retry with the same id clears the leftovers and commits
    write_version(out, fake_rows(), version_id="v3")
    assert dv.read_latest(out) == "v3" and dv.list_versions(out) == ["v1", "v3"]
    # committed versions are immutable; forgetting commit() is an error
    with pytest.raises(FileExistsError, match="immutable"):
        write_version(out, fake_rows(), version_id="v3")
    with pytest.raises(RuntimeError, match="not committed"):
        with dv.DatasetVersionWriter(out, version_id="v4", config_yaml=CONFIG_YAML) as writer:
            writer.add_samples(samples)
    assert dv.read_latest(out) == "v3"


def test_writer_refuses_inconsistent_accounting_and_bad_input(tmp_path):
    out = str(tmp_path / "out")
    samples, inputs = batch_samples(fake_batch(fake_rows()))
    inputs[0] = dict(inputs[0], frames_written=inputs[0]["frames_written"] + 1)
    with pytest.raises(ValueError, match="samples were written"):
        with dv.DatasetVersionWriter(out, version_id="v1", config_yaml=CONFIG_YAML) as writer:
            writer.add_samples(samples)
            writer.record_inputs(inputs)
            writer.commit()
    assert not (tmp_path / "out/versions/v1/_SUCCESS").exists() and dv.read_latest(out) is None
    writer = dv.DatasetVersionWriter(out, version_id="v2", config_yaml=CONFIG_YAML)  # no with: abandoned below
    with pytest.raises(ValueError, match="duplicate sample key"):
        writer.add_samples([samples[0], samples[0]])
    with pytest.raises(ValueError, match="status 'done'"):
        writer.record_inputs([dict(inputs[0], status="done")])
    with pytest.raises(ValueError, match=r"missing columns \['label'\]"):
        writer.record_inputs([{k: v for k, v in inputs[0].items() if k != "label"}])
    with pytest.raises(ValueError, match="computed by the writer"):
        writer.commit(stats={"samples": 3})
    with pytest.raises(ValueError, match="fields"):
        writer.add_samples([shard_writer.Sample("k/000000", {"jpg": b"x"}, index=samples[1].index)])
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.add_samples(samples[1:2])
    assert not (tmp_path / "out/versions/v2").exists()  # nothing was written
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="version id"):
            dv.DatasetVersionWriter(out, version_id=bad)


def test_default_version_id_is_utc_time_and_config_hash(tmp_path):
    import datetime
    import hashlib

    now = datetime.datetime(2025, 3, 1, 14, 15, 2, tzinfo=datetime.timezone.utc)
    digest = hashlib.sha256(CONFIG_YAML.encode()).hexdigest()[:8]
    assert dv.make_version_id(CONFIG_YAML, now=now) == f"20250301T141502Z-{digest}"
    vid = write_version(str(tmp_path / "out"), fake_rows()[:1], version_id=None)
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{digest}", vid) and dv.read_latest(str(tmp_path / "out")) == vid


def test_spooled_and_explicit_shards_and_size_rollover(tmp_path):
    out = str(tmp_path / "out")
    samples, inputs = batch_samples(fake_batch(fake_rows()))
    per_sample = shard_writer.sample_tar_size(samples[0])
    config = ShardConfig(max_bytes_per_shard=shard_writer.tar_size(2 * per_sample + 1024))
    with dv.DatasetVersionWriter(out, version_id="v1", shard_config=config, config_yaml=CONFIG_YAML) as writer:
        assert writer.write_shard(samples[5:], index=4) == "shard-000004.tar"
        writer.add_samples(samples[:5])
        writer.record_inputs(inputs)
        writer.commit()
    index = dv.read_index(dv.version_url(out, "v1")).to_pydict()
    shards = dict(zip(index["key"], index["shard"]))
    assert {shards[s.key] for s in samples[5:]} == {"shard-000004.tar"}
    spooled_shards = sorted({shards[s.key] for s in samples[:5]})
    assert spooled_shards == ["shard-000005.tar", "shard-000006.tar", "shard-000007.tar"]
    for url in dv.shard_urls(dv.version_url(out, "v1")):
        assert len(storage.read_bytes(url)) <= config.max_bytes_per_shard


def test_extra_files_are_written_inside_the_version_and_reserved_names_refused(tmp_path):
    out = str(tmp_path / "out")
    with dv.DatasetVersionWriter(out, version_id="v1", config_yaml="a: 1\n") as writer:
        url = writer.write_file("fits/x.npz", b"abc")
        for bad in ("../escape.npz", "/abs.npz", "shards/evil.tar", "_SUCCESS", "index.parquet"):
            with pytest.raises(ValueError):
                writer.write_file(bad, b"x")
        writer.commit()
    assert url == dv.version_url(out, "v1") + "/fits/x.npz" and storage.read_bytes(url) == b"abc"
    assert not (tmp_path / "escape.npz").exists()
