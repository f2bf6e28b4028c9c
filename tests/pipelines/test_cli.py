"""The command line: --help everywhere, exit codes, config show, the demo job."""

import json

import numpy as np
import pytest

from labelmill.pipelines.cli import COMMAND_MODULES, build_parser, main


def _subcommand_paths(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


def test_every_subcommand_has_help(capsys):
    paths = list(_subcommand_paths(build_parser()))
    assert {p[0] for p in paths} == set(COMMAND_MODULES)
    for path in paths:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0, path
        assert "usage:" in capsys.readouterr().out


def test_config_show_and_exit_codes(capsys, tmp_path):
    assert main(["config", "show", "pose3d", "--set", "fit.lambda_r=3", "--set", "filter.min_keypoints=5"]) == 0
    out = capsys.readouterr().out
    assert "lambda_r: 3.0" in out and "min_keypoints: 5" in out and "body_model:" in out
    # unknown key: usage/config error, exit 2, message names the key
    assert main(["config", "show", "pose3d", "--set", "fit.lamda_r=3"]) == 2
    assert "fit.lamda_r" in capsys.readouterr().err
    assert main(["config", "show", "pose3d", "--set", "fit.solver.line_search=newton"]) == 2
    assert "strong_wolfe" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse usage error
        main(["config", "show", "nosuchpipeline"])
    assert exc.value.code == 2
    # a run failure exits 1 and says why
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker / "out"), "--videos", "1", "--frames", "3"]) == 1
    assert "Error" in capsys.readouterr().err


def test_demo_job_end_to_end(tmp_path, capsys):
    from labelmill.infra.validate import validate_version

    out = tmp_path / "demo"
    code = main(["-q", "demo", "--out", str(out), "--videos", "2", "--frames", "12", "--engine", "local",
                 "--set", "fit.solver.max_iter=15", "--sample-media", str(tmp_path / "none"), "--seg-images", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"synthetic dataset: {out}/dataset/versions/" in printed and "inputs 2: written" in printed
    assert "accuracy on kept synthetic frames" in printed and "real clips skipped" in printed
    assert validate_version(str(out / "dataset")) == []
    assert (out / "corpus" / "manifest.csv").exists()
    assert f"segmentation dataset: {out}/seg_dataset/versions/" in printed and "images 4: written" in printed
    assert "segmentation vs GT masks: mIoU" in printed and "stuff" in printed
    assert validate_version(str(out / "seg_dataset")) == []
    assert main(["demo", "--out", str(out), "--seg-images", "-1"]) == 2


def test_cli_pipeline_names_match_the_configs():
    from labelmill.pipelines.commands._common import PIPELINE_NAMES
    from labelmill.pipelines.config import PIPELINE_CONFIGS

    assert set(PIPELINE_NAMES) == set(PIPELINE_CONFIGS)
