"""HMR in SPIN's layout: ResNet-50 keys, checkpoint loading, rotations, crops, camera mapping, operator."""

from __future__ import annotations

import io
import logging
import pickle

import cv2
import numpy as np
import pytest
import torch
from smplx.lbs import batch_rodrigues

from labelmill.models.body_model import BodyModel
from labelmill.models.camera import project
from labelmill.models.hmr import (
    HMR,
    SPIN_TO_LABELMILL,
    HMRCheckpointError,
    MeanParams,
    crop_camera_to_pixels,
    crop_person,
    crop_points_to_image,
    default_mean_params,
    labelmill_pose_from_rotmats,
    load_hmr_checkpoint,
    load_mean_params,
    rot6d_to_rotmat,
    rotmat_to_axis_angle,
    rotmat_to_rot6d,
)
from labelmill.models.resnet import ResNet50
from labelmill.operators.pose3d.hmr_init import HMRInit, HMRInitConfig, nearest_valid_index

BN_KEYS = (("weight", 1), ("bias", 1), ("running_mean", 1), ("running_var", 1), ("num_batches_tracked", 0))


def expected_resnet50_shapes(num_classes: int | None) -> dict[str, tuple[int, ...]]:
    """torchvision resnet50's state_dict (names, order, shapes) written out from the architecture spec."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, out_c, in_c, k):
        shapes[f"{name}.weight"] = (out_c, in_c, k, k)

    def bn(name, c):
        for key, ndim in BN_KEYS:
            shapes[f"{name}.{key}"] = (c,) if ndim else ()

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    in_c = 64
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            prefix = f"layer{stage}.{b}"
            conv(f"{prefix}.conv1", width, in_c, 1)
            bn(f"{prefix}.bn1", width)
            conv(f"{prefix}.conv2", width, width, 3)
            bn(f"{prefix}.bn2", width)
            conv(f"{prefix}.conv3", 4 * width, width, 1)
            bn(f"{prefix}.bn3", 4 * width)
            if b == 0:
                conv(f"{prefix}.downsample.0", 4 * width, in_c, 1)
                bn(f"{prefix}.downsample.1", 4 * width)
            in_c = 4 * width
    if num_classes is not None:
        shapes["fc.weight"] = (num_classes, 2048)
        shapes["fc.bias"] = (num_classes,)
    return shapes


@pytest.fixture(scope="module")
def hmr() -> HMR:
    torch.manual_seed(0)
    model = HMR().eval()
    with torch.no_grad():  # make the regressor's residuals visible (SPIN initialises them tiny)
        for layer in (model.decpose, model.decshape, model.deccam):
            layer.weight.normal_(0, 0.02)
            layer.bias.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def checkpoint(hmr, tmp_path_factory) -> str:
    """``hmr`` saved in SPIN's released layout."""
    path = tmp_path_factory.mktemp("hmr") / "model_checkpoint.pt"
    torch.save({"model": hmr.state_dict(), "epoch": 3, "total_step_count": 1000,
                "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "betas": (0.9, 0.999)}]}}, path)
    return str(path)


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return BodyModel(dtype=torch.float64)


# ----------------------------------------------------------------------------- ResNet-50


@pytest.mark.parametrize("num_classes", [None, 1000])
def test_resnet50_state_dict_is_torchvision_layout(num_classes):
    model = ResNet50(num_classes=num_classes)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = expected_resnet50_shapes(num_classes)
    assert list(got) == list(expected)  # same names, same order
    assert got == expected
    assert len(got) == (320 if num_classes else 318)
    params = sum(p.numel() for p in model.parameters())
    assert params == (25_557_032 if num_classes else 23_508_032)


def test_resnet50_features_shape():
    model = ResNet50().eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2048)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model(torch.randn(1, 64, 64))


def test_hmr_state_dict_is_spin_layout(hmr):
    state = hmr.state_dict()
    trunk = expected_resnet50_shapes(None)
    head = {
        "fc1.weight": (1024, 2048 + 144 + 10 + 3), "fc1.bias": (1024,),
        "fc2.weight": (1024, 1024), "fc2.bias": (1024,),
        "decpose.weight": (144, 1024), "decpose.bias": (144,),
        "decshape.weight": (10, 1024), "decshape.bias": (10,),
        "deccam.weight": (3, 1024), "deccam.bias": (3,),
        "init_pose": (1, 144), "init_shape": (1, 10), "init_cam": (1, 3),
    }
    assert {k: tuple(v.shape) for k, v in state.items()} == {**trunk, **head}


# ----------------------------------------------------------------------------- rotations


def test_rot6d_gives_proper_rotations_in_spin_layout():
    gen = torch.Generator().manual_seed(1)
    rot = rot6d_to_rotmat(torch.randn(50, 24, 6, generator=gen, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand_as(rot)
    torch.testing.assert_close(rot.transpose(-1, -2) @ rot, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(50, 24, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(rot6d_to_rotmat(rotmat_to_rot6d(rot)), rot, atol=1e-12, rtol=0)
    # SPIN stores the 3x2 matrix [a1 a2] row by row: [a1x, a2x, a1y, a2y, a1z, a2z]
    torch.testing.assert_close(rot6d_to_rotmat(torch.tensor([1.0, 0, 0, 1, 0, 0])), torch.eye(3))
    torch.testing.assert_close(rot6d_to_rotmat(torch.tensor([1.0, 0, 0, -1, 0, 0])), torch.diag(torch.tensor([1.0, -1, -1])))
    torch.testing.assert_close(rot6d_to_rotmat(torch.tensor([0.0, -1, 1, 0, 0, 0])),
                               torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]))  # 90 degrees about z


def test_axis_angle_round_trip():
    rng = np.random.default_rng(2)
    axes = rng.normal(size=(200, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0, np.pi - 1e-3, size=(200, 1))
    angles[:3] = [[0.0], [1e-7], [np.pi - 1e-6]]
    axis_angle = axes * angles
    rotmats = batch_rodrigues(torch.from_numpy(axis_angle))
    back = rotmat_to_axis_angle(rotmats)
    np.testing.assert_allclose(back[3:], axis_angle[3:], atol=1e-7)  # smplx adds 1e-8 to angles
    np.testing.assert_allclose(batch_rodrigues(torch.from_numpy(back)).numpy(), rotmats.numpy(), atol=1e-7)
    assert rotmat_to_axis_angle(np.zeros((0, 3, 3))).shape == (0, 3)


def test_outputs_shapes_and_pose_conversion(hmr):
    with torch.no_grad():
        out = hmr(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    assert out.rotmats.shape == (2, 24, 3, 3) and out.pose6d.shape == (2, 144)
    assert out.betas.shape == (2, 10) and out.camera.shape == (2, 3)
    global_orient, body_pose = labelmill_pose_from_rotmats(out.rotmats)
    assert global_orient.shape == (2, 3) and body_pose.shape == (2, 69)
    aa = torch.from_numpy(np.concatenate([global_orient, body_pose], axis=1).reshape(-1, 3))
    rebuilt = batch_rodrigues(aa).reshape(2, 24, 3, 3).numpy()
    expected = out.rotmats.double().numpy().copy()
    expected[:, 0] = SPIN_TO_LABELMILL @ expected[:, 0]
    np.testing.assert_allclose(rebuilt, expected, atol=1e-6)


def test_ief_adds_residuals_for_each_iteration():
    model = HMR(num_iterations=3).eval()
    with torch.no_grad():
        for layer in (model.decpose, model.decshape, model.deccam):
            layer.weight.zero_()
            layer.bias.zero_()
        model.deccam.bias.fill_(0.1)
        out = model(torch.zeros(1, 3, 32, 32))
        out2 = model(torch.zeros(1, 3, 32, 32), num_iterations=2)
    torch.testing.assert_close(out.camera, torch.tensor([[0.9 + 0.3, 0.3, 0.3]]))
    torch.testing.assert_close(out2.camera, torch.tensor([[0.9 + 0.2, 0.2, 0.2]]))
    torch.testing.assert_close(out.pose6d, model.init_pose)
    assert torch.all(out.betas == 0)


# ----------------------------------------------------------------------------- mean parameters


def test_default_mean_is_upright_rest_pose():
    mean = default_mean_params()
    rot = rot6d_to_rotmat(torch.from_numpy(mean.pose6d).reshape(24, 6)).numpy()
    np.testing.assert_allclose(rot[0], np.diag([1.0, -1.0, -1.0]))
    np.testing.assert_allclose(rot[1:], np.tile(np.eye(3), (23, 1, 1)))
    assert np.all(mean.betas == 0) and mean.camera.tolist() == pytest.approx([0.9, 0, 0])
    global_orient, body_pose = labelmill_pose_from_rotmats(rot[None])
    np.testing.assert_allclose(global_orient, 0, atol=1e-12)  # labelmill's upright is the identity
    np.testing.assert_allclose(body_pose, 0, atol=1e-12)


def test_mean_params_npz(tmp_path):
    rng = np.random.default_rng(4)
    pose, shape, cam = rng.normal(size=144), rng.normal(size=10), np.array([0.8, 0.1, -0.1])
    np.savez(tmp_path / "smpl_mean_params.npz", pose=pose, shape=shape.astype(np.float64), cam=cam)
    mean = load_mean_params(str(tmp_path / "smpl_mean_params.npz"))
    model = HMR(mean_params=str(tmp_path / "smpl_mean_params.npz"))
    np.testing.assert_allclose(model.init_pose.numpy()[0], pose.astype(np.float32))
    np.testing.assert_allclose(model.init_shape.numpy()[0], mean.betas)
    assert model.init_cam.dtype == torch.float32
    np.savez(tmp_path / "bad.npz", pose=pose, cam=cam)
    with pytest.raises(HMRCheckpointError, match=r"bad\.npz.*shape"):
        load_mean_params(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="pose6d must have 144"):
        MeanParams(pose6d=np.zeros(72), betas=np.zeros(10), camera=np.zeros(3))


# ----------------------------------------------------------------------------- checkpoints


def test_spin_checkpoint_round_trip(hmr, checkpoint):
    loaded = load_hmr_checkpoint(checkpoint)
    assert not loaded.training
    for key, value in hmr.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = hmr(images), loaded(images)
    for name in ("rotmats", "pose6d", "betas", "camera"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_bare_and_dataparallel_state_dicts_load(hmr, tmp_path):
    state = hmr.state_dict()
    torch.save(state, tmp_path / "bare.pt")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "dp.pt")
    for name in ("bare.pt", "dp.pt"):
        loaded = load_hmr_checkpoint(str(tmp_path / name))
        assert torch.equal(loaded.deccam.bias, hmr.deccam.bias)


def test_missing_unexpected_and_wrong_shape_keys(hmr, tmp_path, caplog):
    state = dict(hmr.state_dict())
    del state["layer3.2.conv2.weight"]
    state["smpl.betas"] = torch.zeros(10)
    path = tmp_path / "partial.pt"
    torch.save({"model": state}, path)
    with pytest.raises(HMRCheckpointError, match=r"partial\.pt.*missing 1 keys: layer3\.2\.conv2\.weight.*smpl\.betas"):
        load_hmr_checkpoint(str(path))
    with caplog.at_level(logging.WARNING):
        loaded = load_hmr_checkpoint(str(path), strict=False)
    assert "layer3.2.conv2.weight" in caplog.text
    assert torch.equal(loaded.fc1.weight, hmr.fc1.weight)
    state = dict(hmr.state_dict())
    state["decshape.weight"] = torch.zeros(16, 1024)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(HMRCheckpointError, match=r"decshape\.weight \(16, 1024\) \(expected \(10, 1024\)\)"):
        load_hmr_checkpoint(str(tmp_path / "shape.pt"), strict=False)


def test_missing_mean_buffers_filled_from_mean_params(hmr, tmp_path):
    state = {k: v for k, v in hmr.state_dict().items() if not k.startswith("init_")}
    torch.save({"model": state}, tmp_path / "nobuf.pt")
    with pytest.raises(HMRCheckpointError, match="init_pose.*pass mean_params"):
        load_hmr_checkpoint(str(tmp_path / "nobuf.pt"))
    np.savez(tmp_path / "mean.npz", pose=np.full(144, 0.5), shape=np.ones(10), cam=np.array([1.0, 0, 0]))
    loaded = load_hmr_checkpoint(str(tmp_path / "nobuf.pt"), mean_params=str(tmp_path / "mean.npz"))
    assert torch.all(loaded.init_pose == 0.5) and torch.all(loaded.init_shape == 1)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_or_unreadable_checkpoints_are_refused(tmp_path):
    torch.save({"model": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(HMRCheckpointError, match=r"evil\.pt.*refusing"):
        load_hmr_checkpoint(str(tmp_path / "evil.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HMRCheckpointError, match=r"junk\.pt"):
        load_hmr_checkpoint(str(tmp_path / "junk.pt"))
    with pytest.raises(HMRCheckpointError, match="not found"):
        load_hmr_checkpoint(str(tmp_path / "absent.pt"))
    torch.save({"model": "weights"}, tmp_path / "odd.pt")
    with pytest.raises(HMRCheckpointError, match=r"odd\.pt.*not a state_dict"):
        load_hmr_checkpoint(str(tmp_path / "odd.pt"))


# ----------------------------------------------------------------------------- crops and cameras


@pytest.mark.parametrize("bbox, size", [((40.0, 30.0, 90.0, 130.0), 224), ((10.0, 5.0, 630.0, 470.0), 64)])
def test_crop_geometry(bbox, size):
    """A dot at a known image point lands where the crop's affine says (upsampling and shrinking paths)."""
    image = np.zeros((480, 640, 3), np.uint8)
    point = np.array([70.0, 100.0]) if size == 224 else np.array([300.0, 200.0])
    cv2.circle(image, (int(point[0]), int(point[1])), 6 if size == 224 else 20, (255, 255, 255), -1)
    crop = crop_person(image, bbox, size=size, scale=1.2)
    assert crop.image.shape == (3, size, size) and crop.image.dtype == torch.float32
    assert crop.side == pytest.approx(1.2 * max(bbox[2] - bbox[0], bbox[3] - bbox[1]))
    brightness = crop.image[0].numpy()
    weights = np.clip(brightness - brightness.min(), 0, None)
    ys, xs = np.mgrid[:size, :size]
    peak = np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()
    expected = crop.image_to_crop @ np.append(point, 1.0)
    assert np.abs(peak - expected).max() < 0.3
    normalised = (expected + 0.5) / size * 2 - 1  # crop pixel centre -> [-1, 1]
    np.testing.assert_allclose(crop_points_to_image(normalised[None], crop.center, crop.side)[0], point, atol=1e-9)
    # outside the image is black: ImageNet-normalised zero
    corner = crop_person(image, (600.0, 440.0, 700.0, 540.0), size=16).image[:, -1, -1]
    np.testing.assert_allclose(corner.numpy(), -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="x1 > x0"):
        crop_person(image, (10.0, 10.0, 10.0, 50.0))


def test_camera_mapping_projects_the_same_points_both_ways(body):
    """SPIN's crop projection of SPIN-frame joints == labelmill's projection of the mapped parameters."""
    rng = np.random.default_rng(6)
    batch = 5
    betas = torch.from_numpy(rng.normal(0, 1.0, size=(batch, 10)))
    body_pose = torch.from_numpy(rng.normal(0, 0.3, size=(batch, 69)))
    tilt = batch_rodrigues(torch.from_numpy(rng.normal(0, 0.4, size=(batch, 3))))
    root_spin = torch.from_numpy(SPIN_TO_LABELMILL) @ tilt  # roughly upright in SPIN's y-down frame
    orient_spin = torch.from_numpy(rotmat_to_axis_angle(root_spin))
    joints_spin = body.joints_only(betas, orient_spin, body_pose).joints.numpy()  # (B, 24, 3)

    camera = np.stack([rng.uniform(0.6, 1.1, batch), rng.normal(0, 0.2, batch), rng.normal(0, 0.2, batch)], 1)
    center = rng.uniform(100, 500, size=(batch, 2))
    side = rng.uniform(80, 400, size=batch)
    normalised = camera[:, None, :1] * (joints_spin[..., :2] + camera[:, None, 1:])
    pixels_spin = crop_points_to_image(normalised, center, side)

    rotmats = np.tile(np.eye(3), (batch, 24, 1, 1))
    rotmats[:, 0] = root_spin.numpy()
    rotmats[:, 1:] = batch_rodrigues(body_pose.reshape(-1, 3)).reshape(batch, 23, 3, 3).numpy()
    global_orient, body_pose_lm = labelmill_pose_from_rotmats(rotmats)
    np.testing.assert_allclose(body_pose_lm, body_pose.numpy(), atol=1e-9)
    rest = body.joints_only(betas, torch.zeros(batch, 3, dtype=torch.float64), torch.zeros(batch, 69, dtype=torch.float64))
    root_joint = rest.joints[:, 0].numpy()
    joints_lm = body.joints_only(betas, torch.from_numpy(global_orient), body_pose).joints.numpy()
    pixels_lm = project(joints_lm, crop_camera_to_pixels(camera, center, side, root_joint))
    np.testing.assert_allclose(pixels_lm, pixels_spin, atol=1e-6)
    # the pelvis term matters: without it the projections are off by 2 * s_px * root_y
    wrong = project(joints_lm, crop_camera_to_pixels(camera, center, side, np.zeros_like(root_joint)))
    assert np.abs(wrong - pixels_spin).max() > 5.0


# ----------------------------------------------------------------------------- operator


def test_nearest_valid_index():
    valid = np.array([False, True, False, False, True, False])
    assert nearest_valid_index(valid).tolist() == [1, 1, 1, 4, 4, 4]
    assert nearest_valid_index(np.array([True, False, True])).tolist() == [0, 0, 2]  # tie -> earlier
    with pytest.raises(ValueError):
        nearest_valid_index(np.zeros(3, bool))


@pytest.fixture(scope="module")
def mean_only_checkpoint(tmp_path_factory) -> str:
    """A checkpoint whose regressor outputs the mean, so the operator's outputs are known exactly."""
    torch.manual_seed(1)
    model = HMR()
    with torch.no_grad():
        for layer in (model.decpose, model.decshape, model.deccam):
            layer.weight.zero_()
            layer.bias.zero_()
    path = tmp_path_factory.mktemp("hmr_mean") / "model_checkpoint.pt"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def _jpegs(num_frames: int, height: int, width: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [cv2.imencode(".jpg", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))[1].tobytes()
            for _ in range(num_frames)]


def test_operator_on_fake_videos(mean_only_checkpoint, body):
    op = HMRInit(checkpoint=mean_only_checkpoint, batch_size=2, crop_size=32)
    boxes_a = np.array([[10, 20, 50, 90], [0, 0, 0, 0], [12, 22, 52, 92]], np.float32)
    boxes_b = np.array([[0, 0, 0, 0], [30, 10, 70, 60]], np.float32)
    batch = {
        "key": ["a", "b", "broken", "nobox", "skipped"],
        "frames_jpeg": [_jpegs(3, 96, 128, 0), _jpegs(2, 48, 64, 1), [b"\xff\xd8garbage"] * 2, _jpegs(1, 48, 64, 2), []],
        "main_boxes": [boxes_a, boxes_b, np.array([[1, 1, 20, 20]] * 2, np.float32), np.zeros((1, 4), np.float32),
                       np.zeros((0, 4), np.float32)],
        "scale_x": np.array([1.0, 0.5, 1.0, 1.0, np.nan]),
        "scale_y": np.array([1.0, 0.5, 1.0, 1.0, np.nan]),
        "status": ["pending", "pending", "pending", "pending", "failed"],
        "reason": [None, None, None, None, "decode failed upstream"],
    }
    out = op(batch)
    assert out["status"] == ["pending", "pending", "failed", "failed", "failed"]
    assert "broken" in out["reason"][2] and "cannot be decoded" in out["reason"][2]
    assert "no frame has a person box" in out["reason"][3]
    assert out["reason"][4] == "decode failed upstream"
    assert out["key"] == batch["key"]  # inputs pass through
    for name, width in (("init_betas", 10), ("init_global_orient", 3), ("init_body_pose", 69), ("init_camera", 3)):
        assert [a.shape for a in out[name]] == [(3, width), (2, width), (0, width), (0, width), (0, width)]
        assert all(a.dtype == np.float32 for a in out[name])

    # the regressor outputs the mean: upright rest pose, zero betas, camera (0.9, 0, 0) in the crop
    np.testing.assert_allclose(out["init_global_orient"][0], 0, atol=1e-6)
    np.testing.assert_allclose(out["init_body_pose"][1], 0, atol=1e-6)
    np.testing.assert_allclose(out["init_betas"][0], 0, atol=0)
    root_y = body.joints_only(torch.zeros(1, 10), torch.zeros(1, 3), torch.zeros(1, 69)).joints[0, 0, 1].item()

    def expected_camera(box):  # original-frame pixels
        side = 1.2 * max(box[2] - box[0], box[3] - box[1])
        s_px = 0.9 * side / 2
        return [s_px, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2 + s_px * 2 * root_y]

    cams_a = [expected_camera(boxes_a[0]), expected_camera(boxes_a[0]), expected_camera(boxes_a[2])]  # frame 1: nearest, earlier
    np.testing.assert_allclose(out["init_camera"][0], cams_a, rtol=1e-5)
    # video b: boxes are in original pixels (frames stored at half size): cameras come back in original pixels
    np.testing.assert_allclose(out["init_camera"][1], [expected_camera(boxes_b[1])] * 2, rtol=1e-5)


def test_operator_config_and_pickling(mean_only_checkpoint):
    with pytest.raises(ValueError, match="batch_size"):
        HMRInitConfig(checkpoint="x.pt", batch_size=0)
    with pytest.raises(ValueError, match="crop_scale"):
        HMRInitConfig(checkpoint="x.pt", crop_scale=0.0)
    op = HMRInit.from_config(HMRInitConfig(checkpoint=mean_only_checkpoint, crop_size=32))
    op.setup()
    data = pickle.dumps(op)
    assert len(data) < 10_000  # the loaded network is not pickled
    clone = pickle.loads(data)
    assert clone.config == op.config
    with pytest.raises(ValueError, match="main_boxes"):
        clone({"frames_jpeg": [[]]})
    with pytest.raises(HMRCheckpointError, match="not found"):
        HMRInit(checkpoint="/nonexistent/model_checkpoint.pt").setup()


def test_checkpoint_loads_from_bytes_buffer_layout(hmr):
    """torch.save into memory and read through fsspec's memory filesystem (any fsspec URL works)."""
    import fsspec

    buffer = io.BytesIO()
    torch.save({"model": hmr.state_dict()}, buffer)
    with fsspec.open("memory://hmr/ckpt.pt", "wb") as f:
        f.write(buffer.getvalue())
    loaded = load_hmr_checkpoint("memory://hmr/ckpt.pt")
    assert torch.equal(loaded.init_cam, hmr.init_cam)
