"""The pose3d pipeline: corpus -> decode -> keypoints -> track -> init -> bundle adjustment -> shards.

The DAG is a plain list of engine-free operators (:class:`~labelmill.infra.pipeline.Pipeline`);
``run_pose3d`` hands it to an engine (local, Ray Data or Beam: a flag) and writes what comes out
as a dataset version (DESIGN.md §2): WebDataset shards of kept frames, ``index.parquet``,
``inputs.parquet`` (every input written / filtered / failed with a reason), ``stats.json`` (the
funnel and per-stage throughput), ``config.yaml`` (resolved config + code and model
fingerprints), ``fits/<input>.npz`` (every fitted frame, kept or not: for evaluation and
analysis; ``write_fits``), ``_SUCCESS``, then ``OUT/LATEST``.

Every stage passes failed items through, so every input reaches the writer and ends in exactly
one status. The writer sorts samples by key, so shards are byte-identical on every engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelmill.infra import storage
from labelmill.infra.config import dump_yaml
from labelmill.infra.corpus import read_corpus
from labelmill.infra.dataset_version import DatasetVersionWriter, read_stats
from labelmill.infra.engines import get_engine
from labelmill.infra.pipeline import Pipeline, Stage, batch_to_rows
from labelmill.operators.pose3d.bundle_adjust import BundleAdjust
from labelmill.operators.common.decode import DecodeVideo
from labelmill.operators.pose3d.keypoint_init import KeypointInit
from labelmill.operators.pose3d.keypoints_backend import build_keypoints_operator
from labelmill.operators.pose3d.samples import video_samples
from labelmill.infra.formats.shards import encode_npz, member_key
from labelmill.operators.pose3d.tracking import TrackPersonOfInterest

log = logging.getLogger(__name__)

__all__ = ["Pose3dRun", "build_pose3d_pipeline", "run_pose3d", "fingerprints"]


@dataclass
class Pose3dRun:
    """What a run wrote: where, and its funnel."""

    version_url: str
    version_id: str
    stats: dict[str, Any] = field(default_factory=dict)


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
    """The pose3d stages for a resolved :class:`~labelmill.pipelines.config.Pose3dConfig`."""
    return Pipeline(
        name="pose3d",
        stages=[
            Stage.of("decode", DecodeVideo.from_config(cfg.decode)),
            Stage.of("keypoints", build_keypoints_operator(_keypoints_config(cfg, input_url))),
            Stage.of("track", TrackPersonOfInterest(tracking=cfg.tracking)),
            Stage.of("init", KeypointInit.from_config(cfg.keypoint_init)),
            Stage.of("fit", BundleAdjust(body_model=cfg.body_model, prior=cfg.prior, fit=cfg.fit, filter=cfg.filter)),
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


FITS_DIR = "fits"


def _fit_arrays(row: dict[str, Any]) -> bytes:
    """Every fitted frame of one input, kept or not (``fits/<input>.npz``; float32, no pickle)."""
    return encode_npz({
        "joints3d": np.asarray(row["joints3d"]),  # (F, 24, 3) metres
        "keypoints3d": np.asarray(row["keypoints3d"]),  # (F, 17, 3)
        "keypoints3d_init": np.asarray(row["keypoints3d_init"]),  # (F, 17, 3)
        "frame_loss": np.asarray(row["frame_loss"]),  # (F,), NaN where not measurable
        "keep_frame": np.asarray(row["keep_frame"], dtype=np.float32),  # (F,) 1 kept, 0 dropped
    })


def run_pose3d(cfg: Any, *, input_url: str, output_url: str, engine_name: str | None = None) -> Pose3dRun:
    """Run pose3d on ``input_url`` (a corpus: Kinetics CSV/dir, directory, file, manifest) into ``output_url``."""
    t0 = time.perf_counter()
    if engine_name is not None:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, name=engine_name))
    engine_cfg = cfg.engine
    pipeline = build_pose3d_pipeline(cfg, input_url)
    items = read_corpus(input_url).to_pylist()
    log.info("pose3d: %d inputs from %s, engine %s", len(items), input_url, engine_cfg.name)
    engine = get_engine(engine_cfg.name, engine_cfg)

    config_text = dump_yaml(cfg) + "\n# fingerprints\n" + "".join(
        f"# {k}: {v}\n" for k, v in sorted(fingerprints(cfg).items()))
    writer = DatasetVersionWriter(output_url, shard_config=cfg.shards, config_yaml=config_text)
    with writer:
        for batch in engine.run(pipeline, items):
            for row in batch_to_rows(batch):
                result = video_samples(row, config=cfg.samples)
                writer.add_samples(result.samples)
                writer.record_inputs([result.input_row])
                if cfg.write_fits and row.get("status") != "failed" and row.get("joints3d") is not None:
                    writer.write_file(f"{FITS_DIR}/{member_key(str(row['key']))}.npz", _fit_arrays(row))
        run_stats = engine.stats.as_dict() if engine.stats is not None else {}
        stages = {s["name"]: {"items": s["items"], "seconds": s["seconds"]} for s in run_stats.get("stages", [])}
        version_id = writer.commit(
            stats={"stages": stages, "engine": engine_cfg.name, "wall_seconds": round(time.perf_counter() - t0, 3)})
    version_url = storage.join(output_url, "versions", version_id)
    stats = read_stats(version_url)
    log.info("pose3d: wrote %s (inputs %s; frames %s)", version_url, stats["inputs"], stats["frames"])
    return Pose3dRun(version_url=version_url, version_id=version_id, stats=stats)
