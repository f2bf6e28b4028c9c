"""pose3d frame samples from fitted videos: one sample per kept frame, one accounting row per video.

Input: one row per video, a mapping with (F frames, P detected people)

    key                  str                  input key
    frames_jpeg          list of F bytes      JPEG frames (DecodeVideo)
    frame_times          (F,) float seconds   (DecodeVideo); optional, null times when absent
    label                str | None           optional video label
    scale_x, scale_y     float                optional stored JPEG size / keypoint frame size (DecodeVideo)
    keypoints            (F, P, 17, 3)        detections (x, y px, confidence)
    person_mask          (F, P) bool
    main_keypoints       (F, 17, 3)           optional: the person of interest's detections
    status, reason       str                  optional: an upstream ``failed`` status passes through

plus the :class:`~labelmill.operators.pose3d.bundle_adjust.BundleAdjust` output columns (betas (10,),
global_orient (F,3), body_pose (F,69), camera (F,3), joints3d (F,24,3), keypoints3d (F,17,3),
projected2d (F,17,2), keypoints3d_init (F,17,3), frame_loss (F,), keep_frame (F,), frame_reason,
video_loss, keep_video, video_reason, fit_energy, fit_iterations).

Output (:class:`VideoSamples`): a :class:`~labelmill.infra.formats.shards.Sample` per kept frame
(fields ``jpg``, ``json``, ``smpl.npz``; key ``<input key>/<frame:06d>``; layout in
``infra/schemas/pose3d.json`` and docs/dataset_format.md) and one accounting row for
``inputs.parquet``: status ``written`` (some frames kept), ``filtered`` (fitted, nothing kept;
reason = the video's reason, or ``no_frames_kept``) or ``failed`` (reason = the error).

``keypoints2d`` of a sample is the detection the fit matched: ``main_keypoints`` when the row
has it, else the person with the lowest confidence-weighted mean distance to ``projected2d``
(the match the frame loss uses, :func:`~labelmill.operators.pose3d.fit_quality.frame_losses`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np

from labelmill.infra.formats.items import STATUS_FAILED, STATUS_FILTERED, STATUS_WRITTEN, ItemStatus
from labelmill.operators.pose3d.fit_quality import KEPT, frame_losses
from labelmill.infra.formats.shards import (
    Sample, encode_json, encode_npz, member_name_problem, sample_tar_size, tar_bytes,
)
from labelmill.operators.pose3d.item_errors import failure_reason

log = logging.getLogger(__name__)

__all__ = [
    "BuildSamples",
    "Pose3dSampleConfig",
    "Pose3dSampleError",
    "VideoSamples",
    "video_samples",
    "batch_samples",
    "failed_input_row",
    "sample_key",
    "STATUS_WRITTEN",
    "STATUS_FILTERED",
    "STATUS_FAILED",
]

NO_FRAMES_KEPT = "no_frames_kept"
# The fields (tar member extensions) of every frame sample.
SAMPLE_FIELDS = ("jpg", "json", "smpl.npz")

# name -> shape of one frame's array; "betas" is per video, the rest are per frame.
_PER_FRAME_ARRAYS = {
    "global_orient": (3,),
    "body_pose": (69,),
    "camera": (3,),
    "joints3d": (24, 3),
    "keypoints3d": (17, 3),
    "projected2d": (17, 2),
    "keypoints3d_init": (17, 3),
}
_FIT_COLUMNS = (
    "betas", *_PER_FRAME_ARRAYS, "frame_loss", "keep_frame", "frame_reason", "video_loss", "keep_video",
    "video_reason", "fit_energy", "fit_iterations",
)


@dataclasses.dataclass(frozen=True)
class Pose3dSampleConfig:
    """Knobs of pose3d sample building (``output.samples.*``)."""

    # Detected keypoints at or above this confidence define the bbox and the person match.
    min_confidence: float = 0.3
    # A bbox needs at least this many confident keypoints; otherwise it is projected2d's extent.
    min_bbox_keypoints: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.min_confidence, bool) or not 0.0 <= float(self.min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence!r}")
        if isinstance(self.min_bbox_keypoints, bool) or not isinstance(self.min_bbox_keypoints, int) or not (
            1 <= self.min_bbox_keypoints <= 17
        ):
            raise ValueError(f"min_bbox_keypoints must be an integer in 1..17, got {self.min_bbox_keypoints!r}")


class Pose3dSampleError(ValueError):
    """One video's columns are inconsistent; the message names the input key and the column."""


@dataclasses.dataclass
class VideoSamples:
    """What one video contributes: its samples (kept frames) and its inputs.parquet row."""

    samples: list[Sample]
    input_row: dict[str, Any]


def sample_key(input_key: str, frame: int) -> str:
    """``<input key>/<frame:06d>`` (DESIGN §5)."""
    return f"{input_key}/{int(frame):06d}"


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def failed_input_row(input_key: str, reason: str, *, frames_in: int = 0, label: str | None = None) -> dict[str, Any]:
    """The inputs.parquet row of an input that failed before any frame was written."""
    return {
        "input_key": str(input_key),
        "status": STATUS_FAILED,
        "reason": str(reason) if reason else "failed",
        "label": label,
        "frames_in": int(frames_in),
        "frames_fitted": 0,
        "frames_written": 0,
        "video_loss": None,
        "frame_reasons": json.dumps({}),
    }


def _jpeg_list(row: Mapping[str, Any]) -> list[bytes]:
    """The row's JPEG frames as a list (engines may hand over a list, an object array or None)."""
    jpegs = row.get("frames_jpeg")
    return [] if jpegs is None else list(jpegs)


def _column(row: Mapping[str, Any], name: str, key: str) -> Any:
    if name not in row:
        raise Pose3dSampleError(f"video {key!r}: column {name!r} is missing")
    return row[name]


def _frames_array(row: Mapping[str, Any], name: str, key: str, num_frames: int, shape: tuple[int, ...]) -> np.ndarray:
    """Column ``name`` as float32 ``(num_frames, *shape)``."""
    array = np.asarray(_column(row, name, key), dtype=np.float32)
    expected = (num_frames, *shape)
    if array.shape != expected:
        raise Pose3dSampleError(f"video {key!r}: column {name!r} has shape {array.shape}, expected {expected}")
    return array


def _matched_detections(
    row: Mapping[str, Any], key: str, projected: np.ndarray, config: Pose3dSampleConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the detected person closest to the projection (as the frame loss judged it):
    ``(F, 17, 3)`` keypoints (zeros where none) and ``(F,)`` person index (-1 where none)."""
    num_frames = projected.shape[0]
    detections = np.nan_to_num(np.asarray(_column(row, "keypoints", key), dtype=np.float32))
    mask = np.asarray(_column(row, "person_mask", key), dtype=bool)
    if detections.ndim != 4 or detections.shape[0] != num_frames or detections.shape[2:] != (17, 3):
        raise Pose3dSampleError(
            f"video {key!r}: keypoints has shape {detections.shape}, expected ({num_frames}, P, 17, 3)")
    if mask.shape != detections.shape[:2]:
        raise Pose3dSampleError(f"video {key!r}: person_mask has shape {mask.shape}, expected {detections.shape[:2]}")
    ones = np.ones((num_frames, 3), np.float32)
    matched = frame_losses(projected, detections, mask, ones, 1.0, min_confidence=config.min_confidence,
                           min_keypoints=1).matched_person
    chosen = np.zeros((num_frames, 17, 3), np.float32)
    found = matched >= 0
    chosen[found] = detections[np.flatnonzero(found), matched[found]]
    return chosen, matched


def _main_keypoints(
    row: Mapping[str, Any], key: str, projected: np.ndarray, config: Pose3dSampleConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``(F, 17, 3)`` detections of the fitted person and ``(F,)`` their person index (-1: main_keypoints)."""
    num_frames = projected.shape[0]
    matched_keypoints, matched = _matched_detections(row, key, projected, config)
    if row.get("main_keypoints") is None:
        return matched_keypoints, matched
    main = np.nan_to_num(_frames_array(row, "main_keypoints", key, num_frames, (17, 3)))
    # The frame loss matched any detected person (E_R's inner min); where the person of interest
    # is absent (a track broken by an occlusion) store the detection the frame was judged against.
    absent = ~(main[..., 2] > 0).any(-1)
    main[absent] = matched_keypoints[absent]
    return main, np.where(absent, matched, -1)


def _bbox(keypoints2d: np.ndarray, projected2d: np.ndarray, config: Pose3dSampleConfig) -> tuple[list, str]:
    """x0, y0, x1, y1 of the confident detections, else of the projection.

    float32 scalars, so that the JSON gets their short decimal form.
    """
    confident = keypoints2d[:, 2] >= config.min_confidence
    if int(confident.sum()) >= config.min_bbox_keypoints:
        points, source = keypoints2d[confident, :2], "keypoints2d"
    else:
        points, source = projected2d, "projected2d"
    low, high = points.min(0), points.max(0)
    return [np.float32(low[0]), np.float32(low[1]), np.float32(high[0]), np.float32(high[1])], source


def _times(row: Mapping[str, Any], key: str, num_frames: int) -> list[float | None]:
    times = row.get("frame_times")
    if times is None:
        return [None] * num_frames
    times = list(times)
    if len(times) != num_frames:
        raise Pose3dSampleError(f"video {key!r}: frame_times has {len(times)} entries, expected {num_frames}")
    return [_finite_or_none(t) for t in times]


def video_samples(row: Mapping[str, Any], *, config: Pose3dSampleConfig | None = None) -> VideoSamples:
    """Samples and accounting of one video (see the module docstring for the columns).

    Raises :class:`Pose3dSampleError` when the row's columns disagree (frame counts, shapes).
    """
    config = config or Pose3dSampleConfig()
    key = str(_column(row, "key", "<unknown>"))
    label = row.get("label")
    label = None if label is None else str(label)
    jpegs = _jpeg_list(row)
    if row.get("status") == STATUS_FAILED:
        return VideoSamples([], failed_input_row(key, row.get("reason") or "failed", frames_in=len(jpegs), label=label))
    missing = [c for c in _FIT_COLUMNS if c not in row]
    if missing:
        raise Pose3dSampleError(f"video {key!r}: fit columns {missing} are missing (was BundleAdjust run?)")

    frame_reason = [str(r) for r in row["frame_reason"]]
    num_frames = len(frame_reason)
    if len(jpegs) != num_frames:
        raise Pose3dSampleError(
            f"video {key!r}: {len(jpegs)} decoded JPEG frames but {num_frames} fitted frames (the keypoints do not "
            "match the decoded frames: were they detected or cut for another time range or frame rate?)")
    if num_frames:
        problem = member_name_problem(sample_key(key, num_frames - 1), SAMPLE_FIELDS)
        if problem is not None:
            raise Pose3dSampleError(f"video {key[:60]!r}: {problem}")
    betas = np.asarray(row["betas"], dtype=np.float32)
    if betas.shape != (10,):
        raise Pose3dSampleError(f"video {key!r}: column 'betas' has shape {betas.shape}, expected (10,)")
    arrays = {name: _frames_array(row, name, key, num_frames, shape) for name, shape in _PER_FRAME_ARRAYS.items()}
    frame_loss = _frames_array(row, "frame_loss", key, num_frames, ())
    keep_frame = np.asarray(row["keep_frame"], dtype=bool)
    if keep_frame.shape != (num_frames,):
        raise Pose3dSampleError(
            f"video {key!r}: column 'keep_frame' has shape {keep_frame.shape}, expected ({num_frames},)")
    keep_video = bool(row["keep_video"])
    video_loss = _finite_or_none(row["video_loss"])
    times = _times(row, key, num_frames)
    scale = [float(row.get("scale_x", 1.0) or 1.0), float(row.get("scale_y", 1.0) or 1.0)]
    scale = [s if math.isfinite(s) and s > 0 else 1.0 for s in scale]

    kept = np.flatnonzero(keep_frame) if keep_video else np.zeros(0, dtype=np.int64)
    samples = []
    if kept.size:
        keypoints2d, person = _main_keypoints(row, key, arrays["projected2d"], config)
        for t in kept.tolist():
            loss = _finite_or_none(frame_loss[t])
            if loss is None or video_loss is None:
                raise Pose3dSampleError(f"video {key!r}: frame {t} is kept but its frame or video loss is not finite")
            bbox, bbox_source = _bbox(keypoints2d[t], arrays["projected2d"][t], config)
            skey = sample_key(key, t)
            document = {
                "key": skey,
                "input_key": key,
                "frame": t,
                "time": times[t],
                "num_frames": num_frames,
                "bbox": bbox,
                "bbox_source": bbox_source,
                "image_scale": scale,
                "person": None if person[t] < 0 else int(person[t]),
                "label": label,
                "frame_loss": loss,
                "video_loss": video_loss,
                "keep_frame": True,
                "keep_video": True,
                "frame_reason": frame_reason[t],
                "video_reason": str(row["video_reason"]),
                "fit_energy": _finite_or_none(row["fit_energy"]),
                "fit_iterations": int(row["fit_iterations"]),
            }
            smpl = {"betas": betas, "keypoints2d": keypoints2d[t], **{name: a[t] for name, a in arrays.items()}}
            samples.append(Sample(
                key=skey,
                fields={"jpg": bytes(jpegs[t]), "json": encode_json(document), "smpl.npz": encode_npz(smpl)},
                index={"input_key": key, "frame": t, "time": times[t], "label": label,
                       "frame_loss": loss, "video_loss": video_loss},
            ))
    if samples:
        status, reason = STATUS_WRITTEN, KEPT
    elif not keep_video:
        status, reason = STATUS_FILTERED, str(row["video_reason"])
    else:
        status, reason = STATUS_FILTERED, NO_FRAMES_KEPT
    counts = collections.Counter(frame_reason)
    input_row = {
        "input_key": key,
        "status": status,
        "reason": reason,
        "label": label,
        "frames_in": num_frames,
        "frames_fitted": num_frames,
        "frames_written": len(samples),
        "video_loss": video_loss,
        "frame_reasons": json.dumps(dict(sorted(counts.items())), separators=(",", ":")),
    }
    return VideoSamples(samples, input_row)


def _rows(batch: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    if "key" not in batch:
        raise KeyError(f"pose3d samples: the batch has no 'key' column (columns: {', '.join(batch) or 'none'})")
    size = len(batch["key"])
    for name, column in batch.items():
        if len(column) != size:
            raise ValueError(f"pose3d samples: column {name!r} has {len(column)} entries, 'key' has {size}")
    return [{name: column[i] for name, column in batch.items()} for i in range(size)]


def batch_samples(
    batch: Mapping[str, Sequence[Any]], *, config: Pose3dSampleConfig | None = None
) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Samples of every video of a columnar batch and one inputs.parquet row per video.

    A video whose columns disagree becomes a ``failed`` row naming the problem; the batch goes on.
    """
    samples: list[Sample] = []
    input_rows: list[dict[str, Any]] = []
    for row in _rows(batch):
        try:
            result = video_samples(row, config=config)
        except Exception as exc:  # noqa: BLE001 - one video's odd columns fail that video
            reason = str(exc) if isinstance(exc, Pose3dSampleError) else failure_reason("samples", row["key"], exc)
            log.warning("%s", reason)
            frames_in = len(_jpeg_list(row))
            result = VideoSamples([], failed_input_row(str(row["key"]), reason, frames_in=frames_in,
                                                        label=None if row.get("label") is None else str(row["label"])))
        samples.extend(result.samples)
        input_rows.append(result.input_row)
    return samples, input_rows


class BuildSamples:
    """Operator: each fitted video's kept frames as one tar fragment in the final member layout.

    Reads the columns of :func:`video_samples`; writes per pending item

    * ``fragment_tar``: bytes of a tar holding the video's samples (members as they will appear in a
      shard, sorted by key; None when no frame is kept) — the stage stores it as a file, and
      packing copies its first ``fragment_member_bytes`` bytes into a shard without re-encoding;
    * ``fragment_member_bytes`` (int), ``num_samples`` (int);
    * ``input_row``: the video's inputs.parquet row; ``index_rows``: one index.parquet row per
      sample, without ``shard`` (known once shards are packed).

    A video whose columns disagree fails with the reason naming it; the batch goes on.
    """

    resources = {"num_cpus": 0.25, "num_gpus": 0.0, "batch_size": 8}
    reads = ("key", "label", "frames_jpeg", "frame_times", "scale_x", "scale_y", "keypoints", "person_mask",
             "main_keypoints", *_FIT_COLUMNS)
    writes = ("fragment_tar", "fragment_member_bytes", "num_samples", "input_row", "index_rows")

    def __init__(self, *, samples: Pose3dSampleConfig | None = None) -> None:
        self.config = samples or Pose3dSampleConfig()

    def setup(self) -> None:
        """Nothing to load."""

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        result = video_samples(row, config=self.config)
        ordered = sorted(result.samples, key=lambda s: s.key)
        index_rows = [{**dict(s.index), "key": s.key, "member_key": s.member_key, "num_bytes": sample_tar_size(s)}
                      for s in ordered]
        return {
            "fragment_tar": tar_bytes(ordered) if ordered else None,
            "fragment_member_bytes": int(sum(r["num_bytes"] for r in index_rows)),
            "num_samples": len(ordered),
            "input_row": result.input_row,
            "index_rows": index_rows,
        }

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = _rows(batch)
        items = ItemStatus.of(batch, len(rows))
        columns: dict[str, list] = {name: [None] * len(rows) for name in self.writes}
        for i in items.pending():
            try:
                built = self._one(rows[i])
            except Pose3dSampleError as exc:
                log.warning("%s", exc)
                items.fail(i, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - one video's odd columns fail that video
                items.fail(i, failure_reason("samples", items.keys[i], exc))
                continue
            for name in self.writes:
                columns[name][i] = built[name]
        out = dict(batch)
        out.update(columns)
        return items.write(out)
