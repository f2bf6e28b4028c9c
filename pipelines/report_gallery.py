"""What the report's gallery draws: a few kept and a few filtered inputs of a dataset version.

pose3d (:func:`pose3d_gallery`): for each chosen video, a few frames with the detected 2D
keypoints, the initialisation and the fitted body projected over them. Both kept and filtered
videos are read from the stage results the version was built from (``results.parquet`` names
them under ``OUT/results``: ``decode`` frames, ``keypoints``/``track`` detections, ``init``
camera, ``fit`` projections, ``filter`` losses), since filtered videos have no samples. When
those results are gone (another output root, ``labelmill gc``), kept videos come from the
shards instead (``jpg`` + ``smpl.npz``; the initialisation is then drawn with the fitted camera).

segmentation (:func:`segmentation_gallery`): kept images from the shards (``jpg``, ``sem.png``,
``inst.png``, ``json``), filtered ones from the stage results of the last labelling stage.

Inputs are chosen deterministically: sorted by their loss (pose3d ``video_loss``, segmentation
``ignore_fraction``), then evenly spaced over that order (best, middle, worst).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import tarfile
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np
import pyarrow.parquet as pq

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.formats.results import ResultCodecError
from labelmill.infra.formats.shards import decode_npz, sample_key_from_member, split_member_name
from labelmill.infra.results import ResultStore

log = logging.getLogger(__name__)

__all__ = ["PoseFrame", "PoseVideo", "SegImage", "choose", "pose3d_gallery", "segmentation_gallery", "out_root"]


@dataclasses.dataclass
class PoseFrame:
    """One frame to draw; every point array is in pixels of ``image``."""

    frame: int
    image: np.ndarray  # (H, W, 3) uint8 RGB
    detected: np.ndarray  # (P, 17, 3) x, y, confidence: the person of interest (P=1) or every detection
    init: np.ndarray | None  # (17, 2) the initialisation projected; None when unknown
    fitted: np.ndarray  # (17, 2) the fitted body projected
    loss: float  # frame loss (NaN: not measurable)
    reason: str  # frame reason ("kept", ...)


@dataclasses.dataclass
class PoseVideo:
    key: str
    status: str
    reason: str
    video_loss: float | None
    frames: list[PoseFrame]
    source: str  # "stage results" or "shards"
    init_note: str = ""  # how the initialisation was projected


@dataclasses.dataclass
class SegImage:
    key: str
    status: str
    reason: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    sem: np.ndarray  # (H, W) uint8 category id, 0 background, 255 ignore
    inst: np.ndarray | None  # (H, W) uint16 segment id, 0 none
    categories: dict[int, str]  # category id -> name (from the segments)
    ignore_fraction: float | None
    source: str


def out_root(ref: dv.VersionRef) -> str:
    """The output root holding ``results/`` for a version (``OUT`` of ``OUT/versions/<id>``)."""
    return ref.out_url if ref.out_url is not None else ref.url.rstrip("/").rsplit("/", 2)[0]


def choose(rows: Sequence[Mapping[str, Any]], count: int, loss_column: str) -> list[Mapping[str, Any]]:
    """Up to ``count`` rows evenly spaced over ``rows`` sorted by ``loss_column`` (None last), then key."""
    if count <= 0 or not rows:
        return []

    def order(row: Mapping[str, Any]) -> tuple:
        value = row.get(loss_column)
        finite = value is not None and np.isfinite(value)
        return (not finite, float(value) if finite else 0.0, str(row["input_key"]))

    ranked = sorted(rows, key=order)
    if len(ranked) <= count:
        return ranked
    picks = np.unique(np.round(np.linspace(0, len(ranked) - 1, count)).astype(int))
    return [ranked[i] for i in picks]


def _decode_image(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ValueError("undecodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if flags == cv2.IMREAD_COLOR else image


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _frame_picks(num_frames: int, count: int) -> list[int]:
    if num_frames <= 0:
        return []
    return sorted({int(i) for i in np.round(np.linspace(0, num_frames - 1, min(count, num_frames)))})


def _project(points3d: np.ndarray, camera: np.ndarray) -> np.ndarray:
    from labelmill.models.camera import project

    return project(np.asarray(points3d, np.float64), np.asarray(camera, np.float64))


def _results_rows(version_url: str) -> dict[str, dict[str, Any]]:
    url = storage.safe_join(version_url, "results.parquet")
    if not storage.exists(url):
        return {}
    table = pq.read_table(io.BytesIO(storage.read_bytes(url)))
    return {str(r["input_key"]): r for r in table.to_pylist()}


def _read_stage(store: ResultStore, keys: Mapping[str, Any], stage: str, columns: Iterable[str]) -> dict[str, Any]:
    key = keys.get(stage)
    if not key:
        return {}
    return store.read(stage, str(key), list(columns))


# ----------------------------------------------------------------------------- pose3d


def _pose_from_results(store: ResultStore, row: Mapping[str, Any], keys: Mapping[str, Any],
                       frames_per_video: int) -> PoseVideo:
    decode = _read_stage(store, keys, "decode", ("frames_jpeg", "scale_x", "scale_y"))
    fit = _read_stage(store, keys, "fit", ("projected2d", "keypoints3d_init"))
    init = _read_stage(store, keys, "init", ("init_camera",))
    track = _read_stage(store, keys, "track", ("main_keypoints",))
    detections = _read_stage(store, keys, "keypoints", ("keypoints", "person_mask"))
    losses = _read_stage(store, keys, "filter", ("frame_loss", "frame_reason"))
    if not decode.get("frames_jpeg") or fit.get("projected2d") is None:
        raise FileNotFoundError("decode or fit result missing")
    scale = np.array([float(decode.get("scale_x") or 1.0), float(decode.get("scale_y") or 1.0)])
    projected = np.asarray(fit["projected2d"], np.float64)
    num_frames = min(len(decode["frames_jpeg"]), len(projected))
    init_2d = None
    if fit.get("keypoints3d_init") is not None and init.get("init_camera") is not None:
        init_2d = _project(fit["keypoints3d_init"], init["init_camera"])
    main = track.get("main_keypoints")
    frame_loss = np.asarray(losses.get("frame_loss", np.full(num_frames, np.nan)), np.float64)
    frame_reason = list(losses.get("frame_reason") or [])
    frames = []
    for t in _frame_picks(num_frames, frames_per_video):
        if main is not None and (np.asarray(main[t])[:, 2] > 0).any():
            people = np.asarray(main[t], np.float64)[None]
        elif detections.get("keypoints") is not None:
            mask = np.asarray(detections["person_mask"][t], bool)
            people = np.asarray(detections["keypoints"][t], np.float64)[mask]
        else:
            people = np.zeros((0, 17, 3))
        people = np.nan_to_num(people).copy()
        people[..., :2] *= scale
        frames.append(PoseFrame(
            frame=t, image=_decode_image(bytes(decode["frames_jpeg"][t])), detected=people,
            init=None if init_2d is None else init_2d[t] * scale, fitted=projected[t] * scale,
            loss=float(frame_loss[t]) if t < len(frame_loss) else float("nan"),
            reason=str(frame_reason[t]) if t < len(frame_reason) else ""))
    return PoseVideo(key=str(row["input_key"]), status=str(row["status"]), reason=str(row["reason"]),
                     video_loss=row.get("video_loss"), frames=frames, source="stage results",
                     init_note="initialisation with its own camera")


def _shard_samples(version_url: str, keys: set[str]) -> dict[str, dict[str, bytes]]:
    """``{sample key: {extension: bytes}}`` of ``keys``, opening only the shards that hold them."""
    if not keys:
        return {}
    index = dv.read_index(version_url).select(["key", "shard"]).to_pylist()
    wanted_shards = {str(r["shard"]).removesuffix(".tar") for r in index if r["key"] in keys}
    out: dict[str, dict[str, bytes]] = {}
    for url in dv.shard_urls(version_url):
        if url.rsplit("/", 1)[-1].removesuffix(".tar") not in wanted_shards:
            continue
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                stem, extension = split_member_name(member.name)
                key = sample_key_from_member(stem)
                if key in keys:
                    out.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return out


def _pose_from_shards(version_url: str, rows: Sequence[Mapping[str, Any]], frames_per_video: int) -> list[PoseVideo]:
    index = dv.read_index(version_url).select(["key", "input_key", "frame"]).to_pylist()
    per_input: dict[str, list[tuple[int, str]]] = {}
    for r in index:
        per_input.setdefault(str(r["input_key"]), []).append((int(r["frame"]), str(r["key"])))
    chosen = {}
    for row in rows:
        frames = sorted(per_input.get(str(row["input_key"]), []))
        chosen[str(row["input_key"])] = [frames[i][1] for i in _frame_picks(len(frames), frames_per_video)]
    samples = _shard_samples(version_url, {k for keys in chosen.values() for k in keys})
    videos = []
    for row in rows:
        frames = []
        for key in chosen[str(row["input_key"])]:
            fields = samples.get(key)
            if not fields or "jpg" not in fields or "smpl.npz" not in fields:
                continue
            meta = json.loads(fields.get("json", b"{}"))
            arrays = decode_npz(fields["smpl.npz"])
            scale = np.asarray(meta.get("image_scale") or [1.0, 1.0], np.float64)
            detected = np.asarray(arrays["keypoints2d"], np.float64)[None].copy()
            detected[..., :2] *= scale
            init_2d = _project(arrays["keypoints3d_init"], arrays["camera"]) * scale
            frames.append(PoseFrame(frame=int(meta.get("frame", key.rsplit("/", 1)[-1])),
                                    image=_decode_image(fields["jpg"]), detected=detected, init=init_2d,
                                    fitted=np.asarray(arrays["projected2d"], np.float64) * scale,
                                    loss=_float(meta.get("frame_loss")),
                                    reason=str(meta.get("frame_reason", "kept"))))
        videos.append(PoseVideo(key=str(row["input_key"]), status=str(row["status"]), reason=str(row["reason"]),
                                video_loss=row.get("video_loss"), frames=frames, source="shards",
                                init_note="initialisation drawn with the fitted camera (stage results not found)"))
    return videos


def pose3d_gallery(ref: dv.VersionRef, inputs: Sequence[Mapping[str, Any]], *, count: int,
                   frames_per_video: int) -> tuple[dict[str, list[PoseVideo]], list[str]]:
    """``({"kept": videos, "filtered": videos}, notes)`` for up to ``count`` videos of each."""
    store = ResultStore(out_root(ref))
    results = _results_rows(ref.url)
    gallery: dict[str, list[PoseVideo]] = {"kept": [], "filtered": []}
    notes: list[str] = []
    for group, status in (("kept", "written"), ("filtered", "filtered")):
        rows = choose([r for r in inputs if r.get("status") == status], count, "video_loss")
        missing = []
        for row in rows:
            try:
                gallery[group].append(_pose_from_results(store, row, results.get(str(row["input_key"]), {}),
                                                         frames_per_video))
            except (FileNotFoundError, ResultCodecError, KeyError) as exc:
                log.debug("report: no stage results for %r (%s)", row["input_key"], exc)
                missing.append(row)
        if missing and group == "kept":
            gallery[group].extend(_pose_from_shards(ref.url, missing, frames_per_video))
        elif missing:
            notes.append(f"{len(missing)} filtered video(s) not shown: their stage results are not under "
                         f"{store.root} (filtered videos have no samples)")
    return gallery, notes


# ----------------------------------------------------------------------------- segmentation


def _categories(segments: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    return {int(s["category_id"]): str(s.get("category") or s["category_id"]) for s in segments
            if s.get("category_id") is not None}


def _seg_from_results(store: ResultStore, row: Mapping[str, Any], keys: Mapping[str, Any],
                      stages: Sequence[str]) -> SegImage:
    image = sem = inst = None
    segments: list = []
    for stage in stages:  # in pipeline order: the last stage that wrote labels wins
        if not keys.get(stage):
            continue
        columns = store.read(stage, str(keys[stage]), None)
        if columns.get("image_jpeg") is not None:
            image = bytes(columns["image_jpeg"])
        for name, value in columns.items():
            if name.endswith("sem_png") and value is not None:
                sem = bytes(value)
            elif name.endswith("inst_png") and value is not None:
                inst = bytes(value)
            elif name.endswith("segments") and value is not None:
                segments = list(value)
    if image is None or sem is None:
        raise FileNotFoundError("image or labels missing from the stage results")
    return SegImage(key=str(row["input_key"]), status=str(row["status"]), reason=str(row["reason"]),
                    image=_decode_image(image), sem=_decode_image(sem, cv2.IMREAD_UNCHANGED),
                    inst=None if inst is None else _decode_image(inst, cv2.IMREAD_UNCHANGED),
                    categories=_categories(segments), ignore_fraction=row.get("ignore_fraction"),
                    source="stage results")


def segmentation_gallery(ref: dv.VersionRef, inputs: Sequence[Mapping[str, Any]], *,
                         count: int) -> tuple[dict[str, list[SegImage]], list[str]]:
    """``({"kept": images, "filtered": images}, notes)`` for up to ``count`` images of each."""
    notes: list[str] = []
    kept_rows = choose([r for r in inputs if r.get("status") == "written"], count, "ignore_fraction")
    samples = _shard_samples(ref.url, {str(r["input_key"]) for r in kept_rows})
    kept = []
    for row in kept_rows:
        fields = samples.get(str(row["input_key"]))
        if not fields or not {"jpg", "sem.png"} <= set(fields):
            notes.append(f"kept image {row['input_key']!r}: sample not found in the shards")
            continue
        meta = json.loads(fields.get("json", b"{}"))
        kept.append(SegImage(key=str(row["input_key"]), status="written", reason=str(row["reason"]),
                             image=_decode_image(fields["jpg"]),
                             sem=_decode_image(fields["sem.png"], cv2.IMREAD_UNCHANGED),
                             inst=_decode_image(fields["inst.png"], cv2.IMREAD_UNCHANGED) if "inst.png" in fields else None,
                             categories=_categories(meta.get("segments") or []),
                             ignore_fraction=row.get("ignore_fraction"), source="shards"))
    results = _results_rows(ref.url)
    stages = [c for c in (next(iter(results.values())).keys() if results else ())
              if c not in ("input_key", "status", "samples")]
    store = ResultStore(out_root(ref))
    filtered = []
    for row in choose([r for r in inputs if r.get("status") == "filtered"], count, "ignore_fraction"):
        try:
            filtered.append(_seg_from_results(store, row, results.get(str(row["input_key"]), {}), stages))
        except (FileNotFoundError, ResultCodecError, ValueError) as exc:
            log.debug("report: no stage results for %r (%s)", row["input_key"], exc)
            notes.append(f"filtered image {row['input_key']!r} not shown: its stage results are not under {store.root}")
    return {"kept": kept, "filtered": filtered}, notes
