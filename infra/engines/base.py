"""What every engine shares: the Engine protocol, run statistics, input checks, the guarded stage call.

Engine contract (all three engines):

* ``run(pipeline, items, sink_stage=None)`` returns an iterator over output batches of the last
  stage (``sink_stage`` when given). Every input item comes out exactly once, failed ones too.
* Output order is unspecified (the local engine happens to keep input order; Ray and Beam do
  not). Items are identified by their ``key``; consumers that need deterministic bytes (the
  shard writer) sort by key.
* An item's value for a column is the same on every engine. Batch composition differs between
  engines, and a column that no item of a batch has is absent from that batch: read a column of
  a row with ``row.get(name)`` (absent == None).
* Items enter with ``status="pending"`` and ``reason=None`` unless they carry their own.
* An operator exception never kills the run: the batch is retried item by item and the items
  that still raise go on with ``status="failed"`` and a reason naming the stage and the error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol, runtime_checkable

from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.formats.payload import find_unsupported
from labelmill.infra.progress import StageProgress
from labelmill.infra.pipeline import (
    STATUS_FAILED,
    STATUS_PENDING,
    Batch,
    Pipeline,
    Stage,
    batch_length,
    batch_to_rows,
    rows_to_batch,
    run_operator,
)

__all__ = [
    "Engine",
    "StageStats",
    "RunStats",
    "resolve_stages",
    "prepare_items",
    "call_stage",
    "collect_by_key",
]

logger = logging.getLogger(__name__)


@dataclass
class StageStats:
    """Work done by one stage over a run.

    ``seconds`` is the time spent inside the operator, summed over all workers (on Ray/Beam
    with several workers this is busy time, not wall time); ``items_per_s`` = items / seconds,
    the throughput of one worker.
    """

    name: str
    items: int = 0
    seconds: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "items": self.items, "seconds": self.seconds, "items_per_s": self.items_per_s}


@dataclass
class RunStats:
    """One engine run: wall time from ``run()`` to the last batch, items out, failed, stages.

    ``bytes_out``: the encoded size of the output items the driver received (what crossed the
    process boundary to the driver; the local engine counts what would have).
    """

    engine: str
    stages: list[StageStats]
    items: int = 0
    failed: int = 0
    wall_seconds: float = 0.0
    bytes_out: int = 0

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def stage(self, name: str) -> StageStats:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in this run (stages: {', '.join(s.name for s in self.stages)})")

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "items": self.items,
            "failed": self.failed,
            "wall_seconds": self.wall_seconds,
            "items_per_s": self.items_per_s,
            "bytes_out": self.bytes_out,
            "stages": [s.as_dict() for s in self.stages],
        }

    def count_output(self, batch: Batch, nbytes: int) -> None:
        """Count one output batch of ``nbytes`` encoded bytes."""
        statuses = batch.get("status", [])
        self.bytes_out += int(nbytes)
        self.items += batch_length(batch)
        self.failed += sum(1 for s in statuses if s == STATUS_FAILED)


@runtime_checkable
class Engine(Protocol):
    """Runs a :class:`Pipeline` over work items; ``stats`` describes the last finished run."""

    name: str
    stats: RunStats | None

    def run(self, pipeline: Pipeline, items: list[dict[str, Any]], *, sink_stage: Stage | None = None) -> Iterator[Batch]:
        ...


def resolve_stages(pipeline: Pipeline, config: EngineConfig, sink_stage: Stage | None) -> list[Stage]:
    """Pipeline stages with config overrides, plus the sink stage (which runs last, inside the engine)."""
    stages = config.apply(pipeline)
    if sink_stage is not None:
        if not isinstance(sink_stage, Stage):
            raise TypeError(f"sink_stage must be a Stage, got {type(sink_stage).__name__}")
        if sink_stage.name in {s.name for s in stages}:
            raise ValueError(f"sink stage name {sink_stage.name!r} clashes with a stage of pipeline {pipeline.name!r}")
        stages.append(sink_stage)
    if not stages:
        raise ValueError(f"pipeline {pipeline.name!r} has no stages to run")
    return stages


def prepare_items(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check work items (dicts with a unique string ``key``) and add ``status``/``reason`` defaults.

    Returns shallow copies; the caller's dicts are not changed.
    """
    prepared: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise TypeError(f"work item #{index} must be a dict, got {type(item).__name__}")
        key = item.get("key")
        if not isinstance(key, str) or not key:
            raise ValueError(f"work item #{index} needs a non-empty string 'key', got {key!r}")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"work item #{index}: key {key!r} is not valid UTF-8 text") from exc
        if key in seen:
            raise ValueError(f"duplicate work item key {key!r} (item #{index}); keys must be unique")
        seen.add(key)
        problem = find_unsupported(item)
        if problem:
            raise ValueError(f"work item {key!r}: {problem}")
        row = dict(item)
        row.setdefault("status", STATUS_PENDING)
        row.setdefault("reason", None)
        prepared.append(row)
    return prepared


def _failed_copy(row: dict[str, Any], reason: str) -> dict[str, Any]:
    out = dict(row)
    out["status"] = STATUS_FAILED
    out["reason"] = reason
    return out


def _call_isolated(stage_name: str, operator: Any, batch: Batch) -> list[dict[str, Any]]:
    """Run the operator; if it raises, retry item by item and fail the items that still raise."""
    try:
        return batch_to_rows(run_operator(operator, batch))
    except Exception as exc:  # noqa: BLE001 - an operator error must not kill the run
        rows = batch_to_rows(batch)
        if len(rows) == 1:
            key = rows[0].get("key")
            logger.warning("stage %s: item %s failed: %s: %s", stage_name, key, type(exc).__name__, exc)
            if rows[0].get("status") == STATUS_FAILED:  # already failed upstream: keep the first reason
                return rows
            return [_failed_copy(rows[0], f"stage {stage_name}: item {key}: {type(exc).__name__}: {exc}")]
        logger.warning(
            "stage %s: batch of %d items raised %s: %s; retrying item by item", stage_name, len(rows), type(exc).__name__, exc
        )
        out: list[dict[str, Any]] = []
        for row in rows:
            out.extend(_call_isolated(stage_name, operator, rows_to_batch([row])))
        return out


def call_stage(stage_name: str, operator: Any, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """Run one stage on a list of items; returns (output items in input order, seconds in the operator).

    Never raises for an item's sake: operator exceptions are isolated to the items that cause
    them, and an output value the wire format cannot carry fails its item (the value becomes
    None) so that every engine gives the same result. Raises RuntimeError only when the
    operator reorders or renames the items' keys (a bug in the operator).
    """
    if not rows:
        return [], 0.0
    start = time.perf_counter()
    out = _call_isolated(stage_name, operator, rows_to_batch(rows))
    seconds = time.perf_counter() - start
    in_keys = [r["key"] for r in rows]
    out_keys = [r.get("key") for r in out]
    if out_keys != in_keys:
        raise RuntimeError(
            f"stage {stage_name}: operator {type(operator).__name__} changed the items' keys or their order "
            f"(in: {in_keys[:5]}..., out: {out_keys[:5]}...); operators must keep every item in place"
        )
    for i, row in enumerate(out):
        problems = {column: find_unsupported(value, column) for column, value in row.items()}
        problems = {column: text for column, text in problems.items() if text}
        if problems:
            fixed = {column: (None if column in problems else value) for column, value in row.items()}
            if fixed.get("status") != STATUS_FAILED:
                fixed["status"] = STATUS_FAILED
                fixed["reason"] = f"stage {stage_name}: item {row['key']}: {next(iter(problems.values()))}"
            logger.warning("stage %s: item %s: %s", stage_name, row["key"], "; ".join(problems.values()))
            out[i] = fixed
    return out, seconds


def collect_by_key(batches: Iterable[Batch]) -> dict[str, dict[str, Any]]:
    """Output batches -> {key: item}; raises if a key comes out twice (an engine bug)."""
    out: dict[str, dict[str, Any]] = {}
    for batch in batches:
        for row in batch_to_rows(batch):
            key = row["key"]
            if key in out:
                raise RuntimeError(f"item {key!r} came out of the engine twice")
            out[key] = row
    return out


@dataclass
class StatsRecorder:
    """Accumulates per-stage stats during a run; engines publish ``finish()`` as ``engine.stats``."""

    engine: str
    stage_names: list[str]
    started: float = field(default_factory=time.perf_counter)
    total: int = 0  # the run's inputs: > 0 shows progress (infra/progress.py)
    progress: str | None = None  # progress mode; None: progress_mode()

    def __post_init__(self) -> None:
        self.run = RunStats(engine=self.engine, stages=[StageStats(name=n) for n in self.stage_names])
        self._progress = StageProgress(self.engine, self.stage_names, self.total, mode=self.progress) if self.total else None

    def add(self, stage_index: int, items: int, seconds: float) -> None:
        stats = self.run.stages[stage_index]
        stats.items += items
        stats.seconds += seconds
        if self._progress is not None:
            self._progress.update(stage_index, items)

    def finish(self) -> RunStats:
        self.run.wall_seconds = time.perf_counter() - self.started
        if self._progress is not None:
            self._progress.close()
        return self.run
