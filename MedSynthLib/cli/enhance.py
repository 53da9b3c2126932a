"""``medsynth denoise``, ``medsynth bias`` and ``medsynth enhance``: the enhance task on files.

Each checks its files and device, builds the task's options object from its flags (whose choices, ranges and
defaults come from :class:`~MedSynthLib.tasks.enhance.DenoiseOptions`, :class:`~MedSynthLib.tasks.enhance.BiasOptions`
and :class:`~MedSynthLib.tasks.enhance.EnhanceOptions`, never copied here), reads the input (and the optional
mask), runs the task function (which checks that its result is plausible, as it does for every front end) and
writes the outputs only when all of that succeeded: a bad input, an implausible result or a cancellation writes
nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ..io import read_volume, write_volume
from ..progress import ProgressCallback
from ..volume import Volume
from .common import add_option_args, device_arg, number_in, options_from_args, positive_int, progress_bar
from ._outputs import add_output_args, prepare

__all__ = ["register", "demo_step"]

#: The knobs each command offers as flags (choices, ranges, defaults and help from the options classes).
_DENOISE_KNOBS = ("method", "strength", "modality", "device", "seed", "time_budget", "local_noise", "coils")
_BIAS_KNOBS = ("shrink", "output_dtype", "time_budget")
_ENHANCE_KNOBS = ("steps", "device", "seed", "time_budget")


def _read_mask(path: Optional[str]) -> Optional[Volume]:
    return None if path is None else read_volume(path)


def _write(outputs, volume: Volume, result, *, task: str) -> None:
    """Stage the (library-checked) result with the field, the synthesised-voxel mask and the QC picture, move them
    into place, write the report."""
    from ..provenance import changed_provenance
    from ..qc import save_qc_png

    def made():  # what the task synthesised or rewrote: the pipeline says; a voxel step, the voxels it changed
        found = getattr(result, "synthetic_mask", None)
        return found if found is not None else changed_provenance(volume, result.volume)

    with outputs:
        outputs.stage_volume("OUTPUT", result.volume)
        if getattr(result, "field", None) is not None:
            outputs.stage_volume("--field", result.field)
        if getattr(result, "noise_map", None) is not None:
            outputs.stage_volume("--noise-map", result.noise_map)
        outputs.stage_volume("--synthetic-mask", made)
        if result.volume.array.shape == volume.array.shape:
            outputs.stage("--qc", lambda path: save_qc_png(volume, result.volume, path, title=task,
                                                           **_noise_map_panel(result)))
        else:
            outputs.stage("--qc", lambda path: save_qc_png(volume, result.volume, path, title=task + "; before "
                                                           "shown as the nearest original voxel"))
        outputs.commit()
        outputs.write_report(result.report)


def _noise_map_panel(result) -> dict:
    """:func:`~MedSynthLib.qc.qc_picture` keywords that add a denoise result's noise map (estimated on every call)
    as a panel, titled with whether the report says it was used; none for a result without one."""
    found = getattr(result, "noise_map", None)
    if found is None or found.array.shape != result.volume.array.shape:
        return {}
    return {"noise_map": found, "noise_map_used": (result.report.get("noise_map") or {}).get("used")}


def _run_denoise(args: argparse.Namespace) -> int:
    from ..tasks.enhance import DenoiseOptions, denoise

    options = options_from_args(DenoiseOptions, args, _DENOISE_KNOBS, model=args.model,
                                method_options={"selfsup": {"steps": args.training_steps}})
    outputs = prepare(args, inputs={"INPUT": args.input, "--mask": args.mask, "--model": args.model},
                      outputs={"OUTPUT": args.output, "--noise-map": args.noise_map})
    volume = read_volume(args.input)
    mask = _read_mask(args.mask)
    with progress_bar(args.quiet, "denoise") as progress:
        result = denoise(volume, options, mask=mask, progress=progress)
    _write(outputs, volume, result, task=f"denoise ({result.report['method']})")
    if not args.quiet:
        noise = result.noise
        print(f"denoised with {result.report['method']} in {result.report['seconds']:.1f} s "
              f"(noise sigma {noise.sigma:.3g}, {noise.model}, from {noise.method}): {args.output}")
    return 0


def _run_bias(args: argparse.Namespace) -> int:
    from ..tasks.enhance import BiasOptions, correct_bias

    options = options_from_args(BiasOptions, args, _BIAS_KNOBS)
    outputs = prepare(args, inputs={"INPUT": args.input, "--mask": args.mask},
                      outputs={"OUTPUT": args.output, "--field": args.field})
    volume = read_volume(args.input)
    mask = _read_mask(args.mask)
    with progress_bar(args.quiet, "bias") as progress:
        result = correct_bias(volume, options, mask=mask, progress=progress)
    _write(outputs, volume, result, task="bias correction")
    if not args.quiet:
        done = result.report
        if done["changed"]:
            low, high = done["parameters"]["field_range"]
            print(f"bias corrected in {done['seconds']:.1f} s (field {low:.2f}-{high:.2f} in the mask, tissue CV "
                  f"{100 * done['tissue_cv_before']:.2f} % -> {100 * done['tissue_cv_after']:.2f} %, "
                  f"{done['output_dtype']}): {args.output}")
        else:  # the reason is among the warnings, printed on stderr
            print(f"left unchanged in {done['seconds']:.1f} s: {args.output}")
    return 0


def _run_enhance(args: argparse.Namespace) -> int:
    from ..tasks.enhance import EnhanceOptions, enhance

    # the steps are parsed here: a malformed pipeline fails before the input is even read
    options = options_from_args(EnhanceOptions, args, _ENHANCE_KNOBS, model=args.model)
    outputs = prepare(args, inputs={"INPUT": args.input, "--mask": args.mask, "--model": args.model},
                      outputs={"OUTPUT": args.output, "--field": args.field})
    volume = read_volume(args.input)
    mask = _read_mask(args.mask)
    with progress_bar(args.quiet, "enhance") as progress:
        result = enhance(volume, options, mask=mask, progress=progress)
    _write(outputs, volume, result, task=f"enhance ({result.report['method']})")
    if not args.quiet:
        print(f"enhanced ({result.report['method']}) in {result.report['seconds']:.1f} s: {args.output}")
    return 0


_METHOD_HELP = ("auto: model if --model is given, else selfsup on a GPU and fusion on a CPU; dct is the "
                "fastest strong method, nlm and aniso the classical ones")


def _add_denoise(subparsers: argparse._SubParsersAction) -> None:
    from ..tasks.enhance import DenoiseOptions

    parser = subparsers.add_parser(
        "denoise", help="remove noise (sliding-DCT and non-local means fusion, self-supervised network, model "
        "package, diffusion)",
        description="Denoise a volume; output keeps the grid and voxel type. The default on a CPU (fusion) needs no "
        "training; selfsup adds a small network trained on this volume alone (minutes on a CPU).")
    parser.add_argument("input", help="input volume (NRRD, NIfTI, MHA)")
    parser.add_argument("output", help="output volume")
    strength = DenoiseOptions.knob("strength")
    add_option_args(parser, DenoiseOptions, _DENOISE_KNOBS,
                    types={"device": device_arg, "strength": number_in(strength.low, strength.high)},
                    helps={"method": _METHOD_HELP},
                    metavars={"strength": "X", "time_budget": "SECONDS",
                              "modality": "|".join(c.upper() for c in DenoiseOptions.knob("modality").choices)})
    parser.add_argument("--mask", metavar="MASK", help="denoise only inside this label map (same grid); noise measured there")
    parser.add_argument("--model", metavar="PACKAGE", help="denoise model package (.json) for --method model (default: the bundled denoise_default)")
    parser.add_argument("--training-steps", type=positive_int, metavar="N",
                        help="self-supervised training steps (default 200; fewer is faster and a little weaker)")
    parser.add_argument("--noise-map", metavar="FILE",
                        help="also write the local noise sigma map (float32, same grid and geometry as the input; "
                             "the report's noise_map summarises it and says whether the denoiser followed it)")
    add_output_args(parser)
    parser.set_defaults(func=_run_denoise)


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..tasks.enhance import BiasOptions, EnhanceOptions

    _add_denoise(subparsers)
    parser = subparsers.add_parser(
        "bias", help="correct MR intensity shading (N4 bias field)",
        description="N4 bias-field correction (SimpleITK), fitted on a shrunk image and applied at full resolution "
        "where it lowers the tissue CV (else the volume is written unchanged, with a warning); never clipped.")
    parser.add_argument("input", help="input volume")
    parser.add_argument("output", help="corrected volume (same grid; voxel type: see --output-dtype)")
    parser.add_argument("--mask", metavar="MASK", help="fit the field inside this label map (default: Otsu foreground)")
    parser.add_argument("--field", metavar="FIELD_OUT", help="also write the multiplicative field (float32)")
    add_option_args(parser, BiasOptions, _BIAS_KNOBS, metavars={"shrink": "N", "output_dtype": "auto|input|float32",
                                                                 "time_budget": "SECONDS"})
    add_output_args(parser)
    parser.set_defaults(func=_run_bias)

    parser = subparsers.add_parser(
        "enhance", help="run several steps (bias, denoise, upsample) and write the result only if all succeed",
        description="Steps: bias[:SHRINK], denoise[:METHOD[:STRENGTH]], upsample:FACTOR[:METHOD].")
    parser.add_argument("input", help="input volume")
    parser.add_argument("output", help="output volume")
    parser.add_argument("--steps", required=True, metavar="LIST", help=EnhanceOptions.knob("steps").help)
    add_option_args(parser, EnhanceOptions, _ENHANCE_KNOBS[1:], types={"device": device_arg},
                    metavars={"time_budget": "SECONDS"})
    parser.add_argument("--mask", metavar="MASK", help="tissue mask for the bias and denoise steps (same grid)")
    parser.add_argument("--field", metavar="FIELD_OUT", help="write the bias step's field")
    parser.add_argument("--model", metavar="PACKAGE", help="denoise model package for denoise:model")
    add_output_args(parser)
    parser.set_defaults(func=_run_enhance)


def demo_step(samples: dict, out_dir: Path, progress: Optional[ProgressCallback]):
    """N4 then a short self-supervised denoise on the MR sample (well under a minute on 2 cores)."""
    from ..progress import subrange
    from ..tasks.enhance import correct_bias, denoise
    from .demo import DemoOutcome

    before = samples["mr-t1"]
    corrected = correct_bias(before, progress=subrange(progress, 0.0, 0.3))
    denoised = denoise(corrected.volume, method="selfsup", method_options={"selfsup": {"steps": 12}}, device="cpu", seed=0,
                       progress=subrange(progress, 0.3, 1.0))
    paths = [out_dir / "enhance_mr_t1.nii.gz", out_dir / "enhance_mr_t1_bias_field.nii.gz"]
    write_volume(denoised.volume, paths[0])
    write_volume(corrected.field, paths[1])
    summary = {"bias": corrected.report, "denoise": denoised.report}
    return DemoOutcome(task="enhance", sample="mr-t1", before=before, after=denoised.volume, outputs=paths,
                       summary=summary, qc_axis=None,
                       qc_options={"title": f"enhance: N4 bias correction, then denoise ({denoised.report['method']})"})
