"""The Beam engine: one DoFn per stage, in the style of Beam's RunInference.

Graph: ``Create`` (encoded items) -> per stage ``BatchElements(batch_size)`` -> ``ParDo(stage
DoFn)`` -> ``WriteToParquet`` -> the driver reads the Parquet files back and yields batches.

* Elements are ``(key, payload, seconds)``: the key, one item encoded by
  :mod:`labelmill.infra.formats.payload` (no pickle of user data; Beam's coders see only str,
  bytes and floats) and the operator seconds spent on the item so far, one entry per stage.
* The stage DoFn's ``setup()`` calls ``operator.setup()`` once per DoFn instance (model loading
  is separate from running); ``process`` takes one batch. Operator exceptions fail only the
  items that cause them (see :func:`labelmill.infra.engines.base.call_stage`); every item
  reaches the end.
* Runner: ``EngineConfig.beam_runner`` (default ``FnApiRunner``: in process, no Prism binary
  download - the plain ``DirectRunner`` first tries to fetch Prism, which needs the network);
  ``beam_options`` go to Beam's ``PipelineOptions`` verbatim (Flink, Spark, Dataflow, ...).
* Outputs reach the driver through Parquet files (``key``, ``payload``, ``seconds``) under
  ``beam_output_dir`` (default: a local temporary directory); on a cluster that must be a
  URL every worker and the driver can reach (``gs://``, ``s3://``, shared disk). The run
  directory is removed once the driver has read it. The whole Beam job finishes before the
  first batch is yielded. Output order is unspecified.
* A ``sink_stage`` (e.g. the shard writer per work unit) runs as the last DoFn inside the job,
  so at scale only its small outputs (manifest rows) travel back to the driver.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from typing import Any, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam import typehints
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from labelmill.infra import storage
from labelmill.infra.engines.base import RunStats, StatsRecorder, call_stage, prepare_items, resolve_stages
from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.formats.payload import KEY_COLUMN, PAYLOAD_COLUMN, decode_item, encode_item, iter_payloads
from labelmill.infra.pipeline import Batch, Pipeline, Stage, rows_to_batch

__all__ = ["BeamEngine", "StageDoFn", "pipeline_options", "WIRE_TYPE"]

logger = logging.getLogger(__name__)

SECONDS_COLUMN = "seconds"
_OUTPUT_PREFIX = "items"
_ROW_GROUP_BYTES = 32 * 1024 * 1024


def pipeline_options(config: EngineConfig) -> PipelineOptions:
    """Beam ``PipelineOptions`` for the configured runner plus the pass-through options."""
    return PipelineOptions([f"--runner={config.beam_runner}", *config.beam_options])


WIRE_TYPE = typehints.Tuple[str, bytes, typehints.Tuple[float, ...]]


def _output_schema() -> pa.Schema:
    return pa.schema(
        [(KEY_COLUMN, pa.string()), (PAYLOAD_COLUMN, pa.large_binary()), (SECONDS_COLUMN, pa.list_(pa.float64()))]
    )


class StageDoFn(beam.DoFn):
    """One stage on batches of wire elements ``(key, payload, seconds)``."""

    def __init__(self, *, stage_name: str, operator: Any) -> None:
        super().__init__()
        self._stage_name = stage_name
        self._operator = operator

    def setup(self) -> None:
        self._operator.setup()

    def process(self, elements: list) -> Iterator[tuple]:
        rows = [decode_item(payload) for _, payload, _ in elements]
        out, seconds = call_stage(self._stage_name, self._operator, rows)
        share = seconds / len(out) if out else 0.0
        for (key, _, spent), row in zip(elements, out):
            yield key, encode_item(row), tuple(spent) + (share,)

    def display_data(self) -> dict:
        return {"stage": self._stage_name, "operator": type(self._operator).__qualname__}


def _read_batches(handle: Any, batch_size: int) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet file, one row group in memory at a time.

    (``ParquetFile.iter_batches`` keeps far more in memory on these files: Beam writes the
    payload column dictionary-encoded.)
    """
    parquet = pq.ParquetFile(handle)
    for group in range(parquet.metadata.num_row_groups):
        yield from parquet.read_row_group(group).to_batches(max_chunksize=batch_size)


def _to_record(element: tuple) -> dict[str, Any]:
    key, payload, seconds = element
    return {KEY_COLUMN: key, PAYLOAD_COLUMN: payload, SECONDS_COLUMN: list(seconds)}


class BeamEngine:
    """Apache Beam engine. ``stats`` holds the last finished run's :class:`RunStats`."""

    name = "beam"

    def __init__(self, *, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig(name="beam")
        self.stats: RunStats | None = None

    def run(self, pipeline: Pipeline, items: list[dict[str, Any]], *, sink_stage: Stage | None = None) -> Iterator[Batch]:
        """Run the Beam job, then stream its outputs (in no particular order) from the output files."""
        stages = resolve_stages(pipeline, self.config, sink_stage)
        rows = prepare_items(items)
        return self._stream(pipeline.name, stages, rows)

    def _run_job(self, pipeline_name: str, stages: list[Stage], rows: list[dict[str, Any]], output_dir: str) -> None:
        job = beam.Pipeline(options=pipeline_options(self.config))
        elements = [(row["key"], encode_item(row), ()) for row in rows]
        collection = job | "Create" >> beam.Create(elements).with_output_types(WIRE_TYPE)
        for stage in stages:
            collection = (
                collection
                | f"Batch[{stage.name}]" >> beam.BatchElements(min_batch_size=stage.batch_size, max_batch_size=stage.batch_size)
                | f"Run[{stage.name}]" >> beam.ParDo(StageDoFn(stage_name=stage.name, operator=stage.operator)).with_output_types(WIRE_TYPE)
            )
        _ = (
            collection
            | "ToRecords" >> beam.Map(_to_record)
            | "WriteItems" >> beam.io.WriteToParquet(
                storage.join(output_dir, _OUTPUT_PREFIX),
                schema=_output_schema(),
                file_name_suffix=".parquet",
                # Beam buffers this many records before building an Arrow batch (default 1000,
                # i.e. a GB of 1 MB items); one stage batch keeps the buffer small.
                record_batch_size=stages[-1].batch_size,
                row_group_buffer_size=_ROW_GROUP_BYTES,
            )
        )
        logger.info("beam engine: running pipeline %s on %s", pipeline_name, self.config.beam_runner)
        result = job.run()
        state = result.wait_until_finish()
        if state != PipelineState.DONE:
            raise RuntimeError(f"beam engine: pipeline {pipeline_name} ended in state {state}")

    def _stream(self, pipeline_name: str, stages: list[Stage], rows: list[dict[str, Any]]) -> Iterator[Batch]:
        recorder = StatsRecorder(engine=self.name, stage_names=[s.name for s in stages])
        if not rows:
            self.stats = recorder.finish()
            return
        temporary = self.config.beam_output_dir is None
        root = tempfile.mkdtemp(prefix="labelmill-beam-") if temporary else self.config.beam_output_dir
        output_dir = storage.join(root, f"run-{uuid.uuid4().hex}")
        try:
            self._run_job(pipeline_name, stages, rows, output_dir)
            fs, _ = storage.filesystem(output_dir)
            for url in storage.list_files(output_dir, f"{_OUTPUT_PREFIX}*.parquet"):
                with fs.open(storage.filesystem(url)[1], "rb") as handle:
                    for table in _read_batches(handle, stages[-1].batch_size):
                        for index in range(len(stages)):
                            spent = [s[index] for s in table.column(SECONDS_COLUMN).to_pylist()]
                            recorder.add(index, len(spent), float(sum(spent)))
                        batch = rows_to_batch(decode_item(p) for p in iter_payloads(table))
                        recorder.run.count_output(batch)
                        yield batch
        finally:
            if temporary:
                shutil.rmtree(root, ignore_errors=True)
            else:
                storage.remove(output_dir, recursive=True)
        self.stats = recorder.finish()
