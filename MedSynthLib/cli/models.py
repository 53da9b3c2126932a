"""``medsynth models``: the model packages MedSynth can use (bundled and in a user folder)."""

from __future__ import annotations

import argparse
import json

from ..models import list_packages


def _run(args: argparse.Namespace) -> int:
    infos = list_packages(args.dir or (), task=args.task)
    rows = [
        {
            "name": info.name,
            "task": info.task,
            "family": info.family,
            "bundled": info.bundled,
            "path": str(info.json_path),
            "description": info.metadata.get("description", ""),
            "metrics": info.metadata.get("metrics", {}),
        }
        for info in infos
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no model packages found")
    else:
        for row in rows:
            origin = "bundled" if row["bundled"] else row["path"]
            print(f"{row['name']:<24} {row['task']:<14} {row['family']:<10} {origin}  {row['description']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list bundled model packages and those in --dir")
    parser.add_argument("--dir", action="append", metavar="DIR", help="also list packages in DIR (repeatable)")
    parser.add_argument("--task", help="only packages for this task (fill, denoise, ...)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=_run)
