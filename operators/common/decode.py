"""Video decoding with PyAV: stream frames of a time range, resampled and resized; JPEG encoding.

Semantics (also in ``docs/inputs.md``):

* Times are seconds from the video's start (the stream's first presentation time is 0).
* ``start``/``end`` select frames whose presentation time ``t`` satisfies ``start <= t < end``
  (``None``: from the first / to the last frame). An ``end`` past the video is clipped to it;
  a range with no frame of the video raises :class:`DecodeError`.
* ``fps`` resampling: target times ``start + k / fps`` (k = 0, 1, ...) below ``end`` (or below
  the last frame's time plus one frame period); each target takes the decoded frame nearest in
  time (ties go to the earlier frame) and a source frame is emitted at most once, so an
  ``fps`` at or above the source rate returns every frame. ``DecodedFrame.time`` is the chosen
  frame's own presentation time, not the target time.
* ``max_side``: frames whose longer side exceeds it are shrunk with ``cv2.INTER_AREA`` so the
  longer side equals it (never enlarged); ``scale_x``/``scale_y`` give the exact factors.
* Frames are streamed: at most two decoded frames are held at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from fractions import Fraction
from typing import Any, ClassVar, Iterable, Iterator, TypeVar

import av
import cv2
import fsspec
import numpy as np
from labelmill.infra.formats.items import ItemStatus
from fsspec.core import url_to_fs

__all__ = [
    "DecodeError",
    "VideoInfo",
    "DecodedFrame",
    "DecodeConfig",
    "DecodeVideo",
    "decode_frames",
    "probe_video",
    "encode_jpeg",
    "resize_to_max_side",
    "select_nearest_frames",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_AV_TIME_BASE = 1_000_000  # FFmpeg's container-level time unit (microseconds)


class DecodeError(ValueError):
    """A video cannot be decoded (missing, empty, corrupt, not a video, range outside it).

    The message names the uri and the reason.
    """


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container header says about the first video stream (nothing is decoded)."""

    uri: str
    duration: float | None  # seconds; None when the container does not say
    fps: float | None  # average frame rate; None when unknown
    frame_count: int | None  # from the header; None when unknown
    width: int  # pixels, as stored
    height: int
    codec: str  # FFmpeg decoder name, e.g. "h264"


@dataclasses.dataclass(frozen=True, eq=False)
class DecodedFrame:
    """One decoded (and possibly resized) frame of a clip.

    ``image`` is RGB uint8 of shape ``(H, W, 3)`` after resizing. A point ``(x, y)`` in
    ``image`` pixels maps back to the original frame as ``(x / scale_x, y / scale_y)``
    (continuous coordinates with the image corner at 0); see :meth:`to_original`.
    """

    index: int  # 0-based position within the clip after resampling
    time: float  # presentation time, seconds from the video's start
    image: np.ndarray  # (H, W, 3) uint8 RGB
    original_width: int  # frame size before resizing, pixels
    original_height: int
    scale_x: float  # image width / original width (1.0 when not resized)
    scale_y: float  # image height / original height
    # Source frame number: round(time x the stream's frame rate), strictly increasing within a
    # clip; row t of a precomputed keypoint file of the video at ``uri`` is source frame t.
    source_index: int = -1

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def to_original(self, points_xy: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` x, y pixel coordinates in ``image`` to the original frame, ``(N, 2)``."""
        points = np.asarray(points_xy, dtype=np.float64)
        return points / np.array([self.scale_x, self.scale_y])


@dataclasses.dataclass
class DecodeConfig:
    """Knobs of :class:`DecodeVideo`."""

    # Output frame rate (frames per second); null keeps every frame of the time range.
    fps: float | None = None
    # Longest image side in pixels after resizing; null keeps the decoded size.
    max_side: int | None = None
    # JPEG quality 1..100 for the encoded frames.
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        fps_ok = isinstance(self.fps, (int, float)) and not isinstance(self.fps, bool) and math.isfinite(self.fps)
        if self.fps is not None and not (fps_ok and self.fps > 0):
            raise ValueError(f"fps must be a positive number or null, got {self.fps!r}")
        if self.max_side is not None and (
            isinstance(self.max_side, bool) or not isinstance(self.max_side, int) or self.max_side < 1
        ):
            raise ValueError(f"max_side must be a positive integer or null, got {self.max_side!r}")
        quality = self.jpeg_quality
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"jpeg_quality must be an integer in 1..100, got {self.jpeg_quality!r}")


# ----------------------------------------------------------------------------- pure kernels


def select_nearest_frames(
    frames: Iterable[tuple[Fraction, T]],
    *,
    start: Fraction,
    end: Fraction | None,
    step: Fraction | None,
    frame_period: Fraction,
    video_end: Fraction | None = None,
) -> Iterator[tuple[Fraction, T]]:
    """Choose frames of a time-ordered stream for a time range and target rate.

    ``frames``: ``(time, item)`` pairs in increasing time. Candidates are frames with
    ``start <= time < end``. With ``step=None`` every candidate is yielded. Otherwise the
    targets are ``start + k * step`` below ``end``, below ``video_end`` (the declared
    duration, if known) and below the last candidate's time plus ``frame_period``; each
    target takes the nearest candidate (ties: the earlier one) and no candidate is yielded
    twice. Holds at most two items; stops reading once past ``end``.
    """
    target: Fraction | None = start
    previous: tuple[Fraction, T] | None = None
    previous_number = -1
    last_emitted = -1
    for number, (time, item) in enumerate(frames):
        if time < start:
            continue
        if end is not None and time >= end:
            break
        if step is None:
            yield time, item
            continue
        while target is not None and time >= target:
            if previous is not None and target - previous[0] <= time - target:
                chosen, chosen_number = previous, previous_number
            else:
                chosen, chosen_number = (time, item), number
            if chosen_number > last_emitted:
                last_emitted = chosen_number
                yield chosen
            target += step
            if end is not None and target >= end:
                target = None
        if target is None:
            return
        previous, previous_number = (time, item), number
    if step is None or previous is None or target is None:
        return
    limit = previous[0] + frame_period
    for bound in (end, video_end):
        if bound is not None:
            limit = min(limit, bound)
    if target < limit and previous_number > last_emitted:
        yield previous


def resize_to_max_side(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float, float]:
    """Shrink ``(H, W, C)`` ``image`` so its longer side is ``max_side`` (INTER_AREA).

    Returns ``(resized (H', W', C), scale_x = W'/W, scale_y = H'/H)``; images already within
    ``max_side`` (or ``max_side=None``) come back unchanged with scales 1.0.
    """
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image, 1.0, 1.0
    factor = max_side / max(height, width)
    new_width = max(1, round(width * factor))
    new_height = max(1, round(height * factor))
    resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_AREA)
    return resized, new_width / width, new_height / height


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB ``(H, W, 3)`` or grey ``(H, W)`` uint8 image (OpenCV; deterministic)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = f"{type(image).__name__} {getattr(image, 'dtype', '')}".strip()
        raise ValueError(f"encode_jpeg needs a uint8 numpy image, got {kind}")
    if image.ndim == 3 and image.shape[2] == 3:
        pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 2:
        pixels = image
    else:
        raise ValueError(f"encode_jpeg needs an (H, W, 3) RGB or (H, W) grey image, got shape {image.shape}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer in 0..100, got {quality!r}")
    ok, buffer = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return buffer.tobytes()


# ----------------------------------------------------------------------------- PyAV access


@contextlib.contextmanager
def _open_container(uri: str) -> Iterator[av.container.InputContainer]:
    """Open ``uri`` (any fsspec URL) with PyAV; local files by path, others as file objects."""
    try:
        fs, path = url_to_fs(uri)
    except (ValueError, ImportError) as exc:
        raise DecodeError(f"cannot decode {uri}: cannot open this URL ({exc})") from exc
    with contextlib.ExitStack() as stack:
        try:
            if _is_local(fs):
                container = av.open(path, mode="r", metadata_errors="ignore")
            else:
                handle = stack.enter_context(fs.open(path, "rb"))
                container = av.open(handle, mode="r", metadata_errors="ignore")
        except FileNotFoundError as exc:
            raise DecodeError(f"cannot decode {uri}: file not found") from exc
        except av.FFmpegError as exc:
            raise DecodeError(f"cannot decode {uri}: {_why_unreadable(fs, path, exc)}") from exc
        except OSError as exc:
            raise DecodeError(f"cannot decode {uri}: cannot read the file ({exc})") from exc
        stack.callback(container.close)
        yield container


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _why_unreadable(fs: fsspec.AbstractFileSystem, path: str, exc: Exception) -> str:
    with contextlib.suppress(Exception):
        if fs.size(path) == 0:
            return "empty file"
    return f"not a readable video file ({exc})"


def _video_stream(container: av.container.InputContainer, uri: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise DecodeError(f"cannot decode {uri}: the file has no video stream")
    return container.streams.video[0]


def _stream_timing(container, stream) -> tuple[Fraction, int, Fraction | None, Fraction]:
    """(time_base, origin pts, duration in s or None, frame period in s) of a video stream."""
    time_base = stream.time_base or Fraction(1, _AV_TIME_BASE)
    if stream.start_time is not None:
        origin_pts = stream.start_time
    elif container.start_time is not None:
        origin_pts = int(Fraction(container.start_time, _AV_TIME_BASE) / time_base)
    else:
        origin_pts = 0
    duration: Fraction | None = None
    if stream.duration is not None and stream.duration > 0:
        duration = stream.duration * time_base
    elif container.duration is not None and container.duration > 0:
        duration = Fraction(container.duration, _AV_TIME_BASE)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    frame_period = 1 / Fraction(rate) if rate else Fraction(1, 30)
    return Fraction(time_base), origin_pts, duration, frame_period


def probe_video(uri: str) -> VideoInfo:
    """Header facts of ``uri``'s first video stream; raises :class:`DecodeError` when unreadable."""
    with _open_container(uri) as container:
        stream = _video_stream(container, uri)
        _, _, duration, _ = _stream_timing(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            uri=uri,
            duration=float(duration) if duration is not None else None,
            fps=float(rate) if rate else None,
            frame_count=int(stream.frames) if stream.frames else None,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            codec=str(stream.codec_context.name),
        )


def _seconds(value: float | None, name: str, uri: str) -> Fraction | None:
    if value is None:
        return None
    numeric = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not numeric or not math.isfinite(value):
        raise DecodeError(f"cannot decode {uri}: {name} must be a finite number of seconds, got {value!r}")
    return Fraction(float(value)).limit_denominator(1_000_000)


def decode_frames(
    uri: str,
    *,
    start: float | None = None,
    end: float | None = None,
    fps: float | None = None,
    max_side: int | None = None,
) -> Iterator[DecodedFrame]:
    """Stream the frames of ``uri`` (any fsspec URL) in ``[start, end)`` seconds.

    Seeks to the keyframe at or before ``start``, decodes forward, resamples to ``fps`` by
    nearest timestamp and shrinks to ``max_side`` (see the module docstring). A generator:
    errors, including :class:`DecodeError` for missing, empty, corrupt or non-video files
    and for ranges outside the video, are raised while iterating.
    """
    start_s = _seconds(start, "start", uri) or Fraction(0)
    end_s = _seconds(end, "end", uri)
    if start_s < 0:
        raise DecodeError(f"cannot decode {uri}: start {float(start_s):g} s is negative")
    if end_s is not None and end_s <= start_s:
        raise DecodeError(f"cannot decode {uri}: end {float(end_s):g} s is not after start {float(start_s):g} s")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive integer, got {max_side!r}")
    step = 1 / Fraction(float(fps)).limit_denominator(1_000_000) if fps is not None else None

    with _open_container(uri) as container:
        stream = _video_stream(container, uri)
        time_base, origin_pts, duration, frame_period = _stream_timing(container, stream)
        if duration is not None and start_s >= duration:
            raise DecodeError(
                f"cannot decode {uri}: start {float(start_s):g} s is at or beyond "
                f"the video's end ({float(duration):.3f} s)"
            )
        timed = _timed_frames(container, stream, uri, start_s, time_base, origin_pts, frame_period)
        chosen = select_nearest_frames(
            timed, start=start_s, end=end_s, step=step, frame_period=frame_period, video_end=duration
        )
        emitted, previous_index = 0, -1
        for time, frame in _wrap_av_errors(chosen, uri):
            previous_index = max(previous_index + 1, math.floor(time / frame_period + Fraction(1, 2)))
            image = frame.to_ndarray(format="rgb24")
            original_height, original_width = image.shape[:2]
            image, scale_x, scale_y = resize_to_max_side(image, max_side)
            yield DecodedFrame(
                index=emitted,
                time=float(time),
                image=np.ascontiguousarray(image),
                original_width=int(original_width),
                original_height=int(original_height),
                scale_x=scale_x,
                scale_y=scale_y,
                source_index=int(previous_index),
            )
            emitted += 1
        if emitted == 0:
            where = f"[{float(start_s):g}, {float(end_s):g}) s" if end_s is not None else f"from {float(start_s):g} s"
            length = f" (video is {float(duration):.3f} s long)" if duration is not None else ""
            raise DecodeError(f"cannot decode {uri}: no frames in the time range {where}{length}")


def _wrap_av_errors(items: Iterator[T], uri: str) -> Iterator[T]:
    """Re-raise PyAV errors raised while iterating ``items`` as :class:`DecodeError`."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            raise DecodeError(f"cannot decode {uri}: corrupt video data ({exc})") from exc
        except (OSError, EOFError) as exc:
            raise DecodeError(f"cannot decode {uri}: reading failed ({exc})") from exc
        yield item


def _timed_frames(
    container,
    stream,
    uri: str,
    start: Fraction,
    time_base: Fraction,
    origin_pts: int,
    frame_period: Fraction,
) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """(seconds from video start, frame) in decode order, after seeking near ``start``.

    If the seek lands after ``start`` (an imprecise index), decoding restarts from the top.
    """
    seeked = False
    if start > 0:
        container.seek(origin_pts + math.floor(start / time_base), stream=stream, backward=True, any_frame=False)
        seeked = True
    previous_time: Fraction | None = None
    for frame in container.decode(stream):
        if frame.pts is not None:
            time = (frame.pts - origin_pts) * time_base
        else:
            time = previous_time + frame_period if previous_time is not None else Fraction(0)
        if seeked and previous_time is None and time > start + frame_period / 2:
            logger.debug("%s: seek to %s s landed at %s s; decoding from the start", uri, float(start), float(time))
            container.seek(origin_pts, stream=stream, backward=True, any_frame=False)
            yield from _timed_frames(container, stream, uri, Fraction(0), time_base, origin_pts, frame_period)
            return
        previous_time = time
        yield time, frame


# ----------------------------------------------------------------------------- operator


class DecodeVideo:
    """Operator: decode a batch of work items into JPEG frames (engine-free, picklable).

    Input columns: ``key``, ``uri``, ``start``, ``end`` (null/NaN = whole file); optional
    ``status``/``reason`` (items already ``failed`` pass through undecoded). Every input
    column is passed through. Added columns, one entry per item:

    * ``frames_jpeg``: list of JPEG bytes (RGB frames, after resampling and resizing)
    * ``num_frames``: int32 number of frames (0 when failed)
    * ``frame_times``: list of float seconds from the video's start, one per frame
    * ``frame_indices``: list of int source frame numbers, one per frame
      (:attr:`DecodedFrame.source_index`: which frames of the video at ``uri`` were kept)
    * ``frame_width``, ``frame_height``: int32 size of the stored frames (0 when failed)
    * ``original_width``, ``original_height``: int32 decoded size before resizing (0 when failed)
    * ``scale_x``, ``scale_y``: float64 stored / original size (NaN when failed)
    * ``status``: ``failed`` for items that could not be decoded, else the input status
      (``pending`` when absent); ``reason``: the error message naming the uri, else the input
      reason (None when absent)

    A failing item never stops the batch.
    """

    resources: ClassVar[dict[str, int]] = {"num_cpus": 1, "num_gpus": 0, "batch_size": 4}
    reads = ("key", "uri", "start", "end")
    writes = ("frames_jpeg", "num_frames", "frame_times", "frame_indices", "frame_width", "frame_height",
              "original_width", "original_height", "scale_x", "scale_y")

    def __init__(self, *, fps: float | None = None, max_side: int | None = None, jpeg_quality: int = 90) -> None:
        self.config = DecodeConfig(fps=fps, max_side=max_side, jpeg_quality=jpeg_quality)

    @classmethod
    def from_config(cls, config: DecodeConfig) -> "DecodeVideo":
        return cls(fps=config.fps, max_side=config.max_side, jpeg_quality=config.jpeg_quality)

    def setup(self) -> None:
        """Nothing heavy to load: PyAV and OpenCV need no per-worker state."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "uri" not in batch:
            raise ValueError(f"DecodeVideo needs a 'uri' column; the batch has {', '.join(batch) or 'no columns'}")
        size = _batch_size(batch)
        items = ItemStatus.of(batch, size)
        keys = items.keys
        starts = list(batch["start"]) if "start" in batch else [None] * size
        ends = list(batch["end"]) if "end" in batch else [None] * size
        out_columns: dict[str, list] = {name: [] for name in (
            "frames_jpeg", "frame_times", "frame_indices", "frame_width", "frame_height",
            "original_width", "original_height", "scale_x", "scale_y")}
        for i, uri in enumerate(batch["uri"]):
            result = None
            if not items.is_failed(i):
                result, error = self._decode_item(keys[i], uri, starts[i], ends[i])
                if error is not None:
                    items.fail(i, error)
            _append_result(out_columns, result)
        out = dict(batch)
        out["frames_jpeg"] = out_columns["frames_jpeg"]
        out["num_frames"] = np.asarray([len(f) for f in out_columns["frames_jpeg"]], dtype=np.int32)
        out["frame_times"] = out_columns["frame_times"]
        out["frame_indices"] = out_columns["frame_indices"]
        for name in ("frame_width", "frame_height", "original_width", "original_height"):
            out[name] = np.asarray(out_columns[name], dtype=np.int32)
        for name in ("scale_x", "scale_y"):
            out[name] = np.asarray(out_columns[name], dtype=np.float64)
        items.write(out)
        return out

    def _decode_item(self, key: Any, uri: Any, start: Any, end: Any) -> tuple[dict[str, Any] | None, str | None]:
        """(result columns, None) on success, (None, reason) on failure."""
        if not isinstance(uri, str) or not uri:
            return None, f"item {key}: no uri to decode"
        try:
            start, end = _optional_seconds(start), _optional_seconds(end)
        except (TypeError, ValueError):
            return None, f"cannot decode {uri}: start/end must be numbers of seconds or null, got {start!r}, {end!r}"
        cfg = self.config
        jpegs, times, indices, first = [], [], [], None
        try:
            for frame in decode_frames(uri, start=start, end=end, fps=cfg.fps, max_side=cfg.max_side):
                if first is None:
                    first = frame
                elif (frame.original_width, frame.original_height) != (first.original_width, first.original_height):
                    return None, (
                        f"cannot decode {uri}: frame size changes mid-video "
                        f"({first.original_width}x{first.original_height} -> "
                        f"{frame.original_width}x{frame.original_height} at {frame.time:.3f} s)"
                    )
                jpegs.append(encode_jpeg(frame.image, cfg.jpeg_quality))
                times.append(frame.time)
                indices.append(frame.source_index)
        except DecodeError as exc:
            return None, str(exc)
        except Exception as exc:  # an item must never stop the batch: it goes out marked failed
            logger.warning("item %s: unexpected error decoding %s", key, uri, exc_info=True)
            return None, f"cannot decode {uri}: unexpected {type(exc).__name__}: {exc}"
        return {
            "frames_jpeg": jpegs,
            "frame_times": times,
            "frame_indices": indices,
            "frame_width": first.width,
            "frame_height": first.height,
            "original_width": first.original_width,
            "original_height": first.original_height,
            "scale_x": first.scale_x,
            "scale_y": first.scale_y,
        }, None


def _append_result(columns: dict[str, list], result: dict[str, Any] | None) -> None:
    if result is None:
        result = {"frames_jpeg": [], "frame_times": [], "frame_indices": [], "frame_width": 0, "frame_height": 0,
                  "original_width": 0, "original_height": 0, "scale_x": math.nan, "scale_y": math.nan}
    for name, column in columns.items():
        column.append(result[name])


def _batch_size(batch: dict[str, Any]) -> int:
    sizes = {name: len(column) for name, column in batch.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch columns have different lengths: {sizes}")
    return sizes["uri"]


def _optional_seconds(value: Any) -> float | None:
    """None for null/NaN, else the float value."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number
