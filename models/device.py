"""Pick the torch device a worker can actually use."""

from __future__ import annotations

import logging

import torch

__all__ = ["usable_device"]

log = logging.getLogger(__name__)


def usable_device(name: str, *, what: str) -> torch.device:
    """``torch.device(name)``, or the CPU (with a warning naming ``what``) when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("%s: device %s requested but no CUDA device is available; running on CPU", what, name)
        return torch.device("cpu")
    return device
