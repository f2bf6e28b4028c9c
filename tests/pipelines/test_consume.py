"""labelmill.pipelines.consume: splitting over ranks and workers, filters, decoding, validation, DDP."""

import collections
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from labelmill.infra import dataset_version as dv
from labelmill.infra.config import load_config
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import write_synthetic_corpus
from labelmill.operators.synth.segmentation import SegmentationSynthConfig, write_segmentation_corpus
from labelmill.pipelines import consume_plan
from labelmill.pipelines.config import Pose3dConfig, SegmentationConfig
from labelmill.pipelines.consume import collate, pose3d_frames, segmentation_images
from labelmill.pipelines.pose3d import run_pose3d
from labelmill.pipelines.segmentation import run_segmentation


@pytest.fixture(scope="module")
def pose_out(tmp_path_factory):
    """A pose3d version of 3 short videos: 3 shards (one per video)."""
    root = tmp_path_factory.mktemp("consume_pose")
    write_synthetic_corpus(str(root / "corpus"), SynthConfig(num_videos=3, num_frames=7, seed=3, width=160, height=120))
    cfg = load_config(Pose3dConfig, None, ["keypoints.backend=precomputed", "fit.solver.max_iter=10",
                                           "shards.max_samples_per_shard=5"])
    run_pose3d(cfg, input_url=str(root / "corpus" / "manifest.csv"), output_url=str(root / "out"), engine_name="local")
    out = str(root / "out")
    assert len(dv.shard_urls(out)) == 3
    return out


@pytest.fixture(scope="module")
def seg_out(tmp_path_factory):
    """A segmentation version of a few images in 2-sample shards."""
    root = tmp_path_factory.mktemp("consume_seg")
    write_segmentation_corpus(str(root / "corpus"), SegmentationSynthConfig(num_images=6, seed=0))
    cfg = load_config(SegmentationConfig, None, ["stuff.enabled=false", "shards.max_samples_per_shard=2"])
    run_segmentation(cfg, input_url=str(root / "corpus" / "annotations.json"), output_url=str(root / "out"),
                     images=str(root / "corpus" / "images"), engine_name="local")
    return str(root / "out")


def _index(out):
    return dv.read_index(dv.resolve_version(out).url).to_pylist()


def _rank_keys(make, world_size, num_workers, epoch=0):
    """{rank: [batch keys, ...]} from a DataLoader with ``num_workers`` workers per simulated rank."""
    out = {}
    for rank in range(world_size):
        dataset = make(rank=rank, world_size=world_size)
        dataset.set_epoch(epoch)
        out[rank] = [batch["key"] for batch in dataset.loader(num_workers=num_workers)]
        assert len(out[rank]) == len(dataset)
    return out


# ----------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("drop_last", [False, True])
def test_plan_gives_every_rank_the_same_batches(drop_last):
    for total, world, workers, batch in itertools.product((0, 1, 2, 5, 7, 16, 33), (1, 2, 3, 4), (1, 2, 3), (1, 2, 4)):
        order = consume_plan.epoch_order(total, epoch=1, seed=5, shuffle=True)
        ranks = [consume_plan.rank_batches(order, rank=r, world_size=world, batch_size=batch, drop_last=drop_last)
                 for r in range(world)]
        assert len({len(b) for b in ranks}) == 1, (total, world, batch)
        assert all(1 <= len(x) <= batch for b in ranks for x in b)
        if drop_last:
            assert all(len(x) == batch for b in ranks for x in b)
        seen = collections.Counter(int(i) for b in ranks for x in b for i in x)
        if not drop_last and total // world >= len(ranks[0]):  # no padding needed
            assert seen == collections.Counter(range(total)), (total, world, batch)
        assert set(seen) <= set(range(total)) and (drop_last or set(seen) == set(range(total)))
        for b in ranks:  # workers split a rank's batches without loss or overlap
            split = [consume_plan.worker_batches(b, worker=w, num_workers=workers) for w in range(workers)]
            assert sorted(id(x) for s in split for x in s) == sorted(id(x) for x in b)


def test_epoch_order_is_seeded_and_changes_with_the_epoch():
    a = consume_plan.epoch_order(50, epoch=0, seed=1, shuffle=True)
    assert np.array_equal(a, consume_plan.epoch_order(50, epoch=0, seed=1, shuffle=True))
    assert not np.array_equal(a, consume_plan.epoch_order(50, epoch=1, seed=1, shuffle=True))
    assert not np.array_equal(a, consume_plan.epoch_order(50, epoch=0, seed=2, shuffle=True))
    assert sorted(a) == list(range(50))


# ----------------------------------------------------------------------------- pose3d


def test_two_ranks_two_workers_three_shards_see_every_sample_once(pose_out):
    keys = [row["key"] for row in _index(pose_out)]
    # the case that matters: dealing samples evenly and batching each rank's share would give
    # the two ranks different numbers of batches
    assert -(-(len(keys) // 2) // 5) != -(-(len(keys) - len(keys) // 2) // 5)
    for epoch in (0, 1):
        ranks = _rank_keys(lambda **kw: pose3d_frames(pose_out, batch_size=5, shuffle=True, seed=7, **kw), 2, 2, epoch)
        assert len(ranks[0]) == len(ranks[1]) > 0
        seen = collections.Counter(k for batches in ranks.values() for batch in batches for k in batch)
        assert seen == collections.Counter(keys)
    orders = [[k for b in _rank_keys(lambda **kw: pose3d_frames(pose_out, batch_size=4, shuffle=True, seed=7, **kw),
                                      2, 0, e)[0] for k in b] for e in (0, 1)]
    assert orders[0] != orders[1]  # set_epoch reshuffles


def test_pose3d_tensors_and_collate(pose_out):
    dataset = pose3d_frames(pose_out, batch_size=3, rank=0, world_size=1)
    batch = next(iter(dataset))
    shapes = {"betas": (10,), "global_orient": (3,), "body_pose": (69,), "camera": (3,), "joints3d": (24, 3),
              "keypoints3d": (17, 3), "keypoints2d": (17, 3), "projected2d": (17, 2), "keypoints3d_init": (17, 3)}
    for name, shape in shapes.items():
        assert batch[name].dtype == torch.float32 and tuple(batch[name].shape) == (3, *shape), name
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[:2] == (3, 3)
    assert batch["frame"].dtype == torch.int64 and batch["frame_loss"].dtype == torch.float32
    rows = {row["key"]: row for row in _index(pose_out)}
    for i, key in enumerate(batch["key"]):
        assert batch["frame_loss"][i].item() == pytest.approx(rows[key]["frame_loss"], rel=1e-6)
        assert batch["meta"][i]["key"] == key and batch["label"][i] == rows[key]["label"]
    # JSON nulls and images of different sizes do not break collation
    merged = collate([{"t": None, "x": torch.zeros(2, 3)}, {"t": 1.5, "x": torch.zeros(2, 4)}])
    assert merged["t"] == [None, 1.5] and [tuple(x.shape) for x in merged["x"]] == [(2, 3), (2, 4)]


def test_pose3d_filters_drop_exactly_the_samples_over_the_limits(pose_out):
    rows = _index(pose_out)
    everything = pose3d_frames(pose_out, rank=0, world_size=1)
    confident = {everything.refs[i].key: int((everything.sample(i)["keypoints2d"][:, 2] >= 0.9).sum())
                 for i in range(len(everything.refs))}
    losses = sorted(r["frame_loss"] for r in rows)
    frame_limit = losses[len(losses) // 2]
    video_limit = sorted(r["video_loss"] for r in rows)[-1] - 1e-9  # drops the worst video
    needed = sorted(confident.values())[len(confident) // 2]
    label = rows[0]["label"]
    cases = [
        (dict(max_frame_loss=frame_limit), {r["key"] for r in rows if r["frame_loss"] <= frame_limit}),
        (dict(max_video_loss=video_limit), {r["key"] for r in rows if r["video_loss"] <= video_limit}),
        (dict(labels=[label]), {r["key"] for r in rows if r["label"] == label}),
        (dict(min_confident_keypoints=needed, keypoint_confidence=0.9), {k for k, n in confident.items() if n >= needed}),
        (dict(max_frame_loss=frame_limit, min_confident_keypoints=needed, keypoint_confidence=0.9),
         {r["key"] for r in rows if r["frame_loss"] <= frame_limit and confident[r["key"]] >= needed}),
    ]
    for options, expected in cases:
        assert 0 < len(expected) < len(rows), options  # each case drops some, keeps some
        dataset = pose3d_frames(pose_out, rank=0, world_size=1, images=False, **options)
        assert set(dataset.keys) == expected, options
        assert {sample["key"] for sample in dataset} == expected, options


def test_resample_repeats_epochs_without_end(pose_out):
    dataset = pose3d_frames(pose_out, shuffle=True, seed=3, resample=True, images=False, rank=0, world_size=1)
    per_epoch = len(dataset)
    assert per_epoch == len(_index(pose_out))
    keys = [s["key"] for s in itertools.islice(iter(dataset), 3 * per_epoch)]
    epochs = [keys[i * per_epoch:(i + 1) * per_epoch] for i in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2]) and len(set(epochs[0])) == per_epoch
    assert epochs[0] != epochs[1]


def test_corrupted_member_and_wrong_schema_raise_naming_shard_key_field(pose_out, seg_out, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(pose_out, copy)
    dataset = pose3d_frames(str(copy), rank=0, world_size=1)
    ref = dataset.refs[0]
    data = bytearray(open(ref.shard_url, "rb").read())
    start = data.index(b'{"', ref.offset)  # the json member's data
    data[start + 1] = ord("X")
    open(ref.shard_url, "wb").write(bytes(data))
    with pytest.raises(ValueError, match=rf"{ref.shard_url} sample '{ref.key}': field 'json': sha256"):
        dataset.sample(0)
    with pytest.raises(ValueError, match=rf"sample '{ref.key}': field 'json' breaks schema pose3d/1: json: not valid UTF-8 JSON"):
        pose3d_frames(str(copy), rank=0, world_size=1, verify=False).sample(0)
    with pytest.raises(ValueError, match="segmentation/1 samples, not pose3d"):
        pose3d_frames(seg_out)
    with pytest.raises(ValueError, match="labels must be a collection"):
        pose3d_frames(pose_out, labels="wave")


# ----------------------------------------------------------------------------- segmentation


def test_segmentation_tensors_filters_and_more_slots_than_samples(seg_out):
    rows = _index(seg_out)
    dataset = segmentation_images(seg_out, batch_size=2, rank=0, world_size=1)
    batch = next(iter(dataset))
    height, width = rows[0]["height"], rows[0]["width"]
    assert batch["image"].dtype == torch.uint8 and tuple(batch["image"].shape) == (2, 3, height, width)
    assert batch["sem"].dtype == torch.uint8 and tuple(batch["sem"].shape) == (2, height, width)
    assert batch["inst"].dtype == torch.int32 and int(batch["inst"].max()) == max(
        s["id"] for m in batch["meta"] for s in m["segments"])
    limit = sorted(r["ignore_fraction"] for r in rows)[len(rows) // 2]
    filtered = segmentation_images(seg_out, max_ignore_fraction=limit, rank=0, world_size=1)
    assert set(filtered.keys) == {r["key"] for r in rows if r["ignore_fraction"] <= limit} != {r["key"] for r in rows}
    categories = {r["key"]: {s["category"] for s in segmentation_images(seg_out, rank=0, world_size=1, images=False)
                             .sample(i)["meta"]["segments"]} for i, r in enumerate(rows)}
    some = sorted(set.union(*categories.values()))[0]
    by_label = segmentation_images(seg_out, labels=[some], rank=0, world_size=1)
    assert set(by_label.keys) == {k for k, c in categories.items() if some in c}
    # 3 ranks x 2 workers = 6 readers for fewer samples: equal batches, every sample once
    ranks = _rank_keys(lambda **kw: segmentation_images(seg_out, batch_size=2, images=False, **kw), 3, 2)
    assert len(rows) < 6 and len({len(b) for b in ranks.values()}) == 1
    seen = collections.Counter(k for b in ranks.values() for batch in b for k in batch)
    assert set(seen) == {r["key"] for r in rows}


# ----------------------------------------------------------------------------- torch.distributed


_DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist
    from labelmill.pipelines.consume import pose3d_frames

    url, result = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo", init_method="env://")
    dataset = pose3d_frames(url, batch_size=5, shuffle=True, seed=1, images=False)
    keys, batches = [], 0
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for batch in dataset.loader(num_workers=2):
            total = torch.tensor([len(batch["key"])])
            dist.all_reduce(total)            # a rank with a batch fewer would hang here
            batches += 1
            if epoch == 0:
                keys += batch["key"]
    dist.barrier()
    json.dump({"rank": dist.get_rank(), "batches": batches, "keys": keys}, open(result, "w"))
    dist.destroy_process_group()
""")


def test_two_process_gloo_run_finishes(pose_out, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), pose_out, str(tmp_path / f"r{rank}.json")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outputs = [p.communicate(timeout=150)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads((tmp_path / f"r{rank}.json").read_text()) for rank in range(2)]
    assert results[0]["batches"] == results[1]["batches"] > 0
    assert sorted(results[0]["keys"] + results[1]["keys"]) == sorted(r["key"] for r in _index(pose_out))
