"""Preflight: a doomed run stops before any stage, with exit code 2 and a reason; an empty run keeps LATEST."""

import json

import pytest

from labelmill.infra.preflight import PreflightError, check_inputs, check_model_file, check_output


def test_output_checks(tmp_path):
    check_output(str(tmp_path / "new" / "root"))  # created, written to, probe removed
    assert (tmp_path / "new" / "root").is_dir() and list((tmp_path / "new" / "root").iterdir()) == []
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PreflightError, match="is a file, not a folder"):
        check_output(str(blocker))
    with pytest.raises(PreflightError, match="not writable: .*Error"):
        check_output(str(blocker / "below"))
    check_output("memory://preflight-test/out")


def test_inputs_and_model_files(tmp_path):
    with pytest.raises(PreflightError, match="corpus.csv: no videos found"):
        check_inputs([], "corpus.csv", "videos")
    check_inputs([{"key": "a"}], "corpus.csv")
    check_model_file(None, "body_model.path")  # the embedded default
    with pytest.raises(PreflightError, match=r"prior.path: model file .*gmm.pkl does not exist"):
        check_model_file(str(tmp_path / "gmm.pkl"), "prior.path")


def _seg_corpus(tmp_path):
    from labelmill.operators.synth.segmentation import SegmentationSynthConfig, write_segmentation_corpus

    root = tmp_path / "corpus"
    write_segmentation_corpus(str(root), SegmentationSynthConfig(num_images=2, seed=0))
    return root


def test_cli_exit_codes_before_any_compute(tmp_path, capsys):
    from labelmill.pipelines.cli import main

    corpus = _seg_corpus(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    base = ["-q", "run", "segmentation", "--input", str(corpus / "annotations.json"), "--images",
            str(corpus / "images"), "--set", "stuff.enabled=false"]
    assert main([*base, "--output", str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["-q", "run", "pose3d", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o1")]) == 2
    assert "no videos found" in capsys.readouterr().err and not (tmp_path / "o1" / "versions").exists()
    assert main(["-q", "run", "pose3d", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o2"),
                 "--set", f"body_model.path={tmp_path / 'SMPL.pkl'}"]) == 2
    assert "body_model.path: model file" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "o3"), "--set", "stuff.enabled=true",
                 "--set", f"stuff.classifier={tmp_path / 'clf.pt'}"]) == 2
    assert "stuff.classifier: model file" in capsys.readouterr().err


def test_a_run_that_writes_nothing_keeps_latest_and_exits_1(tmp_path, capsys):
    from labelmill.infra.dataset_version import read_inputs, read_latest
    from labelmill.pipelines.cli import main

    corpus = _seg_corpus(tmp_path)
    out = tmp_path / "out"
    good = ["-q", "run", "segmentation", "--input", str(corpus / "annotations.json"), "--output", str(out),
            "--images", str(corpus / "images"), "--set", "stuff.enabled=false"]
    assert main(good) == 0
    latest = read_latest(str(out))
    # the same annotations without --images: every image file is "missing", so nothing is written
    broken = [a for a in good if a not in ("--images", str(corpus / "images"))]
    assert main(broken) == 1
    printed = capsys.readouterr().out
    assert "no input was written" in printed and "LATEST was not moved" in printed
    assert read_latest(str(out)) == latest
    failed = sorted((out / "versions").iterdir())[-1]
    rows = read_inputs(str(failed)).to_pylist()
    assert rows and all(r["status"] == "failed" and "missing image file" in r["reason"] for r in rows)
    assert main([*broken, "--allow-empty"]) == 0 and read_latest(str(out)) != latest
    assert json.loads((out / "versions" / read_latest(str(out)) / "stats.json").read_text())["samples"] == 0
