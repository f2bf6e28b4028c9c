"""`labelmill validate URL`: check a dataset version (an output root or OUT/versions/<id>)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE = 0, 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a dataset version's checksums, layout, shards and bookkeeping against its schema",
        description="Check a dataset version: _SUCCESS and LATEST, every file's sha256 against _SUCCESS, "
        "every shard's against shards.json and every sample member's against index.parquet, every shard "
        "readable, every sample with every schema field of the right dtype and shape, index.parquet == the "
        "shards' samples, inputs.parquet statuses and counts == stats.json. A corrupted file is reported, "
        "never a traceback. Exit 0 when sound, 1 otherwise.",
    )
    parser.add_argument("url", help="output root (follows LATEST) or a version directory OUT/versions/<id>")
    parser.add_argument("--max-problems", type=int, default=20, metavar="N",
                        help="problems listed (default 20; all are counted)")
    parser.add_argument("--json", action="store_true", help="print the problems as JSON")
    parser.set_defaults(handler=_validate)


def _validate(args: argparse.Namespace) -> int:
    from labelmill.infra.validate import validate_version
    from labelmill.pipelines.cli import UsageError

    if args.max_problems < 1:
        raise UsageError("--max-problems must be >= 1")
    problems = validate_version(args.url)
    shown = problems[: args.max_problems]
    if args.json:
        document = {
            "url": args.url,
            "ok": not problems,
            "problems": len(problems),
            "listed": [{"where": p.where, "what": p.what, "expected": p.expected, "got": p.got} for p in shown],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    elif problems:
        lines = [str(p) for p in shown]
        if len(problems) > len(shown):
            lines.append(f"... and {len(problems) - len(shown)} more")
        sys.stdout.write("\n".join(lines) + "\n")
    else:
        sys.stdout.write(f"OK {args.url}\n")
    if problems:
        log.error("%s: %d problem%s", args.url, len(problems), "" if len(problems) == 1 else "s")
        return EXIT_FAILURE
    return EXIT_OK
