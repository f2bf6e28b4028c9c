"""The Ray engine: Ray Data ``map_batches`` over autoscaling actor pools, one per group of stages.

Wire format: an Arrow table with ``key`` (string), ``payload`` (large_binary, one encoded item,
see :mod:`labelmill.infra.formats.payload`) and one float64 column ``_seconds_<i>`` per stage
already run (operator seconds of the item's batch divided by its size; the driver sums them
into per-stage stats). Stage workers decode, run the operator, encode; Ray Data only moves
bytes, so ragged arrays, lists of JPEG bytes and None survive unchanged and no user data is
pickled.

Cluster: ``EngineConfig.ray_address``, else ``$RAY_ADDRESS``, else an embedded local cluster of
its own (``address="local"``, never joining another cluster on the machine; ``ray_num_cpus``,
``ray_object_store_memory``); an already initialised Ray session is reused and left running.

Pools: with ``ray_fuse`` (default) consecutive stages that run on the same kind of device and
have no fixed ``concurrency`` share one actor pool (:func:`fuse_stages`): the CPU stages of a
pipeline run back to back in one actor, each on chunks of its own ``batch_size``, and a GPU stage
gets a pool of its own. A pool asks for the largest ``num_cpus``/``num_gpus`` of its stages (a GPU
stage on a GPU-less cluster falls back to CPU with a warning) and autoscales from 1 actor to as
many as the cluster holds (``ActorPoolStrategy(min_size, max_size)``); a stage with a fixed
``concurrency`` gets a pool of exactly that size. With ``ray_fit_cpus`` the CPU requests are
scaled down when the pools' smallest sizes would not fit.

The driver streams the final dataset with ``iter_batches``; output order is unspecified.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from typing import Any, Iterator

import pyarrow as pa

from labelmill.infra.engines.base import RunStats, StatsRecorder, call_stage, prepare_items, resolve_stages
from labelmill.infra.engines.ray_reaper import start_reaper
from labelmill.infra.progress import progress_mode
from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.formats.payload import items_to_table, table_to_items
from labelmill.infra.pipeline import Batch, Pipeline, Stage, rows_to_batch

__all__ = ["RayEngine", "ensure_ray", "stage_placement", "fuse_stages", "pool_placement", "fit_cpus"]

logger = logging.getLogger(__name__)

SECONDS_PREFIX = "_seconds_"
# Input items are split into at most this many Arrow blocks (parallelism vs per-block overhead).
MAX_INPUT_BLOCKS = 256


def ensure_ray(config: EngineConfig) -> None:
    """Connect to the configured cluster or start an embedded one; reuse an existing session."""
    import ray

    if ray.is_initialized():
        return
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("ray engine: connecting to the Ray cluster at %s", address)
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:  # Ray's bare "Failed to connect to Ray cluster at ..."
            raise ConnectionError(
                f"{exc}. Check that a Ray head runs at {address} (its GCS port, 6379 by default) and is "
                "reachable from here. A head with token authentication (Ray >= 2.52; `ray start` turns it on "
                "when it finds ~/.ray/auth_token) refuses a driver without its token: set RAY_AUTH_MODE=token "
                "and RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file>; `ray get-auth-token` on the head) "
                "here, or start a trusted loopback head with RAY_AUTH_MODE=disabled"
            ) from exc
        return
    logger.info("ray engine: starting an embedded local Ray cluster (num_cpus=%s)", config.ray_num_cpus)
    # address="local": a new cluster of our own even when another one runs on this machine (a bare
    # ray.init() would silently join the newest one); its own temp dir keeps its sockets and logs apart.
    temp_dir = tempfile.mkdtemp(prefix="labelmill-ray-")
    ray.init(
        address="local",
        _temp_dir=temp_dir,
        num_cpus=config.ray_num_cpus,
        object_store_memory=config.ray_object_store_memory,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    # nothing of the cluster may outlive this process, even when it is SIGKILLed (ray_reaper.py)
    start_reaper(os.getpid(), temp_dir)
    logger.info("ray engine: embedded cluster up (temp dir %s; a watchdog stops it when this process ends)", temp_dir)


def _configure_ray_data_progress(mode: str) -> None:
    """Ray Data's progress output for our mode: its bars on a terminal, nothing in logs or when quiet."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = mode == "bars"
    if mode != "bars":  # its one-off notice that bars are off, and its per-dataset INFO lines
        logging.getLogger("ray.data").setLevel(logging.WARNING if mode == "lines" else logging.ERROR)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def stage_placement(stage: Stage, *, cluster_gpus: float) -> dict[str, Any]:
    """``map_batches`` resources for a stage; GPU stages fall back to CPU on a GPU-less cluster.

    ``concurrency``: the stage's fixed pool size, or None (an autoscaling pool).
    """
    num_gpus = stage.num_gpus
    if num_gpus > 0 and cluster_gpus <= 0:
        logger.warning("ray engine: stage %s asks for %s GPU(s) but the cluster has none; running it on CPU", stage.name, num_gpus)
        num_gpus = 0.0
    return {"batch_size": stage.batch_size, "num_cpus": stage.num_cpus, "num_gpus": num_gpus, "concurrency": stage.concurrency}


def fuse_stages(placements: list[dict[str, Any]], *, fuse: bool) -> list[list[int]]:
    """Stage indices grouped into actor pools: consecutive stages on the same kind of device
    (CPU or GPU) without a fixed concurrency share one pool when ``fuse``."""
    groups: list[list[int]] = []
    for index, placement in enumerate(placements):
        if fuse and groups and placement["concurrency"] is None:
            last = placements[groups[-1][-1]]
            if last["concurrency"] is None and (last["num_gpus"] > 0) == (placement["num_gpus"] > 0):
                groups[-1].append(index)
                continue
        groups.append([index])
    return groups


def pool_placement(members: list[dict[str, Any]], *, cluster_cpus: float, cluster_gpus: float) -> dict[str, Any]:
    """One pool's resources: the largest request of its stages; its size fixed, or autoscaling
    from 1 to as many actors as the cluster holds (``min_size``/``max_size``)."""
    num_cpus = max(m["num_cpus"] for m in members)
    num_gpus = max(m["num_gpus"] for m in members)
    fixed = members[0]["concurrency"] if len(members) == 1 else None
    if fixed is not None:
        low = high = int(fixed)
    else:
        fits = cluster_gpus / num_gpus if num_gpus > 0 else cluster_cpus / num_cpus
        low, high = 1, max(1, int(math.floor(fits + 1e-9)))
    return {"batch_size": max(m["batch_size"] for m in members), "num_cpus": num_cpus, "num_gpus": num_gpus,
            "min_size": low, "max_size": high}


def fit_cpus(pools: list[dict[str, Any]], *, cluster_cpus: float) -> list[dict[str, Any]]:
    """Scale every pool's num_cpus by one factor so that all pools' smallest sizes fit into ``cluster_cpus``.

    All pools of a Ray Data pipeline run at once; one that cannot start stalls the run.
    A little CPU is left free for Ray Data's own tasks.
    """
    wanted = sum(p["num_cpus"] * p["min_size"] for p in pools)
    budget = cluster_cpus * 0.9
    if wanted <= budget or wanted == 0:
        return pools
    factor = budget / wanted
    logger.warning(
        "ray engine: stages ask for %.2f CPUs in all but the cluster has %.2f; scaling every num_cpus by %.3f",
        wanted, cluster_cpus, factor,
    )
    return [{**p, "num_cpus": p["num_cpus"] * factor} for p in pools]


class _RayStageWorker:
    """Ray Data callable class for one pool: ``operator.setup()`` of each of its stages once per
    actor, then batches, each stage on chunks of its own batch size, in order."""

    def __init__(self, *, members: list[tuple[str, int, Any, int]]) -> None:
        self._members = members  # (stage name, stage index, operator, batch size)
        for _, _, operator, _ in members:
            operator.setup()

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table_to_items(table)
        carried = {name: table.column(name) for name in table.column_names if name.startswith(SECONDS_PREFIX)}
        for name, index, operator, batch_size in self._members:
            out, spent = [], []
            for first in range(0, len(rows), batch_size):
                chunk, seconds = call_stage(name, operator, rows[first : first + batch_size])
                out.extend(chunk)
                spent.extend([seconds / len(chunk)] * len(chunk) if chunk else [])
            rows = out
            carried[f"{SECONDS_PREFIX}{index}"] = pa.array(spent, type=pa.float64())
        return items_to_table(rows, extra_columns=carried)


def _input_tables(rows: list[dict[str, Any]], batch_size: int) -> list[Any]:
    """Encoded input split into blocks holding whole batches of the first stage."""
    batches = max(1, math.ceil(len(rows) / batch_size))
    per_block = batch_size * math.ceil(batches / MAX_INPUT_BLOCKS)
    return [items_to_table(rows[i : i + per_block]) for i in range(0, len(rows), per_block)]


class RayEngine:
    """Ray Data engine. ``placements`` holds the last run's per-stage ``map_batches`` resources."""

    name = "ray"

    def __init__(self, *, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig(name="ray")
        self.stats: RunStats | None = None
        self.placements: dict[str, dict[str, Any]] = {}  # stage -> its pool's resources (last run)
        self.pools: list[list[str]] = []  # stage names per actor pool (last run)

    def run(self, pipeline: Pipeline, items: list[dict[str, Any]], *, sink_stage: Stage | None = None) -> Iterator[Batch]:
        """Output batches of the last stage, in no particular order (see module docstring)."""
        stages = resolve_stages(pipeline, self.config, sink_stage)
        rows = prepare_items(items)
        return self._stream(stages, rows)

    def _build(self, stages: list[Stage], rows: list[dict[str, Any]]) -> Any:
        import ray
        import ray.data

        ensure_ray(self.config)
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
        placements = [stage_placement(s, cluster_gpus=gpus) for s in stages]
        groups = fuse_stages(placements, fuse=self.config.ray_fuse)
        pools = [pool_placement([placements[i] for i in group], cluster_cpus=cpus, cluster_gpus=gpus)
                 for group in groups]
        if self.config.ray_fit_cpus:
            pools = fit_cpus(pools, cluster_cpus=cpus)
        self.placements = {stages[i].name: p for group, p in zip(groups, pools) for i in group}
        self.pools = [[stages[i].name for i in group] for group in groups]
        logger.info("ray engine: actor pools %s", "; ".join(
            f"{'+'.join(names)} ({p['min_size']}..{p['max_size']} x {p['num_cpus']:.2f} CPU, {p['num_gpus']:g} GPU)"
            for names, p in zip(self.pools, pools)))
        dataset = ray.data.from_arrow(_input_tables(rows, pools[0]["batch_size"]))
        for group, pool in zip(groups, pools):
            members = [(stages[i].name, i, stages[i].operator, stages[i].batch_size) for i in group]
            dataset = dataset.map_batches(
                _RayStageWorker,
                fn_constructor_kwargs={"members": members},
                batch_format="pyarrow",
                zero_copy_batch=True,
                batch_size=pool["batch_size"],
                num_cpus=pool["num_cpus"],
                num_gpus=pool["num_gpus"],
                compute=ray.data.ActorPoolStrategy(min_size=pool["min_size"], max_size=pool["max_size"]),
            )
        return dataset

    def _stream(self, stages: list[Stage], rows: list[dict[str, Any]]) -> Iterator[Batch]:
        mode = progress_mode()
        # on a terminal Ray Data draws its own per-operator bars; elsewhere its 10-second progress
        # dumps are switched off and our line-oriented progress counts what reaches the driver
        recorder = StatsRecorder(engine=self.name, stage_names=[s.name for s in stages], total=len(rows),
                                 progress="off" if mode == "bars" else mode)
        if not rows:
            self.stats = recorder.finish()
            return
        _configure_ray_data_progress(mode)
        dataset = self._build(stages, rows)
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=stages[-1].batch_size):
            for index in range(len(stages)):
                column = table.column(f"{SECONDS_PREFIX}{index}")
                recorder.add(index, len(column), float(sum(column.to_pylist())))
            batch = rows_to_batch(table_to_items(table))
            recorder.run.count_output(batch, table.nbytes)
            yield batch
        self.stats = recorder.finish()
