"""Shard packing from stored fragments, and versions whose index is streamed from shard index objects."""

import collections
import json

import pyarrow.parquet as pq
import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.formats.shards import ShardConfig, sample_tar_size, tar_bytes
from labelmill.infra.packing import INDEX_EXTENSION, Fragment, PackShards, plan_shards, shard_object_url
from labelmill.infra.pipeline import batch_to_rows
from labelmill.infra.results import ResultStore, digest
from labelmill.infra.validate import validate_version
from labelmill.operators.pose3d.samples import batch_samples

from test_dataset_version import CONFIG_YAML, fake_batch, fake_rows, fake_video_row, write_version


def store_fragments(out, rows):
    """What the samples stage stores per input (tar fragment + index rows); the Fragments and input rows."""
    samples, inputs = batch_samples(fake_batch(rows))
    by_input = collections.defaultdict(list)
    for sample in samples:
        by_input[sample.index["input_key"]].append(sample)
    store, fragments = ResultStore(out), []
    for input_key, group in sorted(by_input.items()):
        group.sort(key=lambda s: s.key)
        key = digest("fragment", input_key)
        index_rows = [{**dict(s.index), "key": s.key, "member_key": s.member_key, "num_bytes": sample_tar_size(s)}
                      for s in group]
        store.write("samples", key, {"index_rows": index_rows})
        url = store.write_file("samples", key, "tar", tar_bytes(group))
        fragments.append(Fragment(input_key=input_key, key=key, url=url, samples=len(group),
                                  member_bytes=sum(r["num_bytes"] for r in index_rows)))
    return fragments, inputs


def pack_and_commit(out, fragments, inputs, config):
    shards = plan_shards(fragments, config)
    pack = PackShards(out_url=out)
    batch = {"key": [s.name for s in shards], "status": ["pending"] * len(shards), "reason": [None] * len(shards),
             "fragments": [[[f.url, f.member_bytes, f.samples, f.key] for f in s.fragments] for s in shards]}
    packed = {row["key"]: row for row in batch_to_rows(pack(batch))}
    assert all(row["status"] == "pending" for row in packed.values()), packed
    with dv.DatasetVersionWriter(out, version_id="shared", config_yaml=CONFIG_YAML) as writer:
        for spec in shards:
            sidecar = json.loads(packed[spec.name]["sidecar"])
            writer.add_shared_shard(spec.name, f"objects/shards/{spec.name}.tar", sidecar,
                                    index_url=shard_object_url(out, spec.name, INDEX_EXTENSION))
        writer.record_inputs(inputs)
        writer.commit()
    return shards


def index_rows(version):
    return pq.read_table(storage.join(version, "index.parquet")).to_pylist()


def test_a_version_indexed_from_shard_objects_equals_one_written_from_rows(tmp_path):
    rows = fake_rows()
    out = str(tmp_path / "out")
    fragments, inputs = store_fragments(out, rows)
    shards = pack_and_commit(out, fragments, inputs, ShardConfig(max_samples_per_shard=4))
    assert len(shards) >= 2
    version = dv.version_url(out, "shared")
    assert validate_version(version) == []  # shards, index and inputs agree, byte for byte
    reference = dv.version_url(str(tmp_path / "ref"), write_version(str(tmp_path / "ref"), rows))
    strip = [{k: v for k, v in row.items() if k != "shard"} for row in index_rows(version)]
    assert strip == [{k: v for k, v in row.items() if k != "shard"} for row in index_rows(reference)]
    assert {row["shard"] for row in index_rows(version)} == {s.name for s in shards}
    assert dv.read_stats(version)["samples"] == len(strip)


def test_index_objects_out_of_key_order_are_sorted_together(tmp_path):
    """Input "a" sorts before "a/0", but its samples ("a/000000") sort after "a/0/000000"."""
    rows = [fake_video_row("a", 3, seed=1), fake_video_row("a/0", 3, seed=2)]
    out = str(tmp_path / "out")
    fragments, inputs = store_fragments(out, rows)
    shards = pack_and_commit(out, fragments, inputs, ShardConfig(max_samples_per_shard=3))
    assert [s.fragments[0].input_key for s in shards] == ["a", "a/0"]
    keys = [row["key"] for row in index_rows(dv.version_url(out, "shared"))]
    assert keys == sorted(keys) and keys[0] == "a/0/000000"
    assert validate_version(dv.version_url(out, "shared")) == []


def test_an_index_object_that_disagrees_with_its_shard_is_refused(tmp_path):
    out = str(tmp_path / "out")
    fragments, inputs = store_fragments(out, fake_rows())
    shards = plan_shards(fragments, ShardConfig())
    PackShards(out_url=out)({"key": [shards[0].name], "status": ["pending"], "reason": [None],
                             "fragments": [[[f.url, f.member_bytes, f.samples, f.key] for f in shards[0].fragments]]})
    with pytest.raises(ValueError, match="rows; shard .* holds 99 samples"):
        with dv.DatasetVersionWriter(out, version_id="bad", config_yaml=CONFIG_YAML) as writer:
            writer.add_shared_shard(shards[0].name, "objects/shards/x.tar", {"bytes": 1, "sha256": "0", "samples": 99},
                                    index_url=shard_object_url(out, shards[0].name, INDEX_EXTENSION))
            writer.record_inputs(inputs)
            writer.commit()
    assert dv.read_latest(out) is None
    with pytest.raises(ValueError, match="not both"):
        dv.DatasetVersionWriter(out, config_yaml=CONFIG_YAML).add_shared_shard("s", "p", {"bytes": 1}, [], index_url="u")
