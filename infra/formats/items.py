"""Work-item statuses and the pass-through convention, defined once for every engine and operator.

An item of a columnar batch is ``pending`` (still being processed) or ``failed`` (an earlier step
gave up on it, with a ``reason`` naming the item and the cause). An operator works on pending
items only and leaves failed ones as they are; its new columns get an empty value for them.
When a run ends every input is ``written``, ``filtered`` or ``failed`` (``inputs.parquet``).

    status = ItemStatus.of(batch)
    for i in status.pending():
        try:
            ...
        except ValueError as exc:
            status.fail(i, f"item {status.keys[i]}: {exc}")
    out = status.write(dict(batch))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger(__name__)

__all__ = [
    "STATUS_PENDING",
    "STATUS_FAILED",
    "STATUS_WRITTEN",
    "STATUS_FILTERED",
    "INPUT_STATUSES",
    "ItemStatus",
]

STATUS_PENDING = "pending"
STATUS_FAILED = "failed"
STATUS_WRITTEN = "written"
STATUS_FILTERED = "filtered"
# Every input of a committed dataset version ends in exactly one of these.
INPUT_STATUSES = (STATUS_WRITTEN, STATUS_FILTERED, STATUS_FAILED)


@dataclass
class ItemStatus:
    """The ``key``/``status``/``reason`` columns of one batch, as mutable lists."""

    keys: list[Any]
    status: list[str]
    reason: list[str | None]

    @classmethod
    def of(cls, batch: Mapping[str, Sequence[Any]], size: int | None = None) -> "ItemStatus":
        """Read the columns of ``batch`` (absent ones: every item pending, no reason, key None)."""
        if size is None:
            sizes = {len(column) for column in batch.values()}
            if len(sizes) > 1:
                raise ValueError(f"batch columns have different lengths: { {k: len(v) for k, v in batch.items()} }")
            size = sizes.pop() if sizes else 0
        status = batch.get("status")
        reason = batch.get("reason")
        keys = batch.get("key")
        return cls(
            keys=list(keys) if keys is not None else [None] * size,
            status=[STATUS_PENDING if s is None else str(s) for s in status] if status is not None
            else [STATUS_PENDING] * size,
            reason=list(reason) if reason is not None else [None] * size,
        )

    def __len__(self) -> int:
        return len(self.status)

    def is_failed(self, index: int) -> bool:
        return self.status[index] == STATUS_FAILED

    def pending(self) -> list[int]:
        """Positions of the items an operator should work on."""
        return [i for i, s in enumerate(self.status) if s != STATUS_FAILED]

    def fail(self, index: int, reason: str) -> None:
        """Mark item ``index`` failed; an item that already failed keeps its first reason."""
        if self.status[index] == STATUS_FAILED:
            return
        self.status[index] = STATUS_FAILED
        self.reason[index] = str(reason)

    def write(self, out: dict[str, Any]) -> dict[str, Any]:
        """Set the ``status`` and ``reason`` columns of ``out`` (returned)."""
        out["status"] = list(self.status)
        out["reason"] = list(self.reason)
        return out

    def map_pending(self, batch: Mapping[str, Sequence[Any]], writes: Sequence[str],
                    compute: Callable[[int], Mapping[str, Any]],
                    errors: tuple[type[BaseException], ...] = (ValueError,)) -> dict[str, Any]:
        """``batch`` plus the ``writes`` columns from ``compute(i)`` for every pending item ``i``.

        ``compute`` returns ``{column: value}`` for the ``writes`` columns; one of ``errors``
        fails that item with its message (logged) and leaves its columns None; failed items are
        not computed. Statuses and reasons are written into the result.
        """
        columns: dict[str, list] = {name: [None] * len(self) for name in writes}
        for i in self.pending():
            try:
                out = compute(i)
            except errors as exc:
                log.warning("%s", exc)
                self.fail(i, str(exc))
                continue
            for name in writes:
                columns[name][i] = out[name]
        return self.write({**batch, **columns})
