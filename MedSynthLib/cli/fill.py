"""``medsynth detect | fill | upsample``: find, fill and add slices through-plane, files in, files out.

All three call :mod:`MedSynthLib.tasks.fill`. Slice indices are 0-based along
the chosen axis; ``i|j|k`` name the volume's IJK axes (k is the third NIfTI/NRRD
axis); ``auto`` picks the axis with the largest spacing.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import WRITE_EXTENSIONS, read_volume, write_volume
from ..tasks import fill as fill_task  # exports lazily: torch loads when a command runs, not with the parser
from ..tasks.fill import FillOptions, UpsampleOptions, parse_slice_list
from ..volume import AXIS_NAMES, Volume, array_axis
from ..reports import to_json, to_jsonable
from .common import add_option_args, axis_arg, device_arg, options_from_args, progress_bar
from ._outputs import add_output_args, prepare

__all__ = ["register", "demo_step"]


def _slices_arg(text: str) -> str:
    value = text.strip().lower()
    if value == "auto":
        return value
    for piece in (p.strip() for p in value.split(",")):
        if not re.fullmatch(r"\d+(\s*-\s*\d+)?", piece):
            raise argparse.ArgumentTypeError(f"{piece!r} is not an index or range like 3,7,10-12")
    try:
        parse_slice_list(value)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _write(outputs, volume: Volume, result) -> None:
    """Stage the result (and the QC picture), move them into place, then write the report."""
    from ..qc import save_qc_png

    outputs.stage_volume("OUTPUT", result.volume)
    outputs.stage_volume("--synthetic-mask", lambda: result.synthetic_mask)
    outputs.stage_volume("--uncertainty", result.uncertainty)
    outputs.stage("--qc", lambda path: save_qc_png(volume, result.volume, path, axis=result.axis,
                                                   slices=result.slices, title=_qc_title(result.report),
                                                   provenance=result.synthetic_mask, uncertainty=result.uncertainty))
    outputs.commit()
    outputs.write_report(result.report)


def _qc_title(report: dict) -> str:
    if report["operation"] == "fill":
        return f"fill: {len(report['slices'])} slice(s) along {report['axis']} restored with {report['method']}"
    return (f"upsample: {report['slices_before']} -> {report['slices_after']} slices along {report['axis']} "
            f"({report['method']}); new slices marked, before = nearest original slice")


def _run_detect(args: argparse.Namespace) -> int:
    volume = read_volume(args.input)
    axis = array_axis(args.axis, volume)
    found = fill_task.find_missing_slices(volume, axis=axis)
    if args.json:
        print(to_json({"axis": AXIS_NAMES[axis], "count": volume.array.shape[axis],
                          "slices": [{"index": i, "reason": r} for i, r in found]}, indent=2))
        return 0
    if not found:
        print(f"no missing or corrupted slice along {AXIS_NAMES[axis]} ({volume.array.shape[axis]} slices)")
    for index, reason in found:
        print(f"{AXIS_NAMES[axis]}={index}: {reason}")
    return 0


def _run_fill(args: argparse.Namespace) -> int:
    output = Path(args.output)
    outputs = prepare(args, inputs={"INPUT": args.input, "--model": args.model}, outputs={"OUTPUT": args.output})
    volume = read_volume(args.input)
    slices = None if args.slices == "auto" else parse_slice_list(args.slices)
    options = options_from_args(FillOptions, args, _METHOD_KNOBS, slices=slices, model=args.model,
                                uncertainty=bool(args.uncertainty))
    with progress_bar(args.quiet, "fill") as progress:
        result = fill_task.fill_slices(volume, options, progress=progress)
    with outputs:
        _write(outputs, volume, result)
    if not args.quiet:
        r = result.report
        listed = ",".join(str(s) for s in r["slices"]) or "none"
        print(f"filled {len(r['slices'])} slice(s) along {r['axis']} ({listed}) with {r['method']} "
              f"on {r['device']} in {r['seconds']:.1f} s -> {output}")
    return 0


def _run_upsample(args: argparse.Namespace) -> int:
    output = Path(args.output)
    outputs = prepare(args, inputs={"INPUT": args.input, "--model": args.model}, outputs={"OUTPUT": args.output})
    volume = read_volume(args.input)
    options = options_from_args(UpsampleOptions, args, _METHOD_KNOBS + ("factor", "spacing"), model=args.model,
                                uncertainty=bool(args.uncertainty))
    with progress_bar(args.quiet, "upsample") as progress:
        result = fill_task.upsample_slices(volume, options, progress=progress)
    with outputs:
        _write(outputs, volume, result)
    if not args.quiet:
        r = result.report
        print(f"{r['slices_before']} -> {r['slices_after']} slices along {r['axis']}, spacing "
              f"{r['spacing_before']:g} -> {r['spacing_after']:g} mm, {r['method']} on {r['device']} "
              f"in {r['seconds']:.1f} s -> {output}")
    return 0


#: The fill and upsample knobs offered as flags: choices, ranges and defaults from the options objects.
_METHOD_KNOBS = ("axis", "method", "device", "seed", "time_budget")

def _add_method_args(parser: argparse.ArgumentParser, options_class) -> None:
    add_option_args(parser, options_class, _METHOD_KNOBS, types={"axis": axis_arg, "device": device_arg},
                    metavars={"time_budget": "SECONDS"})
    parser.add_argument("--model", metavar="PACKAGE.json", help="fill model package (for --method model or auto)")
    add_output_args(parser)
    parser.add_argument("--uncertainty", metavar="FILE",
                        help="write the standard deviation of every synthesised voxel (float, the volume's units, "
                             "0 on acquired voxels), calibrated on held-out in-plane rows; the report gives its "
                             "calibration figures")


def register(subparsers: argparse._SubParsersAction) -> None:
    detect = subparsers.add_parser("detect", help="list blank or corrupted slices with the reason for each")
    detect.add_argument("input", metavar="INPUT", help="volume file (NRRD, NIfTI, MHA) or DICOM folder")
    detect.add_argument("--axis", type=axis_arg, default="auto", help="slice axis: i, j, k or auto (default: auto)")
    detect.add_argument("--json", action="store_true", help="print JSON instead of text")
    detect.set_defaults(func=_run_detect)

    fill = subparsers.add_parser("fill", help="fill missing or corrupted slices; other voxels stay identical")
    fill.add_argument("input", metavar="INPUT")
    fill.add_argument("output", metavar="OUTPUT", help=f"output file ({', '.join(WRITE_EXTENSIONS)})")
    fill.add_argument("--slices", type=_slices_arg, default="auto", metavar="auto|3,7,10-12",
                      help="0-based slice indices and ranges to fill, or auto = the ones detect finds (default: auto)")
    _add_method_args(fill, FillOptions)
    fill.set_defaults(func=_run_fill)

    upsample = subparsers.add_parser("upsample", help="add slices through-plane by a factor or to a spacing")
    upsample.add_argument("input", metavar="INPUT")
    upsample.add_argument("output", metavar="OUTPUT", help=f"output file ({', '.join(WRITE_EXTENSIONS)})")
    add_option_args(upsample, UpsampleOptions, ("factor", "spacing"), metavars={"factor": "K", "spacing": "MM"},
                    helps={"factor": "integer factor: n slices become (n-1)*K+1 (default: 2 unless --spacing)",
                           "spacing": "target slice spacing in mm (exact), instead of --factor"})
    _add_method_args(upsample, UpsampleOptions)
    upsample.set_defaults(func=_run_upsample)


def demo_step(samples: dict, out_dir: Path, progress):
    """Plant a zeroed and a noise slice in the MR sample, detect and fill them; upsample the CT x2.

    Fills with ``flow`` and upsamples with ``spline`` so the step takes seconds on a
    laptop CPU (``selfsup`` is the better method and takes minutes; see docs/fill.md).
    """
    from ..progress import subrange
    from .demo import DemoOutcome

    mr = samples["mr-t1"]
    damaged_array = mr.array.copy()
    axis = mr.slice_axis()
    stack = np.moveaxis(damaged_array, axis, 0)
    middle = stack.shape[0] // 2
    stack[middle - 5] = 0
    rng = np.random.default_rng(0)
    stack[middle + 4] = rng.integers(int(mr.array.min()), int(mr.array.max()) + 1, stack[middle + 4].shape)
    damaged = Volume(damaged_array, mr.ijk_to_ras)
    found = fill_task.find_missing_slices(damaged, axis=axis)
    filled = fill_task.fill_slices(damaged, slices=[i for i, _ in found], axis=axis, method="flow", device="cpu",
                         progress=subrange(progress, 0.0, 0.5))
    ct = samples["ct-chest"]
    upsampled = fill_task.upsample_slices(ct, factor=2, method="spline", progress=subrange(progress, 0.5, 1.0))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "fill_mr_damaged.nii.gz", out_dir / "fill_mr_filled.nii.gz", out_dir / "fill_ct_upsampled_x2.nii.gz"]
    write_volume(damaged, paths[0])
    write_volume(filled.volume, paths[1])
    write_volume(upsampled.volume, paths[2])
    planted = [middle - 5, middle + 4]
    ref = np.moveaxis(mr.array, axis, 0)[planted].astype(np.float64)
    got = np.moveaxis(filled.volume.array, axis, 0)[planted].astype(np.float64)
    summary = {
        "planted": planted,
        "detected": [{"index": i, "reason": r} for i, r in found],
        "fill": filled.report,
        "fill_mean_abs_error": round(float(np.mean(np.abs(ref - got))), 3),
        "upsample": upsampled.report,
    }
    return DemoOutcome(task="fill", sample="mr-t1", before=damaged, after=filled.volume, outputs=paths,
                       summary=to_jsonable(summary), qc_axis=axis,
                       qc_options={"slices": list(filled.slices), "title": _qc_title(filled.report)})
