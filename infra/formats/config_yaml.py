"""Configs as plain data and YAML text (what ``config.yaml`` of a dataset version and ``config show`` print)."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

__all__ = ["to_dict", "dump_yaml"]


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists) suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML (keys in declaration order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
