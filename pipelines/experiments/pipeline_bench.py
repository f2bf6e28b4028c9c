"""`labelmill bench pipeline`: pose3d throughput and peak memory per engine vs a plain single-process loop.

Method (docs/benchmarks.md):

1. Write one synthetic corpus (``write_synthetic_corpus``: N videos x T frames, precomputed keypoints)
   into a work directory; every run reads the same corpus.
2. Run the pose3d pipeline once per engine (``local``, ``ray``, ``beam``) exactly as
   :func:`~labelmill.pipelines.pose3d.run_pose3d` does, and once as the plain loop
   (:func:`run_plain_loop`: the same operators called in sequence on batches of items, no engine),
   each in a FRESH SUBPROCESS (``python -m labelmill.pipelines.experiments.pipeline_bench --run NAME ...``), so
   every run pays its own start-up and no engine's memory (a Ray cluster) leaks into the next.
3. The PARENT samples the child's whole process tree (the child, and for Ray its raylet, GCS and
   workers; for Beam any worker processes) with :class:`~labelmill.infra.memory.TreeMemorySampler`:
   the measured processes carry no sampler thread, and the measurement covers the child's whole
   life from ``exec`` to exit.
4. Per run: ``wall_s`` (parent clock, spawn to exit: interpreter, imports, engine start-up, the run,
   shutdown), ``run_s`` (child clock: the run itself, from building the pipeline to the committed
   dataset version; includes Ray's actor-pool start and the Beam job), ``startup_s = wall_s - run_s``,
   ``frames_per_s = frames / wall_s``, ``frames_per_s_excl_startup = frames / run_s``, the tree's
   peak RSS, and ratios to the loop.

With ``repeat > 1`` the runs are interleaved (loop, local, ray, beam, loop, ...) so that a change
of machine load hits every engine alike; reported figures are medians over the trials.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterator

from labelmill.pipelines.experiments.machine import cpu_model

log = logging.getLogger(__name__)

__all__ = [
    "RUN_NAMES",
    "ENGINE_RUNS",
    "PipelineBenchConfig",
    "run_plain_loop",
    "measure_in_process",
    "run_pipeline_bench",
    "register_pipeline_bench",
    "format_report",
    "scaling_summary",
]

LOOP = "loop"
ENGINE_RUNS = ("local", "ray", "beam")
RUN_NAMES = (LOOP, *ENGINE_RUNS)
_MB = 1024 * 1024
_CHILD_MODULE = "labelmill.pipelines.experiments.pipeline_bench"


@dataclass
class PipelineBenchConfig:
    """Knobs of :func:`run_pipeline_bench` (the pose3d config itself comes from ``--config``/``--set``)."""

    videos: int = 12  # synthetic videos in the corpus
    frames: int = 60  # frames per video
    engines: list[str] = field(default_factory=lambda: list(ENGINE_RUNS))  # engines compared with the loop
    seed: int = 0  # synthetic world seed
    repeat: int = 1  # trials per run (interleaved); figures are medians
    loop_batch_size: int | None = None  # items per batch of the plain loop; None: the last stage's batch size
    sample_interval_s: float = 0.05  # seconds between memory samples of the child's process tree
    timeout_s: float = 3600.0  # a run that takes longer is killed and the bench fails
    rerun: bool = True  # run each engine a second time on its own output (the no-change rerun)

    def __post_init__(self) -> None:
        for name in ("videos", "frames", "repeat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"'{name}' must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"'seed' must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.engines, list) or not self.engines:
            raise ValueError(f"'engines' must be a non-empty list of {', '.join(ENGINE_RUNS)}, got {self.engines!r}")
        for i, name in enumerate(self.engines):
            if name not in RUN_NAMES:
                raise ValueError(f"'engines[{i}]' must be one of {', '.join(RUN_NAMES)}, got {name!r}")
        if len(set(self.engines)) != len(self.engines):
            raise ValueError(f"'engines' names an engine twice: {self.engines!r}")
        if self.loop_batch_size is not None and (isinstance(self.loop_batch_size, bool) or self.loop_batch_size < 1):
            raise ValueError(f"'loop_batch_size' must be >= 1 or null, got {self.loop_batch_size!r}")
        if not self.sample_interval_s > 0:
            raise ValueError(f"'sample_interval_s' must be > 0, got {self.sample_interval_s!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"'timeout_s' must be > 0, got {self.timeout_s!r}")

    @property
    def runs(self) -> list[str]:
        """The loop first (the baseline), then the engines in the order given."""
        return [LOOP] + [name for name in self.engines if name != LOOP]


# ----------------------------------------------------------------------------- the plain loop


def run_plain_loop(cfg: Any, *, input_url: str, output_url: str, batch_size: int | None = None) -> Any:
    """The pose3d work in one process without any engine: the baseline of the bench.

    Items are read as :func:`~labelmill.pipelines.pose3d.run_pose3d` reads them and cut into
    batches of ``batch_size`` (default: the last stage's batch size, engine overrides applied);
    each batch goes decode -> keypoints -> track -> init -> fit -> filter by calling the operators directly,
    then its samples go to the same :class:`DatasetVersionWriter`. No re-batching between stages,
    no wire format, no isolation of failing items. Returns a
    :class:`~labelmill.pipelines.pose3d.Pose3dRun`.
    """
    from labelmill.infra import storage
    from labelmill.infra.config import dump_yaml
    from labelmill.infra.corpus import read_corpus
    from labelmill.infra.dataset_version import DatasetVersionWriter, read_stats
    from labelmill.infra.pipeline import STATUS_PENDING, batch_to_rows, batch_length, rows_to_batch
    from labelmill.operators.pose3d.samples import video_samples
    from labelmill.pipelines.pose3d import Pose3dRun, build_pose3d_pipeline, fingerprints

    t0 = time.perf_counter()
    # the loop builds samples itself (video_samples below), in memory, as a single process would
    stages = [s for s in cfg.engine.apply(build_pose3d_pipeline(cfg, input_url)) if s.name != "samples"]
    size = batch_size or stages[-1].batch_size
    items = read_corpus(input_url).to_pylist()
    log.info("plain loop: %d inputs from %s, batches of %d", len(items), input_url, size)
    seconds = {stage.name: 0.0 for stage in stages}
    counts = {stage.name: 0 for stage in stages}
    config_text = dump_yaml(cfg) + "\n# fingerprints\n" + "".join(
        f"# {k}: {v}\n" for k, v in sorted(fingerprints(cfg).items()))
    writer = DatasetVersionWriter(output_url, shard_config=cfg.shards, config_yaml=config_text)
    with writer:
        for stage in stages:
            start = time.perf_counter()
            stage.operator.setup()
            seconds[stage.name] += time.perf_counter() - start
        for first in range(0, len(items), size):
            batch = rows_to_batch(
                {**item, "status": item.get("status", STATUS_PENDING), "reason": item.get("reason")}
                for item in items[first : first + size])
            for stage in stages:
                start = time.perf_counter()
                batch = stage.operator(batch)
                seconds[stage.name] += time.perf_counter() - start
                counts[stage.name] += batch_length(batch)
            for row in batch_to_rows(batch):
                result = video_samples(row, config=cfg.samples)
                writer.add_samples(result.samples)
                writer.record_inputs([result.input_row])
        version_id = writer.commit(stats={
            "stages": {name: {"items": counts[name], "seconds": seconds[name]} for name in seconds},
            "engine": LOOP,
            "wall_seconds": round(time.perf_counter() - t0, 3),
        })
    version_url = storage.join(output_url, "versions", version_id)
    return Pose3dRun(version_url=version_url, version_id=version_id, stats=read_stats(version_url))


# ----------------------------------------------------------------------------- one run (child side)


def measure_in_process(cfg: Any, *, run: str, input_url: str, output_url: str,
                       loop_batch_size: int | None = None, prestart: bool = True) -> dict[str, Any]:
    """Run ``run`` (``loop``, ``local``, ``ray`` or ``beam``) here and time it; the child's job.

    ``engine_init_s``: importing and starting the engine before the run (``ray.init`` of an
    embedded cluster; importing Apache Beam), unless ``prestart`` is False (the no-change rerun:
    it finds LATEST up to date and starts no engine, as `labelmill run` does). ``run_s``: the run
    itself. ``shutdown_s``: ``ray.shutdown``. Returns a JSON-ready dict.
    """
    if run not in RUN_NAMES:
        raise ValueError(f"unknown bench run {run!r}; choose one of {', '.join(RUN_NAMES)}")
    from labelmill.pipelines.pose3d import run_pose3d
    from labelmill.infra.engines import shutdown_engine

    start = time.perf_counter()
    if prestart and run == "ray":
        from labelmill.infra.engines.ray_engine import ensure_ray

        ensure_ray(dataclasses.replace(cfg.engine, name="ray"))
    elif prestart and run == "beam":
        from labelmill.infra.engines import beam_engine  # noqa: F401 - import cost is engine start-up
    engine_init_s = time.perf_counter() - start

    start = time.perf_counter()
    if run == LOOP:
        result = run_plain_loop(cfg, input_url=input_url, output_url=output_url, batch_size=loop_batch_size)
    else:
        result = run_pose3d(cfg, input_url=input_url, output_url=output_url, engine_name=run)
    run_s = time.perf_counter() - start

    start = time.perf_counter()
    shutdown_engine(run)
    shutdown_s = time.perf_counter() - start
    stats = result.stats
    return {
        "run": run,
        "engine_init_s": engine_init_s,
        "run_s": run_s,
        "shutdown_s": shutdown_s,
        "frames_in": stats["frames"]["in"],
        "frames_kept": stats["frames"]["kept"],
        "samples": stats["samples"],
        "inputs": stats["inputs"],
        "stage_seconds": {name: s["seconds"] for name, s in sorted(stats.get("stages", {}).items())},
        "driver_bytes": stats.get("driver_bytes"),
        "up_to_date": bool(getattr(result, "up_to_date", False)),
    }


def _child_main(argv: list[str] | None = None) -> int:
    """``python -m labelmill.pipelines.experiments.pipeline_bench --run NAME ...``: one measured run."""
    from labelmill.infra import storage
    from labelmill.infra.config import load_config
    from labelmill.pipelines.cli import configure_logging
    from labelmill.pipelines.config import Pose3dConfig

    parser = argparse.ArgumentParser(prog=f"python -m {_CHILD_MODULE}",
                                     description="one run of `labelmill bench pipeline` (started by the bench)")
    parser.add_argument("--run", required=True, choices=RUN_NAMES)
    parser.add_argument("--config", required=True, help="resolved pose3d config (YAML)")
    parser.add_argument("--input", required=True, help="corpus URL")
    parser.add_argument("--output", required=True, help="dataset root URL")
    parser.add_argument("--result", required=True, help="where to write the result JSON")
    parser.add_argument("--loop-batch-size", type=int, default=None)
    parser.add_argument("--no-prestart", action="store_true", help="do not start the engine before the run")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    configure_logging(args.verbose, 0)
    cfg = load_config(Pose3dConfig, args.config)
    result = measure_in_process(cfg, run=args.run, input_url=args.input, output_url=args.output,
                                loop_batch_size=args.loop_batch_size, prestart=not args.no_prestart)
    storage.write_text(args.result, json.dumps(result) + "\n")
    return 0


# ----------------------------------------------------------------------------- the bench (parent side)


def _load_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _end_session(child: subprocess.Popen) -> None:
    """Kill what is left of a run's session (its process group: the child and anything it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _measure_child(run: str, *, config_path: str, corpus: str, output: str, log_path: str,
                   bench: PipelineBenchConfig, verbose: int, prestart: bool = True) -> dict[str, Any]:
    """One run in a fresh subprocess whose process tree the parent samples."""
    from labelmill.infra.memory import TreeMemorySampler

    result_path = output.rstrip("/") + ".result.json"
    command = [sys.executable, "-m", _CHILD_MODULE, "--run", run, "--config", config_path, "--input", corpus,
               "--output", output, "--result", result_path]
    if bench.loop_batch_size is not None:
        command += ["--loop-batch-size", str(bench.loop_batch_size)]
    if not prestart:
        command.append("--no-prestart")
    command += ["-v"] * verbose
    load_before = _load_1m()
    log.info("bench pipeline: run %s (load %s) ...", run, load_before)
    with open(log_path, "wb") as log_file:
        start = time.perf_counter()
        # Own session: on a timeout the whole tree (Ray's raylet and workers too) is ended by its group id.
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        sampler = TreeMemorySampler(root_pid=child.pid, interval_s=bench.sample_interval_s).start()
        timed_out = False
        try:
            code = child.wait(timeout=bench.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # also on Ctrl-C: the child's session does not get the terminal's signals
            wall_s = time.perf_counter() - start
            memory = sampler.stop()
            _end_session(child)
    if timed_out:
        raise RuntimeError(f"bench run {run} took longer than {bench.timeout_s:g} s and was killed; "
                           f"log {log_path}:\n{_tail(log_path)}")
    if code != 0:
        raise RuntimeError(f"bench run {run} failed (exit code {code}); log {log_path}:\n{_tail(log_path)}")
    with open(result_path, encoding="utf-8") as handle:
        result = json.load(handle)
    os.remove(result_path)
    result.update(wall_s=wall_s, load_1m_before=load_before, load_1m_after=_load_1m(), memory=memory.as_dict())
    log.info("bench pipeline: run %s: %.1f s wall (%.1f s run), peak tree RSS %.0f MB",
             run, wall_s, result["run_s"], memory.peak_rss_bytes / _MB)
    return result


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _summarise(trials: list[dict[str, Any]], frames: int) -> dict[str, Any]:
    """Figures of one run (medians over its trials)."""
    wall_s = _median([t["wall_s"] for t in trials])
    run_s = _median([t["run_s"] for t in trials])
    memory = [t["memory"] for t in trials]
    summary = {
        "frames_per_s": frames / wall_s,
        "frames_per_s_excl_startup": frames / run_s,
        "wall_s": wall_s,
        "run_s": run_s,
        "startup_s": _median([t["wall_s"] - t["run_s"] for t in trials]),
        "engine_init_s": _median([t["engine_init_s"] for t in trials]),
        "peak_rss_mb": _median([m["peak_rss_mb"] for m in memory]),
        "peak_anon_mb": _median([m["peak_anon_mb"] for m in memory]),
        "max_process_rss_mb": _median([m["max_process_rss_mb"] for m in memory]),
        "max_processes": max(m["max_processes"] for m in memory),
        "driver_peak_rss_mb": _median([m["root_peak_rss_mb"] for m in memory]),
        "driver_bytes_per_frame": (None if trials[0].get("driver_bytes") is None
                                   else _median([t["driver_bytes"] for t in trials]) / frames),
        "stage_seconds": {name: round(_median([t["stage_seconds"].get(name, 0.0) for t in trials]), 3)
                          for name in trials[0]["stage_seconds"]},
        "samples": trials[0]["samples"],
        "frames_kept": trials[0]["frames_kept"],
        "inputs": trials[0]["inputs"],
        "rerun": _summarise_reruns([t["rerun"] for t in trials if t.get("rerun")], run_s),
        "trials": [
            {"wall_s": round(t["wall_s"], 3), "run_s": round(t["run_s"], 3),
             "engine_init_s": round(t["engine_init_s"], 3), "shutdown_s": round(t["shutdown_s"], 3),
             "load_1m_before": t["load_1m_before"], "load_1m_after": t["load_1m_after"], **t["memory"]}
            for t in trials
        ],
    }
    return summary


def _summarise_reruns(reruns: list[dict[str, Any]], first_run_s: float) -> dict[str, Any] | None:
    """The no-change rerun (same command, same output): its time as a fraction of the first run."""
    if not reruns:
        return None
    run_s = _median([r["run_s"] for r in reruns])
    wall_s = _median([r["wall_s"] for r in reruns])
    return {"run_s": run_s, "wall_s": wall_s, "fraction_of_first_run": run_s / first_run_s,
            "up_to_date": all(r["up_to_date"] for r in reruns)}


def _machine() -> dict[str, Any]:
    model = cpu_model()
    memory_gb = None
    with contextlib.suppress(OSError, ValueError):
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    versions = {}
    for package in ("torch", "ray", "apache-beam"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": memory_gb,
            "python": platform.python_version(), "versions": versions}


def _device(cfg: Any) -> str:
    device = str(cfg.fit.device)
    if device.startswith("cuda"):
        import torch

        return device if torch.cuda.is_available() else "cpu"
    return device


@contextlib.contextmanager
def _work_root(work_dir: str | None) -> Iterator[str]:
    """``work_dir`` (kept) or a temporary directory (removed afterwards)."""
    if work_dir is not None:
        os.makedirs(work_dir, exist_ok=True)
        yield os.path.abspath(work_dir)
        return
    root = tempfile.mkdtemp(prefix="labelmill-bench-pipeline-")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ensure_corpus(corpus: str, synth: Any, *, progress: Callable[[str], None]) -> None:
    """Write the synthetic corpus unless the same one (same resolved SynthConfig) is already there."""
    from labelmill.infra.config import dump_yaml
    from labelmill.operators.synth.corpus import write_synthetic_corpus

    config_file = os.path.join(corpus, "synth_config.yaml")
    if os.path.exists(os.path.join(corpus, "manifest.csv")) and os.path.exists(config_file):
        with open(config_file, encoding="utf-8") as handle:
            if handle.read() == dump_yaml(synth):
                progress(f"reusing the synthetic corpus in {corpus}")
                return
        shutil.rmtree(corpus)
    summary = write_synthetic_corpus(corpus, synth)
    progress(f"wrote {len(summary.video_ids)} videos ({summary.num_frames} frames) in {summary.seconds:.1f} s")


def run_pipeline_bench(cfg: Any, bench: PipelineBenchConfig, *, work_dir: str | None = None,
                       verbose: int = 0) -> dict[str, Any]:
    """Measure pose3d on the plain loop and on each engine of ``bench.engines``; returns the report.

    ``cfg``: the resolved :class:`~labelmill.pipelines.config.Pose3dConfig` every run uses (its
    ``synth`` section shapes the corpus; ``videos``, ``frames`` and ``seed`` come from ``bench``).
    ``work_dir``: keep the corpus and the run logs there (a corpus written by the same synth
    config is reused); default: a temporary directory, removed. Report keys: ``videos``,
    ``frames``, ``runs`` (``loop`` and each engine), ``device``, ``machine``, ``date_utc``, ``seed``,
    ``repeat``.
    """
    from labelmill.infra.config import dump_yaml

    if "ray" in bench.runs and (cfg.engine.ray_address or os.environ.get("RAY_ADDRESS")):
        log.warning("bench pipeline: the ray run joins an existing cluster (ray_address / $RAY_ADDRESS); "
                    "its workers are not children of the run, so their memory is not in peak_rss_mb")
    synth = dataclasses.replace(cfg.synth, num_videos=bench.videos, num_frames=bench.frames, seed=bench.seed)
    cfg = dataclasses.replace(cfg, synth=synth)
    frames = bench.videos * bench.frames
    trials: dict[str, list[dict[str, Any]]] = {name: [] for name in bench.runs}
    with _work_root(work_dir) as root:
        size = f"{bench.videos}x{bench.frames}"  # several corpus sizes can share one work dir
        corpus = os.path.join(root, f"corpus-{size}")
        _ensure_corpus(corpus, synth, progress=lambda text: log.info("bench pipeline: %s", text))
        config_path = os.path.join(root, f"pose3d-{size}.yaml")
        with open(config_path, "w", encoding="utf-8") as handle:
            handle.write(dump_yaml(cfg))
        logs = os.path.join(root, "logs", size)
        os.makedirs(logs, exist_ok=True)
        for trial in range(bench.repeat):
            for name in bench.runs:
                output = os.path.join(root, "out", size, f"{name}-{trial}")
                shutil.rmtree(output, ignore_errors=True)
                result = _measure_child(name, config_path=config_path, corpus=corpus, output=output,
                                        log_path=os.path.join(logs, f"{name}-{trial}.log"),
                                        bench=bench, verbose=verbose)
                if name != LOOP and bench.rerun:  # the same command again: nothing changed
                    result["rerun"] = _measure_child(
                        name, config_path=config_path, corpus=corpus, output=output,
                        log_path=os.path.join(logs, f"{name}-{trial}-rerun.log"), bench=bench, verbose=verbose,
                        prestart=False)
                shutil.rmtree(output, ignore_errors=True)
                if result["frames_in"] != frames:
                    raise RuntimeError(f"bench run {name} read {result['frames_in']} frames, expected {frames}")
                trials[name].append(result)
    runs = {name: _summarise(trials[name], frames) for name in bench.runs}
    loop = runs[LOOP]
    for summary in runs.values():
        summary["throughput_vs_loop"] = summary["frames_per_s"] / loop["frames_per_s"]
        summary["throughput_vs_loop_excl_startup"] = (summary["frames_per_s_excl_startup"]
                                                      / loop["frames_per_s_excl_startup"])
    differing = {name: s["samples"] for name, s in runs.items() if s["samples"] != loop["samples"]}
    if differing:
        log.warning("bench pipeline: runs wrote different sample counts (loop %d): %s", loop["samples"], differing)
    return {
        "videos": bench.videos,
        "frames": bench.frames,
        "runs": runs,
        "device": _device(cfg),
        "seed": bench.seed,
        "repeat": bench.repeat,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": _machine(),
    }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of a :func:`run_pipeline_bench` report."""
    header = (f"pose3d: {report['videos']} videos x {report['frames']} frames on {report['device']} "
              f"({report['machine']['cpus']} CPUs), median of {report['repeat']} trial(s)\n")
    columns = ("run", "wall_s", "startup_s", "frames/s", "excl. startup", "vs loop", "vs loop excl.",
               "peak RSS MB", "peak anon MB", "driver MB", "driver B/frame", "rerun %")
    widths = (6, 8, 10, 9, 14, 8, 14, 12, 13, 10, 15, 8)
    lines = [header, "".join(c.rjust(w) for c, w in zip(columns, widths))]
    for name, run in report["runs"].items():
        per_frame = run.get("driver_bytes_per_frame")
        rerun = run.get("rerun")
        values = (name, f"{run['wall_s']:.1f}", f"{run['startup_s']:.1f}", f"{run['frames_per_s']:.1f}",
                  f"{run['frames_per_s_excl_startup']:.1f}", f"{run['throughput_vs_loop']:.2f}",
                  f"{run['throughput_vs_loop_excl_startup']:.2f}", f"{run['peak_rss_mb']:.0f}",
                  f"{run['peak_anon_mb']:.0f}", f"{run['driver_peak_rss_mb']:.0f}",
                  "-" if per_frame is None else f"{per_frame:.0f}",
                  "-" if rerun is None else f"{100 * rerun['fraction_of_first_run']:.1f}")
        lines.append("".join(v.rjust(w) for v, w in zip(values, widths)))
    return "\n".join(lines) + "\n"


def scaling_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Across corpus sizes, per run: throughput vs the loop, driver bytes per frame and peak driver
    RSS at each size, and the largest size's driver RSS over the smallest's (flat: ~1)."""
    reports = sorted(reports, key=lambda r: r["videos"])
    out: dict[str, Any] = {}
    for name in reports[0]["runs"]:
        runs = [r["runs"][name] for r in reports if name in r["runs"]]
        out[name] = {
            "videos": [r["videos"] for r in reports],
            "throughput_vs_loop": [round(x["throughput_vs_loop"], 3) for x in runs],
            "driver_bytes_per_frame": [x.get("driver_bytes_per_frame") for x in runs],
            "driver_peak_rss_mb": [x["driver_peak_rss_mb"] for x in runs],
            "driver_rss_largest_over_smallest": runs[-1]["driver_peak_rss_mb"] / runs[0]["driver_peak_rss_mb"],
            "rerun_fraction": [None if x.get("rerun") is None else round(x["rerun"]["fraction_of_first_run"], 4)
                               for x in runs],
        }
    return out


# ----------------------------------------------------------------------------- command line


def register_pipeline_bench(sub: argparse._SubParsersAction) -> None:
    """Add ``pipeline`` to the ``bench`` subcommand's subparsers ``sub``."""
    from labelmill.pipelines.commands._common import add_config_args

    parser = sub.add_parser(
        "pipeline",
        help="pose3d throughput and peak memory per engine vs a plain single-process loop",
        description="Write a synthetic corpus, run the pose3d pipeline on it once per engine and once as a "
        "plain loop, each in a fresh subprocess whose whole process tree is sampled for RSS, and report "
        "frames/s, peak RSS and the ratio to the loop. Keypoints: the corpus's precomputed files "
        "(keypoints.backend=precomputed unless --set says otherwise).",
    )
    parser.add_argument("--videos", default="12",
                        help="synthetic videos; a comma-separated list (e.g. 12,48,96) benches each corpus size "
                             "and adds a scaling summary (default 12)")
    parser.add_argument("--frames", type=int, default=60, help="frames per video (default 60)")
    parser.add_argument("--engines", default=",".join(ENGINE_RUNS),
                        help="comma-separated engines to compare with the loop (default local,ray,beam)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed (default 0)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="trials per run, interleaved; figures are medians (default 1)")
    parser.add_argument("--loop-batch-size", type=int, default=None,
                        help="videos per batch of the plain loop (default: the fit stage's batch size)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between memory samples (default 0.05)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one run may take (default 3600)")
    parser.add_argument("--work-dir", default=None,
                        help="keep the corpus (reused when it matches) and the run logs here (default: a temp dir)")
    parser.add_argument("--no-rerun", action="store_true",
                        help="skip each engine's second, no-change run on its own output")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_args(parser)
    parser.set_defaults(handler=_pipeline_command)


def _pipeline_command(args: argparse.Namespace) -> int:
    from labelmill.infra.config import load_config
    from labelmill.pipelines.cli import UsageError
    from labelmill.pipelines.config import config_class

    try:
        sizes = [int(v) for v in str(args.videos).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"bench pipeline: --videos must be integers separated by commas, got {args.videos!r}") from None
    try:
        benches = [PipelineBenchConfig(
            videos=videos, frames=args.frames, seed=args.seed, repeat=args.repeat,
            engines=[name.strip() for name in args.engines.split(",") if name.strip()],
            loop_batch_size=args.loop_batch_size, sample_interval_s=args.interval, timeout_s=args.timeout,
            rerun=not args.no_rerun) for videos in sizes or [0]]
    except ValueError as exc:
        raise UsageError(f"bench pipeline: {exc}") from None
    overrides = ["keypoints.backend=precomputed", *getattr(args, "overrides", [])]
    cfg = load_config(config_class("pose3d"), getattr(args, "config", None), overrides)
    verbose = max(0, getattr(args, "verbose", 0))
    reports = [run_pipeline_bench(cfg, bench, work_dir=args.work_dir, verbose=verbose) for bench in benches]
    if len(reports) == 1:
        document: dict[str, Any] = reports[0]
        text = format_report(reports[0])
    else:
        document = {"sizes": reports, "scaling": scaling_summary(reports)}
        text = "\n".join(format_report(r) for r in reports) + "\nscaling:\n" + "".join(
            f"  {name}: driver RSS x{row['driver_rss_largest_over_smallest']:.2f} from {row['videos'][0]} to "
            f"{row['videos'][-1]} videos; vs loop {row['throughput_vs_loop']}\n"
            for name, row in document["scaling"].items())
    sys.stdout.write(json.dumps(document) + "\n" if args.json else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main())
