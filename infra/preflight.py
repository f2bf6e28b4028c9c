"""Checks a run makes before any stage runs, so a doomed run fails in seconds, not after the compute.

:class:`PreflightError` (a ``ValueError``; the CLI exits 2 on it) names what is wrong and
where:

* :func:`check_output`: the output root is not a file, can be created, and takes a write (a
  probe object ``.labelmill-probe-<uuid>`` is written and removed). Unreachable stores, paths
  under a file, read-only mounts and missing permissions all surface here;
* :func:`check_inputs`: the corpus holds at least one input;
* :func:`check_model_file`: a model file the config names exists (an embedded default is
  ``None`` and always passes).
"""

from __future__ import annotations

import uuid
from typing import Sequence

from labelmill.infra import storage

__all__ = ["PreflightError", "check_output", "check_inputs", "check_model_file"]


class PreflightError(ValueError):
    """The run cannot start (bad output, empty corpus, missing model file); nothing was computed."""


def check_output(url: str) -> None:
    """Raise :class:`PreflightError` unless ``url`` is (or can become) a writable output root."""
    try:
        fs, path = storage.filesystem(url)
        if fs.isfile(path):
            raise PreflightError(f"output {url} is a file, not a folder (choose a folder for the dataset root)")
        storage.makedirs(url)
        probe = storage.join(url, f".labelmill-probe-{uuid.uuid4().hex}")
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except PreflightError:
        raise
    except Exception as exc:  # any backend's error: what it says is the reason a person can act on
        raise PreflightError(f"output {url} is not writable: {type(exc).__name__}: {exc}") from None


def check_inputs(items: Sequence[object], input_url: str, what: str = "inputs") -> None:
    """Raise :class:`PreflightError` when the corpus at ``input_url`` gave no ``what``."""
    if not items:
        raise PreflightError(f"{input_url}: no {what} found, nothing to run (check the path and the corpus layout)")


def check_model_file(path: str | None, key: str) -> None:
    """Raise :class:`PreflightError` when the file config ``key`` names does not exist (None: embedded default)."""
    if path is None or path == "":
        return
    try:
        found = storage.exists(path)
    except Exception as exc:  # an unreachable store
        raise PreflightError(f"{key}: cannot reach {path}: {type(exc).__name__}: {exc}") from None
    if not found:
        raise PreflightError(f"{key}: model file {path} does not exist")
