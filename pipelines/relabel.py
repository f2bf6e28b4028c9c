"""Iterative relabelling: train a segmentation net on a version's labels, relabel, commit, repeat.

``labelmill run relabel --dataset URL --rounds K`` (docs/segmentation.md, "Relabelling"). Round
r (1..K) reads every sample of the current version (round 0: the one ``--dataset`` names, an
output root through LATEST or a version directory) and

1. **trains** a :class:`~labelmill.models.segnet.SegNet` on the samples' images and ``sem.png``
   labels (ignore excluded from the loss), on the driver (one process; cuda when present). The
   weights go to ``OUT/models/relabel/<sha256>.pt``; a record
   ``OUT/models/relabel/trained/<train key>.json`` (key: the source version's shard contents,
   ``model.*``, ``seed``, the code) lets a rerun reuse them instead of training again;
2. **relabels** every sample on the versioned machinery (:func:`~labelmill.infra.versioned_run.run_versioned`):
   work items reference the source samples (``uri`` = the shard, the jpg member's offset and
   size, ``fingerprint`` = sha256 of the sample's members, the boxes), stages ``relabel``
   (:class:`~labelmill.operators.segmentation.relabel.RelabelImages`, the model's sha256 in its
   key) and ``samples`` (:func:`~labelmill.operators.segmentation.relabel.relabel_samples`), so
   results are stored per item and reused, and a version of schema ``segmentation`` is committed
   with its ``inputs.parquet`` (one row per source sample) and ``relabel.json`` (round, source,
   model, losses, classes);
3. with ``gt`` (COCO instances JSON), **evaluates** the new version
   (:func:`~labelmill.pipelines.segmentation_eval.evaluate_segmentation`; the thing classes of
   round 0's report for every round) and records mIoU, PQ and the labelled fractions.

A record ``OUT/models/relabel/rounds/<round key>.json`` (key: the source's shard contents and
the whole config but the engine, the code) names the version a round committed: rerunning the
same rounds on the same input finds every round there (``up_to_date``) and writes nothing.

Boxes: the thing boxes of a sample are its json's ``boxes`` (the segmentation pipeline and every
relabel round write them, in stored-image pixels); for a sample without them (a version written
before they were recorded), the thing segments' own bboxes, which keeps a thing inside its
round-0 extent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np

from labelmill.infra import storage
from labelmill.infra.config import ConfigError, dump_yaml
from labelmill.infra.dataset_version import (
    SUCCESS,
    iter_shard_samples,
    read_inputs,
    read_manifest,
    read_stats,
    resolve_version,
    shard_urls,
    version_url,
)
from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.formats.items import STATUS_FAILED, STATUS_PENDING
from labelmill.infra.formats.shards import ShardConfig
from labelmill.infra.pipeline import Pipeline, Stage
from labelmill.infra.results import code_fingerprint, digest, package_code_hash
from labelmill.infra.versioned_run import VersionedRunSpec, run_versioned
from labelmill.models.model_files import write_model_bytes
from labelmill.models.segnet import SegNetConfig, train_segnet
from labelmill.operators.segmentation.images import decode_image_bytes
from labelmill.operators.segmentation.relabel import RelabelImages, relabel_samples
from labelmill.operators.segmentation.samples import SegmentationFilterConfig, input_row_function
from labelmill.operators.segmentation.things import decode_png

log = logging.getLogger(__name__)

__all__ = ["RelabelConfig", "RelabelRound", "run_relabel", "read_source_samples", "relabel_items", "MODELS_DIR"]

MODELS_DIR = "models/relabel"
RELABEL_FILE = "relabel.json"
STAGES = ("relabel", "samples")
_SUMMARY = {"samples": ("input_row",)}
_CODE_MODULES = ("labelmill.pipelines.relabel", "labelmill.operators.segmentation.relabel", "labelmill.models.segnet")
_BOX_SOURCES = ("json", "segments")
# The training key holds the net's code (models/segnet.py and what it imports) and this number,
# bumped when the way training pairs are read from a version changes.
_TRAIN_DATA_FORMAT = 1


@dataclasses.dataclass
class RelabelConfig:
    """relabel: per round, train the net on the current labels -> relabel -> filter + samples -> shards."""

    seed: int = 0  # seeds the net's initialisation, shuffles and flips
    threshold: float = 0.9  # a pixel keeps the predicted class when its probability is >= this, else ignore
    thing_classes: list[int] | None = None  # class ids that are things; None: the categories of the boxes
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)  # local | ray | beam (relabel stage)
    model: SegNetConfig = dataclasses.field(default_factory=SegNetConfig)  # network, input side, training
    filter: SegmentationFilterConfig = dataclasses.field(default_factory=SegmentationFilterConfig)  # quality filter
    shards: ShardConfig = dataclasses.field(default_factory=ShardConfig)  # shard size and naming

    def __post_init__(self) -> None:
        value = self.threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"RelabelConfig.threshold must be a number in 0..1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"RelabelConfig.seed must be an integer >= 0, got {self.seed!r}")
        if self.thing_classes is not None:
            bad = [c for c in self.thing_classes if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 254]
            if bad:
                raise ValueError(f"RelabelConfig.thing_classes must be class ids in 1..254, got {bad[0]!r}")


@dataclasses.dataclass
class RelabelRound:
    """One round of :func:`run_relabel` (round 0: the input version, nothing computed)."""

    round: int
    version_id: str
    version_url: str
    source_url: str | None  # the version this round was trained on and relabelled (None: round 0)
    up_to_date: bool  # nothing computed: a stored record names the version this round wrote before
    model: str | None = None  # weight file URL
    model_reused: bool = False
    losses: list[float] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # the version's stats.json
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # samples, mean ignore fraction, ...
    metrics: dict[str, Any] | None = None  # evaluate_segmentation's report (with gt)
    thing_classes: list[int] | None = None  # the classes relabelled as things (boxes); others are stuff
    stuff_labelled: bool | None = None  # whether the labels hold stuff classes (the evaluation's stuff_labels)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- reading a version


@dataclasses.dataclass
class SourceSample:
    """One sample of the source version: where its jpg lies, its content hash, its decoded parts."""

    key: str
    shard_url: str
    jpg_offset: int
    jpg_size: int
    fingerprint: str
    doc: dict[str, Any]
    jpg: bytes
    sem_png: bytes


def _source_sample(key: str, shard_url: str, members: Mapping[str, tuple[int, bytes]]) -> SourceSample:
    missing = [e for e in ("jpg", "sem.png", "json") if e not in members]
    if missing:
        raise ValueError(f"{shard_url}: sample {key!r} lacks {', '.join(missing)}")
    content = hashlib.sha256()
    for extension in sorted(members):
        data = members[extension][1]
        content.update(f"{extension}:{len(data)}:".encode())
        content.update(data)
    try:
        doc = json.loads(members["json"][1])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{shard_url}: sample {key!r}: json is not valid JSON: {exc}") from None
    offset, jpg = members["jpg"]
    return SourceSample(key=key, shard_url=shard_url, jpg_offset=offset, jpg_size=len(jpg),
                        fingerprint=f"sha256:{content.hexdigest()}", doc=doc, jpg=jpg,
                        sem_png=members["sem.png"][1])


def read_source_samples(version: str) -> Iterator[SourceSample]:
    """Every sample of a version, shards streamed (``tarfile`` mode ``r|``), members grouped by key."""
    for url, key, members in iter_shard_samples(version):
        yield _source_sample(key, url, members)


def _source_identity(version: str) -> str:
    """What the version's samples are: its shards' sha256s (a version without a manifest: their bytes)."""
    manifest = read_manifest(version)
    if manifest is not None:
        return digest("shards", [[e["name"], e["sha256"], e["samples"]] for e in manifest])
    return digest("shard-bytes", [hashlib.sha256(storage.read_bytes(u)).hexdigest() for u in shard_urls(version)])


def _out_root(ref: Any) -> str:
    return ref.out_url if ref.out_url is not None else ref.url.rstrip("/").rsplit("/", 2)[0]


def sample_boxes(sample: SourceSample) -> tuple[dict[str, list], str]:
    """``({"boxes", "box_categories", "box_ids", "box_category_names"}, source)`` of a sample (module docstring)."""
    doc, key = sample.doc, sample.key
    if doc.get("boxes") is not None:
        entries = list(doc["boxes"])
        try:
            return {"boxes": [[float(v) for v in e["bbox"]] for e in entries],
                    "box_categories": [None if e.get("category_id") is None else int(e["category_id"]) for e in entries],
                    "box_ids": [None if e.get("annotation_id") is None else int(e["annotation_id"]) for e in entries],
                    "box_category_names": [e.get("category") for e in entries]}, "json"
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"sample {key!r}: json boxes are malformed: {exc!r}") from None
    # segments from boxes carry their annotation id; stuff segments (one per class) have none
    segments = [dict(s) for s in doc.get("segments") or [] if s.get("annotation_id") is not None]
    try:
        return {"boxes": [[float(v) for v in s["bbox"]] for s in segments],
                "box_categories": [int(s["category_id"]) for s in segments],
                "box_ids": [s.get("annotation_id") for s in segments],
                "box_category_names": [s.get("category") for s in segments]}, "segments"
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"sample {key!r}: json segments are malformed: {exc!r}") from None


def relabel_items(samples: Sequence[SourceSample], boxes: Mapping[str, Mapping[str, list]]) -> list[dict[str, Any]]:
    """The work items of a round: references to the source samples, their metadata and boxes."""
    items = []
    for s in samples:
        doc = s.doc
        items.append({
            "key": s.key, "uri": s.shard_url, "fingerprint": s.fingerprint,
            "jpg_offset": int(s.jpg_offset), "jpg_size": int(s.jpg_size),
            "image_id": doc.get("image_id"), "file_name": doc.get("file_name"),
            "tags": [str(t) for t in doc.get("tags") or []], "scale": float(doc.get("scale") or 1.0),
            **{k: list(v) for k, v in boxes[s.key].items()},
            "dropped": [], "status": STATUS_PENDING, "reason": None,
        })
    return items


# ----------------------------------------------------------------------------- one round


def _decode_training_pair(sample: SourceSample) -> tuple[np.ndarray, np.ndarray]:
    try:
        image = cv2.cvtColor(decode_image_bytes(sample.jpg), cv2.COLOR_BGR2RGB)
    except ValueError as exc:
        raise ValueError(f"sample {sample.key!r}: jpg: {exc}") from None
    try:
        sem = decode_png(sample.sem_png)
    except ValueError:
        sem = None
    if sem is None or sem.ndim != 2 or sem.dtype != np.uint8 or sem.shape != image.shape[:2]:
        raise ValueError(f"sample {sample.key!r}: sem.png is not a uint8 mask of the image's size {image.shape[:2]}")
    return image, sem


def _config_without_engine(cfg: RelabelConfig) -> str:
    return dump_yaml(dataclasses.replace(cfg, engine=EngineConfig()))


def _read_record(url: str) -> dict[str, Any] | None:
    if not storage.exists(url):
        return None
    try:
        return json.loads(storage.read_text(url))
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("relabel: ignoring the unreadable record %s", url)
        return None


def _train(cfg: RelabelConfig, out: str, samples: list[SourceSample], source_id: str,
           full: bool) -> tuple[str, str, list[float], list[int], bool]:
    """(model URL, its sha256, losses, classes, reused) of a round's net."""
    train_key = digest("relabel-train", source_id, dataclasses.asdict(cfg.model), cfg.seed, _TRAIN_DATA_FORMAT,
                       code_fingerprint(["labelmill.models.segnet"]))
    record_url = storage.safe_join(out, f"{MODELS_DIR}/trained/{train_key}.json")
    record = None if full else _read_record(record_url)
    if record is not None:
        model_url = storage.safe_join(out, f"{MODELS_DIR}/{record['sha256']}.pt")
        if storage.exists(model_url):
            return model_url, record["sha256"], list(record["losses"]), list(record["classes"]), True
    pairs = [_decode_training_pair(s) for s in samples]
    t0 = time.perf_counter()
    net, losses = train_segnet([p[0] for p in pairs], [p[1] for p in pairs], config=cfg.model, seed=cfg.seed)
    log.info("relabel: trained %s on %d images in %.1f s (loss %.4f -> %.4f)", cfg.model.encoder, len(pairs),
             time.perf_counter() - t0, losses[0], losses[-1])
    data = net.to_bytes()
    sha = hashlib.sha256(data).hexdigest()
    model_url = storage.safe_join(out, f"{MODELS_DIR}/{sha}.pt")
    if not storage.exists(model_url):
        write_model_bytes(model_url, data)
    storage.write_text(record_url, json.dumps({"sha256": sha, "losses": losses, "classes": list(net.classes),
                                               "train_key": train_key}, sort_keys=True))
    return model_url, sha, losses, list(net.classes), False


def _thing_classes(cfg: RelabelConfig, samples: list[SourceSample], boxes: Mapping[str, Mapping[str, list]]) -> list[int]:
    """``thing_classes`` when set, else the categories of the boxes and of the segments made from
    boxes (those with an annotation id); every other class is stuff (or background 0)."""
    if cfg.thing_classes is not None:
        return sorted(set(cfg.thing_classes))
    found: set[int] = set()
    for s in samples:
        found.update(int(c) for c in boxes[s.key]["box_categories"] if c is not None)
        found.update(int(seg["category_id"]) for seg in s.doc.get("segments") or []
                     if seg.get("category_id") is not None and seg.get("annotation_id") is not None)
    return sorted(found)


def _names(samples: list[SourceSample], boxes: Mapping[str, Mapping[str, list]]) -> dict[int, str]:
    names: dict[int, str] = {}
    for s in samples:
        b = boxes[s.key]
        for c, n in zip(b["box_categories"], b["box_category_names"]):
            if c is not None and n is not None:
                names.setdefault(int(c), str(n))
        for seg in s.doc.get("segments") or []:
            if seg.get("category_id") is not None and seg.get("category") is not None:
                names.setdefault(int(seg["category_id"]), str(seg["category"]))
    return names


def _summary(version: str) -> dict[str, Any]:
    """Samples, statuses and the mean ignore / labelled fractions of the written inputs."""
    rows = read_inputs(version).to_pylist()
    written = [r for r in rows if r["status"] == "written"]

    def mean(name: str) -> float | None:
        values = [r[name] for r in written if r.get(name) is not None]
        return float(np.mean(values)) if values else None

    return {"inputs": len(rows), "written": len(written),
            "filtered": sum(r["status"] == "filtered" for r in rows), "failed": sum(r["status"] == STATUS_FAILED for r in rows),
            "ignore_fraction": mean("ignore_fraction"), "labelled_fraction": mean("labelled_fraction")}


def _round_of(version: str) -> int:
    """The relabel round a version is (its relabel.json), 0 for any other version."""
    record = _read_record(storage.safe_join(version, RELABEL_FILE))
    return int(record["round"]) if record is not None and isinstance(record.get("round"), int) else 0


def _committed(out: str, version_id: str) -> bool:
    try:
        return storage.exists(storage.safe_join(version_url(out, version_id), SUCCESS))
    except ValueError:
        return False


def _one_round(cfg: RelabelConfig, round_no: int, source: Any, out: str, *, full: bool) -> RelabelRound:
    source_id = _source_identity(source.url)
    round_key = digest("relabel-round", round_no, source_id, _config_without_engine(cfg), code_fingerprint(_CODE_MODULES))
    round_record_url = storage.safe_join(out, f"{MODELS_DIR}/rounds/{round_key}.json")
    record = None if full else _read_record(round_record_url)
    if record is not None and _committed(out, record["version_id"]):
        url = version_url(out, record["version_id"])
        log.info("relabel round %d: up to date: %s", round_no, url)
        return RelabelRound(round=round_no, version_id=record["version_id"], version_url=url, source_url=source.url,
                            up_to_date=True, model=storage.safe_join(out, f"{MODELS_DIR}/{record['model']}.pt"),
                            model_reused=True, losses=list(record["losses"]), stats=read_stats(url),
                            summary=_summary(url), thing_classes=list(record["thing_classes"]),
                            stuff_labelled=bool(record["stuff_labelled"]))

    samples = list(read_source_samples(source.url))
    if not samples:
        raise ValueError(f"relabel round {round_no}: {source.url} has no samples to train on")
    boxes, box_sources = {}, dict.fromkeys(_BOX_SOURCES, 0)
    for s in samples:
        boxes[s.key], where = sample_boxes(s)
        box_sources[where] += 1
    things = _thing_classes(cfg, samples, boxes)
    names = _names(samples, boxes)
    model_url, sha, losses, classes, reused = _train(cfg, out, samples, source_id, full)
    stuff_labelled = bool(set(classes) - set(things) - {0})
    items = relabel_items(samples, boxes)
    del samples  # the images are not needed any more: the stages read them from the shards

    pipeline = Pipeline(name="relabel", stages=[
        Stage.of("relabel", RelabelImages(model_url=model_url, model_sha256=sha, threshold=cfg.threshold,
                                          thing_classes=things, names=names, device=cfg.model.device)),
        Stage.of("samples", relabel_samples(filter=cfg.filter, round=round_no, model_sha256=sha,
                                            threshold=cfg.threshold)),
    ])
    provenance = {"round": round_no, "source_version": source.url, "source_id": source_id,
                  "model": f"{MODELS_DIR}/{sha}.pt", "model_sha256": sha, "losses": losses, "classes": classes,
                  "thing_classes": things, "box_sources": box_sources, "threshold": cfg.threshold,
                  "stuff_labelled": stuff_labelled}
    config_yaml = (dump_yaml(cfg) + f"\n# relabel round {round_no}\n# source: {source.url}\n"
                   f"# model: {MODELS_DIR}/{sha}.pt\n# fingerprints\n# code: {package_code_hash()}\n")
    spec = VersionedRunSpec(
        name="relabel", schema="segmentation", shard_config=cfg.shards, config_yaml=config_yaml,
        config_digest=digest("relabel-version", _config_without_engine(cfg), round_no, source_id, sha,
                             code_fingerprint(["labelmill.pipelines.relabel"])),
        input_row=input_row_function(items), inline=_SUMMARY,
        extra_files=lambda rows: {RELABEL_FILE: json.dumps(provenance, sort_keys=True, indent=1).encode()})
    run = run_versioned(spec, pipeline, items, output_url=out, engine_cfg=cfg.engine, full=full)
    storage.write_text(round_record_url, json.dumps({"version_id": run.version_id, "model": sha, "losses": losses,
                                                     "round": round_no, "source_version": source.url,
                                                     "thing_classes": things, "stuff_labelled": stuff_labelled},
                                                    sort_keys=True))
    return RelabelRound(round=round_no, version_id=run.version_id, version_url=run.version_url, source_url=source.url,
                        up_to_date=run.up_to_date, model=model_url, model_reused=reused, losses=losses,
                        stats=run.stats, summary=_summary(run.version_url), thing_classes=things,
                        stuff_labelled=stuff_labelled)


# ----------------------------------------------------------------------------- the rounds


def run_relabel(dataset_url: str, rounds: int, *, output_url: str | None = None, gt: str | None = None,
                config: RelabelConfig | None = None, engine_name: str | None = None,
                full: bool = False) -> list[RelabelRound]:
    """Relabel ``dataset_url`` (an output root through LATEST, or a version directory) ``rounds``
    times into ``output_url`` (default: the dataset's own root); one :class:`RelabelRound` per
    round, the input version first. Rounds are numbered from the input's: 0 for a version
    the relabelling did not write, else its ``relabel.json`` round. Module docstring for what a
    round does.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    cfg = config or RelabelConfig()
    if engine_name is not None:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, name=engine_name))
    source = resolve_version(dataset_url)
    if output_url is None:
        if source.out_url is None:
            raise ConfigError(f"{dataset_url} is a version directory outside an output root: give an output URL")
        output_url = source.out_url
    out = output_url.rstrip("/")
    stats = read_stats(source.url)
    if str(stats.get("schema", "")).split("/")[0] != "segmentation":
        raise ConfigError(f"{source.url} is a dataset of schema {stats.get('schema')!r}; relabel needs 'segmentation'")

    def metrics(url: str, things: Sequence[int] | None, stuff: bool | None) -> dict[str, Any] | None:
        if gt is None:
            return None
        from labelmill.pipelines.segmentation_eval import evaluate_segmentation

        return evaluate_segmentation(url, gt, thing_classes=things, stuff_labels=stuff)

    # Thing classes of the evaluation: the segmentation version's config decides them (see
    # evaluate_segmentation); a relabel version names those it used in relabel.json.
    given = _read_record(storage.safe_join(source.url, RELABEL_FILE)) or {}
    first = metrics(source.url, given.get("thing_classes"), given.get("stuff_labelled"))
    things_eval = first["thing_classes"] if first is not None else None
    base = _round_of(source.url)
    results = [RelabelRound(round=base, version_id=source.version_id, version_url=source.url, source_url=None,
                            up_to_date=True, stats=stats, summary=_summary(source.url), metrics=first)]
    for round_no in range(base + 1, base + rounds + 1):
        done = _one_round(cfg, round_no, source, out, full=full)
        done.metrics = metrics(done.version_url, things_eval, done.stuff_labelled)
        results.append(done)
        log.info("relabel round %d: %s (%s)", round_no, done.version_url,
                 "up to date" if done.up_to_date else "written")
        source = resolve_version(done.version_url)
    return results
