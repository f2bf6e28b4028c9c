"""GMM pose prior: energy kernel, module, files, EM fitting and the `labelmill prior` CLI."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.special
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import multivariate_normal

from labelmill.models.gmm_em import fit_gmm, gmm_log_likelihood, hand_specified_body_poses, sample_gmm
from labelmill.models.pose_prior import (
    BODY_POSE_DIM,
    GMMPosePrior,
    PriorConfig,
    gmm_factors,
    gmm_neg_log_likelihood,
)
from labelmill.pipelines.cli import main as cli_main
from labelmill.pipelines.commands.prior import body_pose_columns


def random_gmm(k: int, d: int, *, seed: int, scale: float = 0.3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, d, d)) * scale / np.sqrt(d)
    covars = a @ a.transpose(0, 2, 1) + scale**2 * 0.2 * np.eye(d)
    return {
        "means": rng.standard_normal((k, d)) * scale,
        "covars": covars,
        "weights": rng.uniform(0.5, 2.0, size=k),  # unnormalised on purpose
    }


def direct_energy(points: np.ndarray, gmm: dict[str, np.ndarray]) -> np.ndarray:
    """-log sum_k g_k N(x) with plain densities (underflows far from the data)."""
    weights = gmm["weights"] / gmm["weights"].sum()
    density = sum(
        w * multivariate_normal(mean=m, cov=c).pdf(points) for w, m, c in zip(weights, gmm["means"], gmm["covars"])
    )
    with np.errstate(divide="ignore"):
        return -np.log(density)


# --------------------------------------------------------------------------- energy


@pytest.mark.parametrize("dim", [4, BODY_POSE_DIM])
def test_energy_matches_direct_scipy_computation(dim: int) -> None:
    gmm = random_gmm(3, dim, seed=dim)
    prior = GMMPosePrior(**gmm, dtype=torch.float64)
    rng = np.random.default_rng(1)
    points = gmm["means"][rng.integers(0, 3, size=20)] + 0.2 * rng.standard_normal((20, dim))
    energy = prior(torch.as_tensor(points)).numpy()
    assert energy.shape == (20,)
    np.testing.assert_allclose(energy, direct_energy(points, gmm), rtol=1e-9, atol=1e-9)


def test_max_mode_is_largest_term_and_bounds_the_exact_energy() -> None:
    gmm = random_gmm(3, 4, seed=3)
    points = np.random.default_rng(0).standard_normal((50, 4)) * 0.3
    weights = gmm["weights"] / gmm["weights"].sum()
    terms = np.stack(
        [np.log(w) + multivariate_normal(m, c).logpdf(points) for w, m, c in zip(weights, gmm["means"], gmm["covars"])],
        axis=1,
    )
    exact = GMMPosePrior(**gmm, dtype=torch.float64)(torch.as_tensor(points)).numpy()
    approx = GMMPosePrior(**gmm, mode="max", dtype=torch.float64)(torch.as_tensor(points)).numpy()
    np.testing.assert_allclose(approx, -terms.max(axis=1), rtol=1e-10)
    assert np.all(approx >= exact - 1e-12) and np.all(approx <= exact + np.log(3) + 1e-12)


def test_far_points_are_finite_where_direct_computation_underflows() -> None:
    gmm = random_gmm(3, BODY_POSE_DIM, seed=5)
    far = np.full((2, BODY_POSE_DIM), 50.0)
    far[1] *= -1
    assert np.all(np.isinf(direct_energy(far, gmm)))  # the naive sum underflows to 0
    theta = torch.as_tensor(far, dtype=torch.float64).requires_grad_(True)
    prior = GMMPosePrior(**gmm, dtype=torch.float64)
    energy = prior(theta)
    energy.sum().backward()
    weights = gmm["weights"] / gmm["weights"].sum()
    log_terms = np.stack(
        [np.log(w) + multivariate_normal(m, c).logpdf(far) for w, m, c in zip(weights, gmm["means"], gmm["covars"])],
        axis=1,
    )
    np.testing.assert_allclose(energy.detach().numpy(), -scipy.special.logsumexp(log_terms, axis=1), rtol=1e-9)
    assert torch.isfinite(energy).all() and torch.isfinite(theta.grad).all()
    # float32 (the default) stays finite too
    assert torch.isfinite(GMMPosePrior(**gmm)(torch.as_tensor(far, dtype=torch.float32))).all()


def test_gradient_matches_finite_differences() -> None:
    gmm = random_gmm(2, 3, seed=7)
    f = gmm_factors(gmm["means"], gmm["covars"], gmm["weights"])
    args = [torch.as_tensor(a) for a in (f.means, f.chol_inv, f.log_weights, f.log_dets)]
    theta = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("sum", "max"):
        assert torch.autograd.gradcheck(lambda t: gmm_neg_log_likelihood(t, *args, mode=mode), (theta,))


def test_module_shapes_dtype_and_device_moves() -> None:
    prior = GMMPosePrior(**random_gmm(2, BODY_POSE_DIM, seed=2))
    assert prior.means.dtype == torch.float32 and prior.num_components == 2 and prior.dim == BODY_POSE_DIM
    assert prior(torch.zeros(7, BODY_POSE_DIM)).shape == (7,)
    assert prior(torch.zeros(2, 5, BODY_POSE_DIM)).shape == (2, 5)
    assert prior(torch.zeros(BODY_POSE_DIM)).shape == ()
    with pytest.raises(ValueError, match="last dimension 69"):
        prior(torch.zeros(3, 72))
    moved = prior.to("cpu").to(torch.float64)
    assert moved.chol_inv.dtype == torch.float64 and moved(torch.zeros(3, BODY_POSE_DIM)).dtype == torch.float64


def test_float32_agrees_with_float64() -> None:
    gmm = random_gmm(8, BODY_POSE_DIM, seed=11)
    theta = np.random.default_rng(0).standard_normal((500, BODY_POSE_DIM)) * 0.3
    e32 = GMMPosePrior(**gmm)(torch.as_tensor(theta, dtype=torch.float32)).double().numpy()
    e64 = GMMPosePrior(**gmm, dtype=torch.float64)(torch.as_tensor(theta)).numpy()
    np.testing.assert_allclose(e32, e64, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- validation


def test_weights_are_normalised() -> None:
    gmm = random_gmm(2, 4, seed=0)
    gmm["weights"] = np.array([3.0, 1.0])
    np.testing.assert_allclose(GMMPosePrior(**gmm).weights.numpy(), [0.75, 0.25])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g: g["covars"].__setitem__(1, -np.eye(4)), r"covars\[1\] is not positive definite"),
        (lambda g: g["covars"][0].__setitem__((0, 1), g["covars"][0][0, 1] + 1.0), r"covars\[0\] is not symmetric"),
        (lambda g: g.__setitem__("covars", g["covars"][:, :3, :3]), r"covars must have shape"),
        (lambda g: g.__setitem__("weights", np.array([1.0, -1.0])), r"weights\[1\]"),
        (lambda g: g.__setitem__("weights", np.ones(3)), r"weights must have shape"),
        (lambda g: g["means"].__setitem__((0, 0), np.nan), r"means contains 1 non-finite"),
    ],
)
def test_bad_parameters_raise_clear_errors(change, message: str) -> None:
    gmm = random_gmm(2, 4, seed=0)
    change(gmm)
    with pytest.raises(ValueError, match=message):
        GMMPosePrior(**gmm)


def test_prior_config_validation_and_from_config(tmp_path) -> None:
    with pytest.raises(ValueError, match="mode"):
        PriorConfig(mode="min")
    with pytest.raises(ValueError, match="path"):
        PriorConfig(path=" ")
    path = str(tmp_path / "p.npz")
    GMMPosePrior(**random_gmm(2, BODY_POSE_DIM, seed=1)).save_npz(path)
    prior = GMMPosePrior.from_config(PriorConfig(path=path, mode="max"))
    assert prior.mode == "max" and prior.num_components == 2


# --------------------------------------------------------------------------- files


def test_npz_round_trip(tmp_path) -> None:
    gmm = random_gmm(3, BODY_POSE_DIM, seed=4)
    prior = GMMPosePrior(**gmm, provenance='{"source":"test"}')
    path = str(tmp_path / "prior.npz")
    prior.save_npz(path)
    loaded = GMMPosePrior.from_file(path)
    theta = torch.randn(10, BODY_POSE_DIM) * 0.3
    torch.testing.assert_close(loaded(theta), prior(theta))
    assert loaded.provenance == '{"source":"test"}'
    with np.load(path, allow_pickle=False) as npz:
        assert npz["covars"].dtype == np.float32


class _ChumpyLike:
    """Pickles like chumpy.ch.Ch: its array sits in the instance state under 'x'."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x


def test_smplify_pickles_load_with_and_without_chumpy_objects(tmp_path) -> None:
    gmm = random_gmm(3, BODY_POSE_DIM, seed=9)
    plain_path = tmp_path / "gmm_08.pkl"
    plain_path.write_bytes(pickle.dumps(dict(gmm), protocol=2))

    fake_chumpy, fake_ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    fake_chumpy.ch = fake_ch
    _ChumpyLike.__module__, _ChumpyLike.__qualname__ = "chumpy.ch", "Ch"
    fake_ch.Ch = _ChumpyLike
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = fake_chumpy, fake_ch
    try:
        chumpy_bytes = pickle.dumps({key: _ChumpyLike(value) for key, value in gmm.items()}, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    assert b"chumpy.ch" in chumpy_bytes
    chumpy_path = tmp_path / "gmm_08_chumpy.pkl"
    chumpy_path.write_bytes(chumpy_bytes)

    theta = torch.as_tensor(np.random.default_rng(0).standard_normal((6, BODY_POSE_DIM)) * 0.3)
    expected = GMMPosePrior(**gmm, dtype=torch.float64)(theta)
    for path in (plain_path, chumpy_path):
        loaded = GMMPosePrior.from_file(str(path), dtype=torch.float64)
        torch.testing.assert_close(loaded(theta), expected)


def test_file_errors_name_the_file_and_problem(tmp_path) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({"means": np.zeros((2, 3))}, protocol=2))
    with pytest.raises(ValueError, match=r"bad.pkl lacks covars, weights"):
        GMMPosePrior.from_file(str(path))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        GMMPosePrior.from_file(str(tmp_path / "missing.npz"))


def test_default_prior_prefers_rest_pose_to_implausible_pose() -> None:
    from importlib.resources import files

    resource = files("labelmill.models.data") / "gmm_prior_default.npz"
    assert os.path.getsize(str(resource)) < 300_000
    prior = GMMPosePrior.default()
    assert prior.dim == BODY_POSE_DIM and prior.num_components == 8
    wild = torch.zeros(23, 3)
    wild[3, 0] = wild[4, 0] = -2.0  # knees bent backwards
    wild[17, 1], wild[18, 1] = 2.0, -2.0  # elbows hyperextended
    wild[14] = torch.tensor([1.5, 1.5, 0.0])  # head turned and thrown back
    energies = prior(torch.stack([torch.zeros(BODY_POSE_DIM), wild.reshape(-1)]))
    assert energies[0] + 50.0 < energies[1]
    assert GMMPosePrior.from_config(PriorConfig()).num_components == 8


# --------------------------------------------------------------------------- EM


def _separated_samples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    means = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, -4.0, 3.0]])
    tilted = np.array([[0.5, 0.2, 0.0], [0.2, 0.3, 0.0], [0.0, 0.0, 0.2]])
    covars = np.stack([np.diag([0.3, 0.2, 0.4]), tilted, 0.25 * np.eye(3)])
    weights = np.array([0.5, 0.3, 0.2])
    return sample_gmm(means, covars, weights, n, seed=seed), means, weights


def test_em_recovers_separated_components_and_is_deterministic() -> None:
    samples, true_means, true_weights = _separated_samples(3000, seed=1)
    params = fit_gmm(samples, components=3, seed=0)
    distance = np.linalg.norm(params.means[:, None] - true_means[None], axis=-1)
    rows, cols = linear_sum_assignment(distance)
    assert distance[rows, cols].max() < 0.1
    np.testing.assert_allclose(params.weights[rows], true_weights[cols], atol=0.03)
    assert params.converged and params.iterations == len(params.log_likelihood_trace) - 1
    assert np.all(np.diff(params.log_likelihood_trace) > -1e-9)  # EM never decreases the likelihood
    final = gmm_log_likelihood(samples, params.means, params.covars, params.weights).mean()
    assert params.log_likelihood_trace[-1] == pytest.approx(final)

    again = fit_gmm(samples, components=3, seed=0)
    for name in ("means", "covars", "weights"):
        np.testing.assert_array_equal(getattr(again, name), getattr(params, name))


@pytest.mark.parametrize(
    ("poses", "kwargs", "message"),
    [
        (np.zeros(10), {}, r"2-D array"),
        (np.array([[0.0, np.nan]] * 10), {}, r"NaN/inf values in 10 rows \(first: row 0\)"),
        (np.zeros((5, 2)), {"components": 8}, r"5 samples, fewer than components=8"),
        (np.zeros((20, 2)), {"components": 0}, r"components must be"),
        (np.zeros((20, 2)), {"reg_covar": -1.0}, r"reg_covar"),
    ],
)
def test_em_rejects_bad_input(poses, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_gmm(poses, **kwargs)


def test_hand_specified_poses_are_deterministic_and_mirrored() -> None:
    a = hand_specified_body_poses(200, seed=3)
    assert a.shape == (200, BODY_POSE_DIM)
    np.testing.assert_array_equal(a, hand_specified_body_poses(200, seed=3))
    knees = a.reshape(200, 23, 3)[:, 3:5, 0]  # knee flexion is never negative
    assert knees.min() >= 0.0 and knees.max() > 0.5


# --------------------------------------------------------------------------- CLI


def test_body_pose_column_layouts() -> None:
    poses = np.arange(2 * 156, dtype=np.float64).reshape(2, 156)
    amass = body_pose_columns(poses)
    np.testing.assert_array_equal(amass[:, :63], poses[:, 3:66])
    assert np.all(amass[:, 63:] == 0.0)
    np.testing.assert_array_equal(body_pose_columns(poses[:, :72]), poses[:, 3:72])
    np.testing.assert_array_equal(body_pose_columns(poses[:, :72].reshape(2, 24, 3)), poses[:, 3:72])


def test_cli_prior_fit_writes_a_loadable_prior(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.standard_normal((300, 3)), 0.2 * rng.standard_normal((300, 69))], axis=1)  # (N, 72)
    poses_path, out = tmp_path / "poses.npz", tmp_path / "prior.npz"
    np.savez(poses_path, body_pose=poses, betas=np.zeros((300, 10)))
    args = ["prior", "fit", "--poses", str(poses_path), "--components", "2", "--max-iter", "20", "--out", str(out)]
    assert cli_main(args) == 0
    prior = GMMPosePrior.from_file(str(out))
    assert prior.num_components == 2 and prior.dim == BODY_POSE_DIM
    assert abs(float(prior.weights.sum()) - 1.0) < 1e-6
    assert json.loads(prior.provenance)["samples"] == 300

    assert cli_main(["prior", "show", "--path", str(out), "--samples", "200"]) == 0
    shown = capsys.readouterr().out
    assert "component 1: weight" in shown and "mean log-likelihood of 200 own samples" in shown


def test_cli_build_default_from_each_source(tmp_path) -> None:
    for source in ("hand", "auto"):
        out = tmp_path / f"{source}.npz"
        args = ["prior", "build-default", "--source", source, "--samples", "300", "--components", "2", "--out", str(out)]
        assert cli_main(args) == 0
        provenance = json.loads(GMMPosePrior.from_file(str(out)).provenance)
        assert provenance["seed"] == 12345 and provenance["reg_covar"] == 1e-3
        assert provenance["source"] == ("hand" if source == "hand" else "motion")  # the motion library is installed


def test_cli_prior_fit_usage_errors(tmp_path) -> None:
    poses_path = tmp_path / "poses.npz"
    np.savez(poses_path, a=np.zeros((10, 69)), b=np.zeros((10, 69)))
    out = str(tmp_path / "prior.npz")
    assert cli_main(["prior", "fit", "--poses", str(poses_path), "--out", out]) == 2  # ambiguous key
    assert cli_main(["prior", "fit", "--poses", str(poses_path), "--key", "c", "--out", out]) == 2
    assert cli_main(["prior", "fit", "--poses", str(tmp_path / "none.npz"), "--out", out]) == 2
    np.savez(poses_path, poses=np.zeros((10, 50)))
    assert cli_main(["prior", "fit", "--poses", str(poses_path), "--out", out]) == 2
    assert not os.path.exists(out)
    assert cli_main(["prior", "show", "--path", str(tmp_path / "none.npz")]) == 2
