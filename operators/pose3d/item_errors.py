"""One item's error becomes that item's failure: the reasons the pose3d operators give.

An operator is called per batch by every engine; an exception escaping ``__call__`` would stop
the batch and the run. Operators therefore turn what goes wrong with one item into that item's
``failed`` status (:class:`~labelmill.infra.formats.items.ItemStatus`), with a reason a person
can act on:

* an expected problem with the item's data (a ``ValueError`` naming it) keeps its message;
* anything else (a bug, a library error on odd input) is logged with its traceback and the
  reason carries the exception's type and message, so it is never swallowed silently.

:func:`isolate` runs a batched computation (a fit, a network over stacked frames) and, if it
raises, runs it again item by item, so the items that do not fail still get their results
(the batched kernels give every item the same result whatever shares its batch).
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence, TypeVar

__all__ = ["failure_reason", "isolate"]

log = logging.getLogger(__name__)

R = TypeVar("R")


def failure_reason(what: str, key: object, exc: BaseException) -> str:
    """``"<what> of item <key>: <message>"``; for an exception other than ``ValueError`` the message
    is ``"unexpected <Type>: <message>"`` and the traceback is logged."""
    if isinstance(exc, ValueError):
        log.warning("%s of item %s failed: %s", what, key, exc)
        return f"{what} of item {key}: {exc}"
    log.warning("%s of item %s failed unexpectedly", what, key, exc_info=exc)
    return f"{what} of item {key}: unexpected {type(exc).__name__}: {exc}"


def isolate(compute: Callable[[Sequence[int]], Mapping[int, R]], items: Sequence[int], *, what: str,
            keys: Sequence[object]) -> tuple[dict[int, R], dict[int, str]]:
    """``compute(items)`` as ``({item: result}, {})``; if it raises, ``compute([item])`` for each
    item, giving ``({item: result} of those that worked, {item: reason} of those that did not)``.

    ``keys[item]`` names an item in its reason (:func:`failure_reason`).
    """
    items = list(items)
    if not items:
        return {}, {}
    try:
        return dict(compute(items)), {}
    except Exception as exc:  # noqa: BLE001 - find the item at fault, fail only it
        if len(items) == 1:
            return {}, {items[0]: failure_reason(what, keys[items[0]], exc)}
        log.warning("%s of %d items failed (%s: %s); retrying them one by one", what, len(items),
                    type(exc).__name__, exc)
    results: dict[int, R] = {}
    failures: dict[int, str] = {}
    for item in items:
        try:
            results.update(compute([item]))
        except Exception as exc:  # noqa: BLE001
            failures[item] = failure_reason(what, keys[item], exc)
    return results, failures
