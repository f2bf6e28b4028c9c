"""`labelmill report`: a static HTML page (plus PNGs) that shows a person what a dataset version holds.

:func:`write_report` reads one or more dataset versions (output roots through ``LATEST``, or
version directories) and writes ``OUT_DIR/index.html`` with, per dataset:

* an overview (version, schema, samples, shards, bytes, engine, wall time), from
  :func:`labelmill.pipelines.commands.inspect.summarize_version`;
* the funnel: inputs in -> written / filtered / failed (pose3d also frames in -> fitted -> kept)
  as a chart and a table, and every filter or failure reason with its count and an example input;
* loss histograms with the thresholds of the version's ``config.yaml`` marked (pose3d: video
  loss per video, frame loss per fitted frame from the ``fits.json`` results; segmentation:
  ignore and labelled fractions, segments per sample);
* per-stage throughput from ``stats.json`` (items computed and reused, items/s);
* a gallery of a few kept and a few filtered inputs (:mod:`labelmill.pipelines.report_gallery`).

The folder is self-contained (``index.html`` + PNGs named ``d<i>_*.png``, nothing fetched from the
network) and every text that comes from the data is HTML-escaped. Figures: :mod:`labelmill.pipelines.report_plots`.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import html
import io
import json
import logging
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq
import yaml

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.formats.results import ResultCodecError
from labelmill.infra.results import ResultStore
from labelmill.pipelines import report_gallery as gallery_io
from labelmill.pipelines import report_plots as plots

log = logging.getLogger(__name__)

__all__ = ["write_report", "INDEX_FILE"]

INDEX_FILE = "index.html"
_MAX_REASON_ROWS = 50  # rows of the reasons table (the rest are counted)
_PLOTTED_REASONS = 12
_MAX_FIT_READS = 500  # filter results read for the frame-loss histogram
_FIGURE_NAME = re.compile(r"^d[0-9]+_[a-z]+(_[0-9]+)?\.png$")  # what _Section.figure names files


@dataclasses.dataclass(frozen=True)
class _Histogram:
    title: str
    table: str  # "inputs", "index" or "fits"
    column: str
    xlabel: str
    threshold: str | None = None  # dotted key into config.yaml
    log: bool = False
    statuses: tuple[str, ...] = ()  # inputs rows only: these statuses (empty: all)


_HISTOGRAMS = {
    "pose3d": (
        _Histogram("video loss per fitted video", "inputs", "video_loss", "median frame loss (body heights)",
                   "filter.video_loss_threshold", True, ("written", "filtered")),
        _Histogram("frame loss per fitted frame", "fits", "frame_loss", "frame loss (body heights)",
                   "filter.frame_loss_threshold", True),
    ),
    "segmentation": (
        _Histogram("ignore fraction per image", "inputs", "ignore_fraction", "ignore pixels / box pixels",
                   "filter.max_ignore_fraction"),
        _Histogram("labelled fraction per image", "inputs", "labelled_fraction", "thing pixels / box pixels"),
        _Histogram("segments per sample", "index", "num_segments", "segments", "filter.min_segments"),
    ),
}


def _esc(value: Any) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if np.isfinite(value) else "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (1, 2, 3, 4, 5)) -> str:
    """An HTML table; the columns ``numeric`` are formatted as numbers and right-aligned."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            if i in numeric:
                cells.append(f'<td class="num">{_esc(_number(value))}</td>')
            else:
                cells.append(f"<td>{_esc(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _config_value(config: Mapping[str, Any], dotted: str | None) -> Any:
    value: Any = config
    for part in (dotted or "").split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _read_config(version_url: str) -> dict[str, Any]:
    url = storage.safe_join(version_url, dv.CONFIG_FILE)
    if not storage.exists(url):
        return {}
    loaded = yaml.safe_load(storage.read_text(url))
    return loaded if isinstance(loaded, dict) else {}


def _read_columns(version_url: str, name: str, columns: Iterable[str]) -> dict[str, list[Any]]:
    """The asked-for columns a parquet file of the version has (others are skipped)."""
    url = storage.safe_join(version_url, name)
    if not storage.exists(url):
        return {}
    handle = pq.ParquetFile(io.BytesIO(storage.read_bytes(url)))
    present = [c for c in dict.fromkeys(columns) if c in handle.schema_arrow.names]
    return handle.read(columns=present).to_pydict() if present else {}


class _Section:
    """One dataset's part of the page; ``files`` are the PNG names it wrote under the output folder."""

    def __init__(self, out_dir: str, prefix: str) -> None:
        self.out_dir, self.prefix = out_dir, prefix
        self.parts: list[str] = []
        self.files: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, name: str, data: bytes, caption: str, alt: str) -> None:
        file_name = f"{self.prefix}_{name}.png"
        storage.write_bytes(storage.safe_join(self.out_dir, file_name), data)
        self.files.append(file_name)
        self.add(f'<figure><img src="{_esc(file_name)}" alt="{_esc(alt)}">'
                 f"<figcaption>{_esc(caption)}</figcaption></figure>")

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{_esc(text)}</p>')


def _stage_order(version_url: str, stages: Mapping[str, Any]) -> list[str]:
    """Stage names in pipeline order (``results.parquet``'s columns), then the others (e.g. pack)."""
    url = storage.safe_join(version_url, "results.parquet")
    ordered: list[str] = []
    if storage.exists(url):
        names = pq.ParquetFile(io.BytesIO(storage.read_bytes(url))).schema_arrow.names
        ordered = [n for n in names if n in stages]
    return ordered + sorted(set(stages) - set(ordered))


def _fit_losses(ref: dv.VersionRef, limit: int) -> tuple[list[float], int, int]:
    """Frame losses of every fitted frame (``fits.json``'s filter results): values, videos read, videos listed."""
    url = storage.safe_join(ref.url, "fits.json")
    if not storage.exists(url):
        return [], 0, 0
    fits = json.loads(storage.read_text(url))
    store = ResultStore(gallery_io.out_root(ref))
    values: list[float] = []
    read = 0
    for key in sorted(fits)[:limit]:
        try:
            arrays = store.read_path(fits[key]["filter"], ("frame_loss",))
        except (FileNotFoundError, ResultCodecError, KeyError):
            continue
        values.extend(np.asarray(arrays.get("frame_loss", []), np.float64).ravel().tolist())
        read += 1
    return values, read, len(fits)


def _funnel(section: _Section, summary: Mapping[str, Any], stats: Mapping[str, Any],
            inputs: Sequence[Mapping[str, Any]], schema: str) -> None:
    counts = summary["inputs"]
    colours = plots.STATUS_COLOURS
    input_bars = [("inputs in", counts["in"], colours["in"])]
    input_bars += [(status, counts.get(status, 0), colours[status]) for status in ("written", "filtered", "failed")]
    frames = stats.get("frames") or {}
    rows = [["inputs in", counts["in"]], *([f"inputs {s}", counts.get(s, 0)] for s in ("written", "filtered", "failed"))]
    frame_bars = []
    if schema == "pose3d" and frames:
        for name in ("in", "fitted", "kept"):
            if name in frames:
                frame_bars.append((f"frames {name}", frames[name], colours["frames"]))
                rows.append([f"frames {name}", frames[name]])
    (frame_bars if frame_bars else input_bars).append(("samples", summary["samples"], colours["written"]))
    rows.append(["samples", summary["samples"]])
    grouped: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for row in inputs:
        if row.get("status") != "written":
            grouped[(str(row.get("status")), str(row.get("reason")))].append(str(row.get("input_key")))
    ranked = sorted(grouped.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    frame_reasons = sorted(((r, n) for r, n in (stats.get("frame_reasons") or {}).items() if r != "kept"),
                           key=lambda kv: (-kv[1], kv[0]))
    panels = [("inputs", input_bars)] + ([("frames", frame_bars)] if frame_bars else [])
    panels.append(("inputs not written, by reason",
                   [(f"{status}: {reason}", len(keys), colours.get(status, colours["frames"]))
                    for (status, reason), keys in ranked[:_PLOTTED_REASONS]]))
    if frame_bars:
        panels.append(("frames not kept, by reason",
                       [(reason, count, colours["frames"]) for reason, count in frame_reasons[:_PLOTTED_REASONS]]))
    section.add("<h3>Funnel</h3>")
    section.figure("funnel", plots.funnel_png(panels),
                   "Inputs in, and how many were written, filtered or failed"
                   + ("; frames decoded, fitted and kept" if frame_bars else "")
                   + "; the reasons inputs" + (" and frames" if frame_bars else "") + " were dropped"
                   + (f" (the {_PLOTTED_REASONS} most frequent)" if max(len(ranked), len(frame_reasons)) > _PLOTTED_REASONS
                      else "") + ".", "funnel chart")
    section.add(_table(["", "count"], rows))
    if ranked:
        section.add("<h4>Why inputs were not written</h4>")
        section.add(_table(["status", "reason", "inputs", "example input"],
                           [[status, reason, len(keys), sorted(keys)[0]] for (status, reason), keys
                            in ranked[:_MAX_REASON_ROWS]], numeric=(2,)))
        if len(ranked) > _MAX_REASON_ROWS:
            section.note(f"{len(ranked) - _MAX_REASON_ROWS} more reasons not listed.")
    else:
        section.note("Every input was written.")
    if frame_reasons:
        section.add("<h4>Frames of fitted videos by reason</h4>")
        section.add(_table(["frame reason", "frames"], sorted((stats.get("frame_reasons") or {}).items(),
                                                              key=lambda kv: (-kv[1], kv[0]))))


def _histograms(section: _Section, ref: dv.VersionRef, schema: str, config: Mapping[str, Any],
                inputs: Sequence[Mapping[str, Any]], index: Mapping[str, list[Any]]) -> None:
    specs = _HISTOGRAMS.get(schema)
    if specs is None:
        from labelmill.infra.schema import load_schema

        inspect = load_schema(schema).inspect
        specs = tuple(_Histogram(c, "index", c, c) for c in inspect.get("index_quantiles", ())) + tuple(
            _Histogram(c, "inputs", c, c) for c in inspect.get("inputs_quantiles", ()))
    panels, captions = [], []
    for spec in specs:
        if spec.table == "inputs":
            values = [r.get(spec.column) for r in inputs if not spec.statuses or r.get("status") in spec.statuses]
            where = f"inputs.parquet {spec.column}"
        elif spec.table == "fits":
            values, read, listed = _fit_losses(ref, _MAX_FIT_READS)
            where = (f"the filter results of {read} of {listed} fitted videos (fits.json), kept and dropped frames "
                     "(frames whose loss was not measurable are left out)")
            if not read:
                values = list(index.get(spec.column, []))
                where = f"index.parquet {spec.column}: kept frames only (the version has no readable fits.json results)"
        else:
            values = list(index.get(spec.column, []))
            where = f"index.parquet {spec.column}"
        threshold = _config_value(config, spec.threshold)
        threshold = float(threshold) if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) else None
        panels.append({"title": spec.title, "values": values, "xlabel": spec.xlabel, "log": spec.log,
                       "threshold": threshold,
                       "threshold_label": f"{spec.threshold} = {threshold:g}" if threshold is not None else None})
        captions.append(f"{spec.title}: {where}"
                        + (f"; dashed line: {spec.threshold} = {threshold:g}" if threshold is not None else ""))
    section.add("<h3>Losses and thresholds</h3>")
    section.figure("losses", plots.histograms_png(panels), ". ".join(captions) + ".", "loss histograms")


def _throughput(section: _Section, ref: dv.VersionRef, stats: Mapping[str, Any]) -> None:
    stages = stats.get("stages") or {}
    section.add("<h3>Per-stage throughput</h3>")
    if not stages:
        section.note("stats.json records no stages.")
        return
    rows = []
    for name in _stage_order(ref.url, stages):
        entry = stages[name] if isinstance(stages[name], Mapping) else {}
        rows.append({"name": name, **{k: entry.get(k) for k in ("items", "computed", "reused", "seconds", "items_per_s")}})
    timed = any(r["items_per_s"] is not None for r in rows)
    section.figure("throughput", plots.throughput_png(rows),
                   "Items per stage, computed in this run or reused from stored results"
                   + ("; right: items per second of the stage's work." if timed else
                      ". stats.json has no timings for these stages: counts only."), "throughput chart")
    section.add(_table(["stage", "items", "computed", "reused", "seconds", "items/s"],
                       [[r["name"], r["items"], r["computed"], r["reused"], r["seconds"], r["items_per_s"]] for r in rows]))


def _gallery(section: _Section, ref: dv.VersionRef, schema: str, config: Mapping[str, Any],
             inputs: Sequence[Mapping[str, Any]], count: int, frames_per_video: int) -> None:
    section.add("<h3>Gallery</h3>")
    if count <= 0:
        section.note("Gallery skipped (--gallery 0).")
        return
    if schema == "pose3d":
        items, notes = gallery_io.pose3d_gallery(ref, inputs, count=count, frames_per_video=frames_per_video)
        min_confidence = _config_value(config, "filter.min_confidence")
        min_confidence = float(min_confidence) if isinstance(min_confidence, (int, float)) else 0.3
        section.add('<p>Green: detected 2D keypoints (confidence &ge; '
                    f'{_esc(f"{min_confidence:g}")}); blue, dashed: the initialisation projected; red: the fitted '
                    "body projected. Videos are chosen evenly over their video loss (lowest first).</p>")
    elif schema == "segmentation":
        items, notes = gallery_io.segmentation_gallery(ref, inputs, count=count)
        section.add("<p>Left: the image; right: the labels over it, one colour per category, ignore (255) as "
                    "black diagonal stripes, instance outlines in white. Images are chosen evenly over their ignore "
                    "fraction (lowest first).</p>")
    else:
        section.note(f"No gallery for schema {schema!r}.")
        return
    for group, title in (("kept", "Kept"), ("filtered", "Filtered")):
        section.add(f"<h4>{title}</h4>")
        if not items[group]:
            section.note(f"No {group} input to show.")
        for j, item in enumerate(items[group]):
            if schema == "pose3d":
                data = plots.pose_video_png(item, min_confidence=min_confidence)
                loss = "-" if item.video_loss is None else f"{item.video_loss:.4f}"
                caption = (f"{item.key}: {item.status} ({item.reason}), video loss {loss}; "
                           f"from the {item.source}; {item.init_note}.")
            else:
                data = plots.seg_image_png(item)
                share = "-" if item.ignore_fraction is None else f"{item.ignore_fraction:.3f}"
                caption = f"{item.key}: {item.status} ({item.reason}), ignore fraction {share}; from the {item.source}."
            section.figure(f"{group}_{j:02d}", data, caption, f"{group} input {j + 1}")
    for text in notes:
        section.note(text)


def _dataset_section(url: str, out_dir: str, prefix: str, title: str, *, gallery: int,
                     frames_per_video: int) -> _Section:
    from labelmill.pipelines.commands.inspect import summarize_version

    section = _Section(out_dir, prefix)
    ref = dv.resolve_version(url)
    summary = summarize_version(url, num_keys=0)
    stats = dv.read_stats(ref.url)
    schema = str(stats.get("schema") or "pose3d/1").partition("/")[0]
    config = _read_config(ref.url)
    inputs = dv.read_inputs(ref.url).to_pylist()
    index = _read_columns(ref.url, dv.INDEX_FILE, [s.column for s in _HISTOGRAMS.get(schema, ()) if s.table != "inputs"]
                          + ["frame_loss"])
    section.add(f'<section id="{_esc(prefix)}"><h2>{_esc(title)}</h2>')
    size = summary.get("bytes")
    section.add(_table(["", "value"], [
        ["dataset", url], ["version", summary["version"]], ["location", summary["version_url"]],
        ["schema", summary["schema"]], ["created (UTC)", summary["created_utc"]],
        ["samples", _number(summary["samples"])], ["shards", _number(summary["shards"])],
        ["bytes", f"{size:,} ({size / 2**20:.1f} MiB)" if isinstance(size, int) else "-"],
        ["engine", stats.get("engine")], ["wall time (s)", _number(stats.get("wall_seconds"))],
        ["bytes sent to the driver", _number(stats.get("driver_bytes"))],
    ], numeric=()))
    _funnel(section, summary, stats, inputs, schema)
    _histograms(section, ref, schema, config, inputs, index)
    _throughput(section, ref, stats)
    _gallery(section, ref, schema, config, inputs, gallery, frames_per_video)
    section.add("</section>")
    return section


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f4f4f4; }
td { max-width: 640px; overflow-wrap: anywhere; }
figure { margin: 0.8em 0 1.4em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; } .note { color: #8a5a00; font-size: 0.92em; }
nav li { margin: 0.1em 0; }
"""


def write_report(dataset_urls: str | Sequence[str], out_dir: str, *, gallery: int = 3, frames_per_video: int = 3,
                 titles: Sequence[str] | None = None) -> str:
    """Write the report of ``dataset_urls`` (one section each) to ``out_dir``; returns ``index.html``'s URL.

    ``gallery``: kept and filtered inputs shown per dataset (0: none); ``frames_per_video``:
    frames per pose3d video; ``titles``: section headings (default the URLs). Figures an earlier
    report left in ``out_dir`` (``d<i>_*.png``) are removed first; nothing else there is touched. Raises
    FileNotFoundError for a URL that is not a dataset version (:func:`~labelmill.infra.dataset_version.resolve_version`).
    """
    urls = [dataset_urls] if isinstance(dataset_urls, str) else list(dataset_urls)
    if not urls:
        raise ValueError("write_report needs at least one dataset URL")
    if titles is not None and len(titles) != len(urls):
        raise ValueError(f"{len(titles)} titles for {len(urls)} datasets")
    if gallery < 0 or frames_per_video < 1:
        raise ValueError(f"gallery must be >= 0 and frames_per_video >= 1, got {gallery} and {frames_per_video}")
    out_dir = out_dir.rstrip("/")
    storage.makedirs(out_dir)
    for url in storage.list_files(out_dir, "d*.png"):  # figures of an earlier report in this folder
        if _FIGURE_NAME.match(url.rsplit("/", 1)[-1]):
            storage.remove(url)
    sections = []
    for i, url in enumerate(urls):
        title = titles[i] if titles is not None else url
        log.info("report: %s", url)
        sections.append((title, _dataset_section(url, out_dir, f"d{i}", title, gallery=gallery,
                                                 frames_per_video=frames_per_video)))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<li><a href="#{_esc(s.prefix)}">{_esc(title)}</a></li>' for title, s in sections)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>labelmill report</title><style>{_STYLE}</style></head><body>"
        f"<h1>labelmill report</h1><p>{len(sections)} dataset version(s), written {_esc(now)} by "
        "<code>labelmill report</code>.</p>"
        f"<nav><ul>{nav}</ul></nav>"
        + "".join("".join(s.parts) for _, s in sections)
        + "</body></html>\n"
    )
    target = storage.safe_join(out_dir, INDEX_FILE)
    storage.write_text(target, page)
    return target
