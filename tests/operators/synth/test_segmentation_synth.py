"""Synthetic segmentation check data: determinism, COCO/RLE vs GT masks, tags, overlap rule, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from labelmill.infra import storage
from labelmill.operators.synth.segmentation import (
    SegmentationSynthConfig,
    synthesize_segmentation_image,
    write_segmentation_corpus,
)
from labelmill.pipelines.cli import main

# pycocotools' decode trips numpy 2's __array__(copy=) deprecation inside its C extension.

# Many, large objects: overlaps are common, so the occlusion rule gets exercised.
BUSY = dict(num_images=6, seed=3, objects_min=3, objects_max=5, object_size_min=0.3, object_size_max=0.6)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _png(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return array


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, SegmentationSynthConfig, dict]:
    out = tmp_path_factory.mktemp("segsynth")
    cfg = SegmentationSynthConfig(**BUSY)
    summary = write_segmentation_corpus(str(out), cfg)
    assert len(summary.image_names) == cfg.num_images
    return out, cfg, json.loads((out / "annotations.json").read_text())


def test_same_config_same_bytes_and_seed_matters(tmp_path, corpus):
    out, cfg, _ = corpus
    again = tmp_path / "again"
    write_segmentation_corpus(str(again), SegmentationSynthConfig(**BUSY))
    first, second = _files(out), _files(again)
    assert sorted(first) == sorted(second)
    assert len([k for k in first if k.startswith("images/")]) == cfg.num_images
    assert [k for k in first if first[k] != second[k]] == []
    other = tmp_path / "other"
    write_segmentation_corpus(str(other), SegmentationSynthConfig(**{**BUSY, "seed": 4}))
    third = _files(other)
    assert sorted(third) == sorted(first)  # same names ...
    changed = [k for k in first if first[k] != third[k]]
    assert "annotations.json" in changed and all(f"images/synth_{i:06d}.jpg" in changed for i in range(cfg.num_images))


def test_larger_corpus_starts_with_the_smaller_one(tmp_path, corpus):
    out, _, document = corpus
    small = tmp_path / "small"
    write_segmentation_corpus(str(small), SegmentationSynthConfig(**{**BUSY, "num_images": 2}))
    for name in ("synth_000000.jpg", "synth_000001.jpg"):
        assert (small / "images" / name).read_bytes() == (out / "images" / name).read_bytes()
    small_doc = json.loads((small / "annotations.json").read_text())
    assert small_doc["annotations"] == [a for a in document["annotations"] if a["image_id"] <= 2]


def test_writes_to_any_fsspec_url():
    url = "memory://labelmill-segsynth-test"
    write_segmentation_corpus(url, SegmentationSynthConfig(num_images=1))
    document = json.loads(storage.read_text(storage.join(url, "annotations.json")))
    assert [im["file_name"] for im in document["images"]] == ["synth_000000.jpg"]
    jpg = storage.read_bytes(storage.join(url, "images", "synth_000000.jpg"))
    assert cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
    storage.remove(url, recursive=True)


def test_categories_use_one_id_layout_for_json_and_sem_mask(corpus):
    _, cfg, document = corpus
    cats = document["categories"]
    assert [(c["id"], c["name"], c["supercategory"]) for c in cats] == [
        (1, "disc", "thing"), (2, "square", "thing"), (3, "triangle", "thing"),
        (4, "grass", "stuff"), (5, "sky", "stuff"), (6, "water", "stuff"),
    ]  # fmt: skip
    custom = SegmentationSynthConfig(thing_classes=["a", "b"], stuff_classes=["x", "y", "z", "w"], stuff_regions_max=4)
    assert [c["id"] for c in custom.categories() if c["isthing"]] == [1, 2]
    assert [c["id"] for c in custom.categories() if not c["isthing"]] == [3, 4, 5, 6]
    sample = synthesize_segmentation_image(0, custom)
    assert set(np.unique(sample.sem)) <= {1, 2, 3, 4, 5, 6}


def test_rle_bbox_area_match_the_gt_masks_and_partition_the_image(corpus):
    out, cfg, document = corpus
    by_image: dict[int, list[dict]] = {}
    for a in document["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert [a["id"] for a in document["annotations"]] == list(range(1, len(document["annotations"]) + 1))
    for image in document["images"]:
        stem = image["file_name"][: -len(".jpg")]
        jpg = _png(out / "images" / image["file_name"])
        sem, inst = _png(out / "gt" / f"{stem}_sem.png"), _png(out / "gt" / f"{stem}_inst.png")
        assert jpg.shape == (cfg.height, cfg.width, 3)
        assert sem.dtype == np.uint8 and inst.dtype == np.uint16 and sem.shape == inst.shape == (cfg.height, cfg.width)
        coverage = np.zeros(sem.shape, np.int32)
        things = [a for a in by_image[image["id"]] if a["isthing"]]
        assert sorted(a["instance_id"] for a in things) == sorted(set(np.unique(inst)) - {0})
        for a in by_image[image["id"]]:
            assert a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
            decoded = mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"]})
            decoded = decoded.astype(bool)
            if a["isthing"]:
                expected = inst == a["instance_id"]
                assert np.all(sem[expected] == a["category_id"])
            else:
                assert a["category_id"] > len(cfg.thing_classes)
                expected = sem == a["category_id"]
            assert np.array_equal(decoded, expected), a["id"]
            assert a["area"] == int(expected.sum()) > 0
            ys, xs = np.nonzero(expected)
            x0, y0 = xs.min(), ys.min()
            assert a["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
            coverage += decoded
        assert np.all(coverage == 1)  # things and stuff regions tile the image exactly once
        assert 0 not in np.unique(sem)  # 0 (background) is reserved, never written


def test_tags_are_the_stuff_classes_in_the_sem_mask(corpus):
    out, cfg, document = corpus
    names = {c["id"]: c["name"] for c in document["categories"] if c["supercategory"] == "stuff"}
    seen_counts = set()
    for image in document["images"]:
        sem = _png(out / image["sem_file"])
        present = sorted(names[v] for v in np.unique(sem) if v in names)
        assert sorted(image["tags"]) == present and present
        stuff_anns = {a["category_id"] for a in document["annotations"] if a["image_id"] == image["id"] and not a["isthing"]}
        assert {names[c] for c in stuff_anns} == set(present)
        seen_counts.add(len(present))
    assert len(seen_counts) > 1  # the number of stuff regions varies over images


def test_smaller_things_lie_on_top_of_larger_ones():
    cfg = SegmentationSynthConfig(**BUSY)
    occluded_pixels = 0
    for index in range(cfg.num_images):
        sample = synthesize_segmentation_image(index, cfg)
        areas = [t["full_area"] for t in sample.things]
        assert areas == sorted(areas, reverse=True)  # instance ids in paint order: larger first
        for k, (thing, amodal) in enumerate(zip(sample.things, sample.amodal_masks)):
            visible = sample.inst == thing["instance_id"]
            assert not np.any(visible & ~amodal) and amodal.sum() == thing["full_area"]
            hidden = amodal & ~visible
            occluded_pixels += int(hidden.sum())
            # every hidden pixel shows a thing painted later, i.e. one no larger than this one
            assert np.all(sample.inst[hidden] > thing["instance_id"])
            later = np.zeros_like(amodal)
            for other in sample.amodal_masks[k + 1 :]:
                later |= other
            assert np.array_equal(hidden, amodal & later)
            assert visible.sum() >= cfg.min_visible_fraction * thing["full_area"]
        top = sample.things[-1]
        assert (sample.inst == top["instance_id"]).sum() == top["full_area"]  # the smallest is never covered
    assert occluded_pixels > 500  # the corpus really has overlaps


def test_texture_strength_controls_texture():
    flat = synthesize_segmentation_image(0, SegmentationSynthConfig(texture_strength=0.0, seed=1))
    busy = synthesize_segmentation_image(0, SegmentationSynthConfig(texture_strength=1.0, seed=1))
    assert np.array_equal(flat.sem, busy.sem) and np.array_equal(flat.inst, busy.inst)  # same layout
    for value in np.unique(flat.sem):
        region = flat.sem == value
        assert flat.image[region].std(axis=0).max() < 1.0  # one colour per region
        assert busy.image[region].std(axis=0).max() > 10.0


@pytest.mark.parametrize(
    "kwargs, key",
    [({"num_images": 0}, "num_images"), ({"width": 8}, "width"), ({"thing_classes": []}, "thing_classes"),
     ({"stuff_classes": ["sky", "sky"]}, "stuff_classes"), ({"stuff_classes": ["disc"]}, "stuff_classes"),
     ({"stuff_regions_max": 4}, "stuff_regions_max"), ({"objects_min": 3, "objects_max": 2}, "objects_max"),
     ({"object_size_min": 0.5, "object_size_max": 0.4}, "object_size_max"),
     ({"texture_strength": 1.5}, "texture_strength"), ({"min_visible_fraction": -0.1}, "min_visible_fraction"),
     ({"jpeg_quality": 101}, "jpeg_quality")],
)  # fmt: skip
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"synth\.{key} "):
        SegmentationSynthConfig(**kwargs)


def test_cli_synth_segmentation(tmp_path, capfd):
    out = tmp_path / "cli"
    argv = ["synth", "segmentation", "--images", "3", "--seed", "7", "--width", "96", "--height", "64", "--out", str(out)]
    assert main(argv + ["--set", "synth.width=200", "--set", "synth.texture_strength=0.2"]) == 0  # flags win
    captured = capfd.readouterr()
    assert "wrote 3 images (96x64, seed 7)" in captured.out and str(out) in captured.out
    assert len(captured.out.strip().splitlines()) == 1
    document = json.loads((out / "annotations.json").read_text())
    assert [(im["width"], im["height"]) for im in document["images"]] == [(96, 64)] * 3
    for im in document["images"]:
        assert _png(out / "images" / im["file_name"]).shape == (64, 96, 3)
        assert _png(out / im["inst_file"]).shape == (64, 96)
    assert "texture_strength: 0.2" in (out / "synth_config.yaml").read_text()
    direct = tmp_path / "direct"
    write_segmentation_corpus(str(direct), SegmentationSynthConfig(num_images=3, seed=7, width=96, height=64,
                                                                   texture_strength=0.2))  # fmt: skip
    assert _files(direct) == _files(out)  # the CLI is the library call
    assert main(["synth", "segmentation", "--out", str(tmp_path / "bad"), "--set", "synth.objects_max=-1"]) == 2
    assert main(["synth", "segmentation", "--out", str(tmp_path / "bad"), "--set", "synth.nosuch=1"]) == 2
    assert "objects_max" in capfd.readouterr().err
    assert not (tmp_path / "bad").exists()
