"""SMPL body model on top of ``smplx.SMPL``: joints, COCO-17 keypoints, vertices, and a fast path.

``BodyModel(path=None)`` uses the embedded default body (see :mod:`labelmill.models.default_body`);
``BodyModel(path="/data/SMPL_NEUTRAL.pkl")`` loads the licensed SMPL model without chumpy
(``.pkl`` through :func:`labelmill.models.legacy_pickle.load_legacy_pickle`, or ``.npz``), and
both are handed to ``smplx.SMPL`` through its ``data_struct`` argument, so the full forward pass
is smplx's own. :meth:`BodyModel.joints_only` computes the same 24 joints and 17 keypoints
without skinning the 6890-vertex mesh (see :mod:`labelmill.models.body_kernels`).

Inputs are axis-angle (``global_orient (B, 3)``, ``body_pose (B, 69)``) and shape
coefficients ``betas (B, K)`` or ``(1, K)`` (shared by the batch). Outputs are in metres in the
body frame (SMPL: y up, facing +z, no translation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Any, Mapping

import numpy as np
import smplx
import torch
from smplx.utils import Struct

from labelmill.models import body_kernels, coco
from labelmill.models.default_body import default_body_arrays
from labelmill.models.legacy_pickle import LegacyPickleError, load_legacy_pickle
from labelmill.models.model_files import npz_arrays

__all__ = ["BodyModelError", "BodyModelConfig", "BodyOutput", "BodyModel", "load_body_arrays"]

NUM_JOINTS = 24
NUM_VERTICES = 6890
NUM_POSE_FEATURES = 207
_REQUIRED_KEYS = ("v_template", "f", "kintree_table", "J_regressor", "weights", "shapedirs", "posedirs")


class BodyModelError(ValueError):
    """A body model file is missing, unreadable or not an SMPL model. The message names the file."""


@dataclasses.dataclass
class BodyModelConfig:
    """Which body model to use."""

    path: str | None = None  # SMPL .pkl or .npz (local path or fsspec URL); None = embedded default body
    num_betas: int = 10  # shape coefficients used (at most the file's number of shape directions)
    # Load a .pkl with Python's full unpickler (runs whatever the file asks): only for files you
    # trust. Off: only the numpy/scipy/chumpy globals SMPL files need (models/legacy_pickle.py).
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.trust_pickle, bool):
            raise ValueError(f"trust_pickle must be true or false, got {self.trust_pickle!r}")
        if self.path is not None and (not isinstance(self.path, str) or not self.path.strip()):
            raise ValueError(f"path must be a non-empty path to an SMPL .pkl/.npz or null, got {self.path!r}")
        if isinstance(self.num_betas, bool) or not isinstance(self.num_betas, int) or not 1 <= self.num_betas <= 300:
            raise ValueError(f"num_betas must be an integer in 1..300, got {self.num_betas!r}")


@dataclasses.dataclass
class BodyOutput:
    """What a body model pass returns (metres, body frame)."""

    joints: torch.Tensor  # (B, 24, 3) SMPL joints
    keypoints3d: torch.Tensor  # (B, 17, 3) COCO-17 keypoints in 3D
    vertices: torch.Tensor | None = None  # (B, 6890, 3) mesh vertices, when asked for


def _read_bytes(path: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as exc:
        raise BodyModelError(f"body model file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise BodyModelError(f"body model file {path} cannot be read: {exc}") from exc


def load_body_arrays(path: str, *, trust_pickle: bool = False) -> dict[str, Any]:
    """The SMPL arrays of a ``.pkl`` (chumpy-free) or ``.npz`` file, checked for keys and shapes.

    ``J_regressor`` may stay a scipy sparse matrix (as in SMPL's pickles); extra keys are kept.
    Raises :class:`BodyModelError` naming the file and the missing key or wrong shape.
    """
    lower = path.lower()
    if not lower.endswith((".pkl", ".npz")):
        raise BodyModelError(f"body model file {path}: expected an SMPL .pkl or .npz file")
    data = _read_bytes(path)
    if lower.endswith(".pkl"):
        try:
            arrays = load_legacy_pickle(data, trust=trust_pickle)
        except LegacyPickleError as exc:
            raise BodyModelError(f"body model file {path}: {str(exc).removeprefix('<bytes>: ')}") from None
        if not isinstance(arrays, dict):
            raise BodyModelError(f"body model file {path}: holds a {type(arrays).__name__}, not a dict of arrays")
    else:
        try:
            arrays = npz_arrays(data, what=f"body model file {path}")
        except ValueError as exc:
            raise BodyModelError(str(exc)) from None
    check_body_arrays(arrays, source=path)
    return arrays


def check_body_arrays(arrays: Mapping[str, Any], *, source: str, num_betas: int = 1) -> None:
    """Raise :class:`BodyModelError` unless ``arrays`` hold an SMPL model (24 joints, 6890 vertices)."""
    missing = [key for key in _REQUIRED_KEYS if key not in arrays]
    if missing:
        raise BodyModelError(
            f"body model file {source}: missing key '{missing[0]}' (SMPL needs {', '.join(_REQUIRED_KEYS)}; "
            f"found {', '.join(sorted(map(str, arrays))) or 'nothing'})"
        )
    shapes = {key: tuple(getattr(arrays[key], "shape", None) or np.shape(arrays[key])) for key in _REQUIRED_KEYS}
    num_joints = shapes["kintree_table"][1] if len(shapes["kintree_table"]) == 2 else -1
    if shapes["kintree_table"][:1] != (2,) or num_joints != NUM_JOINTS:
        raise BodyModelError(
            f"body model file {source}: 'kintree_table' has shape {shapes['kintree_table']}, expected (2, 24) "
            "(SMPL's 24 joints; SMPL+H/SMPL-X files are not supported)"
        )
    num_dirs = shapes["shapedirs"][2] if len(shapes["shapedirs"]) == 3 else 0
    expected = {
        "v_template": (NUM_VERTICES, 3),
        "J_regressor": (NUM_JOINTS, NUM_VERTICES),
        "weights": (NUM_VERTICES, NUM_JOINTS),
        "shapedirs": (NUM_VERTICES, 3, num_dirs),
        "posedirs": (NUM_VERTICES, 3, NUM_POSE_FEATURES),
    }
    for key, shape in expected.items():
        if shapes[key] != shape:
            raise BodyModelError(f"body model file {source}: '{key}' has shape {shapes[key]}, expected {shape}")
    if len(shapes["f"]) != 2 or shapes["f"][1] != 3:
        raise BodyModelError(f"body model file {source}: 'f' has shape {shapes['f']}, expected (F, 3) triangles")
    if num_dirs < num_betas:
        raise BodyModelError(
            f"body model file {source}: has {num_dirs} shape directions, fewer than num_betas={num_betas}"
        )


class BodyModel(torch.nn.Module):
    """SMPL (or the embedded default body) with COCO-17 keypoints and a joints-only fast path.

    ``forward`` runs smplx's full SMPL forward (all vertices); ``joints_only`` gives the same
    joints and keypoints (to float rounding) without skinning the mesh, and is differentiable.
    """

    def __init__(self, *, path: str | None = None, num_betas: int = 10, dtype: torch.dtype = torch.float32,
                 trust_pickle: bool = False) -> None:
        super().__init__()
        BodyModelConfig(path=path, num_betas=num_betas, trust_pickle=trust_pickle)  # validates the arguments
        source = path if path is not None else "<embedded default body>"
        arrays = default_body_arrays() if path is None else load_body_arrays(path, trust_pickle=trust_pickle)
        check_body_arrays(arrays, source=source, num_betas=num_betas)
        data = {key: arrays[key] for key in _REQUIRED_KEYS}
        data["shapedirs"] = np.asarray(arrays["shapedirs"])[:, :, :num_betas]
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning for 10-direction models
            self.smpl = smplx.SMPL(
                model_path=source,
                data_struct=Struct(**data),
                num_betas=num_betas,
                create_betas=False,
                create_global_orient=False,
                create_body_pose=False,
                create_transl=False,
                dtype=dtype,
            )
        if self.smpl.num_betas != num_betas:
            raise BodyModelError(f"body model file {source}: smplx uses only {self.smpl.num_betas} shape "
                                 f"directions of this file, not num_betas={num_betas}")
        self.source = source
        self._num_betas = num_betas
        face_ids = torch.tensor(coco.face_landmark_vertex_ids(), dtype=torch.long)
        self.register_buffer("face_vertex_ids", face_ids, persistent=False)
        self._register_fast_path_buffers(face_ids)
        self._parents_list = [int(p) for p in self.smpl.parents.tolist()]
        self._parents_list[0] = -1
        self._levels = body_kernels.kinematic_levels(self._parents_list)

    @classmethod
    def from_config(cls, cfg: BodyModelConfig, *, dtype: torch.dtype = torch.float32) -> "BodyModel":
        return cls(path=cfg.path, num_betas=cfg.num_betas, dtype=dtype, trust_pickle=cfg.trust_pickle)

    def _register_fast_path_buffers(self, landmark_ids: torch.Tensor) -> None:
        """Fold the regressor into template/shape directions; keep the landmark rows (float64 maths)."""
        smpl = self.smpl
        double = torch.float64
        j_regressor = smpl.J_regressor.to(double)
        v_template = smpl.v_template.to(double)
        shapedirs = smpl.shapedirs.to(double)
        joint_template, joint_shapedirs = body_kernels.fold_joint_regressor(j_regressor, v_template, shapedirs)
        num_vertices = v_template.shape[0]
        posedirs = smpl.posedirs.reshape(-1, num_vertices, 3)[:, landmark_ids]  # (207, L, 3)
        fast = {
            "joint_template": joint_template,
            "joint_shapedirs": joint_shapedirs,
            "landmark_template": v_template[landmark_ids],
            "landmark_shapedirs": shapedirs[landmark_ids],
            "landmark_posedirs": posedirs.reshape(posedirs.shape[0], -1),
            "landmark_weights": smpl.lbs_weights[landmark_ids],
        }
        for name, value in fast.items():
            self.register_buffer(name, value.to(smpl.v_template.dtype).contiguous(), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's tensors (inputs are cast to it)."""
        return self.joint_template.dtype

    @property
    def num_betas(self) -> int:
        return self._num_betas

    @property
    def faces(self) -> np.ndarray:
        """Mesh triangles (F, 3) as int64 vertex indices."""
        return np.asarray(self.smpl.faces, dtype=np.int64)

    @property
    def parents(self) -> torch.Tensor:
        """(24,) parent joint of each joint (-1 for the root)."""
        return self.smpl.parents

    def _check_inputs(
        self, betas: torch.Tensor, global_orient: torch.Tensor, body_pose: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if global_orient.ndim != 2 or global_orient.shape[1] != 3:
            raise ValueError(f"global_orient must have shape (B, 3), got {tuple(global_orient.shape)}")
        batch = global_orient.shape[0]
        if body_pose.shape != (batch, 69):
            raise ValueError(
                f"body_pose must have shape ({batch}, 69) like global_orient, got {tuple(body_pose.shape)}"
            )
        if betas.ndim != 2 or betas.shape[1] != self._num_betas or betas.shape[0] not in (1, batch):
            k = self._num_betas
            raise ValueError(f"betas must have shape ({batch}, {k}) or (1, {k}), got {tuple(betas.shape)}")
        return betas.to(self.dtype), global_orient.to(self.dtype), body_pose.to(self.dtype)

    def forward(
        self,
        betas: torch.Tensor,
        global_orient: torch.Tensor,
        body_pose: torch.Tensor,
        *,
        return_vertices: bool = False,
    ) -> BodyOutput:
        """Full SMPL forward through smplx.

        betas (B, K) or (1, K), global_orient (B, 3), body_pose (B, 69) axis-angle ->
        joints (B, 24, 3), keypoints3d (B, 17, 3), vertices (B, 6890, 3) if ``return_vertices``.
        """
        betas, global_orient, body_pose = self._check_inputs(betas, global_orient, body_pose)
        out = self.smpl(betas=betas, global_orient=global_orient, body_pose=body_pose, return_verts=True)
        joints = out.joints[:, :NUM_JOINTS]
        face_points = out.vertices.index_select(1, self.face_vertex_ids)
        keypoints = coco.assemble_coco17(joints, face_points)
        return BodyOutput(joints=joints, keypoints3d=keypoints, vertices=out.vertices if return_vertices else None)

    def joints_only(self, betas: torch.Tensor, global_orient: torch.Tensor, body_pose: torch.Tensor) -> BodyOutput:
        """Joints and COCO-17 keypoints without the mesh (equal to :meth:`forward`; differentiable).

        betas (B, K) or (1, K), global_orient (B, 3), body_pose (B, 69) ->
        joints (B, 24, 3), keypoints3d (B, 17, 3); vertices is None.
        """
        betas, global_orient, body_pose = self._check_inputs(betas, global_orient, body_pose)
        joints, face_points = body_kernels.joints_and_landmarks(
            betas,
            torch.cat([global_orient, body_pose], dim=1),
            joint_template=self.joint_template,
            joint_shapedirs=self.joint_shapedirs,
            parents=self._parents_list,
            levels=self._levels,
            landmark_template=self.landmark_template,
            landmark_shapedirs=self.landmark_shapedirs,
            landmark_posedirs=self.landmark_posedirs,
            landmark_weights=self.landmark_weights,
        )
        return BodyOutput(joints=joints, keypoints3d=coco.assemble_coco17(joints, face_points))

    def extra_repr(self) -> str:
        return f"source={self.source}, num_betas={self._num_betas}"
