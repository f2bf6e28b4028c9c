"""`labelmill bench segmentation` (pipelines/experiments/segmentation_bench.py) at a tiny size."""

import contextlib
import io
import json
import math

import pytest
import torch

from labelmill.operators.synth.segmentation import SegmentationSynthConfig, synthesize_segmentation_image
from labelmill.pipelines.cli import main
from labelmill.pipelines.experiments.segmentation_bench import (
    BOX_FIGURES,
    TORCH_FIGURES,
    SegmentationBenchConfig,
    _threads,
    format_report,
    ratios,
)

TINY = ["--images", "3", "--width", "64", "--height", "48", "--repeats", "1", "--workers", "2"]


@pytest.fixture(scope="module")
def report():
    """One tiny run through the CLI, JSON on stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["-q", "bench", "segmentation", *TINY, "--threads", "1", "--json"])
    assert code == 0
    return json.loads(out.getvalue())


def test_every_figure_is_present_positive_and_consistent(report):
    assert set(report["figures"]) == {"cpu"}
    figures = report["figures"]["cpu"]
    assert set(figures) == set(BOX_FIGURES) | set(TORCH_FIGURES)
    synth = SegmentationSynthConfig(num_images=3, width=64, height=48, seed=0)
    boxes = sum(len(synthesize_segmentation_image(i, synth).things) for i in range(3))
    assert report["corpus"]["boxes"] == boxes > 0
    assert report["corpus"]["classes"] == 1 + len(synth.thing_classes) + len(synth.stuff_classes)
    for name, fig in figures.items():
        assert fig["unit"] == ("boxes/s" if name in BOX_FIGURES else "images/s"), name
        assert fig["items"] == (boxes if name in BOX_FIGURES else 3), name
        assert len(fig["values"]) == len(fig["seconds"]) == 1, name
        for key in ("median", "min", "max"):
            assert math.isfinite(fig[key]) and fig[key] > 0, (name, key, fig[key])
        assert fig["min"] <= fig["median"] <= fig["max"]
        assert fig["median"] == pytest.approx(fig["items"] / fig["seconds"][0]), name
    assert figures["box_labels"]["workers"] == 1 and figures["box_labels_parallel"]["workers"] == 2
    assert figures["crf_palette"]["size"] == [64, 48] and figures["crf_direct_small"]["size"] == [40, 30]
    assert figures["crf_palette"]["classes"] == report["corpus"]["classes"]


def test_ratios_come_from_the_same_repeat(report):
    figures, ratios = report["figures"]["cpu"], report["ratios"]["cpu"]
    for top, bottom in (("box_labels_parallel", "box_labels"), ("box_labels", "grabcut"),
                        ("gradcam_block10", "gradcam_head"), ("crf_palette_small", "crf_direct_small")):
        ratio = ratios[f"{top}/{bottom}"]
        assert ratio["median"] == pytest.approx(figures[top]["values"][0] / figures[bottom]["values"][0])
    assert set(report["ratios"]) == {"cpu"}  # no cuda/cpu ratios without a CUDA device


def test_cuda_over_cpu_ratios_need_the_figure_on_both_devices():
    def fig(*values):
        return {"values": list(values)}

    boxes = {"grabcut": fig(40.0, 50.0), "box_labels": fig(36.0, 40.0)}
    torch_figs = {name: fig(10.0, 20.0) for name in TORCH_FIGURES}
    gpu = {name: fig(100.0, 100.0) for name in TORCH_FIGURES}
    only_gpu = ratios({"cpu": boxes, "cuda": gpu})  # --device cuda: the box figures alone are on the CPU
    assert set(only_gpu) == {"cpu", "cuda"} and set(only_gpu["cpu"]) == {"box_labels/grabcut"}
    assert only_gpu["cpu"]["box_labels/grabcut"] == {"median": pytest.approx(0.85), "min": 0.8, "max": 0.9}
    both = ratios({"cpu": {**boxes, **torch_figs}, "cuda:1": gpu})
    assert set(both["cuda:1/cpu"]) == set(TORCH_FIGURES)
    assert both["cuda:1/cpu"]["crf_palette"] == {"median": 7.5, "min": 5.0, "max": 10.0}


def test_hardware_and_settings_are_reported(report):
    machine = report["machine"]
    assert machine["cpus"] >= 1 and machine["cpu_model"]
    assert machine["torch_threads"] == 1 and machine["opencv_threads"] == 1  # measured under --threads 1
    assert machine["versions"]["torch"] == torch.__version__ and machine["versions"]["opencv"]
    assert "cuda" not in machine  # no CUDA device was asked for
    settings = report["settings"]
    assert settings["devices"] == ["cpu"] and settings["repeats"] == 1 and settings["crf"]["approximation"] == "palette"


def test_thread_settings_apply_inside_the_bench_only():
    import cv2

    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(3)
    cv2.setNumThreads(3)
    try:
        with _threads(1):
            assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (3, 3)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_text_report_lists_every_figure(report):
    text = format_report(report)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split() and line.split()[0] in
            set(BOX_FIGURES) | set(TORCH_FIGURES)}
    assert set(rows) == set(BOX_FIGURES) | set(TORCH_FIGURES)
    assert rows["grabcut"][1:3] == ["cpu", "boxes/s"]
    assert float(rows["crf_palette"][4]) == pytest.approx(report["figures"]["cpu"]["crf_palette"]["median"], abs=0.01)
    assert "box_labels_parallel/box_labels" in text


@pytest.mark.parametrize("flags, needle", [
    (["--images", "0"], "'images'"),
    (["--width", "8"], "'width'"),
    (["--repeats", "0"], "'repeats'"),
    (["--workers", "0"], "'workers'"),
    (["--device", "tpu"], "tpu"),
    (["--device", "cpu,cpu"], "twice"),
])
def test_bad_flags_exit_2_with_a_message(flags, needle, capsys):
    assert main(["bench", "segmentation", *flags]) == 2
    assert needle in capsys.readouterr().err


def test_cuda_without_a_device_exits_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["bench", "segmentation", "--device", "cpu,cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--images", "many"], ["--second-cue", "mcg"]])
def test_argparse_refuses_malformed_flags(flags):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "segmentation", *flags])
    assert exc.value.code == 2


def test_config_names_the_bad_field():
    with pytest.raises(ValueError, match="'direct_size'"):
        SegmentationBenchConfig(direct_size=(80, 60))  # 4800 pixels: above the direct CRF's limit
    with pytest.raises(ValueError, match="'crf_confidence'"):
        SegmentationBenchConfig(crf_confidence=1.0)
