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

from ..augment import COHORT_LESION, AugmentOptions
from ..tasks.lesion import LesionOptions
from .common import add_option_args, options_from_args, print_warnings
from .lesion import add_lesion_options, lesion_knobs

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
    add_option_args(parser, AugmentOptions, ("variants", "jobs"), metavars={"variants": "N", "jobs": "N"})
    parser.add_argument("--scheduler", metavar="ADDRESS", help="run on a Dask distributed cluster (e.g. tcp://host:8786; "
                        "needs medsynth[distributed]); OUTPUT_DIR must be on a file system the workers share")
    parser.add_argument("--strict", action="store_true", help=AugmentOptions.knob("strict").help)
    add_option_args(parser, AugmentOptions, ("lesion_label", "oedema_label", "seed"),
                    metavars={"lesion_label": "ID", "oedema_label": "ID"})
    add_lesion_options(parser, defaults=COHORT_LESION)
    add_option_args(parser, LesionOptions, ("region",), helps={"region": (
        f"{LesionOptions.knob('region').help}; per-scan masks come from the manifest's region column "
        f"(default: {COHORT_LESION['region']})")})
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..augment import augment
    from ..errors import Cancelled

    options = options_from_args(AugmentOptions, args, ("variants", "jobs", "seed", "lesion_label", "oedema_label"),
                                scheduler=args.scheduler, strict=args.strict,
                                lesion=LesionOptions.build(COHORT_LESION, **lesion_knobs(args)))
    try:
        result = augment(args.input, args.output, options, progress=not args.quiet)
    except (KeyboardInterrupt, Cancelled):
        print(f"medsynth: cancelled; every output in {args.output}/manifest.csv is complete: "
              "run the same command again to finish", file=sys.stderr)
        return 130
    print_warnings({"warnings": result.warnings})  # "medsynth: warning: case1 variant 0: lesion 1 ..."
    for row in result.failed:
        print(f"medsynth: {row['case']} variant {row['variant']} ({row['source']}): {row['error']}", file=sys.stderr)
    if not args.quiet or result.failed:
        print(result.summary())
    return 0 if not result.failed else 2  # bad input, like every other command
