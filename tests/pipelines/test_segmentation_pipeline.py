"""The segmentation pipeline (things from boxes, stuff from tags) end to end on a small synthetic corpus."""

import hashlib
import io
import json
import tarfile

import cv2
import numpy as np
import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra import storage
from labelmill.infra.config import load_config
from labelmill.infra.dataset_version import read_inputs, read_latest
from labelmill.infra.formats.items import INPUT_STATUSES
from labelmill.infra.formats.shards import sample_key_from_member
from labelmill.infra.validate import validate_version
from labelmill.models.segmentation_metrics import SemanticAccumulator
from labelmill.operators.synth.segmentation import SegmentationSynthConfig, write_segmentation_corpus
from labelmill.pipelines.config import SegmentationConfig
from labelmill.pipelines.segmentation import run_segmentation

OVERRIDES = ["input.stuff=[grass,sky,water]"]
MISSING, BROKEN = "synth_000005", "synth_000006"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("segcorpus")
    write_segmentation_corpus(str(root), SegmentationSynthConfig(num_images=7, seed=0))
    (root / "images" / f"{MISSING}.jpg").unlink()  # fails in the corpus reader
    (root / "images" / f"{BROKEN}.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")  # fails in decode
    return root


def _cfg(*extra):
    return load_config(SegmentationConfig, None, [*OVERRIDES, *extra])


def _run(corpus, out, **kw):
    return run_segmentation(_cfg(*kw.pop("overrides", ())), input_url=str(corpus / "annotations.json"),
                            output_url=str(out), images=str(corpus / "images"), **kw)


@pytest.fixture(scope="module")
def local_run(corpus, tmp_path_factory):
    """The default pipeline: trains the tag classifier on the corpus's tags, under OUT/models/classifier."""
    out = tmp_path_factory.mktemp("seg_local")
    return out, _run(corpus, out, engine_name="local")


def _classifier(out):
    (path,) = sorted((out / "models" / "classifier").glob("*.pt"))
    return path


def _samples(version_url):
    """{sample key: {extension: bytes}} of every shard of a version."""
    out = {}
    for url in dv.shard_urls(version_url):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as tar:
            for member in tar.getmembers():
                stem, extension = member.name.split(".", 1)
                out.setdefault(sample_key_from_member(stem), {})[extension] = tar.extractfile(member).read()
    return out


def _digest(version_url):
    files = {url.rsplit("/", 1)[1]: url for url in dv.shard_urls(version_url)}
    for name in ("index.parquet", "inputs.parquet"):
        files[name] = storage.join(version_url, name)
    return {name: hashlib.sha256(storage.read_bytes(url)).hexdigest() for name, url in files.items()}


def test_local_run_writes_a_valid_version_with_every_image_accounted(local_run):
    out, run = local_run
    assert validate_version(str(out)) == []
    assert read_latest(str(out)) == run.version_id
    inputs = run.stats["inputs"]
    assert inputs["in"] == 7 == inputs["written"] + inputs["filtered"] + inputs["failed"]
    assert inputs["failed"] == 2 and inputs["written"] == 5 == run.stats["samples"]
    assert set(run.stats["stages"]) == {"decode", "things", "stuff", "samples", "pack"}
    decode = run.stats["stages"]["decode"]  # the corrupt image failed in decode, and says why
    assert decode["failed"] == 1 and "cannot decode" in next(iter(decode["failed_reasons"]))
    assert run.stats["stages"]["things"]["failed"] == 0 and decode["items_per_s"] > 0
    rows = {r["input_key"]: r for r in read_inputs(run.version_url).to_pylist()}
    assert all(r["status"] in INPUT_STATUSES and r["reason"] for r in rows.values())
    assert rows[MISSING]["status"] == "failed" and "missing image file" in rows[MISSING]["reason"]
    assert rows[BROKEN]["status"] == "failed" and "cannot decode" in rows[BROKEN]["reason"]
    assert rows[BROKEN]["boxes_in"] > 0 and rows[BROKEN]["frames_in"] == 0
    for key, row in rows.items():
        if key not in (MISSING, BROKEN):
            assert row["status"] == "written" and row["reason"] == "kept" and row["boxes_labelled"] >= 1
            assert 0.0 <= row["ignore_fraction"] <= 0.5 and row["frames_written"] == 1


def test_masks_decode_and_agree_with_the_json_segments(local_run):
    _, run = local_run
    samples = _samples(run.version_url)
    assert len(samples) == 5
    for key, fields in samples.items():
        assert set(fields) == {"jpg", "sem.png", "inst.png", "json"}
        doc = json.loads(fields["json"])
        image = cv2.imdecode(np.frombuffer(fields["jpg"], np.uint8), cv2.IMREAD_COLOR)
        sem = cv2.imdecode(np.frombuffer(fields["sem.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        inst = cv2.imdecode(np.frombuffer(fields["inst.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert doc["key"] == key and sem.dtype == np.uint8 and inst.dtype == np.uint16
        assert image.shape[:2] == sem.shape == inst.shape == (doc["height"], doc["width"])
        ids = {s["id"] for s in doc["segments"]}
        assert set(np.unique(inst).tolist()) - {0} == ids and ids
        sources = {}
        for seg in doc["segments"]:
            mask = inst == seg["id"]
            assert seg["area"] == int(mask.sum()) and 0.0 <= seg["score"] <= 1.0
            assert (sem[mask] == seg["category_id"]).all()
            sources.setdefault(seg["source"], set()).add(seg["category"])
            ys, xs = np.nonzero(mask)
            assert seg["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert sources["grabcut"] <= {"disc", "square", "triangle"}
        assert sources.get("gradcam", set()) <= set(doc["tags"]) and sources.get("gradcam")  # one per tagged class
        assert len([s for s in doc["segments"] if s["source"] == "gradcam"]) == len(sources["gradcam"])
        assert set(np.unique(sem[inst == 0]).tolist()) <= {0, 255}
        assert 0.0 <= doc["quality"]["ignore_fraction_of_boxes"] <= 0.5


def test_labels_match_the_synthetic_ground_truth(local_run, corpus):
    _, run = local_run
    doc = json.loads((corpus / "annotations.json").read_text())
    by_name = {im["file_name"].rsplit(".", 1)[0]: im for im in doc["images"]}
    boxes = {}
    for ann in doc["annotations"]:
        if ann["isthing"]:
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    acc = SemanticAccumulator(num_classes=4)  # background + the 3 thing classes
    for key, fields in _samples(run.version_url).items():
        sem = cv2.imdecode(np.frombuffer(fields["sem.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        sem = np.where((sem <= 3) | (sem == 255), sem, 0).astype(np.uint8)  # labelled stuff -> background
        gt = cv2.imread(str(corpus / "gt" / f"{key}_sem.png"), cv2.IMREAD_UNCHANGED)
        gt = np.where(gt <= 3, gt, 0).astype(np.uint8)  # GT stuff -> background
        union = np.zeros(gt.shape, bool)
        for x, y, w, h in boxes[by_name[key]["id"]]:
            union[int(np.floor(y)):int(np.ceil(y + h)), int(np.floor(x)):int(np.ceil(x + w))] = True
        gt[~union] = 255  # scored on box pixels only
        acc.add(sem, gt)
    result = acc.result()
    assert result["miou"] >= 0.85, result["iou"]
    assert result["labelled_fraction"] >= 0.7


def test_rerun_is_up_to_date_and_a_new_filter_reuses_the_labels(local_run, corpus):
    out, run = local_run
    again = _run(corpus, out, engine_name="local")
    assert again.up_to_date and again.version_id == run.version_id
    strict = _run(corpus, out, engine_name="local", overrides=["filter.max_ignore_fraction=0.0"])
    assert not strict.up_to_date and validate_version(str(out)) == []
    stages = strict.stats["stages"]
    assert stages["decode"]["computed"] == stages["things"]["computed"] == stages["stuff"]["computed"] == 0
    assert stages["samples"]["computed"] == 5
    assert len(list((out / "models" / "classifier").glob("*.pt"))) == 1  # the classifier was reused, not retrained
    rows = read_inputs(strict.version_url).to_pylist()
    filtered = [r for r in rows if r["status"] == "filtered"]
    assert filtered and all(r["reason"].startswith("ignore_fraction ") for r in filtered)
    assert strict.stats["inputs"]["written"] == 5 - len(filtered)


def test_engines_write_byte_identical_shards(local_run, corpus, tmp_path, ray_session):
    out, run = local_run
    digests = {"local": _digest(run.version_url)}
    given = [f"stuff.classifier={_classifier(out)}"]  # the local run's classifier: no training per engine
    for engine in ("beam", "ray"):
        other = _run(corpus, tmp_path / engine, engine_name=engine, overrides=given)
        assert validate_version(str(tmp_path / engine)) == [], engine
        digests[engine] = _digest(other.version_url)
    assert digests["local"] == digests["beam"] == digests["ray"]
    assert any(name.endswith(".tar") for name in digests["local"])


def test_cli_run_segmentation_prints_the_funnel(local_run, corpus, tmp_path, capsys):
    from labelmill.pipelines.cli import main

    out = tmp_path / "cli"
    args = ["-q", "run", "segmentation", "--input", str(corpus / "annotations.json"), "--output", str(out),
            "--images", str(corpus / "images")]
    for o in [*OVERRIDES, f"stuff.classifier={_classifier(local_run[0])}"]:
        args += ["--set", o]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"dataset {out}/versions/" in printed and "images 7: written 5, filtered 0, failed 2" in printed
    assert "failed 1:" in printed
    assert main(args) == 0 and "up to date" in capsys.readouterr().out


def test_an_image_with_tags_only_is_labelled_with_stuff_and_the_crf_stage_runs(local_run, corpus, tmp_path):
    out, _ = local_run
    doc = json.loads((corpus / "annotations.json").read_text())
    first = doc["images"][0]["id"]
    doc["annotations"] = [a for a in doc["annotations"] if not (a["image_id"] == first and a["isthing"])]
    gt = tmp_path / "tags_only.json"
    gt.write_text(json.dumps(doc))
    cfg = _cfg(f"stuff.classifier={_classifier(out)}", "crf.enabled=true")
    run = run_segmentation(cfg, input_url=str(gt), output_url=str(tmp_path / "out"), images=str(corpus / "images"),
                           engine_name="local")
    assert validate_version(str(tmp_path / "out")) == []
    assert set(run.stats["stages"]) == {"decode", "things", "stuff", "crf", "samples", "pack"}
    rows = {r["input_key"]: r for r in read_inputs(run.version_url).to_pylist()}
    assert rows["synth_000000"]["status"] == "written" and rows["synth_000000"]["boxes_in"] == 0
    fields = _samples(run.version_url)["synth_000000"]
    segments = json.loads(fields["json"])["segments"]
    assert segments and {s["source"] for s in segments} == {"gradcam"}
    inst = cv2.imdecode(np.frombuffer(fields["inst.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(inst).tolist()) - {0} == {s["id"] for s in segments}
