"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
from typing import Any


# Names of the pipelines with a config (keys of pipelines.config.PIPELINE_CONFIGS). Kept here so
# that building the CLI does not import every component (torch, smplx, ...): ~1.5 s per command.
PIPELINE_NAMES = ("pose3d", "segmentation")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set dotted.key=value``."""
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML config file (any fsspec URL)")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config value, e.g. --set fit.lambda_r=2.0 (repeatable)",
    )


def resolve_config(pipeline: str, args: argparse.Namespace) -> Any:
    """The pipeline's config: defaults, then ``--config``, then ``--set`` overrides."""
    from labelmill.infra.config import load_config
    from labelmill.pipelines.config import config_class

    return load_config(config_class(pipeline), getattr(args, "config", None), getattr(args, "overrides", []))
