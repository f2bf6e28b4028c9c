"""`labelmill synth pose|segmentation|bad`: synthetic corpora with exact ground truth.

``synth pose`` writes a Kinetics-style corpus with SMPL ground truth; ``synth segmentation`` writes
images of textured things on textured stuff with COCO annotations, image tags and GT masks;
``synth bad`` writes good inputs of both mixed with every kind of bad input, and what each must
come to (docs/inputs.md, "A corpus of bad inputs").
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from labelmill.infra.config import load_config
from labelmill.pipelines.commands._common import add_config_args

log = logging.getLogger(__name__)


def synth_command_config_class() -> type:
    """Root config of ``synth pose``: one section ``synth`` (a SynthConfig), so ``--set synth.key=value``.

    Built on demand so that the CLI does not import the synthesis stack just to print help.
    """
    from labelmill.operators.synth.config import SynthConfig

    return dataclasses.make_dataclass(
        "SynthCommandConfig", [("synth", SynthConfig, dataclasses.field(default_factory=SynthConfig))]
    )


def segmentation_command_config_class() -> type:
    """Root config of ``synth segmentation``: one section ``synth`` (a SegmentationSynthConfig)."""
    from labelmill.operators.synth.segmentation import SegmentationSynthConfig

    return dataclasses.make_dataclass(
        "SegmentationSynthCommandConfig",
        [("synth", SegmentationSynthConfig, dataclasses.field(default_factory=SegmentationSynthConfig))],
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="make synthetic data with exact ground truth")
    sub = parser.add_subparsers(dest="synth_command", metavar="KIND")
    sub.required = True
    pose = sub.add_parser(
        "pose",
        help="rendered people with SMPL ground truth and detector-like 2D keypoints",
        description="Write a Kinetics-style corpus (manifest.csv, videos/*.mp4, keypoints/*.json, gt/*.npz) "
        "of rendered synthetic people. Same arguments, same bytes.",
    )
    pose.add_argument("--videos", type=int, default=None, help="number of videos (synth.num_videos)")
    pose.add_argument("--frames", type=int, default=None, help="frames per video (synth.num_frames)")
    pose.add_argument("--seed", type=int, default=None, help="master seed (synth.seed)")
    pose.add_argument(
        "--people", type=int, default=None, help="most people per frame, distractors included (synth.max_people)"
    )
    pose.add_argument("--fps", type=int, default=None, help="frame rate (synth.fps)")
    pose.add_argument("--out", required=True, help="output directory (any fsspec URL)")
    add_config_args(pose)
    pose.set_defaults(handler=_pose)
    seg = sub.add_parser(
        "segmentation",
        help="textured things on textured stuff with COCO boxes/RLE, image tags and GT masks",
        description="Write images/*.jpg, annotations.json (COCO instances; per-image stuff tags), "
        "gt/*_sem.png (uint8 category ids) and gt/*_inst.png (uint16 instance ids). Same arguments, same bytes.",
    )
    seg.add_argument("--images", type=int, default=None, help="number of images (synth.num_images)")
    seg.add_argument("--seed", type=int, default=None, help="master seed (synth.seed)")
    seg.add_argument("--width", type=int, default=None, help="image width in pixels (synth.width)")
    seg.add_argument("--height", type=int, default=None, help="image height in pixels (synth.height)")
    seg.add_argument("--out", required=True, help="output directory (any fsspec URL)")
    add_config_args(seg)
    seg.set_defaults(handler=_segmentation)
    bad = sub.add_parser(
        "bad",
        help="good clips and images mixed with every kind of bad input, and the outcome each must have",
        description="Write pose/manifest.csv (+ videos, keypoints), segmentation/annotations.json (+ images), "
        "the clean subsets pose/clean.csv and segmentation/clean.json, and expected.json (each input's key, "
        "outcome and reason). Same arguments, same bytes.",
    )
    bad.add_argument("--seed", type=int, default=None, help="seed of the good clips and images (synth.seed)")
    bad.add_argument("--out", required=True, help="output directory (any fsspec URL)")
    add_config_args(bad)
    bad.set_defaults(handler=_bad)


_SEGMENTATION_FLAG_FIELDS = {"images": "num_images", "seed": "seed", "width": "width", "height": "height"}
_FLAG_FIELDS = {"videos": "num_videos", "frames": "num_frames", "seed": "seed", "people": "max_people", "fps": "fps"}


def bad_command_config_class() -> type:
    """Root config of ``synth bad``: one section ``synth`` (a BadCorpusConfig)."""
    from labelmill.operators.synth.bad_inputs import BadCorpusConfig

    return dataclasses.make_dataclass(
        "BadCorpusCommandConfig", [("synth", BadCorpusConfig, dataclasses.field(default_factory=BadCorpusConfig))]
    )


def resolve_synth_config(args: argparse.Namespace):  # -> SynthConfig
    """Defaults < ``--config`` < ``--set synth.*`` < explicit flags (``--videos`` ...)."""
    overrides = list(getattr(args, "overrides", []))
    for flag, field in _FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"synth.{field}={value}")
    return load_config(synth_command_config_class(), getattr(args, "config", None), overrides).synth


def resolve_segmentation_config(args: argparse.Namespace):  # -> SegmentationSynthConfig
    """Defaults < ``--config`` < ``--set synth.*`` < explicit flags (``--images`` ...)."""
    overrides = list(getattr(args, "overrides", []))
    for flag, field in _SEGMENTATION_FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"synth.{field}={value}")
    return load_config(segmentation_command_config_class(), getattr(args, "config", None), overrides).synth


def _segmentation(args: argparse.Namespace) -> int:
    from labelmill.operators.synth.segmentation import write_segmentation_corpus

    cfg = resolve_segmentation_config(args)
    summary = write_segmentation_corpus(args.out, cfg)
    sys.stdout.write(
        f"wrote {len(summary.image_names)} images ({cfg.width}x{cfg.height}, seed {cfg.seed}), "
        f"{summary.num_things} thing and {summary.num_stuff} stuff annotations in {summary.seconds:.1f} s "
        f"to {summary.out_dir}\n"
    )
    return 0


def _pose(args: argparse.Namespace) -> int:
    from labelmill.operators.synth.corpus import write_synthetic_corpus

    cfg = resolve_synth_config(args)
    log.info(
        "synth pose: %d videos x %d frames at %dx%d, %d fps, up to %d people, seed %d -> %s",
        cfg.num_videos, cfg.num_frames, cfg.width, cfg.height, cfg.fps, cfg.max_people, cfg.seed, args.out,
    )  # fmt: skip

    def progress(done: int, total: int, video_id: str, fps: float) -> None:
        log.info("video %d/%d written (%s), %.0f frames/s", done, total, video_id, fps)

    summary = write_synthetic_corpus(args.out, cfg, progress=progress)
    log.info(
        "wrote %d videos (%d frames) in %.1f s (%.0f frames/s) to %s",
        len(summary.video_ids), summary.num_frames, summary.seconds, summary.frames_per_second, summary.out_dir,
    )  # fmt: skip
    return 0


def _bad(args: argparse.Namespace) -> int:
    from labelmill.operators.synth.bad_inputs import write_bad_corpus

    overrides = list(getattr(args, "overrides", []))
    if args.seed is not None:
        overrides.append(f"synth.seed={args.seed}")
    cfg = load_config(bad_command_config_class(), getattr(args, "config", None), overrides).synth
    summary = write_bad_corpus(args.out, cfg)
    counts = {outcome: sum(1 for o in summary.cases.values() if o == outcome)
              for outcome in ("written", "filtered", "failed")}
    sys.stdout.write(
        f"wrote {summary.pose_inputs} pose3d inputs and {summary.segmentation_inputs} segmentation images "
        f"({counts['written']} to be written, {counts['filtered']} filtered, {counts['failed']} failed) "
        f"in {summary.seconds:.1f} s to {summary.out_dir}\n"
    )
    return 0
