"""`labelmill bench fit`: batched bundle adjustment vs a SMPLify-style baseline."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from labelmill.pipelines.commands._common import add_config_args, resolve_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="speed and memory benchmarks")
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    sub.required = True
    fit = sub.add_parser(
        "fit",
        help="ours (batched, joints-only) vs SMPLify-style (one video at a time, full mesh, torch LBFGS)",
        description="Fit the same synthetic videos with the same energy and stopping rule two ways and "
        "report frames/s of each, the speedup and the MPJPE of each.",
    )
    fit.add_argument("--videos", type=int, default=64, help="videos fitted by ours in one batch (default 64)")
    fit.add_argument("--frames", type=int, default=100, help="frames per video (default 100)")
    fit.add_argument("--seed", type=int, default=2, help="synthetic world seed (default 2)")
    fit.add_argument("--baseline-videos", type=int, default=8,
                     help="videos the (slow) baseline fits, the first N of the same set (default 8; frames/s is a rate)")
    fit.add_argument("--device", default=None, help="torch device for both (default: fit.device, cpu)")
    fit.add_argument("--batch-sizes", default="",
                     help="comma-separated batch sizes (videos) for a throughput sweep of ours, e.g. 256,1024,4096")
    fit.add_argument("--threads", type=int, default=None,
                     help="torch intra-op threads for both (default: torch's choice; 1 is steadier on a shared host)")
    fit.add_argument("--json", action="store_true", help="print JSON")
    add_config_args(fit)
    fit.set_defaults(handler=_fit)

    from labelmill.pipelines.experiments.pipeline_bench import register_pipeline_bench
    from labelmill.pipelines.experiments.segmentation_bench import register_segmentation_bench

    register_pipeline_bench(sub)
    register_segmentation_bench(sub)


def _fit(args: argparse.Namespace) -> int:
    from labelmill.pipelines.cli import UsageError
    from labelmill.pipelines.experiments.ablation import bench_fit, make_experiment_data

    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise UsageError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    cfg = resolve_config("pose3d", args)
    fit_cfg = cfg.fit if args.device is None else dataclasses.replace(cfg.fit, device=args.device)
    try:
        sizes = tuple(int(s) for s in args.batch_sizes.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    data = make_experiment_data(videos=args.videos, frames=args.frames, seed=args.seed, synth=cfg.synth, init=cfg.init)
    report = bench_fit(data, body=cfg.body_model, prior=cfg.prior, fit=fit_cfg,
                       baseline_videos=args.baseline_videos, batch_sizes=sizes)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        for k, v in report.items():
            sys.stdout.write(f"{k:>24}: {v}\n")
    return 0
