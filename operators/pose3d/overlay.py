"""Draw detected skeletons and person boxes on video frames, and write them as mp4 or PNG files.

For a person to check keypoints by eye: every detection gets its COCO-17 skeleton (left side
orange, right side blue, centre green; only keypoints above a confidence threshold) and its
box; the main track (the person of interest) has a thick white box and a "main" label, other
people thin grey boxes, each labelled with its track id.
"""

from __future__ import annotations

import posixpath
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from labelmill.infra import storage
from labelmill.models.coco import COCO17_NAMES, COCO17_SKELETON
from labelmill.operators.common.mesh_render import draw_skeleton

__all__ = [
    "VIDEO_SUFFIXES",
    "draw_people",
    "overlay_frames",
    "is_video_target",
    "write_overlay",
]

VIDEO_SUFFIXES = (".mp4",)
_MAIN_BGR, _OTHER_BGR = (255, 255, 255), (170, 170, 170)


def draw_people(
    image_bgr: np.ndarray,
    keypoints: np.ndarray,
    boxes: np.ndarray,
    *,
    track_ids: Sequence[int] | None = None,
    main_slot: int = -1,
    min_confidence: float = 0.3,
) -> np.ndarray:
    """Draw people on ``image_bgr`` (H, W, 3) uint8, in place; returns it.

    keypoints: ``(P, 17, 3)`` x, y pixels of this image, confidence; boxes ``(P, 4)``;
    track_ids ``(P,)`` (labels; -1 or None: none); ``main_slot``: the slot of the person of
    interest (-1: none). Keypoints at or below ``min_confidence`` are not drawn.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, len(COCO17_NAMES), 3)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = [p for p in range(keypoints.shape[0]) if p != main_slot] + ([main_slot] if main_slot >= 0 else [])
    for p in order:  # the main person last, on top
        main = p == main_slot
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[p])
        cv2.rectangle(image_bgr, (x0, y0), (x1, y1), _MAIN_BGR if main else _OTHER_BGR, 2 if main else 1, cv2.LINE_AA)
        label = "main" if main else ""
        if track_ids is not None and track_ids[p] >= 0:
            label = f"{label} #{int(track_ids[p])}".strip()
        if label:
            _outlined_text(image_bgr, label, (x0 + 2, max(12, y0 - 4)), _MAIN_BGR if main else _OTHER_BGR)
        visible = np.flatnonzero(keypoints[p, :, 2] > min_confidence)
        if visible.size == 0:
            continue
        position = {int(j): i for i, j in enumerate(visible)}
        edges = [(position[a], position[b]) for a, b in COCO17_SKELETON if a in position and b in position]
        draw_skeleton(
            image_bgr,
            keypoints[p, visible, :2],
            edges=edges,
            names=[COCO17_NAMES[j] for j in visible],
            radius=3 if main else 2,
            thickness=2 if main else 1,
        )
    return image_bgr


def _outlined_text(image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """Small text with a black outline, readable on any background (in place)."""
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def overlay_frames(
    images_rgb: Iterable[np.ndarray],
    keypoints: np.ndarray,
    boxes: np.ndarray,
    person_mask: np.ndarray,
    *,
    scale_x: float = 1.0,
    scale_y: float = 1.0,
    track_ids: np.ndarray | None = None,
    main_person: np.ndarray | None = None,
    min_confidence: float = 0.3,
    caption: Sequence[str] | None = None,
) -> Iterator[np.ndarray]:
    """BGR frames with the people of each row drawn on them.

    images_rgb: F frames (H, W, 3) uint8 RGB (row t of the arrays belongs to frame t).
    keypoints ``(F, P, 17, 3)``, boxes ``(F, P, 4)``, person_mask ``(F, P)`` in pixels of the
    original frame; ``scale_x``/``scale_y`` map them onto the images (stored / original size).
    track_ids ``(F, P)``; main_person ``(F,)`` slot of the person of interest (-1 absent);
    caption: one text per frame, written in the top-left corner.
    """
    factor = np.array([scale_x, scale_y], np.float64)
    for t, image in enumerate(images_rgb):
        canvas = cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2BGR)
        slots = np.flatnonzero(person_mask[t])
        points = np.asarray(keypoints[t, slots], np.float64).copy()
        points[..., :2] *= factor
        frame_boxes = np.asarray(boxes[t, slots], np.float64) * np.tile(factor, 2)
        ids = None if track_ids is None else [int(track_ids[t, s]) for s in slots]
        main_slot = -1
        if main_person is not None and main_person[t] >= 0:
            hits = np.flatnonzero(slots == main_person[t])
            main_slot = int(hits[0]) if hits.size else -1
        draw_people(canvas, points, frame_boxes, track_ids=ids, main_slot=main_slot, min_confidence=min_confidence)
        if caption is not None:
            _outlined_text(canvas, caption[t], (6, 16), (255, 255, 255))
        yield canvas


def is_video_target(target: str) -> bool:
    """True when ``target`` names a video file (``.mp4``), False for a folder of PNG frames."""
    return posixpath.splitext(target.rstrip("/"))[1].lower() in VIDEO_SUFFIXES


def write_overlay(
    target: str,
    frames_bgr: Iterable[np.ndarray],
    *,
    fps: float,
    frame_indices: Sequence[int] | None = None,
) -> int:
    """Write frames to ``target`` (any fsspec URL); returns the number of frames written.

    ``target`` ending in ``.mp4``: one H.264 video at ``fps`` (rounded to a whole number, at
    least 1; odd sizes are padded by one black pixel), written atomically. Otherwise a folder
    of ``frame_<index:06d>.png`` files, ``index`` from ``frame_indices`` (default 0, 1, ...).
    """
    if is_video_target(target):
        return _write_mp4(target, frames_bgr, fps=fps)
    storage.makedirs(target)
    count = 0
    for t, frame in enumerate(frames_bgr):
        index = t if frame_indices is None else int(frame_indices[t])
        ok, encoded = cv2.imencode(".png", frame)
        if not ok:
            raise ValueError(f"OpenCV could not PNG-encode overlay frame {index}")
        storage.write_bytes(storage.join(target, f"frame_{index:06d}.png"), encoded.tobytes())
        count += 1
    return count


def _write_mp4(target: str, frames_bgr: Iterable[np.ndarray], *, fps: float) -> int:
    from labelmill.operators.synth.render import Mp4Writer

    writer = None
    count = 0
    try:
        for frame in frames_bgr:
            height, width = frame.shape[:2]
            padded = cv2.copyMakeBorder(frame, 0, height % 2, 0, width % 2, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            if writer is None:
                rate = max(1, int(round(fps))) if np.isfinite(fps) else 25
                writer = Mp4Writer(width=padded.shape[1], height=padded.shape[0], fps=rate, crf=20)
            writer.write(padded)
            count += 1
        if writer is None:
            raise ValueError(f"no frames to write to {target}")
        data = writer.close()
    finally:
        if writer is not None:
            writer.__exit__(None, None, None)  # closes the container if an error stopped the writing
    storage.write_bytes(target, data)
    return count
