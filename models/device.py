"""Pick the torch device a worker can actually use, and pin torch's CPU threads for a block."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

__all__ = ["usable_device", "torch_threads"]

log = logging.getLogger(__name__)


def usable_device(name: str, *, what: str) -> torch.device:
    """``torch.device(name)``, or the CPU (with a warning naming ``what``) when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("%s: device %s requested but no CUDA device is available; running on CPU", what, name)
        return torch.device("cpu")
    return device


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads inside the block (0: leave torch's setting), then restore it.

    Pinning one thread is what makes CPU results independent of the machine's core count (the
    reduction order of a kernel follows its thread split).
    """
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
