"""The engine-neutral pipeline description (DESIGN.md §2).

A pipeline is a plain list of stages. A stage wraps one operator: an object with a
keyword-only, picklable ``__init__``, a ``setup()`` that loads heavy state once per worker and
``__call__(batch) -> batch`` on columnar batches. A batch is ``dict[str, list]``: every column
is a list with one entry per work item (entries may be numpy arrays of any shape, bytes,
strings, numbers or None), all columns the same length.

Failure convention: a batch may carry ``status`` (``"pending"`` or ``"failed"``) and ``reason``
columns. An operator processes pending items only and passes failed ones through unchanged
(its new columns get ``None`` for them); a per-item error becomes ``status="failed"`` with a
reason naming the item, never an exception that kills the batch. Engines never drop an item:
every input item reaches the sink, so every input ends in exactly one status.

Engines (``infra/engines/``) run the same :class:`Pipeline` in process, on Ray Data or on
Apache Beam; engine choice is a flag, not a code change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from labelmill.infra.formats.items import STATUS_FAILED, STATUS_PENDING  # noqa: F401 (re-exported)

__all__ = [
    "Batch",
    "Operator",
    "Stage",
    "Pipeline",
    "batch_length",
    "rows_to_batch",
    "batch_to_rows",
]

Batch = dict[str, list]



@runtime_checkable
class Operator(Protocol):
    """What an engine needs from an operator."""

    def setup(self) -> None: ...

    def __call__(self, batch: Batch) -> Batch: ...


@dataclass(frozen=True)
class Stage:
    """One operator plus how engines should place it.

    ``batch_size``: items per call. ``num_cpus`` may be fractional (several actors share a
    core). ``num_gpus``: 0 for CPU stages; engines fall back to CPU when no GPU exists.
    ``concurrency``: a fixed number of parallel workers (actors); None (the default) lets the
    engine scale the pool with the cluster (Ray: an autoscaling actor pool from 1 up to what the
    cluster fits; Beam: the runner's own parallelism).
    """

    name: str
    operator: Any
    batch_size: int = 8
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"stage name {self.name!r} must be a non-empty identifier")
        if not callable(self.operator) or not hasattr(self.operator, "setup"):
            raise TypeError(f"stage {self.name}: operator must have setup() and __call__(batch)")
        if self.batch_size < 1 or (self.concurrency is not None and self.concurrency < 1):
            raise ValueError(f"stage {self.name}: batch_size and concurrency must be >= 1")
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise ValueError(f"stage {self.name}: num_cpus must be > 0 and num_gpus >= 0")

    @classmethod
    def of(cls, name: str, operator: Any, **overrides: Any) -> "Stage":
        """A stage using the operator's declared ``resources`` (num_cpus, num_gpus, batch_size)."""
        resources = dict(getattr(operator, "resources", {}) or {})
        kwargs = {k: resources[k] for k in ("batch_size", "num_cpus", "num_gpus", "concurrency") if k in resources}
        kwargs.update(overrides)
        return cls(name=name, operator=operator, **kwargs)


@dataclass
class Pipeline:
    """A named, ordered list of stages over work items keyed by the ``key`` column."""

    name: str
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"pipeline {self.name}: duplicate stage names {sorted(dup)}")


def batch_length(batch: Batch) -> int:
    """Number of items in ``batch``; raises if its columns disagree."""
    lengths = {len(v) for v in batch.values()}
    if len(lengths) > 1:
        raise ValueError(f"batch columns have different lengths: { {k: len(v) for k, v in batch.items()} }")
    return lengths.pop() if lengths else 0


def rows_to_batch(rows: Iterable[dict[str, Any]]) -> Batch:
    """List of per-item dicts -> columnar batch (missing columns become None)."""
    rows = list(rows)
    columns: list[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    return {c: [r.get(c) for r in rows] for c in columns}


def batch_to_rows(batch: Batch) -> list[dict[str, Any]]:
    n = batch_length(batch)
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def run_operator(operator: Callable[[Batch], Batch], batch: Batch) -> Batch:
    """Call ``operator`` on a batch and check it kept every item (no engine may lose one)."""
    n = batch_length(batch)
    out = operator(batch)
    if batch_length(out) != n:
        raise RuntimeError(f"operator {type(operator).__name__} returned {batch_length(out)} items for {n}")
    return out
