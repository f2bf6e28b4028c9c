"""`labelmill report URL [URL ...] --out DIR`: a static HTML page (plus PNGs) of dataset versions."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a static HTML report of dataset versions: funnel, loss histograms, throughput, gallery",
        description="Write DIR/index.html and its PNGs for one or more dataset versions: the funnel (inputs -> "
        "written / filtered / failed with reasons; pose3d frames in -> fitted -> kept), loss histograms with the "
        "config's thresholds, per-stage throughput from stats.json, and a gallery of kept and filtered inputs "
        "(pose3d: detected keypoints, initialisation and fit over the frames; segmentation: masks over the "
        "images, ignore shown). docs/report.md describes the page.",
    )
    parser.add_argument("urls", nargs="+", metavar="URL",
                        help="output root (follows LATEST) or version directory OUT/versions/<id>; one section each")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write index.html and the PNGs into")
    parser.add_argument("--gallery", type=int, default=3, metavar="N",
                        help="kept and filtered inputs shown per dataset (default 3 of each; 0: no gallery)")
    parser.add_argument("--frames", type=int, default=3, metavar="N", help="frames per pose3d video (default 3)")
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from labelmill.pipelines.cli import UsageError
    from labelmill.pipelines.report import write_report

    if args.gallery < 0:
        raise UsageError(f"--gallery must be >= 0, got {args.gallery}")
    if args.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {args.frames}")
    path = write_report(args.urls, args.out, gallery=args.gallery, frames_per_video=args.frames)
    sys.stdout.write(f"report: {path}\n")
    return 0
