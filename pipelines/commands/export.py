"""`labelmill export URL --format npz --out DIR`: a pose3d version in a per-video layout (pipelines/export.py)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from labelmill.pipelines.export import FORMATS  # numpy only: cheap

    parser = subparsers.add_parser(
        "export",
        help="write a pose3d dataset version in a per-video layout trainers read (npz)",
        description="Write one .npz per input video of a pose3d dataset version (frames in order, every "
        "SMPL array stacked, losses, boxes, a JSON metadata string), without pickle. docs/consume.md, 'Export'.",
    )
    parser.add_argument("dataset", metavar="URL", help="dataset root (LATEST) or a version directory")
    parser.add_argument("--format", choices=FORMATS, default="npz", help="layout (default npz)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (any fsspec URL)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from labelmill.pipelines.cli import UsageError
    from labelmill.pipelines.export import ExportError, export_npz

    try:
        summary = export_npz(args.dataset.rstrip("/"), args.out.rstrip("/"))
    except (FileNotFoundError, ExportError) as exc:
        raise UsageError(f"labelmill export: {exc}") from None
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        sys.stdout.write(f"labelmill export: {summary['videos']} videos, {summary['frames']} frames of "
                         f"{summary['version']} as {summary['format']} under {summary['out']}\n")
    return 0
