"""Batched L-BFGS: many independent minimisation problems solved together, each on its own terms.

``minimize_batched(closure, x0 (B, N), config=...)`` minimises B unrelated smooth functions at
once. Problem ``b`` owns row ``b`` of the parameter matrix and entry ``b`` of the loss vector the
closure returns; it has its own L-BFGS history, its own line search, step size and stopping test,
and once it stops its row is frozen (bit-for-bit) while the others go on.

The solver is a flat, per-problem state machine: every *step* makes ONE batched closure call
(forward + autograd backward) in which each running problem evaluates the trial point of its own
line search. A problem whose line search ends in that step commits the point, updates its history,
tests convergence and moves straight on to its next direction and first trial, without waiting for
the others' line searches. Problems therefore never wait on each other and no closure call is
wasted on a problem that is merely waiting. All state lives in tensors on ``x0``'s device; the host
reads a flag (``running.any()``) only every ``config.check_every`` steps. See ``docs/solver.md``.

Per-problem state (B problems, N parameters, m = history_size):

==================  ============  ==========================================================
x, grad             (B, N)        committed iterate and its (masked) gradient
loss                (B,)          loss at x
direction           (B, N)        current search direction d
s_hist, y_hist      (B, m, N)     ring buffers of steps s = x_{k+1} - x_k, y = g_{k+1} - g_k
rho                 (B, m)        1 / (y's) per stored pair
hist_head           (B,) int64    ring slot written next
hist_count          (B,) int64    number of valid pairs (0..m)
gamma               (B,)          initial inverse-Hessian scale s'y / y'y of the newest pair
line-search state   (B,) each     phase, trial step, best (lowest, sufficient-decrease) point,
                                  far end of the zoom bracket, evaluations used
==================  ============  ==========================================================
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "LBFGSConfig",
    "LBFGSResult",
    "PackLayout",
    "STOP_REASON_NAMES",
    "StopReason",
    "minimize_batched",
    "pack",
    "unpack",
]

LineSearchName = Literal["armijo", "strong_wolfe"]
_LINE_SEARCHES: tuple[str, ...] = ("armijo", "strong_wolfe")
_SUPPORTED_DTYPES = (torch.float32, torch.float64)


class StopReason(enum.IntEnum):
    """Why a problem stopped; the int code is what ``LBFGSResult.reason`` holds."""

    GRAD_TOL = 0  # max |grad| over free parameters <= tolerance_grad (converged)
    CHANGE_TOL = 1  # relative loss decrease of the last step <= tolerance_change (converged)
    MAX_ITER = 2  # max_iter accepted steps taken without meeting a tolerance
    LINE_SEARCH_FAILED = 3  # no decrease found along steepest descent within max_line_search
    NON_FINITE_START = 4  # loss or gradient at x0 is not finite; x0 returned unchanged


STOP_REASON_NAMES: tuple[str, ...] = tuple(reason.name.lower() for reason in StopReason)
_RUNNING = -1  # reason code while a problem is still being solved (never returned)


# --------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------


@dataclass
class LBFGSConfig:
    """Knobs of ``minimize_batched``; every tolerance is applied to each problem separately."""

    # Accepted steps (outer iterations) per problem before it stops with reason "max_iter".
    max_iter: int = 100
    # Number of (s, y) correction pairs kept per problem (m).
    history_size: int = 10
    # Converged when max |grad| over the problem's free parameters <= this (absolute, like
    # torch.optim.LBFGS and scipy's pgtol; normalise the loss, e.g. per frame, to make it scale-free).
    tolerance_grad: float = 1e-5
    # Converged when |f_k - f_{k+1}| <= this * max(|f_k|, |f_{k+1}|, 1): relative for losses
    # above 1, absolute below (scipy L-BFGS-B's ftol rule); also when the quasi-Newton model's
    # predicted decrease -g'd/2 for the next step is that small. Either change below the dtype's
    # resolution, eps * |f|, also stops (it cannot be measured), even when this is 0.
    tolerance_change: float = 1e-7
    # "strong_wolfe" (default): bracketing + zoom with cubic interpolation (Nocedal & Wright
    # Alg. 3.5/3.6); guarantees s'y > 0 and can lengthen short steps. "armijo": sufficient
    # decrease only, with safeguarded cubic backtracking.
    line_search: LineSearchName = "strong_wolfe"
    # Closure evaluations allowed per line search (per problem, per iteration).
    max_line_search: int = 20
    # First trial step along the L-BFGS direction; the very first iteration (and any restart
    # from steepest descent) uses initial_step * min(1, 1 / ||grad||_2).
    initial_step: float = 1.0
    # Solver steps (one batched closure call each; ~one iteration per problem) between host
    # syncs that test whether every problem has stopped. 1 is right on CPU; 5-20 on CUDA.
    check_every: int = 1
    # Wolfe sufficient-decrease constant c1 (0 < c1 < c2 < 1).
    sufficient_decrease: float = 1e-4
    # Wolfe curvature constant c2 (strong_wolfe only); 0.9 is the quasi-Newton standard.
    curvature: float = 0.9

    def __post_init__(self) -> None:
        for name in ("max_iter", "history_size", "max_line_search", "check_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"LBFGSConfig.{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"LBFGSConfig.{name} must be >= 1, got {value}")
        for name in ("tolerance_grad", "tolerance_change", "initial_step", "sufficient_decrease", "curvature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"LBFGSConfig.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"LBFGSConfig.{name} must be finite and >= 0, got {value}")
        if self.initial_step <= 0:
            raise ValueError(f"LBFGSConfig.initial_step must be > 0, got {self.initial_step}")
        if not 0 < self.sufficient_decrease < self.curvature < 1:
            raise ValueError(
                "LBFGSConfig.sufficient_decrease and LBFGSConfig.curvature must satisfy "
                f"0 < sufficient_decrease < curvature < 1, got {self.sufficient_decrease} and {self.curvature}"
            )
        if self.line_search not in _LINE_SEARCHES:
            raise ValueError(f"LBFGSConfig.line_search must be one of {_LINE_SEARCHES}, got {self.line_search!r}")


@dataclass(frozen=True)
class LBFGSResult:
    """Outcome per problem. Tensors live on ``x0``'s device."""

    x: Tensor  # (B, N) final parameters (x0's dtype)
    loss: Tensor  # (B,) loss at x
    converged: Tensor  # (B,) bool: stopped by grad_tol or change_tol
    iterations: Tensor  # (B,) int64 accepted steps
    function_evals: Tensor  # (B,) int64 closure evaluations spent on this problem (incl. x0)
    reason: Tensor  # (B,) int64 code, a StopReason; names in STOP_REASON_NAMES
    closure_calls: int  # batched closure calls made (host count)

    def reason_names(self) -> list[str]:
        """Stop reason of each problem as a name from STOP_REASON_NAMES (syncs to host)."""
        return [STOP_REASON_NAMES[code] for code in self.reason.tolist()]


# --------------------------------------------------------------------------------------------
# Packing a dict of batched tensors into the flat (B, N) layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackLayout:
    """Where each named tensor sits in a packed (B, N) matrix."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # per-name shape without the batch dim

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def total(self) -> int:
        return sum(self.sizes)


def pack(tensors: Mapping[str, Tensor]) -> tuple[Tensor, PackLayout]:
    """Flatten ``{name: (B, *shape)}`` into one ``(B, N)`` matrix (in mapping order).

    All tensors must share batch size, dtype and device. Works for bool masks too, so a
    parameter dict and its "free" mask dict pack into aligned matrices.
    """
    if not tensors:
        raise ValueError("pack: no tensors given")
    names = tuple(tensors)
    first = tensors[names[0]]
    flats: list[Tensor] = []
    shapes: list[tuple[int, ...]] = []
    for name in names:
        value = tensors[name]
        if value.dim() < 1:
            raise ValueError(f"pack: {name!r} has no batch dimension")
        if value.shape[0] != first.shape[0]:
            raise ValueError(f"pack: {name!r} has batch size {value.shape[0]}, expected {first.shape[0]}")
        if value.dtype != first.dtype or value.device != first.device:
            raise ValueError(
                f"pack: {name!r} is {value.dtype} on {value.device}, expected {first.dtype} on {first.device}"
            )
        shapes.append(tuple(value.shape[1:]))
        flats.append(value.reshape(value.shape[0], -1))
    return torch.cat(flats, dim=1), PackLayout(names=names, shapes=tuple(shapes))


def unpack(flat: Tensor, layout: PackLayout) -> dict[str, Tensor]:
    """Inverse of ``pack``: ``(B, N)`` -> ``{name: (B, *shape)}`` views (differentiable)."""
    if flat.dim() != 2 or flat.shape[1] != layout.total:
        raise ValueError(f"unpack: expected a (B, {layout.total}) matrix, got shape {tuple(flat.shape)}")
    pieces = torch.split(flat, list(layout.sizes), dim=1)
    return {
        name: piece.reshape(flat.shape[0], *shape)
        for name, shape, piece in zip(layout.names, layout.shapes, pieces, strict=True)
    }


# --------------------------------------------------------------------------------------------
# Pure kernels
# --------------------------------------------------------------------------------------------


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """(B, N), (B, N) -> (B,) per-row inner product."""
    return torch.linalg.vecdot(a, b)


def _two_loop_direction(
    grad: Tensor, s_hist: Tensor, y_hist: Tensor, rho: Tensor, head: Tensor, count: Tensor, gamma: Tensor
) -> Tensor:
    """L-BFGS two-loop recursion (Nocedal & Wright Alg. 7.4), vectorised over problems.

    grad (B, N); s_hist, y_hist (B, m, N) ring buffers; rho (B, m); head, count (B,) int64;
    gamma (B,). Problem b uses its ``count[b]`` newest pairs, newest at slot ``head[b] - 1``.
    Returns the search direction ``-H grad`` (B, N); it is ``-grad`` where count is 0.
    """
    batch, memory, n_params = s_hist.shape
    ages = torch.arange(memory, device=grad.device)
    slots = torch.remainder(head[:, None] - 1 - ages[None, :], memory)  # (B, m), newest first
    # Flat row index into (B * m, N): index_select copies whole rows (much faster than fancy indexing).
    flat = (torch.arange(batch, device=grad.device)[:, None] * memory + slots).reshape(-1)
    s_by_age = s_hist.reshape(batch * memory, n_params).index_select(0, flat).reshape(batch, memory, n_params)
    y_by_age = y_hist.reshape(batch * memory, n_params).index_select(0, flat).reshape(batch, memory, n_params)
    # rho of pairs a problem does not have is 0, which turns their terms off exactly.
    rho_by_age = torch.where(ages[None, :] < count[:, None], rho.reshape(-1)[flat].reshape(batch, memory), 0.0)
    q = grad
    alphas: list[Tensor] = []
    for age in range(memory):  # newest -> oldest
        alpha = rho_by_age[:, age] * _row_dot(s_by_age[:, age], q)
        q = torch.addcmul(q, alpha[:, None], y_by_age[:, age], value=-1.0)
        alphas.append(alpha)
    r = torch.where(count > 0, gamma, torch.ones_like(gamma))[:, None] * q
    for age in reversed(range(memory)):  # oldest -> newest
        beta = rho_by_age[:, age] * _row_dot(y_by_age[:, age], r)
        r = torch.addcmul(r, (alphas[age] - beta)[:, None], s_by_age[:, age])
    return -r


def _cubic_minimizer(t1: Tensor, f1: Tensor, g1: Tensor, t2: Tensor, f2: Tensor, g2: Tensor) -> Tensor:
    """Minimiser of the cubic interpolating (t, f, f') at two points (N&W eq. 3.59), per row.

    Returns NaN (or +-inf) where the cubic has no finite minimiser; callers safeguard.
    """
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (t1 - t2)
    radicand = d1 * d1 - g1 * g2
    d2 = torch.sign(t2 - t1) * torch.sqrt(radicand)  # NaN where radicand < 0
    return t2 - (t2 - t1) * (g2 + d2 - d1) / (g2 - g1 + 2.0 * d2)


def _zoom_trial(t_lo: Tensor, f_lo: Tensor, g_lo: Tensor, t_hi: Tensor, f_hi: Tensor, g_hi: Tensor) -> Tensor:
    """Next trial inside the bracket [t_lo, t_hi] (either order): safeguarded cubic, else bisection."""
    cubic = _cubic_minimizer(t_lo, f_lo, g_lo, t_hi, f_hi, g_hi)
    low, high = torch.minimum(t_lo, t_hi), torch.maximum(t_lo, t_hi)
    margin = 0.1 * (high - low)
    clamped = torch.minimum(torch.maximum(cubic, low + margin), high - margin)
    return torch.where(torch.isfinite(cubic), clamped, 0.5 * (t_lo + t_hi))


def _extrapolation_trial(t_prev: Tensor, f_prev: Tensor, g_prev: Tensor, t: Tensor, f: Tensor, g: Tensor) -> Tensor:
    """Longer trial step after one that decreased f but was still descending (bracketing phase).

    Cubic step clamped to [t + 1.1 (t - t_prev), t + 4 (t - t_prev)] (More-Thuente's bounds);
    the upper bound where the cubic has no finite minimiser.
    """
    cubic = _cubic_minimizer(t_prev, f_prev, g_prev, t, f, g)
    low, high = t + 1.1 * (t - t_prev), t + 4.0 * (t - t_prev)
    clamped = torch.minimum(torch.maximum(cubic, low), high)
    return torch.where(torch.isfinite(cubic), clamped, high)


# --------------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------------


class _Evaluator:
    """Calls the user closure on a (B, N) batch and returns (loss (B,), masked grad (B, N))."""

    def __init__(self, closure: Callable[[Tensor], Tensor], free: Tensor) -> None:
        self._closure = closure
        self._free = free
        self.calls = 0

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.calls += 1
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            loss = self._closure(leaf)
            if not isinstance(loss, Tensor) or loss.shape != (x.shape[0],):
                shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"closure must return a loss of shape ({x.shape[0]},), one per problem; got {shape}")
            grad = None
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss.sum(), leaf, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(x)
        loss = loss.detach().to(x.dtype)
        return loss, torch.where(self._free, grad, torch.zeros_like(grad))


def _free_mask(mask: Tensor | None, x0: Tensor) -> Tensor:
    """(B, N) bool: True where a parameter is optimised."""
    if mask is None:
        return torch.ones_like(x0, dtype=torch.bool)
    if mask.shape not in (x0.shape, x0.shape[1:]):
        raise ValueError(f"mask must have shape {tuple(x0.shape)} or ({x0.shape[1]},), got {tuple(mask.shape)}")
    free = mask.to(device=x0.device) != 0
    return free.expand_as(x0).clone()


def minimize_batched(
    closure: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    config: LBFGSConfig,
    mask: Tensor | None = None,
) -> LBFGSResult:
    """Minimise B independent problems with per-problem L-BFGS.

    Args:
        closure: ``closure(x (B, N)) -> loss (B,)``; row b's loss must depend only on ``x[b]``.
            Gradients come from autograd of ``loss.sum()``. It is always called with the whole
            batch; rows of stopped problems hold their frozen values (their output is ignored).
            A non-finite loss or gradient at a trial point makes the line search back off.
        x0: (B, N) float32 or float64 starting points (not modified); device of the solve.
        config: solver knobs (``LBFGSConfig``).
        mask: optional (B, N) or (N,) bool/float; True / nonzero marks a FREE (optimised)
            parameter, False / 0 a fixed or padded one: its gradient is zeroed and its value is
            returned bit-for-bit unchanged.

    Returns:
        ``LBFGSResult`` with per-problem x, loss, converged, iterations, function_evals, reason.
    """
    if not isinstance(config, LBFGSConfig):
        raise TypeError(f"config must be an LBFGSConfig, got {type(config).__name__}")
    if not isinstance(x0, Tensor) or x0.dim() != 2:
        raise ValueError(f"x0 must be a (B, N) tensor, got {getattr(x0, 'shape', type(x0).__name__)}")
    if x0.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"x0 must be float32 or float64, got {x0.dtype}")
    with torch.no_grad():
        return _Solver(closure, x0.detach().clone(), config, _free_mask(mask, x0)).run()


class _Solver:
    """State and steps of one batched solve (internal; see module docstring for the state)."""

    def __init__(self, closure: Callable[[Tensor], Tensor], x0: Tensor, config: LBFGSConfig, free: Tensor) -> None:
        self.config = config
        self.free = free
        self.evaluate = _Evaluator(closure, free)
        batch, n_params = x0.shape
        memory = config.history_size
        self.eps = torch.finfo(x0.dtype).eps
        self.rows = torch.arange(batch, device=x0.device)
        self.x = x0
        long_zeros = torch.zeros(batch, dtype=torch.int64, device=x0.device)
        self.s_hist = x0.new_zeros(batch, memory, n_params)
        self.y_hist = x0.new_zeros(batch, memory, n_params)
        self.rho = x0.new_zeros(batch, memory)
        self.hist_head = long_zeros.clone()
        self.hist_count = long_zeros.clone()
        self.gamma = x0.new_ones(batch)
        self.iterations = long_zeros.clone()
        self.function_evals = long_zeros.clone()
        self.reason = torch.full((batch,), _RUNNING, dtype=torch.int64, device=x0.device)

    # -- helpers ---------------------------------------------------------------------------

    def _stop(self, where: Tensor, reason: StopReason) -> None:
        """Record ``reason`` for newly stopping problems (first reason wins) and freeze them."""
        newly = where & self.running
        self.reason = torch.where(newly, torch.full_like(self.reason, int(reason)), self.reason)
        self.running = self.running & ~newly

    def _change_is_small(self, change: Tensor, loss_magnitude: Tensor) -> Tensor:
        """(B,) bool: a loss change below tolerance_change * max(|f|, 1), or below what the
        dtype can resolve at |f| (eps * |f|), so that no further progress can be measured."""
        user_limit = self.config.tolerance_change * torch.clamp(loss_magnitude, min=1.0)
        return (change <= user_limit) | (change <= self.eps * loss_magnitude)

    def _begin_iteration(self, restart: Tensor) -> None:
        """For rows in ``restart`` (B,): new direction from the history and a fresh line search."""
        direction = _two_loop_direction(
            self.grad, self.s_hist, self.y_hist, self.rho, self.hist_head, self.hist_count, self.gamma
        )
        direction = torch.where(self.free, direction, torch.zeros_like(direction))
        slope = _row_dot(self.grad, direction)
        # A quasi-Newton direction that is not a descent direction (rounding, bad pairs) is
        # replaced by steepest descent and the problem's history is dropped.
        not_descent = ~(slope < 0) | ~torch.isfinite(slope)
        direction = torch.where(not_descent[:, None], -self.grad, direction)
        slope = torch.where(not_descent, -_row_dot(self.grad, self.grad), slope)
        self.hist_count = torch.where(restart & not_descent, torch.zeros_like(self.hist_count), self.hist_count)
        # Predicted change test: the quadratic model's decrease for the full quasi-Newton step is
        # -g'd / 2. Below the change tolerance (or the loss's float resolution) no line search can
        # measure progress, so stop now instead of spending evaluations on a doomed search.
        predicted_small = self._change_is_small(-0.5 * slope, self.loss.abs())
        self._stop(restart & (self.hist_count > 0) & predicted_small, StopReason.CHANGE_TOL)

        grad_norm = torch.linalg.vector_norm(self.grad, dim=-1)
        first_step = self.config.initial_step * torch.clamp(1.0 / grad_norm, max=1.0)
        step = torch.where(self.hist_count > 0, torch.full_like(first_step, self.config.initial_step), first_step)

        keep = ~restart
        keep_rows = keep[:, None]
        self.direction = torch.where(keep_rows, self.direction, direction)
        self.slope0 = torch.where(keep, self.slope0, slope)
        self.step = torch.where(keep, self.step, step)
        self.zooming = self.zooming & keep
        self.ls_evals = torch.where(keep, self.ls_evals, torch.zeros_like(self.ls_evals))
        self.best_step = torch.where(keep, self.best_step, torch.zeros_like(self.best_step))
        self.best_loss = torch.where(keep, self.best_loss, self.loss)
        self.best_slope = torch.where(keep, self.best_slope, slope)
        self.best_grad = torch.where(keep_rows, self.best_grad, self.grad)
        # Bracket narrower than the float resolution of x: no further progress possible.
        dir_max = self.direction.abs().amax(dim=-1)
        x_max = self.x.abs().amax(dim=-1)
        self.min_width = torch.where(keep, self.min_width, self.eps * (1.0 + x_max) / dir_max)

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> LBFGSResult:
        cfg = self.config
        batch = self.x.shape[0]
        self.loss, self.grad = self.evaluate(self.x)
        self.function_evals += 1
        start_ok = torch.isfinite(self.loss) & torch.isfinite(self.grad).all(dim=-1)
        self.running = torch.ones(batch, dtype=torch.bool, device=self.x.device)
        self._stop(~start_ok, StopReason.NON_FINITE_START)
        self._stop(self.grad.abs().amax(dim=-1) <= cfg.tolerance_grad, StopReason.GRAD_TOL)

        # Line-search state (B,) — initialised for every row by _begin_iteration.
        self.direction = torch.zeros_like(self.x)
        self.slope0 = torch.zeros_like(self.loss)
        self.step = torch.zeros_like(self.loss)
        self.zooming = torch.zeros_like(self.running)
        self.ls_evals = torch.zeros_like(self.iterations)
        self.best_step = torch.zeros_like(self.loss)
        self.best_loss = self.loss.clone()
        self.best_slope = torch.zeros_like(self.loss)
        self.best_grad = self.grad.clone()
        self.far_step = torch.zeros_like(self.loss)
        self.far_loss = torch.zeros_like(self.loss)
        self.far_slope = torch.zeros_like(self.loss)
        self.min_width = torch.zeros_like(self.loss)
        self._begin_iteration(torch.ones_like(self.running))

        # Each accepted step costs <= max_line_search evaluations; a failed search is retried once
        # from steepest descent after dropping the history, so this bound is never the binding one.
        max_steps = (2 * cfg.max_iter + 1) * cfg.max_line_search
        if bool(self.running.any()):
            for steps in range(1, max_steps + 1):
                self._step()
                if steps % cfg.check_every == 0 and not bool(self.running.any()):
                    break
        self._stop(self.running, StopReason.MAX_ITER)
        converged = (self.reason == StopReason.GRAD_TOL) | (self.reason == StopReason.CHANGE_TOL)
        return LBFGSResult(
            x=self.x,
            loss=self.loss,
            converged=converged,
            iterations=self.iterations,
            function_evals=self.function_evals,
            reason=self.reason,
            closure_calls=self.evaluate.calls,
        )

    def _step(self) -> None:
        """One batched closure call: advance every running problem's line search by one trial."""
        cfg = self.config
        running = self.running
        step = self.step
        x_trial = torch.where(running[:, None] & self.free, self.x + step[:, None] * self.direction, self.x)
        trial_loss, trial_grad = self.evaluate(x_trial)
        self.function_evals = self.function_evals + running.long()
        self.ls_evals = self.ls_evals + running.long()
        trial_slope = _row_dot(trial_grad, self.direction)
        valid = torch.isfinite(trial_loss) & torch.isfinite(trial_grad).all(dim=-1)
        trial_loss = torch.where(valid, trial_loss, torch.full_like(trial_loss, math.inf))
        trial_slope = torch.where(valid, trial_slope, torch.zeros_like(trial_slope))

        # Sufficient decrease and strictly better than the best point so far. The best point is
        # the bracket's low end in the zoom phase and the previous trial while bracketing.
        armijo = trial_loss <= self.loss + cfg.sufficient_decrease * step * self.slope0
        sufficient = running & valid & armijo & (trial_loss < self.best_loss)
        if cfg.line_search == "strong_wolfe":
            curvature_ok = trial_slope.abs() <= -cfg.curvature * self.slope0
        else:
            curvature_ok = torch.ones_like(sufficient)
        accepted = sufficient & curvature_ok

        prev_step, prev_loss, prev_slope = self.best_step, self.best_loss, self.best_slope
        bracketing = ~self.zooming
        # Where the far end of the bracket moves (N&W Alg. 3.5 / 3.6 with lo == best).
        far_is_trial = running & ~sufficient
        far_is_prev = running & sufficient & ~curvature_ok & torch.where(
            bracketing, trial_slope >= 0, trial_slope * (self.far_step - prev_step) >= 0
        )
        self.far_step = torch.where(far_is_trial, step, torch.where(far_is_prev, prev_step, self.far_step))
        self.far_loss = torch.where(far_is_trial, trial_loss, torch.where(far_is_prev, prev_loss, self.far_loss))
        self.far_slope = torch.where(far_is_trial, trial_slope, torch.where(far_is_prev, prev_slope, self.far_slope))
        self.zooming = self.zooming | far_is_trial | far_is_prev

        self.best_step = torch.where(sufficient, step, self.best_step)
        self.best_loss = torch.where(sufficient, trial_loss, self.best_loss)
        self.best_slope = torch.where(sufficient, trial_slope, self.best_slope)
        self.best_grad = torch.where(sufficient[:, None], trial_grad, self.best_grad)

        next_step = torch.where(
            self.zooming,
            _zoom_trial(self.best_step, self.best_loss, self.best_slope, self.far_step, self.far_loss, self.far_slope),
            _extrapolation_trial(prev_step, prev_loss, prev_slope, step, trial_loss, trial_slope),
        )
        self.step = torch.where(running, next_step, self.step)

        collapsed = self.zooming & ((self.far_step - self.best_step).abs() <= self.min_width)
        search_over = running & ~accepted & ((self.ls_evals >= cfg.max_line_search) | collapsed)
        commit = accepted | (search_over & (self.best_step > 0))
        failed = search_over & ~(self.best_step > 0)
        self._commit(commit)

        # A failed search with history is retried from steepest descent; without history it ends.
        had_history = self.hist_count > 0
        self._stop(failed & ~had_history, StopReason.LINE_SEARCH_FAILED)
        self.hist_count = torch.where(failed, torch.zeros_like(self.hist_count), self.hist_count)
        self._begin_iteration(self.running & (commit | failed))

    def _commit(self, commit: Tensor) -> None:
        """Move rows in ``commit`` (B,) to their best line-search point, update history, test stops."""
        cfg = self.config
        commit_rows = commit[:, None]
        # Same expression as the trial point, so x_new is bit-identical to the evaluated point.
        x_new = torch.where(commit_rows & self.free, self.x + self.best_step[:, None] * self.direction, self.x)
        s = x_new - self.x
        y = torch.where(commit_rows, self.best_grad - self.grad, torch.zeros_like(self.grad))
        sy, yy = _row_dot(s, y), _row_dot(y, y)
        store = commit & (sy > self.eps * yy)  # curvature condition; always true after strong Wolfe

        head = self.hist_head
        store_rows = store[:, None]
        slot = self.rows * cfg.history_size + head  # flat index of each problem's write slot
        for hist, new in ((self.s_hist, s), (self.y_hist, y)):
            flat_hist = hist.view(-1, hist.shape[-1])
            flat_hist.index_copy_(0, slot, torch.where(store_rows, new, flat_hist.index_select(0, slot)))
        flat_rho = self.rho.view(-1)
        flat_rho.index_copy_(0, slot, torch.where(store, 1.0 / sy, flat_rho.index_select(0, slot)))
        self.gamma = torch.where(store, sy / yy, self.gamma)
        self.hist_head = torch.where(store, torch.remainder(head + 1, cfg.history_size), head)
        self.hist_count = torch.where(store, torch.clamp(self.hist_count + 1, max=cfg.history_size), self.hist_count)

        loss_old = self.loss
        self.x = x_new
        self.loss = torch.where(commit, self.best_loss, self.loss)
        self.grad = torch.where(commit_rows, self.best_grad, self.grad)
        self.iterations = self.iterations + commit.long()

        loss_magnitude = torch.maximum(loss_old.abs(), self.loss.abs())
        change_small = self._change_is_small((loss_old - self.loss).abs(), loss_magnitude)
        self._stop(commit & (self.grad.abs().amax(dim=-1) <= cfg.tolerance_grad), StopReason.GRAD_TOL)
        self._stop(commit & change_small, StopReason.CHANGE_TOL)
        self._stop(commit & (self.iterations >= cfg.max_iter), StopReason.MAX_ITER)
