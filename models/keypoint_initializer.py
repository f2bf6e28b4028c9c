"""Keypoint-conditioned per-frame SMPL initialiser (HMR's role, from 2D keypoints instead of pixels).

One frame's COCO-17 keypoints ``(17, 3)`` (x, y in pixels, detector confidence) go in; SMPL
``betas (10)``, ``global_orient (3)``, ``body_pose (69)`` (axis-angle) and the scaled
orthographic camera ``(s, u_x, u_y)`` in pixels (:mod:`labelmill.models.camera`) come out.

Input normalisation (:func:`normalize_keypoints`): the box of the confident keypoints
(confidence >= ``min_confidence``) gives a centre ``c`` and a size ``d = max(width, height)``;
each visible keypoint becomes ``(p - c) / d``, its confidence is a third channel, and a missing
keypoint (confidence 0) is ``(0, 0, 0)``. Translating or scaling all keypoints therefore leaves
the network's input unchanged: the pose is invariant and the camera is equivariant, because
the network predicts a *normalised* camera ``(s_n, u_n)`` that maps body points into the
normalised frame, and ``s = s_n d``, ``u = u_n d + c`` (:func:`denormalize_camera`).

Network (HMR's iterative error feedback): an MLP encodes the 51 inputs into features; a second
MLP takes ``[features, current parameters]`` and predicts a residual update, applied
``iterations`` times starting from fixed mean parameters. Parameters are 24 rotations in the
continuous 6D representation (global orientation and 23 body joints; the first two columns of
the rotation matrix, Gram-Schmidt to decode), 10 betas and ``(log s_n, u_n,x, u_n,y)``.

Weights are stored as ``.npz`` of float32 arrays plus a JSON metadata string (no pickle):
:meth:`KeypointInitializer.save` / :meth:`KeypointInitializer.from_file`. The embedded default
is ``labelmill/models/data/keypoint_initializer.npz`` (see docs/initializer.md).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "NUM_KEYPOINTS",
    "NUM_ROTATIONS",
    "NUM_BETAS",
    "PARAM_DIM",
    "FEATURE_DIM",
    "DEFAULT_WEIGHTS_FILE",
    "FILE_FORMAT",
    "InitializerNetConfig",
    "normalize_keypoints",
    "denormalize_camera",
    "normalize_camera",
    "rot6d_to_rotmat",
    "rotmat_to_rot6d",
    "rotmat_to_quaternion",
    "rotmat_to_axis_angle",
    "split_params",
    "pack_params",
    "KeypointInitializer",
    "default_weights_path",
    "cached_weights_path",
]

NUM_KEYPOINTS = 17  # COCO-17
NUM_ROTATIONS = 24  # global orientation + 23 body joints
NUM_BETAS = 10
ROT6D_DIM = NUM_ROTATIONS * 6
PARAM_DIM = ROT6D_DIM + NUM_BETAS + 3  # 6D rotations, betas, (log s_n, u_n,x, u_n,y)
FEATURE_DIM = NUM_KEYPOINTS * 3  # normalised x, y and confidence per keypoint
DEFAULT_WEIGHTS_FILE = "keypoint_initializer.npz"  # inside the labelmill.models.data package
FILE_FORMAT = "labelmill-keypoint-initializer/1"
_CACHE_ENV = "LABELMILL_CACHE"  # directory for weights trained on first use (default ~/.cache/labelmill)


@dataclasses.dataclass
class InitializerNetConfig:
    """Architecture and input normalisation of :class:`KeypointInitializer`."""

    hidden: int = 512  # width of every hidden layer (encoder and regressor)
    encoder_layers: int = 2  # Linear+ReLU layers turning the 51 inputs into features
    regressor_layers: int = 2  # hidden Linear+ReLU layers of the residual regressor
    iterations: int = 3  # iterative error feedback steps from the mean parameters
    min_confidence: float = 0.3  # keypoints at or above this confidence define the normalisation box

    def __post_init__(self) -> None:
        for name in ("hidden", "encoder_layers", "regressor_layers", "iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 < float(self.min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be in (0, 1], got {self.min_confidence!r}")


# --------------------------------------------------------------------------- pure kernels


def normalize_keypoints(
    keypoints: torch.Tensor, *, min_confidence: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network input from pixel keypoints.

    Args:
        keypoints: ``(B, 17, 3)`` x, y (pixels), confidence; confidence 0 means missing.
        min_confidence: keypoints with at least this confidence define the box. With fewer than
            two of them, every visible keypoint does; with fewer than two visible keypoints the
            box is centred on the visible one (or the origin) with size 1.
    Returns:
        ``features (B, 51)`` (normalised x, y, then confidence, per keypoint; zeros where
        missing), ``centre (B, 2)`` pixels and ``size (B,)`` pixels of the box.
    """
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must have shape (B, {NUM_KEYPOINTS}, 3), got {tuple(keypoints.shape)}")
    xy = torch.nan_to_num(keypoints[..., :2], nan=0.0, posinf=0.0, neginf=0.0)
    conf = torch.nan_to_num(keypoints[..., 2], nan=0.0).clamp(0.0, 1.0)
    visible = conf > 0.0
    confident = conf >= min_confidence
    use = torch.where((confident.sum(1, keepdim=True) >= 2), confident, visible)  # (B, 17)
    big = torch.finfo(xy.dtype).max
    lo = torch.where(use[..., None], xy, torch.full_like(xy, big)).amin(1)
    hi = torch.where(use[..., None], xy, torch.full_like(xy, -big)).amax(1)
    count = use.sum(1)
    enough = count >= 2
    mean_visible = (xy * visible[..., None]).sum(1) / visible.sum(1, keepdim=True).clamp(min=1)
    centre = torch.where(enough[:, None], 0.5 * (lo + hi), mean_visible)
    size = torch.where(enough, (hi - lo).amax(-1), torch.ones_like(conf[:, 0]))
    size = torch.where(size > 1e-6, size, torch.ones_like(size))  # all box points coincide
    normalised = (xy - centre[:, None, :]) / size[:, None, None] * visible[..., None]
    features = torch.cat([normalised.reshape(-1, 2 * NUM_KEYPOINTS), conf * visible], dim=1)
    return features, centre, size


def denormalize_camera(camera_norm: torch.Tensor, centre: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Normalised camera ``(B, 3)`` ``(s_n, u_n)`` -> pixel camera ``(B, 3)`` ``(s_n d, u_n d + c)``."""
    return torch.cat([camera_norm[:, :1] * size[:, None], camera_norm[:, 1:] * size[:, None] + centre], dim=1)


def normalize_camera(camera: torch.Tensor, centre: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Pixel camera ``(B, 3)`` -> normalised camera ``(B, 3)`` (inverse of :func:`denormalize_camera`)."""
    return torch.cat([camera[:, :1] / size[:, None], (camera[:, 1:] - centre) / size[:, None]], dim=1)


def rot6d_to_rotmat(rot6d: torch.Tensor) -> torch.Tensor:
    """6D rotation ``(..., 6)`` (two matrix columns) -> rotation matrix ``(..., 3, 3)`` by Gram-Schmidt."""
    a1, a2 = rot6d[..., 0:3], rot6d[..., 3:6]
    b1 = F.normalize(a1, dim=-1, eps=1e-8)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=1e-8)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def rotmat_to_rot6d(rotmat: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``(..., 3, 3)`` -> 6D ``(..., 6)``: its first column, then its second."""
    return torch.cat([rotmat[..., :, 0], rotmat[..., :, 1]], dim=-1)


def rotmat_to_quaternion(rotmat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> unit quaternions ``(..., 4)`` ``(w, x, y, z)`` with ``w >= 0``.

    Shepperd's method: of the four ways to read the quaternion off the matrix, each row uses
    the one whose pivot (``4 w^2``, ``4 x^2``, ``4 y^2`` or ``4 z^2``) is largest, so it is
    stable at every angle, including half turns.
    """
    m = rotmat
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    candidates = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, 1 + m00 - m11 - m22, m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, 1 - m00 + m11 - m22, m21 + m12], -1),
            torch.stack([m10 - m01, m02 + m20, m21 + m12, 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # (..., 4 candidates, 4): candidate i is 4 q_i q (its i-th entry is the pivot 4 q_i^2)
    pivots = torch.diagonal(candidates, dim1=-2, dim2=-1)
    best = pivots.argmax(-1, keepdim=True)[..., None].expand(*pivots.shape[:-1], 1, 4)
    quat = F.normalize(torch.gather(candidates, -2, best).squeeze(-2), dim=-1)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def rotmat_to_axis_angle(rotmat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> axis-angle ``(..., 3)`` (radians, angle in [0, pi])."""
    quat = rotmat_to_quaternion(rotmat)
    vec = quat[..., 1:]
    sin_half = vec.norm(dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(sin_half, quat[..., :1])
    # angle / sin(angle / 2) -> 2 as the angle -> 0
    factor = torch.where(sin_half > 1e-6, angle / sin_half.clamp(min=1e-6), 2.0 + angle**2 / 12.0)
    return vec * factor


def split_params(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Parameter vector ``(B, 157)`` -> rotations ``(B, 24, 3, 3)``, betas ``(B, 10)``, normalised camera ``(B, 3)``.

    The camera's first entry is stored as ``log s_n``; it is returned as ``s_n``.
    """
    rotmats = rot6d_to_rotmat(params[:, :ROT6D_DIM].reshape(-1, NUM_ROTATIONS, 6))
    betas = params[:, ROT6D_DIM : ROT6D_DIM + NUM_BETAS]
    cam = params[:, ROT6D_DIM + NUM_BETAS :]
    camera_norm = torch.cat([cam[:, :1].clamp(-10.0, 10.0).exp(), cam[:, 1:]], dim=1)
    return rotmats, betas, camera_norm


def pack_params(rotmats: torch.Tensor, betas: torch.Tensor, camera_norm: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_params`: ``(B, 24, 3, 3), (B, 10), (B, 3)`` -> ``(B, 157)``."""
    batch = rotmats.shape[0]
    cam = torch.cat([camera_norm[:, :1].clamp(min=1e-8).log(), camera_norm[:, 1:]], dim=1)
    return torch.cat([rotmat_to_rot6d(rotmats).reshape(batch, -1), betas, cam], dim=1)


def _mlp(sizes: list[int], *, final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- module


class KeypointInitializer(nn.Module):
    """Keypoints -> SMPL parameters and camera, by iterative residual regression from mean parameters.

    ``forward(features (B, 51)) -> list of (B, 157)`` parameter vectors, one per iteration
    (index 0: the mean parameters). :meth:`predict` wraps normalisation and decoding for pixel
    keypoints; :meth:`initialise` gives numpy axis-angle arrays in batches.
    """

    mean_params: torch.Tensor  # (157,)

    def __init__(
        self,
        *,
        config: InitializerNetConfig | None = None,
        mean_params: torch.Tensor | np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config or InitializerNetConfig()
        cfg = self.config
        self.encoder = _mlp([FEATURE_DIM] + [cfg.hidden] * cfg.encoder_layers, final_activation=True)
        self.regressor = _mlp([cfg.hidden + PARAM_DIM] + [cfg.hidden] * cfg.regressor_layers + [PARAM_DIM],
                              final_activation=False)  # fmt: skip
        final = self.regressor[-1]
        nn.init.xavier_uniform_(final.weight, gain=0.01)  # start close to the mean parameters (as HMR)
        nn.init.zeros_(final.bias)
        if mean_params is None:
            mean_params = pack_params(torch.eye(3).expand(1, NUM_ROTATIONS, 3, 3), torch.zeros(1, NUM_BETAS),
                                      torch.tensor([[0.6, 0.0, 0.0]]))[0]  # fmt: skip
        mean = torch.as_tensor(mean_params, dtype=torch.float32).reshape(-1)
        if mean.shape != (PARAM_DIM,):
            raise ValueError(f"mean_params must have {PARAM_DIM} entries, got shape {tuple(mean.shape)}")
        self.register_buffer("mean_params", mean.clone())
        self.metadata: dict[str, Any] = dict(metadata or {})  # provenance: how the weights were made

    def extra_repr(self) -> str:
        return f"iterations={self.config.iterations}, min_confidence={self.config.min_confidence}"

    def forward(self, features: torch.Tensor, *, iterations: int | None = None) -> list[torch.Tensor]:
        """``features (B, 51)`` -> ``[params_0 (mean), params_1, ..., params_N]``, each ``(B, 157)``."""
        steps = self.config.iterations if iterations is None else iterations
        encoded = self.encoder(features)
        params = self.mean_params.to(features.dtype).expand(features.shape[0], -1)
        out = [params]
        for _ in range(steps):
            params = params + self.regressor(torch.cat([encoded, params], dim=1))
            out.append(params)
        return out

    def predict(
        self, keypoints: torch.Tensor, *, iterations: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Pixel keypoints ``(B, 17, 3)`` -> ``rotmats (B, 24, 3, 3)``, ``betas (B, 10)``,
        ``camera (B, 3)`` pixels, ``camera_norm (B, 3)``, ``centre (B, 2)``, ``size (B,)``.

        ``iterations=0`` gives the mean parameters (the baseline before any update).
        """
        dtype = self.mean_params.dtype
        keypoints = torch.as_tensor(keypoints, dtype=dtype, device=self.mean_params.device)
        features, centre, size = normalize_keypoints(keypoints, min_confidence=self.config.min_confidence)
        params = self(features, iterations=iterations)[-1]
        rotmats, betas, camera_norm = split_params(params)
        return {
            "rotmats": rotmats,
            "betas": betas,
            "camera": denormalize_camera(camera_norm, centre, size),
            "camera_norm": camera_norm,
            "centre": centre,
            "size": size,
        }

    @torch.no_grad()
    def initialise(
        self, keypoints: np.ndarray, *, batch_size: int = 4096, iterations: int | None = None
    ) -> dict[str, np.ndarray]:
        """Pixel keypoints ``(N, 17, 3)`` -> float32 ``betas (N, 10)``, ``global_orient (N, 3)``,
        ``body_pose (N, 69)`` (axis-angle) and ``camera (N, 3)`` (``s`` px/m, ``u`` px)."""
        keypoints = np.asarray(keypoints, dtype=np.float32)
        if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
            raise ValueError(f"keypoints must have shape (N, {NUM_KEYPOINTS}, 3), got {keypoints.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        count = keypoints.shape[0]
        axis_angle = np.zeros((count, NUM_ROTATIONS, 3), np.float32)
        betas = np.zeros((count, NUM_BETAS), np.float32)
        camera = np.zeros((count, 3), np.float32)
        for start in range(0, count, batch_size):
            out = self.predict(torch.from_numpy(keypoints[start : start + batch_size]), iterations=iterations)
            stop = start + out["betas"].shape[0]
            axis_angle[start:stop] = rotmat_to_axis_angle(out["rotmats"]).float().cpu().numpy()
            betas[start:stop] = out["betas"].float().cpu().numpy()
            camera[start:stop] = out["camera"].float().cpu().numpy()
        return {
            "betas": betas,
            "global_orient": axis_angle[:, 0],
            "body_pose": axis_angle[:, 1:].reshape(count, 3 * (NUM_ROTATIONS - 1)),
            "camera": camera,
        }

    # ---- files

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The state dict as float32 numpy arrays (what :meth:`save` writes)."""
        return {name: t.detach().cpu().to(torch.float32).numpy() for name, t in self.state_dict().items()}

    def save(self, path: str) -> None:
        """Write ``.npz``: every state-dict tensor as float32 plus ``metadata`` (JSON text), atomically."""
        from labelmill.models.model_files import write_model_bytes

        metadata = {"format": FILE_FORMAT, "net": dataclasses.asdict(self.config), **self.metadata}
        arrays: dict[str, np.ndarray] = {f"param/{k}": v for k, v in self.state_arrays().items()}
        arrays["metadata"] = np.array(json.dumps(metadata, sort_keys=True))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_model_bytes(path, buffer.getvalue())

    @classmethod
    def from_file(cls, path: str) -> "KeypointInitializer":
        """Load weights written by :meth:`save` (any fsspec URL), without pickle.

        Raises FileNotFoundError when the file is missing and ValueError naming the file when
        it is not an initialiser file or does not match its own architecture.
        """
        from labelmill.models.model_files import npz_arrays, read_model_bytes

        data = read_model_bytes(path, what="keypoint initialiser weights")
        arrays = npz_arrays(data, what=f"keypoint initialiser weights {path}")
        if "metadata" not in arrays:
            raise ValueError(f"keypoint initialiser weights {path}: no 'metadata' entry")
        try:
            metadata = json.loads(str(arrays["metadata"]))
            state = {k[len("param/") :]: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()
                     if k.startswith("param/")}  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"keypoint initialiser weights {path}: unreadable entry ({exc})") from None
        if metadata.get("format") != FILE_FORMAT:
            raise ValueError(
                f"keypoint initialiser weights {path}: format {metadata.get('format')!r}, expected {FILE_FORMAT!r}"
            )
        try:
            config = InitializerNetConfig(**metadata.pop("net"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"keypoint initialiser weights {path}: bad architecture entry ({exc})") from None
        metadata.pop("format")
        model = cls(config=config, metadata=metadata)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"keypoint initialiser weights {path} do not match their architecture: {exc}") from None
        model.eval()
        return model

    @classmethod
    def default(cls) -> "KeypointInitializer":
        """The embedded default: the shipped weights, else weights trained on first use and cached.

        Raises FileNotFoundError (with how to make them) when neither exists; the operator
        :class:`labelmill.operators.pose3d.keypoint_init.KeypointInit` trains them then.
        """
        for path in (default_weights_path(), cached_weights_path()):
            if path.exists():
                return cls.from_file(str(path))
        raise FileNotFoundError(
            f"the embedded keypoint initialiser {default_weights_path()} is missing (and no trained copy is cached "
            f"at {cached_weights_path()}); make it with `labelmill train initializer --out "
            f"{default_weights_path()}` (see docs/initializer.md)"
        )


def default_weights_path() -> Path:
    """Where the shipped default weights live (inside the installed ``labelmill.models.data``)."""
    return Path(str(importlib.resources.files("labelmill.models.data") / DEFAULT_WEIGHTS_FILE))


def cached_weights_path() -> Path:
    """Where weights trained on first use are cached: ``$LABELMILL_CACHE`` or ``~/.cache/labelmill``."""
    root = os.environ.get(_CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "labelmill")
    return Path(root) / DEFAULT_WEIGHTS_FILE
