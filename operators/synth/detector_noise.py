"""Detector-like COCO-17 keypoints from clean projections, with the noise recorded.

For each person and frame the detector output is ``(x, y, confidence)`` per COCO-17 keypoint:

1. Gaussian pixel noise, std ``keypoint_sigma * person_height_px`` per coordinate;
   low-confidence joints (``low_conf_prob``) get ``low_conf_sigma_scale`` times that noise and a
   confidence in ``[0.05, low_conf_max]``; other joints a confidence in ``[confidence_min, 1]``.
2. Outlier frames (``outlier_frame_prob``): the whole skeleton is grossly wrong, either
   left/right swapped (kind 1) or displaced by ``outlier_displacement`` person heights in a
   random direction (kind 2). Confidences stay high: a confident mistake.
3. Dropped joints (``drop_prob``), and joints whose detected position falls outside the image,
   have ``x = y = confidence = 0``.
4. Missed frames (``miss_prob``, or the person not in the scene, or fewer than 3 joints left):
   the person is not in that frame's detections at all.

Coordinates and confidences are rounded to ``coordinate_decimals``; the recorded noise is
exactly ``detected - clean`` after rounding, so for every detected, non-dropped joint
``keypoints[..., :2] == clean + noise`` (outlier frames included: their gross error is part of
the recorded noise).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from labelmill.models.coco import COCO17_FLIP_INDEX
from labelmill.operators.synth.config import SynthConfig

__all__ = ["Detections", "OUTLIER_NONE", "OUTLIER_SWAP", "OUTLIER_DISPLACE", "simulate_detections", "shuffle_people"]

OUTLIER_NONE, OUTLIER_SWAP, OUTLIER_DISPLACE = 0, 1, 2
_MIN_VISIBLE = 3


@dataclasses.dataclass(frozen=True)
class Detections:
    """One person's simulated detections over a video. Shapes: T frames, 17 keypoints."""

    keypoints: np.ndarray  # (T, 17, 3) x, y (pixels), confidence; zeros where dropped or missed
    detected: np.ndarray  # (T,) bool: the person is in this frame's detections
    noise: np.ndarray  # (T, 17, 2) pixels: keypoints[..., :2] - clean; 0 where dropped or missed
    dropped: np.ndarray  # (T, 17) bool: not detected (any reason, including missed frames)
    out_of_frame: np.ndarray  # (T, 17) bool: dropped because the detected position left the image
    low_confidence: np.ndarray  # (T, 17) bool: drawn as a low-confidence joint
    outlier_kind: np.ndarray  # (T,) int8: 0 none, 1 left/right swap, 2 displacement
    bbox: np.ndarray  # (T, 4) x0, y0, x1, y1 pixels around the visible keypoints (0 when missed)
    score: np.ndarray  # (T,) mean confidence of the visible keypoints (0 when missed)


def simulate_detections(
    clean: np.ndarray,
    person_height: np.ndarray,
    rng: np.random.Generator,
    cfg: SynthConfig,
    *,
    present: np.ndarray | None = None,
    miss_prob: float | None = None,
) -> Detections:
    """Detector-like output for one person.

    Args:
        clean: ``(T, 17, 2)`` clean projected keypoints in pixels.
        person_height: ``(T,)`` the person's standing height in pixels (sets the noise scale).
        rng: the noise stream; a fixed number of draws per call, whatever the outcome.
        cfg: noise knobs (``keypoint_sigma``, ``drop_prob``, ...), image size, decimals.
        present: ``(T,)`` bool, frames where the person is in the scene (default: all).
        miss_prob: chance of a missed frame (default ``cfg.miss_prob``).
    """
    num_frames = clean.shape[0]
    if clean.shape[1:] != (17, 2):
        raise ValueError(f"clean keypoints must have shape (T, 17, 2), got {clean.shape}")
    present = np.ones(num_frames, bool) if present is None else np.asarray(present, bool)
    miss = cfg.miss_prob if miss_prob is None else miss_prob
    sigma = (cfg.keypoint_sigma * np.asarray(person_height, np.float64))[:, None, None]

    # Every draw has a fixed size so that one knob's value never shifts the others' draws.
    gauss = rng.standard_normal((num_frames, 17, 2))
    low = rng.random((num_frames, 17)) < cfg.low_conf_prob
    conf_normal = rng.uniform(cfg.confidence_min, 1.0, (num_frames, 17))
    conf_low = rng.uniform(0.05, cfg.low_conf_max, (num_frames, 17))
    outlier_draw = rng.random(num_frames)
    outlier_kind_draw = rng.integers(OUTLIER_SWAP, OUTLIER_DISPLACE + 1, num_frames)
    angle = rng.uniform(0.0, 2.0 * np.pi, num_frames)
    drop = rng.random((num_frames, 17)) < cfg.drop_prob
    missed = rng.random(num_frames) < miss

    noisy = clean + gauss * sigma * np.where(low, cfg.low_conf_sigma_scale, 1.0)[..., None]
    outlier_kind = np.where(outlier_draw < cfg.outlier_frame_prob, outlier_kind_draw, OUTLIER_NONE).astype(np.int8)
    swap = outlier_kind == OUTLIER_SWAP
    noisy[swap] = noisy[swap][:, list(COCO17_FLIP_INDEX)]
    displace = outlier_kind == OUTLIER_DISPLACE
    shift = cfg.outlier_displacement * np.asarray(person_height)[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    noisy[displace] += shift[displace][:, None, :]

    decimals = cfg.coordinate_decimals
    noisy = np.round(noisy, decimals)
    confidence = np.round(np.where(low, conf_low, conf_normal), decimals)
    out_of_frame = (
        (noisy[..., 0] < 0) | (noisy[..., 0] > cfg.width - 1) | (noisy[..., 1] < 0) | (noisy[..., 1] > cfg.height - 1)
    )
    dropped = drop | out_of_frame
    detected = present & ~missed & ((~dropped).sum(1) >= _MIN_VISIBLE)
    dropped = dropped | ~detected[:, None]
    keep = ~dropped

    keypoints = np.zeros((num_frames, 17, 3))
    keypoints[..., :2] = np.where(keep[..., None], noisy, 0.0)
    keypoints[..., 2] = np.where(keep, confidence, 0.0)
    noise = np.where(keep[..., None], keypoints[..., :2] - clean, 0.0)
    bbox, score = _boxes(keypoints, keep, cfg)
    return Detections(
        keypoints=keypoints,
        detected=detected,
        noise=noise,
        dropped=dropped,
        out_of_frame=out_of_frame & present[:, None],
        low_confidence=low,
        outlier_kind=np.where(detected, outlier_kind, OUTLIER_NONE).astype(np.int8),
        bbox=bbox,
        score=score,
    )


def _boxes(keypoints: np.ndarray, keep: np.ndarray, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(T, 4)`` around visible keypoints, padded by 10% (25% above, for the head top)."""
    big = np.float64(1e9)
    xs = np.where(keep, keypoints[..., 0], big), np.where(keep, keypoints[..., 0], -big)
    ys = np.where(keep, keypoints[..., 1], big), np.where(keep, keypoints[..., 1], -big)
    x0, x1 = xs[0].min(1), xs[1].max(1)
    y0, y1 = ys[0].min(1), ys[1].max(1)
    any_visible = keep.any(1)
    size = np.maximum(x1 - x0, y1 - y0)
    box = np.stack(
        [
            np.clip(x0 - 0.1 * size, 0, cfg.width - 1),
            np.clip(y0 - 0.25 * size, 0, cfg.height - 1),
            np.clip(x1 + 0.1 * size, 0, cfg.width - 1),
            np.clip(y1 + 0.1 * size, 0, cfg.height - 1),
        ],
        -1,
    )
    box = np.where(any_visible[:, None], np.round(box, 2), 0.0)
    visible = keep.sum(1)
    score = np.where(any_visible, (keypoints[..., 2] * keep).sum(1) / np.maximum(visible, 1), 0.0)
    return box, np.round(score, cfg.coordinate_decimals)


def shuffle_people(people: list[Detections], rng: np.random.Generator) -> tuple[list[list[int]], np.ndarray]:
    """Per-frame order of detected people, shuffled so that order reveals nothing.

    ``people[0]`` is the person of interest. Returns ``(order, poi_index)``: ``order[t]`` lists
    indices into ``people`` of the people detected in frame t, in output order; ``poi_index
    (T,)`` int16 is the position of person 0 in ``order[t]``, -1 when it was not detected.
    """
    num_frames = people[0].detected.shape[0]
    order: list[list[int]] = []
    poi_index = np.full(num_frames, -1, np.int16)
    for t in range(num_frames):
        perm = rng.permutation(len(people))  # fixed-size draw per frame
        frame = [int(p) for p in perm if people[p].detected[t]]
        order.append(frame)
        if 0 in frame:
            poi_index[t] = frame.index(0)
    return order, poi_index
