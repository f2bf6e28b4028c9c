"""`labelmill bench pipeline` and the process-tree memory sampler (infra/memory.py)."""

import argparse
import json
import subprocess
import sys
import time

import pytest

from labelmill.infra.memory import ProcessInfo, TreeMemorySampler, tree_members
from labelmill.pipelines.experiments.pipeline_bench import PipelineBenchConfig, register_pipeline_bench, scaling_summary

MB = 1024 * 1024

# Allocates and touches ~200 MB, says so, then holds it until stdin closes.
_ALLOCATE_200MB = (
    "import sys\n"
    "block = b'x' * (200 * 1024 * 1024)\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "sys.stdin.read()\n"
)


def _wait_for_samples(sampler: TreeMemorySampler, more: int, timeout_s: float = 10.0) -> None:
    target = sampler.report.samples + more
    deadline = time.monotonic() + timeout_s
    while sampler.report.samples < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sampler took fewer than {more} samples in {timeout_s} s")
        time.sleep(0.02)


def test_tree_sampler_sees_a_child_that_a_single_process_measurement_misses():
    tree = TreeMemorySampler(interval_s=0.02)
    alone = TreeMemorySampler(descendants=False, interval_s=0.02)
    tree_before, _ = tree.sample()
    alone_before, _ = alone.sample()
    with tree, alone:
        child = subprocess.Popen([sys.executable, "-c", _ALLOCATE_200MB], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert child.stdout.readline() == b"ready\n"
            _wait_for_samples(tree, 3)
            _wait_for_samples(alone, 3)
        finally:
            child.stdin.close()
            child.wait(timeout=30)
    tree_rise = tree.report.peak_rss_bytes - tree_before
    alone_rise = alone.report.peak_rss_bytes - alone_before
    assert tree_rise >= 150 * MB, f"tree peak rose by {tree_rise / MB:.0f} MB only"
    assert tree.report.peak_anon_bytes >= 150 * MB
    assert alone_rise < 50 * MB, f"single-process peak rose by {alone_rise / MB:.0f} MB"
    assert tree.report.max_processes >= 2 and alone.report.max_processes == 1
    peaks = {p.pid: p.peak_rss_bytes for p in tree.report.processes}
    assert peaks[child.pid] >= 190 * MB  # the per-process maximum names the child
    summary = tree.report.as_dict(top=2)  # this test process (torch loaded) may be the larger one
    assert child.pid in [p["pid"] for p in summary["top_processes"]] and summary["max_process_rss_mb"] >= 190


def test_tree_members_keep_reparented_processes_and_reject_recycled_pids():
    table = {
        10: ProcessInfo(pid=10, parent_pid=1, start_ticks=100, name="driver"),
        11: ProcessInfo(pid=11, parent_pid=10, start_ticks=101, name="raylet"),
        12: ProcessInfo(pid=12, parent_pid=11, start_ticks=102, name="worker"),
        13: ProcessInfo(pid=13, parent_pid=1, start_ticks=103, name="orphan"),  # re-parented earlier member
        14: ProcessInfo(pid=14, parent_pid=1, start_ticks=999, name="stranger"),  # pid reused by another process
        15: ProcessInfo(pid=15, parent_pid=1, start_ticks=105, name="unrelated"),
    }
    members = tree_members(table, 10, known={(13, 103), (14, 104)})
    assert sorted(m.pid for m in members) == [10, 11, 12, 13]
    assert tree_members(table, 99) == []  # the root has gone
    with pytest.raises(ValueError, match="interval_s"):
        TreeMemorySampler(interval_s=0)


def test_bench_config_names_bad_fields():
    with pytest.raises(ValueError, match=r"'engines\[1\]'"):
        PipelineBenchConfig(engines=["local", "spark"])
    with pytest.raises(ValueError, match="'videos'"):
        PipelineBenchConfig(videos=0)
    assert PipelineBenchConfig(engines=["ray", "loop"]).runs == ["loop", "ray"]


def _harness() -> argparse.ArgumentParser:
    """`labelmill bench` with only the `pipeline` subcommand (as bench.py's register() will wire it)."""
    parser = argparse.ArgumentParser(prog="labelmill")
    commands = parser.add_subparsers(dest="command")
    bench = commands.add_parser("bench").add_subparsers(dest="bench_command")
    register_pipeline_bench(bench)
    return parser


def test_bench_pipeline_end_to_end_loop_and_local(tmp_path, capsys):
    args = _harness().parse_args([
        "bench", "pipeline", "--videos", "2", "--frames", "8", "--engines", "local", "--json",
        "--work-dir", str(tmp_path), "--set", "fit.solver.max_iter=10",
    ])
    assert args.handler(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["videos"] == 2 and report["frames"] == 8 and report["device"] == "cpu"
    assert set(report["runs"]) == {"loop", "local"}
    for name, run in report["runs"].items():
        for key in ("frames_per_s", "frames_per_s_excl_startup", "peak_rss_mb", "wall_s", "run_s",
                    "throughput_vs_loop", "max_process_rss_mb"):
            assert run[key] > 0, (name, key, run[key])
        assert run["wall_s"] > run["run_s"]  # start-up is outside the run
        assert run["frames_per_s"] == pytest.approx(16 / run["wall_s"])
        assert run["peak_rss_mb"] > 100  # a python process with torch loaded, sampled from outside
        assert run["inputs"]["in"] == 2 and run["samples"] > 0
    assert report["runs"]["loop"]["throughput_vs_loop"] == pytest.approx(1.0)
    assert report["runs"]["local"]["samples"] == report["runs"]["loop"]["samples"]
    assert (tmp_path / "corpus-2x8" / "manifest.csv").exists()
    assert (tmp_path / "logs" / "2x8" / "local-0.log").exists()
    assert not (tmp_path / "out" / "2x8" / "local-0").exists()  # outputs are removed after each run
    local, loop = report["runs"]["local"], report["runs"]["loop"]
    # the driver receives per-input summaries only: far less than a frame's JPEG (several KB)
    assert 0 < local["driver_bytes_per_frame"] < 2048 and loop["driver_bytes_per_frame"] is None
    assert 100 < local["driver_peak_rss_mb"] <= local["peak_rss_mb"]
    # the second, no-change run found LATEST up to date and did no work (its time is reported,
    # not asserted: on a loaded 2-core machine the tiny first run and the rerun take about as long)
    assert local["rerun"]["up_to_date"] and local["rerun"]["fraction_of_first_run"] > 0
    assert loop["rerun"] is None


def test_scaling_summary_compares_sizes():
    def report(videos, rss, per_frame):
        run = {"throughput_vs_loop": 0.9, "driver_bytes_per_frame": per_frame, "driver_peak_rss_mb": rss,
               "rerun": {"fraction_of_first_run": 0.02}}
        return {"videos": videos, "runs": {"ray": run}}

    summary = scaling_summary([report(96, 460.0, 300.0), report(12, 400.0, 310.0)])
    assert summary["ray"]["videos"] == [12, 96]
    assert summary["ray"]["driver_rss_largest_over_smallest"] == pytest.approx(1.15)
    assert summary["ray"]["driver_bytes_per_frame"] == [310.0, 300.0]


def test_bench_pipeline_refuses_an_unknown_engine(tmp_path):
    from labelmill.pipelines.cli import UsageError

    args = _harness().parse_args(["bench", "pipeline", "--engines", "local,spark", "--work-dir", str(tmp_path)])
    with pytest.raises(UsageError, match="spark"):
        args.handler(args)
    assert not (tmp_path / "corpus").exists()  # refused before any work
