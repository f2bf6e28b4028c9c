"""`labelmill keypoints VIDEO --out kp.json`: detect, track and write 2D keypoints of one video.

Decodes the video (``operators/common/decode.py``), detects COCO-17 keypoints with a live backend
(``operators/pose3d/keypoints_backend.py``: MediaPipe BlazePose or an ONNX model) or reads
precomputed ones, tracks people and picks the person of interest (``operators/pose3d/tracking.py``),
writes the labelmill keypoints JSON (docs/keypoints.md) and, with ``--overlay``, the frames
with skeletons drawn on them (an ``.mp4`` file, or a folder of PNG frames).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import posixpath
import re
import time
from typing import Any

from labelmill.infra.config import load_config
from labelmill.pipelines.commands._common import add_config_args

log = logging.getLogger(__name__)

_BACKENDS = ("mediapipe", "onnx", "precomputed")


def keypoints_command_config_class() -> type:
    """Root config of ``labelmill keypoints``: sections ``keypoints`` (KeypointsConfig),
    ``tracking`` (TrackingConfig) and ``decode`` (DecodeConfig), so ``--set keypoints.key=value``."""
    from labelmill.operators.common.decode import DecodeConfig
    from labelmill.operators.pose3d.keypoints_backend import KeypointsConfig
    from labelmill.operators.pose3d.tracking import TrackingConfig

    return dataclasses.make_dataclass(
        "KeypointsCommandConfig",
        [
            ("keypoints", KeypointsConfig, dataclasses.field(default_factory=KeypointsConfig)),
            ("tracking", TrackingConfig, dataclasses.field(default_factory=TrackingConfig)),
            ("decode", DecodeConfig, dataclasses.field(default_factory=DecodeConfig)),
        ],
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keypoints",
        help="detect and track 2D keypoints on a video; write keypoints JSON (and an overlay)",
        description="Decode VIDEO, detect COCO-17 keypoints of every person (MediaPipe BlazePose, an "
        "RTMPose/ViTPose-style ONNX model, or precomputed files), track people, write labelmill "
        "keypoints JSON and optionally draw the skeletons on the frames. See docs/keypoint_backends.md.",
    )
    parser.add_argument("video", help="video file (any fsspec URL)")
    parser.add_argument("--out", required=True, help="keypoints JSON to write (any fsspec URL)")
    parser.add_argument("--backend", choices=_BACKENDS, default=None, help="keypoint backend (keypoints.backend)")
    parser.add_argument("--onnx-model", default=None, help="ONNX model file for --backend onnx (keypoints.onnx_path)")
    parser.add_argument(
        "--person-detector",
        choices=("hog", "none"),
        default=None,
        help="hog: several people (HOG person boxes first); none: one person per frame (keypoints.person_detector)",
    )
    parser.add_argument(
        "--overlay", default=None, metavar="OUT", help="draw skeletons: OUT.mp4 (a video) or OUT/ (PNG frames)"
    )
    parser.add_argument("--fps", type=float, default=None, help="resample to this frame rate (decode.fps)")
    parser.add_argument(
        "--max-side", type=int, default=None, help="shrink frames to this longer side (decode.max_side)"
    )
    parser.add_argument("--start", type=float, default=None, help="first second to decode (default: the start)")
    parser.add_argument("--end", type=float, default=None, help="second to stop before (default: the end)")
    parser.add_argument(
        "--overlay-min-confidence", type=float, default=0.3, help="keypoints drawn above this confidence (default 0.3)"
    )
    add_config_args(parser)
    parser.set_defaults(handler=_keypoints)


def resolve_keypoints_command_config(args: argparse.Namespace) -> Any:
    """Defaults < ``--config`` < ``--set`` < explicit flags (``--backend`` ...)."""
    overrides = list(getattr(args, "overrides", []) or [])
    flags = {
        "backend": "keypoints.backend",
        "onnx_model": "keypoints.onnx_path",
        "person_detector": "keypoints.person_detector",
        "fps": "decode.fps",
        "max_side": "decode.max_side",
    }
    for flag, key in flags.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(keypoints_command_config_class(), getattr(args, "config", None), overrides)


def video_id(uri: str) -> str:
    """The video's file name without extension, with characters outside ``[A-Za-z0-9_-]`` as ``_``."""
    stem = posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "video"


def _keypoints(args: argparse.Namespace) -> int:
    from labelmill.pipelines.cli import UsageError

    cfg = resolve_keypoints_command_config(args)
    if not 0.0 <= args.overlay_min_confidence:
        raise UsageError(f"--overlay-min-confidence must be >= 0, got {args.overlay_min_confidence}")
    summary = run_keypoints(
        args.video,
        out=args.out,
        overlay=args.overlay,
        config=cfg,
        start=args.start,
        end=args.end,
        overlay_min_confidence=args.overlay_min_confidence,
    )
    log.info(
        "%s: %d frames, people in %.0f%% of them (%.2f per frame), main track %d in %d frames; "
        "keypoints %.1f frames/s (%s); wrote %s%s",
        args.video, summary["frames"], 100 * summary["frames_with_people"], summary["people_per_frame"],
        summary["main_track"], summary["main_track_frames"], summary["detect_fps"], summary["backend"],
        args.out, f" and {args.overlay}" if args.overlay else "",
    )  # fmt: skip
    return 0


def run_keypoints(
    video: str,
    *,
    out: str,
    config: Any,
    overlay: str | None = None,
    start: float | None = None,
    end: float | None = None,
    overlay_min_confidence: float = 0.3,
) -> dict[str, Any]:
    """Decode, detect (or read), track, write JSON (+ overlay). Returns a summary dict.

    ``config``: the command config (sections ``keypoints``, ``tracking``, ``decode``). The JSON
    lists the decoded frames by source frame index (``round(time * fps)`` of the video's
    frame rate); each person also carries its ``track_id`` and the document its
    ``main_track`` (extra keys that readers ignore).
    """
    import numpy as np

    from labelmill.infra import storage
    from labelmill.operators.common.decode import DecodeError, DecodeVideo, probe_video
    from labelmill.operators.pose3d.keypoints_backend import DetectKeypoints, decode_jpeg_rgb
    from labelmill.operators.pose3d.overlay import overlay_frames, write_overlay
    from labelmill.operators.pose3d.tracking import track_person_of_interest
    from labelmill.pipelines.cli import UsageError

    try:
        info = probe_video(video)
    except DecodeError as exc:
        raise UsageError(str(exc)) from exc
    key = video_id(video)
    decoded = DecodeVideo.from_config(config.decode)(
        {"key": [key], "uri": [video], "start": [start], "end": [end]}
    )
    if decoded["status"][0] == "failed":
        raise RuntimeError(decoded["reason"][0])
    frames_jpeg = decoded["frames_jpeg"][0]
    times = np.asarray(decoded["frame_times"][0], np.float64)
    scale_x, scale_y = float(decoded["scale_x"][0]), float(decoded["scale_y"][0])
    width, height = int(decoded["original_width"][0]), int(decoded["original_height"][0])
    frame_indices = _source_frame_indices(times, info.fps)
    video_frames = info.frame_count if info.frame_count and info.frame_count > frame_indices[-1] else None
    metadata = dict(width=width, height=height, fps=info.fps, video=key, video_frames=video_frames)

    started = time.perf_counter()
    backend = config.keypoints.backend
    if backend == "precomputed":
        vk = _precomputed_rows(config.keypoints, key, video, frame_indices, metadata)
    else:
        detector = DetectKeypoints(config=config.keypoints)
        detector.setup()
        vk = detector.detect_video(
            frames_jpeg, scale_x=scale_x, scale_y=scale_y, frame_indices=frame_indices, **metadata
        )
    detect_seconds = time.perf_counter() - started

    poi = track_person_of_interest(vk, config=config.tracking)
    document = vk.to_json()
    for t, frame in enumerate(document["frames"]):
        for person, slot in zip(frame["people"], np.flatnonzero(vk.person_mask[t])):
            person["track_id"] = int(poi.track_ids[t, slot])
    document["main_track"] = int(poi.main_track)
    storage.write_text(out, json.dumps(document, separators=(",", ":"), allow_nan=False) + "\n")

    if overlay:
        captions = [f"frame {int(i)}  t={s:.2f}s" for i, s in zip(frame_indices, times)]
        images = (decode_jpeg_rgb(data) for data in frames_jpeg)
        drawn = overlay_frames(
            images, vk.keypoints, vk.boxes, vk.person_mask,
            scale_x=scale_x, scale_y=scale_y, track_ids=poi.track_ids, main_person=poi.person,
            min_confidence=overlay_min_confidence, caption=captions,
        )  # fmt: skip
        rate = config.decode.fps or info.fps or 25.0
        write_overlay(overlay, drawn, fps=rate, frame_indices=frame_indices)

    people = vk.people_per_frame()
    return {
        "video": key,
        "frames": vk.num_frames,
        "frames_with_people": float((people > 0).mean()) if vk.num_frames else 0.0,
        "people_per_frame": float(people.mean()) if vk.num_frames else 0.0,
        "main_track": int(poi.main_track),
        "main_track_frames": int((poi.person >= 0).sum()),
        "detect_fps": vk.num_frames / max(detect_seconds, 1e-9),
        "backend": backend,
    }


def _source_frame_indices(times: Any, fps: float | None) -> Any:
    """Source frame index of each decoded frame: ``round(time * fps)``; positions when unknown or not increasing."""
    import numpy as np

    positions = np.arange(len(times), dtype=np.int64)
    if not fps or not math.isfinite(fps) or len(times) == 0:
        return positions
    indices = np.round(np.asarray(times) * fps).astype(np.int64)
    if indices[0] < 0 or (np.diff(indices) <= 0).any():
        log.warning("frame times do not give increasing frame indices at %.3f fps; numbering frames 0, 1, ...", fps)
        return positions
    return indices


def _precomputed_rows(keypoints_config: Any, key: str, video: str, frame_indices: Any, metadata: dict) -> Any:
    """Precomputed keypoints of the video at the decoded frames' source indices."""
    import numpy as np

    from labelmill.operators.pose3d.keypoints_backend import build_keypoints_operator
    from labelmill.operators.pose3d.keypoints_format import VideoKeypoints

    reader = build_keypoints_operator(keypoints_config)
    reader.setup()
    batch = reader({"key": [key], "uri": [video]})
    if batch["status"][0] == "failed":
        raise RuntimeError(batch["reason"][0])
    dense = {name: np.asarray(batch[name][0]) for name in ("keypoints", "person_mask", "boxes", "scores")}
    rows = np.asarray(frame_indices)
    available = dense["keypoints"].shape[0]
    slots = dense["keypoints"].shape[1]

    def take(array: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), *array.shape[1:]), array.dtype)
        inside = rows < available
        out[inside] = array[rows[inside]]
        return out

    return VideoKeypoints(
        keypoints=take(dense["keypoints"]).reshape(len(rows), slots, 17, 3),
        person_mask=take(dense["person_mask"]),
        boxes=take(dense["boxes"]),
        scores=take(dense["scores"]),
        frame_indices=rows,
        **metadata,
    )
