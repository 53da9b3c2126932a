"""``medsynth models``: the model packages MedSynth can use (bundled and in a user folder), each one checked.

A package whose weights are missing, or differ in size or SHA-256 from what its JSON records, or whose
metadata cannot be read, is listed as DAMAGED with the reason; the command then exits 2 with one line.
"""

from __future__ import annotations

import argparse

from ..errors import ModelError
from ..reports import to_json

# ..models.package imports torch: loaded when the command runs, not when the parser is built.


def _row(check: "PackageCheck") -> dict:
    info, metadata = check.info, (check.info.metadata if check.info is not None else {})
    return {
        "name": check.name,
        "task": info.task if info is not None else "?",
        "family": info.family if info is not None else "?",
        "bundled": info.bundled if info is not None else False,
        "path": str(check.json_path),
        "description": metadata.get("description", ""),
        "metrics": metadata.get("metrics", {}),
        "damaged": check.problem,
    }


def _run(args: argparse.Namespace) -> int:
    from ..models.package import check_packages

    rows = [_row(check) for check in check_packages(args.dir or (), task=args.task)]
    if args.json:
        print(to_json(rows, indent=2))
    elif not rows:
        print("no model packages found")
    else:
        for row in rows:
            origin = "bundled" if row["bundled"] else row["path"]
            about = f"DAMAGED: {row['damaged']}" if row["damaged"] else row["description"]
            print(f"{row['name']:<24} {row['task']:<14} {row['family']:<10} {origin}  {about}")
    damaged = [row["name"] for row in rows if row["damaged"]]
    if damaged:
        raise ModelError(
            f"{len(damaged)} of the {len(rows)} model packages listed {'is' if len(damaged) == 1 else 'are'} "
            f"damaged ({', '.join(damaged)}): copy or download {'it' if len(damaged) == 1 else 'them'} again"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list bundled model packages and those in --dir, each checked against its recorded checksum"
    )
    parser.add_argument("--dir", action="append", metavar="DIR", help="also list packages in DIR (repeatable)")
    parser.add_argument("--task", help="only packages for this task (fill, denoise, ...)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=_run)
