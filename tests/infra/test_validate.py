"""`labelmill validate` / `labelmill inspect`: a sound version passes; each corruption is named precisely."""

import hashlib
import io
import json
import shutil
import tarfile
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra.validate import validate_version
from labelmill.infra.formats.shards import Sample, ShardConfig, encode_npz, sample_key_from_member, tar_bytes
from labelmill.pipelines import cli

from test_dataset_version import fake_rows, write_version

SHARD0 = "shards/shard-000000.tar"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("pristine") / "out"
    write_version(str(out), fake_rows(), shard_config=ShardConfig(max_samples_per_shard=4))
    return out


@pytest.fixture
def out(pristine, tmp_path):
    """A private copy of the pristine output root to corrupt."""
    copy = tmp_path / "out"
    shutil.copytree(pristine, copy)
    return copy


@pytest.fixture
def run_cli(capsys):
    def run(*argv):
        code = cli.main(list(argv))
        return code, capsys.readouterr().out

    return run


def read_shard(path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def write_shard(path, samples: dict[str, dict[str, bytes]]) -> None:
    path.write_bytes(tar_bytes([Sample(sample_key_from_member(k), fields) for k, fields in samples.items()]))


def mutate_npz(fields: dict[str, bytes], **arrays) -> None:
    with np.load(io.BytesIO(fields["smpl.npz"])) as archive:
        current = {k: archive[k] for k in archive.files}
    current.update(arrays)
    fields["smpl.npz"] = encode_npz(current, dtype=None)


def problems_of(root) -> list[str]:
    return [str(p) for p in validate_version(str(root))]


def test_sound_version_passes_from_root_and_from_version_dir(out, run_cli):
    assert validate_version(str(out)) == []
    assert validate_version(str(out / "versions" / "v1")) == []
    code, text = run_cli("validate", str(out))
    assert code == 0 and text.startswith("OK ")


def test_sound_version_in_memory_passes():
    root = f"memory://lm-validate-{uuid.uuid4().hex[:8]}"
    write_version(root, fake_rows())
    assert validate_version(root) == []


def test_missing_field_wrong_shape_dtype_and_json_are_named(out):
    shard = out / "versions/v1" / SHARD0
    samples = read_shard(shard)
    keys = list(samples)
    del samples[keys[0]]["smpl.npz"]
    mutate_npz(samples[keys[1]], betas=np.zeros(9, np.float32))
    mutate_npz(samples[keys[2]], camera=np.zeros(3, np.float64))
    doc = json.loads(samples[keys[3]]["json"])
    del doc["frame"]
    doc["bbox"] = [1, 2, 3]
    samples[keys[3]]["json"] = json.dumps(doc).encode()
    write_shard(shard, samples)
    problems = problems_of(out)
    k0, k1, k2, k3 = (sample_key_from_member(k) for k in keys[:4])
    assert (f"{SHARD0} sample {k0}: missing field 'smpl.npz' (expected fields jpg, json, smpl.npz, got jpg, json)"
            in problems)
    assert f"{SHARD0} sample {k1}: smpl.npz:betas: wrong shape (expected (10,), got (9,))" in problems
    assert f"{SHARD0} sample {k2}: smpl.npz:camera: wrong dtype (expected float32, got float64)" in problems
    assert f"{SHARD0} sample {k3}: json.frame: missing property" in problems
    assert f"{SHARD0} sample {k3}: json.bbox: wrong length (expected 4, got 3)" in problems


def test_pickle_bad_image_and_nan_are_caught(out):
    shard = out / "versions/v1" / SHARD0
    samples = read_shard(shard)
    keys = list(samples)
    buffer = io.BytesIO()
    arrays = dict(np.load(io.BytesIO(samples[keys[0]]["smpl.npz"])))
    np.savez(buffer, **{**arrays, "betas": np.array([{"x": 1}], dtype=object)})
    samples[keys[0]]["smpl.npz"] = buffer.getvalue()
    samples[keys[1]]["jpg"] = b"GIF89a..."
    mutate_npz(samples[keys[2]], joints3d=np.full((24, 3), np.nan, np.float32))
    write_shard(shard, samples)
    problems = problems_of(out)
    k0, k1, k2 = (sample_key_from_member(k) for k in keys[:3])
    assert any(p.startswith(f"{SHARD0} sample {k0}: smpl.npz:betas: unreadable array") and "pickle" in p
               for p in problems)
    assert any(p.startswith(f"{SHARD0} sample {k1}: jpg: not a jpeg image") for p in problems)
    assert f"{SHARD0} sample {k2}: smpl.npz:joints3d: non-finite values (expected all finite, got 72 not)" in problems


def test_missing_success_and_dangling_latest(out):
    (out / "versions/v1/_SUCCESS").unlink()
    assert problems_of(out) == ["LATEST -> v1: no _SUCCESS: the version is incomplete (never committed)"]
    (out / "LATEST").write_text("v9\n")
    problems = problems_of(out)
    assert len(problems) == 1 and problems[0].startswith("LATEST: points at a version that does not exist")
    (out / "LATEST").write_text("../../etc\n")
    assert problems_of(out)[0].startswith("LATEST: does not name a version")
    assert "neither an output root" in problems_of(out / "nothing-here")[0]


def test_index_and_shards_must_agree(out):
    version = out / "versions/v1"
    index = pq.read_table(version / "index.parquet")
    keys = index.column("key").to_pylist()
    dropped = index.slice(1)  # lose the first row
    shards = dropped.column("shard").to_pylist()
    shards[0] = "shard-000001.tar"  # and misplace the next
    dropped = dropped.set_column(dropped.schema.get_field_index("shard"), "shard", pa.array(shards))
    pq.write_table(dropped, version / "index.parquet")
    problems = problems_of(out)
    assert f"{SHARD0}: sample {keys[0]!r} has no index.parquet row" in problems
    assert (f"index.parquet: row {keys[1]!r}: wrong shard (expected shard-000000.tar, got shard-000001.tar)"
            in problems)
    assert "stats.json: samples differs from the version's files (expected 6, got 7)" in problems
    assert any("frames_written differs from its samples" in p for p in problems)


def test_duplicate_keys_stray_files_and_bad_statuses(out):
    version = out / "versions/v1"
    first = read_shard(version / SHARD0)
    second = read_shard(version / "shards/shard-000001.tar")
    key = next(iter(first))
    second[key] = first[key]
    write_shard(version / "shards/shard-000001.tar", second)
    (version / "shards/.shard-000002.tar.tmp-abc").write_bytes(b"junk")
    inputs = pq.read_table(version / "inputs.parquet")
    statuses = inputs.column("status").to_pylist()
    statuses[0] = "done"
    inputs = inputs.set_column(inputs.schema.get_field_index("status"), "status", pa.array(statuses))
    pq.write_table(inputs, version / "inputs.parquet")
    stats = json.loads((version / "stats.json").read_text())
    stats["inputs"]["failed"] = 5
    (version / "stats.json").write_text(json.dumps(stats))
    problems = problems_of(out)
    sample_key = sample_key_from_member(key)
    assert (f"shards/shard-000001.tar: duplicate sample key {sample_key!r} (expected each key once, "
            f"got also in shard-000000.tar)") in problems
    assert any(p.startswith("shards/.shard-000002.tar.tmp-abc: unexpected file in shards/") for p in problems)
    assert any(p.startswith("inputs.parquet: status: value not allowed") and "'done'" in p for p in problems)
    assert any(p.startswith("stats.json: inputs counts differ from inputs.parquet") for p in problems)


def test_cli_lists_at_most_max_problems_and_exits_1(out, run_cli):
    shard = out / "versions/v1" / SHARD0
    samples = read_shard(shard)
    for fields in samples.values():
        mutate_npz(fields, betas=np.zeros(3, np.float32), camera=np.zeros(2, np.float32),
                   body_pose=np.zeros(1, np.float32), joints3d=np.zeros(1, np.float32),
                   keypoints3d=np.zeros(1, np.float32), projected2d=np.zeros(1, np.float32))
    write_shard(shard, samples)
    total = len(validate_version(str(out)))
    assert total > 20
    code, text = run_cli("validate", str(out))
    lines = text.strip().splitlines()
    assert code == 1 and len(lines) == 21 and lines[-1] == f"... and {total - 20} more"
    code, text = run_cli("validate", "--max-problems", "3", "--json", str(out))
    report = json.loads(text)
    assert code == 1 and report["problems"] == total and len(report["listed"]) == 3
    assert report["listed"][0]["expected"] is not None


def test_inspect_summarises_counts_reasons_losses_and_labels(out, run_cli):
    code, text = run_cli("inspect", str(out))
    assert code == 0
    assert "inputs    4: written 2, filtered 1, failed 1" in text
    assert "filtered       1  video_loss_above_threshold" in text
    assert "samples   7 in 2 shards" in text
    assert "index.frame_loss" in text and "p50" in text
    assert "label (samples): dancing 4, running 3" in text
    assert "clip.b/x/000000" in text
    code, text = run_cli("inspect", "--json", "--keys", "2", str(out / "versions" / "v1"))
    summary = json.loads(text)
    index = dv.read_index(str(out / "versions" / "v1")).to_pydict()
    losses = np.array(index["frame_loss"])
    assert summary["quantiles"]["index.frame_loss"]["p50"] == pytest.approx(float(np.quantile(losses, 0.5)))
    assert summary["quantiles"]["inputs.video_loss"]["count"] == 3  # the failed input has no loss
    assert summary["sample_keys"] == index["key"][:2] and summary["stages"]["fit"]["items_per_s"] == 4.0
    assert summary["counts"]["label"]["inputs"] == {"dancing": 3, "running": 1}
    assert run_cli("inspect", str(out / "missing"))[0] == 1


# ----------------------------------------------------------------------------- checksums and corrupt files


def test_a_flip_inside_a_jpeg_is_named_by_shard_sample_and_member(out):
    shard = out / "versions/v1" / SHARD0
    data = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    data[member.offset_data + member.size // 2] ^= 0x01  # the magic bytes stay: decodes as a jpeg
    shard.write_bytes(bytes(data))
    problems = problems_of(out)
    key = sample_key_from_member(member.name.split(".", 1)[0])
    assert any(p.startswith(f"{SHARD0} sample {key}: member 'jpg': sha256 differs from index.parquet") for p in problems)
    assert any(p.startswith(f"{SHARD0}: sha256 differs from _SUCCESS") for p in problems)
    assert len(problems) == 2, problems


def test_an_npz_header_numpy_refuses_is_a_problem_not_a_traceback(out):
    shard = out / "versions/v1" / SHARD0
    samples = read_shard(shard)
    key = next(iter(samples))
    npz = bytearray(samples[key]["smpl.npz"])
    entry = npz.rindex(b"PK\x01\x02")  # the last central directory entry
    npz[entry + 6: entry + 8] = (99).to_bytes(2, "little")  # "version needed to extract": 9.9
    samples[key]["smpl.npz"] = bytes(npz)
    write_shard(shard, samples)
    problems = problems_of(out)
    # the field check itself names it (the schema's npz reader catches numpy's NotImplementedError)
    assert any(p.startswith(f"{SHARD0} sample {sample_key_from_member(key)}: smpl.npz: not a readable npz archive")
               and "zip file version" in p for p in problems), problems


def test_truncated_and_garbled_files_are_each_one_problem(out):
    version = out / "versions/v1"
    shard = version / SHARD0
    shard.write_bytes(shard.read_bytes()[:1300])  # inside the second member
    (version / "shards/shard-000001.tar").write_bytes(b"\x00garbage" * 100)
    index = version / "index.parquet"
    index.write_bytes(index.read_bytes()[:-40])
    problems = problems_of(out)
    assert any(p.startswith(f"{SHARD0}: unreadable tar (expected a tar archive, got ReadError") for p in problems)
    assert any(p.startswith(f"{SHARD0}: size differs from _SUCCESS") for p in problems)
    assert any(p.startswith("shards/shard-000001.tar: unreadable tar") for p in problems)
    assert any(p.startswith("index.parquet: not a readable parquet file") for p in problems)
    (version / "stats.json").write_text('{"schema": "pose3d/1", ')
    problems = problems_of(out)  # no schema to check the shards against, but their checksums still
    assert any(p.startswith("stats.json: not valid JSON") for p in problems)
    assert any(p.startswith("shards/shard-000001.tar: size differs from _SUCCESS") for p in problems)


def test_success_lists_every_file_canonically(out):
    version = out / "versions/v1"
    success = version / "_SUCCESS"
    listed = json.loads(success.read_text())["files"]
    assert sorted(listed) == ["config.yaml", "index.parquet", "inputs.parquet", SHARD0, "shards/shard-000001.tar",
                              "stats.json"]
    assert listed["config.yaml"]["bytes"] == (version / "config.yaml").stat().st_size
    text = success.read_text()
    success.write_text(text.replace(":", ": ", 1))  # the same JSON, not the bytes the commit wrote
    assert problems_of(out) == ["_SUCCESS: not in its canonical form: changed after the commit"]
    success.write_text(text)
    (version / "notes.txt").write_text("added later")
    (version / "stats.json").unlink()
    problems = problems_of(out)
    assert "notes.txt: not listed in _SUCCESS: not written by the commit" in problems
    assert "stats.json: missing" in problems
    success.write_text("")
    assert problems_of(out)[0].startswith("_SUCCESS: lists no checksums")


def test_the_shared_store_objects_are_checked_against_the_manifest(tmp_path):
    from test_packing import pack_and_commit, store_fragments

    root = tmp_path / "out"
    fragments, inputs = store_fragments(str(root), fake_rows())
    shards = pack_and_commit(str(root), fragments, inputs, ShardConfig(max_samples_per_shard=4))
    assert validate_version(str(root / "versions/shared")) == []
    first, second = (root / "objects/shards" / s.name for s in shards[:2])
    sidecar = first.with_suffix(".json")
    sidecar.write_text(sidecar.read_text().replace(": ", ":"))
    second.with_suffix(".json").unlink()
    index_object = second.with_suffix(".index.parquet")
    index_object.write_bytes(index_object.read_bytes()[:-1] + b"X")
    problems = [str(p) for p in validate_version(str(root / "versions/shared"))]
    assert problems == [
        f"objects/shards/{first.name}.json: sidecar not in its canonical form: changed after packing",
        f"objects/shards/{second.name}.index.parquet: sha256 differs from the manifest (corrupted index object) "
        f"(expected {json.loads((root / 'versions/shared/shards.json').read_text())['shards'][1]['index_sha256']}, "
        f"got {hashlib.sha256(index_object.read_bytes()).hexdigest()})",
        f"objects/shards/{second.name}.json: missing sidecar: the store does not hold this shard as complete",
    ]
    tar = first.with_suffix(".tar")
    tar.write_bytes(tar.read_bytes()[:-1] + b"\x01")  # in the end-of-archive blocks
    (root / "versions/shared/stats.json").write_text("{")  # no schema: the samples are not checked, the sums are
    problems = [str(p) for p in validate_version(str(root / "versions/shared"))]
    assert any(p.startswith(f"shards.json: objects/shards/{first.name}.tar: sha256 differs from the manifest")
               for p in problems), problems
    assert any(p.startswith("stats.json: size differs from _SUCCESS") for p in problems)
