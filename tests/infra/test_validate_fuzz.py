"""Byte-flip fuzzing: one flipped byte anywhere in a version's files, or in the shard objects it
lists, is reported by `validate` as problems, never as a traceback; every flip inside a shard is
reported against that shard, and a flip inside a member's data names the sample and the member."""

import tarfile

import numpy as np
import pytest

from labelmill.infra.config import load_config
from labelmill.infra.formats.shards import ShardConfig, sample_key_from_member, split_member_name
from labelmill.infra.validate import validate_version
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import write_synthetic_corpus
from labelmill.pipelines.config import Pose3dConfig
from labelmill.pipelines.pose3d import run_pose3d

from test_dataset_version import fake_rows, write_version

SHARD_FLIPS = 200  # per kind of shard (shared store, a version's own shards/)
FILE_FLIPS = 40  # per other kind of file
REGIONS = ("header", "data", "padding", "end")  # of a tar: a flip in each must be seen
STOPPED = "validation stopped by an unexpected error"


@pytest.fixture(scope="module")
def pipeline_out(tmp_path_factory):
    """A pose3d run: 2 shards in the shared store, results.parquet, fits.json, shards.json."""
    root = tmp_path_factory.mktemp("fuzz")
    write_synthetic_corpus(str(root / "corpus"), SynthConfig(num_videos=2, num_frames=8, seed=3))
    cfg = load_config(Pose3dConfig, None, ["keypoints.backend=precomputed", "fit.solver.max_iter=20",
                                           "shards.max_samples_per_shard=6"])
    run = run_pose3d(cfg, input_url=str(root / "corpus" / "manifest.csv"), output_url=str(root / "out"),
                     engine_name="local")
    assert run.stats["shards"] == 2
    return root / "out", root / "out" / "versions" / run.version_id


@pytest.fixture(scope="module")
def own_shards_out(tmp_path_factory):
    """A version written by DatasetVersionWriter.add_samples: its own shards/*.tar."""
    out = tmp_path_factory.mktemp("fuzz_own") / "out"
    write_version(str(out), fake_rows(), shard_config=ShardConfig(max_samples_per_shard=4))
    return out


def tar_regions(path) -> dict[str, list[tuple[int, int, str | None]]]:
    """Byte ranges of a tar by kind: ``(start, stop, member name or None)``."""
    regions = {kind: [] for kind in REGIONS}
    end = 0
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            stop = member.offset_data + member.size
            regions["header"].append((member.offset, member.offset_data, member.name))
            regions["data"].append((member.offset_data, stop, member.name))
            end = -(-stop // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if end > stop:
                regions["padding"].append((stop, end, member.name))
    regions["end"].append((end, path.stat().st_size, None))
    return regions


def tar_positions(path, count: int, rng) -> list[tuple[int, str, str | None]]:
    """``count`` flip positions spread evenly over the tar's regions: ``(position, region, member)``."""
    out = []
    for kind, ranges in tar_regions(path).items():
        spots = [(p, name) for start, stop, name in ranges for p in range(start, stop)]
        for i in rng.choice(len(spots), size=min(count // len(REGIONS), len(spots)), replace=False):
            out.append((spots[i][0], kind, spots[i][1]))
    return out


def flip(path, positions, rng, url):
    """Yield ``(position, problems)`` for each position flipped (one at a time, then restored)."""
    original = path.read_bytes()
    try:
        for position in positions:
            data = bytearray(original)
            data[position] ^= int(rng.integers(1, 256))
            path.write_bytes(bytes(data))
            yield position, validate_version(str(url))
    finally:
        path.write_bytes(original)


def check_shard_flips(path, where, url, rng) -> dict[str, int]:
    """Flip bytes in every region of a shard; each flip is reported against the shard, a flip in
    member data also against that sample and member. Returns flips per region."""
    spots = tar_positions(path, SHARD_FLIPS // 2, rng)
    regions = {position: (region, member) for position, region, member in spots}
    done = dict.fromkeys(REGIONS, 0)
    for position, problems in flip(path, list(regions), rng, url):
        region, member = regions[position]
        text = [str(p) for p in problems]
        assert problems and not any(STOPPED in t for t in text), (region, position, text)
        assert any(where in p.where for p in problems), (region, position, text)
        if region == "data":
            stem, extension = split_member_name(member)
            at = f"{where} sample {sample_key_from_member(stem)}"
            assert any(p.where == at and p.what.startswith(f"member {extension!r}: sha256 differs") for p in problems), \
                (position, member, text)
        done[region] += 1
    return done


def test_every_flip_in_a_shared_shard_is_reported(pipeline_out):
    out, _ = pipeline_out
    assert validate_version(str(out)) == []
    rng = np.random.default_rng(0)
    done = dict.fromkeys(REGIONS, 0)
    for path in sorted((out / "objects" / "shards").glob("*.tar")):
        for region, n in check_shard_flips(path, f"objects/shards/{path.name}", out, rng).items():
            done[region] += n
    assert sum(done.values()) == SHARD_FLIPS and all(done.values()), done
    assert validate_version(str(out)) == []  # restored


def test_every_flip_in_a_version_shard_is_reported(own_shards_out):
    out = own_shards_out
    assert validate_version(str(out)) == []
    rng = np.random.default_rng(1)
    done = dict.fromkeys(REGIONS, 0)
    for path in sorted((out / "versions" / "v1" / "shards").glob("*.tar"))[:2]:
        for region, n in check_shard_flips(path, f"shards/{path.name}", out, rng).items():
            done[region] += n
    assert sum(done.values()) == SHARD_FLIPS and all(done.values()), done
    assert validate_version(str(out)) == []


def version_files(out, version) -> dict[str, list]:
    """Every other kind of file a version consists of, with the text a problem about it contains."""
    shards = out / "objects" / "shards"
    kinds = {name: [(version / name, name)] for name in (
        "index.parquet", "inputs.parquet", "stats.json", "config.yaml", "shards.json", "results.parquet", "fits.json")}
    kinds["_SUCCESS"] = [(version / "_SUCCESS", "_SUCCESS")]
    kinds["index object"] = [(p, p.name) for p in sorted(shards.glob("*.index.parquet"))]
    kinds["sidecar"] = [(p, p.name) for p in sorted(shards.glob("*.json"))]
    return kinds


def test_every_flip_in_any_other_file_is_reported(pipeline_out):
    out, version = pipeline_out
    rng = np.random.default_rng(2)
    flipped = {}
    for kind, files in version_files(out, version).items():
        assert files, kind
        flipped[kind] = 0
        for path, named in files:
            size = path.stat().st_size
            positions = rng.choice(size, size=min(FILE_FLIPS // len(files), size), replace=False).tolist()
            for position, problems in flip(path, positions, rng, out):
                text = [str(p) for p in problems]
                assert problems and not any(STOPPED in t for t in text), (kind, position, text)
                assert any(named in t for t in text), (kind, position, text)
                flipped[kind] += 1
    assert all(n >= FILE_FLIPS // 2 for n in flipped.values()), flipped
    assert validate_version(str(out)) == []
