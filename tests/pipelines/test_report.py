"""`labelmill report`: the HTML page and its PNGs for pose3d and segmentation versions, escaping,
the shard fallback, the CLI, and a render in headless Chromium."""

import html
import re
import shutil
import subprocess

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelmill.infra.config import load_config
from labelmill.infra.dataset_version import read_inputs, resolve_version
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import write_synthetic_corpus
from labelmill.operators.synth.segmentation import SegmentationSynthConfig, write_segmentation_corpus
from labelmill.pipelines.config import Pose3dConfig, SegmentationConfig
from labelmill.pipelines.pose3d import run_pose3d
from labelmill.pipelines.report import write_report
from labelmill.pipelines.segmentation import run_segmentation

POSE_OVERRIDES = ["keypoints.backend=precomputed", "fit.solver.max_iter=15"]
HOSTILE_KEY = '<script>alert("key")</script>'
HOSTILE_REASON = '<img src=x onerror=alert(1)> & "quoted" $x^2$ $$'


def _between(losses):
    """A threshold with some losses below it and some above."""
    finite = sorted(v for v in losses if v is not None and np.isfinite(v))
    return (finite[0] + finite[-1]) / 2


@pytest.fixture(scope="module")
def pose_out(tmp_path_factory):
    """A pose3d version with written, filtered and failed videos: a first run, then the loss filter
    rerun (fits reused) with a video threshold between the lowest and the highest video loss."""
    root = tmp_path_factory.mktemp("report_corpus")
    write_synthetic_corpus(str(root), SynthConfig(num_videos=3, num_frames=10, seed=5))
    (root / "videos" / "brokenvideo_000001_000011.mp4").write_bytes(b"not a video")
    (root / "keypoints" / "brokenvideo.json").write_text(next((root / "keypoints").glob("*.json")).read_text())
    with open(root / "manifest.csv", "a") as f:
        f.write("brokenvideo,1,11,wave,train\n")
    out = tmp_path_factory.mktemp("report_pose") / "out"
    manifest = str(root / "manifest.csv")
    first = run_pose3d(load_config(Pose3dConfig, None, POSE_OVERRIDES), input_url=manifest, output_url=str(out),
                       engine_name="local")
    threshold = _between(read_inputs(first.version_url).column("video_loss").to_pylist())
    cfg = load_config(Pose3dConfig, None, [*POSE_OVERRIDES, f"filter.video_loss_threshold={threshold}"])
    run = run_pose3d(cfg, input_url=manifest, output_url=str(out), engine_name="local")
    statuses = read_inputs(run.version_url).column("status").to_pylist()
    assert {"written", "filtered", "failed"} <= set(statuses)
    return out, threshold


@pytest.fixture(scope="module")
def seg_out(tmp_path_factory):
    """A segmentation version of 3 images, one of them filtered (max_ignore_fraction between the lowest
    and the highest ignore fraction of a first run)."""
    root = tmp_path_factory.mktemp("report_segcorpus")
    write_segmentation_corpus(str(root), SegmentationSynthConfig(num_images=3, seed=1))
    out = tmp_path_factory.mktemp("report_seg") / "out"
    kw = dict(input_url=str(root / "annotations.json"), output_url=str(out), images=str(root / "images"),
              engine_name="local")
    first = run_segmentation(load_config(SegmentationConfig, None, ["stuff.enabled=false"]), **kw)
    threshold = _between(read_inputs(first.version_url).column("ignore_fraction").to_pylist())
    run = run_segmentation(load_config(SegmentationConfig, None, ["stuff.enabled=false",
                                                                  f"filter.max_ignore_fraction={threshold}"]), **kw)
    assert {"written", "filtered"} <= set(read_inputs(run.version_url).column("status").to_pylist())
    return out


def _page(index_path):
    text = open(index_path, encoding="utf-8").read()
    return text, re.findall(r'<img src="([^"]+)"', text)


def _check_folder(report_dir, index_path):
    """Every image the page names exists and decodes; every PNG of the folder is on the page."""
    text, sources = _page(index_path)
    assert sources
    for name in sources:
        assert "/" not in name and (report_dir / name).is_file(), name
        image = cv2.imread(str(report_dir / name))
        assert image is not None and image.shape[0] > 50 and image.shape[1] > 50 and image.std() > 5, name
    assert sorted(sources) == sorted(p.name for p in report_dir.glob("*.png"))
    return text, sources


def test_pose3d_report_shows_funnel_losses_throughput_and_gallery(pose_out, tmp_path):
    out, threshold = pose_out
    report_dir = tmp_path / "report"
    index = write_report(str(out), str(report_dir), gallery=2, frames_per_video=2)
    assert index == str(report_dir / "index.html")
    text, sources = _check_folder(report_dir, index)
    assert {"d0_funnel.png", "d0_losses.png", "d0_throughput.png"} <= set(sources)
    inputs = read_inputs(resolve_version(str(out)).url).to_pylist()
    written = [r["input_key"] for r in inputs if r["status"] == "written"]
    filtered = [r["input_key"] for r in inputs if r["status"] == "filtered"]
    failed = [r for r in inputs if r["status"] == "failed"]
    assert any(name.startswith("d0_kept_") for name in sources)
    assert any(name.startswith("d0_filtered_") for name in sources)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    kept_captions = [c for c in captions if ": written (kept)" in c]
    assert kept_captions and all(any(html.escape(k) in c for k in written) for c in kept_captions)
    assert any(html.escape(k) in c and ": filtered (" in c for c in captions for k in filtered)
    assert all("from the stage results" in c for c in kept_captions)
    # the thresholds of this version's config, and the frame losses of every fitted video
    assert f"filter.video_loss_threshold = {threshold:g}" in text
    fitted = len(written) + len(filtered)
    assert f"the filter results of {fitted} of {fitted} fitted videos" in text
    # the failure reason is in the reasons table
    assert html.escape(failed[0]["reason"]) in text and "<td>failed</td>" in text
    # per-stage rows in pipeline order
    throughput = text.split("<h3>Per-stage throughput</h3>", 1)[1].split("<h3>", 1)[0]
    stages = re.findall(r"<tr><td>([a-z]+)</td>", throughput)
    assert stages == ["decode", "keypoints", "track", "init", "fit", "filter", "samples", "pack"]


def test_segmentation_report_shows_masks_of_kept_and_filtered_images(seg_out, tmp_path):
    report_dir = tmp_path / "report"
    index = write_report(str(seg_out), str(report_dir), gallery=3)
    text, sources = _check_folder(report_dir, index)
    inputs = read_inputs(resolve_version(str(seg_out)).url).to_pylist()
    kept = sum(r["status"] == "written" for r in inputs)
    assert len([s for s in sources if s.startswith("d0_kept_")]) == kept
    assert len([s for s in sources if s.startswith("d0_filtered_")]) == len(inputs) - kept
    assert "filter.max_ignore_fraction = " in text and "ignore (255) as black diagonal stripes" in text
    assert "from the shards" in text and "from the stage results" in text  # kept from shards, filtered from results


def _copy_with_hostile_failure(out, into):
    """A copy of ``out`` whose failed input has a hostile key and reason."""
    shutil.copytree(out, into)
    version = resolve_version(str(into)).url
    rows = read_inputs(version).to_pylist()
    for row in rows:
        if row["status"] == "failed":
            row["input_key"], row["reason"] = HOSTILE_KEY, HOSTILE_REASON
    table = pa.Table.from_pylist(rows, schema=read_inputs(version).schema)
    pq.write_table(table, f"{version}/inputs.parquet")
    return into


def test_keys_and_reasons_are_escaped(pose_out, tmp_path):
    out = _copy_with_hostile_failure(pose_out[0], tmp_path / "hostile")
    index = write_report(str(out), str(tmp_path / "report"), gallery=1)
    text, _ = _check_folder(tmp_path / "report", index)
    assert "<script>" not in text and "<img src=x" not in text
    assert html.escape(HOSTILE_KEY) in text and html.escape(HOSTILE_REASON) in text


def test_gallery_falls_back_to_the_shards_without_stage_results(pose_out, tmp_path):
    out = tmp_path / "no_results"
    shutil.copytree(pose_out[0], out)
    shutil.rmtree(out / "results")
    index = write_report(str(out), str(tmp_path / "report"), gallery=1)
    text, sources = _check_folder(tmp_path / "report", index)
    assert "d0_kept_00.png" in sources and not any(s.startswith("d0_filtered_") for s in sources)
    assert "from the shards; initialisation drawn with the fitted camera" in text
    assert "filtered video(s) not shown" in text
    assert "kept frames only" in text  # the frame-loss histogram falls back to index.parquet


def test_cli_writes_the_report_and_prints_its_path(pose_out, seg_out, tmp_path, capsys):
    from labelmill.pipelines.cli import main

    report_dir = tmp_path / "cli"
    write_report([str(seg_out), str(seg_out), str(pose_out[0])], str(report_dir), gallery=3)  # stale figures
    (report_dir / "notes.png").write_bytes(b"not ours")
    assert main(["-q", "report", str(pose_out[0]), str(seg_out), "--out", str(report_dir), "--gallery", "1"]) == 0
    assert capsys.readouterr().out == f"report: {report_dir}/index.html\n"
    (report_dir / "notes.png").unlink()  # a file of the user's is left alone
    text, sources = _check_folder(report_dir, report_dir / "index.html")
    assert 'id="d0"' in text and 'id="d1"' in text and "d1_funnel.png" in sources
    assert main(["report", str(pose_out[0]), "--out", str(report_dir), "--gallery", "-1"]) == 2
    assert main(["-q", "report", str(tmp_path / "nothing"), "--out", str(report_dir)]) == 1


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium not found (install it: apt-get install -y chromium)")


_CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-images", loaded + "/" + images.length);
});
</script></body>"""


def test_page_renders_in_headless_chromium(pose_out, seg_out, tmp_path):
    browser = _chromium()
    report_dir = tmp_path / "report"
    index = write_report([str(pose_out[0]), str(seg_out)], str(report_dir), gallery=1)
    text, sources = _page(index)
    # a copy of the page that records how many of its images loaded (same folder, same relative names)
    (report_dir / "check.html").write_text(text.replace("</body>", _CHECK_SCRIPT), encoding="utf-8")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", f"file://{report_dir}/check.html"],
                         capture_output=True, text=True, timeout=180)
    assert f'data-images="{len(sources)}/{len(sources)}"' in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", f"file://{index}"],
                   capture_output=True, timeout=180, check=True)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (2000, 1280)
    assert image.std() > 20 and (image < 250).any(-1).mean() > 0.05  # not a blank page
