"""``medsynth check FILE``: fail fast (exit 2, one line) on a volume no task could process.

``read_volume`` refuses a damaged file (data shorter than its header says, compressed data that ends early or
fails its checksum, a DICOM series with a slice position missing, duplicated or out of step);
``validate_volume`` a volume no task can use.
"""

from __future__ import annotations

import argparse

from ..io import read_volume
from ..volume import validate_volume


def _run(args: argparse.Namespace) -> int:
    volume = read_volume(args.file)
    validate_volume(volume)
    if not args.quiet:
        print(f"{args.file}: OK ({'x'.join(map(str, volume.shape_ijk))} {volume.array.dtype}, {volume.orientation_code()})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check that a volume can be processed (file complete, DICOM slices evenly spaced, 3D, scalar, finite, "
        "not constant, >= 2 slices)",
    )
    parser.add_argument("file", metavar="FILE")
    parser.set_defaults(func=_run)
