"""The pose3d pipeline: corpus -> decode -> keypoints -> track -> init -> fit -> filter -> samples -> shards.

The DAG is a plain list of engine-free operators (:class:`~labelmill.infra.pipeline.Pipeline`);
``run_pose3d`` wraps every stage so that its results are stored by the worker that computes them
and reused by later runs (:mod:`labelmill.infra.persisted_stage`), hands it to an engine (local,
Ray Data or Beam: a flag), has the engine pack the shards from the per-input tar fragments
(:mod:`labelmill.infra.packing`), and commits a dataset version (DESIGN.md §2,
docs/architecture.md): ``shards.json`` (the shared shard objects it lists), ``index.parquet``,
``inputs.parquet`` (every input written / filtered / failed with a reason), ``results.parquet``
(the stage result keys of every input), ``stats.json`` (the funnel, computed/reused per stage),
``config.yaml`` (resolved config + code and model fingerprints), ``fits.json`` (where every
fitted frame's results are; ``write_fits``), ``_SUCCESS``, then ``OUT/LATEST``.

Every input reaches the end in exactly one status; the driver receives small per-input
summaries only. Shards are byte-identical on every engine, across reruns and resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from labelmill.infra import storage
from labelmill.infra.config import dump_yaml
from labelmill.infra.corpus import read_corpus
from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.formats.items import STATUS_FAILED
from labelmill.infra.persisted_stage import KEYS_COLUMN, WORK_COLUMN
from labelmill.infra.pipeline import Pipeline, Stage
from labelmill.infra.results import RESULTS_DIR, code_fingerprint, digest, package_code_hash
from labelmill.infra.versioned_run import VersionedRun, VersionedRunSpec, run_versioned
from labelmill.infra.preflight import check_inputs, check_model_file, check_output
from labelmill.operators.common.decode import DecodeVideo
from labelmill.operators.pose3d.bundle_adjust import BundleAdjust
from labelmill.operators.pose3d.keypoint_init import KeypointInit
from labelmill.operators.pose3d.keypoints_backend import build_keypoints_operator
from labelmill.operators.pose3d.loss_filter import LossFilter
from labelmill.operators.pose3d.samples import BuildSamples, failed_input_row
from labelmill.operators.pose3d.tracking import TrackPersonOfInterest

log = logging.getLogger(__name__)

__all__ = ["Pose3dRun", "build_pose3d_pipeline", "run_pose3d", "fingerprints"]


# What a run wrote (or found up to date): version_url, version_id, stats, up_to_date.
Pose3dRun = VersionedRun


def _keypoints_config(cfg: Any, input_url: str) -> Any:
    """Precomputed keypoints default to ``<corpus>/keypoints`` (the synthetic world's layout)."""
    kcfg = cfg.keypoints
    if kcfg.backend == "precomputed" and not kcfg.precomputed_root:
        root = input_url.rstrip("/")
        if root.endswith(".csv") or root.endswith(".parquet"):
            root = root.rsplit("/", 1)[0]
        kcfg = dataclasses.replace(kcfg, precomputed_root=storage.join(root, "keypoints"))
    return kcfg


def build_pose3d_pipeline(cfg: Any, input_url: str) -> Pipeline:
    """The pose3d stages for a resolved :class:`~labelmill.pipelines.config.Pose3dConfig`.

    decode -> keypoints -> track -> init -> fit -> filter -> samples. The loss filter is its own
    stage (a new threshold never refits) and the samples stage writes each video's tar fragment.
    """
    return Pipeline(
        name="pose3d",
        stages=[
            Stage.of("decode", DecodeVideo.from_config(cfg.decode)),
            Stage.of("keypoints", build_keypoints_operator(_keypoints_config(cfg, input_url))),
            Stage.of("track", TrackPersonOfInterest(tracking=cfg.tracking)),
            Stage.of("init", KeypointInit.from_config(cfg.keypoint_init)),
            Stage.of("fit", BundleAdjust(body_model=cfg.body_model, prior=cfg.prior, fit=cfg.fit, filter=False)),
            Stage.of("filter", LossFilter(filter=cfg.filter)),
            Stage.of("samples", BuildSamples(samples=cfg.samples)),
        ],
    )


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def fingerprints(cfg: Any) -> dict[str, str]:
    """Short hashes of the code and of every model file a run uses (recorded in config.yaml)."""
    data = Path(__file__).resolve().parent.parent / "models" / "data"
    out = {"code": package_code_hash()}
    out["prior"] = _sha256_file(Path(cfg.prior.path)) if cfg.prior.path else "embedded:" + _sha256_file(
        data / "gmm_prior_default.npz")
    out["keypoint_initializer"] = (_sha256_file(Path(cfg.keypoint_init.weights)) if cfg.keypoint_init.weights
                                   else "embedded:" + _sha256_file(data / "keypoint_initializer.npz"))
    out["body_model"] = _sha256_file(Path(cfg.body_model.path)) if cfg.body_model.path else "embedded:generated"
    return out


# {input key: {"fit": path, "filter": path}} (relative to OUT): every fitted frame, kept or not.
FITS_FILE = "fits.json"
# What travels inline from the last stage to the driver (the fragment and its index rows stay stored).
_SUMMARY = {"samples": ("input_row",)}


def _fits_index(rows: list[dict[str, Any]]) -> bytes:
    """``fits.json``: where each fitted input's fit and filter results are stored."""
    index = {}
    for row in rows:
        keys = row.get(KEYS_COLUMN) or {}
        work = row.get(WORK_COLUMN) or {}
        if row.get("status") != STATUS_FAILED and "filter" in work:
            index[row["key"]] = {stage: f"{RESULTS_DIR}/{stage}/{keys[stage][:2]}/{keys[stage]}.npz"
                                 for stage in ("fit", "filter")}
    return (json.dumps(index, sort_keys=True, indent=1) + "\n").encode()


def _input_row(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("status") == STATUS_FAILED or row.get("input_row") is None:
        label = row.get("label")
        return failed_input_row(str(row["key"]), str(row.get("reason") or "failed"),
                                frames_in=int(row.get("num_frames") or 0), label=None if label is None else str(label))
    return dict(row["input_row"])


# Modules whose code shapes a version beyond the stage results (planning, packing, writing).
_WRITER_MODULES = ("labelmill.pipelines.pose3d",)


def config_digest(cfg: Any) -> str:
    """What makes two runs write the same version from the same stage results: the config without
    its ``engine`` section (where the work runs changes no byte) and the writer's code."""
    return digest("pose3d-version", dump_yaml(dataclasses.replace(cfg, engine=EngineConfig())),
                  code_fingerprint(_WRITER_MODULES))


def run_pose3d(cfg: Any, *, input_url: str, output_url: str, engine_name: str | None = None,
               full: bool = False, allow_empty: bool = False) -> Pose3dRun:
    """Run pose3d on ``input_url`` (a corpus: Kinetics CSV/dir, directory, file, manifest) into ``output_url``.

    Every stage result is stored under ``OUT/results`` by the worker that computes it and reused
    by later runs (resume after a crash, incremental regeneration); ``full`` recomputes all.
    Shards are packed by engine tasks into ``OUT/objects/shards``, shared by versions.
    When LATEST already holds what this run would write (same inputs, same stage keys, same
    config apart from the engine), nothing runs and LATEST is returned with ``up_to_date``
    (:func:`~labelmill.infra.versioned_run.run_versioned`; ``allow_empty``: move LATEST even
    when no input was written). Before anything runs, the output must take a write, the model
    files the config names must exist and the corpus must hold an input
    (:class:`~labelmill.infra.preflight.PreflightError` otherwise).
    """
    if engine_name is not None:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, name=engine_name))
    check_output(output_url)
    check_model_file(cfg.body_model.path, "body_model.path")
    check_model_file(cfg.prior.path, "prior.path")
    check_model_file(cfg.keypoint_init.weights, "keypoint_init.weights")
    items = read_corpus(input_url).to_pylist()
    check_inputs(items, input_url, "videos")
    log.info("pose3d: %d inputs from %s, engine %s", len(items), input_url, cfg.engine.name)
    spec = VersionedRunSpec(
        name="pose3d", schema="pose3d", shard_config=cfg.shards,
        config_yaml=dump_yaml(cfg) + "\n# fingerprints\n" + "".join(
            f"# {k}: {v}\n" for k, v in sorted(fingerprints(cfg).items())),
        config_digest=config_digest(cfg), input_row=_input_row, inline=_SUMMARY,
        extra_files=lambda rows: {FITS_FILE: _fits_index(rows)} if cfg.write_fits else {})
    run = run_versioned(spec, build_pose3d_pipeline(cfg, input_url), items, output_url=output_url,
                        engine_cfg=cfg.engine, full=full, allow_empty=allow_empty)
    if not run.up_to_date:
        log.info("pose3d: frames %s", run.stats["frames"])
    return run
