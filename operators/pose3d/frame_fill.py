"""Fill per-frame estimates of frames that have none from their nearest frame that has one."""

from __future__ import annotations

import numpy as np

__all__ = ["nearest_valid_index"]


def nearest_valid_index(valid: np.ndarray) -> np.ndarray:
    """For each frame, the index of the nearest frame with ``valid`` True (the earlier one on ties).

    valid (F,) bool with at least one True -> (F,) int64. Raises ValueError when none is valid.
    """
    valid = np.asarray(valid, bool)
    frames = np.flatnonzero(valid)
    if frames.size == 0:
        raise ValueError("no valid frame to fill from")
    t = np.arange(valid.size)
    right = np.clip(np.searchsorted(frames, t), 0, frames.size - 1)
    left = np.clip(right - 1, 0, frames.size - 1)
    use_left = np.abs(t - frames[left]) <= np.abs(frames[right] - t)
    return np.where(use_left, frames[left], frames[right])
