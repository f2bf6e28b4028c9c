"""`labelmill synth pose`: write a synthetic Kinetics-style corpus with exact SMPL ground truth."""

from __future__ import annotations

import argparse
import dataclasses
import logging

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


_FLAG_FIELDS = {"videos": "num_videos", "frames": "num_frames", "seed": "seed", "people": "max_people", "fps": "fps"}


def resolve_synth_config(args: argparse.Namespace):  # -> SynthConfig
    """Defaults < ``--config`` < ``--set synth.*`` < explicit flags (``--videos`` ...)."""
    overrides = list(getattr(args, "overrides", []))
    for flag, field in _FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"synth.{field}={value}")
    return load_config(synth_command_config_class(), getattr(args, "config", None), overrides).synth


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
