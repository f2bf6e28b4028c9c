"""Engine-free operator: per-frame HMR initialisation of the SMPL fit (DESIGN.md §3).

Input batch (columnar, one entry per video of F frames):

    frames_jpeg   list of F JPEG bytes      the decoded frames (``DecodeVideo``)
    main_boxes    (F, 4) float              person-of-interest box (x0, y0, x1, y1) pixels,
                                            zeros where absent (``TrackPersonOfInterest``)
    key, status, reason                     optional; ``failed`` items pass through
    scale_x, scale_y                        optional; stored frame size / original size

Boxes and the output cameras are in the pixels of the original frames (like the keypoints);
with ``scale_x``/``scale_y`` present the boxes are scaled onto the stored JPEGs for cropping and
the cameras scaled back. Output: the input columns plus, per video,

    init_betas (F, 10), init_global_orient (F, 3), init_body_pose (F, 69),
    init_camera (F, 3)  (s px/m, u_x px, u_y px) for ``labelmill.models.camera.project``

all float32, and ``status``/``reason``. Frames without a box take the estimate (camera
included) of the nearest frame that has one (the earlier one on ties). A video with no frame
to read, no box at all, an undecodable JPEG, or columns of mismatched lengths is marked
``status="failed"`` with the reason and gets zero-length arrays; it never stops the batch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import cv2
import numpy as np
import torch

from labelmill.models.body_model import BodyModel, BodyModelConfig
from labelmill.models.device import usable_device
from labelmill.models.hmr import (
    HMR,
    NUM_BETAS,
    crop_camera_to_pixels,
    crop_person,
    labelmill_pose_from_rotmats,
    load_hmr_checkpoint,
)
from labelmill.operators.pose3d.frame_fill import nearest_valid_index
from labelmill.infra.formats.items import ItemStatus
from labelmill.operators.pose3d.item_errors import failure_reason

__all__ = ["HMRInitConfig", "HMRInit", "nearest_valid_index"]

log = logging.getLogger(__name__)

_OUTPUT_SHAPES = {"init_betas": NUM_BETAS, "init_global_orient": 3, "init_body_pose": 69, "init_camera": 3}


@dataclasses.dataclass
class HMRInitConfig:
    """Knobs of the HMR initialiser (``init.hmr`` in pipeline configs)."""

    checkpoint: str  # SPIN-layout checkpoint (model_checkpoint.pt or a bare state_dict); path or fsspec URL
    mean_params: str | None = None  # smpl_mean_params.npz; used only for init_* buffers the checkpoint lacks
    device: str = "cpu"  # torch device; "cuda" falls back to CPU with a warning when none is present
    batch_size: int = 64  # crops per forward pass
    crop_size: int = 224  # crop side in network pixels (SPIN's weights: 224)
    crop_scale: float = 1.2  # crop square side / longer box side
    num_iterations: int = 3  # IEF refinement steps (SPIN: 3)

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ValueError("checkpoint must be a non-empty path to an HMR checkpoint")
        if self.mean_params is not None and (not isinstance(self.mean_params, str) or not self.mean_params):
            raise ValueError("mean_params must be a path to smpl_mean_params.npz or null")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a torch device string, got {self.device!r}")
        for name in ("batch_size", "crop_size", "num_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.crop_scale > 0:
            raise ValueError(f"crop_scale must be > 0, got {self.crop_scale!r}")


def _decode_rgb(jpeg: Any) -> np.ndarray | None:
    """JPEG bytes -> RGB uint8 (H, W, 3), or None when they cannot be decoded."""
    if not isinstance(jpeg, (bytes, bytearray, memoryview, np.ndarray)) or len(jpeg) == 0:
        return None
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclasses.dataclass
class _Crop:
    video: int
    frame: int
    image: torch.Tensor  # (3, S, S)
    center: np.ndarray  # (2,) original-frame pixels
    side: float  # original-frame pixels


class HMRInit:
    """Per-frame SMPL estimates from an HMR network (SPIN layout) for each video's main person."""

    # Columns read and added (the persisted pipeline loads exactly these from stored results).
    reads = ("key", "frames_jpeg", "main_boxes", "scale_x", "scale_y")
    writes = tuple(_OUTPUT_SHAPES)

    def __init__(
        self,
        *,
        checkpoint: str,
        mean_params: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        crop_size: int = 224,
        crop_scale: float = 1.2,
        num_iterations: int = 3,
        body_model: BodyModelConfig | None = None,
    ) -> None:
        self.config = HMRInitConfig(checkpoint=checkpoint, mean_params=mean_params, device=device,
                                    batch_size=batch_size, crop_size=crop_size, crop_scale=crop_scale,
                                    num_iterations=num_iterations)
        # The body model the init cameras are for; use the same one as the bundle adjustment.
        self.body_model_config = body_model or BodyModelConfig()
        self.resources = {"num_cpus": 1, "num_gpus": 1 if device.startswith("cuda") else 0, "batch_size": 4}
        self._model: HMR | None = None
        self._body: BodyModel | None = None
        self._device = torch.device("cpu")

    @classmethod
    def from_config(cls, config: HMRInitConfig, *, body_model: BodyModelConfig | None = None) -> "HMRInit":
        return cls(**dataclasses.asdict(config), body_model=body_model)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"], state["_body"] = None, None  # loaded again by setup() on the worker
        return state

    # -- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the checkpoint and the body model once per worker."""
        if self._model is not None:
            return
        cfg = self.config
        device = usable_device(cfg.device, what="HMR")
        self._device = device
        model = load_hmr_checkpoint(cfg.checkpoint, mean_params=cfg.mean_params, num_iterations=cfg.num_iterations)
        self._body = BodyModel.from_config(self.body_model_config).to(device)
        self._model = model.to(device)

    # -- batch -----------------------------------------------------------------------------
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        for name in ("frames_jpeg", "main_boxes"):
            if name not in batch:
                raise ValueError(f"HMRInit needs a {name!r} column; the batch has {', '.join(batch) or 'no columns'}")
        self.setup()
        t0 = time.perf_counter()
        size = len(batch["frames_jpeg"])
        items = ItemStatus.of(batch, size)
        keys = items.keys
        scales = [self._frame_scale(batch, i) for i in range(size)]
        boxes: list[np.ndarray | None] = [None] * size
        for i in items.pending():
            try:
                boxes[i], error = self._check_video(keys[i], batch["frames_jpeg"][i], batch["main_boxes"][i])
            except Exception as exc:  # noqa: BLE001 - one item's odd input fails that item
                error = failure_reason("HMR init", keys[i], exc)
            if error is not None:
                items.fail(i, error)
        estimates: list[dict[int, np.ndarray]] = [{} for _ in range(size)]
        pending: list[_Crop] = []
        for i in items.pending():
            try:
                error = self._crop_video(i, keys[i], batch["frames_jpeg"][i], boxes[i], scales[i], pending, estimates)
            except Exception as exc:  # noqa: BLE001 - one item's odd input fails that item
                pending[:] = [c for c in pending if c.video != i]
                error = failure_reason("HMR init", keys[i], exc)
            if error is not None:
                items.fail(i, error)
        self._run(pending, estimates)

        out = dict(batch)
        columns: dict[str, list[np.ndarray]] = {name: [] for name in _OUTPUT_SHAPES}
        frames_done = 0
        for i in range(size):
            failed = items.is_failed(i)
            if not failed:
                try:
                    video = self._fill_video(boxes[i], estimates[i])
                    frames_done += len(boxes[i])
                except Exception as exc:  # noqa: BLE001 - one item's odd input fails that item
                    items.fail(i, failure_reason("HMR init", keys[i], exc))
                    failed = True
            for name, width in _OUTPUT_SHAPES.items():
                columns[name].append(np.zeros((0, width), np.float32) if failed else video[name])
        out.update(columns)
        items.write(out)
        elapsed = time.perf_counter() - t0
        log.info("HMR init: %d videos, %d frames in %.1fs", size, frames_done, elapsed)
        return out

    @staticmethod
    def _frame_scale(batch: dict[str, Any], i: int) -> np.ndarray:
        """(2,) stored / original frame size; 1 when unknown."""
        if "scale_x" not in batch or "scale_y" not in batch:
            return np.ones(2)
        scale = np.array([batch["scale_x"][i], batch["scale_y"][i]], dtype=np.float64)
        return scale if np.all(np.isfinite(scale)) and np.all(scale > 0) else np.ones(2)

    @staticmethod
    def _check_video(key: Any, jpegs: Any, boxes: Any) -> tuple[np.ndarray | None, str | None]:
        """(boxes (F, 4) float64, None) when the item is usable, else (None, reason)."""
        try:
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        except (TypeError, ValueError):
            return None, f"item {key}: main_boxes must be an (F, 4) array"
        if jpegs is None or len(jpegs) == 0:
            return None, f"item {key}: no frames to run HMR on"
        if len(jpegs) != len(boxes):
            return None, f"item {key}: {len(jpegs)} frames but {len(boxes)} main_boxes rows"
        if not _box_present(boxes).any():
            return None, f"item {key}: no frame has a person box; HMR needs at least one"
        return boxes, None

    def _crop_video(self, video: int, key: Any, jpegs: list, boxes: np.ndarray, scale: np.ndarray,
                    pending: list[_Crop], estimates: list[dict[int, np.ndarray]]) -> str | None:
        """Decode and crop every frame with a box, running full batches as they fill; the reason on failure."""
        cfg = self.config
        for frame in np.flatnonzero(_box_present(boxes)):
            image = _decode_rgb(jpegs[frame])
            error = None
            if image is None:
                error = f"item {key}: frame {frame}: JPEG bytes cannot be decoded"
            else:
                try:
                    crop = crop_person(image, boxes[frame] * np.tile(scale, 2), size=cfg.crop_size,
                                       scale=cfg.crop_scale)
                except ValueError as exc:
                    error = f"item {key}: frame {frame}: {exc}"
            if error is not None:
                pending[:] = [c for c in pending if c.video != video]  # no use running the rest of this video
                return error
            pending.append(_Crop(video=video, frame=int(frame), image=crop.image,
                                 center=crop.center / scale, side=crop.side / float(np.mean(scale))))
            if len(pending) >= cfg.batch_size:
                self._run(pending, estimates)
        return None

    @torch.no_grad()
    def _run(self, pending: list[_Crop], estimates: list[dict[int, np.ndarray]]) -> None:
        """Run HMR on the pending crops, store per-frame results in ``estimates``, empty ``pending``."""
        if not pending:
            return
        if self._model is None or self._body is None:
            raise RuntimeError("HMRInit.setup() did not load the model")
        images = torch.stack([c.image for c in pending]).to(self._device)
        output = self._model(images)
        betas = output.betas.float()
        num_betas = self._body.num_betas
        zeros = torch.zeros(len(pending), 3, device=self._device)
        rest = self._body.joints_only(betas[:, :num_betas], zeros, torch.zeros(len(pending), 69, device=self._device))
        root = rest.joints[:, 0].double().cpu().numpy()
        global_orient, body_pose = labelmill_pose_from_rotmats(output.rotmats)
        camera = crop_camera_to_pixels(output.camera.double().cpu().numpy(), np.stack([c.center for c in pending]),
                                       np.array([c.side for c in pending]), root)
        betas_np = betas.cpu().numpy()
        for n, crop in enumerate(pending):
            estimates[crop.video][crop.frame] = np.concatenate(
                [betas_np[n], global_orient[n], body_pose[n], camera[n]]).astype(np.float32)
        pending.clear()

    @staticmethod
    def _fill_video(boxes: np.ndarray, estimates: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-frame outputs; frames without a box copy the nearest frame with one."""
        has_estimate = np.zeros(len(boxes), bool)
        has_estimate[list(estimates)] = True
        source = nearest_valid_index(has_estimate)
        rows = np.stack([estimates[int(s)] for s in source])
        out, start = {}, 0
        for name, width in _OUTPUT_SHAPES.items():
            out[name] = np.ascontiguousarray(rows[:, start:start + width])
            start += width
        return out


def _box_present(boxes: np.ndarray) -> np.ndarray:
    """(F, 4) -> (F,) bool: finite with positive width and height (absent boxes are zeros)."""
    finite = np.all(np.isfinite(boxes), axis=1)
    with np.errstate(invalid="ignore"):
        return finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
