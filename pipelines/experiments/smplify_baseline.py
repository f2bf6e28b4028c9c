"""The SMPLify-style baseline the batched fitter is measured against (``labelmill bench fit``).

Same energy, same data, same stopping rule, done the way per-video research code does it:
one video at a time, smplx's full-mesh forward (all 6890 vertices, then joints), and
``torch.optim.LBFGS`` (one line search for the whole parameter vector, a host sync per
evaluation). Only the speed should differ.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from labelmill.models.pose3d_fit import FitResult, Pose3dEnergy, VideoBatch, build_problem, finish

__all__ = ["full_mesh_joints_fn", "fit_videos_one_by_one"]


def full_mesh_joints_fn(body_model: torch.nn.Module):
    """A ``joints_fn`` for :class:`Pose3dEnergy` that runs smplx's full-mesh forward."""

    def joints_fn(betas: Tensor, global_orient: Tensor, body_pose: Tensor) -> tuple[Tensor, Tensor]:
        out = body_model(betas, global_orient, body_pose, return_vertices=True)
        return out.joints, out.keypoints3d

    return joints_fn


def fit_videos_one_by_one(energy: Pose3dEnergy, batch: VideoBatch) -> FitResult:
    """Fit each problem of ``batch`` alone with ``torch.optim.LBFGS`` (strong Wolfe)."""
    solver = energy.config.solver
    results: list[FitResult] = []
    for i in range(batch.batch_size):
        problem = build_problem(energy, batch.select(slice(i, i + 1)))
        x = problem.x0.clone().requires_grad_(True)
        free = problem.free.to(x.dtype)
        optimizer = torch.optim.LBFGS(
            [x], lr=1.0, max_iter=solver.max_iter, history_size=solver.history_size,
            tolerance_grad=solver.tolerance_grad, tolerance_change=solver.tolerance_change,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = problem.objective(x).sum()
            loss.backward()
            x.grad.mul_(free)  # padded frames stay fixed, as in the batched solver
            return loss

        optimizer.step(closure)
        state = optimizer.state[optimizer._params[0]]
        with torch.no_grad():
            loss = problem.objective(x)
        iterations = torch.tensor([int(state.get("n_iter", 0))])
        results.append(finish(problem, x.detach(), loss, iterations, torch.tensor([True])))
    return FitResult(**{
        f.name: torch.cat([getattr(r, f.name) for r in results]) for f in dataclasses.fields(FitResult)
    })
