"""Engines: local, Ray Data and Beam run one toy pipeline to identical per-key outputs.

The Ray session is started once for this module (about 3 s and 0.8 GB) and shut down at the end.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import uuid
from typing import Any

import numpy as np
import pytest

from labelmill.infra.config import ConfigError, from_dict
from labelmill.infra.engines import Engine, EngineConfig, collect_by_key, get_engine
from labelmill.infra.engines.base import call_stage, prepare_items
from labelmill.infra.formats.payload import (
    PayloadError,
    decode_item,
    encode_item,
    find_unsupported,
    items_to_table,
    table_to_items,
)
from labelmill.infra.pipeline import Pipeline, Stage

# ----------------------------------------------------------------------------- toy operators


def _record_setup(log_dir: str | None, stage: str) -> None:
    if log_dir:
        path = os.path.join(log_dir, f"{stage}-{os.getpid()}-{uuid.uuid4().hex}")
        with open(path, "w", encoding="utf-8"):
            pass


class MakeSignal:
    """Stage 1: a ragged (n, 3) float32 signal per item; keys ending in 'bad' fail."""

    def __init__(self, *, setup_log_dir: str | None = None) -> None:
        self.setup_log_dir = setup_log_dir
        self.ready = False

    def setup(self) -> None:
        _record_setup(self.setup_log_dir, "make")
        self.ready = True

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        if not self.ready:
            raise RuntimeError("MakeSignal called before setup()")
        out = dict(batch)
        status, reason = list(batch["status"]), list(batch["reason"])
        signal, positive, lengths = [], [], []
        for i, key in enumerate(batch["key"]):
            index = int(key.split("-")[1][:3])
            if key.endswith("bad"):
                status[i], reason[i] = "failed", f"item {key}: bad input"
                signal.append(None)
                positive.append(None)
                lengths.append(-1)
                continue
            n = index % 4  # 0 gives an empty (0, 3) array
            values = np.arange(n * 3, dtype=np.float32).reshape(n, 3) * np.float32(index + 0.5)
            signal.append(values)
            positive.append(np.array(bool(index % 2)))  # 0-d bool array
            lengths.append(n)
        out.update(signal=signal, positive=positive, status=status, reason=reason)
        out["length"] = np.asarray(lengths, dtype=np.int32)  # a column held as an array
        return out


class AttachBytes:
    """Stage 2: raw bytes of each row plus nested string tags; failed items are skipped."""

    def __init__(self, *, setup_log_dir: str | None = None) -> None:
        self.setup_log_dir = setup_log_dir

    def setup(self) -> None:
        _record_setup(self.setup_log_dir, "bytes")

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        out = dict(batch)
        chunks, tags = [], []
        for status, key, signal in zip(batch["status"], batch["key"], batch["signal"]):
            if status == "failed":
                chunks.append(None)
                tags.append(None)
                continue
            chunks.append([row.tobytes() for row in signal])
            tags.append([[key, "é"], [], ["x" * len(signal)]])
        out.update(chunks=chunks, tags=tags)
        return out


class Summarise:
    """Stage 3 (asks for a GPU): a scalar per item; raises for a batch holding a 'boom' key."""

    resources = {"num_gpus": 1, "batch_size": 5, "num_cpus": 0.25}

    def __init__(self, *, setup_log_dir: str | None = None) -> None:
        self.setup_log_dir = setup_log_dir

    def setup(self) -> None:
        _record_setup(self.setup_log_dir, "summarise")

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        boom = [k for k in batch["key"] if k.endswith("boom")]
        if boom:
            raise ValueError(f"cannot summarise {boom[0]}")
        out = dict(batch)
        out["total"] = [None if s == "failed" else float(x.sum()) for s, x in zip(batch["status"], batch["signal"])]
        out["label"] = [None if s == "failed" else f"n={len(x)}" for s, x in zip(batch["status"], batch["signal"])]
        return out


class MarkWritten:
    """Sink stage: stands in for the shard writer (adds a column, runs last inside the engine)."""

    def setup(self) -> None:
        pass

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        return {**batch, "written": [s != "failed" for s in batch["status"]]}


def toy_pipeline(setup_log_dir: str | None = None) -> Pipeline:
    return Pipeline(
        "toy",
        [
            Stage("make", MakeSignal(setup_log_dir=setup_log_dir), batch_size=4, num_cpus=0.25, concurrency=2),
            Stage("bytes", AttachBytes(setup_log_dir=setup_log_dir), batch_size=3, num_cpus=0.25),
            Stage.of("summarise", Summarise(setup_log_dir=setup_log_dir)),
        ],
    )


def toy_items(n: int = 30) -> list[dict[str, Any]]:
    items = []
    for i in range(n):
        key = f"it-{i:03d}" + ("bad" if i % 7 == 3 else "") + ("boom" if i % 11 == 5 else "")
        items.append({"key": key, "source": f"video_{i}.mp4"})
    return items


SINK = Stage("sink", MarkWritten(), batch_size=8, num_cpus=0.25)

# ----------------------------------------------------------------------------- comparison helpers


def same(a: Any, b: Any) -> bool:
    """Exact equality: same types, arrays byte-for-byte (dtype, shape, memory order), NaN == NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.flags.f_contiguous == b.flags.f_contiguous and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def assert_same_outputs(expected: dict[str, dict], actual: dict[str, dict], engine: str) -> None:
    assert sorted(actual) == sorted(expected), f"{engine}: keys differ"
    for key, row in expected.items():
        columns = set(row) | set(actual[key])
        for column in columns:
            assert same(row.get(column), actual[key].get(column)), (
                f"{engine}: item {key} column {column}: {row.get(column)!r} != {actual[key].get(column)!r}"
            )


# ----------------------------------------------------------------------------- payload codec

ROUND_TRIP_VALUES = {
    "float32_2d": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "float64_fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    "int_0d": np.array(7, dtype=np.int64),
    "bool_3d": np.arange(24).reshape(2, 3, 4) % 3 == 0,
    "empty": np.zeros((0, 3), dtype=np.float32),
    "big_endian": np.arange(4, dtype=">i2"),
    "structured": np.array([(1, 2.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
    "unicode_array": np.array(["ab", "c"]),
    "strided_view": np.arange(20, dtype=np.uint8).reshape(4, 5)[:, ::2],
    "np_float32": np.float32(1.5),
    "np_int32": np.int32(-3),
    "np_bool": np.bool_(True),
    "np_float64": np.float64(0.1),
    "np_str": np.str_("hé"),
    "np_datetime": np.datetime64("2020-01-02", "D"),
    "np_structured_scalar": np.array([(1, 2.5)], dtype=[("a", "<i4"), ("b", "<f8")])[0],
    "complex": np.array([1 + 2j], dtype=np.complex64),
    "bytes": b"\x00\xffJPEG",
    "empty_bytes": b"",
    "bytearray_as_bytes": bytearray(b"ab"),
    "bytes_list": [b"a", b"", b"\x89PNG"],
    "str": "naïve ☃ \ud800",
    "none": None,
    "int": 2**70,
    "float": 0.1,
    "neg_zero": -0.0,
    "nan": float("nan"),
    "inf": float("-inf"),
    "bool": False,
    "nested_str_lists": [["a", "b"], [], [["c"]]],
    "tuple": (1, "x", None),
    "dict": {"bbox": [1.0, 2.0], "kept": True, "arr": np.ones(2, dtype=np.float16)},
    "list_of_arrays": [np.zeros((2, 2)), np.ones(0, dtype=np.int8)],
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_VALUES))
def test_payload_round_trips_every_value_type(name):
    item = {"key": "k/000001", name: ROUND_TRIP_VALUES[name]}
    payload = encode_item(item)
    decoded = decode_item(payload)
    assert list(decoded) == ["key", name]
    expected = bytes(item[name]) if isinstance(item[name], bytearray) else item[name]  # documented: comes back as bytes
    assert same(decoded[name], expected), f"{name}: {decoded[name]!r} != {expected!r}"
    assert encode_item(decoded) == payload  # deterministic
    if isinstance(decoded[name], np.ndarray):
        assert decoded[name].flags.writeable and decoded[name].flags.owndata


def test_payload_is_pickle_free_and_rejects_unsupported_values():
    payload = encode_item({"key": "a", "x": np.arange(3)})
    assert payload.startswith(b"LMP1") and b"pickle" not in payload
    with pytest.raises(PayloadError, match=r"field 'meta.when'.*datetime"):
        import datetime

        encode_item({"key": "a", "meta": {"when": datetime.date(2020, 1, 1)}})
    with pytest.raises(PayloadError, match="field 'objs'.*dtype object"):
        encode_item({"key": "a", "objs": np.array([None, 1], dtype=object)})
    assert "field 'x[1]'" in find_unsupported([1, {1, 2}], "x")
    assert find_unsupported({"a": [b"x", np.zeros(2)]}) is None
    with pytest.raises(PayloadError, match="not a labelmill payload"):
        decode_item(b"\x80\x04pickle")
    with pytest.raises(PayloadError, match="does not match its header"):
        decode_item(payload[:-1])


def test_arrow_table_round_trip_survives_slicing():
    items = [{"key": f"k{i}", "frames": [bytes([i]) * i], "x": np.full((i, 2), i, dtype=np.float32)} for i in range(6)]
    table = items_to_table(items, extra_columns={"_seconds_0": [0.5] * 6})
    assert table.schema.field("payload").type == "large_binary"
    for got, want in zip(table_to_items(table.slice(2, 3)), items[2:5]):
        assert all(same(got[k], want[k]) for k in want)


# ----------------------------------------------------------------------------- config


def test_engine_config_validation_names_the_key():
    with pytest.raises(ValueError, match="'stages.detect.num_gpu'"):
        EngineConfig(stages={"detect": {"num_gpu": 1}})
    with pytest.raises(ValueError, match="'stages.detect.batch_size' must be an integer"):
        EngineConfig(stages={"detect": {"batch_size": 2.5}})
    with pytest.raises(ValueError, match="'stages.detect.num_cpus' must be > 0"):
        EngineConfig(stages={"detect": {"num_cpus": 0}})
    with pytest.raises(ValueError, match=r"'beam_options\[0\]' sets --runner"):
        EngineConfig(beam_options=["--runner=DataflowRunner"])
    with pytest.raises(ValueError, match="'ray_num_cpus'"):
        EngineConfig(ray_num_cpus=0)
    with pytest.raises(ConfigError, match="'engine.name'"):
        from_dict(EngineConfig, {"name": "spark"}, prefix="engine")
    with pytest.raises(ConfigError, match="stages.make.concurrency"):
        from_dict(EngineConfig, {"stages": {"make": {"concurrency": 0}}}, prefix="engine")


def test_engine_config_overrides_apply_and_unknown_stage_names_are_named():
    pipeline = toy_pipeline()
    stages = EngineConfig(stages={"bytes": {"batch_size": 6, "concurrency": 3, "num_cpus": 0.5}}).apply(pipeline)
    assert (stages[1].batch_size, stages[1].concurrency, stages[1].num_cpus) == (6, 3, 0.5)
    assert pipeline.stages[1].batch_size == 3  # the pipeline itself is unchanged
    with pytest.raises(ConfigError, match="'detect'.*has stages: make, bytes, summarise"):
        EngineConfig(stages={"detect": {"num_gpus": 1}}).apply(pipeline)
    with pytest.raises(ValueError, match="config for engine 'local'"):
        get_engine("ray", EngineConfig(name="local"))


# ----------------------------------------------------------------------------- shared engine logic


def test_prepare_items_checks_keys_and_adds_status():
    rows = prepare_items([{"key": "a"}, {"key": "b", "status": "failed", "reason": "upstream"}])
    assert [(r["status"], r["reason"]) for r in rows] == [("pending", None), ("failed", "upstream")]
    with pytest.raises(ValueError, match="duplicate work item key 'a'"):
        prepare_items([{"key": "a"}, {"key": "a"}])
    with pytest.raises(ValueError, match="item #1 needs a non-empty string 'key'"):
        prepare_items([{"key": "a"}, {"uri": "x"}])


def test_call_stage_isolates_errors_and_unencodable_outputs():
    class Picky:
        def setup(self) -> None:
            pass

        def __call__(self, batch):
            for key in batch["key"]:
                if key.startswith("boom"):
                    raise KeyError(key)
            return {**batch, "out": [{1, 2} if k == "set" else 1 for k in batch["key"]]}

    rows = prepare_items([{"key": "a"}, {"key": "boom"}, {"key": "set"}, {"key": "boom2", "status": "failed", "reason": "early"}])
    out, seconds = call_stage("picky", Picky(), rows)
    assert [r["key"] for r in out] == ["a", "boom", "set", "boom2"] and seconds >= 0
    assert (out[3]["status"], out[3]["reason"]) == ("failed", "early")  # the first reason is kept
    assert out[0]["status"] == "pending" and out[0]["out"] == 1
    assert out[1]["status"] == "failed" and out[1]["reason"] == "stage picky: item boom: KeyError: 'boom'"
    assert out[2]["status"] == "failed" and out[2]["out"] is None and "builtins.set" in out[2]["reason"]

    class Reorders:
        def setup(self) -> None:
            pass

        def __call__(self, batch):
            return {k: list(reversed(v)) for k, v in batch.items()}

    with pytest.raises(RuntimeError, match="stage rev: operator Reorders changed the items' keys"):
        call_stage("rev", Reorders(), rows[:2])


# ----------------------------------------------------------------------------- local engine


def test_local_engine_streams_batch_by_batch():
    calls: list[tuple[str, int]] = []

    class Logged:
        def __init__(self, name: str) -> None:
            self.name = name

        def setup(self) -> None:
            pass

        def __call__(self, batch):
            calls.append((self.name, len(batch["key"])))
            return batch

    pipeline = Pipeline("log", [Stage("one", Logged("one"), batch_size=2), Stage("two", Logged("two"), batch_size=2)])
    engine = get_engine("local")
    output = engine.run(pipeline, [{"key": f"k{i}"} for i in range(6)])
    first = next(output)
    assert first["key"] == ["k0", "k1"]
    assert calls == [("one", 2), ("two", 2)]  # nothing beyond the first batch was read yet
    rest = list(output)
    assert [b["key"] for b in rest] == [["k2", "k3"], ["k4", "k5"]]
    assert calls == [("one", 2), ("two", 2)] * 3
    assert engine.stats.stage("one").items == 6 and engine.stats.items == 6


def test_local_engine_runs_setup_once_and_records_stats(tmp_path):
    engine = get_engine("local")
    outputs = collect_by_key(engine.run(toy_pipeline(str(tmp_path)), toy_items(12), sink_stage=SINK))
    assert len(outputs) == 12
    assert sorted(p.split("-")[0] for p in os.listdir(tmp_path)) == ["bytes", "make", "summarise"]
    stats = engine.stats.as_dict()
    assert [s["name"] for s in stats["stages"]] == ["make", "bytes", "summarise", "sink"]
    assert all(s["items"] == 12 and s["seconds"] > 0 for s in stats["stages"])
    assert stats["failed"] == sum(1 for k in outputs if k.endswith(("bad", "boom")))


# ----------------------------------------------------------------------------- all engines


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    # Ray workers cannot import this test module: ship its toy operators by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def engine_runs(ray_session, tmp_path_factory):
    """The toy pipeline (with sink) on every engine: {engine: (outputs by key, engine, setup dir)}."""
    pytest.importorskip("apache_beam")
    runs = {}
    for name in ("local", "ray", "beam"):
        setup_dir = tmp_path_factory.mktemp(f"setup-{name}")
        engine = get_engine(name)
        outputs = collect_by_key(engine.run(toy_pipeline(str(setup_dir)), toy_items(), sink_stage=SINK))
        runs[name] = (outputs, engine, setup_dir)
    return runs


def test_toy_pipeline_local_outputs_are_what_the_operators_make(engine_runs):
    outputs, _, _ = engine_runs["local"]
    assert len(outputs) == 30
    good = outputs["it-002"]
    assert good["status"] == "pending" and good["reason"] is None and good["written"] is True
    assert good["signal"].dtype == np.float32 and good["signal"].shape == (2, 3)
    assert good["chunks"] == [row.tobytes() for row in good["signal"]]
    assert good["length"] == np.int32(2) and type(good["length"]) is np.int32
    assert good["total"] == pytest.approx(float(good["signal"].sum())) and good["label"] == "n=2"
    assert outputs["it-004"]["signal"].shape == (0, 3)
    bad = outputs["it-003bad"]
    assert (bad["status"], bad["reason"], bad["signal"], bad["written"]) == ("failed", "item it-003bad: bad input", None, False)
    boom = outputs["it-005boom"]
    assert boom["status"] == "failed" and boom["reason"] == "stage summarise: item it-005boom: ValueError: cannot summarise it-005boom"
    assert boom["chunks"] is not None and boom.get("total") is None


@pytest.mark.parametrize("engine_name", ["ray", "beam"])
def test_engines_give_identical_outputs_per_key(engine_runs, engine_name):
    expected, _, _ = engine_runs["local"]
    actual, engine, _ = engine_runs[engine_name]
    assert_same_outputs(expected, actual, engine_name)  # collect_by_key already proved each key came out once
    stats = engine.stats
    assert stats.items == 30 and stats.failed == sum(1 for r in expected.values() if r["status"] == "failed")
    assert [s.items for s in stats.stages] == [30, 30, 30, 30] and all(s.seconds > 0 for s in stats.stages)


def test_ray_gpu_stage_falls_back_to_cpu(engine_runs, caplog):
    _, engine, _ = engine_runs["ray"]
    assert engine.placements["summarise"]["num_gpus"] == 0.0  # it ran: outputs compared above
    assert engine.placements["make"] == {"batch_size": 4, "num_cpus": 0.25, "num_gpus": 0.0, "min_size": 2, "max_size": 2}
    # bytes, summarise (on CPU here) and the sink have no fixed concurrency: one autoscaling pool,
    # which asks for the largest CPU request of its stages and grows to what the cluster holds
    assert engine.pools == [["make"], ["bytes", "summarise", "sink"]]
    assert engine.placements["bytes"] == engine.placements["summarise"] == {
        "batch_size": 8, "num_cpus": 0.25, "num_gpus": 0.0, "min_size": 1, "max_size": 8}
    from labelmill.infra.engines.ray_engine import fit_cpus, stage_placement

    with caplog.at_level(logging.WARNING):
        placement = stage_placement(toy_pipeline().stages[2], cluster_gpus=0)
    assert placement["num_gpus"] == 0 and "stage summarise asks for 1 GPU(s)" in caplog.text
    assert stage_placement(toy_pipeline().stages[2], cluster_gpus=4)["num_gpus"] == 1
    fitted = fit_cpus([{"num_cpus": 1.0, "min_size": 2}, {"num_cpus": 1.0, "min_size": 2}], cluster_cpus=2)
    assert sum(p["num_cpus"] * p["min_size"] for p in fitted) == pytest.approx(1.8)


def test_ray_pools_fuse_consecutive_stages_of_one_device_kind():
    from labelmill.infra.engines.ray_engine import fuse_stages, pool_placement

    def place(gpus, concurrency=None):
        return {"batch_size": 4, "num_cpus": 0.5, "num_gpus": gpus, "concurrency": concurrency}

    cpu, gpu = place(0.0), place(1.0)
    assert fuse_stages([cpu, cpu, gpu, gpu, cpu, cpu], fuse=True) == [[0, 1], [2, 3], [4, 5]]
    assert fuse_stages([cpu, place(0.0, 3), cpu], fuse=True) == [[0], [1], [2]]  # a fixed pool stays alone
    assert fuse_stages([cpu, cpu], fuse=False) == [[0], [1]]
    pool = pool_placement([cpu, {**cpu, "num_cpus": 1.0, "batch_size": 16}], cluster_cpus=40, cluster_gpus=0)
    assert pool == {"batch_size": 16, "num_cpus": 1.0, "num_gpus": 0.0, "min_size": 1, "max_size": 40}
    assert pool_placement([gpu], cluster_cpus=64, cluster_gpus=8)["max_size"] == 8
    assert pool_placement([place(0.0, 3)], cluster_cpus=64, cluster_gpus=0)["min_size"] == 3


@pytest.mark.parametrize("engine_name,per_stage", [("local", 1), ("ray", None), ("beam", 1)])
def test_setup_runs_once_per_worker(engine_runs, engine_name, per_stage):
    _, _, setup_dir = engine_runs[engine_name]
    calls: dict[str, list] = {}
    for name in os.listdir(setup_dir):
        stage, pid, _ = name.split("-")
        calls.setdefault(stage, []).append(pid)
    for stage, pids in calls.items():
        if per_stage is not None:
            assert len(pids) == per_stage, f"{engine_name}: {stage} set up {len(pids)} times"
        else:  # ray: one setup per actor process; make has a fixed pool of 2, the fused pool 1..8
            assert len(set(pids)) == len(pids)
            assert len(pids) == 2 if stage == "make" else 1 <= len(pids) <= 8
    if per_stage is None:  # the fused stages ran in the same actors
        assert sorted(calls["bytes"]) == sorted(calls["summarise"])
    assert sorted(calls) == ["bytes", "make", "summarise"]


def test_beam_options_pass_through():
    pytest.importorskip("apache_beam")
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from labelmill.infra.engines.beam_engine import pipeline_options

    options = pipeline_options(EngineConfig(name="beam", beam_options=["--direct_num_workers=2", "--direct_running_mode=multi_processing"]))
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"


def random_items(n: int, nbytes: int = 1024) -> list[dict[str, Any]]:
    """Items with incompressible blobs (Beam compresses what it pickles into the graph)."""
    rng = np.random.default_rng(n)
    return [{"key": f"r-{i:05d}", "blob": rng.bytes(nbytes)} for i in range(n)]


def test_beam_input_files_hold_every_item_in_bounded_row_groups(tmp_path):
    pytest.importorskip("apache_beam")
    import pyarrow.parquet as pq

    from labelmill.infra.engines.beam_engine import write_input

    rows = prepare_items(random_items(50))
    assert 1024 < len(encode_item(rows[0])) < 4096 // 3  # so 4 items fill a 4 KB row group
    urls = write_input(iter(rows), str(tmp_path / "input"), row_group_bytes=4096, file_bytes=12 * 1024)
    assert [os.path.basename(u) for u in urls] == [f"items-{i:05d}.parquet" for i in range(5)]
    keys, decoded, groups_per_file, rows_per_group = [], [], [], []
    for url in urls:
        parquet = pq.ParquetFile(url)
        groups_per_file.append(parquet.metadata.num_row_groups)
        for index in range(parquet.metadata.num_row_groups):
            group = parquet.read_row_group(index)
            rows_per_group.append(group.num_rows)
            assert group.column("seconds").to_pylist() == [[]] * group.num_rows
            keys += group.column("key").to_pylist()
            decoded += table_to_items(group)
    assert rows_per_group == [4] * 12 + [2] and groups_per_file == [3, 3, 3, 3, 1]
    assert keys == [r["key"] for r in rows]
    assert all(same(got, want) for got, want in zip(decoded, rows))


def beam_graph(items: list[dict[str, Any]], run_dir: str) -> Any:
    """The runner API proto of the Beam job for the toy pipeline (with sink) on ``items``."""
    from labelmill.infra.engines.base import resolve_stages
    from labelmill.infra.engines.beam_engine import build_job

    config = EngineConfig(name="beam")
    return build_job(config, resolve_stages(toy_pipeline(), config, SINK), prepare_items(items), run_dir).to_runner_api()


def test_beam_job_graph_holds_no_items_and_reshuffles_before_the_first_stage(tmp_path):
    pytest.importorskip("apache_beam")
    from apache_beam.portability import common_urns

    small, large = beam_graph(random_items(5), str(tmp_path / "a")), beam_graph(random_items(200), str(tmp_path / "b"))
    extra_payload = sum(len(encode_item(item)) for item in random_items(200)[5:])
    growth = len(large.SerializeToString()) - len(small.SerializeToString())
    assert abs(growth) < 2048 and extra_payload > 100 * 2048  # Create(items) added ~2.7 KB per item

    transforms = large.components.transforms
    (root,) = large.root_transform_ids
    top = [transforms[t] for t in transforms[root].subtransforms]
    # The input is read from files and redistributed before the first stage: no Create of the items.
    assert [t.unique_name for t in top] == [
        "ReadItems", "ToWire", "Redistribute",
        "Batch[make]", "Run[make]", "Batch[bytes]", "Run[bytes]", "Batch[summarise]", "Run[summarise]",
        "Batch[sink]", "Run[sink]", "ToRecords", "WriteItems",
    ]  # fmt: skip
    producer = {pcoll: t for t in top for pcoll in t.outputs.values()}

    def upstream(transform: Any) -> Any:
        (pcoll,) = transform.inputs.values()
        return producer[pcoll]

    redistribute = upstream(top[3])  # what feeds the first stage
    assert redistribute.spec.urn == common_urns.composites.RESHUFFLE.urn
    assert upstream(redistribute).unique_name == "ToWire" and upstream(upstream(redistribute)).unique_name == "ReadItems"
    with pytest.raises(ValueError, match="at least one item"):
        beam_graph([], str(tmp_path / "c"))


@pytest.mark.parametrize(
    "beam_options",
    [[], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]],
    ids=["in_process", "multi_processing"],
)
def test_beam_reads_split_input_and_returns_every_item_once(tmp_path, monkeypatch, beam_options):
    pytest.importorskip("apache_beam")
    from labelmill.infra.engines import beam_engine

    # Tiny row groups and files, so the 30 items span several input files and row groups.
    monkeypatch.setattr(beam_engine, "_INPUT_ROW_GROUP_BYTES", 512)
    monkeypatch.setattr(beam_engine, "_INPUT_FILE_BYTES", 1024)
    written: list[list[str]] = []
    original_write_input = beam_engine.write_input

    def recording_write_input(*args: Any, **kwargs: Any) -> list[str]:
        written.append(original_write_input(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(beam_engine, "write_input", recording_write_input)
    # Beam's SDK worker processes unpickle the toy operators by module name: let them import it.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])))

    expected = collect_by_key(get_engine("local").run(toy_pipeline(), toy_items(), sink_stage=SINK))
    engine = get_engine("beam", EngineConfig(name="beam", beam_options=beam_options, beam_output_dir=str(tmp_path)))
    actual = collect_by_key(engine.run(toy_pipeline(), toy_items(), sink_stage=SINK))  # raises on a key seen twice
    assert len(written) == 1 and len(written[0]) >= 3
    assert_same_outputs(expected, actual, f"beam {beam_options}")
    assert engine.stats.items == 30 and [s.items for s in engine.stats.stages] == [30, 30, 30, 30]
    assert os.listdir(tmp_path) == []  # the run directory, input included, is removed


def test_empty_input_yields_nothing_on_every_engine():
    pytest.importorskip("apache_beam")
    for name in ("local", "ray", "beam"):
        engine = get_engine(name)
        assert isinstance(engine, Engine) and engine.name == name
        assert list(engine.run(toy_pipeline(), [])) == [] and engine.stats.items == 0


def test_beam_refuses_an_unreachable_job_endpoint_at_once():
    import socket

    from apache_beam.options.pipeline_options import PipelineOptions

    from labelmill.infra.engines.beam_engine import check_job_endpoint

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"--job_endpoint=127.0.0.1:{port} does not answer"):
        check_job_endpoint(PipelineOptions(["--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{port}"]),
                           timeout_s=2.0)
    with socket.socket() as server:  # a listening port passes
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_job_endpoint(PipelineOptions([f"--job_endpoint=127.0.0.1:{server.getsockname()[1]}"]))
    check_job_endpoint(PipelineOptions(["--runner=PortableRunner", "--job_endpoint=embed"]))
    check_job_endpoint(PipelineOptions([]))
