"""``medsynth info FILE``: what a volume is and where it sits, as MedSynth sees it."""

from __future__ import annotations

import argparse

import numpy as np

from ..io import read_volume
from ..volume import AXIS_NAMES, Volume
from ..reports import to_json


def describe_volume(volume: Volume) -> dict:
    """Geometry and intensity summary of ``volume`` (IJK order for shapes and spacing)."""
    array = volume.array
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    return {
        "shape_ijk": list(volume.shape_ijk),
        "dtype": str(array.dtype),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "origin_ras_mm": [round(o, 6) for o in volume.origin],
        "direction_ras": np.round(volume.direction, 6).tolist(),
        "orientation": volume.orientation_code(),
        "slice_axis": AXIS_NAMES[volume.slice_axis()],
        "intensity_range": [finite.min().item(), finite.max().item()] if finite.size else [None, None],
        "non_finite_voxels": int(array.size - finite.size),
    }


def _run(args: argparse.Namespace) -> int:
    summary = describe_volume(read_volume(args.file))
    if args.json:
        print(to_json(summary, indent=2))
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="show a volume's shape, geometry and intensity range")
    parser.add_argument("file", metavar="FILE", help="NRRD, NIfTI, MHA/MHD file or DICOM series folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=_run)
