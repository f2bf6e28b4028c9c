"""Scale-free fit losses and the keep/drop filter of fitted videos and frames.

Per-frame loss: the confidence-weighted mean distance between the projected model keypoints
and the best-matching detected person's keypoints (only keypoints with confidence >=
``min_confidence``), divided by the person's height in pixels (camera scale x the fitted body's
standing height). 0.05 means "5% of the person's height off on average", at any resolution.

Per-video loss: the median per-frame loss over frames that have a matched detection with at
least ``min_keypoints`` confident keypoints. The median, not the mean: a few detector-outlier
frames (which the frame filter drops anyway) must not sink a well-fitted video. On the
synthetic benchmark (docs/pose3d.md) well-fitted videos have medians of 0.014-0.017 and
videos whose detections no body explains 0.047 and above, hence the default 0.03.

Filter (DESIGN.md §3): keep a video if its loss is under ``video_loss_threshold`` and enough of
its frames were measurable; within kept videos keep a frame if its own loss is under
``frame_loss_threshold``. Every drop carries a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FilterConfig", "FrameLosses", "frame_losses", "FilterDecision", "decide"]

KEPT = "kept"


@dataclass
class FilterConfig:
    """Thresholds of the loss filter (``filter.*``). Defaults: see docs/pose3d.md."""

    video_loss_threshold: float = 0.03  # keep a video when its (median) normalised loss is below this
    frame_loss_threshold: float = 0.04  # keep a frame of a kept video when its loss is below this
    min_confidence: float = 0.3  # keypoints at or above this confidence are "confident"
    min_keypoints: int = 6  # a frame needs this many confident keypoints to be measured
    min_measured_fraction: float = 0.5  # a video needs this fraction of measurable frames

    def __post_init__(self) -> None:
        if self.video_loss_threshold <= 0 or self.frame_loss_threshold <= 0:
            raise ValueError("loss thresholds must be > 0")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError("min_confidence must be in [0, 1]")
        if not 1 <= self.min_keypoints <= 17:
            raise ValueError("min_keypoints must be in [1, 17]")
        if not 0.0 <= self.min_measured_fraction <= 1.0:
            raise ValueError("min_measured_fraction must be in [0, 1]")


@dataclass
class FrameLosses:
    """Per-frame measurements of one video (F frames)."""

    loss: np.ndarray  # (F,) normalised loss, NaN where not measurable
    matched_person: np.ndarray  # (F,) index of the best-matching detection, -1 if none
    confident_keypoints: np.ndarray  # (F,) confident keypoints of the matched detection
    person_height_px: np.ndarray  # (F,)


def frame_losses(
    projected: np.ndarray,
    detections: np.ndarray,
    person_mask: np.ndarray,
    camera: np.ndarray,
    body_height_m: float,
    *,
    min_confidence: float,
    min_keypoints: int,
) -> FrameLosses:
    """Losses of one video.

    Args:
        projected: ``(F, 17, 2)`` projected keypoints (pixels).
        detections: ``(F, P, 17, 3)`` detected (x, y, confidence) pixels.
        person_mask: ``(F, P)`` bool.  camera: ``(F, 3)`` (s px/m, u_x, u_y).
        body_height_m: standing height of the fitted body (metres).
    """
    num_frames = projected.shape[0]
    height_px = np.abs(camera[:, 0]) * body_height_m
    conf = detections[..., 2]
    w = np.where(conf >= min_confidence, conf, 0.0)  # (F,P,17)
    dist = np.linalg.norm(projected[:, None] - detections[..., :2], axis=-1)  # (F,P,17)
    wsum = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_dist = (w * dist).sum(-1) / wsum  # (F,P)
    n_conf = (w > 0).sum(-1)
    usable = person_mask & (n_conf >= min_keypoints) & (wsum > 0)
    mean_dist = np.where(usable, mean_dist, np.inf)
    loss = np.full(num_frames, np.nan)
    matched = np.full(num_frames, -1, dtype=np.int64)
    confident = np.zeros(num_frames, dtype=np.int64)
    if mean_dist.shape[1]:
        best = mean_dist.argmin(1)
        best_val = mean_dist[np.arange(num_frames), best]
        ok = np.isfinite(best_val)
        loss[ok] = best_val[ok] / np.maximum(height_px[ok], 1e-6)
        matched[ok] = best[ok]
        confident[ok] = n_conf[np.arange(num_frames), best][ok]
    return FrameLosses(loss=loss, matched_person=matched, confident_keypoints=confident, person_height_px=height_px)


@dataclass
class FilterDecision:
    """Keep flags and reasons of one video."""

    video_loss: float  # NaN when no frame was measurable
    keep_video: bool
    video_reason: str  # "kept" or why the video was dropped
    keep_frame: np.ndarray  # (F,) bool
    frame_reason: list[str]  # (F,) "kept" or why


def decide(losses: FrameLosses, config: FilterConfig) -> FilterDecision:
    """Apply the video and frame thresholds; every dropped item gets a reason."""
    measurable = np.isfinite(losses.loss)
    num_frames = len(losses.loss)
    video_loss = float(np.median(losses.loss[measurable])) if measurable.any() else float("nan")
    if num_frames == 0 or not measurable.any():
        video_reason = "no_measurable_frames"
    elif measurable.mean() < config.min_measured_fraction:
        video_reason = "too_few_measurable_frames"
    elif video_loss >= config.video_loss_threshold:
        video_reason = "video_loss_above_threshold"
    else:
        video_reason = KEPT
    keep_video = video_reason == KEPT
    reasons: list[str] = []
    for t in range(num_frames):
        if not keep_video:
            reasons.append("video_dropped")
        elif losses.matched_person[t] < 0:
            reasons.append("no_matching_detection")
        elif losses.loss[t] >= config.frame_loss_threshold:
            reasons.append("frame_loss_above_threshold")
        else:
            reasons.append(KEPT)
    keep_frame = np.array([r == KEPT for r in reasons], dtype=bool)
    return FilterDecision(video_loss, keep_video, video_reason, keep_frame, reasons)
