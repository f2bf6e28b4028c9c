"""Typed engine configuration: which engine, where it runs, and per-stage placement overrides.

    engine:
      name: ray
      ray_address: null            # null: $RAY_ADDRESS, else an embedded local cluster
      stages:
        detect: {num_gpus: 1, concurrency: 4, batch_size: 16}
        decode: {num_cpus: 0.5}

Stage names in ``stages`` are checked when the config meets a pipeline (:meth:`EngineConfig.apply`),
because the config is loaded before the pipeline is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from labelmill.infra.config import ConfigError

if TYPE_CHECKING:
    from labelmill.infra.pipeline import Pipeline, Stage

__all__ = ["EngineConfig", "ENGINE_NAMES", "STAGE_OVERRIDE_KEYS"]

ENGINE_NAMES = ("local", "ray", "beam")

# Override key -> (integer?, lower bound, bound inclusive?)
STAGE_OVERRIDE_KEYS: dict[str, tuple[bool, float, bool]] = {
    "batch_size": (True, 1, True),
    "num_cpus": (False, 0, False),
    "num_gpus": (False, 0, True),
    "concurrency": (True, 1, True),
}


def _check_override_value(stage: str, key: str, value: Any) -> None:
    where = f"stages.{stage}.{key}"
    if key not in STAGE_OVERRIDE_KEYS:
        raise ValueError(f"unknown key '{where}'; allowed keys: {', '.join(STAGE_OVERRIDE_KEYS)}")
    integer, bound, inclusive = STAGE_OVERRIDE_KEYS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{where}' must be a number, got {value!r}")
    if integer and (not float(value).is_integer()):
        raise ValueError(f"'{where}' must be an integer, got {value!r}")
    if value < bound or (value == bound and not inclusive):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"'{where}' must be {relation} {bound}, got {value!r}")


@dataclass
class EngineConfig:
    """Engine knobs. Unset fields keep the defaults each stage declares."""

    # Which engine runs the pipeline: in-process, Ray Data or Apache Beam.
    name: Literal["local", "ray", "beam"] = "local"
    # Ray cluster address ("auto", "ray://head:10001", "10.0.0.1:6379"). None: use $RAY_ADDRESS
    # when set, otherwise start an embedded local cluster. An initialised session is reused.
    ray_address: str | None = None
    # CPUs of the embedded local cluster (None: all cores). Ignored when connecting to a cluster.
    ray_num_cpus: int | None = None
    # Object store size of the embedded local cluster in bytes (None: Ray's default).
    ray_object_store_memory: int | None = None
    # Scale every stage's num_cpus down (same factor) when the actor pools would need more CPUs
    # than the cluster has; otherwise a pool that cannot start stalls the pipeline.
    ray_fit_cpus: bool = True
    # Run consecutive stages that need the same kind of device (CPU or GPU) and have no fixed
    # concurrency in one Ray actor pool: items do not cross processes between them, and a small
    # cluster does not split its CPUs over a pool per stage.
    ray_fuse: bool = True
    # Per-stage placement: stage name -> {batch_size, num_cpus, num_gpus, concurrency}
    # (concurrency: a fixed pool size; unset: an autoscaling pool).
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    # Beam runner: FnApiRunner (in-process, default), DirectRunner, PrismRunner, FlinkRunner,
    # SparkRunner, DataflowRunner, PortableRunner, or a dotted PipelineRunner class path.
    beam_runner: str = "FnApiRunner"
    # Extra Beam pipeline options passed through verbatim, e.g. ["--direct_num_workers=2",
    # "--direct_running_mode=multi_processing"] or ["--flink_master=host:8081"].
    beam_options: list[str] = field(default_factory=list)
    # Where Beam writes the final items for the driver to read (any Beam/fsspec URL that every
    # worker can reach). None: a temporary local directory, removed after the run.
    beam_output_dir: str | None = None

    def __post_init__(self) -> None:
        if self.name not in ENGINE_NAMES:
            raise ValueError(f"'name' must be one of {', '.join(ENGINE_NAMES)}, got {self.name!r}")
        if self.ray_address is not None and not self.ray_address.strip():
            raise ValueError("'ray_address' must be a non-empty address or null")
        if self.ray_num_cpus is not None and (isinstance(self.ray_num_cpus, bool) or self.ray_num_cpus < 1):
            raise ValueError(f"'ray_num_cpus' must be >= 1 or null, got {self.ray_num_cpus!r}")
        if self.ray_object_store_memory is not None and self.ray_object_store_memory < 75 * 1024**2:
            raise ValueError(
                f"'ray_object_store_memory' must be at least 78643200 bytes (75 MiB) or null, got {self.ray_object_store_memory!r}"
            )
        if not isinstance(self.stages, dict):
            raise ValueError(f"'stages' must be a mapping of stage name -> overrides, got {self.stages!r}")
        for stage_name, overrides in self.stages.items():
            if not isinstance(overrides, dict):
                raise ValueError(f"'stages.{stage_name}' must be a mapping of overrides, got {overrides!r}")
            for key, value in overrides.items():
                _check_override_value(stage_name, key, value)
        if not self.beam_runner or not self.beam_runner.strip():
            raise ValueError("'beam_runner' must be a runner name")
        for i, option in enumerate(self.beam_options):
            if not isinstance(option, str) or not option.startswith("--"):
                raise ValueError(f"'beam_options[{i}]' must be a '--flag[=value]' string, got {option!r}")
            if option.split("=", 1)[0] == "--runner":
                raise ValueError(f"'beam_options[{i}]' sets --runner; set 'beam_runner' instead")

    def apply(self, pipeline: "Pipeline") -> list["Stage"]:
        """The pipeline's stages with this config's overrides applied (the pipeline is unchanged).

        Raises :class:`ConfigError` naming any override for a stage the pipeline does not have.
        """
        known = [s.name for s in pipeline.stages]
        unknown = [n for n in self.stages if n not in known]
        if unknown:
            raise ConfigError(
                f"unknown stage name(s) in 'stages': {', '.join(repr(n) for n in unknown)}; "
                f"pipeline {pipeline.name!r} has stages: {', '.join(known) or '(none)'}"
            )
        out = []
        for stage in pipeline.stages:
            overrides = dict(self.stages.get(stage.name, {}))
            for key in ("batch_size", "concurrency"):
                if key in overrides:
                    overrides[key] = int(overrides[key])
            try:
                out.append(dataclasses.replace(stage, **overrides) if overrides else stage)
            except ValueError as exc:
                raise ConfigError(f"'stages.{stage.name}': {exc}") from exc
        return out
