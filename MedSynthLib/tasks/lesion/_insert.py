"""Synthetic lesions with exact ground-truth masks, placed at given points or at random in a region.

A random call draws every parameter of every lesion (a :class:`LesionSpec`)
from ``seed`` first, then renders the resolved specs deterministically, so the
same inputs and seed give bit-identical outputs and the specs returned in the
result reproduce the run on their own (``insert_lesions(volume, specs=result.specs)``).

Guarantees (each tested):

- the label marks exactly the voxels the lesion occupies at least half of
  (occupancy estimated by supersampling a shape defined in RAS mm, so oblique
  and anisotropic grids get the right shape);
- the labelled volume is within 15 % (in practice 2 %) of the requested
  ``pi/6 d^3`` (the shape's scale is calibrated on the grid) where the grid can
  resolve the lesion;
- the mean of each labelled compartment is the requested contrast (a small
  linear solve absorbs the partial-volume voxels), up to rounding and clipping;
- the voxel-scale noise inside the lesion is the scanner's own (the lesion
  replaces the anatomy, not the noise);
- no voxel outside each lesion's region of influence (a ball, reported with its
  IJK bounding box) changes; the geometry and dtype of the input are kept.

Label maps: ``label_mode="classes"`` gives 1 lesion (enhancing rim / solid /
ground-glass), 2 core (necrotic core; the solid part of a part-solid nodule),
3 oedema; ``"instances"`` gives lesion ``n`` the id ``n`` (core included,
oedema not labelled).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ...checks import DEFAULT_MARGIN, check_result
from ...errors import InputError
from ...intensity import guess_modality
from ...progress import CancelToken, ProgressCallback, report
from ...provenance import changed_provenance, provenance_summary
from ...reports import to_json
from ...volume import Volume, mask_on_grid, validate_volume
from ._compose import Composite, render_lesions, valid_range
from ._options import LesionOptions, auto_preset
from ._presets import PRESETS, Preset
from ._region import find_tissue
from ._report import describe_lesions
from ._specs import LesionSpec, load_shape_model, resolve_specs

__all__ = ["LesionResult", "insert_lesions", "provenance_metadata", "LABEL_CLASSES"]

LABEL_CLASSES = {1: "lesion", 2: "core", 3: "oedema"}


@dataclass(frozen=True, eq=False)
class LesionResult:
    """Output of :func:`insert_lesions`.

    Attributes
    ----------
    volume : Volume
        The edited volume (input's geometry and dtype).
    labels : Volume
        Label map on the input's grid (uint8 classes, or uint16 instance ids).
    specs : list of LesionSpec
        The resolved specs (centres, seeds and all drawn parameters).
    report : dict
        ``task``, ``method``, ``seed``, ``preset``, ``label_mode``, ``lesions`` (per
        lesion: spec, centre, volume mL, bounding box, region of influence, measured
        contrast and noise), ``seconds``, ``warnings``.
    moved_labels : Volume or None
        The ``labels`` passed in, moved by the mass effect (nearest neighbour).
    synthetic_mask : Volume or None
        uint8 on the input's grid: 2 (rewritten, :mod:`~MedSynthLib.provenance`) on every voxel a lesion
        occupies or its rendering and mass effect changed, 0 elsewhere (acquired and unchanged).
    """

    volume: Volume
    labels: Volume
    specs: list[LesionSpec]
    report: dict
    moved_labels: Optional[Volume] = None
    synthetic_mask: Optional[Volume] = None


# ---- step 0: the options against this volume -----------------------------------------------------------
def _check_modality(volume: Volume, preset: Preset, modality: Optional[str]) -> str:
    found = modality or guess_modality(volume)
    if found != preset.modality:
        if preset.modality == "CT":
            raise InputError(
                f"preset {preset.name!r} is for CT in Hounsfield units, but this volume has no HU-like values "
                "(no air near -1000 HU); use an MR preset, or set the modality to CT (--modality CT) if it really is CT")
        raise InputError(
            f"preset {preset.name!r} is for MR, but this volume looks like CT in HU; use a CT preset "
            "(e.g. ct-nodule-solid), or set the modality to MR (--modality MR) if it really is MR")
    return found


def _prepare(volume: Volume, options: LesionOptions) -> tuple[LesionOptions, Any]:
    """Check the options against ``volume`` (before any work): the options with the preset, modality, region
    and shape model resolved, and the appearance model's painter (None without one)."""
    if options.labels is not None and not volume.same_grid(options.labels):
        raise InputError("the label map to move is on another grid than the volume; resample it first")
    if str(options.device).strip().lower() not in ("auto", "cpu"):  # absent: an error even when no network runs
        from ...engine import select_device  # torch: only when a device is named (procedural lesions need none)

        select_device(options.device)
    modality = options.modality or guess_modality(volume)
    # "auto": by modality and by the body part the voxels show (a brain, lungs, a liver...); also what no preset
    # means for lesions placed at random in the automatic region (a breast MR got "no brain in view" for
    # `medsynth lesion --count 2`); a region given keeps the spec defaults
    automatic = options.region in (None, "auto") and options.region_mask is None and options.places_at_random()
    chosen = "auto" if options.preset is None and automatic else options.preset
    preset = auto_preset(volume, modality)[0] if chosen == "auto" else chosen
    if preset is not None:
        modality = _check_modality(volume, PRESETS[preset], options.modality)
    changes: dict[str, Any] = {"preset": preset, "modality": modality,
                               "shape_model": load_shape_model(options.shape_model)}
    if options.region is None and options.region_mask is None and options.places_at_random():
        changes["region"] = "auto"
    painter = None
    if options.appearance_model is not None:
        from ._inpaint import make_painter

        painter = make_painter(volume.array, options.appearance_model, slice_axis=volume.slice_axis(),
                               steps=options.appearance_steps, device=options.device)
    return options.replace(**changes), painter


def _region_mask(volume: Volume, options: LesionOptions) -> tuple[Optional[np.ndarray], Optional[dict]]:
    """The region (boolean, the volume's grid) of resolved ``options`` - the mask given, the tissue found, or None -
    and what the report says of it (tissue, method, volume)."""
    if options.region_mask is not None:
        mask = mask_on_grid(volume, options.region_mask, name="region mask")
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        return mask, {"tissue": "label map", "method": "given", "volume_ml": round(np.count_nonzero(mask) * voxel_ml, 2)}
    tissue = options.region_tissue()
    if tissue is None:
        return None, None
    found = find_tissue(volume, tissue)
    return found.mask, found.describe(volume)


#: A lesion whose labelled volume is further than this from the requested one is a warning (the guarantee's bound).
VOLUME_TOLERANCE = 0.15


def _volume_warnings(lesions: list[dict], tissue: Optional[dict]) -> list[str]:
    """Each lesion's tissue in its report entry; a warning for each volume off by more than the tolerance."""
    warnings = []
    for entry in lesions:
        if tissue is not None:
            entry["tissue"] = tissue["tissue"]
        error = entry.get("volume_error")
        if error is not None and abs(error) > VOLUME_TOLERANCE:
            warnings.append(f"lesion {entry['id']}: labelled volume {entry['volume_ml']:.3g} mL is {100 * error:+.0f} % "
                            f"from the requested {entry['requested_volume_ml']:.3g} mL (tolerance "
                            f"{100 * VOLUME_TOLERANCE:.0f} %): the grid is coarse for this size")
    return warnings


# ---- step 4: the report ---------------------------------------------------------------------------------
def _task_report(options: LesionOptions, painter: Any, lesions: list, composite: Composite, warnings: list[str], *,
                 seconds: float) -> dict:
    """The task's report for resolved ``options`` (the warnings given, then the appearance model's fallbacks)."""
    model = options.shape_model
    appearance = None if painter is None else painter.describe()
    return {
        "task": "lesion",
        "method": " + ".join(["procedural"] + (["learned shapes"] if model is not None else [])
                             + (["learned appearance"] if painter is not None else [])),
        "shape_model": None if model is None else str(getattr(getattr(model, "info", None), "name", "given")),
        "appearance_model": appearance,
        "device": "cpu" if appearance is None else appearance["device"],
        "seed": options.seed,
        "preset": options.preset,
        "modality": options.modality,
        "label_mode": options.label_mode,
        "label_classes": LABEL_CLASSES if options.label_mode == "classes" else "lesion n has id n",
        "region": "label map" if options.region_mask is not None else options.region,
        "lesions": lesions,
        "seconds": round(seconds, 3),
        "warnings": list(warnings) + ([] if painter is None else list(painter.engine.fallbacks)),
        "notes": composite.notes,
    }


def provenance_metadata(result: LesionResult) -> dict[str, str]:
    """Header key/values that mark a written volume as holding synthetic lesions (seed and specs included).

    Pass them to :func:`MedSynthLib.io.write_volume` (``metadata=``): NRRD keys /
    MetaImage fields; ``ITK_FileNotes`` becomes the NIfTI ``descrip`` field
    (80 characters): ``SYNTHETIC LESIONS (MedSynth) seed=N n=K``.
    """
    specs = [s.as_dict() for s in result.specs]
    return {
        "MedSynth_synthetic_lesions": "true",
        "MedSynth_warning": "contains synthetic lesions inserted by MedSynth; not a real finding",
        "MedSynth_seed": str(result.report.get("seed")),
        "MedSynth_preset": str(result.report.get("preset")),
        "MedSynth_lesion_specs": to_json(specs, separators=(",", ":")),
        "ITK_FileNotes": f"SYNTHETIC LESIONS (MedSynth) seed={result.report.get('seed')} n={len(specs)}"[:79],
    }


# ---- the task --------------------------------------------------------------------------------------
def insert_lesions(volume: Volume, options: Optional[LesionOptions] = None, /, *,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   **knobs: Any) -> LesionResult:
    """Insert synthetic lesions into ``volume``; return it with an exact label map and the specs used.

    Give the lesions in one of three ways: ``specs`` (explicit; a spec without a
    centre is placed at random in ``region``), ``centres`` (RAS points; the
    other parameters drawn from ``preset``), or ``count`` (drawn from ``preset``
    and placed at random in ``region``, default ``"auto"``).

    Parameters
    ----------
    volume : Volume
        Scalar volume, any orientation and spacing; CT in HU for CT presets.
    options : LesionOptions or mapping, optional
        The request, built once (:class:`LesionOptions`); keywords change it
        (``insert_lesions(volume, count=2, preset="mr-wmh")`` builds one). Unknown names are refused.
    progress, cancel
        Progress callback and cancel token; cancelling leaves the input untouched.
    **knobs
        Any field of :class:`LesionOptions`:

        specs : sequence of LesionSpec or dict
            Explicit lesions; dicts are read with :meth:`LesionSpec.from_dict`.
        centres : iterable of (R, A, S)
            Lesion centres in RAS mm.
        count : int
            Number of random lesions.
        region : "auto", a tissue name, a Volume or an ndarray
            Where random lesions may go: a mask (non-zero voxels; same grid as ``volume``), ``"auto"``
            (:func:`default_region`: the preset's tissue, white matter on MR, lungs on CT) or a tissue
            (``"lung"``...). With explicit centres, a region is checked: a centre outside it is an error.
        preset : str
            A name from :data:`PRESETS`, or ``"auto"`` (:func:`auto_preset`: the default of the modality and of
            the body part the voxels show); checks the modality of ``volume``. None: the :class:`LesionSpec` defaults.
        seed : int
            Seed for every random draw; same inputs and seed give bit-identical outputs.
        size_mm (or size), contrast : float
            Override the preset's diameter and contrast draws.
        min_spacing_mm : float
            Minimum gap between random lesions' bounding balls.
        label_mode : {"classes", "instances"}
            Classes 1 lesion / 2 core / 3 oedema, or one id per lesion.
        labels : Volume
            An existing label map on the same grid that the mass effect should move too.
        modality : {"CT", "MR"}
            Overrides the modality guess used to check presets and clip values.
        shape_model : path or loaded package
            A ``lesion-shape`` VAE package from ``medsynth-train``: lesions drawn from a
            preset get shapes decoded from it (family ``"learned"``, one latent per
            lesion seed); explicit specs use it when their ``shape`` is ``"learned"``.
            The procedural families need no model.
        appearance_model : path or loaded package
            A ``lesion-inpaint`` package from ``medsynth-train`` (diffusion, unet or gan):
            the lesion's interior is painted by the model from the surrounding tissue
            instead of the procedural texture. Labels, volumes, compartment means, noise
            matching and the region of influence are as without it; the spec's
            ``heterogeneity`` and ``anatomy`` are then the model's business.
        appearance_steps : int
            DDIM steps of a diffusion appearance model (10-50; more is slower and sharper).
        device : str
            Where the appearance model runs (``auto``, ``cpu``, ``cuda``, ...); the
            procedural renderer always runs on the CPU.

    Returns
    -------
    LesionResult

    Raises
    ------
    InputError
        An unknown option or a bad value, not exactly one of specs, centres or count, a modality
        mismatch, a centre outside the volume or the region, a lesion too large for the region, lesions
        that cannot fit, a region or label map on another grid, or a bad spec value.

    Examples
    --------
    >>> import numpy as np
    >>> from MedSynthLib.volume import Volume
    >>> rng = np.random.default_rng(0)
    >>> v = Volume((100 + rng.normal(0, 3, (24, 40, 40))).astype(np.float32), np.eye(4))
    >>> r = insert_lesions(v, specs=[LesionSpec(centre_ras=(20, 20, 12), diameter_mm=10, contrast=0.4)])
    >>> bool(abs(r.report["lesions"][0]["volume_error"]) < 0.15)
    True
    """
    start = time.perf_counter()
    options = LesionOptions.build(options, **knobs)
    validate_volume(volume)
    options, painter = _prepare(volume, options)
    rng = np.random.default_rng(options.seed)
    report(progress, 0.0, "resolving lesions")
    mask, tissue = _region_mask(volume, options)
    report(progress, 0.05, "placing lesions")
    resolved = resolve_specs(volume, options, mask=mask, rng=rng,
                             region_name="region" if tissue is None else tissue["tissue"])
    composite = render_lesions(volume, resolved.specs, resolved.shapes, mask=mask, painter=painter,
                               labels=options.labels, value_range=valid_range(volume, options.modality),
                               progress=progress, cancel=cancel)
    label_array = composite.classes.astype(np.uint8) if options.label_mode == "classes" else (
        composite.instances.astype(np.uint8) if len(resolved.specs) < 256 else composite.instances)
    report(progress, 0.92, "measuring")
    lesions = describe_lesions(volume, composite, resolved.specs, mask)
    warnings = resolved.warnings + composite.warnings + _volume_warnings(lesions, tissue)
    result_report = _task_report(options, painter, lesions, composite, warnings, seconds=time.perf_counter() - start)
    result_report["tissue"] = tissue
    report(progress, 1.0, "done")
    geometry = volume.ijk_to_ras
    out_volume = Volume(composite.out, geometry.copy())
    relative = [abs(float(s.contrast)) for s in resolved.specs if s.contrast_mode == "relative"]  # intended brightening
    check_result(volume, out_volume, task="lesion", margin=DEFAULT_MARGIN + max(relative, default=0.0))
    influence = (composite.out != volume.array) | (label_array > 0)  # what the lesions occupy or changed
    provenance = changed_provenance(volume, out_volume, where=influence)
    result_report["synthetic_mask"] = provenance_summary(provenance)
    return LesionResult(out_volume, Volume(label_array, geometry.copy()), resolved.specs, result_report,
                        None if composite.moved is None else Volume(composite.moved, geometry.copy()), provenance)
