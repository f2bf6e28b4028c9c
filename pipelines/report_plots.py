"""The report's figures as PNG bytes: matplotlib's Agg canvas on plain ``Figure`` objects (no
pyplot, so no global figure state and no backend switch).

Every text drawn comes from the dataset (keys, reasons, category names) and is passed through
:func:`plain`: dollar signs are escaped so that matplotlib never parses it as mathtext, and long
texts are shortened.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from labelmill.models.coco import COCO17_SKELETON
from labelmill.pipelines.report_gallery import PoseVideo, SegImage

__all__ = ["STATUS_COLOURS", "plain", "funnel_png", "histograms_png", "throughput_png", "pose_video_png",
           "seg_image_png"]

STATUS_COLOURS = {"written": "#2ca02c", "filtered": "#ff7f0e", "failed": "#d62728", "frames": "#7f7f7f",
                  "in": "#1f77b4"}
_DPI = 80
_DETECTED, _INIT, _FITTED = "#39ff14", "#1f9bff", "#ff3030"
_IGNORE = np.array([0, 0, 0], np.float64)  # black diagonal stripes over the image


def plain(text: Any, limit: int = 60) -> str:
    """``text`` safe for a matplotlib label: no mathtext, at most ``limit`` characters."""
    value = " ".join(str(text).split())
    if len(value) > limit:
        value = value[: limit - 1] + "\u2026"
    return value.replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def funnel_png(panels: Sequence[tuple[str, Sequence[tuple[str, int, str]]]]) -> bytes:
    """Horizontal bar charts, two per row: ``(title, [(label, count, colour), ...])`` each (the
    funnel of inputs, of frames, the reasons). A panel without rows says that nothing is there."""
    columns = min(2, len(panels))
    grid_rows = (len(panels) + columns - 1) // columns
    tallest = max([len(rows) for _, rows in panels] + [1])
    fig = Figure(figsize=(11, grid_rows * (0.38 * tallest + 1.3)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(grid_rows, columns, squeeze=False)).ravel()
    for ax, (title, rows) in zip(axes, panels):
        if rows:
            _bars(ax, rows, title)
        else:
            ax.set_axis_off()
            ax.set_title(plain(title))
            ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=12, transform=ax.transAxes)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    return _png(fig)


def _bars(ax: Any, rows: Sequence[tuple[str, int, str]], title: str) -> None:
    labels = [plain(label, 48) for label, _, _ in rows]
    counts = [int(count) for _, count, _ in rows]
    y = np.arange(len(rows))[::-1]
    ax.barh(y, counts, color=[colour for _, _, colour in rows])
    ax.set_yticks(y, labels)
    top = max(counts, default=0) or 1
    for yy, count in zip(y, counts):
        ax.text(count + 0.01 * top, yy, str(count), va="center", fontsize=9)
    ax.set_xlim(0, top * 1.15)
    ax.set_title(plain(title))
    ax.spines[["top", "right"]].set_visible(False)


def histograms_png(panels: Sequence[Mapping[str, Any]]) -> bytes:
    """One histogram per panel: ``title``, ``values``, ``xlabel``, optional ``threshold`` and
    ``threshold_label`` (a dashed vertical line), optional ``log`` (log-spaced bins, log x axis)."""
    fig = Figure(figsize=(5.2 * len(panels), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels):
        values = np.asarray([v for v in panel["values"] if v is not None], np.float64)
        values = values[np.isfinite(values)]
        threshold = panel.get("threshold")
        log = bool(panel.get("log")) and values.size and (values > 0).all()
        if values.size:
            low, high = float(values.min()), float(values.max())
            if threshold is not None:
                low, high = min(low, float(threshold)), max(high, float(threshold))
            if log:
                bins = np.geomspace(low * 0.9, high * 1.1, 30)
                ax.set_xscale("log")
            else:
                bins = np.linspace(low, high if high > low else low + 1.0, 30)
            ax.hist(values, bins=bins, color="#4c72b0")
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        if threshold is not None:
            ax.axvline(float(threshold), color="#d62728", linestyle="--", linewidth=2,
                       label=plain(panel.get("threshold_label", f"threshold {threshold:g}")))
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(plain(f"{panel['title']} (n={values.size})"))
        ax.set_xlabel(plain(panel.get("xlabel", "")))
        ax.set_ylabel("count")
        ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def throughput_png(stages: Sequence[Mapping[str, Any]]) -> bytes:
    """Per stage (in pipeline order): items computed and reused (stacked), and items/s when known."""
    rates = [s.get("items_per_s") for s in stages]
    with_rate = any(r is not None for r in rates)
    fig = Figure(figsize=(11 if with_rate else 6, 0.4 * len(stages) + 1.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, 2 if with_rate else 1))
    y = np.arange(len(stages))[::-1]
    names = [plain(s["name"], 24) for s in stages]
    computed = np.asarray([s.get("computed") or 0 for s in stages], np.float64)
    reused = np.asarray([s.get("reused") or 0 for s in stages], np.float64)
    axes[0].barh(y, computed, color="#4c72b0", label="computed")
    axes[0].barh(y, reused, left=computed, color="#dd8452", label="reused")
    axes[0].set_yticks(y, names)
    axes[0].set_title("items per stage")
    axes[0].legend(loc="lower right", fontsize=8)
    if with_rate:
        values = np.asarray([np.nan if r is None else float(r) for r in rates])
        axes[1].barh(y, np.nan_to_num(values), color="#55a868")
        axes[1].set_yticks(y, names)
        if (values[np.isfinite(values)] > 0).all():
            axes[1].set_xscale("log")
        for yy, value in zip(y, values):
            if np.isfinite(value):
                axes[1].text(value, yy, f" {value:.3g}", va="center", fontsize=8)
        axes[1].set_title("items per second (log scale)")
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _skeleton(ax: Any, points: np.ndarray, colour: str, *, visible: np.ndarray | None = None,
              linestyle: str = "-", marker: str = "o", size: float = 9.0) -> None:
    points = np.asarray(points, np.float64)
    if visible is None:
        visible = np.isfinite(points).all(-1)
    for a, b in COCO17_SKELETON:
        if visible[a] and visible[b]:
            ax.plot(points[[a, b], 0], points[[a, b], 1], color=colour, linestyle=linestyle, linewidth=1.4)
    ax.scatter(points[visible, 0], points[visible, 1], s=size, c=colour, marker=marker, linewidths=0.6,
               edgecolors="black", zorder=3)


def pose_video_png(video: PoseVideo, *, min_confidence: float = 0.3) -> bytes:
    """A row of frames of one video with detections (green), initialisation (blue, dashed) and fit (red)."""
    count = max(1, len(video.frames))
    first = video.frames[0].image if video.frames else np.zeros((120, 160, 3), np.uint8)
    aspect = first.shape[0] / max(1, first.shape[1])
    fig = Figure(figsize=(3.6 * count, 3.6 * aspect + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, count))
    for ax, frame in zip(axes, video.frames):
        ax.imshow(frame.image)
        for person in frame.detected:
            _skeleton(ax, person[:, :2], _DETECTED, visible=person[:, 2] >= min_confidence)
        if frame.init is not None:
            _skeleton(ax, frame.init, _INIT, linestyle="--", marker="s", size=7)
        _skeleton(ax, frame.fitted, _FITTED, marker="D", size=7)
        height, width = frame.image.shape[:2]
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        loss = "n/a" if not np.isfinite(frame.loss) else f"{frame.loss:.3f}"
        ax.set_title(plain(f"frame {frame.frame}: loss {loss}, {frame.reason}", 48), fontsize=9)
        ax.set_axis_off()
    if not video.frames:
        axes[0].set_axis_off()
        axes[0].text(0.5, 0.5, "no frames", ha="center", va="center")
    handles = [Line2D([], [], color=_DETECTED, marker="o", label="detected 2D keypoints"),
               Line2D([], [], color=_INIT, marker="s", linestyle="--", label="initialisation, projected"),
               Line2D([], [], color=_FITTED, marker="D", label="fitted body, projected")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return _png(fig)


def _palette(category_id: int) -> np.ndarray:
    """RGB 0..255 of a category: hues spaced by the golden ratio, so nearby ids differ."""
    hue = (0.13 + 0.618034 * category_id) % 1.0
    return matplotlib.colors.hsv_to_rgb((hue, 0.8, 0.95)) * 255.0


def _overlay(image: np.ndarray, sem: np.ndarray, inst: np.ndarray | None) -> np.ndarray:
    """``image`` with category colours (alpha 0.55), ignore as black diagonal stripes, instance outlines in white."""
    out = image.astype(np.float64).copy()
    for category in np.unique(sem):
        if category in (0, 255):
            continue
        mask = sem == category
        out[mask] = 0.45 * out[mask] + 0.55 * _palette(int(category))
    ignore = sem == 255
    rows, cols = np.indices(sem.shape)
    out[ignore & ((rows + cols) % 6 < 2)] = _IGNORE
    if inst is not None:
        edge = np.zeros(inst.shape, bool)
        edge[:-1] |= inst[:-1] != inst[1:]
        edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
        edge &= inst > 0
        out[edge] = 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def seg_image_png(item: SegImage) -> bytes:
    """The image and the image with its masks over it, with a legend of the categories and ignore."""
    height, width = item.image.shape[:2]
    fig = Figure(figsize=(7.6, 3.8 * height / max(1, width) + 1.1), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.imshow(item.image)
    left.set_title("image", fontsize=9)
    right.imshow(_overlay(item.image, item.sem, item.inst))
    share = float((item.sem == 255).mean())
    right.set_title(f"labels (ignore {share:.0%} of pixels)", fontsize=9)
    for ax in (left, right):
        ax.set_axis_off()
    present = [int(c) for c in np.unique(item.sem) if c not in (0, 255)]
    handles = [Patch(color=_palette(c) / 255.0, label=plain(item.categories.get(c, f"class {c}"), 24))
               for c in present[:12]]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="////", label="ignore (255)"))
    handles.append(Line2D([], [], color="white", linewidth=2, label="instance outline",
                          path_effects=[patheffects.withStroke(linewidth=4, foreground="black")]))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(5, len(handles)), fontsize=8, frameon=False)
    return _png(fig)
