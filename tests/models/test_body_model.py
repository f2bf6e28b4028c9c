"""BodyModel: smplx's full forward vs the joints-only fast path, loading SMPL files without chumpy."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from labelmill.models import coco
from labelmill.models.body_model import BodyModel, BodyModelConfig, BodyModelError, BodyOutput
from labelmill.models.default_body import default_body_arrays, save_body_npz


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return BodyModel()


@pytest.fixture(scope="module")
def body64() -> BodyModel:
    return BodyModel(dtype=torch.float64)


def random_inputs(batch: int, dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    betas = 1.5 * torch.randn(batch, 10, generator=gen, dtype=dtype)
    global_orient = 1.0 * torch.randn(batch, 3, generator=gen, dtype=dtype)
    body_pose = 0.5 * torch.randn(batch, 69, generator=gen, dtype=dtype)
    return betas, global_orient, body_pose


def test_forward_shapes_and_vertices_only_on_request(body):
    betas, go, bp = random_inputs(3)
    out = body(betas, go, bp)
    assert isinstance(out, BodyOutput)
    assert out.joints.shape == (3, 24, 3) and out.keypoints3d.shape == (3, 17, 3) and out.vertices is None
    out = body(betas, go, bp, return_vertices=True)
    assert out.vertices.shape == (3, 6890, 3)
    assert body.faces.shape == (13776, 3) and body.num_betas == 10


def test_keypoints_come_from_smpl_joints_and_face_vertices(body):
    betas, go, bp = random_inputs(2, seed=3)
    out = body(betas, go, bp, return_vertices=True)
    for coco_index, joint in coco.COCO17_FROM_SMPL_JOINT.items():
        torch.testing.assert_close(out.keypoints3d[:, coco_index], out.joints[:, joint], rtol=0, atol=0)
        assert coco.COCO17_NAMES[coco_index] == coco.SMPL_JOINT_NAMES[joint]
    from smplx.vertex_ids import vertex_ids

    for coco_index, landmark in coco.COCO17_FROM_LANDMARK.items():
        vertex = vertex_ids["smplh"][landmark]
        torch.testing.assert_close(out.keypoints3d[:, coco_index], out.vertices[:, vertex], rtol=0, atol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_joints_only_equals_smplx_full_forward(body, body64, dtype, atol):
    model = body if dtype == torch.float32 else body64
    betas, go, bp = random_inputs(16, dtype=dtype, seed=1)
    full = model(betas, go, bp)
    fast = model.joints_only(betas, go, bp)
    assert fast.vertices is None
    torch.testing.assert_close(fast.joints, full.joints, rtol=0, atol=atol)
    torch.testing.assert_close(fast.keypoints3d, full.keypoints3d, rtol=0, atol=atol)
    # The pose correctives matter for the face keypoints: without them the answer would differ.
    assert model.landmark_posedirs.abs().max() > 1e-3


def test_joints_only_broadcasts_shared_betas(body):
    betas, go, bp = random_inputs(16, seed=2)
    shared = betas[:1]
    fast = body.joints_only(shared, go, bp)
    torch.testing.assert_close(fast.joints, body(shared, go, bp).joints, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.keypoints3d, body(shared.expand(16, -1), go, bp).keypoints3d, rtol=0, atol=1e-5)


def test_joints_only_is_differentiable(body):
    betas, go, bp = (t.clone().requires_grad_(True) for t in random_inputs(4, seed=4))
    out = body.joints_only(betas, go, bp)
    (out.joints.square().sum() + out.keypoints3d.square().sum()).backward()
    for name, tensor in (("betas", betas), ("global_orient", go), ("body_pose", bp)):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), name
        assert tensor.grad.abs().sum() > 0, name


def test_gradients_match_full_forward(body64):
    inputs = random_inputs(2, dtype=torch.float64, seed=5)
    grads = []
    for fn in (body64.joints_only, body64.forward):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        out.keypoints3d.sum().backward()
        grads.append([t.grad for t in leaves])
    for fast, full in zip(*grads):
        torch.testing.assert_close(fast, full, rtol=1e-8, atol=1e-10)


def test_bad_input_shapes_are_named(body):
    betas, go, bp = random_inputs(2)
    with pytest.raises(ValueError, match="body_pose"):
        body(betas, go, bp[:, :66])
    with pytest.raises(ValueError, match="betas"):
        body.joints_only(betas[:, :8], go, bp)
    with pytest.raises(ValueError, match="global_orient"):
        body.joints_only(betas, go[:, :2], bp)


def _install_fake_chumpy(monkeypatch) -> type:
    """A stand-in ``chumpy`` whose ``Ch`` pickles as ``chumpy.ch.Ch`` with its array under 'x'."""

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    module.Ch = Ch
    package.ch = module
    monkeypatch.setitem(sys.modules, "chumpy", package)
    monkeypatch.setitem(sys.modules, "chumpy.ch", module)
    return Ch


def test_chumpy_pickle_loads_without_chumpy(tmp_path, monkeypatch, body):
    arrays = default_body_arrays()
    with monkeypatch.context() as patch:
        Ch = _install_fake_chumpy(patch)
        smpl_like = {
            "v_template": Ch(arrays["v_template"]),
            "shapedirs": Ch(arrays["shapedirs"]),
            "weights": Ch(arrays["weights"]),
            "posedirs": arrays["posedirs"],
            "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]),
            "kintree_table": arrays["kintree_table"],
            "f": arrays["f"].astype(np.uint32),
            "J": Ch(arrays["J_regressor"] @ arrays["v_template"]),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        data = pickle.dumps(smpl_like, protocol=2)
    assert b"chumpy.ch" in data and "chumpy" not in sys.modules  # the stand-in is gone again
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(data)  # a plain unpickler would need chumpy
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(data)

    loaded = BodyModel(path=str(path))
    betas, go, bp = random_inputs(4, seed=6)
    for fn in ("forward", "joints_only"):
        want, got = getattr(body, fn)(betas, go, bp), getattr(loaded, fn)(betas, go, bp)
        torch.testing.assert_close(got.joints, want.joints, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.keypoints3d, want.keypoints3d, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, body.faces)


def test_npz_round_trip_and_from_config(tmp_path, body):
    path = tmp_path / "body.npz"
    save_body_npz(str(path))
    loaded = BodyModel.from_config(BodyModelConfig(path=str(path)))
    betas, go, bp = random_inputs(3, seed=7)
    got, want = loaded.joints_only(betas, go, bp), body.joints_only(betas, go, bp)
    torch.testing.assert_close(got.keypoints3d, want.keypoints3d)


def test_more_shape_directions_than_used_are_cut(tmp_path):
    arrays = dict(default_body_arrays())
    arrays["shapedirs"] = np.concatenate([arrays["shapedirs"], np.ones((6890, 3, 10))], axis=2)  # more than used
    path = tmp_path / "wide.npz"
    save_body_npz(str(path), arrays)
    model = BodyModel(path=str(path), num_betas=10)
    assert model.smpl.shapedirs.shape == (6890, 3, 10)
    with pytest.raises(BodyModelError, match="num_betas"):
        BodyModel(num_betas=11)  # the default body has 10 directions


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.pkl", None, "does not exist"),
        ("garbage.pkl", b"this is not a pickle", "not a readable pickle"),
        ("garbage.npz", b"nor is this a zip", r"not an .npz \(zip\) archive \(starts with b'nor is t'\)"),
        ("broken.npz", b"PK\x03\x04 a truncated zip", "not a readable .npz"),
        ("model.txt", b"", "expected an SMPL .pkl or .npz"),
    ],
)
def test_unreadable_files_raise_body_model_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BodyModelError, match=message) as info:
        BodyModel(path=str(path))
    assert str(path) in str(info.value)


def test_missing_key_and_wrong_shapes_are_named(tmp_path):
    arrays = dict(default_body_arrays())
    del arrays["posedirs"]
    path = tmp_path / "no_posedirs.pkl"
    path.write_bytes(pickle.dumps(arrays))
    with pytest.raises(BodyModelError, match="missing key 'posedirs'") as info:
        BodyModel(path=str(path))
    assert str(path) in str(info.value)

    arrays = dict(default_body_arrays())
    arrays["kintree_table"] = np.zeros((2, 52), np.int64)  # an SMPL+H file
    path = tmp_path / "smplh.npz"
    save_body_npz(str(path), arrays)
    with pytest.raises(BodyModelError, match="kintree_table.*24"):
        BodyModel(path=str(path))

    arrays = dict(default_body_arrays())
    arrays["v_template"] = arrays["v_template"][:100]
    path = tmp_path / "small.npz"
    save_body_npz(str(path), arrays)
    with pytest.raises(BodyModelError, match="v_template"):
        BodyModel(path=str(path))


def test_pickle_with_foreign_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": types.SimpleNamespace()}))
    with pytest.raises(BodyModelError, match="evil.pkl"):
        BodyModel(path=str(path))


def test_config_validation():
    assert BodyModelConfig() == BodyModelConfig(path=None, num_betas=10)
    with pytest.raises(ValueError, match="num_betas"):
        BodyModelConfig(num_betas=0)
    with pytest.raises(ValueError, match="path"):
        BodyModelConfig(path="")
