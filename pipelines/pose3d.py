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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelmill.infra import storage
from labelmill.infra.config import ConfigError, dump_yaml
from labelmill.infra.corpus import read_corpus
from labelmill.infra.dataset_version import DatasetVersionWriter, read_latest, read_stats, version_url
from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.engines import get_engine
from labelmill.infra.formats.items import STATUS_FAILED
from labelmill.infra.leases import run_lease
from labelmill.infra.packing import (
    INDEX_EXTENSION,
    SHARD_OBJECTS,
    Fragment,
    PackShards,
    ShardSpec,
    plan_shards,
    read_sidecar,
    shard_object_url,
    stored_shard_names,
)
from labelmill.infra.results import RESULTS_DIR, code_fingerprint, digest
from labelmill.infra.persisted_stage import KEYS_COLUMN, WORK_COLUMN, chain_keys, persist_pipeline
from labelmill.infra.version_results import RESULTS_FILE, chains_match, read_result_keys, results_table_bytes
from labelmill.infra.pipeline import Pipeline, Stage, batch_to_rows
from labelmill.operators.pose3d.bundle_adjust import BundleAdjust
from labelmill.operators.common.decode import DecodeVideo
from labelmill.operators.pose3d.keypoint_init import KeypointInit
from labelmill.operators.pose3d.keypoints_backend import build_keypoints_operator
from labelmill.operators.pose3d.loss_filter import LossFilter
from labelmill.operators.pose3d.samples import BuildSamples, failed_input_row
from labelmill.operators.pose3d.tracking import TrackPersonOfInterest

log = logging.getLogger(__name__)

__all__ = ["Pose3dRun", "build_pose3d_pipeline", "run_pose3d", "fingerprints"]


@dataclass
class Pose3dRun:
    """What a run wrote: where, and its funnel. ``up_to_date``: nothing to do, LATEST is returned."""

    version_url: str
    version_id: str
    stats: dict[str, Any] = field(default_factory=dict)
    up_to_date: bool = False


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
    package_root = Path(__file__).resolve().parent.parent
    code = hashlib.sha256()
    for folder in ("pipelines", "operators", "models", "infra"):
        for path in sorted((package_root / folder).rglob("*.py")):
            code.update(str(path.relative_to(package_root)).encode())
            code.update(path.read_bytes())
    data = package_root / "models" / "data"
    out = {"code": code.hexdigest()[:16]}
    out["prior"] = _sha256_file(Path(cfg.prior.path)) if cfg.prior.path else "embedded:" + _sha256_file(
        data / "gmm_prior_default.npz")
    out["keypoint_initializer"] = (_sha256_file(Path(cfg.keypoint_init.weights)) if cfg.keypoint_init.weights
                                   else "embedded:" + _sha256_file(data / "keypoint_initializer.npz"))
    out["body_model"] = _sha256_file(Path(cfg.body_model.path)) if cfg.body_model.path else "embedded:generated"
    return out


PACK_STAGE = "pack"  # the packing run's one stage (placement: engine.stages.pack)
# {input key: {"fit": path, "filter": path}} (relative to OUT): every fitted frame, kept or not.
FITS_FILE = "fits.json"
# What travels inline from the last stage to the driver; the fragment is stored as a file.
_SUMMARY = {"samples": ("input_row",)}  # the index rows stay stored: the pack tasks read them
_FILES = {"samples": {"fragment_tar": "tar"}}


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


def _work_counts(rows: list[dict[str, Any]], stage_names: list[str]) -> dict[str, dict[str, int]]:
    """Per stage: items computed and reused in this run."""
    counts = {name: {"computed": 0, "reused": 0} for name in stage_names}
    for row in rows:
        for name, what in (row.get(WORK_COLUMN) or {}).items():
            if name in counts:
                counts[name][what] += 1
    return counts


def _input_row(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("status") == STATUS_FAILED or row.get("input_row") is None:
        label = row.get("label")
        return failed_input_row(str(row["key"]), str(row.get("reason") or "failed"),
                                frames_in=int(row.get("num_frames") or 0), label=None if label is None else str(label))
    return dict(row["input_row"])


def _pack(engine: Any, out_url: str, shards: list[ShardSpec],
          present: set[str]) -> tuple[dict[str, dict[str, Any]], float, int]:
    """Pack the shards not in the store yet, as engine tasks; (sidecars of those packed, seconds,
    bytes the driver received)."""
    missing = [s for s in shards if s.name not in present]
    sidecars, seconds, received = {}, 0.0, 0
    if missing:
        items = [{"key": s.name, "fragments": [[f.url, f.member_bytes, f.samples, f.key] for f in s.fragments]}
                 for s in missing]
        pack = Pipeline(name="pack", stages=[Stage.of(PACK_STAGE, PackShards(out_url=out_url))])
        for batch in engine.run(pack, items):
            for row in batch_to_rows(batch):
                if row.get("status") == STATUS_FAILED:
                    raise RuntimeError(f"pose3d: {row.get('reason')}")
                sidecars[row["key"]] = json.loads(row["sidecar"])
        if engine.stats is not None:
            seconds, received = engine.stats.stages[0].seconds, engine.stats.bytes_out
    return sidecars, seconds, received


# Modules whose code shapes a version beyond the stage results (planning, packing, writing).
_WRITER_MODULES = ("labelmill.pipelines.pose3d",)


def config_digest(cfg: Any) -> str:
    """What makes two runs write the same version from the same stage results: the config without
    its ``engine`` section (where the work runs changes no byte) and the writer's code."""
    return digest("pose3d-version", dump_yaml(dataclasses.replace(cfg, engine=EngineConfig())),
                  code_fingerprint(_WRITER_MODULES))


def _planned_chains(pipeline: Pipeline, items: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Every input's chain of stage keys, computed on the driver (empty: failed before a key)."""
    def chain(item: dict[str, Any]) -> dict[str, str]:
        if item.get("status") == STATUS_FAILED:
            return {}
        try:
            return chain_keys(pipeline, item)
        except Exception:  # noqa: BLE001 - the engine fails this item with its reason
            return {}

    with ThreadPoolExecutor(max_workers=16) as pool:  # fingerprints may stat remote files
        return dict(zip((str(i["key"]) for i in items), pool.map(chain, items)))


def _up_to_date(output_url: str, pipeline: Pipeline, items: list[dict[str, Any]], digest_now: str,
                stage_names: list[str]) -> str | None:
    """LATEST's id when it holds exactly what this run would write, else None."""
    latest = read_latest(output_url)
    if latest is None:
        return None
    url = version_url(output_url, latest)
    if read_stats(url).get("config_digest") != digest_now:
        return None
    recorded = read_result_keys(url)
    if recorded is None:
        return None
    planned = _planned_chains(pipeline, items)
    return latest if chains_match(recorded, planned, stage_names, STATUS_FAILED) else None


def _engines(engine_cfg: EngineConfig, stage_names: list[str]) -> tuple[Any, Any]:
    """The engine of the pose3d stages and the one of the packing run (``engine.stages.pack``)."""
    unknown = sorted(set(engine_cfg.stages) - set(stage_names) - {PACK_STAGE})
    if unknown:
        raise ConfigError(f"unknown stage name(s) in 'engine.stages': {', '.join(map(repr, unknown))}; "
                          f"pose3d has stages: {', '.join([*stage_names, PACK_STAGE])}")
    def only(names: set[str]) -> EngineConfig:
        return dataclasses.replace(engine_cfg, stages={k: v for k, v in engine_cfg.stages.items() if k in names})

    return (get_engine(engine_cfg.name, only(set(stage_names))),
            get_engine(engine_cfg.name, only({PACK_STAGE})))


def run_pose3d(cfg: Any, *, input_url: str, output_url: str, engine_name: str | None = None,
               full: bool = False) -> Pose3dRun:
    """Run pose3d on ``input_url`` (a corpus: Kinetics CSV/dir, directory, file, manifest) into ``output_url``.

    Every stage result is stored under ``OUT/results`` by the worker that computes it and reused
    by later runs (resume after a crash, incremental regeneration); ``full`` recomputes all.
    Shards are packed by engine tasks into ``OUT/objects/shards``, shared by versions.
    When LATEST already holds what this run would write (same inputs, same stage keys, same
    config apart from the engine), nothing runs and LATEST is returned with ``up_to_date``.
    """
    t0 = time.perf_counter()
    if engine_name is not None:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, name=engine_name))
    engine_cfg = cfg.engine
    items = read_corpus(input_url).to_pylist()
    log.info("pose3d: %d inputs from %s, engine %s", len(items), input_url, engine_cfg.name)
    base = build_pose3d_pipeline(cfg, input_url)
    stage_names = [s.name for s in base.stages]
    pipeline = persist_pipeline(base, out_url=output_url, input_columns=list(items[0]) if items else [],
                                recompute=full, inline=_SUMMARY, files=_FILES)
    engine, pack_engine = _engines(engine_cfg, stage_names)
    digest_now = config_digest(cfg)
    if not full:
        latest = _up_to_date(output_url, pipeline, items, digest_now, stage_names)
        if latest is not None:
            url = version_url(output_url, latest)
            log.info("pose3d: up to date: %s already holds these %d inputs with this config", url, len(items))
            return Pose3dRun(version_url=url, version_id=latest, stats=read_stats(url), up_to_date=True)

    # A run lease tells `labelmill gc` that results it may reuse or is writing are in use
    # (infra/leases.py); it waits while a gc is deleting.
    with run_lease(output_url):
        config_text = dump_yaml(cfg) + "\n# fingerprints\n" + "".join(
            f"# {k}: {v}\n" for k, v in sorted(fingerprints(cfg).items()))
        rows: list[dict[str, Any]] = []
        for batch in engine.run(pipeline, items):
            rows.extend(batch_to_rows(batch))
        rows.sort(key=lambda r: r["key"])
        run_stats = engine.stats.as_dict() if engine.stats is not None else {}
        fragments = []
        for row in rows:
            if row.get("status") != STATUS_FAILED and row.get("num_samples"):
                key = row[KEYS_COLUMN]["samples"]
                fragments.append(Fragment(input_key=row["key"], key=key, url=row["fragment_tar_url"],
                                          member_bytes=int(row["fragment_member_bytes"]), samples=int(row["num_samples"])))
        shards = plan_shards(fragments, cfg.shards)
        packed, pack_seconds, pack_bytes = _pack(pack_engine, output_url, shards, stored_shard_names(output_url))
        work = _work_counts(rows, stage_names)
        work[PACK_STAGE] = {"computed": len(packed), "reused": len(shards) - len(packed)}
        stages = {s["name"]: {"items": s["items"], "seconds": s["seconds"], **work.get(s["name"], {})}
                  for s in run_stats.get("stages", [])}
        stages[PACK_STAGE] = {"items": len(packed), "seconds": pack_seconds, **work[PACK_STAGE]}
        writer = DatasetVersionWriter(output_url, shard_config=cfg.shards, config_yaml=config_text)
        with writer:
            for spec in shards:
                sidecar = packed.get(spec.name) or read_sidecar(output_url, spec.name)
                writer.add_shared_shard(spec.name, f"{SHARD_OBJECTS}/{spec.name}.tar", sidecar,
                                        index_url=shard_object_url(output_url, spec.name, INDEX_EXTENSION))
            writer.record_inputs([_input_row(row) for row in rows])
            if cfg.write_fits:
                writer.write_file(FITS_FILE, _fits_index(rows))
            writer.write_file(RESULTS_FILE, results_table_bytes(
                ({"input_key": r["key"], "status": r.get("status"), "keys": r.get(KEYS_COLUMN)} for r in rows), stage_names))
            version_id = writer.commit(
                stats={"stages": stages, "engine": engine_cfg.name, "config_digest": digest_now,
                       "driver_bytes": int(run_stats.get("bytes_out", 0)) + pack_bytes,
                       "wall_seconds": round(time.perf_counter() - t0, 3)})
    url = version_url(output_url, version_id)
    stats = read_stats(url)
    log.info("pose3d: wrote %s (inputs %s; frames %s)", url, stats["inputs"], stats["frames"])
    return Pose3dRun(version_url=url, version_id=version_id, stats=stats)
