"""Leases: written, refreshed and removed by their holder; stale ones ignored; runs wait for gc."""

import json
import threading
import time
import uuid

import pytest

from labelmill.infra import leases, storage


@pytest.fixture(params=["local", "memory"])
def out(request, tmp_path):
    return str(tmp_path / "out") if request.param == "local" else f"memory://lm-leases-{uuid.uuid4().hex[:8]}"


def write_lease(out: str, kind: str, *, age_s: float, lease_id: str = "0badc0de") -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age_s))
    url = storage.join(out, f"leases/{kind}-{lease_id}.json")
    storage.write_text(url, json.dumps({"kind": kind, "lease_id": lease_id, "host": "elsewhere", "pid": 7,
                                        "started_utc": stamp, "heartbeat_utc": stamp}))
    return url


def test_a_held_lease_is_written_live_and_removed_on_exit(out):
    with leases.hold_lease(out, "run") as held:
        document = json.loads(storage.read_text(held.url))
        assert set(document) == {"kind", "lease_id", "host", "pid", "started_utc", "heartbeat_utc"}
        assert document["kind"] == "run" and held.url.endswith(f"leases/run-{held.lease_id}.json")
        live = leases.live_leases(out, "run")
        assert [lease.lease_id for lease in live] == [held.lease_id]
        assert leases.live_leases(out, "gc") == []
        assert leases.live_leases(out, "run", exclude=held.lease_id) == []
    assert not storage.exists(held.url)
    assert leases.live_leases(out) == []


def test_the_lease_is_released_when_the_block_raises(out):
    with pytest.raises(RuntimeError, match="boom"):
        with leases.hold_lease(out, "gc") as held:
            raise RuntimeError("boom")
    assert not storage.exists(held.url)


def test_the_heartbeat_is_refreshed_by_a_thread(out):
    with leases.hold_lease(out, "run", heartbeat_s=0.05) as held:
        first = leases.list_leases(out)[0].heartbeat_utc
        deadline = time.monotonic() + 5
        while leases.list_leases(out)[0].heartbeat_utc == first and time.monotonic() < deadline:
            time.sleep(0.02)
        latest = leases.list_leases(out)[0]
        assert latest.heartbeat_utc > first and latest.started_utc == json.loads(storage.read_text(held.url))["started_utc"]
        assert latest.age_s() < 5


def test_stale_leases_are_ignored_and_removable(out):
    stale = write_lease(out, "run", age_s=3600)
    fresh = write_lease(out, "run", age_s=1, lease_id="f00d")
    storage.write_text(storage.join(out, "leases/notes.json"), "{not json")  # ignored, with a warning
    assert {lease.lease_id for lease in leases.list_leases(out, "run")} == {"0badc0de", "f00d"}
    assert [lease.lease_id for lease in leases.live_leases(out, "run")] == ["f00d"]
    assert [lease.lease_id for lease in leases.live_leases(out, "run", stale_after_s=0.5)] == []
    removed = leases.remove_stale_leases(out)
    assert [lease.lease_id for lease in removed] == ["0badc0de"]
    assert not storage.exists(stale) and storage.exists(fresh)


def test_wait_for_no_gc_returns_at_once_without_a_live_gc_lease(out):
    write_lease(out, "gc", age_s=3600)  # a crashed gc
    started = time.monotonic()
    leases.wait_for_no_gc(out, timeout_s=10)
    assert time.monotonic() - started < 1


def test_wait_for_no_gc_names_the_lease_after_the_timeout(out):
    url = write_lease(out, "gc", age_s=0)
    with pytest.raises(leases.LeaseBusyError) as caught:
        leases.wait_for_no_gc(out, timeout_s=0.2, poll_s=0.05)
    message = str(caught.value)
    assert "garbage collection is running" in message and url in message and "host elsewhere, pid 7" in message


def test_a_run_waits_until_gc_releases_its_lease(out):
    gc_lease = leases.HeldLease(out, "gc").start()
    timer = threading.Timer(0.3, gc_lease.release)
    timer.start()
    started = time.monotonic()
    try:
        with leases.run_lease(out, wait_for_gc_s=10, poll_s=0.05) as held:
            waited = time.monotonic() - started
            assert leases.live_leases(out, "run")[0].lease_id == held.lease_id
    finally:
        timer.join()
    assert 0.2 < waited < 5
    assert leases.list_leases(out) == []


def test_the_run_lease_is_visible_while_the_run_waits_for_gc(out):
    """The run writes its lease before looking for gc's: a gc checking after its own write sees the run."""
    gc_lease = leases.HeldLease(out, "gc").start()
    entered = threading.Event()

    def a_run():
        with leases.run_lease(out, wait_for_gc_s=10, poll_s=0.05):
            entered.set()

    thread = threading.Thread(target=a_run)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not leases.live_leases(out, "run") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert leases.live_leases(out, "run") and not entered.is_set()
    finally:
        gc_lease.release()
        thread.join(10)
    assert entered.is_set() and leases.list_leases(out) == []


def test_bad_arguments_are_refused(out):
    with pytest.raises(ValueError, match="lease kind must be one of run, gc"):
        leases.HeldLease(out, "backup")
    with pytest.raises(ValueError, match="heartbeat_s must be > 0"):
        leases.HeldLease(out, "run", heartbeat_s=0)
