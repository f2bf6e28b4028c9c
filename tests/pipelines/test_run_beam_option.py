"""`run pose3d --beam-option=--runner=R` (the form --help shows) sets the Beam runner; bad options exit 2."""

from labelmill.infra.engines.config import EngineConfig
from labelmill.pipelines.cli import main
from labelmill.pipelines.commands.run import _with_beam_options


def test_runner_option_sets_beam_runner_and_the_rest_pass_through():
    engine = _with_beam_options(EngineConfig(beam_options=["--a=1"]),
                                ["--runner=FlinkRunner", "--flink_master=h:8081", "--runner=SparkRunner"])
    assert engine.beam_runner == "SparkRunner"
    assert engine.beam_options == ["--a=1", "--flink_master=h:8081"]


def test_malformed_beam_options_exit_2(tmp_path, capsys):
    for option in ("runner", "--runner=", "--runner"):
        assert main(["run", "pose3d", "--input", str(tmp_path / "none"), "--output", str(tmp_path / "o"),
                     "--engine", "beam", f"--beam-option={option}"]) == 2
        assert "--beam-option" in capsys.readouterr().err
