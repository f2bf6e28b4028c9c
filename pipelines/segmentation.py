"""The segmentation pipeline: corpus (COCO / VOC) -> decode -> things -> stuff -> [crf] -> samples -> shards.

Same storage and versioning machinery as pose3d (:func:`~labelmill.infra.versioned_run.run_versioned`,
docs/architecture.md): every stage result is stored by the worker that computes it and reused
by later runs, the engine (local, Ray Data, Beam) packs the shards from the per-image tar
fragments, and a dataset version of schema ``segmentation`` (``infra/schemas/segmentation.json``)
is committed with ``index.parquet``, ``inputs.parquet`` (every image written / filtered / failed
with a reason), ``results.parquet``, ``stats.json``, ``config.yaml``, ``_SUCCESS`` and LATEST.

Stages (docs/segmentation.md, "The pipeline"):

* ``decode`` (:class:`~labelmill.operators.segmentation.images.DecodeImage`): image bytes from
  ``uri``, size check, resize to ``image.max_side`` (boxes scaled with it);
* ``things`` (:class:`~labelmill.operators.segmentation.things.BoxThings`): GrabCut and the
  second cue per box, sem/inst PNGs and segments;
* ``stuff`` (:class:`~labelmill.operators.segmentation.stuff.StuffFromTags`): Grad-CAM of the
  tag classifier for each image tag, under the things (things take precedence); only when
  ``stuff.enabled`` and some image has tags. The classifier is ``stuff.classifier`` or, when
  that is empty, one trained here on the corpus's tags (:func:`resolve_classifier`);
* ``crf`` (:class:`~labelmill.operators.segmentation.crf_refine.RefineCRF`): the dense CRF over
  the labels so far, when ``crf.enabled``;
* ``samples`` (:class:`~labelmill.operators.segmentation.samples.BuildSegmentationSamples`):
  the quality filter and the tar fragment, from the last labelling stage's columns.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

from labelmill.infra import storage
from labelmill.infra.config import dump_yaml
from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.formats.coco import parse_coco_instances
from labelmill.infra.formats.items import STATUS_FAILED
from labelmill.infra.pipeline import Pipeline, Stage
from labelmill.infra.preflight import check_inputs, check_model_file, check_output
from labelmill.infra.results import code_fingerprint, digest, package_code_hash
from labelmill.infra.storage import file_fingerprint
from labelmill.infra.segmentation_corpus import detect_segmentation_kind, read_segmentation_corpus
from labelmill.infra.versioned_run import VersionedRun, VersionedRunSpec, run_versioned
from labelmill.models.model_files import write_model_bytes
from labelmill.operators.segmentation.crf_refine import CRF_LABEL_COLUMNS, RefineCRF
from labelmill.operators.segmentation.images import DecodeImage
from labelmill.operators.segmentation.samples import BuildSegmentationSamples, input_row_function
from labelmill.operators.segmentation.stuff import STUFF_LABEL_COLUMNS, StuffFromTags
from labelmill.operators.segmentation.tag_classifier import train_tag_classifier, training_items
from labelmill.operators.segmentation.things import LABEL_COLUMNS, BoxThings

log = logging.getLogger(__name__)

__all__ = ["SegmentationRun", "build_segmentation_pipeline", "run_segmentation", "category_names",
           "segmentation_items", "config_digest", "resolve_classifier", "CLASSIFIER_DIR"]

SegmentationRun = VersionedRun
STAGES = ("decode", "things", "stuff", "crf", "samples")
# Classifiers the pipeline trains on a corpus's tags, under the output root, by content key.
CLASSIFIER_DIR = "models/classifier"
# Code that shapes a trained classifier (its key).
_TRAINING_MODULES = ("labelmill.operators.segmentation.tag_classifier", "labelmill.models.multilabel_classifier",
                     "labelmill.models.efficientnet_lite")
# What travels inline from the last stage to the driver (the fragment and its index rows stay stored).
_SUMMARY = {"samples": ("input_row",)}
# Modules whose code shapes a version beyond the stage results.
_WRITER_MODULES = ("labelmill.pipelines.segmentation",)


def build_segmentation_pipeline(cfg: Any, *, classifier: str | None = None,
                                extra_stages: Sequence[Stage] = ()) -> Pipeline:
    """decode -> things -> [stuff] -> [crf] -> [extra_stages] -> samples for a
    :class:`~labelmill.pipelines.config.SegmentationConfig`.

    ``classifier``: the tag classifier file the ``stuff`` stage explains (None: no stuff stage).
    ``extra_stages`` run before ``samples`` and must write the stage before them's label columns
    (``samples`` reads the last labelling stage's columns).
    """
    stages = [Stage.of("decode", DecodeImage.from_config(cfg.image)), Stage.of("things", BoxThings(things=cfg.things))]
    labels = LABEL_COLUMNS
    if classifier:
        stages.append(Stage.of("stuff", StuffFromTags(config=cfg.stuff, classifier=classifier)))
        labels = STUFF_LABEL_COLUMNS
    if cfg.crf.enabled:
        stages.append(Stage.of("crf", RefineCRF(config=cfg.crf, label_columns=labels)))
        labels = CRF_LABEL_COLUMNS
    stages.extend(extra_stages)
    stages.append(Stage.of("samples", BuildSegmentationSamples(filter=cfg.filter, label_columns=labels)))
    return Pipeline(name="segmentation", stages=stages)


def category_names(input_url: str, input_cfg: Any) -> dict[int, str]:
    """Category id -> name of the corpus: the COCO document's categories, else the VOC classes."""
    if detect_segmentation_kind(input_url) == "coco":
        return {c.id: c.name for c in parse_coco_instances(storage.read_bytes(input_url)).categories}
    return {i + 1: name for i, name in enumerate(input_cfg.voc_classes)}


def segmentation_items(cfg: Any, input_url: str, images: str | None = None) -> list[dict[str, Any]]:
    """The corpus's work items plus ``box_category_names`` (one name per box) and
    ``tag_category_ids`` (one category id per tag)."""
    items = read_segmentation_corpus(input_url, images=images, config=cfg.input).to_pylist()
    names = category_names(input_url, cfg.input) if items else {}
    ids = {name: cid for cid, name in names.items()}
    for item in items:
        cats = item.get("box_categories") or []
        item["box_category_names"] = [names.get(int(c), str(c)) for c in cats]
        item["tag_category_ids"] = [int(ids[t]) for t in item.get("tags") or []]  # the reader keeps known tags only
    return items


def resolve_classifier(cfg: Any, items: list[dict[str, Any]], output_url: str) -> str | None:
    """The tag classifier file the ``stuff`` stage uses, or None when there is no stuff to label.

    None when ``stuff.enabled`` is off or no usable image has a tag. ``stuff.classifier`` when
    set. Else one trained on the corpus's own tags (:func:`~labelmill.operators.segmentation.tag_classifier.train_tag_classifier`),
    stored as ``OUTPUT/models/classifier/<key>.pt``; the key hashes the training images (key,
    fingerprint, tags), ``stuff.train`` and the training code, so a rerun on the same corpus
    reuses the file and an added image or tag trains a new one.
    """
    if not cfg.stuff.enabled or not any(it.get("tags") and it.get("status") != STATUS_FAILED for it in items):
        return None
    if cfg.stuff.classifier:
        return cfg.stuff.classifier
    train = cfg.stuff.train
    chosen = training_items(items, train.max_images)
    key = digest("tag-classifier", dataclasses.asdict(train),
                 [[str(it["key"]), it.get("fingerprint"), sorted(it.get("tags") or [])] for it in chosen],
                 code_fingerprint(_TRAINING_MODULES))
    url = storage.join(output_url, CLASSIFIER_DIR, f"{key}.pt")
    if storage.exists(url):
        log.info("segmentation: tag classifier %s reused", url)
        return url
    log.info("segmentation: training the tag classifier on %d images' tags (stuff.train; stored as %s)", len(chosen), url)
    data, report = train_tag_classifier(items, train)
    if report["skipped"]:
        log.warning("segmentation: tag classifier skipped %d undecodable images (first: %s)", len(report["skipped"]),
                    next(iter(report["skipped"].items())))
    write_model_bytes(url, data)
    return url


def fingerprints(classifier: str | None = None) -> dict[str, str]:
    """Short hashes of the code and the tag classifier a run uses (recorded in config.yaml)."""
    out = {"code": package_code_hash()}
    if classifier:
        out["classifier"] = f"{classifier} {file_fingerprint(classifier, mode='sha1')}"
    return out


def config_digest(cfg: Any) -> str:
    """The config without its ``engine`` section plus the writer's code (see pose3d's)."""
    return digest("segmentation-version", dump_yaml(dataclasses.replace(cfg, engine=EngineConfig())),
                  code_fingerprint(_WRITER_MODULES))


def run_segmentation(cfg: Any, *, input_url: str, output_url: str, engine_name: str | None = None,
                     full: bool = False, images: str | None = None, allow_empty: bool = False) -> SegmentationRun:
    """Label every image of ``input_url`` (COCO instances JSON or VOC folder) into ``output_url``.

    ``images``: the folder image file names are relative to (default: the JSON's folder / the
    VOC ``JPEGImages``). Incremental and engine-independent like :func:`~labelmill.pipelines.pose3d.run_pose3d`:
    stored stage results are reused (``full`` recomputes them), and when LATEST already holds
    what this run would write nothing runs (``up_to_date``). ``allow_empty``: move LATEST even
    when no image was written. Preflight as pose3d's: a writable output, an existing
    ``stuff.classifier``, at least one image.
    """
    if engine_name is not None:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, name=engine_name))
    check_output(output_url)
    if cfg.stuff.enabled:
        check_model_file(cfg.stuff.classifier, "stuff.classifier")
    items = segmentation_items(cfg, input_url, images)
    check_inputs(items, input_url, "images")
    log.info("segmentation: %d images from %s, engine %s", len(items), input_url, cfg.engine.name)
    classifier = resolve_classifier(cfg, items, output_url)
    spec = VersionedRunSpec(
        name="segmentation", schema="segmentation", shard_config=cfg.shards,
        config_yaml=dump_yaml(cfg) + "\n# fingerprints\n" + "".join(
            f"# {k}: {v}\n" for k, v in sorted(fingerprints(classifier).items())),
        config_digest=config_digest(cfg), input_row=input_row_function(items), inline=_SUMMARY)
    return run_versioned(spec, build_segmentation_pipeline(cfg, classifier=classifier), items, output_url=output_url,
                         engine_cfg=cfg.engine, full=full, allow_empty=allow_empty)
