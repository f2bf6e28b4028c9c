"""gc: old versions and what only they referenced go; LATEST and what it needs stay; runs are respected."""

import json
import os
import time

import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra import gc as gc_module
from labelmill.infra import leases
from labelmill.infra.gc import (
    MissingLatestError,
    StalePlanError,
    apply_gc,
    collect,
    plan_gc,
)
from labelmill.infra.leases import LeaseBusyError
from labelmill.infra.validate import validate_version
from labelmill.infra.version_results import read_result_keys

from version_outputs import VERSION_SETTINGS, out, pristine, run, work  # noqa: F401 (fixtures)




def files_under(root: str) -> set[str]:
    found = set()
    for folder, _, names in os.walk(root):
        for name in names:
            found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


def only_latest_needs(out: str) -> set[str]:
    """Every result and shard object file that no version but LATEST's references: what keep=0 leaves."""
    latest_url = dv.version_url(out, dv.read_latest(out))
    keys = {(stage, key) for _, chain in read_result_keys(latest_url).values() for stage, key in chain.items()}
    shards = {entry["path"].rsplit("/", 1)[1].rsplit(".", 1)[0] for entry in dv.read_manifest(latest_url)}
    kept = set()
    for path in files_under(out):
        parts = path.split(os.sep)
        if parts[0] == "results" and (parts[1], parts[3].split(".", 1)[0]) in keys:
            kept.add(path)
        elif parts[0] == "objects" and parts[-1].split(".", 1)[0] in shards:
            kept.add(path)
    return kept


def test_keep_0_removes_old_versions_and_exactly_what_only_they_referenced(pristine, out):
    before = files_under(out)
    expected_kept = only_latest_needs(out)
    plan = collect(out, 0)
    after = files_under(out)
    latest = dv.read_latest(out)
    assert latest == pristine.ids[-1]
    assert plan.kept == (latest,) and set(plan.removed_versions) == set(pristine.ids[:2])
    assert dv.list_versions(out, committed_only=False) == [latest]
    stored = {p for p in after if p.split(os.sep)[0] in ("results", "objects")}
    assert stored == expected_kept
    removed = before - after
    assert plan.categories["results"].files == len({p for p in removed if p.startswith("results")})
    # two shards, each a tar, its index object and its sidecar
    assert plan.categories["objects"].files == len({p for p in removed if p.startswith("objects")}) == 6
    assert plan.categories["versions"].files == len({p for p in removed if p.startswith("versions")})
    assert plan.categories["results"].bytes > 0 and plan.bytes == sum(c.bytes for c in plan.categories.values())
    # LATEST is whole, and a rerun of its config has nothing to do
    assert validate_version(out) == []
    again = run(pristine.manifest, out, *VERSION_SETTINGS[-1])
    assert again.up_to_date and again.version_id == latest
    # the first version's config: fit onward was only referenced by the removed versions
    first = run(pristine.manifest, out, *VERSION_SETTINGS[0])
    assert not first.up_to_date
    assert work(first) == {"decode": (0, 4), "keypoints": (0, 4), "track": (0, 4), "init": (0, 4),
                           "fit": (4, 0), "filter": (4, 0), "samples": (4, 0)}
    assert first.stats["stages"]["pack"]["computed"] == 1
    assert validate_version(out) == []


def test_keep_1_keeps_the_version_before_latest_and_its_results(pristine, out):
    plan = collect(out, 1)
    assert plan.removed_versions == (pristine.ids[0],)
    assert dv.list_versions(out) == sorted(pristine.ids[1:])
    second = dv.version_url(out, pristine.ids[1])
    assert validate_version(second) == []
    again = run(pristine.manifest, out, *VERSION_SETTINGS[1])  # the second version's results are all there
    assert set(work(again).values()) == {(0, 4)}


def test_dry_run_deletes_nothing_and_reports_the_plan_that_is_applied(out):
    before = files_under(out)
    dry = collect(out, 0, dry_run=True)
    assert files_under(out) == before
    assert dry.files > 0
    applied = collect(out, 0)
    assert applied.as_dict() == dry.as_dict()
    assert {n: c.paths for n, c in applied.categories.items()} == {n: c.paths for n, c in dry.categories.items()}


def test_a_live_run_lease_blocks_result_deletion(out):
    results_before = {p for p in files_under(out) if not p.startswith("versions")}
    abandoned = os.path.join(out, "versions", "abandoned-run")
    os.makedirs(abandoned)
    open(os.path.join(abandoned, "index.parquet"), "wb").close()
    with leases.hold_lease(out, "run") as lease:
        plan = collect(out, 0)
        assert plan.run_leases and plan.run_leases[0].lease_id == lease.lease_id
        assert any("run is in progress" in note for note in plan.notes)
        assert plan.categories["results"].held and plan.categories["objects"].held
        assert plan.categories["uncommitted"].held and plan.uncommitted_versions == ()
    after = files_under(out)
    assert {p for p in after if not p.startswith("versions") and not p.startswith("leases")} == results_before
    assert dv.list_versions(out) == [dv.read_latest(out)]  # old committed versions did go
    assert os.path.isdir(abandoned)


def write_stale_lease(out: str, kind: str = "run", age_s: float = 3600) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age_s))
    path = os.path.join(out, "leases", f"{kind}-deadbeef.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"kind": kind, "lease_id": "deadbeef", "host": "gone", "pid": 1, "started_utc": stamp,
                   "heartbeat_utc": stamp}, handle)
    return path


def test_a_stale_run_lease_does_not_block_and_is_removed(out):
    stale = write_stale_lease(out)
    abandoned = os.path.join(out, "versions", "abandoned-run")
    os.makedirs(os.path.join(abandoned, "shards"))
    expected_kept = only_latest_needs(out)
    plan = collect(out, 0)
    assert not plan.run_leases and plan.categories["leases"].files == 1
    assert plan.uncommitted_versions == ("abandoned-run",)
    assert not os.path.exists(stale) and not os.path.exists(abandoned)
    assert {p for p in files_under(out) if p.split(os.sep)[0] in ("results", "objects")} == expected_kept


def test_a_run_starting_after_the_plan_is_seen_before_deleting(out):
    plan = plan_gc(out, 0)
    assert plan.categories["results"].files > 0
    with leases.hold_lease(out, "run"):
        applied = apply_gc(plan)
    assert applied.categories["results"].files == 0 and applied.categories["results"].held
    assert sum(1 for p in files_under(out) if p.startswith("results")) > 0
    assert len(dv.list_versions(out)) == 1


def test_old_temporaries_are_removed_fresh_ones_kept(out):
    hour_and_more = time.time() - 2 * 3600
    old = [os.path.join(out, "results", "fit", "ab", ".abcd.npz.tmp-0123456789ab"),
           os.path.join(out, "objects", "shards", ".x.tar.tmp-0123456789ab"),
           os.path.join(out, ".LATEST.tmp-0123456789ab"),
           os.path.join(out, "versions", dv.read_latest(out), ".stats.json.tmp-0123456789ab")]
    fresh = os.path.join(out, "results", "init", "cd", ".cdef.npz.tmp-ba9876543210")
    for path in (*old, fresh):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(b"partial")
    for path in old:
        os.utime(path, (hour_and_more, hour_and_more))
    plan = collect(out, 2)  # keeps every version: only the leftovers go
    assert plan.removed_versions == () and plan.categories["results"].files == 0
    assert plan.categories["temporaries"].files == len(old)
    assert not any(os.path.exists(p) for p in old) and os.path.exists(fresh)
    assert validate_version(out) == []


def test_a_kept_version_without_results_parquet_keeps_every_result(out):
    latest = dv.version_url(out, dv.read_latest(out))
    os.remove(os.path.join(latest, "results.parquet"))
    with open(os.path.join(latest, "_SUCCESS")) as f:  # as committed by a writer without results.parquet
        listed = {k: v for k, v in json.load(f)["files"].items() if k != "results.parquet"}
    with open(os.path.join(latest, "_SUCCESS"), "w") as f:
        f.write(dv.success_text(listed))
    results_before = {p for p in files_under(out) if p.startswith("results")}
    plan = collect(out, 0)
    assert plan.categories["results"].files == 0 and plan.categories["results"].held
    assert any("results.parquet" in note for note in plan.notes)
    assert {p for p in files_under(out) if p.startswith("results")} == results_before
    assert plan.categories["objects"].files == 6  # shard objects (tar, index, sidecar) are still collected
    assert validate_version(out) == []


def test_no_latest_is_a_clear_error(tmp_path):
    with pytest.raises(MissingLatestError, match="has no LATEST"):
        plan_gc(str(tmp_path), 0)
    with pytest.raises(ValueError, match="keep must be an integer >= 0"):
        plan_gc(str(tmp_path), -1)


def test_a_plan_gone_stale_is_refused(pristine, out):
    plan = plan_gc(out, 0)
    run(pristine.manifest, out, "filter.frame_loss_threshold=0.03")  # commits a new LATEST
    with pytest.raises(StalePlanError, match="plan again"):
        apply_gc(plan)
    assert len(dv.list_versions(out)) == 4


def test_another_live_gc_is_refused(out):
    plan = plan_gc(out, 0)
    with leases.hold_lease(out, "gc"):
        with pytest.raises(LeaseBusyError, match="another garbage collection"):
            apply_gc(plan)
    assert len(dv.list_versions(out)) == 3


def test_a_gc_stopped_half_way_leaves_no_broken_committed_version(out, monkeypatch):
    plan = plan_gc(out, 0)
    real_remove = gc_module._remove

    def stop_after_markers(fs, paths, recursive=False):
        if any(not p.endswith("/_SUCCESS") for p in paths):
            raise KeyboardInterrupt("stopped")
        real_remove(fs, paths, recursive=recursive)

    monkeypatch.setattr(gc_module, "_remove", stop_after_markers)
    with pytest.raises(KeyboardInterrupt):
        apply_gc(plan)
    assert dv.list_versions(out) == [dv.read_latest(out)]  # the others read as abandoned
    monkeypatch.setattr(gc_module, "_remove", real_remove)
    again = collect(out, 0)
    assert set(again.uncommitted_versions) == set(plan.removed_versions)
    assert dv.list_versions(out, committed_only=False) == [dv.read_latest(out)]
    assert not os.listdir(os.path.join(out, "leases"))  # the interrupted gc released its lease


def test_existence_markers_are_removed_before_the_files_beside_them(out, monkeypatch):
    """A version exists when its _SUCCESS does, a result when its .npz does, a shard when its sidecar
    does: those go first, in their own batches."""
    real_remove = gc_module._remove
    calls = []

    def kind(path):
        parts = path.rstrip("/").split("/")
        if parts[-1] == "_SUCCESS" or parts[-2] == "versions":
            return f"version {parts[-1] if parts[-1] == '_SUCCESS' else 'directory'}"
        return f"{parts[-4] if parts[-4] == 'results' else parts[-3]} {parts[-1].split('.', 1)[1]}"

    def recording(fs, paths, recursive=False):
        if paths:
            calls.append(sorted({kind(p) for p in paths}))
        real_remove(fs, paths, recursive=recursive)

    monkeypatch.setattr(gc_module, "_remove", recording)
    collect(out, 0)
    assert calls == [["version _SUCCESS"], ["version directory"], ["results npz"], ["results tar"],
                     ["objects json"], ["objects index.parquet", "objects tar"]]
