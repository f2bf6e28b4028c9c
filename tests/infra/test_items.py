"""Item statuses: the one pass-through every operator shares."""

import pytest

from labelmill.infra.formats.items import STATUS_FAILED, STATUS_PENDING, ItemStatus


def test_map_pending_computes_pending_items_and_fails_the_ones_that_raise():
    batch = {"key": ["a", "b", "c", "d"], "status": [STATUS_PENDING, STATUS_FAILED, STATUS_PENDING, STATUS_PENDING],
             "reason": [None, "decode: empty file", None, None], "x": [1, 2, 3, 4]}
    seen = []

    def compute(i):
        seen.append(i)
        if batch["key"][i] == "c":
            raise ValueError("item c: no boxes")
        return {"y": batch["x"][i] * 10, "z": "ok"}

    out = ItemStatus.of(batch).map_pending(batch, ("y", "z"), compute)
    assert seen == [0, 2, 3]  # the failed item is not computed
    assert out["y"] == [10, None, None, 40] and out["z"] == ["ok", None, None, "ok"]
    assert out["status"] == [STATUS_PENDING, STATUS_FAILED, STATUS_FAILED, STATUS_PENDING]
    assert out["reason"] == [None, "decode: empty file", "item c: no boxes", None]  # first reason kept
    assert out["x"] == batch["x"] and batch["status"][2] == STATUS_PENDING  # the input batch is unchanged


def test_map_pending_lets_other_errors_through():
    batch = {"key": ["a"]}
    with pytest.raises(KeyError):
        ItemStatus.of(batch).map_pending(batch, ("y",), lambda i: {}["y"])
