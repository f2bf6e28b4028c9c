"""`labelmill config show PIPELINE`: print the resolved config as YAML."""

from __future__ import annotations

import argparse
import sys

from labelmill.infra.config import dump_yaml
from labelmill.pipelines.commands._common import PIPELINE_NAMES, add_config_args, resolve_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="inspect pipeline configs")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    sub.required = True
    show = sub.add_parser(
        "show",
        help="print the resolved config (defaults < --config < --set) as YAML",
        description="Print the resolved config of PIPELINE as YAML.",
    )
    show.add_argument("pipeline", choices=PIPELINE_NAMES, help="pipeline name")
    add_config_args(show)
    show.set_defaults(handler=_show)


def _show(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.pipeline, args)
    sys.stdout.write(dump_yaml(cfg))
    return 0
