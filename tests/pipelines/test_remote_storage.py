"""The whole pose3d life cycle with OUT on storage beyond local disk: ``memory://`` and S3.

S3 is moto's standalone server on loopback, reached through s3fs. The corpus stays on local
disk. Each case: a full run, a resume after losing some fit results (with a new threshold),
`labelmill versions`, `labelmill gc --keep 0`, validate, and reruns that are up to date or
recompute only what gc collected.
"""

import json
import logging
import os
import uuid

import pytest

from labelmill.infra import dataset_version as dv
from labelmill.infra import leases, storage
from labelmill.infra.gc import plan_gc
from labelmill.infra.validate import validate_version
from labelmill.pipelines import cli
from labelmill.pipelines.config import Pose3dConfig

from version_outputs import run, work, write_corpus


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 and fsspec/s3fs pointed at it (env + fsspec config)."""
    try:
        import s3fs
    except ImportError as exc:
        pytest.skip(f"S3 storage test needs s3fs (pip install s3fs): {exc}")
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.skip(f"S3 storage test needs moto's server (pip install 'moto[server]'): {exc}")
    import fsspec.config

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
    except Exception as exc:  # noqa: BLE001 - any failure to start means: no S3 here
        pytest.skip(f"moto's S3 server could not start on 127.0.0.1: {type(exc).__name__}: {exc}")
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
                            ("FSSPEC_S3_ENDPOINT_URL", endpoint)):
            patch.setenv(name, value)
        # fsspec reads FSSPEC_* variables at import: set its config for this process too
        patch.setitem(fsspec.config.conf, "s3", {**fsspec.config.conf.get("s3", {}), "endpoint_url": endpoint})
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield endpoint
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.fixture(params=["memory", "s3"])
def out(request):
    """An output root URL on the storage under test, removed afterwards."""
    if request.param == "memory":
        url = f"memory://lm-remote-{uuid.uuid4().hex[:8]}/out"
    else:
        request.getfixturevalue("s3_endpoint")
        bucket = f"lm-remote-{uuid.uuid4().hex[:8]}"
        storage.filesystem(f"s3://{bucket}")[0].mkdir(bucket)
        url = f"s3://{bucket}/out"
    yield url
    fs, path = storage.filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_run_resume_versions_and_gc_on_remote_storage(manifest, out, capsys):
    first = run(manifest, out)
    assert set(work(first).values()) == {(4, 0)}
    assert first.version_url == dv.version_url(out, first.version_id)
    assert validate_version(out) == []

    # resume after losing two fit results, with a new threshold: those two are refitted
    fits = storage.list_files(storage.join(out, "results/fit"), "**")
    assert len(fits) == 4 and all(url.startswith(out + "/results/fit/") for url in fits)
    for url in fits[:2]:
        storage.remove(url)
    second = run(manifest, out, "filter.frame_loss_threshold=0.02")
    counts = work(second)
    assert all(counts[s] == (0, 4) for s in ("decode", "keypoints", "track", "init"))
    assert counts["fit"] == (2, 2) and counts["filter"] == (4, 0) and counts["samples"] == (4, 0)
    assert validate_version(out) == []

    assert cli.main(["versions", out]) == 0
    default = Pose3dConfig().filter.frame_loss_threshold
    assert f"filter.frame_loss_threshold: {default} -> 0.02" in capsys.readouterr().out

    # a live run lease on this storage holds every result back
    with leases.hold_lease(out, "run"):
        held = plan_gc(out, 0)
    assert held.categories["results"].files == 0 and held.categories["versions"].files > 0

    assert cli.main(["gc", out, "--keep", "0", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["removed_versions"] == [first.version_id]
    # only the first version's filter and samples results (npz, and the samples' tar) and its shard
    assert done["categories"]["results"]["files"] == 4 + 4 + 4
    assert done["categories"]["objects"]["files"] == 3  # its tar, index object and sidecar
    assert dv.list_versions(out, committed_only=False) == [second.version_id]
    assert leases.list_leases(out) == []
    assert validate_version(out) == []

    again = run(manifest, out, "filter.frame_loss_threshold=0.02")
    assert again.up_to_date and again.version_id == second.version_id
    back = run(manifest, out)
    counts = work(back)
    assert all(counts[s] == (0, 4) for s in ("decode", "keypoints", "track", "init", "fit"))
    assert counts["filter"] == (4, 0) and counts["samples"] == (4, 0)
    assert validate_version(out) == []


def test_list_files_keeps_the_callers_url_form(out):
    storage.write_text(storage.join(out, "a/b/c.txt"), "x")
    storage.write_text(storage.join(out, "a/d.txt"), "y")
    assert storage.list_files(storage.join(out, "a"), "**") == [out + "/a/b/c.txt", out + "/a/d.txt"]
    assert storage.list_files(storage.join(out, "a"), "*") == [out + "/a/d.txt"]
    assert storage.list_files(storage.join(out, "missing"), "*") == []
    assert os.path.basename(storage.list_files(storage.join(out, "a"), "*/*.txt")[0]) == "c.txt"
