"""A stage whose results are stored by the worker that computes them, and reused when they exist.

:func:`persist_pipeline` wraps every stage of a :class:`~labelmill.infra.pipeline.Pipeline` in a
:class:`PersistedStage`, itself an ordinary operator, so every engine (local, Ray Data, Beam) runs
it unchanged. Per item the wrapper

1. derives the stage key from the upstream key (:mod:`labelmill.infra.results`);
2. if the result is stored (or a failure is recorded), restores its small columns and moves on
   (``reused``) without calling the operator, whose heavy state (models) is never loaded then;
3. otherwise loads the columns the operator ``reads`` from the stored results of the stages
   that wrote them, calls the operator on the batch of such items, stores the columns it added
   (and a file column such as the samples' tar fragment as its own file), and records a
   per-item failure with its reason (``computed``);
4. drops every heavy column from the item: what travels between stages and back to the driver
   is the item's identity, its status, its result keys (``_keys``), what each stage did
   (``_work``), scalar columns and the columns a stage names ``inline`` (small summaries).

Failed items are routed around the operator (it only sees items that still need work). With
``recompute`` (``--full``) stored results are ignored and overwritten. An operator fails its
own bad items (those failures are stored and reused); if it raises anyway, the batch is run
again item by item and only the items that raise fail, with the exception in their reason and
the traceback in the log; such failures, and an item whose result the store refuses (an
``OSError``), are not stored, so the next run tries them again. No single item stops a run.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from labelmill.infra.formats.items import STATUS_FAILED, ItemStatus
from labelmill.infra.pipeline import Batch, Pipeline, Stage, batch_to_rows, rows_to_batch
from labelmill.infra.results import ResultStore, root_key, stage_fingerprint, stage_key

log = logging.getLogger(__name__)

__all__ = ["KEYS_COLUMN", "WORK_COLUMN", "INLINE_COLUMN", "StagePlan", "PersistedStage", "persist_pipeline", "chain_keys",
           "COMPUTED", "REUSED"]

KEYS_COLUMN = "_keys"  # {stage name: result key}, in stage order
WORK_COLUMN = "_work"  # {stage name: "computed" | "reused"}
INLINE_COLUMN = "_inline"  # stored in each result: the names of its columns that travel inline
FILES_COLUMN = "_files"  # stored in each result: the file columns written beside it (listed inline)
COMPUTED, REUSED = "computed", "reused"
_MAX_INLINE_TEXT = 256
_UNEXPECTED = "_unexpected_failure"  # set on an item whose operator raised: its failure is not stored


def _is_small(value: Any) -> bool:
    """Scalars travel with the item; arrays, lists and long strings stay on storage."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= _MAX_INLINE_TEXT
    return isinstance(value, np.generic) and not value.dtype.hasobject


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """What a persisted stage needs to know about itself and the stages before it."""

    name: str
    fingerprint: str
    reads: tuple[str, ...] | None  # columns the operator reads; None: all it can be given
    inline: tuple[str, ...] = ()  # added columns that travel with the item whatever their size
    files: Mapping[str, str] = dataclasses.field(default_factory=dict)  # bytes column -> file extension
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)  # column -> stage that wrote it
    earlier: tuple[str, ...] = ()  # every stage before this one, nearest last
    input_columns: tuple[str, ...] = ()  # the work items' own columns

    @property
    def upstream(self) -> str | None:
        """The previous stage's name (None: the first stage)."""
        return self.earlier[-1] if self.earlier else None


class PersistedStage:
    """Operator wrapper: compute-or-reuse one stage per item (see the module docstring)."""

    def __init__(self, *, plan: StagePlan, operator: Any, out_url: str, recompute: bool = False) -> None:
        self.plan = plan
        self.operator = operator
        self.out_url = out_url
        self.recompute = recompute
        self.resources = dict(getattr(operator, "resources", {}) or {})
        self._store: ResultStore | None = None
        self._operator_ready = False

    def setup(self) -> None:
        """Open the store; the operator's own setup waits until an item needs computing."""
        self._store = ResultStore(self.out_url)

    def _ensure_operator(self) -> None:
        if not self._operator_ready:
            self.operator.setup()
            self._operator_ready = True

    # -- per item ------------------------------------------------------------------------------
    def key_for(self, row: Mapping[str, Any], keys: Mapping[str, str]) -> str:
        """This stage's result key for ``row`` given the earlier stages' keys (``{stage: key}``)."""
        plan = self.plan
        upstream = keys[plan.upstream] if plan.upstream else root_key(row)
        side = None
        if hasattr(self.operator, "item_fingerprint"):
            side = self.operator.item_fingerprint(row)
        reads = [c for c in (plan.reads or ()) if c in plan.input_columns]
        return stage_key(plan.fingerprint, upstream, row, reads, side)

    def _restore(self, row: dict[str, Any], key: str) -> bool:
        """Reuse a stored result or failure for ``row``; False when there is none."""
        store, name = self._store, self.plan.name
        if store.exists(name, key):
            row.update(store.read(name, key, listed_in=INLINE_COLUMN))
            for column in row.pop(FILES_COLUMN, None) or ():
                row[f"{column}_url"] = store.url(name, key, self.plan.files[column])
            return True
        reason = store.read_failure(name, key)
        if reason is not None:
            row["status"], row["reason"] = STATUS_FAILED, reason
            return True
        return False

    def _inputs(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row plus the stored columns the operator reads that are not inline."""
        plan, store = self.plan, self._store
        keys = row.get(KEYS_COLUMN) or {}
        full = dict(row)
        if plan.reads is None:
            for stage in plan.earlier:
                full.update({k: v for k, v in store.read(stage, keys[stage]).items()
                             if k not in (INLINE_COLUMN, FILES_COLUMN) and k not in row})
            return full
        wanted: dict[str, list[str]] = {}
        for column in plan.reads:
            if column in row:
                continue
            stage = plan.sources.get(column)
            if stage is not None and stage in keys:
                wanted.setdefault(stage, []).append(column)
        for stage, columns in wanted.items():
            full.update(store.read(stage, keys[stage], columns))
        return full

    def _store_output(self, row: dict[str, Any], given: Mapping[str, Any], out: dict[str, Any], key: str) -> dict[str, Any]:
        """Persist what the operator added for one item; return the item with only small columns."""
        store, plan = self._store, self.plan
        added = {c: v for c, v in out.items() if c not in given and c not in ("status", "reason", _UNEXPECTED)}
        result = dict(row)
        result["status"], result["reason"] = out.get("status", row.get("status")), out.get("reason", row.get("reason"))
        if result["status"] == STATUS_FAILED:
            if not out.get(_UNEXPECTED):  # an operator's own verdict is stored; a raise is retried next run
                store.write_failure(plan.name, key, str(result["reason"] or STATUS_FAILED))
            return result
        inline: list[str] = []
        files: list[str] = []
        for column, extension in plan.files.items():
            data = added.pop(column, None)
            if data is None:
                continue
            result[f"{column}_url"] = store.write_file(plan.name, key, extension, bytes(data))
            files.append(column)
        for column, value in added.items():
            if column in plan.inline or _is_small(value):
                inline.append(column)
                result[column] = value
        if files:  # restored with the inline columns, then turned into their URLs
            inline.append(FILES_COLUMN)
        store.write(plan.name, key, {**added, INLINE_COLUMN: sorted(inline), FILES_COLUMN: files})
        return result

    # -- batch ---------------------------------------------------------------------------------
    def __call__(self, batch: Batch) -> Batch:
        if self._store is None:
            self.setup()
        rows = batch_to_rows(batch)
        status = ItemStatus.of(batch, len(rows))
        todo: list[tuple[int, str]] = []
        for i in status.pending():
            row = rows[i] = dict(rows[i])
            try:
                key = self.key_for(row, row.get(KEYS_COLUMN) or {})
            except Exception as exc:  # noqa: BLE001 - a per-item problem fails the item only
                row["status"], row["reason"] = STATUS_FAILED, f"stage {self.plan.name}: item {row.get('key')}: {exc}"
                continue
            row[KEYS_COLUMN] = {**(row.get(KEYS_COLUMN) or {}), self.plan.name: key}
            if not self.recompute and self._restore(row, key):
                row[WORK_COLUMN] = {**(row.get(WORK_COLUMN) or {}), self.plan.name: REUSED}
            else:
                todo.append((i, key))
        if todo:
            self._ensure_operator()
            given = [self._inputs(rows[i]) for i, _ in todo]
            out_rows = self._call_isolated(given)
            for (i, key), inputs, out in zip(todo, given, out_rows):
                try:
                    stored = self._store_output(rows[i], inputs, out, key)
                except OSError as exc:  # the store refused this item's result: fail the item, not the run
                    stored = dict(rows[i], status=STATUS_FAILED,
                                  reason=f"stage {self.plan.name}: item {rows[i].get('key')}: cannot store its result: "
                                         f"{type(exc).__name__}: {exc}")
                stored[WORK_COLUMN] = {**(rows[i].get(WORK_COLUMN) or {}), self.plan.name: COMPUTED}
                rows[i] = stored
        return rows_to_batch(rows)

    def _call_isolated(self, given: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The operator's output rows for ``given``. Operators fail their own bad items; if one
        raises anyway, the batch is run again item by item and only the items that raise fail
        (their reason names the stage, the item and the exception; the traceback is logged)."""
        name = self.plan.name

        def run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = batch_to_rows(self.operator(rows_to_batch(rows)))
            if len(out) != len(rows):
                raise RuntimeError(f"stage {name}: operator returned {len(out)} items for {len(rows)}")
            return out

        try:
            return run(given)
        except Exception as exc:  # noqa: BLE001 - one item must not stop the run
            if len(given) > 1:
                log.warning("stage %s: a batch of %d items raised %s: %s; running them one by one", name, len(given),
                            type(exc).__name__, exc)
        out_rows = []
        for row in given:
            try:
                out_rows.extend(run([row]))
            except Exception as exc:  # noqa: BLE001
                log.warning("stage %s: item %s raised", name, row.get("key"), exc_info=exc)
                out_rows.append({**row, "status": STATUS_FAILED, _UNEXPECTED: True,
                                 "reason": f"stage {name}: item {row.get('key')}: unexpected {type(exc).__name__}: {exc}"})
        return out_rows


def chain_keys(pipeline: Pipeline, row: Mapping[str, Any]) -> dict[str, str]:
    """Every stage's result key for an input item of a :func:`persist_pipeline` pipeline, in order.

    The keys depend only on the item, the stages' fingerprints and what ``item_fingerprint``
    reports, never on results, so the driver can compute them before any work runs: it is what
    the workers will compute (an incremental run that would only reuse is known in advance).
    """
    keys: dict[str, str] = {}
    for stage in pipeline.stages:
        keys[stage.name] = stage.operator.key_for(row, keys)
    return keys


def persist_pipeline(pipeline: Pipeline, *, out_url: str, input_columns: Sequence[str], recompute: bool = False,
                     inline: Mapping[str, Sequence[str]] | None = None,
                     files: Mapping[str, Mapping[str, str]] | None = None) -> Pipeline:
    """``pipeline`` with every stage wrapped in a :class:`PersistedStage` storing under ``out_url``.

    Operators may declare ``reads`` (columns they use) and ``writes`` (columns they add); a stage
    without ``reads`` is given every stored column of every earlier stage.
    ``inline``/``files``: per stage name, columns that travel inline / are stored as files.
    """
    inline, files = dict(inline or {}), dict(files or {})
    sources: dict[str, str] = {}
    stages: list[Stage] = []
    earlier: list[str] = []
    for stage in pipeline.stages:
        reads = getattr(stage.operator, "reads", None)
        plan = StagePlan(
            name=stage.name,
            fingerprint=stage_fingerprint(stage.name, stage.operator),
            reads=tuple(reads) if reads is not None else None,
            inline=tuple(inline.get(stage.name, ())),
            files=dict(files.get(stage.name, {})),
            sources=dict(sources),
            earlier=tuple(earlier),
            input_columns=tuple(input_columns),
        )
        wrapped = PersistedStage(plan=plan, operator=stage.operator, out_url=out_url, recompute=recompute)
        stages.append(dataclasses.replace(stage, operator=wrapped))
        for column in getattr(stage.operator, "writes", ()) or ():
            sources[column] = stage.name
        earlier.append(stage.name)
    unknown = set(inline) | set(files)
    unknown -= {s.name for s in pipeline.stages}
    if unknown:
        raise ValueError(f"persist_pipeline: no stage named {sorted(unknown)} in pipeline {pipeline.name!r}")
    return Pipeline(name=pipeline.name, stages=stages)
