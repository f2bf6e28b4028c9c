"""Split long videos into overlapping windows and stitch per-window results back.

A window is one problem of the batched solver, so a long video costs a few more rows in the
batch rather than a longer, harder problem. Stitching cross-fades per-frame values linearly
over each overlap; per-window shapes are averaged with the number of frames each covers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plan_windows", "stitch_frames", "stitch_shared"]


def plan_windows(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` half-open windows covering ``range(num_frames)``.

    Windows have ``window`` frames (the last one is shifted back to end at ``num_frames`` so it
    is full length when the video allows) and consecutive windows share at least ``overlap``.
    """
    if num_frames <= 0:
        return []
    if window < 2 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 2 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    if num_frames <= window:
        return [(0, num_frames)]
    stride = window - overlap
    starts = list(range(0, num_frames - window, stride)) + [num_frames - window]
    starts = sorted(set(starts))
    return [(s, s + window) for s in starts]


def _blend_weights(windows: list[tuple[int, int]], num_frames: int) -> np.ndarray:
    """``(W, num_frames)`` weights, summing to 1 over windows at every frame (linear ramps)."""
    weights = np.zeros((len(windows), num_frames), dtype=np.float64)
    for w, (start, end) in enumerate(windows):
        ramp = np.ones(end - start)
        if w > 0:
            prev_end = windows[w - 1][1]
            n = max(prev_end - start, 0)
            if n:
                ramp[:n] = np.arange(1, n + 1) / (n + 1)
        if w + 1 < len(windows):
            next_start = windows[w + 1][0]
            n = max(end - next_start, 0)
            if n:
                ramp[end - start - n :] = np.minimum(ramp[end - start - n :], np.arange(n, 0, -1) / (n + 1))
        weights[w, start:end] = ramp
    total = weights.sum(0, keepdims=True)
    return weights / np.where(total > 0, total, 1.0)


def stitch_frames(windows: list[tuple[int, int]], values: list[np.ndarray], num_frames: int) -> np.ndarray:
    """Blend per-window arrays ``values[w] (end-start, ...)`` into ``(num_frames, ...)``."""
    weights = _blend_weights(windows, num_frames)
    out = np.zeros((num_frames,) + values[0].shape[1:], dtype=np.float64)
    for w, (start, end) in enumerate(windows):
        wt = weights[w, start:end].reshape((-1,) + (1,) * (values[w].ndim - 1))
        out[start:end] += wt * values[w]
    return out.astype(values[0].dtype)


def stitch_shared(windows: list[tuple[int, int]], values: list[np.ndarray]) -> np.ndarray:
    """Frame-count-weighted mean of per-window shared values (e.g. betas ``(10,)``)."""
    counts = np.array([end - start for start, end in windows], dtype=np.float64)
    stacked = np.stack(values).astype(np.float64)
    return (counts[:, None] * stacked.reshape(len(values), -1)).sum(0).reshape(values[0].shape) / counts.sum()
