"""``medsynth lesion``: insert synthetic lesions with an exact label map, at given points or at random.

Examples::

    medsynth lesion --list-presets
    medsynth lesion ct.nii.gz out.nii.gz --labels out_labels.nii.gz --preset ct-nodule-solid --count 3 --seed 7
    medsynth lesion t1.nrrd out.nrrd --labels les.seg.nrrd --preset mr-metastasis --at -12.5,30,4 --size 12
    medsynth lesion t1.nrrd again.nrrd --labels again_labels.nrrd --spec report.json   # reproduce a run

Coordinates are RAS millimetres (Slicer's convention); ``--at -12.5,30,4``
works as typed (argparse would otherwise take the leading minus for an option).
Every volume written says in its header that it holds synthetic lesions, with
the seed and the specs.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import InputError
from ..io import read_volume, write_segmentation, write_volume
from ..lesion_segments import segment_descriptions
from ..options import Knob
from ..progress import ProgressCallback, subrange
from ..reports import to_json
from ..tasks.lesion import LesionOptions
from ..volume import Volume
from .common import add_option_args, device_arg, options_from_args, progress_bar
from ._outputs import add_output_args, prepare

__all__ = ["register", "ras_point", "demo_step", "add_lesion_options", "lesion_knobs"]

#: The lesion options both ``medsynth lesion`` and ``medsynth augment`` offer as ``--NAME`` flags; their choices,
#: ranges, defaults and help come from :class:`LesionOptions` (``add_option_args``).
_NAMED = ("preset", "count", "contrast", "modality", "appearance_steps", "device")
#: ... and those whose flag is shorter than the option's name: option -> (flag, metavar).
_RENAMED = {"size_mm": ("--size", "MM"), "min_spacing_mm": ("--min-spacing", "MM")}
_METAVARS = {"preset": "NAME|auto", "count": "N", "contrast": "X", "modality": "CT|MR", "appearance_steps": "N"}

#: What argparse may take for a value rather than an option: negative numbers and R,A,S triples.
_VALUE_LIKE = re.compile(r"^-\d+$|^-\d*\.\d+$|^-?\d*\.?\d+(e-?\d+)?(,\s*-?\d*\.?\d+(e-?\d+)?){2}$", re.IGNORECASE)

def ras_point(text: str) -> tuple[float, float, float]:
    """argparse type for ``--at``: ``R,A,S`` in mm, e.g. ``-12.5,30,4``."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"expected R,A,S in millimetres such as -12.5,30,4, not {text!r}")
    return values  # type: ignore[return-value]


def _number(knob: Knob):
    """argparse type of a numeric option: the text as a number (its range is the options object's to check)."""
    kind = int if knob.whole else float
    words = "a positive number" if knob.low is not None and (knob.low > 0 or knob.low_open) else "a number"

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}, not {text!r}") from None

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lesion",
        help="insert synthetic lesions with an exact label map",
        description="Insert realistic synthetic lesions (procedural shapes, texture and noise matched to the tissue, "
        "optional necrotic core, oedema and mass effect) and write the edited volume, an exact label map and a report. "
        "Label classes: 1 lesion, 2 core, 3 oedema (or one id per lesion with --label-mode instances).",
    )
    parser._negative_number_matcher = _VALUE_LIKE  # let "--at -12.5,30,4" through as a value
    parser.add_argument("input", nargs="?", metavar="INPUT", help="volume to edit (NRRD, NIfTI, MHA, DICOM folder)")
    parser.add_argument("output", nargs="?", metavar="OUTPUT", help="edited volume to write")
    parser.add_argument("--labels", metavar="LABELS_OUT", help="label map to write (required; .seg.nrrd gives a Slicer segmentation)")
    parser.add_argument("--list-presets", action="store_true", help="list the presets and their parameter ranges, then exit")
    parser.add_argument("--json", action="store_true", help="with --list-presets: print JSON")
    placement = parser.add_argument_group("placement (one of)")
    placement.add_argument("--at", action="append", type=ras_point, metavar="R,A,S",
                           help="lesion centre in RAS mm (repeatable); negative values work as typed")
    placement.add_argument("--spec", metavar="SPEC.json",
                           help="explicit lesion specs: a JSON list of specs, or a report written by --report (reproduces that run)")
    add_lesion_options(parser, count_group=placement)
    parser.add_argument("--region", metavar="MASK|auto|TISSUE",
                        help="with --count: a label map on the input's grid, or a name: "
                        + LesionOptions.knob("region").help)
    add_option_args(parser, LesionOptions, ("seed", "label_mode"))
    add_output_args(parser)
    parser.set_defaults(func=_run)


def add_lesion_options(parser: argparse.ArgumentParser, *, count_group=None,
                       defaults: Optional[dict] = None) -> None:
    """The lesion options ``medsynth lesion`` and ``medsynth augment`` share (one definition for both).

    ``count_group``: where ``--count`` goes (the lesion command's "placement (one of)" group).
    ``defaults``: a front end's own defaults, shown in the help (augment's
    :data:`~MedSynthLib.augment.COHORT_LESION`; it builds its options on top of them); otherwise the
    :class:`LesionOptions` defaults. ``--region`` and ``--seed`` are each command's own.
    """
    helps = {name: f"{LesionOptions.knob(name).help} (default: {value})" for name, value in (defaults or {}).items()}
    types = {"count": _number(LesionOptions.knob("count")), "device": device_arg}
    add_option_args(count_group or parser, LesionOptions, ("count",), types=types, helps=helps, metavars=_METAVARS)
    add_option_args(parser, LesionOptions, [n for n in _NAMED if n != "count"], types=types, helps=helps,
                    metavars=_METAVARS)
    add_option_args(parser, LesionOptions, tuple(_RENAMED), helps=helps,
                    types={name: _number(LesionOptions.knob(name)) for name in _RENAMED},
                    flags={name: flag for name, (flag, _metavar) in _RENAMED.items()},
                    metavars={name: metavar for name, (_flag, metavar) in _RENAMED.items()})
    parser.add_argument("--shape-model", metavar="PACKAGE.json", help="lesion-shape VAE package from medsynth-train: "
                        "lesion shapes decoded from it instead of the procedural families")
    parser.add_argument("--appearance-model", metavar="PACKAGE.json", help="lesion-inpaint package from medsynth-train: "
                        "each lesion's interior painted by it from the surrounding tissue (labels, volume, mean contrast "
                        "and noise matching as without it)")


def lesion_knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The lesion options the shared flags gave (:func:`add_lesion_options`; absent ones left out, so the
    options' defaults apply), by option name; a ``--region`` that names a tissue (``auto``, ``lung``...)
    included, a region mask's path not (it is read as data)."""
    knobs = {name: getattr(args, name) for name in (*_NAMED, *_RENAMED, "shape_model", "appearance_model")
             if getattr(args, name) is not None}
    if _region_name(args.region) is not None:
        knobs["region"] = _region_name(args.region)
    return knobs


def _region_name(text: Optional[str]) -> Optional[str]:
    word = (text or "").strip().lower()
    return word if word in LesionOptions.knob("region").choices else None


def _print_presets(as_json: bool) -> None:
    from ..tasks.lesion import list_presets

    presets = list_presets()
    if as_json:
        print(to_json(presets, indent=2))
        return
    for preset in presets:
        print(f"{preset['name']:<24} {preset['modality']:<3} {preset['description']}")
        ranges = ", ".join(f"{k}={'-'.join(f'{x:g}' if isinstance(x, float) else str(x) for x in v) if isinstance(v, list) else v}"
                           for k, v in preset["ranges"].items())
        print(f"{'':<28}auto region: {preset['auto_region']}; {ranges}")


def _read_specs(path: str) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"spec file not found: {path}") from None
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read spec file {path}: {error}") from None
    if isinstance(data, dict) and "lesions" in data:  # a report: reproduce its lesions
        data = [entry["spec"] for entry in data["lesions"]]
    elif isinstance(data, dict) and "specs" in data:
        data = data["specs"]
    elif isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise InputError(f"{path} must hold a list of lesion specs, a {{'specs': [...]}} object or a lesion report")
    return data


def _run(args: argparse.Namespace) -> int:
    from ..tasks.lesion import insert_lesions

    if args.list_presets:
        _print_presets(args.json)
        return 0
    if not args.input or not args.output:
        raise InputError("give INPUT and OUTPUT volumes (or --list-presets)")
    if not args.labels:
        raise InputError("give --labels LABELS_OUT: the label map is the ground truth of the synthetic lesions")
    options = options_from_args(LesionOptions, args, ("seed", "label_mode"), **lesion_knobs(args), centres=args.at,
                                specs=_read_specs(args.spec) if args.spec else None)  # refused before any work
    mask_path = None if _region_name(args.region) is not None else args.region
    outputs = prepare(args, inputs={"INPUT": args.input, "--region": mask_path, "--spec": args.spec,
                                    "--shape-model": args.shape_model, "--appearance-model": args.appearance_model},
                      outputs={"OUTPUT": args.output, "--labels": args.labels})
    volume = read_volume(args.input)
    if mask_path:
        options = options.replace(region=read_volume(mask_path))
    with progress_bar(args.quiet, "lesion") as progress:
        result = insert_lesions(volume, options, progress=progress)
    report = dict(result.report)
    report["input"], report["output"], report["labels"] = str(args.input), str(args.output), str(args.labels)
    with outputs:  # everything is computed and checked: only now write, so a bad input leaves nothing behind
        _stage(outputs, args, volume, result)
        outputs.commit()
        outputs.write_report(report)
    if not args.quiet:
        tissue = result.report.get("tissue")
        if tissue:
            print(f"region: {tissue['tissue']} ({tissue['method']}), {tissue['volume_ml']:.1f} mL")
        for lesion in result.report["lesions"]:
            centre = ",".join(f"{x:.1f}" for x in lesion["centre_ras"])
            where = f" in {lesion['tissue']}" if lesion.get("tissue") else ""
            print(f"lesion {lesion['id']}: {lesion['spec']['kind']}{where} at RAS ({centre}) mm, "
                  f"{lesion['volume_ml']:.3f} mL (requested {lesion['requested_volume_ml']:.3f})")
        print(f"wrote {args.output} and {args.labels}" + (f"; report {args.report}" if args.report else ""))
    return 0


def _stage(outputs, args: argparse.Namespace, volume: Volume, result) -> None:
    """Stage the edited volume, the label map (a Slicer segmentation for .seg.nrrd) and the QC picture."""
    from ..qc import save_qc_png
    from ..tasks.lesion import provenance_metadata

    metadata = provenance_metadata(result)
    outputs.stage_volume("OUTPUT", result.volume, metadata=metadata)
    if str(args.labels).lower().endswith(".seg.nrrd"):
        segments = segment_descriptions(result.labels.array, label_mode=result.report["label_mode"],
                                        preset=result.report.get("preset"))
        outputs.stage("--labels", lambda path: write_segmentation(result.labels, path, segments))
    else:
        outputs.stage_volume("--labels", result.labels, metadata=metadata)
    outputs.stage_volume("--synthetic-mask", lambda: result.synthetic_mask)
    outputs.stage("--qc", lambda path: save_qc_png(volume, result.volume, path, **_qc_options(result)))


def _qc_options(result) -> dict:
    """:func:`~MedSynthLib.qc.save_qc_png` keywords of a lesion result: one tile per lesion (three views through
    its centre, before and after, labels outlined; its tissue and volume in the tile's title)."""
    preset = result.report.get("preset")
    return {"lesions": result.report["lesions"], "region": result.labels.array,
            "title": f"lesion: {len(result.report['lesions'])} synthetic lesion(s)" + (f", {preset}" if preset else "")}


def demo_step(samples: dict[str, Volume], out_dir: Path, progress: Optional[ProgressCallback]):
    """Two solid lung nodules in the CT sample and two metastases in the MR sample (seeded)."""
    from ..qc import save_qc_png
    from ..tasks.lesion import insert_lesions, provenance_metadata
    from .demo import DemoOutcome

    out_dir = Path(out_dir)
    ct = insert_lesions(samples["ct-chest"], count=2, preset="ct-nodule-solid", seed=1, size_mm=10.0,
                        progress=subrange(progress, 0.0, 0.5))
    mr = insert_lesions(samples["mr-t1"], count=2, preset="mr-metastasis", seed=1, size_mm=10.0,
                        progress=subrange(progress, 0.5, 1.0))
    outputs = []
    for name, result in (("ct_nodules", ct), ("mr_metastases", mr)):
        metadata = provenance_metadata(result)
        outputs.append(write_volume(result.volume, out_dir / f"lesion_{name}.nrrd", metadata=metadata))
        outputs.append(write_volume(result.labels, out_dir / f"lesion_{name}_labels.nrrd", metadata=metadata))
    # the demo's own QC picture is the CT's (below); the MR's lesions get theirs beside the volumes
    outputs.append(save_qc_png(samples["mr-t1"], mr.volume, out_dir / "lesion_mr_metastases_qc.png",
                               **_qc_options(mr)))
    summary = {
        name: {"seconds": r.report["seconds"], "warnings": r.report["warnings"],
               "lesions": [{k: l[k] for k in ("centre_ras", "volume_ml", "requested_volume_ml", "contrast_error", "noise_ratio")
                            if k in l} for l in r.report["lesions"]]}
        for name, r in (("ct-chest", ct), ("mr-t1", mr))
    }
    return DemoOutcome(task="lesion", sample="ct-chest", before=samples["ct-chest"], after=ct.volume,
                       outputs=outputs, summary=summary, qc_axis=None, qc_options=_qc_options(ct))
