"""Decoding: time ranges, fps resampling, resizing, errors, streaming, JPEG, DecodeVideo."""

from __future__ import annotations

import fractions
import os
import pickle
import uuid

import av
import cv2
import fsspec
import numpy as np
import pytest

from labelmill.infra.config import ConfigError, from_dict
from labelmill.operators.common.decode import (
    DecodeConfig,
    DecodedFrame,
    DecodeError,
    DecodeVideo,
    decode_frames,
    encode_jpeg,
    probe_video,
    resize_to_max_side,
    select_nearest_frames,
)

FPS = 30
N_FRAMES = 90  # 3 s
WIDTH, HEIGHT = 64, 48


def frame_colour(index: int) -> tuple[int, int, int]:
    """Solid RGB colour that encodes a frame index (0..99) robustly through lossy coding."""
    return 20 + (index % 10) * 23, 20 + (index // 10) * 23, 128


def index_of(image: np.ndarray) -> int:
    """Frame index encoded by :func:`frame_colour` (mean colour of the frame)."""
    red, green = image[..., 0].mean(), image[..., 1].mean()
    return int(round((red - 20) / 23)) + 10 * int(round((green - 20) / 23))


def write_video(path: str, *, codec: str, container_format: str, n_frames: int = N_FRAMES,
                width: int = WIDTH, height: int = HEIGHT, frame_fn=None) -> None:
    """Encode ``n_frames`` at 30 fps with PyAV; frame i shows ``frame_fn(i)`` or its index colour."""
    with av.open(path, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 15  # keyframes at most 0.5 s apart, so seeking matters
        if codec == "libx264":
            stream.options = {"crf": "10"}
        for i in range(n_frames):
            if frame_fn is None:
                image = np.empty((height, width, 3), np.uint8)
                image[...] = frame_colour(i)
            else:
                image = frame_fn(i)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


H264 = "libx264" if "libx264" in av.codecs_available else "mpeg4"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    paths = {
        "mp4": str(root / "clip.mp4"),
        "avi": str(root / "clip.avi"),
        "webm": str(root / "clip.webm"),
    }
    write_video(paths["mp4"], codec=H264, container_format="mp4")
    write_video(paths["avi"], codec="mpeg4", container_format="avi")
    write_video(paths["webm"], codec="libvpx", container_format="webm")
    data = open(paths["mp4"], "rb").read()
    paths["truncated"] = str(root / "truncated.mp4")
    open(paths["truncated"], "wb").write(data[: len(data) // 2])
    paths["empty"] = str(root / "empty.mp4")
    open(paths["empty"], "wb").close()
    paths["text"] = str(root / "notes.mp4")
    open(paths["text"], "w").write("this is a text file, not a video\n" * 20)
    return paths


def indices(frames) -> list[int]:
    return [index_of(f.image) for f in frames]


# ----------------------------------------------------------------------------- decoding


def test_probe_reads_the_header(media):
    info = probe_video(media["mp4"])
    assert (info.width, info.height, info.fps, info.frame_count) == (WIDTH, HEIGHT, 30.0, N_FRAMES)
    assert info.duration == pytest.approx(3.0)
    assert info.codec == ("h264" if H264 == "libx264" else "mpeg4")


def test_all_frames_in_order_with_times(media):
    frames = list(decode_frames(media["mp4"]))
    assert indices(frames) == list(range(N_FRAMES))
    assert [f.index for f in frames] == list(range(N_FRAMES))
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in range(N_FRAMES)])
    first = frames[0]
    assert first.image.shape == (HEIGHT, WIDTH, 3) and first.image.dtype == np.uint8
    assert (first.original_width, first.original_height, first.scale_x, first.scale_y) == (WIDTH, HEIGHT, 1.0, 1.0)
    # RGB order: the red channel carries the low digit, blue is constant 128.
    assert abs(float(frames[7].image[..., 2].mean()) - 128) < 6


@pytest.mark.parametrize("fmt", ["mp4", "avi", "webm"])
def test_time_range_and_fps_resampling(media, fmt):
    # 30 -> 10 fps keeps every third frame; the range [1, 2) s is frames 30..59.
    assert indices(decode_frames(media[fmt], fps=10)) == list(range(0, N_FRAMES, 3))
    ranged = list(decode_frames(media[fmt], start=1.0, end=2.0, fps=10))
    assert indices(ranged) == list(range(30, 60, 3))
    assert [f.index for f in ranged] == list(range(10))
    assert ranged[0].time == pytest.approx(1.0, abs=1e-3)


def test_start_after_a_keyframe_seeks_and_skips_to_the_range(media):
    # 1.6 s (frame 48) is not a keyframe: decoding starts earlier and skips to the range
    frames = list(decode_frames(media["mp4"], start=1.6, end=1.8))
    assert indices(frames) == [48, 49, 50, 51, 52, 53]


def test_seek_starts_decoding_at_the_keyframe_before_start(media):
    from labelmill.operators.common.decode import _open_container, _stream_timing, _timed_frames

    with av.open(media["mp4"]) as container:
        stream = container.streams.video[0]
        keyframes = sorted(p.pts * stream.time_base for p in container.demux(stream) if p.is_keyframe)
    start = fractions.Fraction(21, 10)  # frame 63
    expected = max(t for t in keyframes if t <= start)
    assert 0 < expected < start
    with _open_container(media["mp4"]) as container:
        stream = container.streams.video[0]
        time_base, origin, _, period = _stream_timing(container, stream)
        first_time, _ = next(_timed_frames(container, stream, "clip", start, time_base, origin, period))
    assert first_time == expected  # decoding began at the keyframe before start, not at frame 0


def test_a_seek_that_lands_too_late_restarts_from_the_top(media):
    from labelmill.operators.common.decode import _open_container, _stream_timing, _timed_frames

    class LateSeekingContainer:
        """Delegates to a real container but its first seek overshoots by one second."""

        def __init__(self, real):
            self.real, self.seeks = real, 0

        def seek(self, offset, **kwargs):
            self.seeks += 1
            late = offset + (15360 if self.seeks == 1 else 0)
            return self.real.seek(late, **kwargs)

        def decode(self, stream):
            return self.real.decode(stream)

    with _open_container(media["mp4"]) as container:
        stream = container.streams.video[0]
        time_base, origin, _, period = _stream_timing(container, stream)
        late = LateSeekingContainer(container)
        timed = _timed_frames(late, stream, "clip", fractions.Fraction(1), time_base, origin, period)
        times = [t for t, _ in timed]
    assert late.seeks == 2 and times == [fractions.Fraction(i, FPS) for i in range(N_FRAMES)]


def test_fps_targets_take_the_nearest_frame_ties_to_earlier(media):
    # 12 fps targets k/12 s fall on source frame 2.5k: halves go to the earlier frame
    got = indices(decode_frames(media["mp4"], fps=12))
    expected = [int(np.floor(2.5 * k)) if (2.5 * k) % 1 == 0.5 else round(2.5 * k) for k in range(36)]
    assert got == expected


def test_fps_above_the_source_rate_returns_each_frame_once(media):
    assert indices(decode_frames(media["mp4"], start=0.5, end=1.0, fps=60)) == list(range(15, 30))


def test_end_past_the_video_is_clipped(media):
    assert indices(decode_frames(media["mp4"], start=2.5, end=10.0, fps=10)) == [75, 78, 81, 84, 87]


def test_max_side_shrinks_with_exact_scales(media):
    frames = list(decode_frames(media["mp4"], max_side=32, start=0.0, end=0.1))
    frame = frames[0]
    assert frame.image.shape == (24, 32, 3)
    assert (frame.scale_x, frame.scale_y) == (0.5, 0.5)
    assert (frame.original_width, frame.original_height) == (WIDTH, HEIGHT)
    assert np.allclose(frame.to_original(np.array([[32.0, 24.0], [10.0, 5.0]])), [[64, 48], [20, 10]])
    assert indices(frames) == [0, 1, 2]
    odd = next(iter(decode_frames(media["mp4"], max_side=50)))
    assert odd.image.shape == (38, 50, 3)  # 48 * 50/64 = 37.5 -> 38
    assert odd.scale_y == pytest.approx(38 / 48)
    same = next(iter(decode_frames(media["mp4"], max_side=200)))  # never enlarged
    assert same.image.shape == (HEIGHT, WIDTH, 3) and same.scale_x == 1.0


def test_memory_url_decodes_and_probes(media):
    url = f"memory://decode-{uuid.uuid4().hex}/clip.mp4"
    with fsspec.open(url, "wb") as f:
        f.write(open(media["mp4"], "rb").read())
    assert indices(decode_frames(url, start=2.0, fps=5)) == [60, 66, 72, 78, 84]
    assert probe_video(url).frame_count == N_FRAMES


@pytest.mark.parametrize(
    "name, words",
    [("truncated", "not a readable video"), ("empty", "empty file"), ("text", "not a readable video")],
)
def test_bad_files_raise_decode_error_naming_the_file(media, name, words):
    with pytest.raises(DecodeError, match=words) as caught:
        list(decode_frames(media[name]))
    assert media[name] in str(caught.value)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(DecodeError, match=words):
        probe_video(media[name])


def test_bad_file_over_memory_url(media):
    url = f"memory://decode-{uuid.uuid4().hex}/broken.mp4"
    with fsspec.open(url, "wb") as f:
        f.write(open(media["truncated"], "rb").read())
    with pytest.raises(DecodeError, match="broken.mp4"):
        list(decode_frames(url))


def test_missing_file_raises_decode_error(tmp_path):
    missing = str(tmp_path / "nope.mp4")
    with pytest.raises(DecodeError, match="nope.mp4: file not found"):
        list(decode_frames(missing))


def test_corrupt_data_inside_the_stream_raises(tmp_path):
    # header first (faststart), noisy frames so the data is large; cut inside the frame data
    path = str(tmp_path / "faststart.mp4")
    rng = np.random.default_rng(0)
    with av.open(path, "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(H264, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.mp4")
    open(cut, "wb").write(data[: int(len(data) * 0.6)])
    assert probe_video(cut).frame_count == 60  # the header survived
    with pytest.raises(DecodeError, match="cut.mp4"):
        list(decode_frames(cut))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"start": 5.0}, "beyond the video's end"),
        ({"start": 2.99}, "no frames in the time range"),
        ({"start": 1.0, "end": 1.0}, "not after start"),
        ({"start": -0.5}, "negative"),
        ({"start": float("nan")}, "finite number"),
    ],
)
def test_ranges_outside_the_video_raise(media, kwargs, words):
    with pytest.raises(DecodeError, match=words) as caught:
        list(decode_frames(media["mp4"], **kwargs))
    assert media["mp4"] in str(caught.value)


def test_decoding_streams_instead_of_holding_the_video(tmp_path):
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc to read the resident set size")
    path = str(tmp_path / "long.mp4")
    width, height, n_frames = 320, 240, 300  # 300 RGB frames would hold 69 MB

    def moving_bar(i: int) -> np.ndarray:
        image = np.zeros((height, width, 3), np.uint8)
        image[:, (i * 3) % (width - 8):(i * 3) % (width - 8) + 8] = 255
        return image

    write_video(path, codec=H264, container_format="mp4", n_frames=n_frames, width=width, height=height,
                frame_fn=moving_bar)
    page = os.sysconf("SC_PAGE_SIZE")

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    list(decode_frames(path, start=9.5))  # warm up the decoder libraries
    before = resident()
    peak, count = before, 0
    for _frame in decode_frames(path):
        count += 1
        peak = max(peak, resident())
    assert count == n_frames
    assert peak - before < 20e6, f"resident memory grew by {(peak - before) / 1e6:.1f} MB while streaming"


# ----------------------------------------------------------------------------- pure kernels


def test_select_nearest_frames_on_irregular_times():
    times = [fractions.Fraction(t, 100) for t in (0, 4, 9, 21, 30, 41, 50)]
    stream = [(t, n) for n, t in enumerate(times)]
    step, period = fractions.Fraction(1, 10), fractions.Fraction(1, 10)
    chosen = list(select_nearest_frames(stream, start=fractions.Fraction(0), end=None, step=step, frame_period=period))
    # targets 0, .1, .2, .3, .4, .5 -> 0, .09, .21, .30, .41, .50
    assert [n for _, n in chosen] == [0, 2, 3, 4, 5, 6]
    ranged = select_nearest_frames(stream, start=fractions.Fraction(1, 20), end=fractions.Fraction(4, 10),
                                   step=None, frame_period=period)
    assert [n for _, n in ranged] == [2, 3, 4]


def test_resize_to_max_side_keeps_aspect():
    image = np.zeros((100, 300, 3), np.uint8)
    resized, sx, sy = resize_to_max_side(image, 150)
    assert resized.shape == (50, 150, 3) and (sx, sy) == (0.5, 0.5)
    same, sx, sy = resize_to_max_side(image, None)
    assert same is image and (sx, sy) == (1.0, 1.0)


# ----------------------------------------------------------------------------- JPEG


def test_encode_jpeg_is_deterministic_and_rgb():
    image = np.zeros((40, 60, 3), np.uint8)
    image[..., 0] = 220  # red
    first, second = encode_jpeg(image, 90), encode_jpeg(image.copy(), 90)
    assert first == second and first[:2] == b"\xff\xd8"
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert decoded.shape == (40, 60, 3)
    assert abs(int(decoded[..., 0].mean()) - 220) < 4 and decoded[..., 2].mean() < 4
    noisy = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert len(encode_jpeg(noisy, 30)) < len(encode_jpeg(noisy, 95))


@pytest.mark.parametrize(
    "image, quality",
    [(np.zeros((4, 4, 3), np.float32), 90), (np.zeros((4, 4, 4), np.uint8), 90), (np.zeros((4, 4, 3), np.uint8), 101)],
)
def test_encode_jpeg_rejects_bad_input(image, quality):
    with pytest.raises(ValueError):
        encode_jpeg(image, quality)


# ----------------------------------------------------------------------------- operator


def test_decode_video_marks_bad_items_failed_and_keeps_good_ones(media, tmp_path):
    op = DecodeVideo(fps=10, max_side=32, jpeg_quality=90)
    op = pickle.loads(pickle.dumps(op))  # engines ship operators to workers
    op.setup()
    batch = {
        "key": ["good", "corrupt", "missing", "outside", "prefailed", "whole"],
        "uri": [media["mp4"], media["truncated"], str(tmp_path / "gone.mp4"), media["avi"], media["mp4"],
                media["webm"]],
        "start": np.array([1.0, np.nan, np.nan, 7.0, np.nan, np.nan]),
        "end": np.array([2.0, np.nan, np.nan, 8.0, np.nan, np.nan]),
        "status": ["pending", "pending", "pending", "pending", "failed", "pending"],
        "reason": [None, None, None, None, "missing file: x.mp4", None],
        "label": ["a", "b", "c", "d", "e", "f"],
    }
    out = op(batch)
    assert out["key"] == batch["key"] and out["label"] == batch["label"]  # passed through
    assert out["status"] == ["pending", "failed", "failed", "failed", "failed", "pending"]
    assert out["reason"][0] is None and out["reason"][5] is None
    assert media["truncated"] in out["reason"][1]
    assert "gone.mp4" in out["reason"][2] and "file not found" in out["reason"][2]
    assert "beyond the video's end" in out["reason"][3]
    assert out["reason"][4] == "missing file: x.mp4"

    good = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[..., ::-1] for b in out["frames_jpeg"][0]]
    assert [index_of(image) for image in good] == list(range(30, 60, 3))
    assert out["frame_times"][0] == pytest.approx([i / FPS for i in range(30, 60, 3)])
    assert len(out["frames_jpeg"][5]) == 30
    assert out["frame_width"].tolist() == [32, 0, 0, 0, 0, 32]
    assert out["frame_height"].tolist() == [24, 0, 0, 0, 0, 24]
    assert out["original_width"][0] == WIDTH and out["scale_x"][0] == 0.5
    assert np.isnan(out["scale_y"][1]) and out["frames_jpeg"][1] == [] and out["frame_times"][2] == []


def test_decode_video_declares_resources_and_validates_config():
    assert DecodeVideo.resources == {"num_cpus": 1, "num_gpus": 0, "batch_size": 4}
    op = DecodeVideo.from_config(from_dict(DecodeConfig, {"fps": 5, "max_side": 256}))
    assert (op.config.fps, op.config.max_side, op.config.jpeg_quality) == (5.0, 256, 90)
    with pytest.raises(ConfigError, match="max_side"):
        from_dict(DecodeConfig, {"max_side": 0})
    with pytest.raises(ValueError, match="fps"):
        DecodeVideo(fps=-1)
    with pytest.raises(ValueError, match="jpeg_quality"):
        DecodeVideo(jpeg_quality=0)
    with pytest.raises(TypeError):
        DecodeVideo(5)  # keyword-only


def test_decoded_frame_is_a_plain_record(media):
    frame = next(iter(decode_frames(media["mp4"])))
    assert isinstance(frame, DecodedFrame) and (frame.width, frame.height) == (WIDTH, HEIGHT)
