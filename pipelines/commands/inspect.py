"""`labelmill inspect URL`: summarise a dataset version (counts, reasons, loss quantiles, labels)."""

from __future__ import annotations

import argparse
import collections
import json
import sys
from typing import Any

import numpy as np

_QUANTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))
_TOP_REASONS = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="summarise a dataset version: inputs by status and reason, samples, shards, losses, labels",
        description="Print a summary of a dataset version read from its index.parquet, inputs.parquet "
        "and stats.json (shards are not opened; `labelmill validate` checks them).",
    )
    parser.add_argument("url", help="output root (follows LATEST) or a version directory OUT/versions/<id>")
    parser.add_argument("--keys", type=int, default=5, metavar="N", help="sample keys to list (default 5)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=_inspect)


def _quantiles(values: list[Any]) -> dict[str, Any]:
    finite = np.asarray([v for v in values if v is not None], dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    out: dict[str, Any] = {"count": int(finite.size)}
    for name, q in _QUANTILES:
        out[name] = float(np.quantile(finite, q)) if finite.size else None
    return out


def _top(counter: collections.Counter, n: int) -> list[list[Any]]:
    return [[reason, count] for reason, count in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]]


def summarize_version(url: str, *, num_keys: int = 5) -> dict[str, Any]:
    """Summary of the version at ``url`` (output root or version directory) as plain JSON types."""
    from labelmill.infra import dataset_version as dv
    from labelmill.infra.schema import INPUT_STATUSES, load_schema

    ref = dv.resolve_version(url)
    stats = dv.read_stats(ref.url)
    index = dv.read_index(ref.url).to_pydict()
    inputs = dv.read_inputs(ref.url).to_pydict()
    schema = load_schema(str(stats.get("schema", "pose3d/1")).partition("/")[0])
    statuses = collections.Counter(inputs.get("status", []))
    reasons: dict[str, collections.Counter] = {s: collections.Counter() for s in INPUT_STATUSES}
    for status, reason in zip(inputs.get("status", []), inputs.get("reason", [])):
        reasons.setdefault(status, collections.Counter())[reason] += 1
    quantiles = {}
    for table_name, table, key in (("index", index, "index_quantiles"), ("inputs", inputs, "inputs_quantiles")):
        for column in schema.inspect.get(key, ()):
            if column in table:
                quantiles[f"{table_name}.{column}"] = _quantiles(table[column])
    counts = {}
    for column in schema.inspect.get("counts", ()):
        per_table = {}
        for table_name, table in (("samples", index), ("inputs", inputs)):
            if column in table:
                per_table[table_name] = dict(_top(collections.Counter(map(str, table[column])), 1 << 30))
        counts[column] = per_table
    shard_names = sorted(set(index.get("shard", [])))
    return {
        "url": url,
        "version": ref.version_id,
        "version_url": ref.url,
        "schema": stats.get("schema"),
        "created_utc": stats.get("created_utc"),
        "inputs": {"in": len(inputs.get("input_key", [])), **{s: statuses.get(s, 0) for s in INPUT_STATUSES}},
        "top_reasons": {s: _top(c, _TOP_REASONS) for s, c in reasons.items() if s != "written" and c},
        "frames": stats.get("frames"),
        "samples": len(index.get("key", [])),
        "shards": len(dv.shard_urls(ref.url)),
        "shards_with_samples": len(shard_names),
        "bytes": stats.get("bytes"),
        "quantiles": quantiles,
        "counts": counts,
        "sample_keys": index.get("key", [])[:num_keys],
        "stages": stats.get("stages", {}),
    }


def _format_number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize_version`'s result."""
    inputs = summary["inputs"]
    lines = [
        f"version   {summary['version']}  ({summary['schema']}, created {summary['created_utc']})",
        f"location  {summary['version_url']}",
        f"inputs    {inputs['in']}: written {inputs['written']}, filtered {inputs['filtered']}, "
        f"failed {inputs['failed']}",
    ]
    for status, top in summary["top_reasons"].items():
        for reason, count in top:
            lines.append(f"  {status:<9} {count:>6}  {reason}")
    frames = summary.get("frames") or {}
    if frames:
        order = [k for k in ("in", "fitted", "kept") if k in frames] + sorted(set(frames) - {"in", "fitted", "kept"})
        lines.append("frames    " + ", ".join(f"{k} {frames[k]}" for k in order))
    size = summary["bytes"]
    size_text = f"{size:,} bytes ({size / 2**20:.1f} MiB)" if isinstance(size, int) else "- bytes"
    lines.append(f"samples   {summary['samples']} in {summary['shards']} shards, {size_text}")
    for name, q in summary["quantiles"].items():
        values = "  ".join(f"{p} {_format_number(q[p])}" for p, _ in _QUANTILES)
        lines.append(f"{name:<20} {values}  (n={q['count']})")
    for column, per_table in summary["counts"].items():
        for table_name, values in per_table.items():
            shown = ", ".join(f"{k} {v}" for k, v in list(values.items())[:10])
            more = f", ... ({len(values)} values)" if len(values) > 10 else ""
            lines.append(f"{column} ({table_name}): {shown}{more}")
    for name, stage in summary["stages"].items():
        rate = stage.get("items_per_s") if isinstance(stage, dict) else None
        lines.append(f"stage {name}: {_format_number(rate)} items/s")
    if summary["sample_keys"]:
        lines.append("keys      " + ", ".join(summary["sample_keys"]))
    return "\n".join(lines) + "\n"


def _inspect(args: argparse.Namespace) -> int:
    from labelmill.pipelines.cli import UsageError

    if args.keys < 0:
        raise UsageError("--keys must be >= 0")
    summary = summarize_version(args.url, num_keys=args.keys)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        sys.stdout.write(format_summary(summary))
    return 0
