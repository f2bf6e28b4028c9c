"""`write_synthetic_corpus`: a Kinetics-style corpus of rendered people with exact ground truth.

Layout under ``out_dir`` (any fsspec URL; every file is written atomically)::

    manifest.csv                          youtube_id,time_start,time_end,label,split
    videos/<id>_<start:06d>_<end:06d>.mp4  the rendered clip
    keypoints/<id>.json                   detector-like COCO-17 keypoints of every person
    gt/<id>.npz                           SMPL parameters, cameras, clean 2D/3D, recorded noise
    synth_config.yaml                     the resolved SynthConfig

Everything derives from ``cfg.seed`` (see :mod:`labelmill.operators.synth.scene`); the same
config writes the same bytes. Schemas: docs/synthetic_world.md.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import time
import zipfile
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from labelmill.infra import storage
from labelmill.infra.formats.config_yaml import dump_yaml
from labelmill.models.coco import COCO17_NAMES
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.render import Mp4Writer
from labelmill.operators.synth.scene import SyntheticVideo, render_frames, single_threaded, synthesize_video

if TYPE_CHECKING:
    from labelmill.models.body_model import BodyModel

__all__ = [
    "CorpusSummary",
    "MANIFEST_HEADER",
    "write_synthetic_corpus",
    "keypoints_document",
    "gt_arrays",
    "npz_bytes",
]

log = logging.getLogger(__name__)

MANIFEST_HEADER = ("youtube_id", "time_start", "time_end", "label", "split")


@dataclasses.dataclass(frozen=True)
class CorpusSummary:
    """What :func:`write_synthetic_corpus` wrote."""

    out_dir: str
    video_ids: list[str]
    labels: list[str]
    splits: list[str]
    num_frames: int  # frames over all videos
    seconds: float  # wall time
    frames_per_second: float  # frames synthesised, rendered and encoded per second


# ----------------------------------------------------------------------------- serialisation


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deterministic ``.npz`` (zip of ``.npy``; fixed timestamps, deflate, no pickled objects)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            array = np.asarray(value)
            if array.dtype == object:
                raise TypeError(f"npz field {name!r} has dtype object; only plain arrays are written")
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def keypoints_document(video: SyntheticVideo, cfg: SynthConfig) -> dict[str, Any]:
    """The keypoints JSON document of one video (schema in docs/synthetic_world.md)."""
    frames = []
    for t, order in enumerate(video.order):
        people = []
        for p in order:
            det = video.people[p].detections
            people.append(
                {
                    "keypoints": det.keypoints[t].tolist(),
                    "bbox": det.bbox[t].tolist(),
                    "score": float(det.score[t]),
                }
            )
        frames.append({"frame": t, "people": people})
    return {
        "video": video.video_id,
        "fps": cfg.fps,
        "width": cfg.width,
        "height": cfg.height,
        "num_frames": cfg.num_frames,
        "keypoint_names": list(COCO17_NAMES),
        "frames": frames,
    }


def gt_arrays(video: SyntheticVideo, cfg: SynthConfig) -> dict[str, np.ndarray]:
    """The ground-truth arrays of one video's person of interest (schema in docs/synthetic_world.md)."""
    poi = video.people[0]
    det = poi.detections
    m = poi.motion
    return {
        "video_id": np.array(video.video_id),
        "label": np.array(m.label),
        "secondary_label": np.array(m.secondary),
        "blend_weight": np.array(m.blend_weight),
        "motion_speed": np.array(m.params.speed),
        "motion_amplitude": np.array(m.params.amplitude),
        "motion_phase": np.array(m.params.phase),
        "motion_side": np.array(m.params.side, np.int8),
        "motion_yaw": np.array(m.params.yaw),
        "fps": np.array(cfg.fps, np.int64),
        "width": np.array(cfg.width, np.int64),
        "height": np.array(cfg.height, np.int64),
        "betas": poi.betas,
        "global_orient": m.global_orient,
        "body_pose": m.body_pose,
        "camera": poi.camera,
        "background_camera": video.background_camera,
        "camera_elevation": np.array(video.camera_path.elevation),
        "root_translation": poi.translation,
        "stature": np.array(poi.stature),
        "joints3d": poi.joints3d,
        "keypoints3d": poi.keypoints3d,
        "joints2d": poi.joints2d,
        "keypoints2d": poi.keypoints2d,
        "keypoints2d_detected": det.keypoints,
        "noise2d": det.noise,
        "confidence": det.keypoints[..., 2],
        "detected": det.detected,
        "dropped": det.dropped,
        "out_of_frame": det.out_of_frame,
        "low_confidence": det.low_confidence,
        "outlier_frame": det.outlier_kind != 0,
        "outlier_kind": det.outlier_kind,
        "poi_index": video.poi_index,
        "num_people": np.array([len(o) for o in video.order], np.int16),
    }


def _manifest_text(rows: list[tuple[str, int, int, str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MANIFEST_HEADER)
    writer.writerows(rows)
    return out.getvalue()


def _encode(video: SyntheticVideo, cfg: SynthConfig) -> bytes:
    """Render and encode one video to mp4 bytes."""
    options = dict(codec=cfg.codec, crf=cfg.crf, preset=cfg.preset)
    with Mp4Writer(width=cfg.width, height=cfg.height, fps=cfg.fps, **options) as writer:
        for frame in render_frames(video, cfg):
            writer.write(frame)
        return writer.close()


def write_synthetic_corpus(
    out_dir: str,
    cfg: SynthConfig,
    *,
    body_model: "BodyModel | None" = None,
    progress: Callable[[int, int, str, float], None] | None = None,
) -> CorpusSummary:
    """Write ``cfg.num_videos`` synthetic videos with keypoints and ground truth under ``out_dir``.

    ``body_model`` defaults to ``BodyModel(path=cfg.body_model_path)``. ``progress(done, total,
    video_id, frames_per_second)`` is called after each video. Deterministic: the same config
    writes the same bytes.
    """
    if body_model is None:
        from labelmill.models.body_model import BodyModel

        body_model = BodyModel(path=cfg.body_model_path)
    start = time.perf_counter()
    rows: list[tuple[str, int, int, str, str]] = []
    seen: dict[str, int] = {}
    for index in range(cfg.num_videos):
        with single_threaded():
            video = synthesize_video(index, cfg, body_model)
            mp4 = _encode(video, cfg)
        if video.video_id in seen:
            raise RuntimeError(f"video {index} and video {seen[video.video_id]} drew the same id {video.video_id}")
        seen[video.video_id] = index
        storage.write_bytes(storage.join(out_dir, "videos", video.filename), mp4)
        document = keypoints_document(video, cfg)
        storage.write_text(
            storage.join(out_dir, "keypoints", f"{video.video_id}.json"),
            json.dumps(document, separators=(",", ":")) + "\n",
        )
        storage.write_bytes(storage.join(out_dir, "gt", f"{video.video_id}.npz"), npz_bytes(gt_arrays(video, cfg)))
        rows.append((video.video_id, video.time_start, video.time_end, video.label, video.split))
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress(index + 1, cfg.num_videos, video.video_id, (index + 1) * cfg.num_frames / max(elapsed, 1e-9))
    storage.write_text(storage.join(out_dir, "synth_config.yaml"), dump_yaml(cfg))
    storage.write_text(storage.join(out_dir, "manifest.csv"), _manifest_text(rows))
    seconds = time.perf_counter() - start
    total = cfg.num_videos * cfg.num_frames
    return CorpusSummary(
        out_dir=out_dir,
        video_ids=[r[0] for r in rows],
        labels=[r[3] for r in rows],
        splits=[r[4] for r in rows],
        num_frames=total,
        seconds=seconds,
        frames_per_second=total / max(seconds, 1e-9),
    )
