"""Corpus readers: Kinetics CSVs, directories/globs, single files, manifests, on local and memory URLs."""

from __future__ import annotations

import hashlib
import os
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelmill.infra.config import ConfigError, from_dict
from labelmill.infra.corpus import (
    WORK_ITEM_SCHEMA,
    CorpusConfig,
    CorpusError,
    detect_kind,
    file_fingerprint,
    MAX_KEY_LENGTH,
    MAX_KEY_PART_LENGTH,
    MAX_KEY_PARTS,
    is_safe_key,
    key_problem,
    read_corpus,
    read_corpus_from_config,
    read_directory,
    read_kinetics,
    read_manifest,
    read_video_file,
)

KINETICS_TRAIN = """label,youtube_id,time_start,time_end,split,is_cc
abseiling,aaaaaaaaaaa,10,20,train,0
abseiling,bbbbbbbbbbb,0,10,train,0
"air drumming",ccccccccccc,5,15,train,0
abseiling,fullvideo01,30,40,train,0
abseiling,missing0000,1,11,train,0
abseiling,xxxxxxxxxxx,abc,11,train,0
abseiling,yyyyyyyyyyy,12,11,train,0
abseiling,,1,11,train,0
abseiling,zzzzzzzzzzz,1,11
abseiling,aaaaaaaaaaa,10,20,train,0

abseiling,b/../x,1,2,train,0
"""

# (relative path under videos/, bytes): the clip layouts the reader supports
KINETICS_FILES = {
    "aaaaaaaaaaa_000010_000020.mp4": b"a" * 10,  # directly under the root
    "abseiling/bbbbbbbbbbb_000000_000010.mp4": b"b" * 20,  # under <label>/
    "train/air_drumming/ccccccccccc_000005_000015.webm": b"c" * 30,  # under <split>/<label>/
    "fullvideo01.mkv": b"f" * 40,  # an uncut video: the CSV times become start/end
    "notes.txt": b"not a video",
}


def memory_root() -> str:
    return f"memory://corpus-{uuid.uuid4().hex}"


def put(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as f:
        f.write(data)


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path) -> str:
    return str(tmp_path) if request.param == "local" else memory_root()


def make_kinetics(root: str, csv_text: str = KINETICS_TRAIN, videos: str = "videos") -> str:
    put(f"{root}/train.csv", csv_text.encode())
    for relpath, data in KINETICS_FILES.items():
        put(f"{root}/{videos}/{relpath}", data)
    return f"{root}/train.csv"


def rows_by_key(table: pa.Table) -> dict[str, dict]:
    return {row["key"]: row for row in table.to_pylist()}


def expected_uri(root: str, relpath: str) -> str:
    """The uri a reader writes: plain absolute path locally, memory:///... otherwise."""
    if root.startswith("memory://"):
        return "memory:///" + root[len("memory://"):] + "/" + relpath
    return os.path.join(root, relpath)


# ----------------------------------------------------------------------------- Kinetics


def test_kinetics_rows_layouts_failures_and_order(root):
    table = read_corpus(make_kinetics(root))
    assert table.schema == WORK_ITEM_SCHEMA
    keys = table.column("key").to_pylist()
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == 11
    rows = rows_by_key(table)

    direct = rows["aaaaaaaaaaa_000010_000020"]
    assert direct["uri"] == expected_uri(root, "videos/aaaaaaaaaaa_000010_000020.mp4")
    assert (direct["start"], direct["end"], direct["label"], direct["split"]) == (None, None, "abseiling", "train")
    assert (direct["status"], direct["reason"]) == ("pending", None)
    assert direct["fingerprint"].startswith("stat:") and len(direct["fingerprint"]) == 45
    assert rows["bbbbbbbbbbb_000000_000010"]["uri"].endswith("videos/abseiling/bbbbbbbbbbb_000000_000010.mp4")
    nested = rows["ccccccccccc_000005_000015"]
    assert nested["uri"].endswith("videos/train/air_drumming/ccccccccccc_000005_000015.webm")
    assert nested["label"] == "air drumming"
    uncut = rows["fullvideo01_000030_000040"]
    assert uncut["uri"].endswith("videos/fullvideo01.mkv") and (uncut["start"], uncut["end"]) == (30.0, 40.0)

    missing = rows["missing0000_000001_000011"]
    expected = expected_uri(root, "videos/missing0000_000001_000011.mp4")
    assert (missing["status"], missing["reason"]) == ("failed", f"missing file: {expected}")
    assert missing["fingerprint"] is None

    duplicate = rows["aaaaaaaaaaa_000010_000020__duplicate_line_000011"]
    assert duplicate["status"] == "failed"
    assert duplicate["reason"] == "line 11: duplicate key 'aaaaaaaaaaa_000010_000020' (first at line 2)"

    malformed = {key: row["reason"] for key, row in rows.items() if key.startswith("__invalid_")}
    assert malformed == {
        "__invalid_line_000007": "line 7: time_start 'abc' is not a finite number of seconds",
        "__invalid_line_000008": "line 8: time_end 11 is not after time_start 12",
        "__invalid_line_000009": "line 9: empty youtube_id",
        "__invalid_line_000010": "line 10: expected 6 columns "
                                 "(label,youtube_id,time_start,time_end,split,is_cc), found 4",
        "__invalid_line_000013": "line 13: youtube_id 'b/../x' has characters outside [A-Za-z0-9_-]",
    }
    assert all(rows[key]["status"] == "failed" for key in malformed)
    assert all(is_safe_key(key) for key in keys)


def test_kinetics_test_split_without_label_and_explicit_video_root(root):
    csv_text = "youtube_id,time_start,time_end,split\naaaaaaaaaaa,10,20,test\n"
    put(f"{root}/ann/test.csv", csv_text.encode())
    put(f"{root}/clips/test/aaaaaaaaaaa_000010_000020.mp4", b"data")
    table = read_corpus(f"{root}/ann/test.csv", video_root=f"{root}/clips")
    (row,) = table.to_pylist()
    assert (row["key"], row["label"], row["split"]) == ("aaaaaaaaaaa_000010_000020", None, "test")
    assert row["status"] == "pending"
    assert row["uri"] == expected_uri(root, "clips/test/aaaaaaaaaaa_000010_000020.mp4")


def test_kinetics_without_video_folder_fails_every_row(tmp_path):
    csv_path = tmp_path / "val.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split\nx,aaaaaaaaaaa,0,10,val\n")
    (row,) = read_kinetics(str(csv_path)).to_pylist()
    assert row["reason"] == f"missing file: {tmp_path}/videos/aaaaaaaaaaa_000000_000010.mp4"


def test_kinetics_header_without_required_columns_is_an_error(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("label,video,begin\nx,y,1\n")
    with pytest.raises(CorpusError, match="time_start"):
        read_kinetics(str(csv_path))
    with pytest.raises(CorpusError, match="neither a 'uri' column"):
        read_corpus(str(csv_path))


# ----------------------------------------------------------------------------- directories, globs, files


def make_directory(root: str) -> None:
    for relpath in ["a.mp4", "sub/b.avi", "sub/deep/c.MKV", "sub/notes.txt", ".hidden.mp4", "sub/a.mp4",
                    "dup.mp4", "dup.webm", "odd name.v2.mov"]:
        put(f"{root}/data/{relpath}", relpath.encode())


def test_directory_recursive_with_keys_from_relative_paths(root):
    make_directory(root)
    table = read_corpus(f"{root}/data")
    assert table.schema == WORK_ITEM_SCHEMA
    rows = rows_by_key(table)
    odd_key = "odd_name_v2-" + hashlib.sha1(b"odd name.v2").hexdigest()[:8]
    assert list(rows) == sorted(["a", "dup", "dup__duplicate_webm", odd_key, "sub/a", "sub/b", "sub/deep/c"])
    assert rows["sub/deep/c"]["uri"] == expected_uri(root, "data/sub/deep/c.MKV")
    assert rows["a"]["status"] == "pending" and rows["a"]["start"] is None and rows["a"]["label"] is None
    assert rows["dup__duplicate_webm"]["status"] == "failed"
    assert "duplicate key 'dup' (first at dup.mp4)" in rows["dup__duplicate_webm"]["reason"]
    assert all(is_safe_key(k) for k in rows)
    assert read_corpus(f"{root}/data").equals(table)  # deterministic


def test_glob_and_extension_filter(root):
    make_directory(root)
    globbed = read_directory(f"{root}/data/sub/**/*")
    assert globbed.column("key").to_pylist() == ["a", "b", "deep/c"]
    only_mp4 = read_corpus(f"{root}/data/**/*.mp4")
    assert only_mp4.column("key").to_pylist() == ["a", "dup", "sub/a"]
    assert read_directory(f"{root}/data", extensions=["avi"]).column("key").to_pylist() == ["sub/b"]


def test_directory_errors(root):
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(f"{root}/nothing-here")
    put(f"{root}/file.mp4", b"x")
    with pytest.raises(CorpusError, match="is not a directory"):
        read_directory(f"{root}/file.mp4")


def test_single_file(root):
    put(f"{root}/clips/My Clip.mp4", b"12345")
    table = read_corpus(f"{root}/clips/My Clip.mp4")
    (row,) = table.to_pylist()
    assert row["key"].startswith("My_Clip-") and is_safe_key(row["key"])
    assert row["uri"] == expected_uri(root, "clips/My Clip.mp4") and row["status"] == "pending"
    with pytest.raises(CorpusError, match="does not exist"):
        read_video_file(f"{root}/clips/other.mp4")


# ----------------------------------------------------------------------------- manifests


MANIFEST_ROWS = [
    {"uri": "videos/one.mp4", "start": None, "end": None, "label": "run", "split": "train"},
    {"uri": "videos/one.mp4", "start": 2.0, "end": 4.5, "label": "run", "split": "train"},
    {"uri": "videos/two.mp4", "start": None, "end": None, "label": None, "split": None},
    {"uri": "videos/gone.mp4", "start": None, "end": None, "label": "x", "split": None},
    {"uri": "videos/two.mp4", "start": 5.0, "end": 3.0, "label": None, "split": None},
]


def make_manifest_files(root: str) -> None:
    put(f"{root}/videos/one.mp4", b"one")
    put(f"{root}/videos/two.mp4", b"two")


def check_manifest_table(table: pa.Table, root: str, where: str) -> None:
    rows = rows_by_key(table)
    assert table.schema == WORK_ITEM_SCHEMA
    assert rows["one"]["uri"] == f"{root}/videos/one.mp4" and rows["one"]["label"] == "run"
    assert (rows["one_000002_000004"]["start"], rows["one_000002_000004"]["end"]) == (2.0, 4.5)
    assert rows["two"]["status"] == "pending" and rows["two"]["label"] is None
    assert rows["two"]["fingerprint"].startswith("stat:")
    assert rows["gone"]["reason"] == f"missing file: {root}/videos/gone.mp4"
    bad = rows[f"__invalid_{where}_000004" if where == "row" else "__invalid_line_000006"]
    assert "end 3 is not after start 5" in bad["reason"] and bad["status"] == "failed"


def test_manifest_parquet(root):
    make_manifest_files(root)
    table = pa.Table.from_pylist(MANIFEST_ROWS)
    with fsspec.open(f"{root}/manifest.parquet", "wb") as f:
        pq.write_table(table, f)
    assert detect_kind(f"{root}/manifest.parquet") == "manifest"
    check_manifest_table(read_corpus(f"{root}/manifest.parquet"), root, "row")


def test_manifest_csv(root):
    make_manifest_files(root)
    lines = ["uri,start,end,label,split"]
    for r in MANIFEST_ROWS:
        lines.append(",".join("" if r[c] is None else str(r[c]) for c in ("uri", "start", "end", "label", "split")))
    put(f"{root}/manifest.csv", ("\n".join(lines) + "\n").encode())
    assert detect_kind(f"{root}/manifest.csv") == "manifest"
    check_manifest_table(read_corpus(f"{root}/manifest.csv"), root, "line")


def test_manifest_keys_given_invalid_and_colliding(tmp_path):
    root = str(tmp_path)
    put(f"{root}/a/clip.mp4", b"1")
    put(f"{root}/b/clip.mp4", b"2")
    table = pa.Table.from_pylist(
        [
            {"key": "set1/x", "uri": f"{root}/a/clip.mp4", "start": float("nan")},
            {"key": "../evil", "uri": f"{root}/a/clip.mp4", "start": 1.0},
            {"key": None, "uri": f"{root}/a/clip.mp4", "start": None},
            {"key": None, "uri": f"{root}/b/clip.mp4", "start": None},
            {"key": None, "uri": "", "start": None},
        ]
    )
    pq.write_table(table, f"{root}/m.parquet")
    rows = rows_by_key(read_manifest(f"{root}/m.parquet"))
    assert rows["set1/x"]["status"] == "pending" and rows["set1/x"]["start"] is None  # NaN counts as null
    assert "key '../evil' is not made of" in rows["__invalid_row_000001"]["reason"]
    assert rows["clip"]["uri"] == f"{root}/a/clip.mp4"
    collided = rows["clip__duplicate_row_000003"]
    assert collided["status"] == "failed" and "add a 'key' column" in collided["reason"]
    assert rows["__invalid_row_000004"]["reason"] == "row 4: empty uri"


def test_key_limits_keep_member_names_and_paths_valid():
    from labelmill.infra.formats.shards import MAX_MEMBER_NAME_BYTES, member_name_problem

    at_limits = [
        "/".join(["a" * 11] * MAX_KEY_PARTS)[:MAX_KEY_LENGTH],  # 16 parts, 191 characters
        "b" * MAX_KEY_PART_LENGTH + "/" + "c" * (MAX_KEY_LENGTH - MAX_KEY_PART_LENGTH - 2) + "_",
        "_-" * 50 + "/" + "-_" * 49,  # single underscores are not escaped
    ]
    for key in at_limits:
        assert key_problem(key) is None and is_safe_key(key), key
        # a frame sample of it gives member names tar can extract
        assert member_name_problem(f"{key}/9999999", ("jpg", "json", "smpl.npz", "a" * 20)) is None
    assert "is 201 characters long" in key_problem("k" * 201)
    assert "limited to 200 characters" in key_problem("k" * 201)
    assert "has 17 parts" in key_problem("/".join("p" * 17))
    assert "a part of 101 characters" in key_problem("a/" + "b" * 101)
    assert "tar member key of" in key_problem("_" * 80 + "/" + "_" * 80)  # each "_" beside "_" becomes %5F
    assert "is not made of" in key_problem("a.b") and not is_safe_key("")
    too_long = "x" * 300 + "/000000"
    assert f"at most {MAX_MEMBER_NAME_BYTES}" in member_name_problem(too_long, ("jpg",))


def test_keys_beyond_the_limits_fail_their_rows_in_every_reader(tmp_path):
    root = str(tmp_path)
    long_name, deep = "n" * 150, "/".join(["d"] * 20)
    put(f"{root}/dir/{long_name}.mp4", b"1")
    put(f"{root}/dir/{deep}/clip.mp4", b"2")
    put(f"{root}/dir/ok.mp4", b"3")
    rows = read_directory(f"{root}/dir").to_pylist()
    assert [r["key"] for r in rows if r["status"] == "pending"] == ["ok"]
    failed = [r["reason"] for r in rows if r["status"] == "failed"]
    assert len(failed) == 2 and all(r["key"].startswith("__invalid_key_") for r in rows if r["key"] != "ok")
    (wide,) = [r for r in failed if "a part of 150 characters" in r]
    (deeper,) = [r for r in failed if "has 21 parts" in r]
    assert wide.startswith(long_name[:20]) and deeper.startswith("d/d/d/")
    # manifest: a given key and a derived one
    put(f"{root}/m.csv", f"key,uri\n{'k' * 1000},{root}/dir/ok.mp4\n,{root}/dir/{long_name}.mp4\n".encode())
    by_key = rows_by_key(read_manifest(f"{root}/m.csv"))
    assert "line 2: key 'kkkk" in by_key["__invalid_line_000002"]["reason"]
    assert "1000 characters long" in by_key["__invalid_line_000002"]["reason"]
    derived = [r for k, r in by_key.items() if k.startswith("__invalid_key_")]
    assert len(derived) == 1 and derived[0]["reason"].startswith("line 3: key 'nnn")
    # Kinetics: a youtube id too long for a key
    youtube_id = "y" * 190
    put(f"{root}/k/train.csv", f"youtube_id,time_start,time_end\n{youtube_id},1,2\n".encode())
    put(f"{root}/k/videos/{youtube_id}_000001_000002.mp4", b"4")
    (row,) = read_kinetics(f"{root}/k/train.csv").to_pylist()
    assert row["status"] == "failed" and row["key"].startswith("__invalid_key_")
    assert row["reason"].startswith("line 2: key 'yyy") and "204 characters long" in row["reason"]


def test_manifest_without_uri_column_is_an_error(tmp_path):
    pq.write_table(pa.table({"path": ["x.mp4"]}), tmp_path / "m.parquet")
    with pytest.raises(CorpusError, match="no 'uri' column"):
        read_manifest(str(tmp_path / "m.parquet"))


# ----------------------------------------------------------------------------- detection, fingerprints, config


def test_detect_kind_and_unknown_sources(root):
    make_kinetics(root)
    make_directory(root)
    assert detect_kind(f"{root}/train.csv") == "kinetics"
    assert detect_kind(f"{root}/data") == "directory"
    assert detect_kind(f"{root}/data/*.mp4") == "directory"
    assert detect_kind(f"{root}/data/a.mp4") == "file"
    with pytest.raises(CorpusError, match="cannot tell"):
        read_corpus(f"{root}/data/sub/notes.txt")
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(f"{root}/absent.csv")
    with pytest.raises(CorpusError, match="video_root"):
        read_corpus(f"{root}/data", video_root=f"{root}/videos")


def test_fingerprints_follow_content_and_modes(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"first version")
    first = file_fingerprint(str(path))
    assert first == file_fingerprint(str(path))  # stable
    assert file_fingerprint(str(path), mode="sha1") == "sha1:" + hashlib.sha1(b"first version").hexdigest()
    path.write_bytes(b"second, longer version")
    assert file_fingerprint(str(path)) != first
    other = tmp_path / "w.mp4"
    other.write_bytes(b"second, longer version")
    os.utime(other, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    assert file_fingerprint(str(other)) != file_fingerprint(str(path))  # same size and time, other file
    assert file_fingerprint(str(other), mode="sha1") == file_fingerprint(str(path), mode="sha1")
    table = read_corpus(str(tmp_path), fingerprint="sha1")
    assert table.column("fingerprint").to_pylist() == [file_fingerprint(str(path), mode="sha1")] * 2


def test_corpus_config_validates_and_reads(root):
    make_directory(root)
    cfg = from_dict(CorpusConfig, {"source": f"{root}/data", "extensions": [".MP4"]})
    assert read_corpus_from_config(cfg).column("key").to_pylist() == ["a", "dup", "sub/a"]
    with pytest.raises(ConfigError, match="kind"):
        from_dict(CorpusConfig, {"kind": "youtube"})
    with pytest.raises(ConfigError, match="extensions"):
        from_dict(CorpusConfig, {"extensions": ["mp4", "a/b"]})
    with pytest.raises(CorpusError, match="empty"):
        read_corpus_from_config(CorpusConfig())


def test_malformed_csv_lines_never_stop_the_read(tmp_path):
    huge = "x" * 200_000  # beyond the csv module's field limit: a csv.Error on that line
    text = f"youtube_id,time_start,time_end\naaaaaaaaaaa,0,10\n{huge},1,2\nbbbbbbbbbbb,0,10\n"
    (tmp_path / "k.csv").write_text(text)
    rows = rows_by_key(read_kinetics(str(tmp_path / "k.csv")))
    assert set(rows) == {"__invalid_line_000003", "aaaaaaaaaaa_000000_000010", "bbbbbbbbbbb_000000_000010"}
    assert rows["__invalid_line_000003"]["reason"].startswith("line 3: not valid CSV")
