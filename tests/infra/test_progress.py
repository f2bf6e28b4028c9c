"""Progress: bars on a terminal, periodic lines in logs, nothing when quiet; per-stage summaries."""

import logging

import pytest

from labelmill.infra.progress import StageProgress, progress_mode


def test_mode_follows_the_override_quiet_and_ci(monkeypatch):
    monkeypatch.setenv("LABELMILL_PROGRESS", "bars")
    assert progress_mode() == "bars"
    monkeypatch.delenv("LABELMILL_PROGRESS")
    labelmill = logging.getLogger("labelmill")
    previous = labelmill.level
    try:
        labelmill.setLevel(logging.WARNING)  # -q
        assert progress_mode() == "off"
        labelmill.setLevel(logging.INFO)
        monkeypatch.setenv("CI", "true")
        assert progress_mode() == "lines"
    finally:
        labelmill.setLevel(previous)
    with pytest.raises(ValueError, match="progress mode"):
        StageProgress("local", ["a"], 3, mode="fancy")


def test_lines_report_every_stage_with_rate_and_eta(caplog):
    progress = StageProgress("local", ["decode", "fit"], 10, mode="lines", interval_s=0.0)
    with caplog.at_level(logging.INFO, logger="labelmill.infra.progress"):
        progress.update(0, 4)
        progress.update(1, 2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[-1].startswith("local: decode 4/10, fit 2/10 (20%), ")
    assert "items/s, ETA " in lines[-1]
    progress.close()


def test_bars_draw_on_stderr_and_off_draws_nothing(capsys):
    bars = StageProgress("local", ["decode", "fit"], 3, mode="bars")
    for _ in range(3):
        bars.update(0, 1)
    bars.update(1, 3)
    bars.close()
    err = capsys.readouterr().err
    assert "local decode" in err and "3/3" in err and "local fit" in err
    quiet = StageProgress("local", ["decode"], 3, mode="off")
    quiet.update(0, 3)
    quiet.close()
    assert capsys.readouterr().err == ""
