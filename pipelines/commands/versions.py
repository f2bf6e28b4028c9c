"""`labelmill versions OUT`: the committed versions, oldest first, LATEST marked, with config diffs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "versions",
        help="list the committed versions of an output root: funnel, LATEST, what changed in the config",
        description="List the committed dataset versions under OUT, oldest first (newest last), LATEST marked "
        "with '*': inputs in/written/filtered/failed, frames in/kept, samples, shards; then, per version, the "
        "config keys that differ from the version before it (fingerprints of code and models included).",
    )
    parser.add_argument("out", help="output root (the directory or URL holding LATEST and versions/)")
    parser.add_argument("--json", action="store_true", help="print the versions as JSON")
    parser.set_defaults(handler=_versions)


_COLUMNS = ("", "version", "created_utc", "in", "written", "filtered", "failed", "frames", "kept", "samples", "shards")


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def format_versions(summaries: list[Any]) -> str:
    """The table of :func:`~labelmill.infra.version_list.list_version_summaries`, then each version's diff."""
    rows = [list(_COLUMNS)]
    for s in summaries:
        rows.append(["*" if s.is_latest else "", s.version_id, _cell(s.created_utc), _cell(s.inputs.get("in")),
                     _cell(s.inputs.get("written")), _cell(s.inputs.get("filtered")), _cell(s.inputs.get("failed")),
                     _cell(s.frames.get("in")), _cell(s.frames.get("kept")), _cell(s.samples), _cell(s.shards)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    for s in summaries:
        if s.previous is None:
            continue
        lines.append("")
        lines.append(f"{s.version_id} (vs {s.previous}):" + ("" if s.changes else " config unchanged"))
        lines.extend(f"  {change}" for change in s.changes)
    return "\n".join(lines) + "\n"


def _versions(args: argparse.Namespace) -> int:
    from labelmill.infra.dataset_version import read_latest
    from labelmill.infra.version_list import list_version_summaries
    from labelmill.pipelines.cli import UsageError

    summaries = list_version_summaries(args.out)
    if not summaries and read_latest(args.out) is None:
        raise UsageError(f"{args.out} has no committed version (no LATEST, no versions/*/_SUCCESS)")
    if args.json:
        sys.stdout.write(json.dumps([s.as_dict() for s in summaries], indent=2, default=str) + "\n")
    else:
        sys.stdout.write(format_versions(summaries))
    return 0
