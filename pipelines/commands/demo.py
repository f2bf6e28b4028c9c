"""`labelmill demo --out DIR`: the `make run` job on the embedded defaults."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from labelmill.pipelines.commands._common import add_config_args, resolve_config

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthetic corpus -> init -> batched bundle adjustment -> filter -> report (what `make run` runs)",
        description="Generate a small synthetic corpus with ground truth, fit every video by batched "
        "bundle adjustment from an HMR-like noisy init, filter by loss, and report accuracy.",
    )
    parser.add_argument("--out", required=True, help="output directory (any fsspec URL)")
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos (default 8)")
    parser.add_argument("--frames", type=int, default=60, help="frames per video (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed (default 0)")
    add_config_args(parser)
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from labelmill.pipelines.demo import run_demo

    cfg = resolve_config("pose3d", args)
    cfg = dataclasses.replace(
        cfg, synth=dataclasses.replace(cfg.synth, num_videos=args.videos, num_frames=args.frames, seed=args.seed)
    )
    s = run_demo(args.out.rstrip("/"), cfg)
    sys.stdout.write(
        f"labelmill demo: {s.videos} videos / {s.frames} frames fitted in {s.seconds}s; "
        f"kept {s.videos_kept} videos / {s.frames_kept} frames\n"
        f"  MPJPE init {s.init_mpjpe_mm} mm -> fitted {s.fit_mpjpe_mm} mm (PA-MPJPE {s.fit_pa_mpjpe_mm} mm)\n"
        f"  outputs: {s.out}/report.json, {s.out}/fits/*.npz, {s.out}/corpus/ (videos, keypoints, gt)\n"
    )
    return 0
