"""Engine-free operator: the loss filter as its own stage, so that a new threshold never refits.

Input columns (per video, F frames, P people): ``key``, ``projected2d (F, 17, 2)`` px, ``camera
(F, 3)``, ``body_height`` (metres, from :class:`~labelmill.operators.pose3d.bundle_adjust.BundleAdjust`
run with ``filter=False``), ``keypoints (F, P, 17, 3)`` and ``person_mask (F, P)``.

Output: ``frame_loss (F,)`` float32 (NaN where not measurable), ``keep_frame (F,)`` bool,
``frame_reason`` list of F str, ``video_loss`` float, ``keep_video`` bool, ``video_reason`` str —
the same values BundleAdjust computes when it filters itself (docs/pose3d.md, "Filtering").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from labelmill.infra.formats.items import ItemStatus
from labelmill.operators.pose3d.item_errors import failure_reason
from labelmill.operators.pose3d.fit_quality import FilterConfig, decide, frame_losses

__all__ = ["LossFilter", "filter_columns"]

_OUTPUT = ("frame_loss", "keep_frame", "frame_reason", "video_loss", "keep_video", "video_reason")


def filter_columns(projected: np.ndarray, keypoints: np.ndarray, person_mask: np.ndarray, camera: np.ndarray,
                   body_height: float, config: FilterConfig) -> dict[str, Any]:
    """The filter's output columns for one fitted video (shapes in the module docstring)."""
    losses = frame_losses(projected, np.nan_to_num(keypoints), person_mask, camera, body_height,
                          min_confidence=config.min_confidence, min_keypoints=config.min_keypoints)
    decision = decide(losses, config)
    return {"frame_loss": losses.loss.astype(np.float32), "keep_frame": decision.keep_frame,
            "frame_reason": decision.frame_reason, "video_loss": decision.video_loss,
            "keep_video": decision.keep_video, "video_reason": decision.video_reason}


class LossFilter:
    """Keep/drop decisions of fitted videos and frames from the normalised reprojection loss."""

    resources = {"num_cpus": 0.25, "num_gpus": 0.0, "batch_size": 16}
    reads = ("key", "projected2d", "camera", "body_height", "keypoints", "person_mask")
    writes = _OUTPUT

    def __init__(self, *, filter: FilterConfig | None = None) -> None:
        self.config = filter or FilterConfig()

    def setup(self) -> None:
        """Nothing to load."""

    def _decide(self, batch: dict[str, Any], i: int) -> dict[str, Any]:
        projected = np.asarray(batch["projected2d"][i], np.float32)
        num_frames = projected.shape[0]
        height = batch["body_height"][i]
        if num_frames == 0 or height is None or not math.isfinite(float(height)):
            return {"frame_loss": np.zeros(0, np.float32), "keep_frame": np.zeros(0, bool), "frame_reason": [],
                    "video_loss": float("nan"), "keep_video": False, "video_reason": "no_frames"}
        return filter_columns(projected, np.asarray(batch["keypoints"][i]), np.asarray(batch["person_mask"][i]),
                              np.asarray(batch["camera"][i]), float(height), self.config)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        size = len(batch["key"])
        items = ItemStatus.of(batch, size)
        columns: dict[str, list] = {name: [None] * size for name in _OUTPUT}
        for i in items.pending():
            try:
                decided = self._decide(batch, i)
            except Exception as exc:  # noqa: BLE001 - one item's odd input fails that item
                items.fail(i, failure_reason("loss filter", items.keys[i], exc))
                continue
            for name in _OUTPUT:
                columns[name][i] = decided[name]
        out = dict(batch)
        out.update(columns)
        return items.write(out)
