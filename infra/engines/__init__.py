"""Engines that run one :class:`~labelmill.infra.pipeline.Pipeline` unchanged: local, Ray Data, Beam.

    engine = get_engine("ray", EngineConfig(name="ray", stages={"detect": {"num_gpus": 1}}))
    for batch in engine.run(pipeline, items, sink_stage=writer_stage):
        ...
    engine.stats.as_dict()   # per-stage items, seconds, items/s

The contract every engine keeps is in :mod:`labelmill.infra.engines.base`; ray and apache_beam
are imported only when their engine runs.
"""

from __future__ import annotations

from labelmill.infra.engines.base import Engine, RunStats, StageStats, collect_by_key
from labelmill.infra.engines.config import ENGINE_NAMES, EngineConfig

__all__ = ["Engine", "EngineConfig", "RunStats", "StageStats", "ENGINE_NAMES", "get_engine", "collect_by_key", "shutdown_engine"]


def get_engine(name: str, config: EngineConfig | None = None) -> Engine:
    """The engine called ``name`` ("local", "ray" or "beam") configured by ``config``."""
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
    if config is None:
        config = EngineConfig(name=name)  # type: ignore[arg-type]
    elif config.name != name:
        raise ValueError(f"engine {name!r} was asked for with a config for engine {config.name!r}")
    if name == "local":
        from labelmill.infra.engines.local import LocalEngine

        return LocalEngine(config=config)
    if name == "ray":
        from labelmill.infra.engines.ray_engine import RayEngine

        return RayEngine(config=config)
    from labelmill.infra.engines.beam_engine import BeamEngine

    return BeamEngine(config=config)


def shutdown_engine(name: str) -> None:
    """Release what an engine keeps between runs in this process (Ray: the session it started or joined)."""
    if name == "ray":
        import sys

        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
