"""``labelmill train``: train embedded models (see docs/initializer.md).

    labelmill train initializer --out FILE.npz [--steps N] [--seed S] [--batch B] [--threads T]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an embedded model (the keypoint initialiser)",
        description="Train models that labelmill ships, from data our own code generates.",
    )
    what = parser.add_subparsers(dest="train_command", metavar="WHAT")
    what.required = True
    init = what.add_parser(
        "initializer",
        help="train the keypoint -> SMPL per-frame initialiser on body-model samples",
        description="Train the keypoint-conditioned SMPL initialiser (HMR's role) on random poses of the "
        "synthetic motion library, projected with the body model and corrupted like a detector. "
        "Reproducible from --seed (same torch build and --threads). The shipped default is "
        "`labelmill train initializer --out models/data/keypoint_initializer.npz` with the defaults.",
    )
    init.add_argument("--out", required=True, metavar="FILE.npz", help="where to write the weights (any fsspec URL)")
    # Defaults come from InitializerTrainingConfig when the command runs (importing it here would
    # load torch for every labelmill command); docs/initializer.md lists them.
    init.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    init.add_argument("--seed", type=int, default=None,
                      help="seed of data and weights (default: the recipe's; keep apart from evaluation seeds)")
    init.add_argument("--batch", type=int, default=None, help="examples per step (default: the recipe's)")
    init.add_argument("--threads", type=int, default=None, help="torch threads while training (default: the recipe's)")
    init.add_argument("--pose-pool", type=int, default=None,
                      help="motion frames drawn once per run (default: the recipe's)")
    init.add_argument("--log-every", type=int, default=None, help="log losses every N steps (default: the recipe's)")
    init.add_argument("--body-model", default=None, metavar="SMPL",
                      help="SMPL .pkl/.npz to train for (default: the embedded default body)")
    init.set_defaults(handler=run_train_initializer)  # fmt: skip


def run_train_initializer(args: argparse.Namespace) -> int:
    from labelmill.models.body_model import BodyModel
    from labelmill.models.initializer_training import InitializerTrainingConfig, describe, train_initializer
    from labelmill.operators.pose3d.keypoint_init import synthetic_training_sources
    from labelmill.pipelines.cli import UsageError

    try:
        given = {"steps": args.steps, "batch_size": args.batch, "seed": args.seed, "threads": args.threads,
                 "pose_pool": args.pose_pool, "log_every": args.log_every}
        config = InitializerTrainingConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise UsageError(f"labelmill train initializer: {exc}") from None
    try:
        body = BodyModel(path=args.body_model)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--body-model: {exc}") from None
    log.info("training the keypoint initialiser: %s", dataclasses.asdict(config))
    model = train_initializer(synthetic_training_sources(), config=config, body_model=body)
    model.save(args.out)
    info = describe(model)
    log.info("wrote %s (%d parameters, %.2f MB as float32)", args.out, info["parameters"], info["float32_mb"])
    return 0
