"""A tiny OpenCV renderer for looking at body meshes: flat-shaded triangles and 2D skeletons.

Orthographic camera, painter's ordering (far triangles first), back faces culled, one
directional light. Good enough to check a body by eye; not a rasteriser for training data.
Camera frame: x right, y up, z towards the viewer; image rows grow downwards.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

from labelmill.models.coco import COCO17_NAMES, COCO17_SKELETON

__all__ = ["OrthoCamera", "view_rotation", "render_mesh", "draw_skeleton", "put_label"]

SKIN_BGR = (150, 175, 215)
_LEFT_BGR, _RIGHT_BGR, _CENTRE_BGR = (40, 140, 255), (255, 150, 40), (60, 200, 60)


def view_rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> np.ndarray:
    """(3, 3) world -> camera rotation: turn the scene by ``yaw`` about y, then tilt by ``pitch`` about x."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    return rx @ ry


@dataclasses.dataclass(frozen=True)
class OrthoCamera:
    """Orthographic camera: pixel = scale * (R p).xy (y flipped) + centre."""

    rotation: np.ndarray  # (3, 3) world -> camera
    scale: float  # pixels per metre
    centre: tuple[float, float]  # pixel position of the camera-frame origin

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world -> (N, 3) camera frame."""
        return np.asarray(points, dtype=np.float64) @ self.rotation.T

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 2) pixel coordinates (x, y)."""
        cam = self.to_camera(points)
        return np.stack([cam[:, 0] * self.scale + self.centre[0], -cam[:, 1] * self.scale + self.centre[1]], axis=1)

    @classmethod
    def framing(cls, points: np.ndarray, rotation: np.ndarray, scale: float, size: tuple[int, int]) -> "OrthoCamera":
        """A camera whose view centres the bounding box of ``points`` (N, 3) in an image of (width, height)."""
        cam = np.asarray(points, dtype=np.float64) @ rotation.T
        mid = 0.5 * (cam.min(axis=0) + cam.max(axis=0))
        return cls(rotation, scale, (size[0] / 2 - mid[0] * scale, size[1] / 2 + mid[1] * scale))


def render_mesh(
    image: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    camera: OrthoCamera,
    *,
    color_bgr: Sequence[int] = SKIN_BGR,
    light: Sequence[float] = (0.4, 0.6, 1.0),
    ambient: float = 0.35,
) -> np.ndarray:
    """Draw a triangle mesh into ``image`` (H, W, 3) uint8, in place; returns the image.

    vertices (V, 3) world coordinates, faces (F, 3) vertex indices with outward (counter-
    clockwise) winding. Faces turned away from the camera are skipped; the rest are filled far
    to near with Lambert shading from ``light`` (a direction in the camera frame).
    """
    cam = camera.to_camera(vertices)
    pix = camera.project(vertices)
    tri = cam[faces]  # (F, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(normals, axis=1)
    visible = (normals[:, 2] > 0) & (norm > 0)
    light_dir = np.asarray(light, dtype=np.float64)
    light_dir /= np.linalg.norm(light_dir)
    shade = ambient + (1 - ambient) * np.clip((normals @ light_dir) / np.maximum(norm, 1e-12), 0.0, 1.0)
    depth = tri[:, :, 2].mean(axis=1)
    order = np.flatnonzero(visible)
    order = order[np.argsort(depth[order], kind="stable")]  # far (small z) first
    subpixel = 4  # cv2 fixed-point bits
    corners = np.round(pix[faces] * (1 << subpixel)).astype(np.int32)
    base = np.asarray(color_bgr, dtype=np.float64)
    for f in order:
        colour = tuple(int(c) for c in base * shade[f])
        cv2.fillConvexPoly(image, corners[f], colour, lineType=cv2.LINE_8, shift=subpixel)
    return image


def draw_skeleton(
    image: np.ndarray,
    keypoints2d: np.ndarray,
    *,
    edges: Sequence[tuple[int, int]] = COCO17_SKELETON,
    names: Sequence[str] = COCO17_NAMES,
    radius: int = 4,
    thickness: int = 2,
) -> np.ndarray:
    """Draw keypoints (K, 2) pixel coordinates and their skeleton edges on ``image``, in place.

    Left-side points and limbs are orange, right-side blue, the rest green (by keypoint name).
    """

    def colour(i: int) -> tuple[int, int, int]:
        name = names[i]
        return _LEFT_BGR if name.startswith("left") else _RIGHT_BGR if name.startswith("right") else _CENTRE_BGR

    pts = np.round(np.asarray(keypoints2d, dtype=np.float64)).astype(int)
    for a, b in edges:
        edge_colour = colour(a) if colour(a) == colour(b) else _CENTRE_BGR
        cv2.line(image, tuple(pts[a]), tuple(pts[b]), edge_colour, thickness, cv2.LINE_AA)
    for i, p in enumerate(pts):
        cv2.circle(image, tuple(p), radius + 1, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(image, tuple(p), radius, colour(i), -1, cv2.LINE_AA)
    return image


def put_label(image: np.ndarray, text: str, *, origin: tuple[int, int] = (8, 22), scale: float = 0.55) -> np.ndarray:
    """Write a short dark label on ``image``, in place."""
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (40, 40, 40), 1, cv2.LINE_AA)
    return image
