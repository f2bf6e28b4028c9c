"""Real pose3d outputs with several versions, for the gc / versions tests (a few seconds each)."""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

import pytest

from labelmill.infra.config import load_config
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.corpus import write_synthetic_corpus
from labelmill.pipelines.config import Pose3dConfig
from labelmill.pipelines.pose3d import Pose3dRun, run_pose3d

OVERRIDES = ["keypoints.backend=precomputed", "fit.solver.max_iter=15"]
STAGES = ("decode", "keypoints", "track", "init", "fit", "filter", "samples")
# Three versions: the defaults; a new loss threshold (filter + samples rerun); new fit settings
# with the default threshold again (fit onward rerun).
VERSION_SETTINGS: tuple[tuple[str, ...], ...] = ((), ("filter.frame_loss_threshold=0.02",), ("fit.solver.max_iter=16",))


def write_corpus(root: str) -> str:
    """A 4-video synthetic corpus with precomputed keypoints; returns its manifest's path."""
    write_synthetic_corpus(root, SynthConfig(num_videos=4, num_frames=12, seed=5))
    return f"{root}/manifest.csv"


def run(manifest: str, out: str, *extra: str, **kwargs: Any) -> Pose3dRun:
    cfg = load_config(Pose3dConfig, None, [*OVERRIDES, *extra])
    return run_pose3d(cfg, input_url=manifest, output_url=out, engine_name="local", **kwargs)


def work(result: Pose3dRun) -> dict[str, tuple[int, int]]:
    """Per stage (computed, reused) of a run."""
    return {name: (s["computed"], s["reused"]) for name, s in result.stats["stages"].items() if name in STAGES}


@dataclasses.dataclass(frozen=True)
class Versions:
    manifest: str
    out: str
    runs: tuple[Pose3dRun, ...]

    @property
    def ids(self) -> list[str]:
        return [r.version_id for r in self.runs]


def three_versions(manifest: str, out: str) -> Versions:
    """Run the three settings of VERSION_SETTINGS into ``out``; LATEST is the third."""
    runs = tuple(run(manifest, out, *settings) for settings in VERSION_SETTINGS)
    assert not any(r.up_to_date for r in runs)
    return Versions(manifest, out, runs)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Three committed versions of a 4-video corpus, made once per test module."""
    manifest = write_corpus(str(tmp_path_factory.mktemp("corpus")))
    return three_versions(manifest, str(tmp_path_factory.mktemp("pristine") / "out"))


@pytest.fixture
def out(pristine, tmp_path):
    """A private copy of the three-version output root."""
    copy = tmp_path / "out"
    shutil.copytree(pristine.out, copy)
    return str(copy)
