"""The Ray engine: Ray Data ``map_batches`` with one callable class (actor pool) per stage.

Wire format: an Arrow table with ``key`` (string), ``payload`` (large_binary, one encoded item,
see :mod:`labelmill.infra.formats.payload`) and one float64 column ``_seconds_<i>`` per stage
already run (operator seconds of the item's batch divided by its size; the driver sums them
into per-stage stats). Stage workers decode, run the operator, encode; Ray Data only moves
bytes, so ragged arrays, lists of JPEG bytes and None survive unchanged and no user data is
pickled.

Cluster: ``EngineConfig.ray_address``, else ``$RAY_ADDRESS``, else an embedded local cluster
(``ray_num_cpus``, ``ray_object_store_memory``); an already initialised Ray session is reused
and left running. Placement per stage: ``batch_size``, ``num_cpus`` (fractional is fine),
``num_gpus`` (0 with a warning when the cluster has no GPU) and ``concurrency`` (actor pool
size). With ``ray_fit_cpus`` the CPU requests are scaled down when all pools would not fit.

The driver streams the final dataset with ``iter_batches``; output order is unspecified.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterator

import pyarrow as pa

from labelmill.infra.engines.base import RunStats, StatsRecorder, call_stage, prepare_items, resolve_stages
from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.formats.payload import items_to_table, table_to_items
from labelmill.infra.pipeline import Batch, Pipeline, Stage, rows_to_batch

__all__ = ["RayEngine", "ensure_ray", "stage_placement", "fit_cpus"]

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
        ray.init(address=address, log_to_driver=False)
        return
    logger.info("ray engine: starting an embedded local Ray cluster (num_cpus=%s)", config.ray_num_cpus)
    ray.init(
        num_cpus=config.ray_num_cpus,
        object_store_memory=config.ray_object_store_memory,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def stage_placement(stage: Stage, *, cluster_gpus: float) -> dict[str, Any]:
    """``map_batches`` resources for a stage; GPU stages fall back to CPU on a GPU-less cluster."""
    num_gpus = stage.num_gpus
    if num_gpus > 0 and cluster_gpus <= 0:
        logger.warning("ray engine: stage %s asks for %s GPU(s) but the cluster has none; running it on CPU", stage.name, num_gpus)
        num_gpus = 0.0
    return {"batch_size": stage.batch_size, "num_cpus": stage.num_cpus, "num_gpus": num_gpus, "concurrency": stage.concurrency}


def fit_cpus(placements: list[dict[str, Any]], *, cluster_cpus: float) -> list[dict[str, Any]]:
    """Scale every stage's num_cpus by one factor so that all actor pools fit into ``cluster_cpus``.

    All pools of a Ray Data pipeline run at once; one that cannot be placed stalls the run.
    A little CPU is left free for Ray Data's own tasks.
    """
    wanted = sum(p["num_cpus"] * p["concurrency"] for p in placements)
    budget = cluster_cpus * 0.9
    if wanted <= budget or wanted == 0:
        return placements
    factor = budget / wanted
    logger.warning(
        "ray engine: stages ask for %.2f CPUs in all but the cluster has %.2f; scaling every num_cpus by %.3f",
        wanted, cluster_cpus, factor,
    )
    return [{**p, "num_cpus": p["num_cpus"] * factor} for p in placements]


class _RayStageWorker:
    """Ray Data callable class for one stage: ``operator.setup()`` once per actor, then batches."""

    def __init__(self, *, stage_name: str, stage_index: int, operator: Any) -> None:
        self._stage_name = stage_name
        self._stage_index = stage_index
        self._operator = operator
        operator.setup()

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table_to_items(table)
        out, seconds = call_stage(self._stage_name, self._operator, rows)
        carried = {name: table.column(name) for name in table.column_names if name.startswith(SECONDS_PREFIX)}
        share = seconds / len(out) if out else 0.0
        carried[f"{SECONDS_PREFIX}{self._stage_index}"] = pa.array([share] * len(out), type=pa.float64())
        return items_to_table(out, extra_columns=carried)


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
        self.placements: dict[str, dict[str, Any]] = {}

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
        placements = [stage_placement(s, cluster_gpus=resources.get("GPU", 0.0)) for s in stages]
        if self.config.ray_fit_cpus:
            placements = fit_cpus(placements, cluster_cpus=resources.get("CPU", 1.0))
        self.placements = {s.name: p for s, p in zip(stages, placements)}
        dataset = ray.data.from_arrow(_input_tables(rows, stages[0].batch_size))
        for index, (stage, placement) in enumerate(zip(stages, placements)):
            dataset = dataset.map_batches(
                _RayStageWorker,
                fn_constructor_kwargs={"stage_name": stage.name, "stage_index": index, "operator": stage.operator},
                batch_format="pyarrow",
                zero_copy_batch=True,
                batch_size=placement["batch_size"],
                num_cpus=placement["num_cpus"],
                num_gpus=placement["num_gpus"],
                compute=ray.data.ActorPoolStrategy(size=placement["concurrency"]),
            )
        return dataset

    def _stream(self, stages: list[Stage], rows: list[dict[str, Any]]) -> Iterator[Batch]:
        recorder = StatsRecorder(engine=self.name, stage_names=[s.name for s in stages])
        if not rows:
            self.stats = recorder.finish()
            return
        dataset = self._build(stages, rows)
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=stages[-1].batch_size):
            for index in range(len(stages)):
                column = table.column(f"{SECONDS_PREFIX}{index}")
                recorder.add(index, len(column), float(sum(column.to_pylist())))
            batch = rows_to_batch(table_to_items(table))
            recorder.run.count_output(batch)
            yield batch
        self.stats = recorder.finish()
