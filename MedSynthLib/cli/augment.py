"""``medsynth augment``: a synthetic-lesion training set from a cohort, in nnU-Net v2 and MONAI layouts.

Examples::

    medsynth augment scans/ out/ --variants 4 --seed 7 --jobs 2
    medsynth augment "scans/*.nii.gz" out/ --preset mr-wmh --count 3 --size 6
    medsynth augment cohort.csv out/ --variants 2 --scheduler tcp://head-node:8786

``cohort.csv`` rows are ``image[,label][,region][,preset]`` (relative to the CSV).
Every volume written says in its header that it holds synthetic lesions, with
the seed and the specs; a rerun with the same options redoes only what is
missing or changed, and ``--jobs``/``--scheduler`` give the same bytes as a serial run.
"""

from __future__ import annotations

import argparse
import sys

from .common import positive_int
from .lesion import add_lesion_options

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "augment",
        help="synthetic-lesion training set from a cohort (nnU-Net v2 + MONAI layouts)",
        description="Insert synthetic lesions into every scan of a folder, glob or CSV manifest, VARIANTS times, and "
        "write an nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json), a MONAI datalist (datalist.json) and "
        "manifest.csv (source, sha256, variant, seed, specs, lesion volumes, seconds per output). Existing labels are "
        "kept; the synthetic lesions get --lesion-label. Outputs hold synthetic lesions and say so in their headers.",
    )
    parser.add_argument("input", metavar="INPUT", help="folder of volumes, glob pattern, or CSV manifest "
                        "(image[,label][,region][,preset])")
    parser.add_argument("output", metavar="OUTPUT_DIR", help="dataset folder to write (or resume)")
    parser.add_argument("--variants", type=positive_int, default=1, metavar="N",
                        help="synthetic versions per scan (default: %(default)s)")
    parser.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                        help="worker processes on this machine, each with its share of the cores (default: %(default)s)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="run on a Dask distributed cluster (e.g. tcp://host:8786; "
                        "needs medsynth[distributed]); OUTPUT_DIR must be on a file system the workers share")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad scan instead of recording it and going on")
    parser.add_argument("--lesion-label", type=positive_int, metavar="ID",
                        help="class id of the synthetic lesions (default: one more than the largest id in the input labels, 1 without)")
    parser.add_argument("--oedema-label", type=positive_int, metavar="ID",
                        help="class id of synthetic oedema (default: oedema is not labelled)")
    add_lesion_options(parser, cohort=True)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..augment import augment
    from ..errors import Cancelled

    lesion = {
        "preset": args.preset, "count": args.count, "size_mm": args.size, "contrast": args.contrast,
        "region": args.region, "min_spacing_mm": args.min_spacing, "modality": args.modality,
        "shape_model": args.shape_model, "appearance_model": args.appearance_model,
        "appearance_steps": args.appearance_steps, "device": args.device,
        "lesion_label": args.lesion_label, "oedema_label": args.oedema_label,
    }
    try:
        result = augment(args.input, args.output, variants=args.variants, seed=args.seed, lesion=lesion,
                         jobs=args.jobs, scheduler=args.scheduler, strict=args.strict, progress=not args.quiet)
    except (KeyboardInterrupt, Cancelled):
        print(f"medsynth: cancelled; every output in {args.output}/manifest.csv is complete: "
              "run the same command again to finish", file=sys.stderr)
        return 130
    for row in result.failed:
        print(f"medsynth: {row['case']} variant {row['variant']} ({row['source']}): {row['error']}", file=sys.stderr)
    if not args.quiet or result.failed:
        print(result.summary())
    return 0 if not result.failed else 2  # bad input, like every other command
