"""``labelmill prior``: fit, inspect and rebuild GMM pose priors (see docs/pose_prior.md).

    labelmill prior fit --poses POSES.npz --components 8 --out PRIOR.npz
    labelmill prior show [--path PRIOR.npz|gmm_08.pkl]
    labelmill prior build-default --out models/data/gmm_prior_default.npz
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:
    from labelmill.models.gmm_em import GMMParams

log = logging.getLogger(__name__)

_DEFAULT_KEYS = ("body_pose", "poses")  # tried in this order when --key is not given


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prior",
        help="fit or inspect the GMM pose prior",
        description="Fit a Gaussian-mixture pose prior on SMPL body poses, or inspect one.",
    )
    actions = parser.add_subparsers(dest="prior_action", metavar="ACTION")
    actions.required = True

    fit = actions.add_parser(
        "fit",
        help="fit a GMM prior on body poses from an .npz",
        description="Fit a full-covariance GMM on (N, 69) SMPL body poses read from an .npz and save it as .npz. "
        "Arrays with 72 columns (global + body) lose the first 3; 156 columns (SMPL+H, e.g. AMASS) give "
        "body joints 1..21 from columns 3:66 with SMPL's hand joints 22-23 set to zero.",
    )
    fit.add_argument("--poses", required=True, metavar="FILE.npz", help="npz holding the poses (any fsspec URL)")
    fit.add_argument(
        "--key", default=None, help="array name in the npz (default: the only array, else body_pose, else poses)"
    )
    fit.add_argument("--components", type=int, default=8, help="number of Gaussians (default 8)")
    fit.add_argument("--seed", type=int, default=0, help="seed for k-means++ initialisation (default 0)")
    fit.add_argument("--max-iter", type=int, default=200, help="most EM iterations (default 200)")
    fit.add_argument(
        "--tol", type=float, default=1e-5, help="stop when the mean log-likelihood changes less (default 1e-5)"
    )
    fit.add_argument("--reg-covar", type=float, default=1e-4, help="added to covariance diagonals (default 1e-4)")
    fit.add_argument("--out", required=True, metavar="PRIOR.npz", help="where to write the prior")
    fit.set_defaults(handler=run_fit)

    show = actions.add_parser(
        "show",
        help="print a prior's component weights and its samples' mean log-likelihood",
        description="Print component weights, the energy of the zero pose and the mean log-likelihood of "
        "samples drawn from the prior itself.",
    )
    show.add_argument("--path", default=None, help="prior .npz or SMPLify gmm_08.pkl (default: embedded prior)")
    show.add_argument("--samples", type=int, default=10_000, help="samples drawn from the prior (default 10000)")
    show.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    show.set_defaults(handler=run_show)

    build = actions.add_parser(
        "build-default",
        help="rebuild the embedded default prior",
        description="Fit the embedded default prior: 8 Gaussians on 20000 poses drawn with seed 12345 from the "
        "procedural motion library (--source motion) or the hand-specified per-joint table (--source hand).",
    )
    build.add_argument("--out", required=True, metavar="PRIOR.npz", help="where to write the prior")
    build.add_argument(
        "--source",
        choices=("auto", "motion", "hand"),
        default="auto",
        help="training poses: motion library, hand-specified table, or auto (motion if installed)",
    )
    build.add_argument("--samples", type=int, default=None, help="training poses (default 20000)")
    build.add_argument("--seed", type=int, default=None, help="seed for poses and EM (default 12345)")
    build.add_argument("--components", type=int, default=None, help="number of Gaussians (default 8)")
    build.add_argument(
        "--reg-covar", type=float, default=None, help="added to covariance diagonals (default 1e-3, see docs)"
    )
    build.set_defaults(handler=run_build_default)


# --------------------------------------------------------------------------- poses input


def load_body_poses(path: str, key: str | None = None) -> np.ndarray:
    """Read ``(N, 69)`` SMPL body poses from an ``.npz`` (see the ``fit`` help for column rules)."""
    from labelmill.infra import storage
    from labelmill.pipelines.cli import UsageError

    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise UsageError(f"poses file {path} does not exist") from None
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise UsageError(f"poses file {path} is not a readable .npz ({type(exc).__name__}: {exc})") from None
    if not hasattr(npz, "files"):
        raise UsageError(f"poses file {path} is a single .npy array, not an .npz archive")
    with npz:
        keys = list(npz.files)
        if key is None:
            key = keys[0] if len(keys) == 1 else next((k for k in _DEFAULT_KEYS if k in keys), None)
            if key is None:
                raise UsageError(f"poses file {path} holds {', '.join(keys) or 'no arrays'}; choose one with --key")
        elif key not in keys:
            raise UsageError(f"poses file {path} has no array {key!r}; it holds {', '.join(keys)}")
        try:
            poses = np.asarray(npz[key])
        except ValueError as exc:  # object arrays need pickle, which we never allow
            raise UsageError(f"poses file {path}: array {key!r} cannot be read without pickle ({exc})") from None
    if poses.dtype.kind not in "fiu":
        raise UsageError(f"poses file {path}: array {key!r} is not numeric (dtype {poses.dtype})")
    return body_pose_columns(poses.astype(np.float64), name=f"{path}:{key}")


def body_pose_columns(poses: np.ndarray, *, name: str = "poses") -> np.ndarray:
    """Map common pose layouts to SMPL body poses ``(N, 69)``.

    ``(N, 69)`` as is; ``(N, 72)`` SMPL global + body: drop the first 3; ``(N, 156)`` SMPL+H
    (AMASS): columns 3:66 are body joints 1..21, and SMPL's hand joints 22-23 (which SMPL+H
    replaces by finger joints) are set to zero; ``(N, 23, 3)`` / ``(N, 24, 3)`` are flattened
    (the latter without joint 0).
    """
    from labelmill.models.pose_prior import BODY_POSE_DIM  # lazily: torch is not needed to build the CLI
    from labelmill.pipelines.cli import UsageError

    if poses.ndim == 3 and poses.shape[2] == 3 and poses.shape[1] in (23, 24):
        poses = poses[:, poses.shape[1] - 23 :].reshape(len(poses), -1)
    if poses.ndim != 2:
        raise UsageError(f"{name}: expected an (N, 69), (N, 72) or (N, 156) array, got shape {poses.shape}")
    columns = poses.shape[1]
    if columns == BODY_POSE_DIM:
        return poses
    if columns == BODY_POSE_DIM + 3:
        return poses[:, 3:]
    if columns == 156:
        body = np.zeros((len(poses), BODY_POSE_DIM))
        body[:, :63] = poses[:, 3:66]
        return body
    raise UsageError(f"{name}: expected 69, 72 or 156 columns, got {columns} (shape {poses.shape})")


# --------------------------------------------------------------------------- handlers


def run_fit(args: argparse.Namespace) -> int:
    from labelmill.models.gmm_em import fit_gmm
    from labelmill.pipelines.cli import UsageError

    poses = load_body_poses(args.poses, args.key)
    log.info("fitting %d Gaussians on %d poses from %s", args.components, len(poses), args.poses)
    started = time.perf_counter()
    try:
        params = fit_gmm(
            poses,
            components=args.components,
            seed=args.seed,
            max_iter=args.max_iter,
            tol=args.tol,
            reg_covar=args.reg_covar,
        )
    except ValueError as exc:
        raise UsageError(f"cannot fit a prior on {args.poses}: {exc}") from None
    _save(
        params,
        args.out,
        source=args.poses,
        samples=len(poses),
        seed=args.seed,
        seconds=time.perf_counter() - started,
        reg_covar=args.reg_covar,
    )
    return 0


def run_build_default(args: argparse.Namespace) -> int:
    from labelmill.models import gmm_em
    from labelmill.pipelines.cli import UsageError

    samples = gmm_em.DEFAULT_PRIOR_SAMPLES if args.samples is None else args.samples
    seed = gmm_em.DEFAULT_PRIOR_SEED if args.seed is None else args.seed
    components = gmm_em.DEFAULT_PRIOR_COMPONENTS if args.components is None else args.components
    reg_covar = gmm_em.DEFAULT_PRIOR_REG_COVAR if args.reg_covar is None else args.reg_covar
    if samples < 1:
        raise UsageError(f"--samples must be >= 1, got {samples}")
    sampler = _motion_library_sampler() if args.source in ("auto", "motion") else None
    if args.source == "motion" and sampler is None:
        raise UsageError(
            "--source motion: the procedural motion library (labelmill.operators.synth.motion) is not available"
        )
    source = "hand" if sampler is None else "motion"
    poses = None  # None: build_default_prior samples the hand-specified table
    if sampler is not None:
        poses = body_pose_columns(np.asarray(sampler(samples, seed=seed), dtype=np.float64), name="motion library")
    log.info("building the default prior: %d Gaussians on %d %s poses, seed %d", components, samples, source, seed)
    started = time.perf_counter()
    try:
        params = gmm_em.build_default_prior(
            poses, samples=samples, seed=seed, components=components, reg_covar=reg_covar
        )
    except ValueError as exc:
        raise UsageError(f"cannot build the default prior: {exc}") from None
    seconds = time.perf_counter() - started
    _save(params, args.out, source=source, samples=samples, seed=seed, seconds=seconds, reg_covar=reg_covar)
    return 0


def run_show(args: argparse.Namespace) -> int:
    import torch

    from labelmill.models.gmm_em import sample_gmm
    from labelmill.models.pose_prior import GMMPosePrior

    from labelmill.pipelines.cli import UsageError

    if args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    try:
        prior = GMMPosePrior.default() if args.path is None else GMMPosePrior.from_file(args.path)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    weights = prior.weights.double().numpy()
    means, covars = prior.means.double().numpy(), prior.covars.double().numpy()
    samples = sample_gmm(means, covars, weights, args.samples, seed=args.seed)
    with torch.no_grad():
        mean_ll = float(-prior(torch.as_tensor(samples)).double().mean())
        zero_energy = float(prior(torch.zeros(prior.dim)))
    lines = [f"prior: {args.path or 'embedded default'} ({prior.num_components} components, {prior.dim} dims)"]
    if prior.provenance:
        lines.append(f"provenance: {prior.provenance}")
    lines += [f"  component {k}: weight {w:.4f}" for k, w in enumerate(weights)]
    lines.append(f"mean log-likelihood of {args.samples} own samples (seed {args.seed}): {mean_ll:.3f}")
    lines.append(f"energy of the zero pose: {zero_energy:.3f}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


# --------------------------------------------------------------------------- helpers


def _save(
    params: "GMMParams", out: str, *, source: str, samples: int, seed: int, seconds: float, reg_covar: float
) -> None:
    from labelmill.models.pose_prior import GMMPosePrior, provenance_json

    final_ll = params.log_likelihood_trace[-1]
    provenance = provenance_json(
        source=source,
        samples=samples,
        components=len(params.weights),
        seed=seed,
        reg_covar=reg_covar,
        iterations=params.iterations,
        converged=params.converged,
        mean_log_likelihood=round(final_ll, 6),
    )
    prior = GMMPosePrior(means=params.means, covars=params.covars, weights=params.weights, provenance=provenance)
    prior.save_npz(out)
    log.info(
        "EM %s after %d iterations in %.1f s: mean log-likelihood %.4f; weights %s; wrote %s",
        "converged" if params.converged else "stopped (max_iter)",
        params.iterations,
        seconds,
        final_ll,
        " ".join(f"{w:.3f}" for w in params.weights),
        out,
    )


def _motion_library_sampler():
    """The motion library's body-pose sampler ``fn(n, *, seed) -> (n, 69)``, or None if absent."""
    try:
        from labelmill.operators.synth import motion
    except ImportError:
        return None
    return getattr(motion, "sample_poses", None)
