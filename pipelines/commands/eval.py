"""`labelmill eval ablation`: the seed's ablation table on held-out synthetic videos."""

from __future__ import annotations

import argparse
import json
import sys

from labelmill.pipelines.commands._common import add_config_args, resolve_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate fitting on synthetic ground truth")
    sub = parser.add_subparsers(dest="eval_command", metavar="WHAT")
    sub.required = True
    abl = sub.add_parser(
        "ablation",
        help="MPJPE / PA-MPJPE / accel error of init and each energy (detected and gt keypoints)",
        description="Fit held-out synthetic videos from an HMR-like noisy init with E_R, E_R+E_P, "
        "E_R+E_P+E_T, on detected and on ground-truth keypoints, and report the seed's table.",
    )
    abl.add_argument("--videos", type=int, default=32, help="number of synthetic videos (default 32)")
    abl.add_argument("--frames", type=int, default=100, help="frames per video (default 100)")
    abl.add_argument("--seed", type=int, default=1, help="synthetic world seed (default 1; the prior is fitted on 12345)")
    abl.add_argument(
        "--init", choices=("noisy", "keypoints"), default="noisy",
        help="per-frame init: 'noisy' = ground truth with HMR-like per-frame noise (default); "
        "'keypoints' = the embedded keypoint initialiser run on the detected keypoints",
    )
    abl.add_argument("--json", action="store_true", help="print JSON {\"rows\": [...]} instead of a table")
    add_config_args(abl)
    abl.set_defaults(handler=_ablation)

    from labelmill.pipelines.commands.eval_initializer import register_initializer_eval

    register_initializer_eval(sub)

    from labelmill.pipelines.pose3d_eval import register_pose3d_eval

    register_pose3d_eval(sub)

    from labelmill.pipelines.segmentation_eval import register_segmentation_eval

    register_segmentation_eval(sub)


def _ablation(args: argparse.Namespace) -> int:
    from labelmill.pipelines.experiments.ablation import ablation_rows, make_experiment_data

    if args.videos < 1 or args.frames < 3:
        from labelmill.pipelines.cli import UsageError

        raise UsageError("--videos must be >= 1 and --frames >= 3")
    cfg = resolve_config("pose3d", args)
    data = make_experiment_data(videos=args.videos, frames=args.frames, seed=args.seed, synth=cfg.synth, init=cfg.init,
                                init_source=args.init, keypoint_init=cfg.keypoint_init)
    rows = ablation_rows(data, body=cfg.body_model, prior=cfg.prior, fit=cfg.fit)
    if args.json:
        sys.stdout.write(json.dumps({"rows": rows, "videos": args.videos, "frames": args.frames, "seed": args.seed,
                                     "init": args.init}) + "\n")
    else:
        sys.stdout.write(format_rows(rows))
    return 0


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'method':<28} {'MPJPE (mm)':>11} {'PA-MPJPE (mm)':>14} {'accel (mm/f^2)':>15}"]
    for r in rows:
        lines.append(f"{r['name']:<28} {r['mpjpe_mm']:>11.1f} {r['pa_mpjpe_mm']:>14.1f} {r['accel_error_mm']:>15.2f}")
    return "\n".join(lines) + "\n"
