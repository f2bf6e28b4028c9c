"""HMR: per-frame SMPL regression from a person crop, in SPIN's checkpoint layout.

Architecture (Kanazawa et al., CVPR 2018; the variant of Kolotouros et al., ICCV 2019, "SPIN"):
a ResNet-50 trunk (:class:`~labelmill.models.resnet.ResNet50`; its modules are direct attributes,
as in SPIN, so keys read ``conv1.weight``, ``layer1.0.conv1.weight`` ...) gives a 2048-d feature;
an iterative error feedback (IEF) regressor refines ``[pose 6D (144), betas (10), camera (3)]``
from a mean estimate in 3 steps::

    x = [feature, pose, betas, camera]                      (B, 2205)
    h = drop2(fc2(drop1(fc1(x))))                            fc1: 2205 -> 1024, fc2: 1024 -> 1024
    pose += decpose(h); betas += decshape(h); camera += deccam(h)

(SPIN puts no non-linearity between ``fc1`` and ``fc2``; neither do we, so its weights mean the
same thing here.) The pose is 24 rotations in the continuous 6D representation of Zhou et al.
(CVPR 2019), turned into rotation matrices by Gram-Schmidt (:func:`rot6d_to_rotmat`).

Conventions (docs/hmr.md has the derivations):

* SPIN's outputs live in an OpenCV-style camera frame (x right, y down, z away from the viewer):
  an upright person has a global rotation of about 180 degrees about x. labelmill's body frame
  for projection has y up (``labelmill.models.camera.project``), so the global rotation is
  mapped with ``R_labelmill = diag(1, -1, -1) @ R_spin``; body-joint rotations do not change.
* SPIN's camera ``(s, t_x, t_y)`` projects weakly: ``n = s * (X_xy + t)`` in normalised crop
  coordinates ``n`` in [-1, 1] (y down). :func:`crop_camera_to_pixels` turns it into labelmill's
  per-frame scaled orthographic camera ``(s px/m, u_x px, u_y px)`` in full-image pixels.

Nothing here downloads anything. Users bring SPIN's ``model_checkpoint.pt`` and
``smpl_mean_params.npz``; without mean parameters a zero-shape, rest-pose mean is used.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from collections.abc import Mapping
from typing import Any

import cv2
import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation
from torch import nn

from labelmill.models.resnet import FEATURE_DIM, ResNet50
from labelmill.models.model_files import npz_arrays

__all__ = [
    "NUM_JOINTS",
    "NUM_BETAS",
    "POSE6D_DIM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPIN_TO_LABELMILL",
    "HMRCheckpointError",
    "MeanParams",
    "default_mean_params",
    "load_mean_params",
    "rot6d_to_rotmat",
    "rotmat_to_rot6d",
    "rotmat_to_axis_angle",
    "HMROutput",
    "HMR",
    "load_hmr_checkpoint",
    "PersonCrop",
    "crop_square",
    "crop_person",
    "normalize_image",
    "crop_points_to_image",
    "labelmill_pose_from_rotmats",
    "crop_camera_to_pixels",
]

log = logging.getLogger(__name__)

NUM_JOINTS = 24  # SMPL joints, root first
NUM_BETAS = 10
POSE6D_DIM = NUM_JOINTS * 6  # 144
CAMERA_DIM = 3  # (s, t_x, t_y)
HIDDEN_DIM = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of pixel values scaled to [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
SPIN_MEAN_SCALE = 0.9  # HMR/SPIN's mean weak-perspective scale (a person filling ~90% of the crop)
# SPIN's camera frame (x right, y down, z away) -> labelmill's body frame for projection (y up).
SPIN_TO_LABELMILL = np.diag([1.0, -1.0, -1.0])
_MEAN_BUFFERS = ("init_pose", "init_shape", "init_cam")


class HMRCheckpointError(ValueError):
    """An HMR checkpoint or mean-parameter file cannot be used; the message names the file and why."""


# ----------------------------------------------------------------------------- rotations


def rot6d_to_rotmat(pose6d: torch.Tensor) -> torch.Tensor:
    """6D rotation representation -> rotation matrices, in SPIN's layout: ``(..., 6) -> (..., 3, 3)``.

    The six numbers are a 3x2 matrix stored row by row: ``[a1_x, a2_x, a1_y, a2_y, a1_z, a2_z]``,
    whose columns ``a1, a2`` are Gram-Schmidt orthonormalised into the first two columns of the
    rotation; the third column is their cross product (so ``det = +1``).
    """
    if pose6d.shape[-1] != 6:
        raise ValueError(f"rot6d_to_rotmat expects (..., 6), got {tuple(pose6d.shape)}")
    columns = pose6d.reshape(*pose6d.shape[:-1], 3, 2)
    a1, a2 = columns[..., 0], columns[..., 1]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(dim=-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def rotmat_to_rot6d(rotmats: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rot6d_to_rotmat` for rotation matrices: ``(..., 3, 3) -> (..., 6)``."""
    return rotmats[..., :, :2].reshape(*rotmats.shape[:-2], 6)


def rotmat_to_axis_angle(rotmats: np.ndarray | torch.Tensor) -> np.ndarray:
    """Rotation matrices -> axis-angle vectors (angle in [0, pi] radians): ``(..., 3, 3) -> (..., 3)``.

    Uses SciPy's ``Rotation`` (robust near 0 and pi). Returns float64 numpy.
    """
    if isinstance(rotmats, torch.Tensor):
        rotmats = rotmats.detach().cpu().double().numpy()
    rotmats = np.asarray(rotmats, dtype=np.float64)
    if rotmats.shape[-2:] != (3, 3):
        raise ValueError(f"rotmat_to_axis_angle expects (..., 3, 3), got {rotmats.shape}")
    lead = rotmats.shape[:-2]
    if int(np.prod(lead)) == 0:
        return np.zeros((*lead, 3))
    return Rotation.from_matrix(rotmats.reshape(-1, 3, 3)).as_rotvec().reshape(*lead, 3)


# ----------------------------------------------------------------------------- mean parameters


@dataclasses.dataclass(frozen=True)
class MeanParams:
    """The IEF starting point, in SPIN's frame: pose6d (144,), betas (10,), camera (3,) float32."""

    pose6d: np.ndarray
    betas: np.ndarray
    camera: np.ndarray

    def __post_init__(self) -> None:
        for name, size in (("pose6d", POSE6D_DIM), ("betas", NUM_BETAS), ("camera", CAMERA_DIM)):
            value = np.asarray(getattr(self, name), dtype=np.float32).reshape(-1)
            if value.shape != (size,):
                raise ValueError(f"MeanParams.{name} must have {size} values, got shape {np.shape(getattr(self, name))}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"MeanParams.{name} has non-finite values")
            object.__setattr__(self, name, value)


def default_mean_params() -> MeanParams:
    """Zero shape, rest pose, upright and facing the camera in SPIN's frame, camera (0.9, 0, 0).

    The root rotation is 180 degrees about x (SPIN's frame has y down); every body joint is the
    identity. SPIN's ``smpl_mean_params.npz`` (a mean over its training poses) is better when
    available; a trained checkpoint carries its own mean in its ``init_*`` buffers anyway.
    """
    rotmats = np.tile(np.eye(3), (NUM_JOINTS, 1, 1))
    rotmats[0] = np.diag([1.0, -1.0, -1.0])
    pose6d = rotmats[:, :, :2].reshape(-1)
    return MeanParams(pose6d=pose6d, betas=np.zeros(NUM_BETAS), camera=np.array([SPIN_MEAN_SCALE, 0.0, 0.0]))


def load_mean_params(path: str) -> MeanParams:
    """Read SPIN's ``smpl_mean_params.npz`` (keys ``pose`` (144,), ``shape`` (10,), ``cam`` (3,)).

    ``path`` is a local path or fsspec URL; the file is read without pickle.
    """
    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise HMRCheckpointError(f"mean parameter file {path}: not found") from exc
    try:
        arrays = npz_arrays(data, what=f"mean parameter file {path}")
    except ValueError as exc:
        raise HMRCheckpointError(str(exc)) from None
    missing = [k for k in ("pose", "shape", "cam") if k not in arrays]
    if missing:
        raise HMRCheckpointError(
            f"mean parameter file {path}: lacks keys {missing} (has {sorted(arrays)}); "
            "expected SPIN's smpl_mean_params.npz with pose (144,), shape (10,), cam (3,)"
        )
    try:
        return MeanParams(pose6d=arrays["pose"], betas=arrays["shape"], camera=arrays["cam"])
    except ValueError as exc:
        raise HMRCheckpointError(f"mean parameter file {path}: {exc}") from exc


def _resolve_mean_params(mean_params: MeanParams | str | None) -> MeanParams:
    if mean_params is None:
        return default_mean_params()
    if isinstance(mean_params, MeanParams):
        return mean_params
    return load_mean_params(mean_params)


# ----------------------------------------------------------------------------- the network


@dataclasses.dataclass(frozen=True)
class HMROutput:
    """What :class:`HMR` predicts, all in SPIN's frame (see the module docstring).

    rotmats (B, 24, 3, 3): SMPL joint rotations, root first; pose6d (B, 144): the same in 6D;
    betas (B, 10); camera (B, 3): weak perspective ``(s, t_x, t_y)`` in normalised crop coordinates.
    """

    rotmats: torch.Tensor
    pose6d: torch.Tensor
    betas: torch.Tensor
    camera: torch.Tensor


class HMR(ResNet50):
    """ResNet-50 trunk + IEF regressor, with SPIN's ``state_dict`` keys.

    Keys: the ResNet-50 trunk's (``conv1``, ``bn1``, ``layer1`` .. ``layer4``; no ``fc``), then
    ``fc1`` (2205 -> 1024), ``fc2`` (1024 -> 1024), ``decpose`` (1024 -> 144), ``decshape``
    (1024 -> 10), ``deccam`` (1024 -> 3) weights and biases, and the buffers ``init_pose``
    (1, 144), ``init_shape`` (1, 10), ``init_cam`` (1, 3) holding the mean parameters.

    ``forward(images (B, 3, H, W))`` takes crops normalised with :func:`normalize_image`
    (224x224 for SPIN's weights) and returns :class:`HMROutput`. Call ``eval()`` for inference
    (dropout off, batch-norm running statistics); :func:`load_hmr_checkpoint` does.
    """

    def __init__(self, *, mean_params: MeanParams | str | None = None, num_iterations: int = 3) -> None:
        super().__init__(num_classes=None)
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
            raise ValueError(f"num_iterations must be a positive integer, got {num_iterations!r}")
        self.num_iterations = num_iterations
        self.fc1 = nn.Linear(FEATURE_DIM + POSE6D_DIM + NUM_BETAS + CAMERA_DIM, HIDDEN_DIM)
        self.drop1 = nn.Dropout()
        self.fc2 = nn.Linear(HIDDEN_DIM, HIDDEN_DIM)
        self.drop2 = nn.Dropout()
        self.decpose = nn.Linear(HIDDEN_DIM, POSE6D_DIM)
        self.decshape = nn.Linear(HIDDEN_DIM, NUM_BETAS)
        self.deccam = nn.Linear(HIDDEN_DIM, CAMERA_DIM)
        for decoder in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(decoder.weight, gain=0.01)  # small residuals: start near the mean
        mean = _resolve_mean_params(mean_params)
        self.register_buffer("init_pose", torch.from_numpy(mean.pose6d.copy())[None])
        self.register_buffer("init_shape", torch.from_numpy(mean.betas.copy())[None])
        self.register_buffer("init_cam", torch.from_numpy(mean.camera.copy())[None])

    def regress(self, features: torch.Tensor, *, num_iterations: int | None = None) -> HMROutput:
        """IEF from the mean: ``features (B, 2048) -> HMROutput``."""
        batch = features.shape[0]
        pose = self.init_pose.expand(batch, -1)
        betas = self.init_shape.expand(batch, -1)
        camera = self.init_cam.expand(batch, -1)
        for _ in range(num_iterations or self.num_iterations):
            hidden = self.drop2(self.fc2(self.drop1(self.fc1(torch.cat([features, pose, betas, camera], dim=1)))))
            pose = pose + self.decpose(hidden)
            betas = betas + self.decshape(hidden)
            camera = camera + self.deccam(hidden)
        rotmats = rot6d_to_rotmat(pose.reshape(batch, NUM_JOINTS, 6))
        return HMROutput(rotmats=rotmats, pose6d=pose, betas=betas, camera=camera)

    def forward(self, images: torch.Tensor, *, num_iterations: int | None = None) -> HMROutput:  # type: ignore[override]
        return self.regress(self.features(images), num_iterations=num_iterations)


# ----------------------------------------------------------------------------- checkpoints


def _read_checkpoint(path: str) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain containers only)."""
    try:
        with fsspec.open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise HMRCheckpointError(f"HMR checkpoint {path}: not found") from exc
    except pickle.UnpicklingError as exc:
        raise HMRCheckpointError(
            f"HMR checkpoint {path}: holds objects other than tensors and plain containers; "
            f"refusing to unpickle them (weights_only=True): {exc}"
        ) from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise HMRCheckpointError(f"HMR checkpoint {path}: not a readable torch checkpoint ({exc})") from exc


def _extract_state_dict(path: str, loaded: Any) -> dict[str, torch.Tensor]:
    """SPIN's ``{"model": state_dict, ...}`` or a bare state_dict -> state_dict (``module.`` stripped)."""
    if not isinstance(loaded, Mapping):
        raise HMRCheckpointError(f"HMR checkpoint {path}: expected a dict, got {type(loaded).__name__}")
    state = loaded["model"] if isinstance(loaded.get("model"), Mapping) else loaded
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise HMRCheckpointError(
            f"HMR checkpoint {path}: not a state_dict (no 'model' entry, and these entries are not tensors: "
            f"{_first(non_tensors)})"
        )
    state = {str(k): v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _first(names: list[str], count: int = 8) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... ({len(names)} in all)" if len(names) > count else "")


def load_hmr_checkpoint(
    path: str,
    *,
    strict: bool = True,
    mean_params: MeanParams | str | None = None,
    num_iterations: int = 3,
) -> HMR:
    """Build an :class:`HMR` from a checkpoint file, in eval mode on the CPU.

    Accepts SPIN's released layout (``torch.load("model_checkpoint.pt")["model"]`` is the
    state_dict; other entries such as ``optimizer`` are ignored), a bare state_dict, and keys
    prefixed with ``module.``. Loaded with ``weights_only=True``: no arbitrary pickle runs.

    The ``init_*`` buffers of the checkpoint (the mean the network was trained from) are used
    when present; ``mean_params`` (SPIN's ``smpl_mean_params.npz``) fills them when absent.
    Missing ``num_batches_tracked`` buffers (older PyTorch) are tolerated.

    Raises:
        HMRCheckpointError: unreadable file, unsafe content, or a layout that differs from
            SPIN's: tensors of the wrong shape always; with ``strict`` also missing or
            unexpected keys (the first few of each are named). With ``strict=False`` those are
            logged and the rest is loaded.
    """
    state = _extract_state_dict(path, _read_checkpoint(path))
    model = HMR(mean_params=mean_params, num_iterations=num_iterations)
    expected = model.state_dict()
    fillable = set(_MEAN_BUFFERS) if mean_params is not None else set()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked") and k not in fillable]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if wrong_shape:
        raise HMRCheckpointError(f"HMR checkpoint {path}: tensors of the wrong shape: {_first(wrong_shape, 5)}")
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} keys: {_first(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} keys: {_first(unexpected)}")
        message = f"HMR checkpoint {path}: state_dict differs from SPIN's HMR layout (docs/hmr.md): " + "; ".join(problems)
        if any(k in missing for k in _MEAN_BUFFERS):
            message += "; pass mean_params (smpl_mean_params.npz) to supply the init_* buffers"
        if strict:
            raise HMRCheckpointError(message)
        log.warning("%s; loading the matching keys only (strict=False)", message)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return model.eval()


# ----------------------------------------------------------------------------- pre-processing


@dataclasses.dataclass(frozen=True)
class PersonCrop:
    """A square person crop and where it came from.

    image (3, S, S) float32: RGB normalised with the ImageNet mean/std; center (2,) and side:
    the crop square in image pixels (``[center - side/2, center + side/2]`` maps onto the
    normalised crop range [-1, 1]); image_to_crop (2, 3): the affine taking image pixel
    coordinates to crop pixel coordinates (pixel centres at integers in both).
    """

    image: torch.Tensor
    center: np.ndarray
    side: float
    image_to_crop: np.ndarray


def crop_square(bbox: np.ndarray | tuple[float, float, float, float], *, scale: float = 1.2) -> tuple[np.ndarray, float]:
    """Box ``(x0, y0, x1, y1)`` -> (centre (2,), side): a square ``scale`` times the longer box side.

    SPIN's demo crops a square of 1.2x the person's extent around its centre.
    """
    x0, y0, x1, y1 = (float(v) for v in np.asarray(bbox, dtype=np.float64).reshape(4))
    if not all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox must be finite (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {(x0, y0, x1, y1)}")
    if scale <= 0:
        raise ValueError(f"crop scale must be > 0, got {scale}")
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), scale * max(x1 - x0, y1 - y0)


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)``: ``(pixel / 255 - mean) / std`` (ImageNet)."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels - mean) / std


def crop_person(image: np.ndarray, bbox: np.ndarray | tuple[float, float, float, float], *, size: int = 224,
                scale: float = 1.2) -> PersonCrop:
    """Cut the square around ``bbox`` out of an RGB uint8 ``(H, W, 3)`` image, resample it to
    ``size x size`` and normalise it. Parts of the square outside the image are black (zero
    pixels before normalisation). Large squares are first shrunk with area averaging (no
    aliasing); the geometry stays exact.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"crop_person needs an RGB uint8 (H, W, 3) image, got {getattr(image, 'dtype', type(image))} "
                         f"{getattr(image, 'shape', '')}")
    if size < 1:
        raise ValueError(f"crop size must be >= 1, got {size}")
    center, side = crop_square(bbox, scale=scale)
    step = side / size  # image pixels per crop pixel
    # crop pixel j (centre) <-> image x = center - side/2 + (j + 0.5) * step  (likewise for y)
    crop_to_image = np.array([[step, 0.0, center[0] - side / 2 + 0.5 * step],
                              [0.0, step, center[1] - side / 2 + 0.5 * step]])
    source, source_to_image = image, np.eye(3)
    if step > 1.5:
        height, width = image.shape[:2]
        new_w, new_h = max(1, round(width / step)), max(1, round(height / step))
        source = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        # cv2.resize: image x = (x_small + 0.5) * (width / new_w) - 0.5
        fx, fy = width / new_w, height / new_h
        source_to_image = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])
    crop_to_source = np.linalg.inv(source_to_image) @ np.vstack([crop_to_image, [0.0, 0.0, 1.0]])
    pixels = cv2.warpAffine(source, crop_to_source[:2], (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    image_to_crop = np.linalg.inv(np.vstack([crop_to_image, [0.0, 0.0, 1.0]]))[:2]
    return PersonCrop(image=normalize_image(pixels), center=center, side=float(side), image_to_crop=image_to_crop)


def crop_points_to_image(points: np.ndarray, center: np.ndarray, side: float | np.ndarray) -> np.ndarray:
    """Normalised crop coordinates ``(..., N, 2)`` in [-1, 1] -> image pixels ``(..., N, 2)``.

    ``center (..., 2)`` and ``side (...)`` describe the crop square (:class:`PersonCrop`).
    """
    center = np.asarray(center, dtype=np.float64)[..., None, :]
    half = np.asarray(side, dtype=np.float64)[..., None, None] / 2
    return center + np.asarray(points, dtype=np.float64) * half


# ----------------------------------------------------------------------------- SPIN -> labelmill


def labelmill_pose_from_rotmats(rotmats: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """SPIN-frame joint rotations ``(B, 24, 3, 3)`` -> labelmill axis-angle
    ``global_orient (B, 3)`` and ``body_pose (B, 69)`` (float64).

    The root rotation is left-multiplied by ``SPIN_TO_LABELMILL = diag(1, -1, -1)`` (180 degrees
    about x); the 23 body-joint rotations are relative to their parents and do not change.
    """
    if isinstance(rotmats, torch.Tensor):
        rotmats = rotmats.detach().cpu().double().numpy()
    rotmats = np.array(rotmats, dtype=np.float64)
    if rotmats.ndim != 4 or rotmats.shape[1:] != (NUM_JOINTS, 3, 3):
        raise ValueError(f"expected rotation matrices of shape (B, 24, 3, 3), got {rotmats.shape}")
    rotmats[:, 0] = SPIN_TO_LABELMILL @ rotmats[:, 0]
    axis_angle = rotmat_to_axis_angle(rotmats)
    return axis_angle[:, 0], axis_angle[:, 1:].reshape(len(rotmats), -1)


def crop_camera_to_pixels(
    camera: np.ndarray, center: np.ndarray, side: np.ndarray, root_joint: np.ndarray
) -> np.ndarray:
    """SPIN's crop camera -> labelmill's scaled orthographic camera in image pixels.

    Args:
        camera: ``(B, 3)`` ``(s, t_x, t_y)``: ``n = s * (X_xy + t)`` in normalised crop
            coordinates (y down), ``X`` the SMPL points posed with SPIN's global rotation.
        center: ``(B, 2)`` crop-square centres in pixels; side: ``(B,)`` their sides in pixels.
        root_joint: ``(B, 3)`` the SMPL root (pelvis) joint of the rest pose for the predicted
            betas, metres, of the body model that the camera will be used with. SMPL rotates
            the body about this point, so the 180-degree frame change moves the body by
            ``2 * root_y`` along y.

    Returns:
        ``(B, 3)`` ``(s px/m, u_x px, u_y px)`` for ``labelmill.models.camera.project`` with the
        body posed by :func:`labelmill_pose_from_rotmats`'s global rotation:
        ``s_px = s * side / 2``, ``u_x = c_x + s_px * t_x``, ``u_y = c_y + s_px * (t_y + 2 * root_y)``.
    """
    camera = np.asarray(camera, dtype=np.float64).reshape(-1, 3)
    center = np.asarray(center, dtype=np.float64).reshape(-1, 2)
    side = np.asarray(side, dtype=np.float64).reshape(-1)
    root_y = np.asarray(root_joint, dtype=np.float64).reshape(-1, 3)[:, 1]
    scale = camera[:, 0] * side / 2
    u_x = center[:, 0] + scale * camera[:, 1]
    u_y = center[:, 1] + scale * (camera[:, 2] + 2 * root_y)
    return np.stack([scale, u_x, u_y], axis=1)
