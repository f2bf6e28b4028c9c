"""Tests for labelmill.models.batched_lbfgs: per-problem batched L-BFGS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from labelmill.models.batched_lbfgs import (
    STOP_REASON_NAMES,
    LBFGSConfig,
    StopReason,
    minimize_batched,
    pack,
    unpack,
)
from labelmill.pipelines.experiments.fit_bench import benchmark_against_torch_lbfgs

F64 = torch.float64
TIGHT = dict(max_iter=500, tolerance_grad=1e-10, tolerance_change=0.0)


@pytest.fixture(autouse=True)
def _single_intra_op_thread():
    """These tensors are tiny: extra OpenMP threads only spin (badly so on a shared, loaded host)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# Test problems: each builds a closure over per-row data, so any subset of rows can be solved alone
# ---------------------------------------------------------------------------------------------


def rosenbrock_closure(dims: torch.Tensor, n_params: int):
    """Rows are Rosenbrock functions of dimension dims[b] <= n_params; entries past dims[b] are padding."""
    pair_index = torch.arange(n_params - 1)
    pair_valid = pair_index[None, :] < (dims[:, None] - 1)  # (B, N-1)

    def closure(x: torch.Tensor) -> torch.Tensor:
        terms = 100.0 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1.0 - x[:, :-1]) ** 2
        return torch.where(pair_valid, terms, torch.zeros_like(terms)).sum(dim=-1)

    return closure


def random_spd(n: int, condition: float, generator: torch.Generator) -> torch.Tensor:
    """(n, n) symmetric positive definite matrix with the given condition number."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=F64))
    eigenvalues = torch.logspace(0.0, math.log10(condition), n, dtype=F64)
    return q @ torch.diag(eigenvalues) @ q.T


def quadratic_closure(hessians: torch.Tensor, centres: torch.Tensor):
    """Rows are 0.5 (x - c_b)' A_b (x - c_b); hessians (B, N, N), centres (B, N)."""

    def closure(x: torch.Tensor) -> torch.Tensor:
        diff = x - centres.to(x.dtype)
        curvature = torch.bmm(hessians.to(x.dtype), diff.unsqueeze(-1)).squeeze(-1)
        return 0.5 * (diff * curvature).sum(dim=-1)

    return closure


def quadratic_batch(conditions: list[float], n_params: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hessians = torch.stack([random_spd(n_params, c, generator) for c in conditions])
    centres = torch.randn(len(conditions), n_params, generator=generator, dtype=F64)
    return hessians, centres


def mixed_closure(hessians, centres, dims, n_params):
    """First len(hessians) rows quadratics, the remaining rows Rosenbrocks."""
    quad = quadratic_closure(hessians, centres)
    rosen = rosenbrock_closure(dims, n_params)
    n_quad = hessians.shape[0]

    def closure(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([quad(x[:n_quad]), rosen(x[n_quad:])])

    return closure


def rosenbrock_starts(dims: torch.Tensor, n_params: int, seed: int) -> torch.Tensor:
    """Starts near the optimum, zero in the padding."""
    generator = torch.Generator().manual_seed(seed)
    x0 = 1.0 + 0.4 * torch.randn(len(dims), n_params, generator=generator, dtype=F64)
    valid = torch.arange(n_params)[None, :] < dims[:, None]
    return torch.where(valid, x0, torch.zeros_like(x0)), valid


# ---------------------------------------------------------------------------------------------
# Convergence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line_search", ["strong_wolfe", "armijo"])
def test_mixed_batch_of_quadratics_and_rosenbrocks_reaches_known_optima(line_search):
    n_params = 20
    conditions = [1.0, 10.0, 1e2, 1e3]
    hessians, centres = quadratic_batch(conditions, n_params)
    dims = torch.tensor([2, 3, 5, 8, 12, 16, 20])
    rosen_x0, rosen_valid = rosenbrock_starts(dims, n_params, seed=1)
    quad_x0 = torch.zeros(len(conditions), n_params, dtype=F64)
    x0 = torch.cat([quad_x0, rosen_x0])
    mask = torch.cat([torch.ones_like(quad_x0, dtype=torch.bool), rosen_valid])

    result = minimize_batched(
        mixed_closure(hessians, centres, dims, n_params),
        x0,
        config=LBFGSConfig(line_search=line_search, **TIGHT),
        mask=mask,
    )

    expected = torch.cat([centres, torch.where(rosen_valid, 1.0, 0.0).to(F64)])
    assert result.converged.all(), result.reason_names()
    assert torch.allclose(result.x, expected, atol=1e-6), (result.x - expected).abs().amax(dim=-1)
    assert (result.loss < 1e-12).all()
    # Harder problems need more iterations: the solver really ran them independently.
    quad_iterations = result.iterations[: len(conditions)]
    assert quad_iterations[0] < quad_iterations[-1]
    assert result.iterations.unique().numel() > 3


def test_batched_solve_equals_solving_each_problem_alone():
    n_params = 12
    dims = torch.tensor([2, 4, 7, 9, 12, 12])
    x0, valid = rosenbrock_starts(dims, n_params, seed=2)
    config = LBFGSConfig(**TIGHT)

    batched = minimize_batched(rosenbrock_closure(dims, n_params), x0, config=config, mask=valid)

    for row in range(len(dims)):
        rows = slice(row, row + 1)
        alone = minimize_batched(rosenbrock_closure(dims[rows], n_params), x0[rows], config=config, mask=valid[rows])
        assert alone.iterations.item() == batched.iterations[row].item()
        assert alone.function_evals.item() == batched.function_evals[row].item()
        assert alone.reason.item() == batched.reason[row].item()
        assert torch.allclose(alone.x[0], batched.x[row], rtol=0.0, atol=1e-6)


def test_converged_problem_stops_changing_while_others_continue():
    n_params = 6
    hessians, centres = quadratic_batch([1.0], n_params)  # row 0: perfectly conditioned, 1-2 steps
    dims = torch.tensor([6, 6])  # rows 1, 2: Rosenbrock, tens of steps
    x0 = torch.cat([torch.zeros(1, n_params, dtype=F64), rosenbrock_starts(dims, n_params, seed=3)[0]])
    inner = mixed_closure(hessians, centres, dims, n_params)
    seen: list[torch.Tensor] = []

    def recording_closure(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return inner(x)

    result = minimize_batched(recording_closure, x0, config=LBFGSConfig(**TIGHT))

    assert result.converged.all()
    assert result.closure_calls == len(seen)
    final_easy = result.x[0]
    first_final = next(i for i, x in enumerate(seen) if torch.equal(x[0], final_easy))
    later = seen[first_final:]
    assert all(torch.equal(x[0], final_easy) for x in later), "a stopped problem was moved"
    assert len({tuple(x[1].tolist()) for x in later}) > 10, "the other problems should keep moving"
    assert result.function_evals[0] == first_final + 1
    assert result.function_evals[0] < result.function_evals[1:].min()


@pytest.mark.parametrize("mask_kind", ["bool_rows", "float_rows", "shared_vector"])
def test_masked_parameters_never_change_and_free_ones_reach_constrained_optimum(mask_kind):
    n_params = 8
    hessians, centres = quadratic_batch([10.0, 100.0, 1000.0], n_params, seed=4)
    free = torch.ones(3, n_params, dtype=torch.bool)
    free[:, [1, 5, 6]] = False
    x0 = torch.randn(3, n_params, generator=torch.Generator().manual_seed(5), dtype=F64)
    x0[:, 5] = 0.0  # padding: plain zeros ...
    x0[:, 6] = -0.0  # ... and a negative zero, whose sign bit must survive too
    mask = {"bool_rows": free, "float_rows": free.to(F64), "shared_vector": free[0]}[mask_kind]

    # The optimum loss is O(1) here, so tolerances stay above what float64 decreases can resolve.
    config = LBFGSConfig(max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-14)
    result = minimize_batched(quadratic_closure(hessians, centres), x0, config=config, mask=mask)

    fixed = ~free
    assert torch.equal(result.x[fixed], x0[fixed])
    assert torch.equal(torch.signbit(result.x[:, 6]), torch.ones(3, dtype=torch.bool))
    for row in range(3):
        f_idx, x_idx = free[row].nonzero().flatten(), fixed[row].nonzero().flatten()
        a = hessians[row]
        rhs = a[f_idx][:, f_idx] @ centres[row, f_idx] - a[f_idx][:, x_idx] @ (x0[row, x_idx] - centres[row, x_idx])
        expected_free = torch.linalg.solve(a[f_idx][:, f_idx], rhs)
        assert torch.allclose(result.x[row, f_idx], expected_free, atol=1e-7)
    assert result.converged.all()


def test_padding_the_closure_depends_on_stays_inert():
    """Padded entries the loss would pull elsewhere, even with a NaN gradient there, stay put."""
    n_params = 5
    valid = torch.tensor([[True, True, True, False, False], [True, True, True, True, True]])

    def closure(x: torch.Tensor) -> torch.Tensor:
        pull = ((x - 3.0) ** 2).sum(dim=-1)  # would move padding to 3
        nan_grad = torch.sqrt(torch.where(valid, 1.0 + x**2, -x.abs()))  # sqrt(0) at padding: inf grad
        return pull + torch.where(valid, nan_grad, torch.zeros_like(nan_grad)).sum(dim=-1)

    x0 = torch.where(valid, torch.ones(2, n_params, dtype=F64), torch.zeros(2, n_params, dtype=F64))
    result = minimize_batched(closure, x0, config=LBFGSConfig(**TIGHT), mask=valid)

    assert torch.equal(result.x[~valid], x0[~valid])
    assert torch.isfinite(result.x).all() and torch.isfinite(result.loss).all()
    assert result.converged.all()


# ---------------------------------------------------------------------------------------------
# Agreement with scipy
# ---------------------------------------------------------------------------------------------


def test_agrees_with_scipy_lbfgsb_on_rosenbrock():
    n_params = 10
    dims = torch.tensor([2, 4, 6, 10])
    x0, valid = rosenbrock_starts(dims, n_params, seed=6)
    result = minimize_batched(rosenbrock_closure(dims, n_params), x0, config=LBFGSConfig(**TIGHT), mask=valid)

    for row, dim in enumerate(dims.tolist()):
        single = rosenbrock_closure(torch.tensor([dim]), dim)

        def value_and_grad(z: np.ndarray, single=single) -> tuple[float, np.ndarray]:
            x = torch.tensor(z[None], dtype=F64, requires_grad=True)
            (loss,) = single(x)
            loss.backward()
            return loss.item(), x.grad[0].numpy()

        reference = scipy.optimize.minimize(
            value_and_grad, x0[row, :dim].numpy(), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 0}
        )
        assert abs(result.loss[row].item() - reference.fun) < 1e-10
        np.testing.assert_allclose(result.x[row, :dim].numpy(), reference.x, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Edge cases and stop reasons
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tolerance_grad", [0.0, 1e-5])
def test_problem_starting_at_its_optimum_stops_without_nan(tolerance_grad):
    n_params = 4
    hessians, centres = quadratic_batch([10.0, 10.0], n_params, seed=7)
    x0 = torch.stack([centres[0], torch.zeros(n_params, dtype=F64)])  # row 0 starts at its optimum
    config = LBFGSConfig(max_iter=200, tolerance_grad=tolerance_grad, tolerance_change=0.0)

    result = minimize_batched(quadratic_closure(hessians, centres), x0, config=config)

    assert torch.isfinite(result.x).all() and torch.isfinite(result.loss).all()
    assert torch.equal(result.x[0], x0[0])
    assert result.reason[0] == StopReason.GRAD_TOL and result.iterations[0] == 0
    assert result.function_evals[0] == 1
    assert torch.allclose(result.x[1], centres[1], atol=1e-6)


@pytest.mark.parametrize("line_search", ["strong_wolfe", "armijo"])
def test_non_finite_trial_loss_backtracks_instead_of_producing_nan(line_search):
    """0.5 (x - 3)^2 - log(2 - x) is NaN for x > 2; a long first step lands there."""
    non_finite_trials = []

    def closure(x: torch.Tensor) -> torch.Tensor:
        loss = (0.5 * (x - 3.0) ** 2 - torch.log(2.0 - x)).sum(dim=-1)
        non_finite_trials.append(int((~torch.isfinite(loss)).sum()))
        return loss

    x0 = torch.zeros(3, 2, dtype=F64)
    x0[1] = 1.9
    config = LBFGSConfig(line_search=line_search, initial_step=50.0, **TIGHT)
    result = minimize_batched(closure, x0, config=config)

    assert sum(non_finite_trials) > 0, "the test should drive a trial into the NaN region"
    assert torch.isfinite(result.x).all() and torch.isfinite(result.loss).all()
    assert torch.allclose(result.x, torch.full_like(x0, (5.0 - math.sqrt(5.0)) / 2.0), atol=1e-7)
    assert result.converged.all()


class _ReversedGradient(torch.autograd.Function):
    """x -> sum(x^2) per row, but reports the negated gradient (so no step ever decreases the loss)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x**2).sum(dim=-1)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return -2.0 * x * grad_out[:, None]


def test_line_search_failure_is_reported_per_problem():
    x0 = torch.tensor([[1.0, -2.0], [1.0, -2.0]], dtype=F64)

    def closure(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([_ReversedGradient.apply(x[:1]), (x[1:] ** 2).sum(dim=-1)])

    result = minimize_batched(closure, x0, config=LBFGSConfig(max_line_search=8))

    assert result.reason_names() == ["line_search_failed", "grad_tol"]
    assert result.converged.tolist() == [False, True]
    assert torch.equal(result.x[0], x0[0])
    assert result.function_evals[0] == 1 + 8


def test_max_iter_and_non_finite_start_are_reported():
    dims = torch.tensor([6, 6])
    x0, _ = rosenbrock_starts(dims, 6, seed=8)
    x0[1, 2] = float("nan")
    result = minimize_batched(rosenbrock_closure(dims, 6), x0, config=LBFGSConfig(max_iter=3))

    assert result.reason_names() == ["max_iter", "non_finite_start"]
    assert result.iterations.tolist() == [3, 0]
    assert not result.converged.any()
    assert torch.equal(result.x[1].isnan(), x0[1].isnan())


def test_check_every_changes_host_syncs_not_results():
    dims = torch.tensor([3, 5, 8])
    x0, valid = rosenbrock_starts(dims, 8, seed=9)
    closure = rosenbrock_closure(dims, 8)
    every_step = minimize_batched(closure, x0, config=LBFGSConfig(**TIGHT), mask=valid)
    every_seventh = minimize_batched(closure, x0, config=LBFGSConfig(check_every=7, **TIGHT), mask=valid)

    assert torch.equal(every_step.x, every_seventh.x)
    assert torch.equal(every_step.iterations, every_seventh.iterations)
    assert torch.equal(every_step.function_evals, every_seventh.function_evals)
    assert every_step.closure_calls <= every_seventh.closure_calls < every_step.closure_calls + 7


def test_host_reads_happen_only_every_check_every_steps(monkeypatch):
    dims = torch.tensor([3, 5, 8])
    x0, valid = rosenbrock_starts(dims, 8, seed=9)
    closure = rosenbrock_closure(dims, 8)
    host_reads = {"count": 0}
    for name in ("__bool__", "item", "tolist", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            host_reads["count"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    result = minimize_batched(closure, x0, config=LBFGSConfig(check_every=5, **TIGHT), mask=valid)
    monkeypatch.undo()

    steps = result.closure_calls - 1  # the first call evaluates x0
    assert steps > 20
    assert host_reads["count"] <= 1 + math.ceil(steps / 5), host_reads


def test_float32_solve_stays_float32_and_converges():
    hessians, centres = quadratic_batch([10.0, 100.0, 1000.0], 10, seed=10)
    x0 = torch.zeros(3, 10, dtype=torch.float32)
    result = minimize_batched(quadratic_closure(hessians, centres), x0, config=LBFGSConfig(tolerance_grad=1e-4))

    assert result.x.dtype == torch.float32 and result.loss.dtype == torch.float32
    assert torch.allclose(result.x.double(), centres, atol=1e-3)
    assert result.converged.all()


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_iter", 0),
        ("history_size", 0),
        ("max_line_search", 1.5),
        ("check_every", True),
        ("tolerance_grad", -1.0),
        ("tolerance_change", float("nan")),
        ("initial_step", 0.0),
        ("line_search", "backtracking"),
        ("curvature", 1e-5),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        LBFGSConfig(**{field: value})


def test_bad_inputs_are_rejected_with_clear_errors():
    config = LBFGSConfig()
    with pytest.raises(ValueError, match="shape"):
        minimize_batched(lambda x: x.sum(), torch.zeros(2, 3), config=config)
    with pytest.raises(ValueError, match="float32 or float64"):
        minimize_batched(lambda x: x.sum(-1), torch.zeros(2, 3, dtype=torch.int64), config=config)
    with pytest.raises(ValueError, match="mask"):
        minimize_batched(lambda x: x.sum(-1), torch.zeros(2, 3), config=config, mask=torch.ones(3, 2))


def test_pack_unpack_round_trip_and_gradients_flow():
    params = {"betas": torch.randn(4, 10), "pose": torch.randn(4, 7, 72), "camera": torch.randn(4, 7, 3)}
    flat, layout = pack(params)
    assert flat.shape == (4, 10 + 7 * 72 + 7 * 3) and layout.total == flat.shape[1]
    back = unpack(flat, layout)
    assert all(torch.equal(back[k], params[k]) for k in params)

    free, _ = pack({k: torch.ones_like(v, dtype=torch.bool) for k, v in params.items()})
    assert free.shape == flat.shape and free.dtype == torch.bool

    leaf = flat.clone().requires_grad_(True)
    unpack(leaf, layout)["camera"].sum().backward()
    assert leaf.grad.sum().item() == 7 * 3 * 4
    with pytest.raises(ValueError, match="batch size"):
        pack({"a": torch.zeros(2, 3), "b": torch.zeros(3, 3)})


def test_reason_names_table_matches_codes():
    assert STOP_REASON_NAMES[StopReason.GRAD_TOL] == "grad_tol"
    assert STOP_REASON_NAMES[StopReason.LINE_SEARCH_FAILED] == "line_search_failed"
    assert set(STOP_REASON_NAMES) >= {"grad_tol", "change_tol", "max_iter", "line_search_failed"}


@pytest.mark.parametrize("problem", ["robust_regression", "shared_decoder"])
def test_benchmark_smoke(problem):
    report = benchmark_against_torch_lbfgs(
        problem=problem, batch=3, n_params=20, n_residuals=30, max_iter=10, loss_scale_decades=2.0, num_threads=1
    )
    for key in ("batched_problems_per_s", "torch_problems_per_s", "speedup", "batched_mean_loss", "torch_mean_loss"):
        assert math.isfinite(report[key]) and report[key] > 0
