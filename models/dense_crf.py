"""Dense CRF refinement of label maps: mean-field inference with Gaussian kernels (torch, CPU/GPU).

The model is the fully connected CRF of the seeds (Krähenbühl & Koltun, NIPS 2011)::

    E(x) = sum_i U_i(x_i) + sum_{i != j} mu(x_i, x_j) k(i, j)
    k(i, j) = w1 exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)   (appearance)
            + w2 exp(-|p_i - p_j|^2 / 2 theta_gamma^2)                                  (smoothness)

with Potts compatibility ``mu(l, l') = [l != l']``. ``p`` are pixel coordinates (pixels),
``I`` the image values in whatever units the image has (``theta_beta = 13`` suits 0..255).
Mean field starts from ``Q = softmax(-U)`` and repeats ``iterations`` times::

    m_i(l) = sum_{j != i} k~(i, j) Q_j(l)              (message passing, per kernel)
    Q_i(l) ∝ exp(-U_i(l) + m_i(l))                     (Potts: -sum_{l' != l} m(l') = m(l) - const)

where ``k~`` is each kernel as given (``normalization="none"``) or symmetrically normalised
(``"symmetric"``, the default, like pydensecrf: ``D^-1/2 K D^-1/2`` per kernel, with
``D_i = 1 + sum_{j != i} k(i, j)``, the row sum including the pixel's own weight 1, which keeps
isolated pixels finite), so that ``w1``/``w2`` do not scale with the image size.

Unaries are **negative log-probabilities** ``(C, H, W)`` or ``(B, C, H, W)``; use
:func:`unary_from_probabilities` for probabilities. Images are ``(3, H, W)`` or ``(B, 3, H, W)``
float (any channel count works). The output ``Q`` has the unary's shape and sums to 1 over ``C``.

Implementations (``DenseCRFConfig.approximation``)
    * ``"direct"`` (:func:`dense_crf_direct`): the exact N x N kernels, O(N^2) memory; refused
      above ``max_direct_pixels`` pixels. The reference for everything else.
    * ``"palette"`` (:func:`dense_crf_fast`), the fast kind. Chosen over a permutohedral lattice
      because it is a handful of dense torch ops (matmul, conv1d, scatter_add: batched, the
      same on CPU and GPU, deterministic on CPU), its error is controlled by two knobs and it is
      exact in the limit:

      - smoothness kernel: a separable Gaussian blur (conv1d along x then y, zero padding,
        radius ``min(ceil(truncate * theta_gamma), size - 1)``) minus the pixel's own weight —
        *exact* (to float rounding) when the radius reaches the image size
        (``truncate=math.inf``), relative error ``<= exp(-truncate^2 / 2)`` otherwise;
      - appearance kernel: the *source* pixels are quantised — colour to a per-image palette of
        ``palette_size`` colours (k-means from a deterministic farthest-point initialisation), position to
        the centre of a ``downsample`` x ``downsample`` cell — and splatted (summed) into a
        grid ``(K, C, H/d, W/d)``; each palette slice is blurred by separable Gaussian matrices
        from cell centres to *every full-resolution target pixel*, and the slices are combined
        with the target's colour weights: the expected kernel between the target's exact colour
        and a member of cluster k, the members modelled as isotropic Gaussian around ``c_k``
        with their variance ``s_k^2`` per channel:
        ``(theta_beta^2 / (theta_beta^2 + s_k^2))^(D/2) exp(-|I_i - c_k|^2 / 2 (theta_beta^2 + s_k^2))``
        (without this moment matching a wide cluster would count all its members as if they had
        the target's colour). The pixel's own (approximate) contribution is removed. With one palette entry per distinct
        colour and ``downsample=1`` this is the direct kernel exactly; the error otherwise comes
        only from the source-colour quantisation (``|I_j - c_k(j)|`` vs ``theta_beta``) and the
        source-position shift (``<= d/sqrt(2)`` vs ``theta_alpha``).

      Cost per iteration ~ ``K C H W (H + W) / d`` multiply-adds (appearance) plus
      ``2 C H W (2r + 1)`` (smoothness); memory ~ a few ``C H W`` tensors per palette chunk.
      Measured error and speed: ``docs/segmentation.md`` (section "Dense CRF").

:func:`refine_labels` turns a pseudo-label map (``ignore`` = 255) into unaries, runs the CRF and
returns refined labels; with ``keep_ignore`` the pixels that were ignore stay ignore (the cues
disagreed there) and only labelled pixels can change class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DenseCRFConfig",
    "unary_from_probabilities",
    "pairwise_message",
    "dense_crf",
    "dense_crf_direct",
    "dense_crf_fast",
    "refine_labels",
]

_APPROXIMATIONS = ("direct", "palette")
_NORMALIZATIONS = ("symmetric", "none")
_EPS = 1e-20


@dataclass(frozen=True)
class DenseCRFConfig:
    """Dense CRF parameters (defaults: pydensecrf's README values, 5 iterations).

    ``w1``/``theta_alpha``/``theta_beta``: appearance kernel weight, position std (pixels),
    colour std (image units). ``w2``/``theta_gamma``: smoothness kernel weight and position std.
    ``compatibility``: only ``"potts"``. ``normalization``: ``"symmetric"`` | ``"none"``.
    ``approximation``: ``"direct"`` | ``"palette"`` (see the module docstring).
    ``downsample``: source cell size of the palette kind; ``None`` = ``max(1, round(theta_alpha / 10))``.
    ``palette_size``/``palette_iters``: palette colours and k-means iterations.
    ``truncate``: smoothness blur radius in units of ``theta_gamma`` (``math.inf``: whole image).
    ``max_direct_pixels``: the direct kind refuses images with more pixels.
    """

    iterations: int = 5
    w1: float = 10.0
    theta_alpha: float = 80.0
    theta_beta: float = 13.0
    w2: float = 3.0
    theta_gamma: float = 3.0
    compatibility: str = "potts"
    normalization: str = "symmetric"
    approximation: str = "palette"
    downsample: Optional[int] = None
    palette_size: int = 32
    palette_iters: int = 10
    truncate: float = 4.0
    max_direct_pixels: int = 4096

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"DenseCRFConfig.{key} {why}, got {getattr(self, key)!r}")

        for key in ("iterations", "palette_iters"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(key, "must be an integer >= 0")
        for key in ("palette_size", "max_direct_pixels"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(key, "must be an integer >= 1")
        if self.downsample is not None and (
            not isinstance(self.downsample, int) or isinstance(self.downsample, bool) or self.downsample < 1
        ):
            raise bad("downsample", "must be an integer >= 1 or null (automatic)")
        for key in ("w1", "w2"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise bad(key, "must be a finite number >= 0")
        for key in ("theta_alpha", "theta_beta", "theta_gamma", "truncate"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v) or v <= 0:
                raise bad(key, "must be a number > 0")
            if key != "truncate" and math.isinf(v):
                raise bad(key, "must be finite")
        if self.compatibility != "potts":
            raise bad("compatibility", "must be 'potts'")
        if self.normalization not in _NORMALIZATIONS:
            raise bad("normalization", f"must be one of {', '.join(map(repr, _NORMALIZATIONS))}")
        if self.approximation not in _APPROXIMATIONS:
            raise bad("approximation", f"must be one of {', '.join(map(repr, _APPROXIMATIONS))}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "DenseCRFConfig":
        """Build from a config mapping; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DenseCRFConfig: unknown key(s) {', '.join(unknown)}")
        return cls(**dict(data))

    @property
    def cell(self) -> int:
        """The palette kind's source cell size (``downsample`` or its automatic value)."""
        if self.downsample is not None:
            return self.downsample
        return max(1, int(round(self.theta_alpha / 10.0)))


def unary_from_probabilities(prob: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``-log(max(prob, eps))``: unaries from class probabilities of any shape."""
    return -torch.log(prob.clamp_min(eps))


# --------------------------------------------------------------------------- shapes


def _batched(unary: Optional[torch.Tensor], image: torch.Tensor):
    """Add a batch dimension where missing; check that the shapes fit."""
    squeeze = image.dim() == 3
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be (3, H, W) or (B, 3, H, W), got shape {tuple(image.shape)}")
    image = image.unsqueeze(0) if squeeze else image
    image = image.float() if not image.is_floating_point() else image
    if unary is not None:
        unary = unary.unsqueeze(0) if unary.dim() == 3 else unary
        if unary.dim() != 4 or unary.shape[0] != image.shape[0] or unary.shape[2:] != image.shape[2:]:
            raise ValueError(
                f"unary {tuple(unary.shape)} does not fit image {tuple(image.shape)}: "
                "expected (C, H, W) with (3, H, W) or (B, C, H, W) with (B, 3, H, W)"
            )
        unary = unary.to(image.dtype)
    return unary, image, squeeze


# --------------------------------------------------------------------------- direct


class _DirectFilter:
    """Exact message passing with the full N x N kernels (``(B, N, N)`` appearance)."""

    def __init__(self, image: torch.Tensor, cfg: DenseCRFConfig):
        b, _, h, w = image.shape
        n = h * w
        if n > cfg.max_direct_pixels:
            raise ValueError(
                f"dense_crf_direct: image of {h}x{w} = {n} pixels exceeds max_direct_pixels="
                f"{cfg.max_direct_pixels} (the direct kernels need O(N^2) memory); "
                "use approximation='palette' or raise max_direct_pixels"
            )
        dt, dev = image.dtype, image.device
        ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=dt), torch.arange(w, device=dev, dtype=dt), indexing="ij")
        pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], 1)  # (N, 2)
        d_pos = torch.cdist(pos, pos).square()  # (N, N)
        col = image.reshape(b, image.shape[1], n).transpose(1, 2)  # (B, N, 3)
        d_col = torch.cdist(col, col).square()  # (B, N, N)
        eye = torch.eye(n, dtype=torch.bool, device=dev)
        k_app = torch.exp(-d_pos / (2 * cfg.theta_alpha**2) - d_col / (2 * cfg.theta_beta**2)).masked_fill(eye, 0.0)
        k_sm = torch.exp(-d_pos / (2 * cfg.theta_gamma**2)).masked_fill(eye, 0.0).expand(b, n, n)
        self.kernels = []
        for weight, k in ((cfg.w1, k_app), (cfg.w2, k_sm)):
            if weight == 0:
                continue
            if cfg.normalization == "symmetric":
                norm = (k.sum(2) + 1.0).rsqrt()  # (B, N); D = K 1 + 1 (self weight 1)
                k = norm[:, :, None] * k * norm[:, None, :]
            self.kernels.append(weight * k)
        self.shape = (h, w)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        b, c, h, w = q.shape
        flat = q.reshape(b, c, h * w)
        out = torch.zeros_like(flat)
        for k in self.kernels:
            out = out + torch.bmm(flat, k.transpose(1, 2))  # m_i = sum_j k(i, j) q_j
        return out.reshape(b, c, h, w)


# --------------------------------------------------------------------------- palette (fast)


def _gauss_1d(radius: int, sigma: float, dt, dev) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, device=dev, dtype=dt)
    return torch.exp(-t.square() / (2 * sigma**2))


def _blur(x: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """Separable zero-padded Gaussian sum of ``x (..., H, W)``: sum over in-image pixels."""
    shape = x.shape
    h, w = shape[-2:]
    rx, ry = (kx.numel() - 1) // 2, (ky.numel() - 1) // 2
    x = F.conv1d(x.reshape(-1, 1, w), kx.view(1, 1, -1), padding=rx).reshape(shape)
    x = x.transpose(-1, -2).reshape(-1, 1, h)
    x = F.conv1d(x, ky.view(1, 1, -1), padding=ry)
    return x.reshape(*shape[:-2], w, h).transpose(-1, -2)


def _palette(col: torch.Tensor, k: int, iters: int):
    """Per-image k-means palette of ``col (B, N, D)``: centres ``(B, K, D)``, assignment ``(B, N)``,
    per-channel member variance ``(B, K)``."""
    b, n, d = col.shape
    k = min(k, n)
    # deterministic farthest-point initialisation: the brightest-ranked median pixel, then
    # repeatedly the pixel farthest from every centre so far (finds all colours when <= K)
    first = col.sum(2).argsort(dim=1, stable=True)[:, n // 2]
    centres = torch.gather(col, 1, first[:, None, None].expand(b, 1, d))
    dist = (col - centres).square().sum(2)  # (B, N) squared distance to the nearest centre
    for _ in range(k - 1):
        far = dist.argmax(1)
        c = torch.gather(col, 1, far[:, None, None].expand(b, 1, d))
        centres = torch.cat([centres, c], 1)
        dist = torch.minimum(dist, (col - c).square().sum(2))
    assign = torch.cdist(col, centres).argmin(2)
    for _ in range(iters):
        sums = torch.zeros_like(centres).scatter_add_(1, assign[:, :, None].expand(b, n, d), col)
        counts = torch.zeros(b, k, device=col.device, dtype=col.dtype).scatter_add_(
            1, assign, torch.ones_like(assign, dtype=col.dtype)
        )
        centres = torch.where(counts[:, :, None] > 0, sums / counts.clamp_min(1)[:, :, None], centres)
        assign = torch.cdist(col, centres).argmin(2)
    # per-cluster, per-channel variance of the members around their centre
    resid = (col - torch.gather(centres, 1, assign[:, :, None].expand(b, n, d))).square().sum(2) / d
    sq = torch.zeros(b, k, device=col.device, dtype=col.dtype).scatter_add_(1, assign, resid)
    counts = torch.zeros(b, k, device=col.device, dtype=col.dtype).scatter_add_(
        1, assign, torch.ones_like(assign, dtype=col.dtype)
    )
    return centres, assign, sq / counts.clamp_min(1)


class _PaletteFilter:
    """The ``"palette"`` approximation (module docstring)."""

    _CHUNK = 1 << 23  # elements of one (B, k, C, H, W) slice block

    def __init__(self, image: torch.Tensor, cfg: DenseCRFConfig):
        b, ch, h, w = image.shape
        n = h * w
        dt, dev = image.dtype, image.device
        self.cfg, self.shape = cfg, (h, w)
        # smoothness: separable blur
        ry = int(min(h - 1, math.ceil(cfg.truncate * cfg.theta_gamma))) if math.isfinite(cfg.truncate) else h - 1
        rx = int(min(w - 1, math.ceil(cfg.truncate * cfg.theta_gamma))) if math.isfinite(cfg.truncate) else w - 1
        self.ky, self.kx = _gauss_1d(ry, cfg.theta_gamma, dt, dev), _gauss_1d(rx, cfg.theta_gamma, dt, dev)
        # appearance: palette x coarse cells
        col = image.reshape(b, ch, n).transpose(1, 2).contiguous()
        centres, assign, var = _palette(col, cfg.palette_size, cfg.palette_iters)
        self.k = centres.shape[1]
        d = cfg.cell
        hc, wc = -(-h // d), -(-w // d)
        yc = (torch.arange(hc, device=dev, dtype=dt) * d + (torch.clamp(torch.arange(hc, device=dev) * d + d, max=h) - 1).to(dt)) / 2
        xc = (torch.arange(wc, device=dev, dtype=dt) * d + (torch.clamp(torch.arange(wc, device=dev) * d + d, max=w) - 1).to(dt)) / 2
        y = torch.arange(h, device=dev, dtype=dt)
        x = torch.arange(w, device=dev, dtype=dt)
        a2 = 2 * cfg.theta_alpha**2
        self.gy = torch.exp(-(y[:, None] - yc[None, :]).square() / a2)  # (H, Hc)
        self.gxt = torch.exp(-(x[:, None] - xc[None, :]).square() / a2).t().contiguous()  # (Wc, W)
        # expected colour kernel between target colour I_i and a member of cluster k, taking the
        # members as isotropic Gaussian around c_k (variance s_k^2 per channel); exact for s_k = 0
        b2 = cfg.theta_beta**2 + var  # (B, K)
        scale = (cfg.theta_beta**2 / b2) ** (ch / 2.0)
        self.wcol = scale[:, None, :] * torch.exp(-torch.cdist(col, centres).square() / (2 * b2[:, None, :]))  # (B, N, K)
        cy = torch.arange(h, device=dev) // d
        cx = torch.arange(w, device=dev) // d
        cell = (cy[:, None] * wc + cx[None, :]).reshape(-1)  # (N,)
        self.index = assign * (hc * wc) + cell[None, :]  # (B, N) into K * Hc * Wc
        self.hc, self.wc = hc, wc
        w_self_col = torch.gather(self.wcol, 2, assign[:, :, None])[:, :, 0]  # (B, N)
        w_self_pos = (self.gy[torch.arange(h, device=dev), cy][:, None] * self.gxt[cx, torch.arange(w, device=dev)][None, :]).reshape(-1)
        self.self_app = (w_self_col * w_self_pos[None, :]).reshape(b, 1, h, w)
        self.norm_app = self.norm_sm = None
        if cfg.normalization == "symmetric":
            ones = torch.ones(b, 1, h, w, device=dev, dtype=dt)
            self.norm_app = (self._appearance(ones) + 1.0).clamp_min(_EPS).rsqrt()
            self.norm_sm = (self._smooth(ones) + 1.0).clamp_min(_EPS).rsqrt()

    def _smooth(self, q: torch.Tensor) -> torch.Tensor:
        return _blur(q, self.ky, self.kx) - q

    def _appearance(self, q: torch.Tensor) -> torch.Tensor:
        b, c, h, w = q.shape
        k, hc, wc = self.k, self.hc, self.wc
        flat = q.reshape(b, c, h * w)
        grid = torch.zeros(b, c, k * hc * wc, device=q.device, dtype=q.dtype)
        grid.scatter_add_(2, self.index[:, None, :].expand(b, c, h * w), flat)
        grid = grid.reshape(b, c, k, hc, wc).transpose(1, 2)  # (B, K, C, Hc, Wc)
        out = torch.zeros_like(q)
        wcol = self.wcol.transpose(1, 2).reshape(b, k, 1, h, w)
        step = max(1, self._CHUNK // max(1, b * c * h * w))
        for s in range(0, k, step):
            g = grid[:, s : s + step]
            t = torch.matmul(self.gy, torch.matmul(g, self.gxt))  # (B, k, C, H, W)
            out = out + (t * wcol[:, s : s + step]).sum(1)
        return out - self.self_app * q

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        out = torch.zeros_like(q)
        if cfg.w1 != 0:
            if self.norm_app is not None:
                out = out + cfg.w1 * self.norm_app * self._appearance(self.norm_app * q)
            else:
                out = out + cfg.w1 * self._appearance(q)
        if cfg.w2 != 0:
            if self.norm_sm is not None:
                out = out + cfg.w2 * self.norm_sm * self._smooth(self.norm_sm * q)
            else:
                out = out + cfg.w2 * self._smooth(q)
        return out


# --------------------------------------------------------------------------- inference


def _filter(image: torch.Tensor, cfg: DenseCRFConfig, kind: str):
    return _DirectFilter(image, cfg) if kind == "direct" else _PaletteFilter(image, cfg)


def pairwise_message(q: torch.Tensor, image: torch.Tensor, config: DenseCRFConfig, *, kind: Optional[str] = None) -> torch.Tensor:
    """One message-passing step ``w1 k~_app Q + w2 k~_sm Q`` (``(C, H, W)`` or batched), for checks.

    ``kind`` overrides ``config.approximation``.
    """
    kind = kind or config.approximation
    q4, image4, squeeze = _batched(q, image)
    out = _filter(image4, config, kind)(q4)
    return out[0] if squeeze else out


def _mean_field(unary: torch.Tensor, image: torch.Tensor, config: DenseCRFConfig, kind: str) -> torch.Tensor:
    u, img, squeeze = _batched(unary, image)
    filt = _filter(img, config, kind)
    q = torch.softmax(-u, dim=1)
    for _ in range(config.iterations):
        q = torch.softmax(-u + filt(q), dim=1)
    return q[0] if squeeze else q


def dense_crf_direct(unary: torch.Tensor, image: torch.Tensor, config: Optional[DenseCRFConfig] = None) -> torch.Tensor:
    """Exact mean field: ``unary (C, H, W)`` neg. log-probabilities, ``image (3, H, W)`` -> ``Q (C, H, W)``.

    Batched shapes ``(B, C, H, W)`` / ``(B, 3, H, W)`` work too. Refuses images of more than
    ``config.max_direct_pixels`` pixels (ValueError).
    """
    return _mean_field(unary, image, config or DenseCRFConfig(), "direct")


def dense_crf_fast(unary: torch.Tensor, image: torch.Tensor, config: Optional[DenseCRFConfig] = None) -> torch.Tensor:
    """Mean field with the ``"palette"`` approximation; shapes as :func:`dense_crf_direct`."""
    return _mean_field(unary, image, config or DenseCRFConfig(), "palette")


def dense_crf(unary: torch.Tensor, image: torch.Tensor, config: Optional[DenseCRFConfig] = None) -> torch.Tensor:
    """Mean field with ``config.approximation`` (default ``"palette"``)."""
    config = config or DenseCRFConfig()
    return _mean_field(unary, image, config, config.approximation)


def refine_labels(
    sem,
    image,
    *,
    num_classes: int,
    confidence: float,
    config: Optional[DenseCRFConfig] = None,
    ignore: int = 255,
    keep_ignore: bool = True,
):
    """Refine a pseudo-label map with the dense CRF.

    ``sem``: ``(H, W)`` or ``(B, H, W)`` integer labels ``0 .. num_classes-1`` or ``ignore``
    (numpy or torch); ``image``: ``(3, H, W)`` / ``(B, 3, H, W)`` (numpy or torch, any real
    dtype, values in the units of ``theta_beta``). Unaries: a labelled pixel has probability
    ``confidence`` on its class and ``(1 - confidence) / (num_classes - 1)`` on each other; an
    ignore pixel is uniform. Returns labels of ``sem``'s shape, type and dtype: the argmax of
    ``Q``, except that with ``keep_ignore`` every pixel that was ``ignore`` stays ``ignore``
    (the cues disagreed there), so only labelled pixels can change. With ``keep_ignore=False``
    every pixel gets a class. Computes on ``image``'s device when it is a tensor.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not (1.0 / num_classes < confidence < 1.0):
        raise ValueError(f"confidence must be in (1/num_classes, 1) = ({1.0 / num_classes:g}, 1), got {confidence!r}")
    if 0 <= ignore < num_classes:
        raise ValueError(f"ignore={ignore} collides with a class id (num_classes={num_classes})")
    is_numpy = isinstance(sem, np.ndarray)
    sem_t = torch.from_numpy(np.ascontiguousarray(sem)) if is_numpy else sem
    img_t = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    img_t = img_t.to(torch.float32) if not img_t.is_floating_point() else img_t
    labels = sem_t.to(device=img_t.device, dtype=torch.long)
    squeeze = labels.dim() == 2
    if squeeze:
        labels = labels[None]
    if labels.dim() != 3:
        raise ValueError(f"sem must be (H, W) or (B, H, W), got shape {tuple(sem_t.shape)}")
    img4 = img_t[None] if img_t.dim() == 3 else img_t
    if img4.dim() != 4 or img4.shape[0] != labels.shape[0] or img4.shape[2:] != labels.shape[1:]:
        raise ValueError(f"image {tuple(img_t.shape)} does not fit sem {tuple(sem_t.shape)}")
    is_ignore = labels == ignore
    bad = ~is_ignore & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"sem holds labels outside 0..{num_classes - 1} and ignore={ignore}: "
                         f"{sorted(set(labels[bad].unique().tolist()))[:10]}")
    other = (1.0 - confidence) / (num_classes - 1)
    prob = torch.full((labels.shape[0], num_classes, *labels.shape[1:]), other, dtype=img4.dtype, device=img4.device)
    prob.scatter_(1, labels.clamp(0, num_classes - 1)[:, None], confidence)
    prob = torch.where(is_ignore[:, None], torch.full_like(prob, 1.0 / num_classes), prob)
    q = dense_crf(unary_from_probabilities(prob), img4, config)
    out = q.argmax(1)
    if keep_ignore:
        out = torch.where(is_ignore, torch.full_like(out, ignore), out)
    out = out[0] if squeeze else out
    if is_numpy:
        return out.cpu().numpy().astype(sem.dtype, copy=False)
    return out.to(device=sem_t.device, dtype=sem_t.dtype)
