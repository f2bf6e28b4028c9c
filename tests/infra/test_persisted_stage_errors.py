"""A stage whose operator raises, or whose result cannot be stored, fails only the item at fault."""

from labelmill.infra.engines.local import LocalEngine
from labelmill.infra.persisted_stage import persist_pipeline
from labelmill.infra.pipeline import Pipeline, Stage, batch_to_rows
from labelmill.infra.results import ResultStore


class Doubler:
    """Doubles ``value``; raises for any batch holding a key in ``bad`` (a bug on odd input)."""

    reads = ("key", "value")
    writes = ("double",)

    def __init__(self, bad=()):
        self.bad = set(bad)

    def setup(self):
        pass

    def __call__(self, batch):
        if self.bad & set(batch["key"]):
            raise RuntimeError("boom")
        return {**batch, "double": [2 * v for v in batch["value"]]}

    def fingerprint(self):
        return {}  # the same stage whatever ``bad`` is: a fixed operator reuses the good results


ITEMS = [{"key": k, "value": i, "status": "pending", "reason": None} for i, k in enumerate("abcd")]


def _run(out, operator):
    pipeline = persist_pipeline(Pipeline(name="t", stages=[Stage.of("double", operator, batch_size=4)]),
                                out_url=str(out), input_columns=["key", "value", "status", "reason"])
    rows = []
    for batch in LocalEngine().run(pipeline, [dict(i) for i in ITEMS]):
        rows.extend(batch_to_rows(batch))
    return {r["key"]: r for r in rows}


def test_a_raising_item_fails_alone_and_is_retried_next_run(tmp_path):
    rows = _run(tmp_path, Doubler(bad={"c"}))
    assert [rows[k]["status"] for k in "abcd"] == ["pending", "pending", "failed", "pending"]
    assert rows["c"]["reason"] == "stage double: item c: unexpected RuntimeError: boom"
    assert [rows[k]["double"] for k in "abd"] == [0, 2, 6]
    # not stored as a failure: the next run (the bug fixed) computes it and reuses the others
    again = _run(tmp_path, Doubler())
    assert again["c"]["status"] == "pending" and again["c"]["double"] == 4
    assert again["c"]["_work"] == {"double": "computed"} and again["a"]["_work"] == {"double": "reused"}


def test_a_result_the_store_refuses_fails_that_item(tmp_path, monkeypatch):
    write = ResultStore.write

    def refuse_b(self, stage, key, columns):
        if columns.get("double") == 2:  # item b
            raise OSError(28, "No space left on device")
        return write(self, stage, key, columns)

    monkeypatch.setattr(ResultStore, "write", refuse_b)
    rows = _run(tmp_path, Doubler())
    assert rows["b"]["status"] == "failed" and "cannot store its result: OSError" in rows["b"]["reason"]
    assert all(rows[k]["status"] == "pending" for k in "acd")
    monkeypatch.setattr(ResultStore, "write", write)
    assert _run(tmp_path, Doubler())["b"]["double"] == 2  # retried, not a stored failure


def test_operator_output_of_the_wrong_length_is_isolated_too(tmp_path):
    class Short(Doubler):
        def __call__(self, batch):
            out = super().__call__(batch)
            return {k: v[:1] for k, v in out.items()} if len(batch["key"]) > 1 else out

    rows = _run(tmp_path, Short())
    assert all(rows[k]["status"] == "pending" for k in "abcd")  # one by one, every item works
    assert [rows[k]["double"] for k in "abcd"] == [0, 2, 4, 6]
