"""The segmentation pipeline: corpus (COCO / VOC) -> decode -> things from boxes -> samples -> shards.

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
* ``samples`` (:class:`~labelmill.operators.segmentation.samples.BuildSegmentationSamples`):
  the quality filter and the tar fragment.

Stuff from tags (Grad-CAM) and the dense CRF are the next stages: they go between ``things``
and ``samples`` (:func:`build_segmentation_pipeline` takes them as ``extra_stages``) and write
the columns of :data:`~labelmill.operators.segmentation.things.LABEL_COLUMNS`.
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
from labelmill.infra.results import code_fingerprint, digest, package_code_hash
from labelmill.infra.segmentation_corpus import detect_segmentation_kind, read_segmentation_corpus
from labelmill.infra.versioned_run import VersionedRun, VersionedRunSpec, run_versioned
from labelmill.operators.segmentation.images import DecodeImage
from labelmill.operators.segmentation.samples import BuildSegmentationSamples, failed_input_row
from labelmill.operators.segmentation.things import BoxThings

log = logging.getLogger(__name__)

__all__ = ["SegmentationRun", "build_segmentation_pipeline", "run_segmentation", "category_names",
           "segmentation_items", "config_digest"]

SegmentationRun = VersionedRun
STAGES = ("decode", "things", "samples")
# What travels inline from the last stage to the driver (the fragment and its index rows stay stored).
_SUMMARY = {"samples": ("input_row",)}
# Modules whose code shapes a version beyond the stage results.
_WRITER_MODULES = ("labelmill.pipelines.segmentation",)


def build_segmentation_pipeline(cfg: Any, *, extra_stages: Sequence[Stage] = ()) -> Pipeline:
    """decode -> things -> [extra_stages] -> samples for a :class:`~labelmill.pipelines.config.SegmentationConfig`.

    ``extra_stages`` (the hook for stuff from tags and the CRF) run after ``things`` and before
    ``samples``, which reads the label columns the last of them wrote.
    """
    return Pipeline(
        name="segmentation",
        stages=[
            Stage.of("decode", DecodeImage.from_config(cfg.image)),
            Stage.of("things", BoxThings(things=cfg.things)),
            *extra_stages,
            Stage.of("samples", BuildSegmentationSamples(filter=cfg.filter)),
        ],
    )


def category_names(input_url: str, input_cfg: Any) -> dict[int, str]:
    """Category id -> name of the corpus: the COCO document's categories, else the VOC classes."""
    if detect_segmentation_kind(input_url) == "coco":
        return {c.id: c.name for c in parse_coco_instances(storage.read_bytes(input_url)).categories}
    return {i + 1: name for i, name in enumerate(input_cfg.voc_classes)}


def segmentation_items(cfg: Any, input_url: str, images: str | None = None) -> list[dict[str, Any]]:
    """The corpus's work items plus ``box_category_names`` (one name per box)."""
    items = read_segmentation_corpus(input_url, images=images, config=cfg.input).to_pylist()
    names = category_names(input_url, cfg.input) if items else {}
    for item in items:
        cats = item.get("box_categories") or []
        item["box_category_names"] = [names.get(int(c), str(c)) for c in cats]
    return items


def fingerprints() -> dict[str, str]:
    """Short hash of the code a run uses (recorded in config.yaml); no model files yet."""
    return {"code": package_code_hash()}


def config_digest(cfg: Any) -> str:
    """The config without its ``engine`` section plus the writer's code (see pose3d's)."""
    return digest("segmentation-version", dump_yaml(dataclasses.replace(cfg, engine=EngineConfig())),
                  code_fingerprint(_WRITER_MODULES))


def _input_row_function(items: list[dict[str, Any]]):
    by_key = {str(item["key"]): item for item in items}

    def input_row(row: dict[str, Any]) -> dict[str, Any]:
        if row.get("status") == STATUS_FAILED or row.get("input_row") is None:
            item = by_key.get(str(row["key"]), {})
            return failed_input_row(str(row["key"]), str(row.get("reason") or "failed"),
                                    image_id=item.get("image_id"), file_name=item.get("file_name"),
                                    boxes_in=len(item.get("boxes") or []), boxes_dropped=len(item.get("dropped") or []),
                                    decoded=row.get("image_width") is not None)
        return dict(row["input_row"])

    return input_row


def run_segmentation(cfg: Any, *, input_url: str, output_url: str, engine_name: str | None = None,
                     full: bool = False, images: str | None = None) -> SegmentationRun:
    """Label every image of ``input_url`` (COCO instances JSON or VOC folder) into ``output_url``.

    ``images``: the folder image file names are relative to (default: the JSON's folder / the
    VOC ``JPEGImages``). Incremental and engine-independent like :func:`~labelmill.pipelines.pose3d.run_pose3d`:
    stored stage results are reused (``full`` recomputes them), and when LATEST already holds
    what this run would write nothing runs (``up_to_date``).
    """
    if engine_name is not None:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, name=engine_name))
    items = segmentation_items(cfg, input_url, images)
    log.info("segmentation: %d images from %s, engine %s", len(items), input_url, cfg.engine.name)
    spec = VersionedRunSpec(
        name="segmentation", schema="segmentation", shard_config=cfg.shards,
        config_yaml=dump_yaml(cfg) + "\n# fingerprints\n" + "".join(
            f"# {k}: {v}\n" for k, v in sorted(fingerprints().items())),
        config_digest=config_digest(cfg), input_row=_input_row_function(items), inline=_SUMMARY)
    return run_versioned(spec, build_segmentation_pipeline(cfg), items, output_url=output_url,
                         engine_cfg=cfg.engine, full=full)
