"""`labelmill versions` and `labelmill gc` on real pose3d outputs, run in-process."""

import json
import os

import pytest

from labelmill.infra import dataset_version as dv
from labelmill.pipelines.config import Pose3dConfig
from labelmill.pipelines import cli

from version_outputs import out, pristine  # noqa: F401 (fixtures)




@pytest.fixture
def run_cli(capsys):
    def run(*argv):
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_versions_lists_oldest_first_marks_latest_and_shows_config_diffs(pristine, out, run_cli):
    code, text, _ = run_cli("versions", out)
    assert code == 0
    table = text.split("\n\n")[0].splitlines()
    assert table[0].split()[:2] == ["version", "created_utc"]
    assert [line.split()[0] for line in table[1:]] == [*pristine.ids[:2], "*"]
    assert table[-1].split()[1] == pristine.ids[-1]
    default = Pose3dConfig().filter.frame_loss_threshold
    assert f"filter.frame_loss_threshold: {default} -> 0.02" in text
    assert f"filter.frame_loss_threshold: 0.02 -> {default}" in text and "fit.solver.max_iter: 15 -> 16" in text
    assert text.index(f"{pristine.ids[1]} (vs {pristine.ids[0]}):") < text.index(f"{pristine.ids[2]} (vs {pristine.ids[1]}):")
    code, text, _ = run_cli("versions", out, "--json")
    document = json.loads(text)
    assert [v["version"] for v in document] == pristine.ids and [v["latest"] for v in document] == [False, False, True]
    assert document[1]["changes"] == [{"key": "filter.frame_loss_threshold", "kind": "changed", "old": default,
                                       "new": 0.02}]
    assert document[0]["inputs"] == {"in": 4, "written": 4, "filtered": 0, "failed": 0}
    assert set(document[0]["frames"]) == {"in", "kept"} and document[0]["shards"] == 1


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names)


def test_gc_dry_run_then_gc(pristine, out, run_cli):
    before = all_files(out)
    code, text, _ = run_cli("gc", out, "--keep", "0", "--dry-run", "--json")
    assert code == 0 and all_files(out) == before
    dry = json.loads(text)
    assert dry["dry_run"] and dry["removed_versions"] == pristine.ids[:2] and dry["kept"] == [pristine.ids[2]]
    assert dry["categories"]["results"]["files"] > 0 and dry["categories"]["objects"]["files"] == 6
    code, text, _ = run_cli("gc", out, "--keep", "0", "--json")
    assert code == 0
    done = json.loads(text)
    assert {k: v for k, v in done.items() if k != "dry_run"} == {k: v for k, v in dry.items() if k != "dry_run"}
    assert dv.list_versions(out) == [pristine.ids[2]]
    code, text, _ = run_cli("validate", out)
    assert code == 0 and text.startswith("OK ")
    code, text, _ = run_cli("gc", out, "--keep", "0")  # nothing left to do
    assert code == 0 and "total               0 files       0.00 MB removed" in text


def test_gc_text_names_what_is_removed(pristine, out, run_cli):
    code, text, _ = run_cli("gc", out, "--keep", "1", "--dry-run")
    assert code == 0
    assert f"would remove version {pristine.ids[0]}" in text and f"would remove version {pristine.ids[1]}" not in text
    assert f"keeping 2 versions: {pristine.ids[1]}, {pristine.ids[2]}" in text
    assert "results" in text and " MB" in text


def test_gc_usage_errors_exit_2(tmp_path, run_cli):
    code, _, err = run_cli("gc", str(tmp_path), "--keep", "0")
    assert code == 2 and "has no LATEST" in err
    code, _, err = run_cli("gc", str(tmp_path), "--keep", "-1")
    assert code == 2 and "--keep must be >= 0" in err
    with pytest.raises(SystemExit) as caught:
        cli.main(["gc", str(tmp_path)])  # --keep is required
    assert caught.value.code == 2
    code, _, err = run_cli("versions", str(tmp_path))
    assert code == 2 and "no committed version" in err
