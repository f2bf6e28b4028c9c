"""`labelmill gc OUT --keep N`: remove old versions and what only they referenced."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gc",
        help="remove old versions, unreferenced results and shard objects, abandoned runs' leftovers",
        description="Keep LATEST and the N newest other committed versions; remove the other versions, the "
        "stage results and shard objects no kept version references, version directories of abandoned runs "
        "and atomic-write leftovers older than an hour. While a run is in progress (a live run lease) only "
        "old versions are removed. Prints what is (with --dry-run: would be) removed.",
    )
    parser.add_argument("out", help="output root (the directory or URL holding LATEST)")
    parser.add_argument("--keep", type=int, required=True, metavar="N",
                        help="committed versions to keep besides LATEST (>= 0)")
    parser.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=_gc)


def format_plan(plan: Any, *, dry_run: bool) -> str:
    """What :func:`~labelmill.infra.gc.collect` removed (or would remove), as text."""
    verb = "would remove" if dry_run else "removed"
    lines = [f"gc {plan.out_url}: LATEST {plan.latest}; keeping {len(plan.kept)} version"
             f"{'' if len(plan.kept) == 1 else 's'}: {', '.join(plan.kept)}"]
    for version_id in plan.removed_versions:
        lines.append(f"  {verb} version {version_id}")
    for version_id in plan.uncommitted_versions:
        lines.append(f"  {verb} uncommitted version directory {version_id}")
    for name, category in plan.categories.items():
        status = f"  (held: {category.held})" if category.held else ""
        lines.append(f"  {name:<12} {category.files:>8} files {category.bytes / 2**20:>10.2f} MB{status}")
    lines.append(f"  {'total':<12} {plan.files:>8} files {plan.bytes / 2**20:>10.2f} MB {verb}")
    lines.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(lines) + "\n"


def _gc(args: argparse.Namespace) -> int:
    from labelmill.infra.gc import MissingLatestError, collect
    from labelmill.pipelines.cli import UsageError

    if args.keep < 0:
        raise UsageError("--keep must be >= 0")
    try:
        plan = collect(args.out, args.keep, dry_run=args.dry_run)
    except MissingLatestError as exc:
        raise UsageError(str(exc)) from exc
    if args.json:
        sys.stdout.write(json.dumps({**plan.as_dict(), "dry_run": bool(args.dry_run)}, indent=2) + "\n")
    else:
        sys.stdout.write(format_plan(plan, dry_run=args.dry_run))
    return 0
