"""`labelmill run PIPELINE`: run a pipeline on an engine and write a dataset version."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from labelmill.pipelines.commands._common import add_config_args, resolve_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run a pipeline and write a dataset version")
    sub = parser.add_subparsers(dest="pipeline", metavar="PIPELINE")
    sub.required = True
    pose3d = sub.add_parser(
        "pose3d",
        help="corpus -> decode -> keypoints -> track -> init -> bundle adjustment -> filter -> WebDataset shards",
        description="Fit SMPL to every video of a corpus and write kept frames as WebDataset shards with "
        "index.parquet, inputs.parquet, stats.json, config.yaml and _SUCCESS under OUTPUT/versions/<id>.",
    )
    pose3d.add_argument("--input", required=True,
                        help="corpus: Kinetics CSV, a directory/glob of videos, a video file or a manifest (any fsspec URL)")
    pose3d.add_argument("--output", required=True, help="dataset root (any fsspec URL); versions go under it")
    pose3d.add_argument("--engine", choices=("local", "ray", "beam"), default=None,
                        help="execution engine (default: engine.name from the config, local)")
    pose3d.add_argument("--full", action="store_true",
                        help="recompute every stage result instead of reusing those stored under OUTPUT/results "
                             "(by default a run is incremental: only what changed is computed)")
    pose3d.add_argument("--beam-option", dest="beam_options", action="append", default=[], metavar="OPT",
                        help="a Beam pipeline option passed through, e.g. --beam-option=--runner=FlinkRunner (repeatable)")
    add_config_args(pose3d)
    pose3d.set_defaults(handler=_pose3d)
    seg = sub.add_parser(
        "segmentation",
        help="COCO / VOC boxes -> decode -> things from boxes (GrabCut + second cue) -> filter -> WebDataset shards",
        description="Pseudo-label every image of a COCO instances JSON or a PASCAL VOC folder (things from "
        "boxes) and write jpg / sem.png / inst.png / json samples as WebDataset shards with index.parquet, "
        "inputs.parquet, stats.json, config.yaml and _SUCCESS under OUTPUT/versions/<id>.",
    )
    seg.add_argument("--input", required=True, metavar="COCO_JSON|VOC_DIR",
                     help="COCO instances .json or a VOC folder with Annotations/ and JPEGImages/ (any fsspec URL)")
    seg.add_argument("--output", required=True, help="dataset root (any fsspec URL); versions go under it")
    seg.add_argument("--images", default=None, metavar="DIR",
                     help="folder the image file names are relative to (default: the JSON's folder; VOC: JPEGImages/)")
    seg.add_argument("--engine", choices=("local", "ray", "beam"), default=None,
                     help="execution engine (default: engine.name from the config, local)")
    seg.add_argument("--full", action="store_true",
                     help="recompute every stage result instead of reusing those stored under OUTPUT/results")
    add_config_args(seg)
    seg.set_defaults(handler=_segmentation)


def _pose3d(args: argparse.Namespace) -> int:
    from labelmill.pipelines.pose3d import run_pose3d

    cfg = resolve_config("pose3d", args)
    if args.beam_options:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
            cfg.engine, beam_options=[*cfg.engine.beam_options, *args.beam_options]))
    run = run_pose3d(cfg, input_url=args.input, output_url=args.output.rstrip("/"), engine_name=args.engine,
                     full=args.full)
    inputs, frames = run.stats["inputs"], run.stats["frames"]
    if run.up_to_date:
        sys.stdout.write(f"labelmill run pose3d: up to date: {run.version_url} already holds these inputs "
                         f"with this config (nothing computed, no new version; --full recomputes)\n")
        return 0
    sys.stdout.write(
        f"labelmill run pose3d: dataset {run.version_url}\n"
        f"  inputs {inputs['in']}: written {inputs.get('written', 0)}, filtered {inputs.get('filtered', 0)}, "
        f"failed {inputs.get('failed', 0)}\n"
        f"  frames in {frames['in']}, fitted {frames['fitted']}, kept {frames['kept']}; "
        f"{run.stats['samples']} samples in {run.stats['shards']} shards\n"
    )
    return 0


def _segmentation(args: argparse.Namespace) -> int:
    from labelmill.pipelines.segmentation import run_segmentation

    cfg = resolve_config("segmentation", args)
    run = run_segmentation(cfg, input_url=args.input, output_url=args.output.rstrip("/"), engine_name=args.engine,
                           full=args.full, images=args.images)
    if run.up_to_date:
        sys.stdout.write(f"labelmill run segmentation: up to date: {run.version_url} already holds these inputs "
                         f"with this config (nothing computed, no new version; --full recomputes)\n")
        return 0
    inputs, reasons = run.stats["inputs"], run.stats.get("input_reasons", {})
    lines = [
        f"labelmill run segmentation: dataset {run.version_url}\n",
        f"  images {inputs['in']}: written {inputs.get('written', 0)}, filtered {inputs.get('filtered', 0)}, "
        f"failed {inputs.get('failed', 0)}; {run.stats['samples']} samples in {run.stats['shards']} shards\n",
    ]
    for status in ("filtered", "failed"):
        for reason, count in sorted(reasons.get(status, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:5]:
            lines.append(f"  {status} {count}: {reason}\n")
    sys.stdout.write("".join(lines))
    return 0
