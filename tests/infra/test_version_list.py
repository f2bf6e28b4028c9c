"""The versions listing: order, LATEST, funnel, and config diffs (fingerprint comments included)."""

import json
import os
import time

import pytest

from labelmill.infra import storage
from labelmill.infra.version_list import (
    KeyChange,
    diff_configs,
    flatten,
    list_version_summaries,
    order_versions,
    parse_config,
)

CONFIG = """\
seed: 0
filter:
  frame_loss_threshold: 0.04
  video_loss_threshold: 0.2
fit:
  solver:
    max_iter: 15
  stages: [1, 2]
engine:
  stages: {}

# fingerprints
# body_model: embedded:generated
# code: c3cb8bbd94994bfe
"""


def write_fake_version(out: str, version_id: str, config: str, *, created: str, kept: int = 40,
                       latest: bool = False) -> None:
    base = storage.join(out, f"versions/{version_id}")
    stats = {"created_utc": created, "inputs": {"in": 4, "written": 3, "filtered": 1, "failed": 0},
             "frames": {"in": 48, "fitted": 44, "kept": kept}, "samples": kept, "shards": 1}
    storage.write_text(storage.join(base, "stats.json"), json.dumps(stats))
    storage.write_text(storage.join(base, "config.yaml"), config)
    storage.write_text(storage.join(base, "_SUCCESS"), "")
    if latest:
        storage.write_text(storage.join(out, "LATEST"), version_id + "\n")


def test_parse_config_reads_the_fingerprint_block_as_keys():
    parsed = parse_config(CONFIG)
    assert parsed["fingerprints"] == {"body_model": "embedded:generated", "code": "c3cb8bbd94994bfe"}
    assert parsed["fit"]["solver"]["max_iter"] == 15
    with pytest.raises(ValueError, match="v1/config.yaml: not valid YAML"):
        parse_config("a: [1", where="v1/config.yaml")
    with pytest.raises(ValueError, match="expected a mapping"):
        parse_config("- 1\n- 2\n")


def test_flatten_to_dotted_keys():
    assert flatten(parse_config(CONFIG)) == {
        "seed": 0, "filter.frame_loss_threshold": 0.04, "filter.video_loss_threshold": 0.2,
        "fit.solver.max_iter": 15, "fit.stages": [1, 2], "engine.stages": {},
        "fingerprints.body_model": "embedded:generated", "fingerprints.code": "c3cb8bbd94994bfe",
    }


def test_diff_reports_changed_added_and_removed_keys():
    old = parse_config(CONFIG)
    new = parse_config(CONFIG.replace("0.04", "0.02").replace("c3cb8bbd94994bfe", "0123456789abcdef")
                       .replace("  video_loss_threshold: 0.2\n", "").replace("seed: 0\n", "seed: 0\nwrite_fits: false\n")
                       .replace("[1, 2]", "[1, 2, 3]"))
    changes = diff_configs(old, new)
    assert [str(c) for c in changes] == [
        "filter.frame_loss_threshold: 0.04 -> 0.02",
        "- filter.video_loss_threshold: 0.2",
        "fingerprints.code: c3cb8bbd94994bfe -> 0123456789abcdef",
        "fit.stages: [1, 2] -> [1, 2, 3]",
        "+ write_fits: false",
    ]
    assert changes[0] == KeyChange("filter.frame_loss_threshold", "changed", 0.04, 0.02)
    assert diff_configs(None, new) == [] and diff_configs(new, new) == []
    # a value of another type is a change even when it compares equal
    assert [c.key for c in diff_configs({"a": 1}, {"a": 1.0})] == ["a"]


def test_order_is_created_time_then_commit_time_then_id():
    created = {"b": "2025-01-01T00:00:00Z", "a": "2025-01-01T00:00:00Z", "c": "2024-12-31T23:59:59Z", "d": None}
    assert order_versions(created, {"a": 20.0, "b": 10.0, "c": 30.0}) == ["d", "c", "b", "a"]
    assert order_versions(created, {}) == ["d", "c", "a", "b"]


@pytest.mark.parametrize("root_kind", ["local", "memory"])
def test_listing_of_committed_versions_oldest_first(tmp_path, root_kind):
    out = str(tmp_path / "out") if root_kind == "local" else f"memory://lm-versions-{os.getpid()}-{time.time_ns()}"
    write_fake_version(out, "v-b", CONFIG, created="2025-03-01T10:00:00Z")
    write_fake_version(out, "v-a", CONFIG.replace("max_iter: 15", "max_iter: 16"), created="2025-03-01T11:00:00Z",
                       kept=38, latest=True)
    storage.write_text(storage.join(out, "versions/v-crashed/stats.json"), "{}")  # no _SUCCESS: not listed
    summaries = list_version_summaries(out)
    assert [s.version_id for s in summaries] == ["v-b", "v-a"]
    assert [s.is_latest for s in summaries] == [False, True]
    first, second = summaries
    assert first.inputs == {"in": 4, "written": 3, "filtered": 1, "failed": 0}
    assert second.frames == {"in": 48, "kept": 38} and second.samples == 38 and second.shards == 1
    assert first.previous is None and first.changes == ()
    assert second.previous == "v-b"
    assert [str(c) for c in second.changes] == ["fit.solver.max_iter: 15 -> 16"]
    assert second.as_dict()["changes"] == [{"key": "fit.solver.max_iter", "kind": "changed", "old": 15, "new": 16}]


def test_an_empty_root_lists_nothing(tmp_path):
    assert list_version_summaries(str(tmp_path)) == []
