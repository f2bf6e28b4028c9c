"""Fit a full-covariance Gaussian mixture to pose samples by expectation-maximisation.

Plain numpy/scipy on purpose: scikit-learn's ``GaussianMixture`` does the same job but is not
a dependency of labelmill, and adding it for one EM loop is not worth it. The well-kept parts
come from scipy: k-means++ seeding and Lloyd iterations (``scipy.cluster.vq.kmeans2``),
Cholesky factors and triangular solves (``scipy.linalg``), log-sum-exp (``scipy.special``).

    params = fit_gmm(poses, components=8, seed=0)        # poses (N, D)
    params.means, params.covars, params.weights         # (K, D), (K, D, D), (K,)

Algorithm: k-means++ (deterministic from ``seed``) and a few Lloyd iterations give the initial
means; covariances and weights come from the hard clusters. Then EM with a log-domain E step
and an M step whose covariances get ``reg_covar * I`` added, until the mean per-sample
log-likelihood changes by less than ``tol`` or ``max_iter`` M steps have run.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
import scipy.linalg
import scipy.special
from scipy.cluster.vq import kmeans2

__all__ = ["GMMParams", "fit_gmm", "gmm_log_likelihood", "sample_gmm"]

log = logging.getLogger(__name__)

_KMEANS_ITERATIONS = 10
_WEIGHT_FLOOR = 10 * np.finfo(np.float64).eps  # keeps an emptied component's weight positive


@dataclasses.dataclass(frozen=True)
class GMMParams:
    """A fitted Gaussian mixture and how the fit went."""

    means: np.ndarray  # (K, D)
    covars: np.ndarray  # (K, D, D) symmetric positive definite
    weights: np.ndarray  # (K,) positive, sum 1
    log_likelihood_trace: tuple[float, ...]  # mean per-sample log-likelihood: init, then after each M step
    iterations: int  # M steps run
    converged: bool  # True when the change fell below tol before max_iter


def fit_gmm(
    poses: np.ndarray,
    *,
    components: int = 8,
    seed: int = 0,
    max_iter: int = 200,
    tol: float = 1e-5,
    reg_covar: float = 1e-4,
) -> GMMParams:
    """Fit a ``components``-Gaussian full-covariance mixture to ``poses (N, D)`` by EM.

    Args:
        poses: ``(N, D)`` finite samples, ``N >= components``.
        components: number of Gaussians K.
        seed: seeds k-means++; the same seed and data give the same result.
        max_iter: most M steps.
        tol: stop when the mean per-sample log-likelihood changes by less than this.
        reg_covar: added to every covariance diagonal (keeps them positive definite).
    Returns:
        :class:`GMMParams` (float64).
    Raises:
        ValueError naming the bad argument.
    """
    data = _check_inputs(poses, components=components, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
    means, covars, weights = _kmeans_init(data, components, seed=seed, reg_covar=reg_covar)
    log_resp, mean_ll = _e_step(data, means, covars, weights)
    trace = [mean_ll]
    log.debug("EM init (k-means++): mean log-likelihood %.6f", mean_ll)
    converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):
        means, covars, weights = _m_step(data, np.exp(log_resp), reg_covar)
        log_resp, mean_ll = _e_step(data, means, covars, weights)
        change = mean_ll - trace[-1]
        trace.append(mean_ll)
        log.debug("EM iteration %d: mean log-likelihood %.6f (change %+.3g)", iterations, mean_ll, change)
        if abs(change) < tol:
            converged = True
            break
    return GMMParams(
        means=means,
        covars=covars,
        weights=weights,
        log_likelihood_trace=tuple(trace),
        iterations=iterations,
        converged=converged,
    )


def gmm_log_likelihood(points: np.ndarray, means: np.ndarray, covars: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``log sum_k g_k N(x; mu_k, Sigma_k)`` for ``points (N, D)`` -> ``(N,)`` (float64)."""
    points = np.asarray(points, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    joint = _component_log_densities(points, np.asarray(means, np.float64), np.asarray(covars, np.float64))
    return scipy.special.logsumexp(joint + np.log(weights / weights.sum()), axis=1)


def sample_gmm(means: np.ndarray, covars: np.ndarray, weights: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """Draw ``n`` samples ``(n, D)`` from the mixture, deterministically from ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    weights = np.asarray(weights, dtype=np.float64)
    labels = rng.choice(len(weights), size=n, p=weights / weights.sum())
    means = np.asarray(means, dtype=np.float64)
    chols = np.linalg.cholesky(np.asarray(covars, dtype=np.float64))  # (K, D, D)
    noise = rng.standard_normal((n, means.shape[1]))
    return means[labels] + np.einsum("nij,nj->ni", chols[labels], noise)


# --------------------------------------------------------------------------- internals


def _check_inputs(poses: np.ndarray, *, components: int, max_iter: int, tol: float, reg_covar: float) -> np.ndarray:
    if isinstance(components, bool) or not isinstance(components, (int, np.integer)) or components < 1:
        raise ValueError(f"components must be an integer >= 1, got {components!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (np.isfinite(tol) and tol >= 0.0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if not (np.isfinite(reg_covar) and reg_covar >= 0.0):
        raise ValueError(f"reg_covar must be a finite number >= 0, got {reg_covar!r}")
    try:
        data = np.asarray(poses, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"poses must be a numeric (N, D) array: {exc}") from exc
    if data.ndim != 2 or data.shape[1] < 1:
        raise ValueError(f"poses must be a 2-D array (N, D), got shape {data.shape}")
    finite = np.isfinite(data)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise ValueError(
            f"poses contains {int((~finite).sum())} NaN/inf values in {len(bad_rows)} rows "
            f"(first: row {int(bad_rows[0])})"
        )
    if data.shape[0] < components:
        raise ValueError(f"poses has {data.shape[0]} samples, fewer than components={components}")
    return data


def _kmeans_init(
    data: np.ndarray, components: int, *, seed: int, reg_covar: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means++ seeding + Lloyd iterations; per-cluster covariance and weight."""
    d = data.shape[1]
    with warnings.catch_warnings():
        # an empty cluster is handled below (global covariance, floor weight)
        warnings.filterwarnings("ignore", message="One of the clusters is empty", category=UserWarning)
        # `seed=` (not scipy >= 1.15's `rng=`) keeps scipy 1.11 working; both take a Generator
        centroids, labels = kmeans2(
            data, components, iter=_KMEANS_ITERATIONS, minit="++", seed=np.random.default_rng(seed)
        )
    global_cov = np.atleast_2d(np.cov(data, rowvar=False, bias=True)) + reg_covar * np.eye(d)
    covars = np.empty((components, d, d))
    counts = np.bincount(labels, minlength=components).astype(np.float64)
    for k in range(components):
        members = data[labels == k]
        if len(members) < 2:
            log.debug("k-means cluster %d has %d members; starting it from the global covariance", k, len(members))
            covars[k] = global_cov
        else:
            centred = members - centroids[k]
            covars[k] = centred.T @ centred / len(members) + reg_covar * np.eye(d)
    weights = np.maximum(counts, 1.0) / np.maximum(counts, 1.0).sum()
    return centroids.astype(np.float64), covars, weights


def _component_log_densities(data: np.ndarray, means: np.ndarray, covars: np.ndarray) -> np.ndarray:
    """``log N(x_n; mu_k, Sigma_k)`` -> ``(N, K)``."""
    n, d = data.shape
    out = np.empty((n, len(means)))
    for k, (mean, cov) in enumerate(zip(means, covars)):
        try:
            chol = scipy.linalg.cholesky(cov, lower=True)
        except np.linalg.LinAlgError:
            raise ValueError(
                f"EM component {k} has a covariance that is not positive definite; increase reg_covar"
            ) from None
        whitened = scipy.linalg.solve_triangular(chol, (data - mean).T, lower=True)  # (D, N)
        log_det = 2.0 * np.log(np.diag(chol)).sum()
        out[:, k] = -0.5 * ((whitened**2).sum(axis=0) + log_det + d * np.log(2.0 * np.pi))
    return out


def _e_step(
    data: np.ndarray, means: np.ndarray, covars: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, float]:
    """Log responsibilities ``(N, K)`` and the mean per-sample log-likelihood."""
    joint = _component_log_densities(data, means, covars) + np.log(weights)
    log_norm = scipy.special.logsumexp(joint, axis=1, keepdims=True)
    return joint - log_norm, float(log_norm.mean())


def _m_step(data: np.ndarray, resp: np.ndarray, reg_covar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted means, regularised covariances and weights from responsibilities ``(N, K)``."""
    d = data.shape[1]
    counts = resp.sum(axis=0) + _WEIGHT_FLOOR  # (K,)
    means = (resp.T @ data) / counts[:, None]
    covars = np.empty((len(counts), d, d))
    for k in range(len(counts)):
        centred = data - means[k]
        covars[k] = (resp[:, k, None] * centred).T @ centred / counts[k] + reg_covar * np.eye(d)
        covars[k] = 0.5 * (covars[k] + covars[k].T)
    return means, covars, counts / counts.sum()


# --------------------------------------------------------------------------- default prior

DEFAULT_PRIOR_SEED = 12345  # seeds the default prior's training poses and EM; never used for evaluation
DEFAULT_PRIOR_SAMPLES = 20_000
DEFAULT_PRIOR_COMPONENTS = 8
# Larger than fit_gmm's 1e-4: the procedural motions leave many joint axes exactly still, and a
# 1e-4 floor (0.01 rad std) would pin those axes hard in real videos; 1e-3 is a 0.03 rad floor.
DEFAULT_PRIOR_REG_COVAR = 1e-3

# Hand-specified per-joint pose distribution: the fallback training set for the embedded default
# prior when no motion library is available. Joints are SMPL joints 1..23 in the parent's frame
# (x: body's left, y: up, z: forward, angles in radians). Each entry lists (weight, mean xyz,
# std xyz) modes and the (low, high) limits per axis, for the left side and the midline; the
# right side mirrors the left ((x, y, z) -> (x, -y, -z)). Joints are sampled independently,
# so the resulting prior knows plausible ranges per joint but no coordination between joints.
_Mode = tuple[float, tuple[float, float, float], tuple[float, float, float]]
_Limits = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
_HAND_SPECIFIED_JOINTS: dict[str, tuple[tuple[_Mode, ...], _Limits]] = {
    # hip flexion (leg forward) is -x; left-hip abduction is +z
    "hip": (
        ((0.6, (0.0, 0.0, 0.05), (0.15, 0.10, 0.08)),  # standing
         (0.3, (-0.5, 0.0, 0.05), (0.30, 0.12, 0.10)),  # walking, stepping
         (0.1, (-1.4, 0.0, 0.10), (0.20, 0.15, 0.15))),  # sitting, crouching
        ((-2.2, 0.6), (-0.8, 0.8), (-0.4, 1.0)),
    ),
    # knee flexion is +x only
    "knee": (
        ((0.6, (0.1, 0.0, 0.0), (0.10, 0.03, 0.03)),
         (0.3, (0.6, 0.0, 0.0), (0.30, 0.05, 0.05)),
         (0.1, (1.6, 0.0, 0.0), (0.25, 0.05, 0.05))),
        ((0.0, 2.5), (-0.2, 0.2), (-0.2, 0.2)),
    ),
    # forward bend is +x
    "spine": (
        ((0.8, (0.05, 0.0, 0.0), (0.12, 0.08, 0.06)),
         (0.2, (0.30, 0.0, 0.0), (0.10, 0.08, 0.06))),
        ((-0.4, 0.8), (-0.5, 0.5), (-0.4, 0.4)),
    ),
    "ankle": (((1.0, (0.0, 0.0, 0.0), (0.15, 0.08, 0.08)),), ((-0.6, 0.8), (-0.4, 0.4), (-0.4, 0.4))),
    "foot": (((1.0, (0.0, 0.0, 0.0), (0.05, 0.05, 0.05)),), ((-0.3, 0.3), (-0.3, 0.3), (-0.3, 0.3))),
    "neck": (((1.0, (0.05, 0.0, 0.0), (0.12, 0.15, 0.06)),), ((-0.5, 0.7), (-0.8, 0.8), (-0.5, 0.5))),
    "head": (((1.0, (0.05, 0.0, 0.0), (0.10, 0.12, 0.05)),), ((-0.5, 0.6), (-0.7, 0.7), (-0.4, 0.4))),
    "collar": (((1.0, (0.0, 0.0, 0.0), (0.05, 0.08, 0.08)),), ((-0.3, 0.3), (-0.4, 0.4), (-0.3, 0.5))),
    # from the T-pose: left arm down is -z, left arm forward is -y
    "shoulder": (
        ((0.6, (0.0, 0.0, -1.1), (0.20, 0.20, 0.15)),  # arms down
         (0.3, (0.0, -0.7, -0.6), (0.25, 0.30, 0.30)),  # reaching forward
         (0.1, (0.0, 0.0, -0.2), (0.20, 0.20, 0.20))),  # raised sideways
        ((-1.2, 1.2), (-1.6, 1.0), (-1.6, 1.0)),
    ),
    # left elbow flexion is -y
    "elbow": (
        ((0.5, (0.0, -0.2, 0.0), (0.05, 0.15, 0.05)),
         (0.5, (0.0, -1.3, 0.0), (0.10, 0.35, 0.10))),
        ((-0.4, 0.4), (-2.6, 0.0), (-0.4, 0.4)),
    ),
    "wrist": (((1.0, (0.0, 0.0, 0.0), (0.20, 0.15, 0.20)),), ((-0.9, 0.9), (-0.9, 0.9), (-0.9, 0.9))),
    "hand": (((1.0, (0.0, 0.0, 0.0), (0.08, 0.08, 0.08)),), ((-0.4, 0.4), (-0.4, 0.4), (-0.4, 0.4))),
}
# SMPL joints 1..23 -> (table entry, mirrored to the right side?)
_SMPL_BODY_JOINTS: tuple[tuple[str, bool], ...] = (
    ("hip", False), ("hip", True), ("spine", False),  # 1 L_hip, 2 R_hip, 3 spine1
    ("knee", False), ("knee", True), ("spine", False),  # 4 L_knee, 5 R_knee, 6 spine2
    ("ankle", False), ("ankle", True), ("spine", False),  # 7 L_ankle, 8 R_ankle, 9 spine3
    ("foot", False), ("foot", True), ("neck", False),  # 10 L_foot, 11 R_foot, 12 neck
    ("collar", False), ("collar", True), ("head", False),  # 13 L_collar, 14 R_collar, 15 head
    ("shoulder", False), ("shoulder", True),  # 16 L_shoulder, 17 R_shoulder
    ("elbow", False), ("elbow", True),  # 18 L_elbow, 19 R_elbow
    ("wrist", False), ("wrist", True),  # 20 L_wrist, 21 R_wrist
    ("hand", False), ("hand", True),  # 22 L_hand, 23 R_hand
)


def hand_specified_body_poses(n: int, *, seed: int) -> np.ndarray:
    """Sample ``(n, 69)`` SMPL body poses from the hand-specified per-joint table above.

    Each joint independently picks a mode by weight, draws a diagonal Gaussian around it and is
    clipped to its limits. A stand-in training set, not motion capture.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    mirror = np.array([1.0, -1.0, -1.0])
    poses = np.empty((n, len(_SMPL_BODY_JOINTS), 3))
    for j, (name, mirrored) in enumerate(_SMPL_BODY_JOINTS):
        modes, limits = _HAND_SPECIFIED_JOINTS[name]
        weights = np.array([m[0] for m in modes])
        means = np.array([m[1] for m in modes])
        stds = np.array([m[2] for m in modes])
        low, high = np.array(limits, dtype=np.float64).T
        picks = rng.choice(len(modes), size=n, p=weights / weights.sum())
        joint = np.clip(means[picks] + stds[picks] * rng.standard_normal((n, 3)), low, high)
        poses[:, j] = joint * mirror if mirrored else joint
    return poses.reshape(n, -1)


def build_default_prior(
    poses: np.ndarray | None = None,
    *,
    samples: int = DEFAULT_PRIOR_SAMPLES,
    seed: int = DEFAULT_PRIOR_SEED,
    components: int = DEFAULT_PRIOR_COMPONENTS,
    reg_covar: float = DEFAULT_PRIOR_REG_COVAR,
) -> GMMParams:
    """Fit the embedded default prior: ``components`` Gaussians on ``poses (N, 69)``.

    ``poses=None`` uses ``samples`` draws of :func:`hand_specified_body_poses` (seeded by
    ``seed``). The caller may pass poses from a richer source (``labelmill prior build-default``
    passes the procedural motion library's when it is installed). EM is seeded by ``seed``.
    """
    if poses is None:
        poses = hand_specified_body_poses(samples, seed=seed)
    return fit_gmm(poses, components=components, seed=seed, reg_covar=reg_covar)
