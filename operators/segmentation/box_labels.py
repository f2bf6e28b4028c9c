"""Things from boxes: GrabCut and a second, independent cue per box; labels where both agree.

Pure functions on numpy images (BGR ``(H, W, 3)`` uint8, as ``cv2.imread`` gives). Boxes are
COCO ``[x, y, w, h]`` in pixels; a box covers the pixels ``[floor(y), ceil(y + h))`` x
``[floor(x), ceil(x + w))`` clipped to the image.

Per box (:func:`box_labels`):

1. **Crop**: the box plus a margin of ``max(margin_px, margin * longer box side)`` pixels on
   every side, clipped to the image; scaled (``INTER_AREA``) so its longer side is at most
   ``max_side``. Every cue runs on this *work crop*, so one box costs at most
   ``max_side**2`` pixels whatever its size. Masks come back to image coordinates with
   nearest-neighbour upscaling and are cut to the box.
2. **Cues** (each a bool mask inside the box, ``CUES``): ``grabcut`` (``cv2.grabCut`` with
   ``GC_INIT_WITH_MASK``: the crop outside the box is background, the box probable foreground
   and its central ``grabcut_core`` part (side fraction; 0: none, i.e. plain
   ``GC_INIT_WITH_RECT``) definite foreground, which keeps GrabCut from collapsing to an empty
   mask on cluttered boxes; ``cv2.setRNGSeed(config.seed)`` before every call, so it is
   deterministic) and the second cue ``config.second_cue``: ``colour_ratio`` (a smoothed
   colour-histogram likelihood ratio of the box centre against a ring around the box) or
   ``superpixel`` (SLICO superpixels whose area is mostly inside the box and whose mean colour
   is nearer a k-means colour model of the box centre than one of the ring). The ring is the
   crop outside the box; where it has fewer than ``min_ring_pixels`` pixels (a box covering
   nearly the whole image) the colour cues have no evidence and say foreground on the whole
   box, so the box's labels are GrabCut's.
3. **Combination** (:func:`combine_cues`): foreground where both cues say foreground,
   *disputed* where exactly one does, background where neither does.
4. **Painting** (:func:`paint_boxes`): the canvas starts as background 0 (pixels outside
   every box stay 0). Boxes are painted from the largest area to the smallest (ties: the
   earlier box first), so **a smaller box lies on top of a larger one**. A box writes its
   class (and instance id = box index + 1) on its foreground pixels and ignore 255 (instance
   0) on its disputed pixels; its background pixels are left as they are, so they are 0
   unless a larger box claimed them. A box whose cues agree on less than ``defer_agreement``
   of the pixels either cue claims (``agreed / (agreed + disputed)``) is unsure of its own
   object: its disputed pixels do not erase labels that a larger box's cues agreed on.

Bad boxes are skipped with a reason in the per-box stats, never raised by
:func:`box_labels`: non-finite values, width or height <= 0, or nothing left after clipping to
the image (status ``"skipped"``). A box narrower or lower than ``min_box_side`` pixels after
clipping is too small for the cues: all its pixels are disputed, i.e. ignore (status
``"ignored"``; having no agreement it defers to larger boxes as in step 4). The
single-box functions (:func:`grabcut_box`, ...) raise ``ValueError`` on a bad box instead.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

__all__ = [
    "BoxLabelConfig",
    "CropGeometry",
    "CUES",
    "FOREGROUND",
    "DISPUTED",
    "BACKGROUND",
    "IGNORE",
    "box_window",
    "crop_for_box",
    "crop_mask_to_box",
    "work_crop",
    "grabcut_box",
    "colour_ratio_box",
    "superpixel_box",
    "combine_cues",
    "paint_boxes",
    "box_labels",
    "box_labels_batch",
]

IGNORE = 255
BACKGROUND, FOREGROUND, DISPUTED = 0, 1, 2  # per-box states of combine_cues
SECOND_CUES = ("colour_ratio", "superpixel")


@dataclasses.dataclass(frozen=True)
class BoxLabelConfig:
    """Knobs of :func:`box_labels`; sizes in work-crop pixels unless said otherwise."""

    iterations: int = 5  # GrabCut iterations
    max_side: int = 256  # longer side of the work crop (bounds a box's cost)
    margin: float = 0.25  # crop margin on each side, fraction of the box's longer side ...
    margin_px: int = 8  # ... but at least this many image pixels
    second_cue: str = "colour_ratio"  # one of SECOND_CUES
    seed: int = 0  # cv2.setRNGSeed before every GrabCut / k-means call
    min_box_side: int = 4  # smaller boxes (image pixels, after clipping) become ignore
    min_ring_pixels: int = 16  # fewer ring pixels: the colour cues say foreground on the box
    centre_fraction: float = 0.6  # side fraction of the central part of the box that gives the colour model
    histogram_bins: int = 12  # colour_ratio: bins per Lab channel
    ratio_threshold: float = 0.3  # colour_ratio: foreground where p_in / (p_in + p_ring) > this
    smooth_sigma: float = 3.0  # colour_ratio: Gaussian sigma on the ratio map (0: none)
    superpixel_size: int = 8  # superpixel: SLICO region size
    superpixel_inside: float = 0.5  # superpixel: fraction of its area that must lie inside the box
    kmeans_k: int = 4  # superpixel: colour clusters per model (centre, ring)
    grabcut_core: float = 0.1  # GrabCut: side fraction of the box centre fixed as foreground (0: rect init)
    defer_agreement: float = 0.3  # painting: a box agreeing on less than this defers its disputes (0: never)

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ValueError(f"BoxLabelConfig.{key} must be {what}, got {getattr(self, key)!r}")

        for key in ("iterations", "max_side", "margin_px", "seed", "min_box_side", "min_ring_pixels",
                    "histogram_bins", "superpixel_size", "kmeans_k"):  # fmt: skip
            need(isinstance(getattr(self, key), int) and not isinstance(getattr(self, key), bool), key, "an int")
        need(self.iterations >= 1, "iterations", ">= 1")
        need(self.max_side >= 8, "max_side", ">= 8")
        need(self.margin_px >= 0, "margin_px", ">= 0")
        need(self.seed >= 0, "seed", ">= 0")
        need(self.min_box_side >= 2, "min_box_side", ">= 2")
        need(self.min_ring_pixels >= 1, "min_ring_pixels", ">= 1")
        need(2 <= self.histogram_bins <= 64, "histogram_bins", "in 2..64")
        need(self.superpixel_size >= 2, "superpixel_size", ">= 2")
        need(self.kmeans_k >= 1, "kmeans_k", ">= 1")
        need(self.second_cue in SECOND_CUES, "second_cue", f"one of {SECOND_CUES}")
        for key, lo, hi in (("margin", 0.0, 2.0), ("centre_fraction", 0.05, 1.0), ("ratio_threshold", 0.0, 1.0),
                            ("superpixel_inside", 0.0, 1.0), ("smooth_sigma", 0.0, 20.0), ("grabcut_core", 0.0, 0.9),
                            ("defer_agreement", 0.0, 1.0)):  # fmt: skip
            value = getattr(self, key)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi,
                 key, f"a number in {lo}..{hi}")  # fmt: skip


# ----------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class CropGeometry:
    """Where a box's work crop comes from. Image-pixel windows are half-open ``[y0, y1) x [x0, x1)``."""

    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) box pixels in the image
    crop: tuple[int, int, int, int]  # (x0, y0, x1, y1) crop window in the image
    scale: float  # work size / crop size (<= 1)
    work_size: tuple[int, int]  # (width, height) of the work crop
    rect: tuple[int, int, int, int]  # (x, y, w, h) of the box in the work crop (GrabCut's rect)


def box_window(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` pixels of a COCO box clipped to the image; ValueError naming the problem."""
    if len(box) != 4:
        raise ValueError(f"box must be [x, y, w, h], got {list(box)!r}")
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"box {list(box)!r} has a non-finite value")
    if w <= 0 or h <= 0:
        raise ValueError(f"box {list(box)!r} has zero or negative size")
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {list(box)!r} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def crop_for_box(box: Sequence[float], height: int, width: int, *, max_side: int, margin: float,
                 margin_px: int = 0) -> CropGeometry:  # fmt: skip
    """The crop window, scale and GrabCut rect of one box (module docstring, step 1)."""
    bx0, by0, bx1, by1 = box_window(box, height, width)
    m = max(int(margin_px), int(math.ceil(margin * max(bx1 - bx0, by1 - by0))))
    cx0, cy0, cx1, cy1 = max(0, bx0 - m), max(0, by0 - m), min(width, bx1 + m), min(height, by1 + m)
    cw, ch = cx1 - cx0, cy1 - cy0
    scale = min(1.0, max_side / max(cw, ch))
    ww, wh = max(1, round(cw * scale)), max(1, round(ch * scale))
    rx0 = min(ww - 1, math.floor((bx0 - cx0) * scale))
    ry0 = min(wh - 1, math.floor((by0 - cy0) * scale))
    rx1 = max(rx0 + 1, min(ww, math.ceil((bx1 - cx0) * scale)))
    ry1 = max(ry0 + 1, min(wh, math.ceil((by1 - cy0) * scale)))
    return CropGeometry((bx0, by0, bx1, by1), (cx0, cy0, cx1, cy1), scale, (ww, wh),
                        (rx0, ry0, rx1 - rx0, ry1 - ry0))  # fmt: skip


def work_crop(image: np.ndarray, geom: CropGeometry) -> np.ndarray:
    """The work crop ``(h, w, 3)`` uint8 of ``geom`` (``INTER_AREA`` when scaled down)."""
    cx0, cy0, cx1, cy1 = geom.crop
    crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1])
    if geom.work_size != (cx1 - cx0, cy1 - cy0):
        crop = cv2.resize(crop, geom.work_size, interpolation=cv2.INTER_AREA)
    return crop


def _rect_mask(shape: tuple[int, int], rect: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = rect
    m = np.zeros(shape, dtype=bool)
    m[y : y + h, x : x + w] = True
    return m


def crop_mask_to_box(work_mask: np.ndarray, geom: CropGeometry) -> np.ndarray:
    """Work-crop mask -> bool mask over the box window ``(by1 - by0, bx1 - bx0)`` (nearest)."""
    cx0, cy0, cx1, cy1 = geom.crop
    bx0, by0, bx1, by1 = geom.box
    m = work_mask.astype(np.uint8)
    if geom.work_size != (cx1 - cx0, cy1 - cy0):
        m = cv2.resize(m, (cx1 - cx0, cy1 - cy0), interpolation=cv2.INTER_NEAREST)
    return m[by0 - cy0 : by1 - cy0, bx0 - cx0 : bx1 - cx0].astype(bool)


def _validate_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        kind = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}".strip()
        raise ValueError(f"image must be a uint8 (H, W, 3) BGR array, got {kind}")


# ----------------------------------------------------------------------------- cues on a work crop


def grabcut_crop(crop: np.ndarray, rect: tuple[int, int, int, int], config: BoxLabelConfig) -> np.ndarray:
    """GrabCut foreground ``(h, w) bool`` (inside ``rect``) of a work crop."""
    h, w = crop.shape[:2]
    x, y, rw, rh = rect
    inside = _rect_mask((h, w), rect)
    if rw * rh == h * w:  # no pixel outside the rect: give GrabCut a 1-pixel background frame
        if rw < 4 or rh < 4:
            return inside
        x, y, rw, rh = 1, 1, rw - 2, rh - 2
    if rw < 2 or rh < 2:
        return inside
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(config.seed)
    if config.grabcut_core <= 0:
        cv2.grabCut(crop, mask, (x, y, rw, rh), bgd, fgd, config.iterations, cv2.GC_INIT_WITH_RECT)
    else:  # the rect init's labels plus a definite-foreground core
        mask[_rect_mask((h, w), (x, y, rw, rh))] = cv2.GC_PR_FGD
        cw, ch = max(1, round(rw * config.grabcut_core)), max(1, round(rh * config.grabcut_core))
        mask[_rect_mask((h, w), (x + (rw - cw) // 2, y + (rh - ch) // 2, cw, ch))] = cv2.GC_FGD
        cv2.grabCut(crop, mask, None, bgd, fgd, config.iterations, cv2.GC_INIT_WITH_MASK)
    return ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)) & inside


def _centre_and_ring(shape: tuple[int, int], rect: tuple[int, int, int, int], fraction: float):
    x, y, w, h = rect
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    centre = _rect_mask(shape, (x + (w - cw) // 2, y + (h - ch) // 2, cw, ch))
    inside = _rect_mask(shape, rect)
    return inside, centre, ~inside


def _smooth_hist(hist: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 along every axis of a 3-D histogram (edges replicated)."""
    for axis in range(3):
        padded = np.pad(hist, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        lo = np.take(padded, range(0, hist.shape[axis]), axis=axis)
        mid = np.take(padded, range(1, hist.shape[axis] + 1), axis=axis)
        hi = np.take(padded, range(2, hist.shape[axis] + 2), axis=axis)
        hist = (lo + 2 * mid + hi) / 4
    return hist


def colour_ratio_crop(crop: np.ndarray, rect: tuple[int, int, int, int], config: BoxLabelConfig) -> np.ndarray:
    """Colour-histogram likelihood ratio of the box centre against the ring, smoothed, thresholded."""
    h, w = crop.shape[:2]
    inside, centre, ring = _centre_and_ring((h, w), rect, config.centre_fraction)
    if int(ring.sum()) < config.min_ring_pixels:
        return inside
    b = config.histogram_bins
    lab = cv2.cvtColor(crop, cv2.COLOR_BGR2LAB)
    q = (lab.astype(np.int32) * b) // 256
    idx = (q[..., 0] * b + q[..., 1]) * b + q[..., 2]
    p = []
    for region in (centre, ring):
        hist = np.bincount(idx[region], minlength=b**3).astype(np.float64).reshape(b, b, b)
        hist = _smooth_hist(hist) + 1e-3
        p.append(hist.ravel() / hist.sum())
    ratio = (p[0][idx] / (p[0][idx] + p[1][idx])).astype(np.float32)
    if config.smooth_sigma > 0:
        ratio = cv2.GaussianBlur(ratio, (0, 0), config.smooth_sigma)
    return (ratio > config.ratio_threshold) & inside


def _kmeans_centres(samples: np.ndarray, k: int, seed: int) -> np.ndarray:
    k = max(1, min(k, len(samples)))
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, _, centres = cv2.kmeans(samples.astype(np.float32), k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    return centres


def superpixel_crop(crop: np.ndarray, rect: tuple[int, int, int, int], config: BoxLabelConfig) -> np.ndarray:
    """SLICO superpixels mostly inside the box whose mean colour is nearer the centre model than the ring's."""
    h, w = crop.shape[:2]
    inside, centre, ring = _centre_and_ring((h, w), rect, config.centre_fraction)
    if int(ring.sum()) < config.min_ring_pixels or min(h, w) < 4:
        return inside
    lab = cv2.cvtColor(crop, cv2.COLOR_BGR2LAB)
    slic = cv2.ximgproc.createSuperpixelSLIC(lab, algorithm=cv2.ximgproc.SLICO, region_size=config.superpixel_size)
    slic.iterate(10)
    labels = slic.getLabels().ravel()
    n = int(labels.max()) + 1
    pixels = lab.reshape(-1, 3).astype(np.float64)
    count = np.bincount(labels, minlength=n).astype(np.float64)
    frac_in = np.bincount(labels, weights=inside.ravel().astype(np.float64), minlength=n) / np.maximum(count, 1)
    mean = np.stack([np.bincount(labels, weights=pixels[:, c], minlength=n) for c in range(3)], 1)
    mean /= np.maximum(count, 1)[:, None]
    models = [_kmeans_centres(pixels[r.ravel()], config.kmeans_k, config.seed) for r in (centre, ring)]
    dist = [np.min(((mean[:, None, :] - c[None].astype(np.float64)) ** 2).sum(-1), axis=1) for c in models]
    fg_sp = (frac_in > config.superpixel_inside) & (dist[0] < dist[1])
    return fg_sp[labels].reshape(h, w) & inside


CropCue = Callable[[np.ndarray, tuple[int, int, int, int], BoxLabelConfig], np.ndarray]
CUES: dict[str, CropCue] = {
    "grabcut": grabcut_crop,
    "colour_ratio": colour_ratio_crop,
    "superpixel": superpixel_crop,
}


def _single_box(cue: str, image: np.ndarray, box: Sequence[float], config: BoxLabelConfig) -> np.ndarray:
    _validate_image(image)
    height, width = image.shape[:2]
    geom = crop_for_box(box, height, width, max_side=config.max_side, margin=config.margin,
                        margin_px=config.margin_px)  # fmt: skip
    out = np.zeros((height, width), dtype=bool)
    bx0, by0, bx1, by1 = geom.box
    out[by0:by1, bx0:bx1] = crop_mask_to_box(CUES[cue](work_crop(image, geom), geom.rect, config), geom)
    return out


def grabcut_box(image_bgr: np.ndarray, box: Sequence[float], *, iterations: int = 5, max_side: int = 128,
                margin: float = 0.15, margin_px: int = 8, seed: int = 0, core: float = 0.1) -> np.ndarray:  # fmt: skip
    """GrabCut foreground of one box: bool ``(H, W)`` in image coordinates, False outside the box.

    Crop with a margin, scale the crop's longer side to ``<= max_side``, ``cv2.grabCut``
    (``GC_INIT_WITH_MASK`` with the central ``core`` side fraction as definite foreground;
    ``core=0``: ``GC_INIT_WITH_RECT``) after ``cv2.setRNGSeed(seed)``, nearest upscaling back.
    A bad box (non-finite, zero size, outside the image) raises ``ValueError``.
    """
    config = BoxLabelConfig(iterations=iterations, max_side=max_side, margin=margin, margin_px=margin_px, seed=seed,
                            grabcut_core=core)  # fmt: skip
    return _single_box("grabcut", image_bgr, box, config)


def colour_ratio_box(image_bgr: np.ndarray, box: Sequence[float], *, config: BoxLabelConfig = BoxLabelConfig()) -> np.ndarray:
    """The ``colour_ratio`` cue of one box, bool ``(H, W)`` (see :func:`grabcut_box`)."""
    return _single_box("colour_ratio", image_bgr, box, config)


def superpixel_box(image_bgr: np.ndarray, box: Sequence[float], *, config: BoxLabelConfig = BoxLabelConfig()) -> np.ndarray:
    """The ``superpixel`` cue of one box, bool ``(H, W)`` (see :func:`grabcut_box`)."""
    return _single_box("superpixel", image_bgr, box, config)


# ----------------------------------------------------------------------------- combination and painting


def combine_cues(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-pixel state uint8 of two bool cue masks: FOREGROUND (1) where both say foreground,
    DISPUTED (2) where exactly one does, BACKGROUND (0) where neither does."""
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"cue masks differ in shape: {a.shape} vs {b.shape}")
    state = np.full(a.shape, BACKGROUND, np.uint8)
    state[a ^ b] = DISPUTED
    state[a & b] = FOREGROUND
    return state


def paint_boxes(
    shape: tuple[int, int],
    windows: Sequence[tuple[int, int, int, int]],
    states: Sequence[np.ndarray],
    classes: Sequence[int],
    *,
    defer_agreement: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(sem uint8 (H, W), inst uint16 (H, W))`` from per-box states (module docstring, step 4).

    ``windows[i] = (x0, y0, x1, y1)`` is box i's pixel window, ``states[i]`` its ``(y1 - y0,
    x1 - x0)`` uint8 state map (``combine_cues``), ``classes[i]`` its class id (1..254).
    Background 0 everywhere first; boxes painted from largest window area to smallest (ties:
    earlier box first), each writing its class / instance ``i + 1`` on FOREGROUND and 255 /
    0 on DISPUTED pixels and leaving BACKGROUND pixels alone. A box with ``FOREGROUND`` on
    less than ``defer_agreement`` of its non-BACKGROUND pixels writes 255 only where no box
    painted before it wrote FOREGROUND (0: every box's disputes overwrite).
    """
    if not len(windows) == len(states) == len(classes):
        raise ValueError(f"{len(windows)} windows, {len(states)} states and {len(classes)} classes differ in number")
    sem = np.zeros(shape, np.uint8)
    inst = np.zeros(shape, np.uint16)
    agreed = np.zeros(shape, bool)  # some box's cues agreed on its object here
    if len(windows) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 boxes in one image")
    areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in windows]
    for i in sorted(range(len(windows)), key=lambda k: (-areas[k], k)):
        cls = int(classes[i])
        if not 1 <= cls <= 254:
            raise ValueError(f"box {i} has class {cls}; box classes must be in 1..254 (0 is background, 255 ignore)")
        x0, y0, x1, y1 = windows[i]
        st = np.asarray(states[i])
        if st.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"box {i}: state shape {st.shape} != window shape {(y1 - y0, x1 - x0)}")
        s, n, a = sem[y0:y1, x0:x1], inst[y0:y1, x0:x1], agreed[y0:y1, x0:x1]
        fg, disputed = st == FOREGROUND, st == DISPUTED
        claimed = int(fg.sum()) + int(disputed.sum())
        if defer_agreement > 0 and claimed and fg.sum() < defer_agreement * claimed:
            disputed &= ~a
        s[fg] = cls
        n[fg] = i + 1
        a[fg] = True
        s[disputed] = IGNORE
        n[disputed] = 0
    return sem, inst


# ----------------------------------------------------------------------------- per image, per batch


def box_labels(
    image: np.ndarray, boxes: Sequence[Sequence[float]], classes: Sequence[int], *, config: BoxLabelConfig = BoxLabelConfig()
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Pseudo-labels of one image's boxes: ``(sem uint8 (H, W), inst uint16 (H, W), stats)``.

    ``sem``: 0 background (every pixel outside all boxes, and box pixels both cues call
    background), the box's class where GrabCut and ``config.second_cue`` agree on foreground,
    255 where exactly one says foreground; smaller boxes on top. ``inst``: box index + 1 on the
    box's labelled pixels, 0 elsewhere. ``stats[i]`` per box: ``status`` (``ok``, ``ignored``,
    ``skipped``), ``reason``, ``window``, ``work_size``, ``scale``, the foreground fractions of
    the box (``grabcut``, ``second``, ``agreed``, ``disputed``) and ``seconds``.
    """
    _validate_image(image)
    if len(boxes) != len(classes):
        raise ValueError(f"{len(boxes)} boxes but {len(classes)} classes")
    height, width = image.shape[:2]
    windows, states, keep_classes, stats = [], [], [], []
    for i, (box, cls) in enumerate(zip(boxes, classes)):
        start = time.perf_counter()
        entry: dict[str, Any] = {"box": i, "status": "ok", "reason": None}
        stats.append(entry)
        try:
            geom = crop_for_box(box, height, width, max_side=config.max_side, margin=config.margin,
                                margin_px=config.margin_px)  # fmt: skip
        except ValueError as exc:
            entry.update(status="skipped", reason=str(exc))
            continue
        bx0, by0, bx1, by1 = geom.box
        entry.update(window=geom.box, work_size=geom.work_size, scale=geom.scale)
        if min(bx1 - bx0, by1 - by0) < config.min_box_side:
            entry.update(status="ignored", reason=f"box {bx1 - bx0}x{by1 - by0} px is below min_box_side={config.min_box_side}")
            state = np.full((by1 - by0, bx1 - bx0), DISPUTED, np.uint8)
        else:
            crop = work_crop(image, geom)
            first = crop_mask_to_box(grabcut_crop(crop, geom.rect, config), geom)
            second = crop_mask_to_box(CUES[config.second_cue](crop, geom.rect, config), geom)
            state = combine_cues(first, second)
            entry.update(grabcut=float(first.mean()), second=float(second.mean()),
                         agreed=float((state == FOREGROUND).mean()), disputed=float((state == DISPUTED).mean()))  # fmt: skip
        windows.append(geom.box)
        states.append(state)
        keep_classes.append(int(cls))
        entry["seconds"] = time.perf_counter() - start
    # paint_boxes numbers instances by position in its own lists; map back to the box index
    sem, inst_local = paint_boxes((height, width), windows, states, keep_classes, defer_agreement=config.defer_agreement)
    box_index = np.array([0] + [e["box"] + 1 for e in stats if e["status"] != "skipped"], np.uint16)
    return sem, box_index[inst_local], stats


def box_labels_batch(
    samples: Sequence[tuple[np.ndarray, Sequence[Sequence[float]], Sequence[int]]],
    *,
    config: BoxLabelConfig = BoxLabelConfig(),
    workers: int = 1,
) -> list[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]:
    """:func:`box_labels` over ``(image, boxes, classes)`` samples on ``workers`` threads (OpenCV
    releases the GIL; GrabCut's RNG is per thread and reseeded per call), results in input order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        return [box_labels(im, b, c, config=config) for im, b, c in samples]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: box_labels(s[0], s[1], s[2], config=config), samples))
