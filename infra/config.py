"""Typed, nested configuration: dataclasses with defaults, YAML (safe loader), `--set` overrides.

A config is a tree of dataclasses. Values are checked against the field annotations on load;
an unknown or mistyped key fails with :class:`ConfigError` naming the dotted key and what is
allowed. Classes may add range checks in ``__post_init__`` by raising ``ValueError``; the loader
re-raises them as ``ConfigError`` with the section's dotted path.

    cfg = load_config(Pose3dConfig, path="run.yaml", overrides=["fit.lambda_r=2.0"])
    text = dump_yaml(cfg)  # the resolved config as YAML
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from labelmill.infra.formats.config_yaml import dump_yaml, to_dict  # noqa: F401 (part of this module's API)

T = TypeVar("T")

__all__ = ["ConfigError", "from_dict", "to_dict", "apply_overrides", "load_config", "dump_yaml", "parse_override"]


class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range. The message names the dotted key."""


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        inner = _describe(args[0]) if args else "any"
        return f"list of {inner}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"section ({', '.join(f.name for f in dataclasses.fields(tp))})"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return the value converted where lossless."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping with keys {_describe(tp)}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"config key '{key}' has value {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}"
            )
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key '{key}' has value {value!r}; expected {_describe(tp)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"config key '{key}' must be null, got {value!r}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a {_describe(tp)}, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key '{key}' must be {_describe(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping, validating every key and value."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(
                f"unknown config key '{key}'; allowed keys{' in ' + prefix if prefix else ''}: "
                + ", ".join(sorted(fields))
            )
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        where = f"section '{prefix}'" if prefix else "config"
        raise ConfigError(f"{where}: {exc}") from exc


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"fit.lambda_r=2"`` -> (["fit", "lambda_r"], 2). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override for '{key}' has a value that is not valid YAML: {raw!r}") from exc
    return key.split("."), value


def _set_nested(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings to a nested dict (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        _set_nested(data, path, value)
    return data


def load_config(cls: type[T], path: str | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Defaults of ``cls``, then the YAML file at ``path`` (any fsspec URL), then overrides."""
    data = to_dict(cls())
    if path:
        from labelmill.infra import storage

        try:
            loaded = yaml.safe_load(storage.read_text(path))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        _merge(data, loaded, "")
    apply_overrides(data, overrides)
    return from_dict(cls, data)


def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str) -> None:
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v, f"{prefix}{k}.")
        else:
            base[k] = v
