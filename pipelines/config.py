"""Pipeline configs: one typed dataclass tree per pipeline, composed from component sections.

Each section is the config dataclass of the component it configures, so a component can be
built in a test from its own section without any pipeline config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labelmill.infra.config import ConfigError
from labelmill.models.body_model import BodyModelConfig
from labelmill.models.pose3d_fit import FitConfig
from labelmill.models.pose_prior import PriorConfig
from labelmill.operators.fit_quality import FilterConfig
from labelmill.operators.keypoint_init import KeypointInitConfig
from labelmill.operators.noisy_init import NoisyInitConfig
from labelmill.operators.synth.config import SynthConfig


@dataclass
class Pose3dConfig:
    """pose3d: keypoints -> per-frame init -> bundle adjustment over SMPL -> loss filter."""

    seed: int = 0  # global seed for anything random in the run
    body_model: BodyModelConfig = field(default_factory=BodyModelConfig)  # SMPL file or embedded stand-in
    prior: PriorConfig = field(default_factory=PriorConfig)  # GMM pose prior
    fit: FitConfig = field(default_factory=FitConfig)  # energy weights, windows, solver
    filter: FilterConfig = field(default_factory=FilterConfig)  # keep/drop thresholds
    keypoint_init: KeypointInitConfig = field(default_factory=KeypointInitConfig)  # embedded per-frame initialiser
    init: NoisyInitConfig = field(default_factory=NoisyInitConfig)  # HMR-like init noise (synthetic experiments)
    synth: SynthConfig = field(default_factory=SynthConfig)  # synthetic world (demo, eval, bench)


PIPELINE_CONFIGS: dict[str, type] = {"pose3d": Pose3dConfig}


def config_class(pipeline: str) -> type:
    try:
        return PIPELINE_CONFIGS[pipeline]
    except KeyError:
        raise ConfigError(f"unknown pipeline {pipeline!r}; known: {', '.join(sorted(PIPELINE_CONFIGS))}") from None
