"""Segmentation samples: one sample per labelled image, one ``inputs.parquet`` row per image.

:class:`BuildSegmentationSamples` reads the work item (``key``, ``image_id``, ``file_name``,
``tags``, ``boxes``, ``dropped``), the decoded image (``image_jpeg``, ``image_width``,
``image_height``, ``scale_x``) and the labels of the last labelling stage (``label_columns``:
sem PNG, inst PNG, segments; default the things' :data:`~labelmill.operators.segmentation.things.LABEL_COLUMNS`,
the stuff stage's ``stuff_*`` when it runs) plus the :class:`~labelmill.operators.segmentation.things.BoxThings`
statistics and writes, like
pose3d's :class:`~labelmill.operators.pose3d.samples.BuildSamples`:

* ``fragment_tar``: a tar with the image's sample (members ``<member key>.jpg``, ``.inst.png``,
  ``.json``, ``.sem.png``: the layout of ``infra/schemas/segmentation.json``; the json also
  records the input ``boxes`` in stored-image pixels, which relabelling reads), None when the
  image is filtered; packing copies its first ``fragment_member_bytes`` bytes into a shard;
* ``fragment_member_bytes``, ``num_samples`` (1 or 0);
* ``input_row``: the image's ``inputs.parquet`` row; ``index_rows``: its ``index.parquet`` row
  (without ``shard``).

Filters (:class:`SegmentationFilterConfig`, ``filter.*``), each making the input ``filtered``
with a reason and no sample: ``no_boxes`` (no thing box and no stuff label),
``no_segments`` (fewer than ``min_segments`` segments: no box got agreed pixels and no tag got
a stuff mask), ``ignore_fraction <f> > max_ignore_fraction <m>`` (too many of the box pixels
are ignore: the cues disagreed).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from labelmill.infra.formats.items import STATUS_FAILED, STATUS_FILTERED, STATUS_WRITTEN, ItemStatus
from labelmill.infra.formats.shards import Sample, encode_json, sample_tar_size, tar_bytes
from labelmill.operators.segmentation.things import LABEL_COLUMNS


__all__ = ["SegmentationFilterConfig", "BuildSegmentationSamples", "image_sample", "failed_input_row", "input_row_function",
           "KEPT", "NO_BOXES", "NO_SEGMENTS"]

KEPT, NO_BOXES, NO_SEGMENTS = "kept", "no_boxes", "no_segments"


@dataclasses.dataclass(frozen=True)
class SegmentationFilterConfig:
    """Quality filter of segmentation samples (``filter.*``)."""

    # An image whose ignore pixels exceed this fraction of its box pixels is filtered.
    max_ignore_fraction: float = 0.5
    # An image needs at least this many labelled instances.
    min_segments: int = 1

    def __post_init__(self) -> None:
        value = self.max_ignore_fraction
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"SegmentationFilterConfig.max_ignore_fraction must be a number in 0..1, got {value!r}")
        if isinstance(self.min_segments, bool) or not isinstance(self.min_segments, int) or self.min_segments < 1:
            raise ValueError(f"SegmentationFilterConfig.min_segments must be an integer >= 1, got {self.min_segments!r}")


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _length(value: Any) -> int:
    return 0 if value is None else len(value)


def failed_input_row(input_key: str, reason: str, *, image_id: Any = None, file_name: Any = None,
                     boxes_in: int = 0, boxes_dropped: int = 0, decoded: bool = False) -> dict[str, Any]:
    """The inputs.parquet row of an image that failed before it was labelled."""
    return {
        "input_key": str(input_key), "status": STATUS_FAILED, "reason": str(reason) if reason else "failed",
        "image_id": _opt_int(image_id), "file_name": _opt_str(file_name), "width": None, "height": None,
        "boxes_in": int(boxes_in), "boxes_dropped": int(boxes_dropped), "boxes_labelled": 0, "boxes_ignored": 0,
        "boxes_skipped": 0, "ignore_fraction": None, "labelled_fraction": None,
        "frames_in": int(bool(decoded)), "frames_fitted": 0, "frames_written": 0,
    }


def input_row_function(items: list[Mapping[str, Any]]):
    """``row -> inputs.parquet row`` for a run over ``items``: the samples stage's row, or for an
    item that failed before it (or has none) a failed row built from the work item."""
    by_key = {str(item["key"]): item for item in items}

    def input_row(row: Mapping[str, Any]) -> dict[str, Any]:
        if row.get("status") == STATUS_FAILED or row.get("input_row") is None:
            item = by_key.get(str(row["key"]), {})
            return failed_input_row(str(row["key"]), str(row.get("reason") or "failed"),
                                    image_id=item.get("image_id"), file_name=item.get("file_name"),
                                    boxes_in=len(item.get("boxes") or []), boxes_dropped=len(item.get("dropped") or []),
                                    decoded=row.get("image_width") is not None)
        return dict(row["input_row"])

    return input_row


def _box_entries(row: Mapping[str, Any], boxes_column: str) -> list[dict[str, Any]]:
    """The input boxes in stored-image pixels: ``bbox``, ``category_id``, ``category``, ``annotation_id``."""
    boxes = row.get(boxes_column)
    if boxes is None:
        return []
    cats = list(row.get("box_categories") if row.get("box_categories") is not None else [])
    ids = list(row.get("box_ids") if row.get("box_ids") is not None else [])
    names = list(row.get("box_category_names") if row.get("box_category_names") is not None else [])
    out = []
    for k, box in enumerate(boxes):
        out.append({"bbox": [round(float(v), 4) for v in box],
                    "category_id": int(cats[k]) if k < len(cats) else None,
                    "category": str(names[k]) if k < len(names) else None,
                    "annotation_id": int(ids[k]) if k < len(ids) else None})
    return out


def image_sample(row: Mapping[str, Any], *, config: SegmentationFilterConfig,
                 label_columns: tuple[str, str, str] = LABEL_COLUMNS, boxes_column: str = "image_boxes",
                 extra_json: Mapping[str, Any] | None = None) -> tuple[Sample | None, dict[str, Any]]:
    """``(sample or None, inputs.parquet row)`` of one labelled image (module docstring).

    ``boxes_column``: the column of the boxes in stored-image pixels (json ``boxes``);
    ``extra_json``: more top-level json entries (a relabel round's ``relabel``).
    """
    key = str(row["key"])
    sem_column, inst_column, segments_column = label_columns
    for name in ("image_jpeg", sem_column, inst_column, segments_column, "image_width", "image_height"):
        if row.get(name) is None:
            raise ValueError(f"image {key!r}: column {name!r} is missing (did the stage that writes it run?)")
    segments = [dict(s) for s in row[segments_column]]
    width, height = int(row["image_width"]), int(row["image_height"])
    ignore_fraction = _opt_float(row.get("ignore_fraction"))
    labelled_fraction = _opt_float(row.get("labelled_fraction"))
    boxes_in = _length(row.get("boxes"))
    quality = {
        "ignore_fraction_of_boxes": ignore_fraction, "labelled_fraction": labelled_fraction, "boxes_in": boxes_in,
        "boxes_labelled": int(row.get("boxes_labelled") or 0), "boxes_ignored": int(row.get("boxes_ignored") or 0),
        "boxes_skipped": int(row.get("boxes_skipped") or 0),
    }
    for name in ("stuff_pixels", "stuff_ignore"):
        if row.get(name) is not None:
            quality[name] = int(row[name])
    if boxes_in == 0 and not segments:
        status, reason = STATUS_FILTERED, NO_BOXES
    elif len(segments) < config.min_segments:
        status, reason = STATUS_FILTERED, NO_SEGMENTS
    elif ignore_fraction is not None and ignore_fraction > config.max_ignore_fraction:
        status, reason = STATUS_FILTERED, (f"ignore_fraction {ignore_fraction:.3f} > max_ignore_fraction "
                                           f"{config.max_ignore_fraction:g}")
    else:
        status, reason = STATUS_WRITTEN, KEPT
    sample = None
    if status == STATUS_WRITTEN:
        document = {
            "key": key, "image_id": _opt_int(row.get("image_id")), "file_name": _opt_str(row.get("file_name")),
            "width": width, "height": height, "scale": float(row.get("scale_x") or 1.0),
            "tags": [str(t) for t in (row.get("tags") if row.get("tags") is not None else [])],
            "segments": segments, "quality": quality, "boxes": _box_entries(row, boxes_column),
            **dict(extra_json or {}),
        }
        sample = Sample(
            key=key,
            fields={"jpg": bytes(row["image_jpeg"]), "sem.png": bytes(row[sem_column]),
                    "inst.png": bytes(row[inst_column]), "json": encode_json(document)},
            index={"input_key": key, "image_id": _opt_int(row.get("image_id")), "width": width, "height": height,
                   "num_segments": len(segments), "ignore_fraction": float(ignore_fraction or 0.0)},
        )
    input_row = {
        "input_key": key, "status": status, "reason": reason, "image_id": _opt_int(row.get("image_id")),
        "file_name": _opt_str(row.get("file_name")), "width": width, "height": height, "boxes_in": boxes_in,
        "boxes_dropped": _length(row.get("dropped")), "boxes_labelled": quality["boxes_labelled"],
        "boxes_ignored": quality["boxes_ignored"], "boxes_skipped": quality["boxes_skipped"],
        "ignore_fraction": ignore_fraction, "labelled_fraction": labelled_fraction,
        "frames_in": 1, "frames_fitted": 1, "frames_written": int(sample is not None),
    }
    return sample, input_row


class BuildSegmentationSamples:
    """Operator: each labelled image as a tar fragment in the final member layout (module docstring)."""

    resources = {"num_cpus": 0.25, "num_gpus": 0.0, "batch_size": 8}
    writes = ("fragment_tar", "fragment_member_bytes", "num_samples", "input_row", "index_rows")

    def __init__(self, *, filter: SegmentationFilterConfig | None = None,
                 label_columns: tuple[str, str, str] = LABEL_COLUMNS, boxes_column: str = "image_boxes",
                 extra_json: Mapping[str, Any] | None = None) -> None:
        self.filter = filter or SegmentationFilterConfig()
        self.label_columns = tuple(label_columns)
        if len(self.label_columns) != 3:
            raise ValueError(f"label_columns must name the sem, inst and segments columns, got {label_columns!r}")
        self.boxes_column = boxes_column
        self.extra_json = dict(extra_json or {})
        self.reads = tuple(dict.fromkeys((
            "key", "image_id", "file_name", "tags", "boxes", "dropped", "image_jpeg", "image_width", "image_height",
            "scale_x", boxes_column, "box_categories", "box_ids", "box_category_names", *self.label_columns,
            "boxes_labelled", "boxes_ignored", "boxes_skipped", "ignore_fraction", "labelled_fraction", "stuff_pixels",
            "stuff_ignore")))

    def setup(self) -> None:
        """Nothing to load."""

    def _one(self, row: Mapping[str, Any]) -> dict[str, Any]:
        sample, input_row = image_sample(row, config=self.filter, label_columns=self.label_columns,
                                         boxes_column=self.boxes_column, extra_json=self.extra_json)
        samples = [sample] if sample is not None else []
        index_rows = [{**dict(s.index), "key": s.key, "member_key": s.member_key, "num_bytes": sample_tar_size(s)}
                      for s in samples]
        return {
            "fragment_tar": tar_bytes(samples) if samples else None,
            "fragment_member_bytes": int(sum(r["num_bytes"] for r in index_rows)),
            "num_samples": len(samples),
            "input_row": input_row,
            "index_rows": index_rows,
        }

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = ItemStatus.of(batch)

        def one(i: int) -> dict[str, Any]:
            row = {name: batch[name][i] for name in self.reads if name in batch}
            row["key"] = items.keys[i]
            return self._one(row)

        return items.map_pending(batch, self.writes, one, errors=(ValueError, TypeError, KeyError))
