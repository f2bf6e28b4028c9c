"""Run progress for people: bars on a terminal, a line now and then in logs, nothing when quiet.

:func:`progress_mode` picks one of

* ``bars``: tqdm bars on stderr, one per stage (items done of the run's inputs, items/s, ETA)
  — an interactive terminal at the default log level;
* ``lines``: one log line every ``interval_s`` (30 s) with every stage's count, the rate and the
  ETA of the last stage — CI (``CI`` set) and non-TTY stderr, so logs get no redrawn bars and
  no 10-second dumps;
* ``off``: nothing — ``-q`` (the ``labelmill`` logger above INFO).

``LABELMILL_PROGRESS=bars|lines|off`` overrides the choice. :class:`StageProgress` is fed by
the engines' :class:`~labelmill.infra.engines.base.StatsRecorder` as items leave each stage
(the local engine: live per stage; Ray and Beam: as output reaches the driver, Ray adding its
own Ray Data bars on a terminal).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Sequence

__all__ = ["MODES", "progress_mode", "StageProgress"]

log = logging.getLogger(__name__)

MODES = ("bars", "lines", "off")


def progress_mode() -> str:
    """``bars``, ``lines`` or ``off`` for this process (module docstring)."""
    forced = os.environ.get("LABELMILL_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    if logging.getLogger("labelmill").getEffectiveLevel() > logging.INFO:
        return "off"
    if os.environ.get("CI") or not sys.stderr.isatty():
        return "lines"
    return "bars"


def _eta(done: int, total: int, rate: float) -> str:
    if rate <= 0 or done >= total:
        return "-"
    seconds = (total - done) / rate
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


class StageProgress:
    """Progress of one engine run over ``total`` inputs through ``stage_names``."""

    def __init__(self, engine: str, stage_names: Sequence[str], total: int, *, mode: str | None = None,
                 interval_s: float = 30.0) -> None:
        self.engine = engine
        self.names = list(stage_names)
        self.total = int(total)
        self.mode = mode or progress_mode()
        if self.mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {self.mode!r}")
        self.interval_s = float(interval_s)
        self.done = [0] * len(self.names)
        self.started = self._last = time.perf_counter()
        self._bars: list[Any] = []
        if self.mode == "bars" and self.total > 0:
            from tqdm import tqdm

            width = max((len(n) for n in self.names), default=0)
            self._bars = [tqdm(total=self.total, desc=f"{engine} {n:<{width}}", unit="item", position=i, leave=True,
                               file=sys.stderr, dynamic_ncols=True) for i, n in enumerate(self.names)]

    def update(self, stage_index: int, items: int) -> None:
        """``items`` more left stage ``stage_index``."""
        self.done[stage_index] += items
        if self._bars:
            self._bars[stage_index].update(items)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self._last >= self.interval_s:
                self._last = now
                log.info("%s", self.line())

    def line(self) -> str:
        """``<engine>: decode 12/48, ..., samples 8/48 (17%), 1.9 items/s, ETA 21 s``."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        last = self.done[-1] if self.done else 0
        rate = last / elapsed
        counts = ", ".join(f"{n} {d}/{self.total}" for n, d in zip(self.names, self.done))
        share = f" ({100 * last / self.total:.0f}%)" if self.total else ""
        return f"{self.engine}: {counts}{share}, {rate:.1f} items/s, ETA {_eta(last, self.total, rate)}"

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars = []
