"""Run a pipeline whose stage results persist, pack its shards, commit a dataset version.

What every labelled-dataset pipeline (pose3d, segmentation) does around its own stages
(docs/architecture.md):

1. wrap the stages so that each result is stored by the worker that computes it and reused
   (:func:`~labelmill.infra.persisted_stage.persist_pipeline`);
2. unless ``full``: compute every input's chain of stage keys on the driver and stop when LATEST
   already holds the same chains with the same ``config_digest`` ("up to date");
3. under a run lease (:mod:`labelmill.infra.leases`): run the engine, plan shards from the
   per-input fragments the last stage stored, pack the missing ones as engine tasks
   (:class:`~labelmill.infra.packing.PackShards`), and commit a version listing them, with
   ``inputs.parquet``, ``results.parquet``, the pipeline's extra files and ``stats.json``
   (computed/reused per stage, the bytes the driver received).

The pipeline says what is its own through a :class:`VersionedRunSpec`: its schema, which stage
writes the fragments, what travels inline, how an output row becomes an ``inputs.parquet`` row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

from labelmill.infra.config import ConfigError
from labelmill.infra.dataset_version import DatasetVersionWriter, read_latest, read_stats, version_url
from labelmill.infra.engines import get_engine
from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.formats.items import STATUS_FAILED, STATUS_WRITTEN
from labelmill.infra.formats.shards import ShardConfig
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
from labelmill.infra.persisted_stage import KEYS_COLUMN, WORK_COLUMN, chain_keys, persist_pipeline
from labelmill.infra.pipeline import Pipeline, Stage, batch_to_rows
from labelmill.infra.version_results import RESULTS_FILE, chains_match, read_result_keys, results_table_bytes

log = logging.getLogger(__name__)

__all__ = ["PACK_STAGE", "VersionedRunSpec", "VersionedRun", "run_versioned"]

PACK_STAGE = "pack"  # the packing run's one stage (placement: engine.stages.pack)


@dataclasses.dataclass(frozen=True)
class VersionedRunSpec:
    """What a pipeline tells :func:`run_versioned` about itself.

    ``samples_stage`` stores each input's tar fragment as the file column ``fragment_tar`` with
    the scalars ``fragment_member_bytes``, ``num_samples`` and the column ``index_rows`` (the
    fragment's index rows, read by the pack tasks). ``inline``: per stage, columns that travel to
    the driver whatever their size (``input_row`` of the samples stage, for ``input_row``).
    ``input_row(row)``: the ``inputs.parquet`` row of a final output row (failed ones too).
    ``extra_files(rows)``: further version files, ``{name: bytes}``. ``config_digest``: what,
    besides the stage keys, makes two runs write the same version (the config without its engine
    section, the pipeline's writer code). ``config_yaml``: the version's ``config.yaml``.
    """

    name: str
    schema: str
    shard_config: ShardConfig
    config_yaml: str
    config_digest: str
    input_row: Callable[[dict[str, Any]], dict[str, Any]]
    samples_stage: str = "samples"
    inline: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    extra_files: Callable[[list[dict[str, Any]]], Mapping[str, bytes]] = lambda rows: {}


@dataclasses.dataclass
class VersionedRun:
    """What a run wrote (or, ``up_to_date``, found already written): where, and its stats."""

    version_url: str
    version_id: str
    stats: dict[str, Any]
    up_to_date: bool = False
    latest_moved: bool = True  # False: nothing was written, so LATEST still names the previous version


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


def _engines(engine_cfg: EngineConfig, pipeline_name: str, stage_names: list[str]) -> tuple[Any, Any]:
    """The engine of the pipeline's stages and the one of the packing run (``engine.stages.pack``)."""
    unknown = sorted(set(engine_cfg.stages) - set(stage_names) - {PACK_STAGE})
    if unknown:
        raise ConfigError(f"unknown stage name(s) in 'engine.stages': {', '.join(map(repr, unknown))}; "
                          f"{pipeline_name} has stages: {', '.join([*stage_names, PACK_STAGE])}")

    def only(names: set[str]) -> EngineConfig:
        return dataclasses.replace(engine_cfg, stages={k: v for k, v in engine_cfg.stages.items() if k in names})

    return (get_engine(engine_cfg.name, only(set(stage_names))),
            get_engine(engine_cfg.name, only({PACK_STAGE})))


def _work_counts(rows: list[dict[str, Any]], stage_names: list[str]) -> dict[str, dict[str, int]]:
    """Per stage: items computed and reused in this run."""
    counts = {name: {"computed": 0, "reused": 0} for name in stage_names}
    for row in rows:
        for name, what in (row.get(WORK_COLUMN) or {}).items():
            if name in counts:
                counts[name][what] += 1
    return counts


_MAX_REASONS = 5  # failure reasons per stage kept in stats.json (the most frequent)
_REASON_CHARS = 200


def _stage_failures(rows: list[dict[str, Any]], stage_names: list[str]) -> dict[str, dict[str, Any]]:
    """Per stage: items that failed there and their most frequent reasons.

    An item fails in the last stage that has a key for it (a stage keys an item, then its
    operator fails it, and later stages skip it); an item the corpus reader failed has none.
    """
    failed: dict[str, Counter] = {name: Counter() for name in stage_names}
    for row in rows:
        keys = row.get(KEYS_COLUMN) or {}
        if row.get("status") == STATUS_FAILED and keys:
            stage = list(keys)[-1]
            if stage in failed:
                failed[stage][str(row.get("reason") or "failed")[:_REASON_CHARS]] += 1
    return {name: {"failed": sum(c.values()), "failed_reasons": dict(c.most_common(_MAX_REASONS))}
            for name, c in failed.items()}


def _log_stage_summaries(name: str, stages: dict[str, dict[str, Any]]) -> None:
    """One line per stage: items, time, rate, computed / reused, failures (the most frequent reason)."""
    for stage, s in stages.items():
        seconds = float(s.get("seconds") or 0.0)
        rate = s["items"] / seconds if seconds > 0 else 0.0
        line = (f"{name}: stage {stage}: {s['items']} items in {seconds:.1f} s ({rate:.1f} items/s), "
                f"computed {s.get('computed', 0)}, reused {s.get('reused', 0)}")
        if s.get("failed"):
            reason, count = next(iter(s["failed_reasons"].items()))
            line += f", failed {s['failed']} (most: {count} x {reason})"
        log.info("%s", line)


def _fragments(rows: list[dict[str, Any]], samples_stage: str) -> list[Fragment]:
    """The stored tar fragments of the inputs that wrote samples."""
    return [Fragment(input_key=row["key"], key=row[KEYS_COLUMN][samples_stage], url=row["fragment_tar_url"],
                     member_bytes=int(row["fragment_member_bytes"]), samples=int(row["num_samples"]))
            for row in rows if row.get("status") != STATUS_FAILED and row.get("num_samples")]


def _pack(engine: Any, spec: VersionedRunSpec, out_url: str, shards: list[ShardSpec],
          present: set[str]) -> tuple[dict[str, dict[str, Any]], float, int]:
    """Pack the shards not in the store yet, as engine tasks; (sidecars of those packed, seconds,
    bytes the driver received)."""
    missing = [s for s in shards if s.name not in present]
    sidecars, seconds, received = {}, 0.0, 0
    if missing:
        items = [{"key": s.name, "fragments": [[f.url, f.member_bytes, f.samples, f.key] for f in s.fragments]}
                 for s in missing]
        packer = PackShards(out_url=out_url, index_stage=spec.samples_stage, schema=spec.schema)
        pack = Pipeline(name=PACK_STAGE, stages=[Stage.of(PACK_STAGE, packer)])
        for batch in engine.run(pack, items):
            for row in batch_to_rows(batch):
                if row.get("status") == STATUS_FAILED:
                    raise RuntimeError(f"{spec.name}: {row.get('reason')}")
                sidecars[row["key"]] = json.loads(row["sidecar"])
        if engine.stats is not None:
            seconds, received = engine.stats.stages[0].seconds, engine.stats.bytes_out
    return sidecars, seconds, received


def run_versioned(spec: VersionedRunSpec, base: Pipeline, items: list[dict[str, Any]], *, output_url: str,
                  engine_cfg: EngineConfig, full: bool = False, allow_empty: bool = False) -> VersionedRun:
    """Run ``base`` over ``items`` into ``output_url`` and commit a version (module docstring).

    A run in which no input was written (every one failed or was filtered) still commits its
    version, so the accounting of every input is kept, but does not move LATEST: readers keep
    the last version that has data (``latest_moved`` False), unless ``allow_empty``.
    """
    t0 = time.perf_counter()
    stage_names = [s.name for s in base.stages]
    files = {spec.samples_stage: {"fragment_tar": "tar"}}
    pipeline = persist_pipeline(base, out_url=output_url, input_columns=list(items[0]) if items else [],
                                recompute=full, inline=spec.inline, files=files)
    engine, pack_engine = _engines(engine_cfg, spec.name, stage_names)
    if not full:
        latest = _up_to_date(output_url, pipeline, items, spec.config_digest, stage_names)
        if latest is not None:
            url = version_url(output_url, latest)
            log.info("%s: up to date: %s already holds these %d inputs with this config", spec.name, url, len(items))
            return VersionedRun(version_url=url, version_id=latest, stats=read_stats(url), up_to_date=True)

    # A run lease tells `labelmill gc` that results it may reuse or is writing are in use
    # (infra/leases.py); it waits while a gc is deleting.
    with run_lease(output_url):
        rows: list[dict[str, Any]] = []
        for batch in engine.run(pipeline, items):
            rows.extend(batch_to_rows(batch))
        rows.sort(key=lambda r: r["key"])
        run_stats = engine.stats.as_dict() if engine.stats is not None else {}
        shards = plan_shards(_fragments(rows, spec.samples_stage), spec.shard_config)
        packed, pack_seconds, pack_bytes = _pack(pack_engine, spec, output_url, shards, stored_shard_names(output_url))
        work = _work_counts(rows, stage_names)
        work[PACK_STAGE] = {"computed": len(packed), "reused": len(shards) - len(packed)}
        failures = _stage_failures(rows, stage_names)
        stages = {s["name"]: {"items": s["items"], "seconds": s["seconds"], **work.get(s["name"], {}),
                              **failures.get(s["name"], {})}
                  for s in run_stats.get("stages", [])}
        stages[PACK_STAGE] = {"items": len(packed), "seconds": pack_seconds, **work[PACK_STAGE]}
        _log_stage_summaries(spec.name, stages)
        input_rows = [spec.input_row(row) for row in rows]
        move_latest = allow_empty or any(r.get("status") == STATUS_WRITTEN for r in input_rows)
        with DatasetVersionWriter(output_url, shard_config=spec.shard_config, config_yaml=spec.config_yaml,
                                  schema=spec.schema, set_latest=move_latest) as writer:
            for shard in shards:
                sidecar = packed.get(shard.name) or read_sidecar(output_url, shard.name)
                writer.add_shared_shard(shard.name, f"{SHARD_OBJECTS}/{shard.name}.tar", sidecar,
                                        index_url=shard_object_url(output_url, shard.name, INDEX_EXTENSION))
            writer.record_inputs(input_rows)
            for name, data in spec.extra_files(rows).items():
                writer.write_file(name, data)
            writer.write_file(RESULTS_FILE, results_table_bytes(
                ({"input_key": r["key"], "status": r.get("status"), "keys": r.get(KEYS_COLUMN)} for r in rows),
                stage_names))
            version_id = writer.commit(
                stats={"stages": stages, "engine": engine_cfg.name, "config_digest": spec.config_digest,
                       "driver_bytes": int(run_stats.get("bytes_out", 0)) + pack_bytes,
                       "wall_seconds": round(time.perf_counter() - t0, 3)})
    url = version_url(output_url, version_id)
    stats = read_stats(url)
    log.info("%s: wrote %s (inputs %s)", spec.name, url, stats["inputs"])
    if not move_latest:
        log.warning("%s: no input of %d was written; %s is committed for its accounting but LATEST was not moved",
                    spec.name, len(rows), url)
    return VersionedRun(version_url=url, version_id=version_id, stats=stats, latest_moved=move_latest)
