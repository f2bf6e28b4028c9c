"""Training-time readers of labelmill datasets: torch ``IterableDataset`` s over a version.

::

    from labelmill.pipelines.consume import pose3d_frames, segmentation_images

    dataset = pose3d_frames("s3://bucket/out", batch_size=32, shuffle=True, seed=0,
                            max_frame_loss=0.05, min_confident_keypoints=12)
    loader = dataset.loader(num_workers=4)       # DataLoader(dataset, batch_size=None, ...)
    for epoch in range(10):
        dataset.set_epoch(epoch)
        for batch in loader:                     # dict of stacked tensors and lists
            ...

The plan is per sample, from ``index.parquet``: filters are applied to the stored values when
the dataset is built, each epoch is a permutation seeded by ``(seed, epoch)``, samples are dealt
to ranks and batches to DataLoader workers so that every rank yields the same number of batches
(:mod:`labelmill.pipelines.consume_plan`), and a worker reads each of its samples by byte range
(:mod:`labelmill.pipelines.consume_read`). No rank depends on another, and the number of shards
plays no part, so a one-shard dataset splits over any number of ranks and workers.
docs/consume.md documents fields, dtypes, shapes, filters and the splitting rule.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.utils.data

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.schema import DatasetSchema, load_schema
from labelmill.pipelines import consume_plan
from labelmill.pipelines.consume_read import (
    SampleRef,
    decode_json,
    decode_npz,
    decode_pose3d,
    decode_segmentation,
    locate,
    read_member_sequential,
    read_members,
)

log = logging.getLogger(__name__)

__all__ = ["ShardSamples", "pose3d_frames", "segmentation_images", "collate", "node_info"]


def node_info() -> tuple[int, int]:
    """``(rank, world_size)``: torch.distributed when initialised, else ``RANK`` / ``WORLD_SIZE``, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"RANK / WORLD_SIZE must be integers, got {os.environ.get('RANK')!r} / "
                         f"{os.environ.get('WORLD_SIZE')!r}") from None
    return rank, world


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A batch from decoded samples: per key, tensors of one shape are stacked (new dim 0);
    anything else (tensors of different shapes, e.g. images of different sizes; strings; ``None``;
    the ``meta`` dicts) becomes a list, so JSON nulls never reach ``default_collate``."""
    if not samples:
        raise ValueError("collate: no samples")
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            batch[name] = torch.stack(values)
        else:
            batch[name] = values
    return batch


class ShardSamples(torch.utils.data.IterableDataset):
    """Decoded samples of a dataset version, split over ranks and DataLoader workers.

    Built by :func:`pose3d_frames` / :func:`segmentation_images`; this class holds what is common.
    ``refs`` are the samples left after the load-time filters, in key order. With ``batch_size``
    it yields collated batches (use ``DataLoader(dataset, batch_size=None)`` or :meth:`loader`),
    and every rank yields ``len(self)`` of them per epoch; with ``batch_size=None`` it yields single
    samples, the same number per rank.
    """

    def __init__(self, *, refs: Sequence[SampleRef], decode: Callable[[SampleRef, Mapping[str, bytes]], dict],
                 version_url: str, batch_size: int | None = None, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, resample: bool = False, rank: int | None = None,
                 world_size: int | None = None, verify: bool = True) -> None:
        super().__init__()
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("give rank and world_size together, or neither")
        self.refs = list(refs)
        self.version_url = version_url
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last, self.resample = bool(shuffle), int(seed), bool(drop_last), bool(resample)
        self.verify = bool(verify)
        self._decode = decode
        self._explicit_node = rank is not None
        self.rank, self.world_size = (int(rank), int(world_size)) if rank is not None else node_info()
        consume_plan.rank_batches(np.arange(0), rank=self.rank, world_size=self.world_size, batch_size=1,
                                  drop_last=False)  # checks rank / world_size
        self.epoch = 0

    @property
    def keys(self) -> list[str]:
        """Sample keys after the filters, in key order."""
        return [r.key for r in self.refs]

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose permutation the next iteration uses (call it in the main process before
        each epoch, like ``DistributedSampler.set_epoch``); it also re-reads rank and world size
        from torch.distributed / the environment unless they were given."""
        self.epoch = int(epoch)
        if not self._explicit_node:
            self.rank, self.world_size = node_info()

    def _rank_batches(self, epoch: int) -> list[np.ndarray]:
        order = consume_plan.epoch_order(len(self.refs), epoch=epoch, seed=self.seed, shuffle=self.shuffle)
        return consume_plan.rank_batches(order, rank=self.rank, world_size=self.world_size,
                                         batch_size=self.batch_size or 1, drop_last=self.drop_last)

    def __len__(self) -> int:
        """Items (batches, or samples with ``batch_size=None``) this rank yields per epoch."""
        return len(self._rank_batches(self.epoch))

    def sample(self, index: int) -> dict[str, Any]:
        """Sample ``index`` (of :attr:`refs`) read and decoded."""
        ref = self.refs[index]
        return self._decode(ref, read_members(ref, verify=self.verify))

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        while True:
            batches = consume_plan.worker_batches(self._rank_batches(epoch), worker=worker, num_workers=num_workers)
            for batch in batches:
                samples = [self.sample(int(i)) for i in batch]
                yield collate(samples) if self.batch_size is not None else samples[0]
            if not self.resample:
                return
            epoch += 1

    def loader(self, *, num_workers: int = 0, **kwargs: Any) -> torch.utils.data.DataLoader:
        """``DataLoader(self, batch_size=None, num_workers=...)``: batches are formed here, so the
        DataLoader must not batch again."""
        if kwargs.get("batch_size") is not None:
            raise ValueError("the dataset batches itself: set batch_size on the dataset, not on its loader")
        kwargs.pop("batch_size", None)
        return torch.utils.data.DataLoader(self, batch_size=None, num_workers=num_workers, **kwargs)


# ----------------------------------------------------------------------------- building


def _open_version(url: str, schema_name: str) -> tuple[str, DatasetSchema, pa.Table]:
    version = dv.resolve_version(url).url
    stats_url = storage.safe_join(version, dv.STATS_FILE)
    if storage.exists(stats_url):
        stored = dv.read_stats(version).get("schema", "")
        if str(stored).split("/")[0] != schema_name:
            raise ValueError(f"{version} holds {stored or 'an unknown schema'} samples, not {schema_name}")
    return version, load_schema(schema_name), dv.read_index(version)


def _column(index: pa.Table, name: str, version: str, option: str) -> list[Any]:
    if name not in index.column_names:
        raise ValueError(f"{version}/index.parquet has no column {name!r}, which {option} filters on")
    return index.column(name).to_pylist()


def _keep_by_limit(keep: dict[str, bool], keys: list[str], values: list[Any], *, low=None, high=None) -> None:
    for key, value in zip(keys, values):
        if value is None or (high is not None and value > high) or (low is not None and value < low):
            keep[key] = False


def _scan_member(version: str, refs: list[SampleRef], extension: str, verify: bool,
                 fn: Callable[[SampleRef, bytes], bool]) -> set[str]:
    """Keys of the samples for which ``fn(ref, member bytes)`` is true; each shard read once, in
    order, only the headers and the one member of each sample."""
    kept: set[str] = set()
    by_shard: dict[str, list[SampleRef]] = {}
    for ref in refs:
        by_shard.setdefault(ref.shard_url, []).append(ref)
    for url, shard_refs in by_shard.items():
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle:
            for ref in sorted(shard_refs, key=lambda r: r.offset):
                if fn(ref, read_member_sequential(handle, ref, extension, verify=verify)):
                    kept.add(ref.key)
    log.debug("%s: scanned %s of %d samples for a filter", version, extension, len(refs))
    return kept


def _common(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("batch_size", "shuffle", "seed", "drop_last", "resample", "rank", "world_size",
                                   "verify")}


def pose3d_frames(url: str, *, batch_size: int | None = None, shuffle: bool = False, seed: int = 0,
                  drop_last: bool = False, resample: bool = False, rank: int | None = None,
                  world_size: int | None = None, max_frame_loss: float | None = None,
                  max_video_loss: float | None = None, min_confident_keypoints: int | None = None,
                  keypoint_confidence: float = 0.3, labels: Iterable[str] | None = None,
                  kept_only: bool = True, images: bool = True, verify: bool = True) -> ShardSamples:
    """Frames of a pose3d version (``url``: ``OUT``, through LATEST, or ``OUT/versions/<id>``).

    Filters (a sample is kept when it passes all; limits are inclusive):

    * ``max_frame_loss`` / ``max_video_loss``: the index's ``frame_loss`` / ``video_loss`` <= limit;
    * ``min_confident_keypoints``: at least this many of ``keypoints2d``'s 17 confidences are
      >= ``keypoint_confidence`` (reads each sample's ``smpl.npz`` once, when the dataset is built);
    * ``labels``: the index's ``label`` is one of these (a null label never matches);
    * ``kept_only``: the sample's frame and video were kept by the loss filters. pose3d/1
      versions store kept frames only, so this is a check on read: a sample whose ``json`` says
      otherwise is a ``ValueError``.

    Each sample: ``key`` (str), ``image`` uint8 ``(3, H, W)`` RGB (unless ``images=False``), the
    nine ``smpl.npz`` arrays as float32 tensors of their schema shapes, ``frame`` int64 ``()``,
    ``frame_loss`` and ``video_loss`` float32 ``()``, ``label`` (str or None) and ``meta`` (the
    ``json`` dict). Batching: :func:`collate`. Other options: :class:`ShardSamples`.
    """
    version, schema, index = _open_version(url, "pose3d")
    refs = locate(version, index)
    keys = index.column("key").to_pylist()
    keep = dict.fromkeys(keys, True)
    if max_frame_loss is not None:
        _keep_by_limit(keep, keys, _column(index, "frame_loss", version, "max_frame_loss"), high=float(max_frame_loss))
    if max_video_loss is not None:
        _keep_by_limit(keep, keys, _column(index, "video_loss", version, "max_video_loss"), high=float(max_video_loss))
    if labels is not None:
        if isinstance(labels, str):
            raise ValueError(f"labels must be a collection of label strings, got the string {labels!r}")
        wanted = set(labels)
        for key, label in zip(keys, _column(index, "label", version, "labels")):
            keep[key] = keep[key] and label in wanted
    refs = [r for r in refs if keep[r.key]]
    if min_confident_keypoints is not None:
        threshold, needed = float(keypoint_confidence), int(min_confident_keypoints)

        def enough(ref: SampleRef, data: bytes) -> bool:
            confidence = decode_npz(ref, data, schema, "smpl.npz")["keypoints2d"][:, 2]
            return int((confidence >= threshold).sum()) >= needed

        passed = _scan_member(version, refs, "smpl.npz", verify, enough)
        refs = [r for r in refs if r.key in passed]

    decode = functools.partial(decode_pose3d, schema=schema, images=images, kept_only=kept_only)  # picklable
    return ShardSamples(refs=refs, decode=decode, version_url=version, **_common(locals()))


def segmentation_images(url: str, *, batch_size: int | None = None, shuffle: bool = False, seed: int = 0,
                        drop_last: bool = False, resample: bool = False, rank: int | None = None,
                        world_size: int | None = None, max_ignore_fraction: float | None = None,
                        min_segments: int | None = None, labels: Iterable[str] | None = None,
                        images: bool = True, verify: bool = True) -> ShardSamples:
    """Images of a segmentation version (``url``: ``OUT`` or ``OUT/versions/<id>``).

    Filters (limits inclusive): ``max_ignore_fraction`` and ``min_segments`` on the index's
    ``ignore_fraction`` / ``num_segments``; ``labels``: the image has at least one segment whose
    ``category`` is one of these (reads each sample's ``json`` once, when the dataset is built).

    Each sample: ``key`` (str), ``image`` uint8 ``(3, H, W)`` RGB (unless ``images=False``),
    ``sem`` uint8 ``(H, W)`` (category id, 0 background, 255 ignore), ``inst`` int32 ``(H, W)``
    (segment id, 0 none) and ``meta`` (the ``json`` dict, with ``segments``).
    """
    version, schema, index = _open_version(url, "segmentation")
    refs = locate(version, index)
    keys = index.column("key").to_pylist()
    keep = dict.fromkeys(keys, True)
    if max_ignore_fraction is not None:
        _keep_by_limit(keep, keys, _column(index, "ignore_fraction", version, "max_ignore_fraction"),
                       high=float(max_ignore_fraction))
    if min_segments is not None:
        _keep_by_limit(keep, keys, _column(index, "num_segments", version, "min_segments"), low=int(min_segments))
    refs = [r for r in refs if keep[r.key]]
    if labels is not None:
        if isinstance(labels, str):
            raise ValueError(f"labels must be a collection of category names, got the string {labels!r}")
        wanted = set(labels)

        def has_label(ref: SampleRef, data: bytes) -> bool:
            return any(s.get("category") in wanted for s in decode_json(ref, data, schema)["segments"])

        passed = _scan_member(version, refs, "json", verify, has_label)
        refs = [r for r in refs if r.key in passed]

    decode = functools.partial(decode_segmentation, schema=schema, images=images)
    return ShardSamples(refs=refs, decode=decode, version_url=version, **_common(locals()))
