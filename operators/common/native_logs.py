"""Silence what native libraries print on the process's stderr (``-q``), around the calls that print.

MediaPipe's C++ core (absl / glog) writes lines such as ``W0000 ... inference_feedback_manager.cc``
straight to file descriptor 2, past Python's logging, and no environment variable of the wheel
turns them off. :func:`quiet_native_stderr` points fd 2 at ``/dev/null`` for the duration of a
block when ``LABELMILL_QUIET_NATIVE=1`` (the CLI sets it for ``-q``; engines' workers inherit
it) and restores it after; otherwise it does nothing. Anything else the process writes to fd 2
inside the block (a Python warning from another thread) is dropped too, so blocks stay short:
the detector's setup and each batch of frames.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

__all__ = ["QUIET_NATIVE_ENV", "quiet_native_stderr"]

QUIET_NATIVE_ENV = "LABELMILL_QUIET_NATIVE"


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """fd 2 -> /dev/null inside the block when ``LABELMILL_QUIET_NATIVE=1`` (module docstring)."""
    if os.environ.get(QUIET_NATIVE_ENV) != "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
