"""Benchmark: batched per-problem L-BFGS against torch.optim.LBFGS run one problem at a time.

Two families of B independent smooth problems, both robust (soft-L1 / pseudo-Huber residuals
with gross outliers) plus a small ridge term, N parameters each:

- ``"robust_regression"``: each problem has its OWN design matrix (B, M, N). Batching then does
  exactly the sequential arithmetic (a memory-bound batched matrix-vector product), so any speedup
  comes from the solver alone; this is the least favourable case for batching.
- ``"shared_decoder"``: every problem fits a latent code through one SHARED nonlinear decoder
  ``W2 tanh(W1 z + b1)`` to its own targets, as bundle adjustment fits each video through one shared
  body model. Batching turns matrix-vector products into matrix-matrix products.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor

from labelmill.models.batched_lbfgs import LBFGSConfig, minimize_batched

__all__ = [
    "benchmark_against_torch_lbfgs",
    "make_problem_batch",
    "make_robust_regression",
    "make_shared_decoder",
    "robust_regression_loss",
    "shared_decoder_loss",
]

ProblemKind = Literal["robust_regression", "shared_decoder"]
# loss_of_rows(x (R, N), rows) -> (R,): the losses of problems ``rows`` (a slice) at x.
RowLoss = Callable[[Tensor, slice], Tensor]


def _noisy_targets(clean: Tensor, *, outlier_fraction: float, generator: torch.Generator) -> Tensor:
    """clean (B, M) float64 -> small Gaussian noise everywhere plus gross errors on a fraction."""
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    outliers = torch.rand(clean.shape, generator=generator) < outlier_fraction
    gross = 5.0 * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    return torch.where(outliers, noisy + gross, noisy)


def make_robust_regression(
    *,
    batch: int,
    n_params: int,
    n_residuals: int,
    outlier_fraction: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """Random robust-regression data: design (B, M, N), targets (B, M) with gross outliers."""
    generator = torch.Generator().manual_seed(seed)
    column_scale = torch.logspace(0.0, 1.0, n_params, dtype=torch.float64)  # conditioning ~100x
    design = torch.empty(batch, n_residuals, n_params, dtype=dtype)
    targets = torch.empty(batch, n_residuals, dtype=torch.float64)
    for row in range(batch):  # one problem at a time keeps the float64 scratch small
        design_row = torch.randn(n_residuals, n_params, generator=generator, dtype=torch.float64)
        design_row = design_row * column_scale / n_residuals**0.5
        truth = torch.randn(n_params, generator=generator, dtype=torch.float64) / column_scale
        targets[row] = design_row @ truth
        design[row] = design_row.to(dtype)
    targets = _noisy_targets(targets, outlier_fraction=outlier_fraction, generator=generator)
    return design.to(dtype=dtype, device=device), targets.to(dtype=dtype, device=device)


def robust_regression_loss(
    x: Tensor, design: Tensor, targets: Tensor, *, delta: float = 0.1, ridge: float = 1e-3
) -> Tensor:
    """Per-problem loss (B,): sum_i delta^2 (sqrt(1 + (r_i/delta)^2) - 1) + ridge/2 |x|^2, r = A x - y.

    x (B, N), design (B, M, N), targets (B, M).
    """
    # (B, 1, N) @ (B, N, M), the row-vector form: torch's CPU bmm is ~5x slower as (B, M, N) @ (B, N, 1).
    residuals = torch.bmm(x.unsqueeze(1), design.transpose(1, 2)).squeeze(1) - targets
    return _soft_l1(residuals, delta).sum(dim=-1) + 0.5 * ridge * (x * x).sum(dim=-1)


def _soft_l1(residuals: Tensor, delta: float) -> Tensor:
    """Pseudo-Huber: ~r^2/2 for |r| << delta, ~delta |r| beyond."""
    return delta**2 * (torch.sqrt(1.0 + (residuals / delta) ** 2) - 1.0)


def make_shared_decoder(
    *,
    batch: int,
    n_params: int,
    n_residuals: int,
    hidden: int = 256,
    outlier_fraction: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Shared decoder weights w1 (H, N), b1 (H,), w2 (M, H) and per-problem targets (B, M)."""
    generator = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hidden, n_params, generator=generator, dtype=torch.float64) / n_params**0.5
    b1 = 0.1 * torch.randn(hidden, generator=generator, dtype=torch.float64)
    w2 = torch.randn(n_residuals, hidden, generator=generator, dtype=torch.float64) / hidden**0.5
    truth = torch.randn(batch, n_params, generator=generator, dtype=torch.float64)
    clean = torch.tanh(truth @ w1.T + b1) @ w2.T
    targets = _noisy_targets(clean, outlier_fraction=outlier_fraction, generator=generator)
    tensors = {"w1": w1, "b1": b1, "w2": w2, "targets": targets}
    return {name: value.to(dtype=dtype, device=device) for name, value in tensors.items()}


def shared_decoder_loss(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, targets: Tensor, *, delta: float = 0.1, ridge: float = 1e-3
) -> Tensor:
    """Per-problem loss (B,): soft-L1 of W2 tanh(W1 x + b1) - y, plus ridge/2 |x|^2.

    x (B, N), w1 (H, N), b1 (H,), w2 (M, H), targets (B, M).
    """
    residuals = torch.tanh(x @ w1.T + b1) @ w2.T - targets
    return _soft_l1(residuals, delta).sum(dim=-1) + 0.5 * ridge * (x * x).sum(dim=-1)


def make_problem_batch(
    kind: ProblemKind,
    *,
    batch: int,
    n_params: int,
    n_residuals: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> RowLoss:
    """Build B problems of ``kind``; returns ``loss_of_rows(x (R, N), rows: slice) -> (R,)``."""
    if kind == "robust_regression":
        design, targets = make_robust_regression(
            batch=batch, n_params=n_params, n_residuals=n_residuals, seed=seed, dtype=dtype, device=device
        )
        return lambda x, rows: robust_regression_loss(x, design[rows], targets[rows])
    if kind == "shared_decoder":
        data = make_shared_decoder(
            batch=batch, n_params=n_params, n_residuals=n_residuals, seed=seed, dtype=dtype, device=device
        )
        return lambda x, rows: shared_decoder_loss(x, data["w1"], data["b1"], data["w2"], data["targets"][rows])
    raise ValueError(f"unknown benchmark problem kind {kind!r}; expected 'robust_regression' or 'shared_decoder'")


def _torch_lbfgs(param: Tensor, config: LBFGSConfig) -> torch.optim.LBFGS:
    """torch.optim.LBFGS with the same knobs as ``config`` (strong Wolfe; eval budget as ours)."""
    return torch.optim.LBFGS(
        [param],
        lr=config.initial_step,
        max_iter=config.max_iter,
        max_eval=config.max_iter * config.max_line_search,
        tolerance_grad=config.tolerance_grad,
        tolerance_change=config.tolerance_change,
        history_size=config.history_size,
        line_search_fn="strong_wolfe",
    )


def _solve_one_by_one_with_torch(
    loss_of_rows: RowLoss, x0: Tensor, config: LBFGSConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """torch.optim.LBFGS on each problem alone; returns final x (B, N), iterations (B,), evals (B,)."""
    solutions, iterations, evaluations = [], [], []
    for row in range(x0.shape[0]):
        param = x0[row : row + 1].clone().requires_grad_(True)
        optimizer = _torch_lbfgs(param, config)

        def closure(param=param, optimizer=optimizer, rows=slice(row, row + 1)) -> Tensor:
            optimizer.zero_grad()
            loss = loss_of_rows(param, rows).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        state = optimizer.state[param]
        solutions.append(param.detach()[0])
        iterations.append(state["n_iter"])
        evaluations.append(state["func_evals"])
    return torch.stack(solutions), torch.tensor(iterations), torch.tensor(evaluations)


def _solve_coupled_with_torch(loss_of_rows: RowLoss, x0: Tensor, config: LBFGSConfig) -> Tensor:
    """torch.optim.LBFGS on the summed loss of the whole batch (one vector, one line search)."""
    param = x0.clone().requires_grad_(True)
    optimizer = _torch_lbfgs(param, config)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = loss_of_rows(param, slice(None)).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return param.detach()


def benchmark_against_torch_lbfgs(
    *,
    problem: ProblemKind = "robust_regression",
    batch: int = 64,
    n_params: int = 1000,
    n_residuals: int = 1000,
    max_iter: int = 100,
    history_size: int = 10,
    tolerance_grad: float = 1e-5,
    tolerance_change: float = 1e-9,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    loss_scale_decades: float = 0.0,
    include_coupled: bool = True,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Time ``minimize_batched`` on B problems at once vs ``torch.optim.LBFGS`` one at a time.

    Both use strong-Wolfe line search, the same max_iter, history and tolerances (note that
    tolerance_change differs in meaning: torch's is absolute, ours relative above 1) and
    start from zero. Returns problems/s for both, the speedup, and mean final loss / iterations /
    evaluations for both so that quality is compared too. With ``include_coupled`` it also times
    torch.optim.LBFGS on the summed batch loss (one shared line search), the naive batched use.

    ``loss_scale_decades`` > 0 multiplies problem b's loss by a factor spread log-uniformly over
    that many decades (heterogeneous problems, like videos of different lengths); the solvers
    see the scaled losses, the reported mean losses are unscaled.

    ``num_threads`` sets torch's intra-op threads for the run (restored afterwards). On a shared or
    loaded CPU host use 1: waiting OpenMP threads distort both timings (see docs/solver.md).
    """
    with _intra_op_threads(num_threads):
        return _run_benchmark(
            problem=problem,
            batch=batch,
            n_params=n_params,
            n_residuals=n_residuals,
            max_iter=max_iter,
            history_size=history_size,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            dtype=dtype,
            device=device,
            seed=seed,
            loss_scale_decades=loss_scale_decades,
            include_coupled=include_coupled,
        )


@contextlib.contextmanager
def _intra_op_threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count inside the block (no change for None)."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_benchmark(
    *,
    problem: ProblemKind,
    batch: int,
    n_params: int,
    n_residuals: int,
    max_iter: int,
    history_size: int,
    tolerance_grad: float,
    tolerance_change: float,
    dtype: torch.dtype,
    device: str | torch.device,
    seed: int,
    loss_scale_decades: float,
    include_coupled: bool,
) -> dict[str, Any]:
    """Body of ``benchmark_against_torch_lbfgs`` (same arguments)."""
    unscaled_loss_of_rows = make_problem_batch(
        problem, batch=batch, n_params=n_params, n_residuals=n_residuals, seed=seed, dtype=dtype, device=device
    )
    exponents = torch.linspace(-0.5, 0.5, batch, dtype=torch.float64) * loss_scale_decades
    loss_scales = (10.0**exponents).to(dtype=dtype, device=device)  # (B,)

    def loss_of_rows(x: Tensor, rows: slice) -> Tensor:
        return unscaled_loss_of_rows(x, rows) * loss_scales[rows]

    def mean_unscaled_loss(x: Tensor) -> float:
        with torch.no_grad():
            return unscaled_loss_of_rows(x, slice(None)).double().mean().item()

    config = LBFGSConfig(
        max_iter=max_iter,
        history_size=history_size,
        tolerance_grad=tolerance_grad,
        tolerance_change=tolerance_change,
        line_search="strong_wolfe",
    )
    x0 = torch.zeros(batch, n_params, dtype=dtype, device=device)

    def synchronise() -> None:
        if x0.device.type == "cuda":
            torch.cuda.synchronize(x0.device)

    # Warm both code paths once (allocator, autograd) on a two-problem slice.
    warm = LBFGSConfig(max_iter=2, line_search="strong_wolfe")
    minimize_batched(lambda x: loss_of_rows(x, slice(0, 2)), x0[:2], config=warm)
    _solve_one_by_one_with_torch(loss_of_rows, x0[:1], warm)

    synchronise()
    started, started_cpu = time.perf_counter(), time.process_time()
    ours = minimize_batched(lambda x: loss_of_rows(x, slice(None)), x0, config=config)
    synchronise()
    ours_seconds, ours_cpu = time.perf_counter() - started, time.process_time() - started_cpu

    started, started_cpu = time.perf_counter(), time.process_time()
    torch_x, torch_iterations, torch_evals = _solve_one_by_one_with_torch(loss_of_rows, x0, config)
    synchronise()
    torch_seconds, torch_cpu = time.perf_counter() - started, time.process_time() - started_cpu

    report: dict[str, Any] = {
        "problem": problem,
        "problems": batch,
        "n_params": n_params,
        "n_residuals": n_residuals,
        "max_iter": max_iter,
        "loss_scale_decades": loss_scale_decades,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(x0.device),
        "threads": torch.get_num_threads(),
        "batched_seconds": ours_seconds,
        "torch_seconds": torch_seconds,
        # Process CPU time: less sensitive than wall time to other jobs on a shared host.
        "batched_cpu_seconds": ours_cpu,
        "torch_cpu_seconds": torch_cpu,
        "batched_problems_per_s": batch / ours_seconds,
        "torch_problems_per_s": batch / torch_seconds,
        "speedup": torch_seconds / ours_seconds,
        "batched_mean_loss": mean_unscaled_loss(ours.x),
        "torch_mean_loss": mean_unscaled_loss(torch_x),
        "batched_mean_iterations": ours.iterations.double().mean().item(),
        "torch_mean_iterations": torch_iterations.double().mean().item(),
        "batched_mean_evals": ours.function_evals.double().mean().item(),
        "torch_mean_evals": torch_evals.double().mean().item(),
        "batched_closure_calls": ours.closure_calls,
        "batched_converged_fraction": ours.converged.double().mean().item(),
    }
    if include_coupled:
        started = time.perf_counter()
        coupled_x = _solve_coupled_with_torch(loss_of_rows, x0, config)
        synchronise()
        report["coupled_seconds"] = time.perf_counter() - started
        report["coupled_mean_loss"] = mean_unscaled_loss(coupled_x)
    return report
