"""The local engine: every stage in this process, one batch at a time (tests, debugging, laptops).

Streaming: the stages form a chain of generators, so a batch goes through stage k+1 before
stage k reads its next input; only about one batch per stage is in memory. Each stage gets
batches of its own ``batch_size`` (items are re-batched between stages). ``setup()`` is called
once per stage per run, on the pipeline's own operator instances, before the first batch.
Output keeps the input order.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from labelmill.infra.engines.base import RunStats, StatsRecorder, call_stage, prepare_items, resolve_stages
from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.formats.payload import encode_item
from labelmill.infra.pipeline import Batch, Pipeline, Stage, rows_to_batch

__all__ = ["LocalEngine"]

logger = logging.getLogger(__name__)


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Group a stream of items into lists of ``size`` (the last one may be shorter)."""
    pending: list[dict[str, Any]] = []
    for row in rows:
        pending.append(row)
        if len(pending) == size:
            yield pending
            pending = []
    if pending:
        yield pending


def _run_stage(stage: Stage, index: int, rows: Iterator[dict[str, Any]], recorder: StatsRecorder) -> Iterator[dict[str, Any]]:
    for chunk in _chunks(rows, stage.batch_size):
        out, seconds = call_stage(stage.name, stage.operator, chunk)
        recorder.add(index, len(out), seconds)
        yield from out


class LocalEngine:
    """In-process, sequential engine. ``stats`` holds the last finished run's :class:`RunStats`."""

    name = "local"

    def __init__(self, *, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig(name="local")
        self.stats: RunStats | None = None

    def run(self, pipeline: Pipeline, items: list[dict[str, Any]], *, sink_stage: Stage | None = None) -> Iterator[Batch]:
        """Output batches of the last stage (of the last stage's batch size), in input order."""
        stages = resolve_stages(pipeline, self.config, sink_stage)
        rows = prepare_items(items)
        return self._stream(stages, rows)

    def _stream(self, stages: list[Stage], rows: list[dict[str, Any]]) -> Iterator[Batch]:
        recorder = StatsRecorder(engine=self.name, stage_names=[s.name for s in stages], total=len(rows))
        for stage in stages:
            logger.debug("local engine: setting up stage %s", stage.name)
            stage.operator.setup()
        stream: Iterator[dict[str, Any]] = iter(rows)
        for index, stage in enumerate(stages):
            stream = _run_stage(stage, index, stream, recorder)
        for chunk in _chunks(stream, stages[-1].batch_size):
            batch = rows_to_batch(chunk)
            recorder.run.count_output(batch, sum(len(encode_item(row)) for row in chunk))
            yield batch
        self.stats = recorder.finish()
