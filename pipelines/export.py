"""``labelmill export``: a pose3d dataset version in the per-video layouts trainers read.

``--format npz`` (:func:`export_npz`): one ``.npz`` per input video, ``OUT/<input key>.npz`` (the
key's ``/`` parts become folders; keys are safe by construction, and every path is joined with
:func:`~labelmill.infra.storage.safe_join`), written without pickle and read back with
``np.load(allow_pickle=False)``. Arrays, ``F`` = the video's kept frames in frame order:

=================  ==============  ==========================================================
name               shape / dtype   meaning
=================  ==============  ==========================================================
``frame``          (F,) int64      frame index in the decoded clip (json ``frame``)
``time``           (F,) float64    frame time in seconds (NaN where the sample has none)
``betas`` ...      (F, ...) float  every ``smpl.npz`` array of the sample, stacked: ``betas``
                                   (F, 10), ``global_orient`` (F, 3), ``body_pose`` (F, 69),
                                   ``camera``, ``joints3d``, ``keypoints3d``, ``keypoints2d``,
                                   ``projected2d``, ``keypoints3d_init`` (schema pose3d/1)
``frame_loss``     (F,) float64    the fit's per-frame loss
``video_loss``     () float64      the video's loss
``bbox``           (F, 4) float64  the person's box (json ``bbox``; NaN when absent)
``metadata``       () str          JSON: input key, label, version id and url, schema,
                                   frame count, the json fields kept as they are
=================  ==============  ==========================================================

Samples are streamed shard by shard; a version's samples are sorted by key, so a video's
frames are consecutive and each video is written as soon as its last frame is read (memory: one
video). The Temporal-3D-Pose-Kinetics and 4D-Humans layouts are not built yet.
"""

from __future__ import annotations

import io
import json
import logging
import math
from typing import Any, Iterator

import numpy as np

from labelmill.infra import storage
from labelmill.infra.dataset_version import iter_shard_samples, read_stats, resolve_version
from labelmill.infra.formats.shards import decode_npz

__all__ = ["FORMATS", "ExportError", "export_npz", "video_arrays"]

log = logging.getLogger(__name__)

FORMATS = ("npz",)


class ExportError(ValueError):
    """The dataset cannot be exported in this layout (not a pose3d version)."""
_NPZ_FIELD = "smpl.npz"


def _frames(version_url: str) -> Iterator[tuple[str, list[tuple[dict[str, Any], dict[str, np.ndarray]]]]]:
    """``(input key, [(json, arrays)] in frame order)`` per video, streamed."""
    current, frames = None, []
    for shard, key, members in iter_shard_samples(version_url):
        for needed in ("json", _NPZ_FIELD):
            if needed not in members:
                raise ValueError(f"{shard}: sample {key!r} has no {needed} member")
        doc = json.loads(members["json"][1])
        video = str(doc.get("input_key") or key.rsplit("/", 1)[0])
        if video != current:
            if current is not None:
                yield current, frames
            current, frames = video, []
        frames.append((doc, decode_npz(members[_NPZ_FIELD][1])))
    if current is not None:
        yield current, frames


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def video_arrays(input_key: str, frames: list[tuple[dict[str, Any], dict[str, np.ndarray]]],
                 *, version: Any) -> dict[str, np.ndarray]:
    """The arrays of one video's npz (module docstring) from its ``(json, smpl arrays)`` frames."""
    frames = sorted(frames, key=lambda f: int(f[0]["frame"]))
    names = list(frames[0][1])
    for doc, arrays in frames:
        if list(arrays) != names:
            raise ValueError(f"video {input_key!r}: frame {doc.get('frame')} has arrays {sorted(arrays)}, "
                             f"the first frame {sorted(names)}")
    out: dict[str, np.ndarray] = {
        "frame": np.asarray([int(doc["frame"]) for doc, _ in frames], np.int64),
        "time": np.asarray([_number(doc.get("time")) for doc, _ in frames], np.float64),
        "frame_loss": np.asarray([_number(doc.get("frame_loss")) for doc, _ in frames], np.float64),
        "video_loss": np.asarray(_number(frames[0][0].get("video_loss")), np.float64),
        "bbox": np.asarray([(list(doc["bbox"]) if isinstance(doc.get("bbox"), list) and len(doc["bbox"]) == 4
                             else [math.nan] * 4) for doc, _ in frames], np.float64),
    }
    for name in names:
        out[name] = np.stack([arrays[name] for _, arrays in frames])
    first = frames[0][0]
    out["metadata"] = np.asarray(json.dumps({
        "input_key": input_key, "label": first.get("label"), "num_frames": len(frames),
        "version_id": version.version_id, "version_url": version.url, "schema": "pose3d",
        "format": "labelmill-export-npz", "format_version": 1,
    }, sort_keys=True))
    return out


def export_npz(dataset_url: str, out_url: str) -> dict[str, Any]:
    """Write one npz per video of the pose3d version ``dataset_url`` under ``out_url``; a summary."""
    version = resolve_version(dataset_url)
    schema = str(read_stats(version.url).get("schema") or "")
    if schema.split("/")[0] != "pose3d":
        raise ExportError(f"{version.url} is a {schema or 'schema-less'} dataset; export writes pose3d versions")
    videos, frames_written = 0, 0
    for input_key, frames in _frames(version.url):
        arrays = video_arrays(input_key, frames, version=version)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        storage.write_bytes(storage.safe_join(out_url, f"{input_key}.npz"), buffer.getvalue())
        videos += 1
        frames_written += len(frames)
    log.info("export: %d videos, %d frames of %s as npz under %s", videos, frames_written, version.url, out_url)
    return {"version": version.url, "format": "npz", "videos": videos, "frames": frames_written, "out": out_url}
