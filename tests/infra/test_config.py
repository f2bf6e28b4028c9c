from dataclasses import dataclass, field
from typing import Literal

import pytest

from labelmill.infra.config import ConfigError, dump_yaml, from_dict, load_config, parse_override


@dataclass
class Inner:
    lr: float = 1.0
    mode: Literal["fast", "exact"] = "fast"
    path: str | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


@dataclass
class Outer:
    seed: int = 0
    names: list[str] = field(default_factory=lambda: ["a"])
    inner: Inner = field(default_factory=Inner)


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 5\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, str(f), ["inner.mode=exact", "inner.lr=2"])
    assert cfg.seed == 5 and cfg.inner.lr == 2.0 and cfg.inner.mode == "exact"
    assert isinstance(cfg.inner.lr, float)
    assert "mode: exact" in dump_yaml(cfg)
    # round trip through YAML
    f2 = tmp_path / "d.yaml"
    f2.write_text(dump_yaml(cfg))
    assert load_config(Outer, str(f2)) == cfg


def test_unknown_key_is_named_with_allowed_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner\.lrr'.*allowed keys in inner: lr, mode, path"):
        load_config(Outer, None, ["inner.lrr=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'sed'"):
        from_dict(Outer, {"sed": 1})


def test_mistyped_values_name_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"'inner\.mode'.*allowed values: 'fast', 'exact'"):
        load_config(Outer, None, ["inner.mode=slow"])
    with pytest.raises(ConfigError, match=r"'seed' must be an integer"):
        load_config(Outer, None, ["seed=abc"])
    with pytest.raises(ConfigError, match=r"'seed' must be an integer"):
        load_config(Outer, None, ["seed=true"])
    with pytest.raises(ConfigError, match=r"section 'inner': lr must be > 0"):
        load_config(Outer, None, ["inner.lr=-1"])
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("noequals")


def test_optional_and_list_values():
    cfg = load_config(Outer, None, ["inner.path=/x.pkl", "names=[b, c]"])
    assert cfg.inner.path == "/x.pkl" and cfg.names == ["b", "c"]
    cfg = load_config(Outer, None, ["inner.path=null"])
    assert cfg.inner.path is None


def test_yaml_is_parsed_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("seed: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, str(f))
