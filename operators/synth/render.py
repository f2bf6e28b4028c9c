"""Drawing synthetic frames with OpenCV and encoding them with PyAV.

A frame is a procedural backdrop (a periodic wall texture above a floor band, in world metres,
so it pans and zooms with the background camera) with body figures drawn over it: shaded
capsules along SMPL's bones, a torso polygon and a head ellipse, painted far to near
(painter's algorithm on the SMPL joints' depth, larger z is nearer the camera).

:class:`Mp4Writer` encodes BGR frames to an in-memory mp4 (H.264 via libx264, or MPEG-4 Part 2)
at a constant frame rate with one encoder thread and FFmpeg's bitexact flags, so the same
frames give the same bytes.
"""

from __future__ import annotations

import dataclasses
import io
from fractions import Fraction

import av
import cv2
import numpy as np

__all__ = ["Appearance", "Backdrop", "PersonView", "sample_appearance", "make_backdrop", "draw_frame", "Mp4Writer"]

_SHIFT = 2  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT

# (joint a, joint b, width in metres, colour slot) along SMPL's bones.
_BONES: tuple[tuple[int, int, float, str], ...] = (
    (1, 4, 0.15, "pants"), (2, 5, 0.15, "pants"),  # thighs
    (4, 7, 0.11, "pants"), (5, 8, 0.11, "pants"),  # shins
    (7, 10, 0.085, "shoes"), (8, 11, 0.085, "shoes"),  # feet
    (16, 18, 0.095, "shirt"), (17, 19, 0.095, "shirt"),  # upper arms
    (18, 20, 0.075, "sleeve"), (19, 21, 0.075, "sleeve"),  # forearms
    (20, 22, 0.07, "skin"), (21, 23, 0.07, "skin"),  # hands
    (12, 15, 0.09, "skin"),  # neck
)  # fmt: skip
_TORSO_OUTLINE = (1, 2, 17, 14, 13, 16)  # hull corners of the torso polygon
_TORSO_SPINE = ((0, 9, 0.27), (9, 12, 0.16))
_TORSO_DEPTH = [0, 1, 2, 3, 6, 9, 16, 17]


@dataclasses.dataclass(frozen=True)
class Appearance:
    """Colours (BGR uint8 triples) of one drawn person."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    sleeve: tuple[int, int, int]  # forearms: the shirt (long sleeves) or the skin
    pants: tuple[int, int, int]
    shoes: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class PersonView:
    """One person in one frame, already projected to pixels."""

    joints2d: np.ndarray  # (24, 2) pixels
    keypoints2d: np.ndarray  # (17, 2) pixels (COCO-17)
    depth: np.ndarray  # (24,) metres, larger is nearer the camera
    scale: float  # pixels per metre of this person
    facing: bool  # the face points at the camera (nose nearer than the head joint)
    appearance: Appearance


@dataclasses.dataclass(frozen=True)
class Backdrop:
    """A periodic texture pair: wall above ``floor_height`` metres, floor below."""

    wall: np.ndarray  # (2P, 2P, 3) uint8: 2 x 2 tiles of a P-periodic texture
    floor: np.ndarray  # (2P, 2P, 3) uint8, likewise
    period: int  # P texels
    texels_per_metre: float
    floor_height: float  # metres above the ground (y = 0) where the wall meets the floor


def _color(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    c = rng.integers(lo, hi, 3)
    return int(c[0]), int(c[1]), int(c[2])


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Random clothing and skin colours."""
    tone = rng.uniform(0.35, 1.0)
    skin = (int(90 + 100 * tone), int(120 + 90 * tone), int(150 + 95 * tone))
    hair = _color(rng, 10, 90)
    shirt = _color(rng, 30, 240)
    pants = _color(rng, 20, 160)
    shoes = _color(rng, 10, 70)
    sleeve = shirt if rng.random() < 0.5 else skin
    return Appearance(skin=skin, hair=hair, shirt=shirt, sleeve=sleeve, pants=pants, shoes=shoes)


def _periodic_noise(rng: np.random.Generator, size: int, falloff: float) -> np.ndarray:
    """``(size, size)`` periodic 1/f^falloff noise in [0, 1]."""
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radius[0, 0] = 1.0
    field = np.real(np.fft.ifft2(np.fft.fft2(white) / radius**falloff))
    field -= field.min()
    return field / max(field.max(), 1e-12)


def _tinted(noise: np.ndarray, base: tuple[int, int, int], contrast: float) -> np.ndarray:
    shade = 1.0 + contrast * (noise - 0.5)
    return np.clip(np.asarray(base, np.float64)[None, None, :] * shade[..., None], 0, 255)


def make_backdrop(rng: np.random.Generator, *, size: int = 512, texels_per_metre: float = 64.0) -> Backdrop:
    """A random periodic wall (bricks, panels or plain plaster with posters) and floor."""
    wall = _tinted(_periodic_noise(rng, size, 1.2), _color(rng, 60, 200), 0.5)
    style = int(rng.integers(3))
    if style == 0:  # bricks
        rows = int(rng.choice([16, 32]))
        h = size // rows
        mortar = np.asarray(_color(rng, 150, 230), np.float64)
        for r in range(rows):
            wall[r * h : r * h + 2] = mortar
            offset = (h if r % 2 else 0) + 0
            for c in range(offset % (2 * h), size, 2 * h):
                wall[r * h : (r + 1) * h, c : c + 2] = mortar
    elif style == 1:  # vertical panels
        step = int(rng.choice([32, 64]))
        for c in range(0, size, step):
            wall[:, c : c + 3] *= 0.6
    wall = wall.astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):  # posters / windows, wrapped around the tile edges
        w, h = (int(v) for v in rng.integers(size // 16, size // 5, 2))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        color = _color(rng, 20, 255)
        for dx in (-size, 0):
            for dy in (-size, 0):
                cv2.rectangle(wall, (x + dx, y + dy), (x + dx + w, y + dy + h), color, -1)
                cv2.rectangle(wall, (x + dx, y + dy), (x + dx + w, y + dy + h), (30, 30, 30), 2)
    floor = _tinted(_periodic_noise(rng, size, 1.6), _color(rng, 40, 160), 0.6)
    plank = int(rng.choice([16, 32, 64]))
    floor[:, ::plank] *= 0.7
    floor[::plank, :] *= 0.85
    return Backdrop(
        wall=np.tile(wall, (2, 2, 1)),
        floor=np.tile(floor.astype(np.uint8), (2, 2, 1)),
        period=size,
        texels_per_metre=texels_per_metre,
        floor_height=float(rng.uniform(0.25, 0.6)),
    )


def _draw_backdrop(backdrop: Backdrop, background_camera: np.ndarray, width: int, height: int) -> np.ndarray:
    """The backdrop seen by ``background_camera (3,) = (s, u_x, u_y)`` as a ``(H, W, 3)`` image."""
    s, ux, uy = (float(v) for v in background_camera)
    k = backdrop.texels_per_metre / s  # texels per image pixel
    junction = int(np.clip(np.floor(uy - s * backdrop.floor_height), 0, height))
    image = np.empty((height, width, 3), np.uint8)
    for texture, row0, row1 in ((backdrop.wall, 0, junction), (backdrop.floor, junction, height)):
        if row1 > row0:
            image[row0:row1] = _warp_periodic(
                texture, backdrop.period, k, (0.0 - ux) * k, (row0 - uy) * k, width, row1 - row0
            )
    if 0 < junction < height:
        cv2.line(image, (0, junction), (width - 1, junction), (25, 25, 25), max(1, int(0.03 * s)))
    return image


def _warp_periodic(
    texture: np.ndarray, period: int, k: float, x0: float, y0: float, width: int, height: int
) -> np.ndarray:
    """``(height, width, 3)``: output pixel (c, r) samples the ``period``-periodic ``texture``
    (stored as 2 x 2 tiles of one period) at texel ``(x0 + k c, y0 + k r)``, bilinearly. The
    needed window is cut out first (a plain slice when it fits in one period), so the resampling
    runs on OpenCV's fast path."""
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    span_x, span_y = int(np.ceil(k * width)) + 2, int(np.ceil(k * height)) + 2
    if span_x <= period and span_y <= period:
        cx, cy = ix0 % period, iy0 % period
        window = texture[cy : cy + span_y, cx : cx + span_x]
    else:
        cols = np.arange(ix0, ix0 + span_x) % period
        rows = np.arange(iy0, iy0 + span_y) % period
        window = texture[rows[:, None], cols[None, :]]
    matrix = np.array([[k, 0.0, x0 - ix0], [0.0, k, y0 - iy0]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(window, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * _ONE).astype(np.int32)


def _scaled(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in color)  # type: ignore[return-value]


def _capsule(
    image: np.ndarray, a: np.ndarray, b: np.ndarray, width_px: float, color: tuple[int, int, int], light: float
) -> None:
    """A shaded thick segment: dark rim, body colour, lighter core offset towards the light."""
    thick = max(2, int(round(width_px)))
    pa, pb = tuple(_fixed(a)), tuple(_fixed(b))
    cv2.line(image, pa, pb, _scaled(color, 0.45 * light), thick + 2, cv2.LINE_AA, _SHIFT)
    cv2.line(image, pa, pb, _scaled(color, light), thick, cv2.LINE_AA, _SHIFT)
    offset = np.array([-0.18, -0.18]) * width_px
    core = max(1, thick // 3)
    highlight = _scaled(color, 1.3 * light)
    cv2.line(image, tuple(_fixed(a + offset)), tuple(_fixed(b + offset)), highlight, core, cv2.LINE_AA, _SHIFT)


def _draw_person(image: np.ndarray, person: PersonView) -> None:
    j2, z, s, look = person.joints2d, person.depth, person.scale, person.appearance
    centre = float(z[_TORSO_DEPTH].mean())
    extent = max(float(np.ptp(z)), 0.1)

    def light(depth: float) -> float:
        return float(np.clip(1.0 + 0.5 * (depth - centre) / extent, 0.75, 1.2))

    items: list[tuple[float, int, object]] = []
    for index, (a, b, width, slot) in enumerate(_BONES):
        items.append((float(z[a] + z[b]) / 2.0, index, ("bone", a, b, width, slot)))
    items.append((centre, len(_BONES), ("torso",)))
    # The head is never hidden by its own torso: it sorts after it whatever the view.
    items.append((max(float(z[15]), centre), len(_BONES) + 1, ("head",)))
    for depth, _, item in sorted(items, key=lambda x: (x[0], x[1])):
        kind = item[0]  # type: ignore[index]
        if kind == "bone":
            _, a, b, width, slot = item  # type: ignore[misc]
            _capsule(image, j2[a], j2[b], width * s, getattr(look, slot), light(depth))
        elif kind == "torso":
            for a, b, width in _TORSO_SPINE:
                _capsule(image, j2[a], j2[b], width * s, look.shirt, light(depth))
            hull = cv2.convexHull(_fixed(j2[list(_TORSO_OUTLINE)]).reshape(-1, 1, 2))
            cv2.fillConvexPoly(image, hull, _scaled(look.shirt, light(depth)), cv2.LINE_AA, _SHIFT)
            cv2.polylines(image, [hull], True, _scaled(look.shirt, 0.45), 1, cv2.LINE_AA, _SHIFT)
        else:
            _draw_head(image, person, light(depth))


def _draw_head(image: np.ndarray, person: PersonView, light: float) -> None:
    j2, kp, s, look = person.joints2d, person.keypoints2d, person.scale, person.appearance
    up = j2[15] - j2[12]
    norm = float(np.hypot(*up))
    up = up / norm if norm > 1e-6 else np.array([0.0, -1.0])
    centre = j2[15] + up * 0.05 * s
    # The ellipse's own -y axis points along `up`, so its arc 180..360 is the crown.
    angle = float(np.degrees(np.arctan2(up[1], up[0]))) + 90.0
    axes = (max(1, int(round(0.095 * s * _ONE))), max(1, int(round(0.12 * s * _ONE))))
    c = tuple(_fixed(centre))
    cv2.ellipse(image, c, axes, angle, 0, 360, _scaled(look.skin, 0.45 * light), 2, cv2.LINE_AA, _SHIFT)
    if person.facing:
        cv2.ellipse(image, c, axes, angle, 0, 360, _scaled(look.skin, light), -1, cv2.LINE_AA, _SHIFT)
        crown = tuple(_fixed(centre + up * 0.04 * s))  # hair: the upper half of a raised ellipse
        cv2.ellipse(image, crown, axes, angle, 180, 360, look.hair, -1, cv2.LINE_AA, _SHIFT)
        eye_radius = max(1, int(round(0.012 * s * _ONE)))
        for eye in (1, 2):
            cv2.circle(image, tuple(_fixed(kp[eye])), eye_radius, (20, 20, 20), -1, cv2.LINE_AA, _SHIFT)
    else:  # seen from behind: hair over the whole head
        cv2.ellipse(image, c, axes, angle, 0, 360, _scaled(look.hair, light), -1, cv2.LINE_AA, _SHIFT)


def draw_frame(
    backdrop: Backdrop,
    background_camera: np.ndarray,
    people: list[PersonView],
    *,
    width: int,
    height: int,
) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 BGR frame: backdrop, then people far to near (by scale)."""
    image = _draw_backdrop(backdrop, background_camera, width, height)
    for person in sorted(people, key=lambda p: p.scale):
        _draw_person(image, person)
    return image


class Mp4Writer:
    """Encode BGR frames to mp4 bytes in memory, deterministically.

    ``codec`` is ``"libx264"`` (H.264, yuv420p, CRF ``crf``, preset ``preset``, macroblock-tree
    rate control off) or ``"mpeg4"`` (MPEG-4 Part 2 at a fixed quantiser). One encoder thread;
    FFmpeg bitexact flags on the container and the codec (no libavformat/libavcodec version
    strings, no creation time). libx264 still writes its own version and options into an SEI
    message of the first frame: the bytes are reproducible for a given PyAV/x264 build.
    """

    def __init__(
        self, *, width: int, height: int, fps: int, codec: str = "libx264", crf: int = 23, preset: str = "veryfast"
    ) -> None:
        if codec not in av.codecs_available:
            raise ValueError(f"codec {codec!r} is not available in this PyAV build")
        self._buffer = io.BytesIO()
        self._container = av.open(self._buffer, mode="w", format="mp4", options={"fflags": "+bitexact"})
        stream = self._container.add_stream(codec, rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        context = stream.codec_context
        context.thread_count = 1
        context.flags |= int(av.codec.context.Flags.bitexact)
        if codec == "libx264":
            # mbtree=0: x264's macroblock-tree rate control reads uninitialised memory in its SIMD
            # code, so with it on the output depends on the heap's previous contents (measured:
            # every encode differed after other allocations). Off, the bytes are reproducible.
            stream.options = {"preset": preset, "crf": str(crf), "threads": "1", "x264-params": "mbtree=0"}
        else:
            stream.options = {"qscale": str(max(2, crf // 6))}
            context.qscale = True  # type: ignore[attr-defined]
        self._stream = stream
        self._count = 0
        self._closed = False

    def write(self, frame_bgr: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 BGR frame."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_bgr), format="bgr24")
        frame.pts = self._count  # in units of 1/fps, the encoder's time base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._count += 1

    def close(self) -> bytes:
        """Flush the encoder, finish the container and return the mp4 bytes."""
        if not self._closed:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._closed = True
        return self._buffer.getvalue()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self._container.close()
            self._closed = True
