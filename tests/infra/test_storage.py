import os

import pytest

from labelmill.infra import storage


@pytest.mark.parametrize("root_kind", ["local", "memory"])
def test_atomic_write_read_list(tmp_path, root_kind):
    root = str(tmp_path) if root_kind == "local" else f"memory://lm-test-{os.getpid()}"
    storage.write_bytes(storage.join(root, "a/b.bin"), b"123")
    storage.write_text(storage.join(root, "a/c.txt"), "hello")
    assert storage.read_bytes(storage.join(root, "a/b.bin")) == b"123"
    assert storage.read_text(storage.join(root, "a/c.txt")) == "hello"
    files = storage.list_files(storage.join(root, "a"), "*")
    assert [f.rsplit("/", 1)[1] for f in files] == ["b.bin", "c.txt"]
    assert all(storage.exists(f) for f in files)


def test_failed_atomic_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "x.bin"
    storage.write_bytes(str(target), b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_open(str(target)) as f:
            f.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(target.parent)) == ["x.bin"]  # no temp file left behind


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "s3://b/k", ".."])
def test_safe_join_refuses_escapes(bad):
    with pytest.raises(storage.PathEscapeError):
        storage.safe_join("/data/out", bad)


def test_safe_join_normalises_inside_root():
    assert storage.safe_join("/data/out", "a/./b/../c.tar") == "/data/out/a/c.tar"
    assert storage.safe_join("memory://root", "x/y") == "memory://root/x/y"
