"""Decode one image per work item: bytes from ``uri`` (any fsspec URL), size checks, resize.

:class:`DecodeImage` reads the work item's ``uri`` with :func:`labelmill.infra.storage.read_bytes`
and decodes it with ``cv2.imdecode(IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)``: 8-bit BGR
whatever the file (grey, alpha, 16-bit), in the file's stored pixel grid, which is the grid the
annotations' boxes refer to (EXIF orientation is not applied). An item fails with a reason
naming it when the file is missing or unreadable, when OpenCV cannot decode it, or when the
annotation gives a width/height that differs from the decoded image (its boxes would not fit).

**Resize.** When the longer side exceeds ``max_side`` the image is shrunk with ``INTER_AREA``
so that its longer side is ``max_side`` (:func:`resize_to_max_side`), and the boxes are scaled
by the same per-axis factors (``x, w`` by ``scale_x``; ``y, h`` by ``scale_y``). Everything
downstream (the labels, the masks, ``json.width/height``, segment bboxes) is in the *stored*
image's pixels.

**Bytes.** ``image_jpeg`` is the original file's bytes when it is a JPEG and was not resized
(no generation loss, the sample's jpg is the input's file), else the decoded image encoded at
``jpeg_quality``. OpenCV's encoder is deterministic, so the bytes are the same on every engine.

Output columns per pending item: ``image_jpeg`` (bytes), ``image_width``, ``image_height``
(stored size, int), ``scale_x``, ``scale_y`` (float), ``image_boxes`` (the boxes in stored pixels, list of
``[x, y, w, h]``), ``source_width``, ``source_height`` (decoded size before the resize).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import cv2
import numpy as np

from labelmill.infra import storage
from labelmill.infra.formats.items import ItemStatus


__all__ = ["ImageConfig", "DecodeImage", "decode_image_bytes", "resize_to_max_side", "scale_boxes", "JPEG_MAGIC"]

JPEG_MAGIC = b"\xff\xd8\xff"


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Knobs of :class:`DecodeImage` (``image.*``)."""

    # The stored image's longer side is at most this many pixels (larger images are shrunk).
    max_side: int = 1024
    # Quality of the JPEG written when the input is not a JPEG or was resized.
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        for key, lo, hi in (("max_side", 16, 65536), ("jpeg_quality", 1, 100)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"ImageConfig.{key} must be an integer in {lo}..{hi}, got {value!r}")


def decode_image_bytes(data: bytes) -> np.ndarray:
    """BGR uint8 ``(H, W, 3)`` of encoded image bytes; ``ValueError`` when OpenCV cannot decode them."""
    buffer = np.frombuffer(bytes(data), np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buffer.size else None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ValueError(f"OpenCV cannot decode the image ({len(data)} bytes, starting {bytes(data[:8])!r})")
    return image


def resize_to_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float, float]:
    """``(image, scale_x, scale_y)``: shrunk (INTER_AREA) so the longer side is ``max_side``;
    unchanged with scales 1.0 when already within it."""
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image, 1.0, 1.0
    factor = max_side / max(height, width)
    new_width, new_height = max(1, round(width * factor)), max(1, round(height * factor))
    resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_AREA)
    return resized, new_width / width, new_height / height


def scale_boxes(boxes: Sequence[Sequence[float]], scale_x: float, scale_y: float) -> list[list[float]]:
    """``[x, y, w, h]`` boxes scaled per axis (the resize's factors)."""
    return [[float(b[0]) * scale_x, float(b[1]) * scale_y, float(b[2]) * scale_x, float(b[3]) * scale_y]
            for b in boxes]


def _encode_jpeg(image_bgr: np.ndarray, quality: int) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {image_bgr.shape}")
    return buffer.tobytes()


class DecodeImage:
    """Operator: work items (``key``, ``uri``, ``boxes``, ``width``, ``height``) -> decoded image columns.

    See the module docstring for the output columns, the resize and the failure reasons.
    """

    resources = {"num_cpus": 0.5, "num_gpus": 0.0, "batch_size": 8}
    reads = ("key", "uri", "boxes", "width", "height")
    writes = ("image_jpeg", "image_width", "image_height", "scale_x", "scale_y", "image_boxes", "source_width", "source_height")

    def __init__(self, *, image: ImageConfig | None = None) -> None:
        self.config = image or ImageConfig()

    @classmethod
    def from_config(cls, image: ImageConfig) -> "DecodeImage":
        return cls(image=image)

    def setup(self) -> None:
        """Nothing to load."""

    def _one(self, key: str, uri: Any, boxes: Any, width: Any, height: Any) -> dict[str, Any]:
        if not uri:
            raise ValueError(f"image {key!r}: no image URI")
        try:
            data = storage.read_bytes(str(uri))
        except FileNotFoundError:
            raise ValueError(f"image {key!r}: image file {uri} is missing") from None
        except OSError as exc:
            raise ValueError(f"image {key!r}: cannot read {uri}: {exc}") from None
        try:
            image = decode_image_bytes(data)
        except ValueError as exc:
            raise ValueError(f"image {key!r}: {uri}: {exc}") from None
        source_height, source_width = image.shape[:2]
        if width is not None and height is not None and (int(width), int(height)) != (source_width, source_height):
            raise ValueError(f"image {key!r}: {uri} is {source_width}x{source_height} px but the annotation says "
                             f"{int(width)}x{int(height)}; its boxes would not fit")
        resized, scale_x, scale_y = resize_to_max_side(image, self.config.max_side)
        if resized is image and bytes(data[:3]) == JPEG_MAGIC:
            jpeg = bytes(data)
        else:
            jpeg = _encode_jpeg(resized, self.config.jpeg_quality)
        return {
            "image_jpeg": jpeg,
            "image_width": int(resized.shape[1]),
            "image_height": int(resized.shape[0]),
            "scale_x": float(scale_x),
            "scale_y": float(scale_y),
            "image_boxes": scale_boxes(list(boxes) if boxes is not None else [], scale_x, scale_y),
            "source_width": int(source_width),
            "source_height": int(source_height),
        }

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = ItemStatus.of(batch)

        def get(name: str, i: int) -> Any:
            column = batch.get(name)
            return None if column is None else column[i]

        def one(i: int) -> dict[str, Any]:
            return self._one(str(items.keys[i]), get("uri", i), get("boxes", i), get("width", i), get("height", i))

        return items.map_pending(batch, self.writes, one)
