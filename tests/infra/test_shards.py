"""Deterministic WebDataset shards: encoders, member names, shard plans, and outside readers."""

import io
import json
import random
import tarfile
import zipfile

import numpy as np
import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra.formats.shards import (
    Sample,
    ShardConfig,
    decode_npz,
    encode_json,
    encode_npz,
    member_key,
    plan_shards,
    sample_key_from_member,
    sample_tar_size,
    split_member_name,
    tar_bytes,
    tar_size,
)

from test_dataset_version import fake_rows, write_version


def make_sample(key: str, payload: int = 100, seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    return Sample(key=key, fields={
        "jpg": b"\xff\xd8\xff" + rng.bytes(payload),
        "json": encode_json({"key": key, "loss": np.float32(0.25)}),
        "smpl.npz": encode_npz({"betas": rng.normal(size=10)}),
    })


# ----------------------------------------------------------------------------- encoders


def test_encode_json_is_canonical_and_finite():
    doc = {"b": np.float32(0.1), "a": [np.int64(3), float("nan"), np.inf], "c": {"z": True, "y": None},
           "d": np.arange(3, dtype=np.int32), "e": np.bool_(False)}
    data = encode_json(doc)
    assert data == b'{"a":[3,null,null],"b":0.1,"c":{"y":null,"z":true},"d":[0,1,2],"e":false}'
    assert encode_json(dict(reversed(list(doc.items())))) == data
    with pytest.raises(ValueError, match=r"\$\.x"):
        encode_json({"x": object()})


def test_encode_npz_is_deterministic_float32_and_pickle_free(monkeypatch):
    arrays = {"joints3d": np.random.default_rng(0).normal(size=(24, 3)), "betas": np.arange(10)}
    first = encode_npz(arrays)
    monkeypatch.setattr("time.time", lambda: 2_000_000_000.0)  # the clock must not leak into the bytes
    assert encode_npz(dict(reversed(list(arrays.items())))) == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == ["betas.npy", "joints3d.npy"]
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    decoded = decode_npz(first)  # allow_pickle=False
    assert decoded["joints3d"].dtype == np.float32 and decoded["betas"].shape == (10,)
    np.testing.assert_allclose(decoded["joints3d"], arrays["joints3d"], rtol=1e-6)
    with pytest.raises(ValueError, match="object"):
        encode_npz({"bad": np.array([{"a": 1}], dtype=object)}, dtype=None)
    with pytest.raises(ValueError, match="array name"):
        encode_npz({"a.b": np.zeros(2)})


# ----------------------------------------------------------------------------- member keys


def test_member_keys_are_safe_one_to_one_and_split_like_webdataset():
    from webdataset.tariterators import base_plus_ext

    rng = random.Random(0)
    alphabet = "ab_/.-%~ é\\:Z09"
    keys = {"a/b", "a__b", "a_/b", "a/_b", "_", "__", "//", "../../etc/passwd", "x.mp4/000001", "..", "a b/Ω"}
    keys |= {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)}
    members = {}
    for key in keys:
        member = member_key(key)
        assert set(member) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_%-"), key
        assert sample_key_from_member(member) == key
        assert members.setdefault(member, key) == key, f"{key!r} and {members[member]!r} collide"
        name = f"{member}.smpl.npz"
        assert base_plus_ext(name) == (member, "smpl.npz") == split_member_name(name)
    assert member_key("vid_01/000004") == "vid_01__000004"
    assert member_key("a.mp4/000000") == "a%2Emp4__000000"
    for bad in ("a___b", "a%2e", "%41", "a.b", "a/b"):
        with pytest.raises(ValueError):
            sample_key_from_member(bad)
    with pytest.raises(ValueError, match="non-empty"):
        member_key("")


# ----------------------------------------------------------------------------- tar bytes and plans


def test_tar_is_deterministic_sorted_and_equals_tarfile_output():
    samples = [make_sample(k, seed=i) for i, k in enumerate(["b/000001", "a.mp4/000000", "b/000000" + "x" * 150])]
    data = tar_bytes(samples)
    assert tar_bytes(list(reversed(samples))) == data
    assert len(data) == tar_size(sum(sample_tar_size(s) for s in samples)) and len(data) % 10240 == 0
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in sorted(samples, key=lambda s: s.key):
            for ext in sorted(sample.fields):
                info = tarfile.TarInfo(f"{sample.member_key}.{ext}")
                info.size, info.mtime, info.mode, info.uname, info.gname = len(sample.fields[ext]), 0, 0o644, "", ""
                tar.addfile(info, io.BytesIO(sample.fields[ext]))
    assert data == expected.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name.split(".", 1)[1] for m in members[:3]] == ["jpg", "json", "smpl.npz"]
        assert members[0].name == "a%2Emp4__000000.jpg"
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
        assert all(m.pax_headers == {} for m in members if len(m.name) <= 100)
    with pytest.raises(ValueError, match="duplicate sample key"):
        tar_bytes([samples[0], samples[0]])

    # webdataset's own writer, pinned to the same header fields, writes the same bytes
    import webdataset as wds

    buffer = io.BytesIO()
    writer = wds.TarWriter(buffer, encoder=False, mtime=0, mode=0o644, user="", group="")
    for sample in sorted(samples, key=lambda s: s.key):
        writer.write({"__key__": sample.member_key, **sample.fields})
    writer.close()
    assert buffer.getvalue() == data


def test_plan_rolls_over_by_count_and_by_size():
    samples = [make_sample(f"v/{i:06d}", payload=9000, seed=i) for i in range(7)]
    sizes = [sample_tar_size(s) for s in samples]
    by_count = plan_shards(sizes, ShardConfig(max_samples_per_shard=3))
    assert [(p.name, p.start, p.stop) for p in by_count] == [
        ("shard-000000.tar", 0, 3), ("shard-000001.tar", 3, 6), ("shard-000002.tar", 6, 7)]
    limit = tar_size(sum(sizes[:2]))  # room for exactly two samples
    by_size = plan_shards(sizes, ShardConfig(max_bytes_per_shard=limit, name_pattern="part-{:03d}.tar"))
    assert [p.stop - p.start for p in by_size] == [2, 2, 2, 1]
    for entry in by_size:
        shard = tar_bytes(samples[entry.start : entry.stop])
        assert len(shard) == entry.num_bytes <= limit
    huge = plan_shards([sizes[0], limit * 3, sizes[1]], ShardConfig(max_bytes_per_shard=limit))
    assert [(p.start, p.stop) for p in huge] == [(0, 1), (1, 2), (2, 3)]  # an oversize sample sits alone
    assert plan_shards([], ShardConfig()) == []


@pytest.mark.parametrize("kwargs, field", [
    ({"max_samples_per_shard": 0}, "max_samples_per_shard"),
    ({"max_bytes_per_shard": 1000}, "max_bytes_per_shard"),
    ({"name_pattern": "shard.tar"}, "name_pattern"),
    ({"name_pattern": "../shard-{}.tar"}, "name_pattern"),
    ({"name_pattern": "shard-{}.zip"}, "name_pattern"),
    ({"name_pattern": "shard-{name}.tar"}, "name_pattern"),
])
def test_shard_config_is_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ShardConfig(**kwargs)


# ----------------------------------------------------------------------------- outside readers


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("readers") / "out"
    write_version(str(out), fake_rows(), shard_config=ShardConfig(max_samples_per_shard=4))
    return dv.version_url(str(out), "v1")


def test_webdataset_reads_our_shards(version_dir):
    import webdataset as wds

    urls = dv.shard_urls(version_dir)
    assert len(urls) == 2
    keys = dv.read_index(version_dir).column("member_key").to_pylist()
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == keys
    for sample in samples:
        assert sample["jpg"].shape == (8, 12, 3) and sample["jpg"].dtype == np.uint8
        assert sample["json"]["key"] == sample_key_from_member(sample["__key__"])
        assert sample["smpl.npz"]["joints3d"].shape == (24, 3)  # webdataset's own npz decoder
        assert sample["smpl.npz"]["betas"].dtype == np.float32


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_data_reads_our_shards(version_dir, ray_session):
    import ray.data

    rows = ray.data.read_webdataset(dv.shard_urls(version_dir), override_num_blocks=1).take_all()
    index = dv.read_index(version_dir).to_pydict()
    assert sorted(r["__key__"] for r in rows) == sorted(index["member_key"])
    row = next(r for r in rows if r["__key__"] == index["member_key"][0])
    assert row["jpg"].shape == (8, 12, 3) and row["json"]["key"] == index["key"][0]
    assert decode_npz(row["smpl.npz"])["keypoints2d"].shape == (17, 3)  # Ray leaves .npz as bytes
    assert json.loads(json.dumps(row["json"]))["input_key"] == index["input_key"][0]
