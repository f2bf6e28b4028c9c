"""The keypoint initialiser: normalisation, files, training, the operator, evaluation and CLI."""

from __future__ import annotations

import argparse
import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from smplx.lbs import batch_rodrigues

from labelmill.models.body_model import BodyModel
from labelmill.models.initializer_training import (
    InitializerTrainingConfig,
    TrainingSources,
    joints_from_rotmats,
    train_initializer,
)
from labelmill.models.keypoint_initializer import (
    InitializerNetConfig,
    KeypointInitializer,
    default_weights_path,
    normalize_keypoints,
    rot6d_to_rotmat,
    rotmat_to_axis_angle,
    rotmat_to_rot6d,
)
from labelmill.operators.pose3d.keypoint_init import (
    KeypointInit,
    fill_from_nearest,
    motion_library_frames,
    synthetic_training_sources,
)

TINY_NET = InitializerNetConfig(hidden=32, encoder_layers=1, regressor_layers=1, iterations=2)


def _tiny_config(**overrides) -> InitializerTrainingConfig:
    values = dict(steps=3, batch_size=32, pose_pool=64, log_every=0, seed=11)
    values.update(overrides)
    return InitializerTrainingConfig(**values)


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return BodyModel()


@pytest.fixture(scope="module")
def tiny_model(body) -> KeypointInitializer:
    return train_initializer(synthetic_training_sources(), config=_tiny_config(), net=TINY_NET, body_model=body)


@pytest.fixture(scope="module")
def person_keypoints(body) -> np.ndarray:
    """(8, 17, 3) projected keypoints of random motion frames, confidence 0.9."""
    pose, orient = motion_library_frames(8, seed=99)
    with torch.no_grad():
        out = body.joints_only(torch.zeros(1, 10), torch.as_tensor(orient).float(), torch.as_tensor(pose).float())
    kp = out.keypoints3d.double().numpy()
    xy = np.stack([200 * kp[..., 0] + 160, -200 * kp[..., 1] + 120], -1)
    return np.concatenate([xy, np.full(xy.shape[:-1] + (1,), 0.9)], -1).astype(np.float32)


def _random_model(seed: int = 0) -> KeypointInitializer:
    torch.manual_seed(seed)
    model = KeypointInitializer(config=TINY_NET)
    with torch.no_grad():  # a final layer far from zero, so the outputs depend strongly on the input
        model.regressor[-1].weight.normal_(0.0, 0.3)
    return model.eval()


# --------------------------------------------------------------------------- kernels


def test_rot6d_round_trip_and_gram_schmidt_gives_rotations():
    rot = torch.as_tensor(Rotation.random(50, random_state=0).as_matrix())
    assert torch.allclose(rot6d_to_rotmat(rotmat_to_rot6d(rot)), rot, atol=1e-12)
    decoded = rot6d_to_rotmat(torch.randn(50, 6, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    assert torch.allclose(decoded.transpose(1, 2) @ decoded, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(decoded), torch.ones(50, dtype=torch.float64))
    aa = np.random.default_rng(0).normal(size=(7, 3))
    half_turns = np.pi * np.array([[1.0, 0, 0], [0, -1, 0], [0.6, 0.8, 0], [0, 0.6, -0.8]])
    aa = np.concatenate([aa, half_turns, 1e-9 * aa[:2], np.zeros((1, 3))])
    back = rotmat_to_axis_angle(torch.as_tensor(Rotation.from_rotvec(aa).as_matrix())).numpy()
    assert np.allclose(Rotation.from_rotvec(back).as_matrix(), Rotation.from_rotvec(aa).as_matrix(), atol=1e-12)
    generic = np.r_[0:7, 11:14]  # a half turn's axis has two signs
    assert np.allclose(back[generic], Rotation.from_rotvec(aa[generic]).as_rotvec(), atol=1e-9)
    assert np.linalg.norm(back, axis=-1).max() <= np.pi + 1e-12


def test_joints_from_rotmats_matches_joints_only(body):
    pose, orient = motion_library_frames(6, seed=5)
    aa = torch.as_tensor(np.concatenate([orient, pose], 1)).float()
    betas = torch.randn(6, 10)
    ref = body.joints_only(betas, aa[:, :3], aa[:, 3:])
    joints, keypoints = joints_from_rotmats(body, betas, batch_rodrigues(aa.reshape(-1, 3)).reshape(6, 24, 3, 3))
    assert torch.allclose(joints, ref.joints, atol=1e-5)
    assert torch.allclose(keypoints, ref.keypoints3d, atol=1e-5)


def test_normalisation_ignores_missing_keypoints_and_fills_zeros(person_keypoints):
    kp = torch.as_tensor(person_keypoints[:1]).clone()
    kp[0, 3, :] = torch.tensor([5000.0, -5000.0, 0.0])  # a far-away missing point must not move the box
    features, centre, size = normalize_keypoints(kp, min_confidence=0.3)
    visible = kp[0, :, 2] > 0
    xy = kp[0, visible, :2]
    assert torch.allclose(centre[0], 0.5 * (xy.min(0).values + xy.max(0).values))
    assert torch.allclose(size[0], (xy.max(0).values - xy.min(0).values).max())
    assert torch.equal(features[0, 6:8], torch.zeros(2)) and features[0, 34 + 3] == 0


def test_translating_and_scaling_keypoints_changes_only_the_camera(person_keypoints):
    model = _random_model()
    kp = torch.as_tensor(person_keypoints)
    moved = kp.clone()
    moved[..., :2] = 2.5 * kp[..., :2] + torch.tensor([-130.0, 47.0])
    a, b = model.predict(kp), model.predict(moved)
    assert torch.allclose(a["rotmats"], b["rotmats"], atol=1e-4)
    assert torch.allclose(a["betas"], b["betas"], atol=1e-4)
    assert torch.allclose(b["camera"][:, 0], 2.5 * a["camera"][:, 0], rtol=1e-4)
    expected_u = 2.5 * a["camera"][:, 1:] + torch.tensor([-130.0, 47.0])
    assert torch.allclose(b["camera"][:, 1:], expected_u, atol=1e-2)
    assert (a["rotmats"][0] - a["rotmats"][1]).abs().max() > 1e-3  # the pose does depend on the keypoints


def test_missing_keypoints_give_finite_output(person_keypoints):
    model = _random_model()
    kp = np.repeat(person_keypoints[:1], 5, 0)
    kp[1, 5:, :] = 0.0  # only the face
    kp[2] = 0.0  # nothing at all
    kp[3, 1:] = 0.0  # a single keypoint
    kp[4, :, 2] = 0.1  # nothing confident: the box comes from every visible keypoint
    kp[4, 2, 0] = np.nan
    out = model.initialise(kp)
    for name, value in out.items():
        assert np.isfinite(value).all(), name
    assert out["camera"][:, 0].min() > 0


# --------------------------------------------------------------------------- files


def test_weights_round_trip_without_pickle(tmp_path, tiny_model, person_keypoints):
    path = tmp_path / "init.npz"
    tiny_model.save(str(path))
    with np.load(path, allow_pickle=False) as npz:  # plain arrays and a JSON string: no pickle anywhere
        arrays = {k: npz[k] for k in npz.files}
    assert all(v.dtype == np.float32 for k, v in arrays.items() if k != "metadata")
    meta = json.loads(str(arrays["metadata"]))
    assert meta["net"]["hidden"] == 32 and meta["training"]["config"]["seed"] == 11
    loaded = KeypointInitializer.from_file(str(path))
    a, b = tiny_model.initialise(person_keypoints), loaded.initialise(person_keypoints)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_bad_weight_files_raise_naming_the_file(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        KeypointInitializer.from_file(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        KeypointInitializer.from_file(str(tmp_path / "junk.npz"))
    buffer = io.BytesIO()
    np.savez(buffer, metadata=np.array(json.dumps({"format": "something-else"})))
    (tmp_path / "other.npz").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="other.npz.*format"):
        KeypointInitializer.from_file(str(tmp_path / "other.npz"))
    good = tmp_path / "good.npz"
    tiny_model.save(str(good))
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "cut.npz", "w") as dst:
        for item in src.namelist():
            if "regressor" not in item:
                dst.writestr(item, src.read(item))
    with pytest.raises(ValueError, match="cut.npz.*architecture"):
        KeypointInitializer.from_file(str(tmp_path / "cut.npz"))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="hidden"):
        InitializerNetConfig(hidden=0)
    with pytest.raises(ValueError, match="min_confidence"):
        InitializerNetConfig(min_confidence=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        InitializerTrainingConfig(batch_size=0)
    with pytest.raises(ValueError, match="keypoint_sigma_max"):
        InitializerTrainingConfig(keypoint_sigma_min=0.03, keypoint_sigma_max=0.01)
    with pytest.raises(ValueError, match="min_keypoints"):
        KeypointInit(min_keypoints=0)


# --------------------------------------------------------------------------- training


def test_training_is_reproducible_for_a_seed(body, tiny_model):
    again = train_initializer(synthetic_training_sources(), config=_tiny_config(), net=TINY_NET, body_model=body)
    other = train_initializer(synthetic_training_sources(), config=_tiny_config(seed=12), net=TINY_NET, body_model=body)
    first, second, third = tiny_model.state_arrays(), again.state_arrays(), other.state_arrays()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert not all(np.array_equal(first[k], third[k]) for k in first)


def test_training_reduces_the_loss(body):
    calls = []

    def frames(n, *, seed):
        calls.append(seed)
        return motion_library_frames(n, seed=seed)

    sources = TrainingSources(sample_frames=frames, detector_noise=synthetic_training_sources().detector_noise)
    cfg = _tiny_config(steps=60, batch_size=64, pose_pool=256, log_every=20, learning_rate=3e-3)
    model = train_initializer(sources, config=cfg, net=TINY_NET, body_model=body)
    history = model.metadata["training"]["loss_history"]  # [step, total, joints3d]
    assert calls == [11]
    assert [row[0] for row in history] == [20, 40, 60]
    assert history[-1][1] < 0.95 * history[0][1] and history[-1][2] < history[0][2]
    assert model.metadata["training"]["config"]["steps"] == 60


# --------------------------------------------------------------------------- shipped default


def test_shipped_default_loads_and_beats_the_mean_pose():
    from labelmill.pipelines.initializer_eval import evaluate_initializer

    assert default_weights_path().exists(), "models/data/keypoint_initializer.npz must be shipped"
    assert default_weights_path().stat().st_size < 5 * 2**20
    model = KeypointInitializer.default()
    report = evaluate_initializer(videos=3, frames=12, seed=4242, model=model)
    assert report["frames"] == 36
    assert report["mpjpe_mm"] < 0.6 * report["mean_pose_mpjpe_mm"]
    assert report["pa_mpjpe_mm"] < 0.8 * report["mean_pose_pa_mpjpe_mm"]


# --------------------------------------------------------------------------- operator


def test_fill_from_nearest():
    valid = np.array([False, True, False, False, True, False])
    assert fill_from_nearest(valid).tolist() == [1, 1, 1, 4, 4, 4]
    with pytest.raises(ValueError):
        fill_from_nearest(np.zeros(3, bool))


def test_operator_shapes_fill_and_fallback(tiny_model, person_keypoints):
    op = KeypointInit(batch_size=3)
    op.set_model(tiny_model)
    clone = pickle.loads(pickle.dumps(op))  # engines ship operators to workers; the model is left behind
    assert clone._model is None
    video = person_keypoints.copy()
    video[2] = 0.0  # person absent
    video[5, :, 2] = 0.1  # nothing confident
    empty = np.zeros((4, 17, 3), np.float32)
    batch = {
        "key": ["a", "b", "c", "d"],
        "main_keypoints": [video, empty, np.zeros((0, 17, 3), np.float32), np.zeros((2, 5))],
        "keypoint_width": np.array([320, 320, 320, 320]),
        "keypoint_height": np.array([240, 240, 240, 240]),
    }
    out = op(batch)
    assert out["init_betas"][0].shape == (8, 10) and out["init_global_orient"][0].shape == (8, 3)
    assert out["init_body_pose"][0].shape == (8, 69) and out["init_camera"][0].shape == (8, 3)
    assert out["init_filled"][0].tolist() == [False, False, True, False, False, True, False, False]
    for name in ("init_betas", "init_body_pose", "init_camera"):
        assert np.array_equal(out[name][0][2], out[name][0][1])  # tie: the earlier frame
        assert np.array_equal(out[name][0][5], out[name][0][4])
        assert out[name][0].dtype == np.float32
    direct = tiny_model.initialise(person_keypoints[[0, 1, 3, 4, 6, 7]])
    assert np.allclose(out["init_camera"][0][[0, 1, 3, 4, 6, 7]], direct["camera"])
    assert out["init_filled"][1].all() and np.allclose(out["init_camera"][1][:, 1:], [160.0, 120.0], atol=80)
    assert out["init_betas"][2].shape == (0, 10)
    nothing = op({"main_keypoints": [empty[:0]]})  # no frame to predict in the whole batch
    assert nothing["init_body_pose"][0].shape == (0, 69) and nothing["status"] == ["pending"]
    assert out["status"] == ["pending", "pending", "pending", "failed"] and "d" in out["reason"][3]


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    from labelmill.pipelines.commands import train
    from labelmill.pipelines.initializer_eval import register_initializer_eval

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    train.register(sub)
    evaluate = sub.add_parser("eval").add_subparsers(dest="eval_command")
    register_initializer_eval(evaluate)
    return parser


def test_train_and_eval_commands(tmp_path, capsys):
    out = tmp_path / "w.npz"
    args = _parser().parse_args(["train", "initializer", "--out", str(out), "--steps", "2", "--batch", "16",
                                 "--pose-pool", "32", "--seed", "3"])  # fmt: skip
    assert args.handler(args) == 0
    model = KeypointInitializer.from_file(str(out))
    assert model.metadata["training"]["config"]["seed"] == 3
    args = _parser().parse_args(["eval", "initializer", "--videos", "1", "--frames", "4", "--weights", str(out),
                                 "--json"])  # fmt: skip
    assert args.handler(args) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("mpjpe_mm", "pa_mpjpe_mm", "mean_pose_mpjpe_mm", "mean_pose_pa_mpjpe_mm"):
        assert np.isfinite(report[key]), key
    assert report["frames"] == 4 and report["weights"] == str(out)
    from labelmill.pipelines.cli import UsageError

    args = _parser().parse_args(["eval", "initializer", "--weights", str(tmp_path / "missing.npz")])
    with pytest.raises(UsageError, match="missing.npz"):
        args.handler(args)


def test_missing_default_is_trained_on_first_use_and_cached(tmp_path, monkeypatch, body, caplog):
    from labelmill.models import keypoint_initializer
    from labelmill.operators.pose3d import keypoint_init

    monkeypatch.setattr(keypoint_initializer, "default_weights_path", lambda: tmp_path / "shipped" / "none.npz")
    monkeypatch.setenv("LABELMILL_CACHE", str(tmp_path / "cache"))
    trained = []

    def tiny_training(sources, *, config):
        trained.append(config.seed)
        return train_initializer(sources, config=_tiny_config(), net=TINY_NET, body_model=body)

    monkeypatch.setattr(keypoint_init, "train_initializer", tiny_training)
    with pytest.raises(FileNotFoundError, match="labelmill train initializer"):
        keypoint_init.load_default_initializer(train_if_missing=False)
    with caplog.at_level("WARNING"):
        first = keypoint_init.load_default_initializer()
    assert trained == [InitializerTrainingConfig().seed]
    assert "Training the default keypoint initialiser now" in caplog.text
    assert (tmp_path / "cache" / "keypoint_initializer.npz").exists()
    second = keypoint_init.load_default_initializer()  # from the cache: no second training
    assert trained == [InitializerTrainingConfig().seed]
    assert all(np.array_equal(a, b) for a, b in zip(first.state_arrays().values(), second.state_arrays().values()))
