"""`write_bad_corpus`: good inputs mixed with every kind of bad input, for both pipelines.

Layout under ``out_dir`` (any fsspec URL; every file written atomically)::

    pose/manifest.csv            key,uri,start,end: the good clips and every bad case
    pose/clean.csv               the rows of pose/manifest.csv that must be written or filtered
    pose/videos/*.mp4            rendered good clips (``write_synthetic_corpus``), a 4K clip, a
                                 blank clip and the broken files (zero bytes, truncated, ...)
    pose/keypoints/*.json        precomputed keypoints found by key or video stem
    pose/gt/*.npz, pose/synth_config.yaml   from ``write_synthetic_corpus``
    segmentation/annotations.json  COCO instances: the good images and every bad case
    segmentation/clean.json      the images of annotations.json that must be written
    segmentation/images/*.jpg    the images (one of them does not decode)
    expected.json                {"pose": {key: case}, "segmentation": {key: case}}; a case
                                 is {"case", "outcome" (written | filtered | failed),
                                 "reason" (a substring of the input's reason; "" when written)}
    bad_config.yaml              the resolved BadCorpusConfig

Run ``labelmill run pose3d --input pose/manifest.csv --set keypoints.backend=precomputed`` and
``labelmill run segmentation --input segmentation/annotations.json --set
input.stuff=[grass,sky,water]``; the clean files give the same good items alone. Cases and
their outcomes: docs/inputs.md ("A corpus of bad inputs"). The same config writes the same
bytes.
"""

from __future__ import annotations

import csv
import copy
import dataclasses
import io
import json
import time
from typing import Any

import cv2
import numpy as np

from labelmill.infra import storage
from labelmill.infra.formats.config_yaml import dump_yaml
from labelmill.operators.common.decode import decode_frames
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import write_synthetic_corpus
from labelmill.operators.synth.render import Mp4Writer
from labelmill.operators.synth.segmentation import SegmentationSynthConfig, write_segmentation_corpus

__all__ = ["BadCorpusConfig", "BadCorpusSummary", "write_bad_corpus", "SEGMENTATION_STUFF", "POSE_HEADER"]

POSE_HEADER = ("key", "uri", "start", "end")
SEGMENTATION_STUFF = ("grass", "sky", "water")  # the synthetic corpus's stuff classes (input.stuff)
WRITTEN, FILTERED, FAILED = "written", "filtered", "failed"


@dataclasses.dataclass
class BadCorpusConfig:
    """Knobs of :func:`write_bad_corpus`. Small by default: the corpus is a test fixture."""

    num_clips: int = 3  # good rendered clips
    num_frames: int = 24  # frames per good clip (at 30 fps)
    width: int = 160  # good clips' and images' size in pixels (even)
    height: int = 120
    num_images: int = 4  # good segmentation images
    big_width: int = 3840  # the 4K clip: a good clip's first frames upscaled
    big_height: int = 2160
    big_frames: int = 6
    seed: int = 0  # seed of the good clips and images

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, what: str) -> None:
            if not ok:
                raise ValueError(f"BadCorpusConfig.{field} must be {what}, got {getattr(self, field)!r}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        need(is_int(self.num_clips) and self.num_clips >= 1, "num_clips", "an integer >= 1")
        need(is_int(self.num_frames) and 12 <= self.num_frames <= 600, "num_frames", "an integer in 12..600")
        for name in ("width", "height", "big_width", "big_height"):
            value = getattr(self, name)
            need(is_int(value) and 32 <= value <= 8192 and value % 2 == 0, name, "an even integer in 32..8192")
        need(is_int(self.num_images) and self.num_images >= 2, "num_images", "an integer >= 2")
        need(is_int(self.big_frames) and 1 <= self.big_frames <= self.num_frames, "big_frames",
             "an integer in 1..num_frames")
        need(is_int(self.seed) and self.seed >= 0, "seed", "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class BadCorpusSummary:
    """What :func:`write_bad_corpus` wrote."""

    out_dir: str
    pose_inputs: int  # rows of pose/manifest.csv
    pose_clean: int  # rows of pose/clean.csv
    segmentation_inputs: int  # images of segmentation/annotations.json
    segmentation_clean: int
    cases: dict[str, str]  # "<pipeline>:<key>" -> outcome
    seconds: float


@dataclasses.dataclass
class _PoseRow:
    key: str
    uri: str
    start: float | None
    end: float | None
    case: str
    outcome: str
    reason: str
    expected_key: str | None = None  # the key the corpus reader gives the row, when not `key`


# ----------------------------------------------------------------------------- pose3d


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _csv(rows: list[_PoseRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(POSE_HEADER)
    writer.writerows((r.key, r.uri, _fmt(r.start), _fmt(r.end)) for r in rows)
    return out.getvalue()


def _encode(frames: list[np.ndarray], fps: int) -> bytes:
    """mp4 bytes of BGR ``frames`` (libx264, deterministic; see :class:`Mp4Writer`)."""
    height, width = frames[0].shape[:2]
    with Mp4Writer(width=width, height=height, fps=fps) as writer:
        for frame in frames:
            writer.write(frame)
        return writer.close()


def _dump(document: Any) -> str:
    return json.dumps(document, separators=(",", ":")) + "\n"  # NaN/Infinity as Python writes them


def _edit_keypoints(document: dict[str, Any], edit) -> dict[str, Any]:
    """A copy of a keypoints document with ``edit(frame index, person index, keypoints)`` applied."""
    out = copy.deepcopy(document)
    for frame in out["frames"]:
        for p, person in enumerate(frame["people"]):
            edit(frame["frame"], p, person["keypoints"])
    return out


def _keypoint_cases(document: dict[str, Any]) -> list[tuple[str, str, Any, str, str]]:
    """(key, case, file text, outcome, reason) of every bad keypoint file, edits of a good clip's file."""

    def nan(t, p, k):  # the nose and the left ear of every person in every other frame
        if t % 2 == 0:
            k[0] = [float("nan"), 10.0, 0.9]
            k[3][1] = float("nan")

    def inf(t, p, k):
        if t % 2 == 1:
            k[0][0] = float("inf")
            k[4][2] = float("-inf")

    def huge(t, p, k):
        k[9][0] = 1e12
        k[10][1] = -1e12

    def negative(t, p, k):
        if t == 3:
            k[5][2] = -0.5

    def outside(t, p, k):  # every keypoint of every person far left of the frame: nobody is left
        for point in k:
            point[0] = -500.0 - 10.0 * point[0]

    def string(t, p, k):
        if t == 2:
            k[7][1] = "abc"

    edits = [
        ("keypoints_nan", "keypoint file with NaN coordinates", nan, WRITTEN, ""),
        ("keypoints_inf", "keypoint file with infinite values", inf, WRITTEN, ""),
        ("keypoints_huge", "keypoint file with coordinates of 1e12", huge, WRITTEN, ""),
        ("keypoints_negative", "keypoint file with a negative confidence", negative, FAILED,
         "negative confidence -0.5 at keypoint 5"),
        ("keypoints_outside", "keypoint file with every keypoint outside the frame", outside, FILTERED,
         "no_measurable_frames"),
        ("keypoints_string", "keypoint file with a string value", string, FAILED,
         "keypoints_string.json: frame 2, person 0: 'keypoints' must be 17 [x, y, confidence] triples"),
    ]
    cases = [(key, case, _dump(_edit_keypoints(document, edit)), outcome, reason)
             for key, case, edit, outcome, reason in edits]
    cases.append(("keypoints_malformed", "malformed JSON keypoint file", '{"video": "x", "frames": [\n', FAILED,
                  "keypoints_malformed.json: malformed JSON"))
    return cases


def _write_pose(out: str, cfg: BadCorpusConfig) -> tuple[list[_PoseRow], list[_PoseRow]]:
    synth = SynthConfig(num_videos=cfg.num_clips, num_frames=cfg.num_frames, width=cfg.width, height=cfg.height,
                        seed=cfg.seed)
    summary = write_synthetic_corpus(out, synth)
    fps = synth.fps
    ids = summary.video_ids
    videos = {row["youtube_id"]: row for row in csv.DictReader(io.StringIO(storage.read_text(storage.join(out, "manifest.csv"))))}
    clip = {i: f"{i}_{int(videos[i]['time_start']):06d}_{int(videos[i]['time_end']):06d}.mp4" for i in ids}
    uri = {i: f"videos/{clip[i]}" for i in ids}  # relative to the manifest
    documents = {i: json.loads(storage.read_text(storage.join(out, "keypoints", f"{i}.json"))) for i in ids}
    duration = cfg.num_frames / fps
    first, second = ids[0], ids[min(1, len(ids) - 1)]

    rows = [_PoseRow(f"good_{n}", uri[i], None, None, "good clip", WRITTEN, "") for n, i in enumerate(ids)]
    # a range starting after 0 s: source frames from 0.3 s on, with the file's keypoints of those frames
    rows.append(_PoseRow("range_late_start", uri[first], round(9.5 / fps, 4), None, "time range starting after 0 s",
                         WRITTEN, ""))
    rows.append(_PoseRow("range_outside", uri[first], duration + 10.0, duration + 12.0,
                         "time range after the end of the video", FAILED,
                         "is at or beyond the video's end"))
    rows.append(_PoseRow("range_reversed", uri[first], 0.6, 0.2, "reversed time range", FAILED,
                         "end 0.2 is not after start 0.6"))
    rows.append(_PoseRow("duplicate", uri[second], None, None, "first row of a duplicated key", WRITTEN, ""))
    rows.append(_PoseRow("duplicate", uri[first], None, None, "second row of a duplicated key", FAILED,
                         "duplicate key 'duplicate'"))
    rows.append(_PoseRow("k" * 1000, uri[first], None, None, "a 1000-character key", FAILED,
                         "is 1000 characters long"))
    rows.append(_PoseRow("/".join(["p"] * 100), uri[first], None, None, "a 100-part key", FAILED, "has 100 parts"))
    rows.append(_PoseRow("missing_file", "videos/missing.mp4", None, None, "a row whose file is missing", FAILED,
                         "missing file:"))

    good_bytes = storage.read_bytes(storage.join(out, "videos", clip[first]))
    unreadable = "not a readable video file"
    broken = [
        ("zero_bytes", "a zero-byte .mp4", b"", "empty file"),
        ("truncated", "an .mp4 cut to its first half", good_bytes[: len(good_bytes) // 2], unreadable),
        ("random_bytes", "an .mp4 of random bytes", np.random.default_rng(cfg.seed).bytes(4096), unreadable),
        ("text_file", "a text file named .mp4", b"this is a text file, not a video\n", unreadable),
    ]
    for key, case, data, reason in broken:
        storage.write_bytes(storage.join(out, "videos", f"{key}.mp4"), data)
        rows.append(_PoseRow(key, f"videos/{key}.mp4", None, None, case, FAILED, f"{key}.mp4: {reason}"))

    # a 4K clip: the first clip's first frames upscaled, its keypoints scaled alike
    sx, sy = cfg.big_width / cfg.width, cfg.big_height / cfg.height
    frames = []
    for frame in decode_frames(storage.join(out, "videos", clip[first]), end=(cfg.big_frames - 0.5) / fps):
        big = cv2.resize(frame.image, (cfg.big_width, cfg.big_height), interpolation=cv2.INTER_LINEAR)
        frames.append(cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    storage.write_bytes(storage.join(out, "videos", "video_4k.mp4"), _encode(frames[: cfg.big_frames], fps))

    def scale(t, p, k):
        for point in k:
            point[0], point[1] = point[0] * sx, point[1] * sy

    big_doc = _edit_keypoints(documents[first], scale)
    big_doc["frames"] = [f for f in big_doc["frames"] if f["frame"] < cfg.big_frames]
    for f in big_doc["frames"]:
        for person in f["people"]:
            x0, y0, x1, y1 = person["bbox"]
            person["bbox"] = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
    big_doc.update(width=cfg.big_width, height=cfg.big_height, num_frames=cfg.big_frames, video="video_4k")
    storage.write_text(storage.join(out, "keypoints", "video_4k.json"), _dump(big_doc))
    rows.append(_PoseRow("video_4k", "videos/video_4k.mp4", None, None,
                         f"a {cfg.big_width}x{cfg.big_height} clip of {cfg.big_frames} frames", WRITTEN, ""))

    # a clip without people: a blank video whose keypoint file lists no person in any frame
    blank = np.full((cfg.height, cfg.width, 3), 128, np.uint8)
    storage.write_bytes(storage.join(out, "videos", "no_people.mp4"), _encode([blank] * cfg.num_frames, fps))
    empty = {k: v for k, v in documents[first].items() if k != "frames"}
    empty.update(video="no_people", frames=[{"frame": t, "people": []} for t in range(cfg.num_frames)])
    storage.write_text(storage.join(out, "keypoints", "no_people.json"), _dump(empty))
    rows.append(_PoseRow("no_people", "videos/no_people.mp4", None, None, "a clip without people", FILTERED,
                         "no_measurable_frames"))

    for key, case, text, outcome, reason in _keypoint_cases(documents[second]):
        storage.write_text(storage.join(out, "keypoints", f"{key}.json"), text)
        rows.append(_PoseRow(key, uri[second], None, None, case, outcome, reason))

    # keys the corpus reader gives rows it cannot key by their own key column (docs/inputs.md)
    for line, row in enumerate(rows, start=2):
        if row.case == "second row of a duplicated key":
            row.expected_key = f"{row.key}__duplicate_line_{line:06d}"
        elif row.outcome == FAILED and row.case in ("reversed time range", "a 1000-character key", "a 100-part key"):
            row.expected_key = f"__invalid_line_{line:06d}"
            row.reason = f"line {line}: {row.reason}" if row.case == "reversed time range" else row.reason
    storage.write_text(storage.join(out, "manifest.csv"), _csv(rows))
    clean = [r for r in rows if r.outcome != FAILED]
    storage.write_text(storage.join(out, "clean.csv"), _csv(clean))
    return rows, clean


# ----------------------------------------------------------------------------- segmentation


def _write_segmentation(out: str, cfg: BadCorpusConfig) -> tuple[dict[str, dict[str, str]], int, int]:
    synth = SegmentationSynthConfig(num_images=cfg.num_images, width=cfg.width, height=cfg.height, seed=cfg.seed,
                                    stuff_classes=list(SEGMENTATION_STUFF))
    write_segmentation_corpus(out, synth)
    document = json.loads(storage.read_text(storage.join(out, "annotations.json")))
    images = document["images"]
    annotations = document["annotations"]
    expected = {img["file_name"].rsplit(".", 1)[0]: {"case": "good image", "outcome": WRITTEN, "reason": ""}
                for img in images}
    thing_ids = {c["id"] for c in document["categories"] if c["name"] not in SEGMENTATION_STUFF}
    source = images[0]
    source_jpg = storage.read_bytes(storage.join(out, "images", source["file_name"]))
    source_things = [a for a in annotations if a["image_id"] == source["id"] and a["category_id"] in thing_ids]
    next_image = max(img["id"] for img in images) + 1
    next_annotation = max(a["id"] for a in annotations) + 1

    def add(name: str, data: bytes | None, boxes: list[list[float]], tags: list[str]) -> None:
        nonlocal next_image, next_annotation
        if data is not None:
            storage.write_bytes(storage.join(out, "images", f"{name}.jpg"), data)
        images.append({"id": next_image, "file_name": f"{name}.jpg", "width": cfg.width, "height": cfg.height,
                       "tags": tags})
        for box in boxes:
            annotations.append({"id": next_annotation, "image_id": next_image,
                                "category_id": source_things[0]["category_id"], "bbox": box,
                                "area": float(box[2] * box[3]), "iscrowd": 0})
            next_annotation += 1
        next_image += 1

    w, h = cfg.width, cfg.height
    add("undecodable", b"\xff\xd8\xff\xe0 not really a JPEG" * 8, [[10.0, 10.0, 40.0, 30.0]], [])
    expected["undecodable"] = {"case": "an image that does not decode", "outcome": FAILED,
                               "reason": "undecodable.jpg: OpenCV cannot decode the image"}
    add("box_outside", source_jpg, [[w + 20.0, h + 20.0, 30.0, 30.0]], [])
    expected["box_outside"] = {"case": "its only box wholly outside the image (dropped)", "outcome": FAILED,
                               "reason": f"is wholly outside the {w}x{h} image)"}
    x, y, bw, bh = source_things[0]["bbox"]
    add("box_partly_outside", source_jpg, [[float(x), float(y), float(w) * 2, float(h) * 2]], list(source["tags"]))
    expected["box_partly_outside"] = {"case": "a box partly outside the image (clipped)", "outcome": WRITTEN,
                                      "reason": ""}
    add("missing_image", None, [[10.0, 10.0, 40.0, 30.0]], [])
    expected["missing_image"] = {"case": "an image file that is missing", "outcome": FAILED,
                                 "reason": "missing image file:"}
    storage.write_text(storage.join(out, "annotations.json"), _dump(document))
    keep = {img["id"] for img in images if expected[img["file_name"].rsplit(".", 1)[0]]["outcome"] != FAILED}
    clean = dict(document, images=[i for i in images if i["id"] in keep],
                 annotations=[a for a in annotations if a["image_id"] in keep])
    storage.write_text(storage.join(out, "clean.json"), _dump(clean))
    return expected, len(images), len(keep)


# ----------------------------------------------------------------------------- corpus


def write_bad_corpus(out_dir: str, cfg: BadCorpusConfig | None = None) -> BadCorpusSummary:
    """Write the bad-input corpus (layout in the module docstring) under ``out_dir``."""
    cfg = cfg or BadCorpusConfig()
    start = time.perf_counter()
    rows, clean = _write_pose(storage.join(out_dir, "pose"), cfg)
    segmentation, seg_inputs, seg_clean = _write_segmentation(storage.join(out_dir, "segmentation"), cfg)
    pose = {(r.expected_key or r.key): {"case": r.case, "outcome": r.outcome, "reason": r.reason} for r in rows}
    if len(pose) != len(rows):
        raise RuntimeError("two rows of the bad pose manifest expect the same input key")
    storage.write_text(storage.join(out_dir, "expected.json"),
                       json.dumps({"pose": pose, "segmentation": segmentation}, indent=1, sort_keys=True) + "\n")
    storage.write_text(storage.join(out_dir, "bad_config.yaml"), dump_yaml(cfg))
    cases = {f"pose:{k}": v["outcome"] for k, v in pose.items()}
    cases.update({f"segmentation:{k}": v["outcome"] for k, v in segmentation.items()})
    return BadCorpusSummary(out_dir=out_dir, pose_inputs=len(rows), pose_clean=len(clean),
                            segmentation_inputs=seg_inputs, segmentation_clean=seg_clean, cases=cases,
                            seconds=time.perf_counter() - start)
