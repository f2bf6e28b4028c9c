"""Which stage results a dataset version was built from: ``results.parquet`` in the version.

One row per input (``input_key``, ``status``) with one string column per stage holding that
stage's result key (null where the input never reached the stage: it failed earlier). Two
readers rely on it:

* the **up-to-date check** of an incremental run: the driver computes every input's chain of
  stage keys before any work runs (:func:`~labelmill.infra.persisted_stage.chain_keys`); when
  LATEST holds exactly the same inputs with the same chains and the same ``config_digest``,
  nothing would be computed or written differently, so the run stops there ("up to date");
* **garbage collection** (:mod:`labelmill.infra.gc`): the results a kept version references are
  reachable, with every file stored under the same key (``.npz``, ``.failed.json``, ``.tar``).

At 300k inputs x 7 stages the file is ~2M short strings, about 80 MB before compression: it is
read with one request (or a few ranged reads) instead of 2M result lookups.
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from labelmill.infra import storage

__all__ = ["RESULTS_FILE", "results_table_bytes", "read_result_keys", "read_stage_keys", "chains_match"]

RESULTS_FILE = "results.parquet"
INPUT_COLUMN, STATUS_COLUMN = "input_key", "status"


def results_table_bytes(rows: Iterable[Mapping[str, Any]], stage_names: Sequence[str]) -> bytes:
    """Parquet bytes of ``results.parquet`` from ``(input_key, status, keys={stage: key})`` rows.

    Rows are sorted by input key, so the same run gives the same bytes.
    """
    rows = sorted(rows, key=lambda r: r["input_key"])
    columns: dict[str, list] = {INPUT_COLUMN: [r["input_key"] for r in rows],
                                STATUS_COLUMN: [r["status"] for r in rows]}
    for stage in stage_names:
        columns[stage] = [(r.get("keys") or {}).get(stage) for r in rows]
    schema = pa.schema([(name, pa.string()) for name in columns])
    sink = io.BytesIO()
    pq.write_table(pa.table(columns, schema=schema), sink, compression="zstd")
    return sink.getvalue()


def _read_table(version_url: str) -> pa.Table | None:
    url = storage.safe_join(version_url, RESULTS_FILE)
    if not storage.exists(url):
        return None
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle)


def read_result_keys(version_url: str) -> dict[str, tuple[str, dict[str, str]]] | None:
    """``{input_key: (status, {stage: key})}`` of a version; None when it has no results.parquet."""
    table = _read_table(version_url)
    if table is None:
        return None
    stages = [n for n in table.column_names if n not in (INPUT_COLUMN, STATUS_COLUMN)]
    inputs = table.column(INPUT_COLUMN).to_pylist()
    statuses = table.column(STATUS_COLUMN).to_pylist()
    keys = [table.column(s).to_pylist() for s in stages]
    return {name: (status, {s: k[i] for s, k in zip(stages, keys) if k[i] is not None})
            for i, (name, status) in enumerate(zip(inputs, statuses))}


def read_stage_keys(version_url: str) -> dict[str, set[str]] | None:
    """``{stage: every result key}`` a version references; None when it has no results.parquet."""
    table = _read_table(version_url)
    if table is None:
        return None
    return {stage: {k for k in table.column(stage).unique().to_pylist() if k}
            for stage in table.column_names if stage not in (INPUT_COLUMN, STATUS_COLUMN)}


def chains_match(recorded: Mapping[str, tuple[str, Mapping[str, str]]],
                 planned: Mapping[str, Mapping[str, str]], stage_names: Sequence[str],
                 failed_status: str) -> bool:
    """True when every input has the recorded chain of keys the plan would compute, and no more.

    ``planned``: per input the full chain (empty for an input that fails before its first key:
    failed when read, or its key could not be computed). A recorded chain that stops early must belong to an input that failed there: its
    failure is stored under that key and would be reused.
    """
    if recorded.keys() != planned.keys():
        return False
    for name, chain in planned.items():
        status, keys = recorded[name]
        if not keys:  # failed before its first key (e.g. unreadable): still so, or it changed
            if chain:
                return False
            continue
        if any(chain.get(stage) != key for stage, key in keys.items()):
            return False
        if len(keys) < len(chain) and status != failed_status:
            return False
    return True
