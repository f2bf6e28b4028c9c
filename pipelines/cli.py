"""The `labelmill` command line.

Each subcommand lives in ``pipelines/commands/<name>.py`` and exposes
``register(subparsers) -> None``; the parser it adds sets ``handler=fn(args) -> int``.
Exit codes: 0 ok, 2 usage or config error (or a preflight check: nothing was computed), 1 run
failure (also a run in which no input was written).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from labelmill.infra.config import ConfigError
from labelmill.infra.preflight import PreflightError
from labelmill.operators.common.native_logs import QUIET_NATIVE_ENV

log = logging.getLogger("labelmill")

# Order is the order shown in --help.
COMMAND_MODULES = ("run", "submit", "demo", "config", "synth", "body", "prior", "train", "keypoints", "eval", "bench", "validate", "inspect", "report", "export", "versions", "gc", "schedule")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """Bad command-line usage that argparse could not catch (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelmill",
        description="Generate training labels at scale: SMPL bundle adjustment over video, "
        "weak segmentation labels, WebDataset shards.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less logging (warnings and errors only)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"labelmill.pipelines.commands.{name}").register(subparsers)
    return parser


def configure_logging(verbose: int, quiet: int) -> None:
    if quiet > verbose:  # -q: native libraries' own stderr lines too (operators/common/native_logs.py)
        os.environ[QUIET_NATIVE_ENV] = "1"
    level = logging.INFO + 10 * (quiet - verbose)
    level = max(logging.DEBUG, min(logging.ERROR, level))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 on usage errors
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args.handler(args) or EXIT_OK)
    except (ConfigError, UsageError, PreflightError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_FAILURE
    except Exception as exc:  # a run failure: report it, with the traceback at -v
        log.error("%s: %s", type(exc).__name__, exc, exc_info=args.verbose > 0)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
