"""Pipeline configs: one typed dataclass tree per pipeline, composed from component sections."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from labelmill.infra.config import ConfigError


@dataclass
class Pose3dConfig:
    """pose3d: keypoints -> init -> bundle adjustment -> filter -> shards."""

    seed: int = 0  # global seed for anything random in the run


PIPELINE_CONFIGS: dict[str, type] = {"pose3d": Pose3dConfig}


def config_class(pipeline: str) -> type:
    try:
        return PIPELINE_CONFIGS[pipeline]
    except KeyError:
        raise ConfigError(f"unknown pipeline {pipeline!r}; known: {', '.join(sorted(PIPELINE_CONFIGS))}") from None
