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
    pose3d.add_argument("--allow-empty", action="store_true",
                        help="move LATEST even when no input was written (default: such a version is committed for "
                             "its accounting, LATEST stays, and the command exits 1)")
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
    seg.add_argument("--allow-empty", action="store_true",
                     help="move LATEST even when no image was written (default: LATEST stays and the command exits 1)")
    add_config_args(seg)
    seg.set_defaults(handler=_segmentation)
    relabel = sub.add_parser(
        "relabel",
        help="segmentation dataset -> K rounds of: train a small segmentation net, relabel from its confident "
             "predictions -> a new dataset version",
        description="Iterative relabelling (docs/segmentation.md, 'Relabelling'): each round trains a small "
        "segmentation network on the current version's labels (ignore excluded from the loss), relabels every "
        "sample from its confident predictions (below relabel threshold, and for thing classes outside every "
        "box of their class: ignore) and commits a new dataset version; with --gt each round is scored.",
    )
    relabel.add_argument("--dataset", required=True,
                         help="segmentation dataset: an output root (uses LATEST) or a version directory")
    relabel.add_argument("--rounds", required=True, type=int, metavar="K", help="relabelling rounds (>= 1)")
    relabel.add_argument("--output", default=None,
                         help="dataset root the new versions go to (default: the dataset's own root)")
    relabel.add_argument("--gt", default=None, metavar="COCO_JSON",
                         help="COCO instances JSON with masks: report mIoU / PQ / labelled fraction per round")
    relabel.add_argument("--engine", choices=("local", "ray", "beam"), default=None,
                         help="execution engine of the relabel and samples stages (default: engine.name, local)")
    relabel.add_argument("--full", action="store_true",
                         help="retrain and recompute every round instead of reusing stored models, results and rounds")
    relabel.add_argument("--json", action="store_true", help="print one JSON document with every round")
    add_config_args(relabel)
    relabel.set_defaults(handler=_relabel)


def _pose3d(args: argparse.Namespace) -> int:
    from labelmill.pipelines.pose3d import run_pose3d

    cfg = resolve_config("pose3d", args)
    if args.beam_options:
        cfg = dataclasses.replace(cfg, engine=_with_beam_options(cfg.engine, args.beam_options))
    run = run_pose3d(cfg, input_url=args.input, output_url=args.output.rstrip("/"), engine_name=args.engine,
                     full=args.full, allow_empty=args.allow_empty)
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
    return _empty_run_status("pose3d", run)


def _with_beam_options(engine, options: list[str]):
    """``engine`` with the ``--beam-option`` flags added; ``--beam-option=--runner=R`` sets ``beam_runner``
    (as ``--help`` shows), the last one winning. A malformed option is a usage error (exit 2)."""
    from labelmill.pipelines.cli import UsageError

    runner, rest = engine.beam_runner, []
    for option in options:
        flag, sep, value = option.partition("=")
        if flag == "--runner":
            if not sep or not value.strip():
                raise UsageError(f"--beam-option {option!r}: name the runner, e.g. --beam-option=--runner=FlinkRunner")
            runner = value
        else:
            rest.append(option)
    try:
        return dataclasses.replace(engine, beam_runner=runner, beam_options=[*engine.beam_options, *rest])
    except ValueError as exc:
        raise UsageError(f"--beam-option: {exc}") from None


def _empty_run_status(name: str, run) -> int:
    """1 (and a line saying so) when the run wrote no input and LATEST stayed, else 0."""
    if run.latest_moved:
        return 0
    sys.stdout.write(f"labelmill run {name}: no input was written (see {run.version_url}/inputs.parquet for each "
                     f"reason); LATEST was not moved (--allow-empty moves it)\n")
    return 1


def _segmentation(args: argparse.Namespace) -> int:
    from labelmill.pipelines.segmentation import run_segmentation

    cfg = resolve_config("segmentation", args)
    run = run_segmentation(cfg, input_url=args.input, output_url=args.output.rstrip("/"), engine_name=args.engine,
                           full=args.full, images=args.images, allow_empty=args.allow_empty)
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
    return _empty_run_status("segmentation", run)


def _relabel(args: argparse.Namespace) -> int:
    import json

    from labelmill.infra.config import load_config
    from labelmill.pipelines.cli import UsageError
    from labelmill.pipelines.relabel import RelabelConfig, run_relabel

    if args.rounds < 1:
        raise UsageError("--rounds must be >= 1")
    cfg = load_config(RelabelConfig, args.config, args.overrides)
    rounds = run_relabel(args.dataset.rstrip("/"), args.rounds, output_url=args.output, gt=args.gt, config=cfg,
                         engine_name=args.engine, full=args.full)
    if args.json:
        sys.stdout.write(json.dumps([r.as_dict() for r in rounds]) + "\n")
        return 0

    def num(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"labelmill run relabel: {len(rounds) - 1} rounds of {rounds[0].version_url}\n"]
    for r in rounds:
        s, m = r.summary, r.metrics or {}
        what = "input" if r is rounds[0] else ("up to date" if r.up_to_date else "written")
        line = (f"  round {r.round}: {r.version_id} ({what}) samples {s.get('written')}/{s.get('inputs')}"
                f" ignore in boxes {num(s.get('ignore_fraction'))}")
        if r.losses:
            line += f" loss {r.losses[0]:.3f}->{r.losses[-1]:.3f}"
        if r.metrics is not None:
            line += (f" | mIoU {num(m.get('miou'))} PQ {num(m.get('pq'))} labelled {num(m.get('labelled_fraction'))}"
                     f" in boxes {num(m.get('box_labelled_fraction'))}")
        lines.append(line + "\n")
    sys.stdout.write("".join(lines))
    return 0
