"""Track detected people across frames and choose the person of interest.

Tracking is online, frame by frame (rows of a :class:`VideoKeypoints` in frame order):

1. Every live track predicts where it is now with a constant-velocity model: box
   ``b_pred = b_last + v * g`` and keypoints shifted by the box centre's motion, where ``g``
   is the number of frames since the track was last seen and ``v (4,)`` the box velocity
   in pixels per frame (exponentially smoothed, weight ``velocity_smoothing`` on the newest
   displacement; the first displacement of a track sets it directly).
2. The cost of track k and detection d is
   ``c = w * (1 - IoU(b_pred_k, b_d)) + (1 - w) * min(1, D_kd / (s * sqrt(area(b_pred_k))))``
   with ``w = iou_weight``, ``s = keypoint_distance_scale`` and ``D_kd`` the mean pixel
   distance between the predicted and detected keypoints over the keypoints confident
   (> ``min_confidence``) in both; with fewer than ``min_common_keypoints`` such keypoints
   ``D_kd`` is the distance of the box centres. Both terms lie in [0, 1]. The same cost is
   also computed against the track's last two observations as they were (no motion), plus
   0.1; the lowest of the three counts. So the prediction is preferred (it keeps identities
   through crossings), but a wrong velocity, or one outlier detection accepted into the
   track, does not lose it.
3. Hungarian matching (``scipy.optimize.linear_sum_assignment``) on the cost matrix; pairs
   costing more than ``max_cost`` are never matched (gate).
4. Unmatched detections start new tracks (ids 0, 1, ... in order of birth). A track not
   matched for more than ``max_gap`` consecutive frames ends and is never resumed.

The person of interest is the track with the highest ``frames_present * sqrt(mean box
area) ** main_size_exponent`` (ties: the older track). Detections are never changed or
dropped; tracking only labels them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import linear_sum_assignment

from labelmill.operators.pose3d.keypoints_format import NUM_KEYPOINTS, VideoKeypoints
from labelmill.infra.formats.items import ItemStatus
from labelmill.operators.pose3d.item_errors import failure_reason

__all__ = [
    "TrackingConfig",
    "TrackStats",
    "PersonOfInterest",
    "box_iou",
    "association_cost",
    "assign_tracks",
    "track_statistics",
    "choose_main_track",
    "main_track_person",
    "main_track_keypoints",
    "track_person_of_interest",
    "TrackPersonOfInterest",
]

_FORBIDDEN = 1e6  # cost given to gated pairs so the assignment avoids them
_FALLBACK_PENALTY = 0.1  # added to the cost against unpredicted observations (prediction is preferred)


@dataclasses.dataclass
class TrackingConfig:
    """Knobs of :func:`assign_tracks` and :func:`choose_main_track` (see the module docstring)."""

    # Weight of (1 - IoU) in the matching cost; the rest goes to the normalised keypoint distance.
    iou_weight: float = 0.5
    # Gate: a track and a detection whose cost exceeds this are never matched (cost lies in [0, 1]).
    max_cost: float = 0.8
    # Frames a track may go undetected and still continue; after more it ends.
    max_gap: int = 25
    # Mean keypoint distance, in units of this times sqrt(box area), at which the distance term reaches 1.
    keypoint_distance_scale: float = 0.5
    # Keypoints with confidence at or below this are ignored in the keypoint distance.
    min_confidence: float = 0.1
    # With fewer keypoints confident in both, the distance of the box centres is used instead.
    min_common_keypoints: int = 3
    # Weight of the newest per-frame displacement in the velocity estimate; 0 disables motion prediction.
    velocity_smoothing: float = 0.5
    # Person of interest: highest frames_present * sqrt(mean box area) ** this (0: the longest track).
    main_size_exponent: float = 1.0

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"tracking.{name} must be a finite number, got {value!r}")
            return float(value)

        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"tracking.{name} must be an integer >= {low}, got {value!r}")

        for name in ("iou_weight", "velocity_smoothing"):
            if not 0.0 <= number(name) <= 1.0:
                raise ValueError(f"tracking.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 < number("max_cost") <= 1.0:
            raise ValueError(f"tracking.max_cost must be in (0, 1], got {self.max_cost!r}")
        if number("keypoint_distance_scale") <= 0:
            raise ValueError(f"tracking.keypoint_distance_scale must be > 0, got {self.keypoint_distance_scale!r}")
        if number("min_confidence") < 0:
            raise ValueError(f"tracking.min_confidence must be >= 0, got {self.min_confidence!r}")
        if number("main_size_exponent") < 0:
            raise ValueError(f"tracking.main_size_exponent must be >= 0, got {self.main_size_exponent!r}")
        integer("max_gap", 0)
        integer("min_common_keypoints", 1)
        if self.min_common_keypoints > NUM_KEYPOINTS:
            raise ValueError(
                f"tracking.min_common_keypoints must be <= {NUM_KEYPOINTS}, got {self.min_common_keypoints!r}"
            )


# ----------------------------------------------------------------------------- pure kernels


def _area(boxes: np.ndarray) -> np.ndarray:
    """``(..., 4)`` x0, y0, x1, y1 -> ``(...)`` area (0 for degenerate boxes)."""
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(A, 4)`` and ``(B, 4)`` x0, y0, x1, y1 boxes -> ``(A, B)`` (0 when both are empty)."""
    a = np.asarray(boxes_a, np.float64)[:, None, :]
    b = np.asarray(boxes_b, np.float64)[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    intersection = width * height
    union = _area(a) + _area(b) - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def association_cost(
    track_boxes: np.ndarray,
    track_keypoints: np.ndarray,
    detection_boxes: np.ndarray,
    detection_keypoints: np.ndarray,
    config: TrackingConfig,
) -> np.ndarray:
    """Matching cost in [0, 1] of ``K`` (predicted) tracks and ``D`` detections -> ``(K, D)``.

    track_boxes ``(K, 4)``, track_keypoints ``(K, 17, 3)``, detection_boxes ``(D, 4)``,
    detection_keypoints ``(D, 17, 3)``; pixels. Formula in the module docstring.
    """
    track_boxes = np.asarray(track_boxes, np.float64)
    detection_boxes = np.asarray(detection_boxes, np.float64)
    iou_term = 1.0 - box_iou(track_boxes, detection_boxes)
    tk = np.asarray(track_keypoints, np.float64)[:, None]  # (K, 1, 17, 3)
    dk = np.asarray(detection_keypoints, np.float64)[None]  # (1, D, 17, 3)
    common = (tk[..., 2] > config.min_confidence) & (dk[..., 2] > config.min_confidence)  # (K, D, 17)
    joint_distance = np.linalg.norm(tk[..., :2] - dk[..., :2], axis=-1)
    count = common.sum(axis=-1)
    keypoint_distance = (joint_distance * common).sum(axis=-1) / np.maximum(count, 1)
    track_centres = (track_boxes[:, :2] + track_boxes[:, 2:]) / 2
    detection_centres = (detection_boxes[:, :2] + detection_boxes[:, 2:]) / 2
    centre_distance = np.linalg.norm(track_centres[:, None] - detection_centres[None], axis=-1)
    distance = np.where(count >= config.min_common_keypoints, keypoint_distance, centre_distance)
    scale = config.keypoint_distance_scale * np.maximum(np.sqrt(_area(track_boxes)), 1.0)[:, None]
    distance_term = np.minimum(distance / scale, 1.0)
    return config.iou_weight * iou_term + (1.0 - config.iou_weight) * distance_term


# ----------------------------------------------------------------------------- tracking


@dataclasses.dataclass
class _Track:
    track_id: int
    last_frame: int
    box: np.ndarray  # (4,) last matched box
    keypoints: np.ndarray  # (17, 3) last matched keypoints
    velocity: np.ndarray  # (4,) box displacement per frame
    previous_box: np.ndarray  # (4,) the observation before the last (the last one after birth)
    previous_keypoints: np.ndarray  # (17, 3)
    observations: int = 1

    def predict(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Predicted box (4,) and keypoints (17, 3) at ``frame``."""
        gap = frame - self.last_frame
        box = self.box + self.velocity * gap
        keypoints = self.keypoints.copy()
        centre_shift = (self.velocity[:2] + self.velocity[2:]) / 2 * gap
        keypoints[:, :2] += centre_shift
        return box, keypoints

    def update(self, frame: int, box: np.ndarray, keypoints: np.ndarray, smoothing: float) -> None:
        gap = frame - self.last_frame
        displacement = (box - self.box) / gap
        if smoothing > 0:
            weight = 1.0 if self.observations == 1 else smoothing
            self.velocity = (1.0 - weight) * self.velocity + weight * displacement
        self.previous_box, self.previous_keypoints = self.box, self.keypoints
        self.box, self.keypoints, self.last_frame = box, keypoints, frame
        self.observations += 1


def assign_tracks(vk: VideoKeypoints, *, config: TrackingConfig | None = None) -> np.ndarray:
    """Track ids of every detection: ``(F, P)`` int64, -1 where ``person_mask`` is False.

    Ids are 0, 1, ... in order of birth; gaps are measured in ``vk.frame_indices``.
    """
    config = config or TrackingConfig()
    track_ids = np.full(vk.person_mask.shape, -1, np.int64)
    live: list[_Track] = []
    next_id = 0
    boxes = vk.boxes.astype(np.float64)
    keypoints = vk.keypoints.astype(np.float64)
    for t in range(vk.num_frames):
        frame = int(vk.frame_indices[t])
        live = [track for track in live if frame - track.last_frame - 1 <= config.max_gap]
        people = np.flatnonzero(vk.person_mask[t])
        if people.size == 0:
            continue
        matched_people: set[int] = set()
        if live:
            predictions = [track.predict(frame) for track in live]
            cost = association_cost(
                np.stack([box for box, _ in predictions]),
                np.stack([kp for _, kp in predictions]),
                boxes[t, people],
                keypoints[t, people],
                config,
            )
            # Also compare with the last two observations as they were (step 2 of the module docstring).
            for use_previous in (False, True):
                cost = np.minimum(
                    cost,
                    association_cost(
                        np.stack([track.previous_box if use_previous else track.box for track in live]),
                        np.stack([track.previous_keypoints if use_previous else track.keypoints for track in live]),
                        boxes[t, people],
                        keypoints[t, people],
                        config,
                    )
                    + _FALLBACK_PENALTY,
                )
            allowed = cost <= config.max_cost
            rows, cols = linear_sum_assignment(np.where(allowed, cost, _FORBIDDEN))
            for row, col in zip(rows, cols):
                if not allowed[row, col]:
                    continue
                person = int(people[col])
                track = live[row]
                track.update(frame, boxes[t, person], keypoints[t, person], config.velocity_smoothing)
                track_ids[t, person] = track.track_id
                matched_people.add(person)
        for person in people:
            if int(person) in matched_people:
                continue
            live.append(
                _Track(
                    track_id=next_id,
                    last_frame=frame,
                    box=boxes[t, person].copy(),
                    keypoints=keypoints[t, person].copy(),
                    velocity=np.zeros(4),
                    previous_box=boxes[t, person].copy(),
                    previous_keypoints=keypoints[t, person].copy(),
                )
            )
            track_ids[t, person] = next_id
            next_id += 1
    return track_ids


# ----------------------------------------------------------------------------- person of interest


@dataclasses.dataclass(frozen=True)
class TrackStats:
    """Summary of one track."""

    track_id: int
    first_frame: int  # source frame index of the first detection
    last_frame: int  # source frame index of the last detection
    frames_present: int  # rows (frames) in which the track is detected
    mean_area: float  # mean box area, square pixels
    score: float  # frames_present * sqrt(mean_area) ** main_size_exponent


def track_statistics(
    vk: VideoKeypoints, track_ids: np.ndarray, *, config: TrackingConfig | None = None
) -> list[TrackStats]:
    """One :class:`TrackStats` per track id in ``track_ids (F, P)``, ordered by id."""
    config = config or TrackingConfig()
    track_ids = np.asarray(track_ids)
    if track_ids.shape != vk.person_mask.shape:
        raise ValueError(f"track_ids must have shape {vk.person_mask.shape}, got {track_ids.shape}")
    areas = _area(vk.boxes.astype(np.float64))
    stats = []
    for track_id in np.unique(track_ids[track_ids >= 0]):
        rows, people = np.nonzero(track_ids == track_id)
        mean_area = float(areas[rows, people].mean())
        present = int(np.unique(rows).size)
        stats.append(
            TrackStats(
                track_id=int(track_id),
                first_frame=int(vk.frame_indices[rows.min()]),
                last_frame=int(vk.frame_indices[rows.max()]),
                frames_present=present,
                mean_area=mean_area,
                score=present * math.sqrt(mean_area) ** config.main_size_exponent,
            )
        )
    return stats


def choose_main_track(vk: VideoKeypoints, track_ids: np.ndarray, *, config: TrackingConfig | None = None) -> int:
    """The person of interest's track id (highest :attr:`TrackStats.score`; ties: lowest id); -1 if none."""
    stats = track_statistics(vk, track_ids, config=config)
    if not stats:
        return -1
    best = max(stats, key=lambda s: (s.score, -s.track_id))
    return best.track_id


def main_track_person(track_ids: np.ndarray, main_track: int) -> np.ndarray:
    """``(F,)`` int64: the person slot of ``main_track`` in each row, -1 where it is absent."""
    track_ids = np.asarray(track_ids)
    hit = (track_ids == main_track) & (main_track >= 0)
    if hit.shape[1] == 0:
        return np.full(hit.shape[0], -1, np.int64)
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1).astype(np.int64)


def main_track_keypoints(vk: VideoKeypoints, track_ids: np.ndarray, main_track: int) -> np.ndarray:
    """``(F, 17, 3)`` float32 keypoints of ``main_track``; all zeros (confidence 0) where it is absent."""
    person = main_track_person(track_ids, main_track)
    out = np.zeros((vk.num_frames, NUM_KEYPOINTS, 3), np.float32)
    rows = np.flatnonzero(person >= 0)
    out[rows] = vk.keypoints[rows, person[rows]]
    return out


@dataclasses.dataclass(frozen=True)
class PersonOfInterest:
    """Tracking result of one video."""

    track_ids: np.ndarray  # (F, P) int64, -1 where no detection
    main_track: int  # track id of the person of interest, -1 when nobody was detected
    person: np.ndarray  # (F,) int64 person slot of the main track per row, -1 absent
    keypoints: np.ndarray  # (F, 17, 3) float32 main track's keypoints, zeros where absent
    boxes: np.ndarray  # (F, 4) float32 main track's boxes, zeros where absent
    tracks: list[TrackStats]  # every track, ordered by id


def track_person_of_interest(vk: VideoKeypoints, *, config: TrackingConfig | None = None) -> PersonOfInterest:
    """Assign tracks, choose the main track and gather its keypoints and boxes."""
    config = config or TrackingConfig()
    track_ids = assign_tracks(vk, config=config)
    tracks = track_statistics(vk, track_ids, config=config)
    main = max(tracks, key=lambda s: (s.score, -s.track_id)).track_id if tracks else -1
    person = main_track_person(track_ids, main)
    rows = np.flatnonzero(person >= 0)
    boxes = np.zeros((vk.num_frames, 4), np.float32)
    boxes[rows] = vk.boxes[rows, person[rows]]
    return PersonOfInterest(
        track_ids=track_ids,
        main_track=main,
        person=person,
        keypoints=main_track_keypoints(vk, track_ids, main),
        boxes=boxes,
        tracks=tracks,
    )


# ----------------------------------------------------------------------------- operator


class TrackPersonOfInterest:
    """Operator: track people and pick the person of interest per video (engine-free, picklable).

    Input columns, one entry per video (rows = consecutive frames, as
    :class:`~labelmill.operators.pose3d.keypoints_precomputed.PrecomputedKeypoints` writes them):
    ``keypoints (F, P, 17, 3)``, ``person_mask (F, P)``, ``boxes (F, P, 4)``; optional
    ``scores (F, P)`` and ``status`` (``failed`` items pass through). The input columns are
    passed through unchanged. Added columns:

    * ``track_ids (F, P)`` int64 (-1 no detection), ``main_track`` int (-1 nobody)
    * ``main_person (F,)`` int64 person slot of the main track per frame (-1 absent)
    * ``main_keypoints (F, 17, 3)`` float32 and ``main_boxes (F, 4)`` float32 (zeros where absent)

    An item whose arrays are inconsistent is marked ``failed`` with the reason.
    """

    resources: ClassVar[dict[str, int]] = {"num_cpus": 1, "num_gpus": 0, "batch_size": 16}

    # Columns read and added (the persisted pipeline loads exactly these from stored results).
    reads = ("key", "keypoints", "person_mask", "boxes", "scores")
    writes = ("track_ids", "main_track", "main_person", "main_keypoints", "main_boxes")

    def __init__(self, *, tracking: TrackingConfig | None = None) -> None:
        self.config = tracking or TrackingConfig()

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        for name in ("keypoints", "person_mask", "boxes"):
            if name not in batch:
                raise ValueError(f"TrackPersonOfInterest needs a {name!r} column; the batch has {', '.join(batch)}")
        size = len(batch["keypoints"])
        items = ItemStatus.of(batch, size)
        keys = items.keys
        scores = batch.get("scores")
        names = ("track_ids", "main_track", "main_person", "main_keypoints", "main_boxes")
        out_columns: dict[str, list] = {name: [] for name in names}
        for i in range(size):
            result = None
            if not items.is_failed(i):
                try:
                    keypoints = np.asarray(batch["keypoints"][i])
                    vk = VideoKeypoints(
                        keypoints=keypoints,
                        person_mask=batch["person_mask"][i],
                        boxes=batch["boxes"][i],
                        scores=np.zeros(keypoints.shape[:2]) if scores is None else scores[i],
                        frame_indices=np.arange(keypoints.shape[0]),
                    )
                    result = track_person_of_interest(vk, config=self.config)
                except Exception as exc:  # noqa: BLE001 - one item's odd input fails that item
                    items.fail(i, failure_reason("tracking", keys[i], exc))
            if result is None:
                out_columns["track_ids"].append(np.zeros((0, 0), np.int64))
                out_columns["main_track"].append(-1)
                out_columns["main_person"].append(np.zeros(0, np.int64))
                out_columns["main_keypoints"].append(np.zeros((0, NUM_KEYPOINTS, 3), np.float32))
                out_columns["main_boxes"].append(np.zeros((0, 4), np.float32))
            else:
                out_columns["track_ids"].append(result.track_ids)
                out_columns["main_track"].append(result.main_track)
                out_columns["main_person"].append(result.person)
                out_columns["main_keypoints"].append(result.keypoints)
                out_columns["main_boxes"].append(result.boxes)
        out = dict(batch)
        out.update(out_columns)
        out["main_track"] = np.asarray(out_columns["main_track"], np.int64)
        items.write(out)
        return out
