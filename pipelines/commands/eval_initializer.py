"""`labelmill eval initializer`: the argument parsing (the work is in pipelines/initializer_eval.py)."""

from __future__ import annotations

import argparse
import json
import sys


def register_initializer_eval(sub: argparse._SubParsersAction) -> None:
    """Add ``initializer`` to the ``labelmill eval`` subcommands."""
    from labelmill.pipelines.commands._common import add_config_args

    parser = sub.add_parser(
        "initializer",
        help="MPJPE / PA-MPJPE of the keypoint initialiser and the mean-pose baseline",
        description="Run the per-frame keypoint initialiser on held-out synthetic videos (detected keypoints "
        "of the person of interest) and compare its 24 SMPL joints with the ground truth; the baseline "
        "is its own mean parameters (see docs/initializer.md).",
    )
    parser.add_argument("--videos", type=int, default=32, help="number of synthetic videos (default 32)")
    parser.add_argument("--frames", type=int, default=100, help="frames per video (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="synthetic world seed (default 1)")
    parser.add_argument("--weights", default=None, metavar="FILE.npz",
                        help="initialiser weights (default: the embedded default)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_config_args(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from labelmill.models.keypoint_initializer import KeypointInitializer
    from labelmill.pipelines.cli import UsageError
    from labelmill.pipelines.initializer_eval import evaluate_initializer, format_report
    from labelmill.pipelines.commands._common import resolve_config

    if args.videos < 1 or args.frames < 1:
        raise UsageError("--videos and --frames must be >= 1")
    cfg = resolve_config("pose3d", args)
    model = None
    if args.weights is not None:
        try:
            model = KeypointInitializer.from_file(args.weights)
        except (FileNotFoundError, ValueError) as exc:  # a missing or malformed --weights file
            raise UsageError(str(exc)) from None
    report = evaluate_initializer(args.videos, args.frames, args.seed, model=model, synth=cfg.synth)
    report["weights"] = args.weights or report["weights"]
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_report(report))
    return 0
