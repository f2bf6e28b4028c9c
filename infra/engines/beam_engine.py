"""The Beam engine: one DoFn per stage, in the style of Beam's RunInference.

Graph: ``ReadFromParquetBatched`` (the input files) -> ``FlatMap`` to wire elements ->
``Reshuffle`` -> per stage ``BatchElements(batch_size)`` -> ``ParDo(stage DoFn)`` ->
``WriteToParquet`` -> the driver reads the output files back and yields batches.

* Input: before the job starts the driver encodes the items one row group at a time into
  Parquet files (``key``, ``payload``, ``seconds``; row groups of about 16 MB, files of about
  64 MB, no dictionary encoding) under ``<run dir>/input/`` (:func:`write_input`, through
  :mod:`labelmill.infra.storage`), so the job graph holds only their file pattern: its size does
  not grow with the corpus and the driver holds one row group of encoded payloads at a time.
  The job reads them with Beam's own ``ReadFromParquetBatched``: a splittable file source whose
  split points are row groups, so a runner can divide and rebalance the input across workers,
  and each reader holds one row group at a time (``MatchFiles`` + ``ReadMatches`` + a DoFn
  would split only per file and would repeat what the source already does).
  ``Reshuffle`` then redistributes the items, so they do not stay in the few bundles that
  read them (on Dataflow/Flink otherwise every stage runs where its row groups were read).
* Elements are ``(key, payload, seconds)`` (:data:`WIRE_TYPE`): the key, one item encoded by
  :mod:`labelmill.infra.formats.payload` (no pickle of user data; Beam's coders see only str,
  bytes and floats) and the operator seconds spent on the item so far, one entry per stage.
* The stage DoFn's ``setup()`` calls ``operator.setup()`` once per DoFn instance (model loading
  is separate from running); ``process`` takes one batch. Operator exceptions fail only the
  items that cause them (see :func:`labelmill.infra.engines.base.call_stage`); every item
  reaches the end.
* Runner: ``EngineConfig.beam_runner`` (default ``FnApiRunner``: in process, no Prism binary
  download - the plain ``DirectRunner`` first tries to fetch Prism, which needs the network);
  ``beam_options`` go to Beam's ``PipelineOptions`` verbatim (Flink, Spark, Dataflow, ...).
* Outputs reach the driver through Parquet files (same columns) in the run directory
  ``beam_output_dir/run-<uuid>`` (default: under a local temporary directory); on a cluster
  that must be a URL every worker and the driver can reach (``gs://``, ``s3://``, shared disk):
  the workers read the input from it and write the outputs to it, with Beam's own filesystems.
  The run directory (input included) is removed once the driver has read it. The whole Beam
  job finishes before the first batch is yielded. Output order is unspecified.
* A ``sink_stage`` (e.g. the shard writer per work unit) runs as the last DoFn inside the job,
  so at scale only its small outputs (manifest rows) travel back to the driver.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import uuid
from typing import Any, Iterable, Iterator

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

__all__ = ["BeamEngine", "StageDoFn", "pipeline_options", "build_job", "write_input", "WIRE_TYPE"]

logger = logging.getLogger(__name__)

SECONDS_COLUMN = "seconds"
_OUTPUT_PREFIX = "items"
_ROW_GROUP_BYTES = 32 * 1024 * 1024
_INPUT_DIR = "input"
_INPUT_PREFIX = "items"
_INPUT_ROW_GROUP_BYTES = 16 * 1024 * 1024
_INPUT_FILE_BYTES = 64 * 1024 * 1024


def pipeline_options(config: EngineConfig) -> PipelineOptions:
    """Beam ``PipelineOptions`` for the configured runner plus the pass-through options."""
    return PipelineOptions([f"--runner={config.beam_runner}", *config.beam_options])


_ENDPOINT_TIMEOUT_S = 10.0


def check_job_endpoint(options: PipelineOptions, *, timeout_s: float = _ENDPOINT_TIMEOUT_S) -> None:
    """Fail fast when a portable runner's ``--job_endpoint`` does not answer.

    Beam's PortableRunner waits on an unreachable job service without a word; one TCP connect
    with a timeout turns that into a ``ConnectionError`` naming the endpoint and the option.
    An ``embed`` endpoint or none (the runner starts its own job service) is not checked.
    """
    from apache_beam.options.pipeline_options import PortableOptions

    endpoint = options.view_as(PortableOptions).job_endpoint
    if not endpoint or endpoint == "embed":
        return
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--job_endpoint={endpoint!r} is not HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"beam engine: the job service at --job_endpoint={endpoint} does not answer "
                              f"({type(exc).__name__}: {exc}); start it (e.g. the Flink job server) or fix "
                              "the endpoint") from None


WIRE_TYPE = typehints.Tuple[str, bytes, typehints.Tuple[float, ...]]


def _wire_schema() -> pa.Schema:
    """Columns of the input and output files: one wire element per row."""
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


# ----------------------------------------------------------------------------- job input


def _input_row_groups(rows: Iterable[dict[str, Any]], max_bytes: int) -> Iterator[pa.Table]:
    """Encoded items as tables in the wire schema, each of about ``max_bytes`` of payloads."""
    keys: list[str] = []
    payloads: list[bytes] = []
    size = 0
    for row in rows:
        payload = encode_item(row)
        keys.append(row["key"])
        payloads.append(payload)
        size += len(payload)
        if size >= max_bytes:
            yield _input_table(keys, payloads)
            keys, payloads, size = [], [], 0
    if keys:
        yield _input_table(keys, payloads)


def _input_table(keys: list[str], payloads: list[bytes]) -> pa.Table:
    """One row group of input: no operator seconds spent yet."""
    return pa.table(
        [pa.array(keys, pa.string()), pa.array(payloads, pa.large_binary()), pa.array([[]] * len(keys), pa.list_(pa.float64()))],
        schema=_wire_schema(),
    )


def write_input(
    rows: Iterable[dict[str, Any]],
    input_dir: str,
    *,
    row_group_bytes: int = _INPUT_ROW_GROUP_BYTES,
    file_bytes: int = _INPUT_FILE_BYTES,
) -> list[str]:
    """Write the encoded items to ``input_dir/items-NNNNN.parquet``; returns the files' URLs.

    Items are encoded one row group (about ``row_group_bytes`` of payloads) at a time; a file
    is closed once it holds ``file_bytes`` or more. Each file is written atomically. The
    payload column is not dictionary-encoded (payloads are unique; a dictionary would only
    cost reader memory).
    """
    groups = _input_row_groups(rows, row_group_bytes)
    group = next(groups, None)
    urls: list[str] = []
    while group is not None:
        url = storage.join(input_dir, f"{_INPUT_PREFIX}-{len(urls):05d}.parquet")
        with storage.atomic_open(url) as handle, pq.ParquetWriter(handle, _wire_schema(), use_dictionary=False) as writer:
            written = 0
            while group is not None and written < file_bytes:
                writer.write_table(group, row_group_size=group.num_rows)
                written += group.nbytes
                group = next(groups, None)
        urls.append(url)
    return urls


def _to_wire(table: pa.Table) -> Iterator[tuple]:
    """Wire elements ``(key, payload, seconds)`` of one input row group."""
    keys = table.column(KEY_COLUMN).to_pylist()
    seconds = table.column(SECONDS_COLUMN).to_pylist()
    for key, payload, spent in zip(keys, iter_payloads(table), seconds):
        yield key, bytes(payload), tuple(spent)


# ----------------------------------------------------------------------------- job graph


def _to_record(element: tuple) -> dict[str, Any]:
    key, payload, seconds = element
    return {KEY_COLUMN: key, PAYLOAD_COLUMN: payload, SECONDS_COLUMN: list(seconds)}


def build_job(config: EngineConfig, stages: list[Stage], rows: Iterable[dict[str, Any]], run_dir: str) -> beam.Pipeline:
    """Write the items' input files under ``run_dir`` and return the Beam job (not run yet).

    The job reads ``run_dir/input/``, redistributes the items, runs ``stages`` and writes its
    outputs to ``run_dir/items-*.parquet``. Its graph holds file patterns, not items. Raises
    ``ValueError`` for no items (Beam's file source refuses a pattern that matches nothing).
    """
    input_dir = storage.join(run_dir, _INPUT_DIR)
    if not write_input(rows, input_dir, row_group_bytes=_INPUT_ROW_GROUP_BYTES, file_bytes=_INPUT_FILE_BYTES):
        raise ValueError("beam engine: a job needs at least one item")
    job = beam.Pipeline(options=pipeline_options(config))
    collection = (
        job
        | "ReadItems" >> beam.io.ReadFromParquetBatched(storage.join(input_dir, f"{_INPUT_PREFIX}-*.parquet"))
        | "ToWire" >> beam.FlatMap(_to_wire).with_output_types(WIRE_TYPE)
        | "Redistribute" >> beam.Reshuffle().with_output_types(WIRE_TYPE)
    )
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
            storage.join(run_dir, _OUTPUT_PREFIX),
            schema=_wire_schema(),
            file_name_suffix=".parquet",
            # Beam buffers this many records before building an Arrow batch (default 1000,
            # i.e. a GB of 1 MB items); one stage batch keeps the buffer small.
            record_batch_size=stages[-1].batch_size,
            row_group_buffer_size=_ROW_GROUP_BYTES,
        )
    )
    return job


# ----------------------------------------------------------------------------- driver


def _read_batches(handle: Any, batch_size: int) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet file, one row group in memory at a time.

    (``ParquetFile.iter_batches`` keeps far more in memory on these files: Beam writes the
    payload column dictionary-encoded.)
    """
    parquet = pq.ParquetFile(handle)
    for group in range(parquet.metadata.num_row_groups):
        yield from parquet.read_row_group(group).to_batches(max_chunksize=batch_size)


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

    def _run_job(self, pipeline_name: str, stages: list[Stage], rows: list[dict[str, Any]], run_dir: str) -> None:
        check_job_endpoint(pipeline_options(self.config))
        job = build_job(self.config, stages, rows, run_dir)
        logger.info("beam engine: running pipeline %s on %s", pipeline_name, self.config.beam_runner)
        result = job.run()
        state = result.wait_until_finish()
        if state != PipelineState.DONE:
            raise RuntimeError(f"beam engine: pipeline {pipeline_name} ended in state {state}")

    def _stream(self, pipeline_name: str, stages: list[Stage], rows: list[dict[str, Any]]) -> Iterator[Batch]:
        # Beam hands the driver its output when the job is done: progress counts arrive at the end
        recorder = StatsRecorder(engine=self.name, stage_names=[s.name for s in stages], total=len(rows))
        if not rows:
            self.stats = recorder.finish()
            return
        temporary = self.config.beam_output_dir is None
        root = tempfile.mkdtemp(prefix="labelmill-beam-") if temporary else self.config.beam_output_dir
        run_dir = storage.join(root, f"run-{uuid.uuid4().hex}")
        try:
            self._run_job(pipeline_name, stages, rows, run_dir)
            fs, _ = storage.filesystem(run_dir)
            for url in storage.list_files(run_dir, f"{_OUTPUT_PREFIX}*.parquet"):
                with fs.open(storage.filesystem(url)[1], "rb") as handle:
                    for table in _read_batches(handle, stages[-1].batch_size):
                        for index in range(len(stages)):
                            spent = [s[index] for s in table.column(SECONDS_COLUMN).to_pylist()]
                            recorder.add(index, len(spent), float(sum(spent)))
                        batch = rows_to_batch(decode_item(p) for p in iter_payloads(table))
                        recorder.run.count_output(batch, table.nbytes)
                        yield batch
        finally:
            if temporary:
                shutil.rmtree(root, ignore_errors=True)
            else:
                storage.remove(run_dir, recursive=True)
        self.stats = recorder.finish()
