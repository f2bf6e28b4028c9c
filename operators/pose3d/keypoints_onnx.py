"""Top-down keypoints from an RTMPose/ViTPose-style ONNX model, run with onnxruntime (CPU or CUDA).

Per person box (from a person detector, else the whole frame):

1. **Crop.** The box is grown by ``box_padding`` about its centre and its shorter side
   lengthened to the model's aspect ratio ``W / H`` (as RTMPose/ViTPose do); an affine map
   (scale and shift, no rotation) takes that box onto the model input. In continuous
   coordinates (pixel corner at 0): ``u = s_x * (x - c_x) + W / 2``, ``v = s_y * (y - c_y) + H / 2``
   with ``s_x = W / box width``, ``s_y = H / box height``. ``cv2.warpAffine`` (bilinear, black
   outside the frame) samples the crop; its matrix is the same map in pixel-index coordinates.
2. **Normalise.** RGB, ``(pixel - mean) / std`` with MMPose's ImageNet mean
   ``[123.675, 116.28, 103.53]`` and std ``[58.395, 57.12, 57.375]``; layout ``(N, 3, H, W)`` float32.
3. **Decode** (in input pixel-index coordinates, as MMPose's codecs):

   * SimCC (RTMPose): outputs ``simcc_x (N, K, W * k)`` and ``simcc_y (N, K, H * k)`` with
     ``k = simcc_split_ratio`` bins per pixel. ``x = argmax(simcc_x) / k``,
     ``y = argmax(simcc_y) / k``; confidence = ``min`` of the two maxima (MMPose's
     ``get_simcc_maximum``) or their mean, clipped at 0.
   * Heatmaps (ViTPose, SimpleBaseline): output ``(N, K, h, w)``. The argmax cell ``(i, j)``
     is refined by a quarter cell towards the higher neighbour in each axis
     (``j + 0.25 * sign(H[i, j+1] - H[i, j-1])``, likewise for ``i``), then scaled by
     ``W / w`` and ``H / h``; confidence = the maximum, clipped at 0.

4. **Map back** through the inverse affine map (index coordinate + 0.5 = continuous).

The model must output COCO-17 keypoints (K = 17) in COCO order.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal, Sequence

import cv2
import numpy as np

from labelmill.operators.pose3d.keypoints_backend import (
    KeypointDetector,
    KeypointsConfig,
    Person,
    build_person_detector,
    finish_people,
)
from labelmill.operators.pose3d.keypoints_format import NUM_KEYPOINTS
from labelmill.operators.pose3d.person_boxes import pad_boxes

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "crop_affine",
    "warp_crops",
    "normalise_crops",
    "decode_simcc",
    "decode_heatmaps",
    "input_to_image",
    "OnnxPoseDetector",
]

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # RGB, MMPose / ImageNet
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)

_INSTALL_HINT = "the onnx keypoint backend needs onnxruntime: pip install 'labelmill[onnx]' (onnxruntime-gpu for CUDA)"


# ----------------------------------------------------------------------------- pure kernels


def crop_affine(boxes: np.ndarray, *, input_size: tuple[int, int], padding: float) -> np.ndarray:
    """Affine maps from image to model input, continuous coordinates.

    boxes: ``(N, 4)`` x0, y0, x1, y1 person boxes; input_size: (W, H). Each box is grown by
    ``padding`` and brought to aspect ratio W / H, then mapped onto ``[0, W] x [0, H]``.
    Returns ``(N, 2, 3)`` float64 ``A`` with ``[u, v] = A @ [x, y, 1]``.
    """
    width, height = input_size
    grown = pad_boxes(boxes, factor=padding, aspect_ratio=width / height)
    centre = 0.5 * (grown[:, :2] + grown[:, 2:])
    size = np.maximum(grown[:, 2:] - grown[:, :2], 1e-6)
    scale = np.array([width, height], np.float64) / size  # (N, 2)
    affine = np.zeros((len(grown), 2, 3), np.float64)
    affine[:, 0, 0] = scale[:, 0]
    affine[:, 1, 1] = scale[:, 1]
    affine[:, :, 2] = np.array([width, height], np.float64) / 2 - scale * centre
    return affine


def _index_matrix(affine: np.ndarray) -> np.ndarray:
    """The (2, 3) map of pixel-index coordinates (centre of pixel i at i) for ``cv2.warpAffine``."""
    linear, shift = affine[:, :2], affine[:, 2]
    return np.concatenate([linear, (shift + linear @ np.full(2, 0.5) - 0.5)[:, None]], axis=1)


def warp_crops(image: np.ndarray, affine: np.ndarray, *, input_size: tuple[int, int]) -> np.ndarray:
    """Crops ``(N, H, W, 3)`` uint8 of ``image`` (H', W', 3) through ``affine (N, 2, 3)``; black outside."""
    width, height = input_size
    crops = np.zeros((len(affine), height, width, 3), np.uint8)
    for n, matrix in enumerate(affine):
        crops[n] = cv2.warpAffine(
            image, _index_matrix(matrix), (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
    return crops


def normalise_crops(crops: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 RGB -> ``(N, 3, H, W)`` float32 ``(pixel - PIXEL_MEAN) / PIXEL_STD``."""
    values = (np.asarray(crops, np.float32) - PIXEL_MEAN) / PIXEL_STD
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2))


def decode_simcc(
    simcc_x: np.ndarray,
    simcc_y: np.ndarray,
    *,
    split_ratio: float,
    confidence: Literal["min", "mean"] = "min",
) -> np.ndarray:
    """SimCC logits -> keypoints in input pixel-index coordinates.

    simcc_x ``(N, K, W * k)``, simcc_y ``(N, K, H * k)``. Returns ``(N, K, 3)`` float32: x =
    argmax_x / k, y = argmax_y / k, confidence = min (or mean) of the two maxima, clipped at 0.
    """
    simcc_x, simcc_y = np.asarray(simcc_x, np.float32), np.asarray(simcc_y, np.float32)
    if simcc_x.ndim != 3 or simcc_y.ndim != 3 or simcc_x.shape[:2] != simcc_y.shape[:2]:
        raise ValueError(f"SimCC outputs must be (N, K, bins) with equal N, K; got {simcc_x.shape} and {simcc_y.shape}")
    best_x, best_y = simcc_x.argmax(axis=-1), simcc_y.argmax(axis=-1)
    max_x, max_y = simcc_x.max(axis=-1), simcc_y.max(axis=-1)
    score = np.minimum(max_x, max_y) if confidence == "min" else 0.5 * (max_x + max_y)
    points = np.stack([best_x / split_ratio, best_y / split_ratio, np.clip(score, 0.0, None)], axis=-1)
    return np.nan_to_num(points.astype(np.float32), nan=0.0)


def decode_heatmaps(heatmaps: np.ndarray, *, input_size: tuple[int, int]) -> np.ndarray:
    """Heatmaps ``(N, K, h, w)`` -> keypoints ``(N, K, 3)`` float32 in input pixel-index coordinates.

    Argmax cell, a quarter-cell shift towards the higher neighbour on each axis (where both
    neighbours exist), scaled by ``W / w``, ``H / h``; confidence = the maximum, clipped at 0.
    """
    heatmaps = np.asarray(heatmaps, np.float32)
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, h, w), got {heatmaps.shape}")
    count, joints, rows, cols = heatmaps.shape
    flat = heatmaps.reshape(count, joints, -1)
    best = flat.argmax(axis=-1)
    score = flat.max(axis=-1)
    i, j = np.divmod(best, cols)  # row, column of the maximum
    n_idx, k_idx = np.meshgrid(np.arange(count), np.arange(joints), indexing="ij")
    x, y = j.astype(np.float32), i.astype(np.float32)
    inner_x = (j > 0) & (j < cols - 1)
    inner_y = (i > 0) & (i < rows - 1)
    right = heatmaps[n_idx, k_idx, i, np.minimum(j + 1, cols - 1)]
    left = heatmaps[n_idx, k_idx, i, np.maximum(j - 1, 0)]
    below = heatmaps[n_idx, k_idx, np.minimum(i + 1, rows - 1), j]
    above = heatmaps[n_idx, k_idx, np.maximum(i - 1, 0), j]
    x = x + np.where(inner_x, 0.25 * np.sign(right - left), 0.0)
    y = y + np.where(inner_y, 0.25 * np.sign(below - above), 0.0)
    width, height = input_size
    points = np.stack([x * (width / cols), y * (height / rows), np.clip(score, 0.0, None)], axis=-1)
    return np.nan_to_num(points.astype(np.float32), nan=0.0)


def input_to_image(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Model-input pixel-index points ``(N, K, 2)`` -> continuous image coordinates via ``affine (N, 2, 3)``."""
    points = np.asarray(points, np.float64) + 0.5  # index -> continuous
    linear, shift = affine[:, :, :2], affine[:, :, 2]
    inverse = np.linalg.inv(linear)  # (N, 2, 2)
    return np.einsum("nij,nkj->nki", inverse, points - shift[:, None, :])


# ----------------------------------------------------------------------------- detector


class OnnxPoseDetector(KeypointDetector):
    """A top-down COCO-17 ONNX pose model (see the module docstring). Picklable; the session
    is created in :meth:`setup`."""

    def __init__(
        self,
        *,
        model_path: str,
        provider: Literal["cpu", "cuda"] = "cpu",
        input_size: tuple[int, int] | None = None,
        decoder: Literal["auto", "simcc", "heatmap"] = "auto",
        simcc_split_ratio: float = 2.0,
        simcc_confidence: Literal["min", "mean"] = "min",
        threads: int = 0,
        person_detector: Any = None,
        whole_frame_fallback: bool = True,
        box_padding: float = 1.25,
        batch_size: int = 16,
        max_people: int = 4,
        min_keypoint_confidence: float = 0.05,
        min_pose_score: float = 0.1,
        duplicate_iou: float = 0.7,
        keep_outside_frame: bool = False,
    ) -> None:
        if not isinstance(model_path, str) or not model_path:
            raise ValueError(f"model_path must be the path of an .onnx file, got {model_path!r}")
        if provider not in ("cpu", "cuda"):
            raise ValueError(f"provider must be 'cpu' or 'cuda', got {provider!r}")
        if decoder not in ("auto", "simcc", "heatmap"):
            raise ValueError(f"decoder must be 'auto', 'simcc' or 'heatmap', got {decoder!r}")
        if simcc_confidence not in ("min", "mean"):
            raise ValueError(f"simcc_confidence must be 'min' or 'mean', got {simcc_confidence!r}")
        if not (isinstance(box_padding, (int, float)) and math.isfinite(box_padding) and box_padding >= 1):
            raise ValueError(f"box_padding must be a number >= 1, got {box_padding!r}")
        self.model_path = model_path
        self.provider = provider
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.decoder = decoder
        self.simcc_split_ratio = float(simcc_split_ratio)
        self.simcc_confidence = simcc_confidence
        self.threads = int(threads)
        self.person_detector = person_detector
        self.whole_frame_fallback = bool(whole_frame_fallback)
        self.box_padding = float(box_padding)
        self.batch_size = int(batch_size)
        self.max_people = int(max_people)
        self.min_keypoint_confidence = float(min_keypoint_confidence)
        self.min_pose_score = float(min_pose_score)
        self.duplicate_iou = float(duplicate_iou)
        self.keep_outside_frame = bool(keep_outside_frame)
        self._session: Any = None
        self._input_name = ""
        self._output_names: list[str] = []
        self._fixed_batch: int | None = None  # the model's static batch size, None when dynamic
        self._decoder = decoder

    @classmethod
    def from_config(cls, config: KeypointsConfig) -> "OnnxPoseDetector":
        if config.onnx_path is None:
            raise ValueError("onnx_path is required with backend 'onnx'")
        return cls(
            model_path=config.onnx_path,
            provider=config.onnx_provider,
            input_size=config.onnx_input_size,
            decoder=config.onnx_decoder,
            simcc_split_ratio=config.onnx_simcc_split_ratio,
            simcc_confidence=config.onnx_simcc_confidence,
            threads=config.onnx_threads,
            person_detector=build_person_detector(config),
            whole_frame_fallback=config.whole_frame_fallback,
            box_padding=config.box_padding,
            batch_size=config.batch_size,
            max_people=config.max_people,
            min_keypoint_confidence=config.min_keypoint_confidence,
            min_pose_score=config.min_pose_score,
            duplicate_iou=config.duplicate_iou,
            keep_outside_frame=config.keep_outside_frame,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None
        return state

    def setup(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
        if not os.path.isfile(self.model_path):
            raise ValueError(f"ONNX keypoint model {self.model_path} does not exist")
        available = ort.get_available_providers()
        if self.provider == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise ValueError(
                    "onnx_provider 'cuda' needs onnxruntime-gpu with CUDAExecutionProvider; "
                    f"this onnxruntime has {available}"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            session = ort.InferenceSession(self.model_path, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise ValueError(f"ONNX keypoint model {self.model_path} cannot be loaded: {exc}") from exc
        self._configure(session)
        if self.person_detector is not None and hasattr(self.person_detector, "setup"):
            self.person_detector.setup()

    def _configure(self, session: Any) -> None:
        """Check the model's input and outputs; resolve input size, batch size and decoder."""
        where = f"ONNX keypoint model {self.model_path}"
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ValueError(f"{where} must have one image input, found {len(inputs)}")
        shape = list(inputs[0].shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise ValueError(f"{where}: input must be (N, 3, H, W), found {shape}")
        static = [dim if isinstance(dim, int) else None for dim in shape]
        if self.input_size is None:
            if static[2] is None or static[3] is None:
                raise ValueError(f"{where}: input size is dynamic ({shape}); set onnx_input_size (width, height)")
            self.input_size = (static[3], static[2])
        elif (static[3], static[2]) != (None, None) and (static[3], static[2]) != self.input_size:
            raise ValueError(f"{where}: input is {static[3]}x{static[2]} but onnx_input_size is {self.input_size}")
        self._fixed_batch = static[0]
        decoder = self.decoder
        if decoder == "auto":
            decoder = "simcc" if len(outputs) >= 2 else "heatmap"
        if decoder == "simcc":
            if len(outputs) < 2:
                raise ValueError(f"{where}: SimCC decoding needs two outputs (simcc_x, simcc_y), found {len(outputs)}")
            names = [o.name for o in outputs[:2]]
            if "simcc_y" in names[0].lower() or names[0].lower().endswith("_y"):
                names.reverse()  # x first
            self._output_names = names
        else:
            self._output_names = [outputs[0].name]
        self._decoder = decoder
        self._input_name = inputs[0].name
        self._session = session

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Person]]:
        if self._session is None:
            self.setup()
        plans = []  # (frame, boxes for output or None, affine maps)
        for frame in frames:
            image = np.ascontiguousarray(frame)
            height, width = image.shape[:2]
            boxes = None
            if self.person_detector is not None:
                found, _ = self.person_detector.detect(image)
                if len(found):
                    boxes = np.asarray(found, np.float64)[: 2 * self.max_people]
                elif not self.whole_frame_fallback:
                    plans.append((image, None, np.zeros((0, 2, 3))))
                    continue
            crop_boxes = np.array([[0.0, 0.0, width, height]]) if boxes is None else boxes
            # A whole frame is not padded: it already holds all the context there is.
            padding = 1.0 if boxes is None else self.box_padding
            plans.append((image, boxes, crop_affine(crop_boxes, input_size=self.input_size, padding=padding)))
        crops = [warp_crops(image, affine, input_size=self.input_size) for image, _, affine in plans]
        all_crops = np.concatenate(crops, axis=0) if crops else np.zeros((0,))
        all_points = self._infer(all_crops)  # (M, 17, 3) input coordinates
        results, start = [], 0
        for image, boxes, affine in plans:
            count = len(affine)
            points = all_points[start : start + count].copy()
            start += count
            if count:
                points[..., :2] = input_to_image(points[..., :2], affine)
            results.append(
                finish_people(
                    points,
                    boxes,
                    min_keypoint_confidence=self.min_keypoint_confidence,
                    min_pose_score=self.min_pose_score,
                    duplicate_iou=self.duplicate_iou,
                    max_people=self.max_people,
                    frame_size=None if self.keep_outside_frame else (image.shape[1], image.shape[0]),
                )
            )
        return results

    def _infer(self, crops: np.ndarray) -> np.ndarray:
        """``(M, H, W, 3)`` uint8 crops -> ``(M, 17, 3)`` keypoints in input pixel-index coordinates."""
        if len(crops) == 0:
            return np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
        step = self._fixed_batch or self.batch_size
        pieces = []
        for begin in range(0, len(crops), step):
            chunk = normalise_crops(crops[begin : begin + step])
            used = len(chunk)
            if self._fixed_batch is not None and used < self._fixed_batch:  # pad a static batch
                chunk = np.concatenate([chunk, np.zeros((self._fixed_batch - used, *chunk.shape[1:]), np.float32)])
            outputs = self._session.run(self._output_names, {self._input_name: chunk})
            if self._decoder == "simcc":
                points = decode_simcc(
                    outputs[0], outputs[1], split_ratio=self.simcc_split_ratio, confidence=self.simcc_confidence
                )
            else:
                points = decode_heatmaps(outputs[0], input_size=self.input_size)
            if points.shape[1] != NUM_KEYPOINTS:
                raise ValueError(
                    f"ONNX keypoint model {self.model_path} gives {points.shape[1]} keypoints; labelmill needs COCO-17"
                )
            pieces.append(points[:used])
        return np.concatenate(pieces, axis=0)
