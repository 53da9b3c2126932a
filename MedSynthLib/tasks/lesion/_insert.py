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

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ...checks import DEFAULT_MARGIN, check_result
from ...errors import InputError, check_number, check_whole_number
from ...intensity import guess_modality
from ...progress import CancelToken, ProgressCallback, report
from ...volume import Volume, mask_on_grid, validate_volume
from ._compose import Composite, render_lesions, valid_range
from ._presets import PRESETS, Preset
from ._region import auto_region
from ._report import describe_lesions
from ._specs import CONTRAST_MODES, LesionSpec, load_shape_model, resolve_specs

__all__ = [
    "LesionSpec",
    "LesionResult",
    "PRESETS",
    "Preset",
    "list_presets",
    "insert_lesions",
    "provenance_metadata",
    "CONTRAST_MODES",
    "LABEL_CLASSES",
]

logger = logging.getLogger(__name__)

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
    """

    volume: Volume
    labels: Volume
    specs: list[LesionSpec]
    report: dict
    moved_labels: Optional[Volume] = None


def list_presets() -> list[dict]:
    """Name, modality, description, automatic region and parameter ranges of every preset."""
    return [p.as_dict() for p in PRESETS.values()]


# ---- step 0: validate the call ------------------------------------------------------------------------
@dataclass(frozen=True)
class LesionRequest:
    """The validated options of one :func:`insert_lesions` call (what the private steps read)."""

    specs: Optional[Sequence[Union[LesionSpec, Mapping[str, Any]]]]
    count: Optional[int]
    centres: Optional[Iterable[Sequence[float]]]
    region: Union[Volume, np.ndarray, str, None]
    preset: Optional[Preset]
    modality: str
    size_mm: Optional[float]
    contrast: Optional[float]
    min_spacing_mm: float
    label_mode: str
    labels: Optional[Volume]
    shape_model: Any
    painter: Any


def _resolve_preset(preset: Union[str, Preset, None]) -> Optional[Preset]:
    if preset is None or isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def _check_modality(volume: Volume, preset: Preset, modality: Optional[str]) -> str:
    found = modality.upper() if modality else guess_modality(volume)
    if found not in ("CT", "MR"):
        raise InputError(f"modality must be CT or MR, got {modality!r}")
    if found != preset.modality:
        if preset.modality == "CT":
            raise InputError(
                f"preset {preset.name!r} is for CT in Hounsfield units, but this volume has no HU-like values "
                "(no air near -1000 HU); use an MR preset, or set the modality to CT (--modality CT) if it really is CT")
        raise InputError(
            f"preset {preset.name!r} is for MR, but this volume looks like CT in HU; use a CT preset "
            "(e.g. ct-nodule-solid), or set the modality to MR (--modality MR) if it really is MR")
    return found


def _region_mask(volume: Volume, region: Union[Volume, np.ndarray, str, None], preset: Optional[Preset],
                 modality: str) -> Optional[np.ndarray]:
    if isinstance(region, str):
        if region != "auto":
            raise InputError(f"region must be a label map on the volume's grid or 'auto', got {region!r}")
        kind = preset.region if preset is not None else ("lung" if modality == "CT" else "white-matter")
        return auto_region(volume, kind)
    return mask_on_grid(volume, region, name="region mask")


def _needs_region(specs, count) -> bool:
    """A count, or an explicit spec without a centre, places lesions at random: in ``"auto"`` if no region."""
    if count is not None:
        return True
    return specs is not None and any(
        (s.get("centre_ras") if isinstance(s, Mapping) else getattr(s, "centre_ras", None)) is None for s in specs)


def _make_request(volume: Volume, options: dict) -> LesionRequest:
    """Check every option up front (before any work) and resolve the preset, modality and models."""
    o = options
    if o["label_mode"] not in ("classes", "instances"):
        raise InputError(f"label_mode must be 'classes' or 'instances', got {o['label_mode']!r}")
    if sum(o[k] is not None for k in ("specs", "count", "centres")) != 1:
        raise InputError("give exactly one of specs, centres or count")
    if o["count"] is not None:
        check_whole_number(o["count"], "count", low=1, high=1000)
    check_number(o["min_spacing_mm"], "min_spacing_mm", low=0.0)
    if o["size_mm"] is not None:
        check_number(o["size_mm"], "size (mm)", low=0.5, high=300.0)
    if o["labels"] is not None and not volume.same_grid(o["labels"]):
        raise InputError("the label map to move is on another grid than the volume; resample it first")
    check_whole_number(o["appearance_steps"], "appearance_steps", low=1, high=1000)
    if str(o["device"]).strip().lower() not in ("auto", "cpu"):  # absent: an error even when no network runs
        from ...engine import select_device  # torch: only when a device is named (procedural lesions need none)

        select_device(o["device"])
    preset = _resolve_preset(o["preset"])
    modality = o["modality"]
    if preset is not None:
        modality = _check_modality(volume, preset, modality)
    else:
        modality = modality.upper() if modality else guess_modality(volume)
    shape_model = load_shape_model(o["shape_model"])
    painter = None
    if o["appearance_model"] is not None:
        from ._inpaint import make_painter

        painter = make_painter(volume.array, o["appearance_model"], slice_axis=volume.slice_axis(),
                               steps=int(o["appearance_steps"]), device=o["device"])
    region = o["region"]
    if region is None and _needs_region(o["specs"], o["count"]):
        region = "auto"
    return LesionRequest(specs=o["specs"], count=o["count"], centres=o["centres"], region=region, preset=preset,
                         modality=modality, size_mm=o["size_mm"], contrast=o["contrast"],
                         min_spacing_mm=float(o["min_spacing_mm"]), label_mode=o["label_mode"], labels=o["labels"],
                         shape_model=shape_model, painter=painter)


# ---- step 4: the report ---------------------------------------------------------------------------------
def _task_report(request: LesionRequest, lesions: list, composite: Composite, warnings: list[str], *,
                 seed: int, seconds: float) -> dict:
    painter, model, region = request.painter, request.shape_model, request.region
    appearance = None if painter is None else painter.describe()
    result_report = {
        "task": "lesion",
        "method": " + ".join(["procedural"] + (["learned shapes"] if model is not None else [])
                             + (["learned appearance"] if painter is not None else [])),
        "shape_model": None if model is None else str(getattr(getattr(model, "info", None), "name", "given")),
        "appearance_model": appearance,
        "device": "cpu" if appearance is None else appearance["device"],
        "seed": int(seed),
        "preset": request.preset.name if request.preset is not None else None,
        "modality": request.modality,
        "label_mode": request.label_mode,
        "label_classes": LABEL_CLASSES if request.label_mode == "classes" else "lesion n has id n",
        "region": None if region is None else ("auto" if isinstance(region, str) else "label map"),
        "lesions": lesions,
        "seconds": round(seconds, 3),
        "warnings": warnings,
        "notes": composite.notes,
    }
    if painter is not None:
        warnings.extend(painter.engine.fallbacks)
    return result_report


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
        "MedSynth_lesion_specs": json.dumps(specs, separators=(",", ":")),
        "ITK_FileNotes": f"SYNTHETIC LESIONS (MedSynth) seed={result.report.get('seed')} n={len(specs)}"[:79],
    }


# ---- the task --------------------------------------------------------------------------------------
def insert_lesions(
    volume: Volume,
    *,
    specs: Optional[Sequence[Union[LesionSpec, Mapping[str, Any]]]] = None,
    count: Optional[int] = None,
    region: Union[Volume, np.ndarray, str, None] = None,
    preset: Union[str, Preset, None] = None,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    centres: Optional[Iterable[Sequence[float]]] = None,
    size_mm: Optional[float] = None,
    contrast: Optional[float] = None,
    min_spacing_mm: float = 5.0,
    label_mode: str = "classes",
    labels: Optional[Volume] = None,
    modality: Optional[str] = None,
    shape_model: Any = None,
    appearance_model: Any = None,
    appearance_steps: int = 20,
    device: str = "auto",
) -> LesionResult:
    """Insert synthetic lesions into ``volume``; return it with an exact label map and the specs used.

    Give the lesions in one of three ways: ``specs`` (explicit; a spec without a
    centre is placed at random in ``region``), ``centres`` (RAS points; the
    other parameters drawn from ``preset``), or ``count`` (drawn from ``preset``
    and placed at random in ``region``, default ``"auto"``).

    Parameters
    ----------
    volume : Volume
        Scalar volume, any orientation and spacing; CT in HU for CT presets.
    specs : sequence of LesionSpec or dict, optional
        Explicit lesions; dicts are read with :meth:`LesionSpec.from_dict`.
    count : int, optional
        Number of random lesions.
    region : Volume, ndarray, "auto" or None
        Where random lesions may go (non-zero voxels; same grid as ``volume``), or
        ``"auto"`` (white matter on MR, lungs on CT, see the preset). With explicit
        centres, a region is checked: a centre outside it is an error.
    preset : str, optional
        A name from :data:`PRESETS`; checks the modality of ``volume``.
    seed : int
        Seed for every random draw; same inputs and seed give bit-identical outputs.
    progress, cancel
        Progress callback and cancel token; cancelling leaves the input untouched.
    centres : iterable of (R, A, S), optional
        Lesion centres in RAS mm.
    size_mm, contrast : float, optional
        Override the preset's diameter and contrast draws.
    min_spacing_mm : float
        Minimum gap between random lesions' bounding balls.
    label_mode : {"classes", "instances"}
        Classes 1 lesion / 2 core / 3 oedema, or one id per lesion.
    labels : Volume, optional
        An existing label map on the same grid that the mass effect should move too.
    modality : {"CT", "MR"}, optional
        Overrides the modality guess used to check presets and clip values.
    shape_model : path or loaded package, optional
        A ``lesion-shape`` VAE package from ``medsynth-train``: lesions drawn from a
        preset get shapes decoded from it (family ``"learned"``, one latent per
        lesion seed); explicit specs use it when their ``shape`` is ``"learned"``.
        The procedural families need no model.
    appearance_model : path or loaded package, optional
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
        Unknown preset or modality mismatch, a centre outside the volume or the
        region, a lesion too large for the region, lesions that cannot fit, a
        region or label map on another grid, or a bad spec value.

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
    validate_volume(volume)
    request = _make_request(volume, dict(
        specs=specs, count=count, centres=centres, region=region, preset=preset, size_mm=size_mm, contrast=contrast,
        min_spacing_mm=min_spacing_mm, label_mode=label_mode, labels=labels, modality=modality,
        shape_model=shape_model, appearance_model=appearance_model, appearance_steps=appearance_steps, device=device))
    rng = np.random.default_rng(seed)
    report(progress, 0.0, "resolving lesions")
    mask = _region_mask(volume, request.region, request.preset, request.modality)
    report(progress, 0.05, "placing lesions")
    resolved = resolve_specs(volume, request=request, mask=mask, rng=rng)
    composite = render_lesions(volume, resolved.specs, resolved.shapes, mask=mask,
                               painter=request.painter, labels=request.labels,
                               value_range=valid_range(volume, request.modality), progress=progress, cancel=cancel)
    label_array = composite.classes.astype(np.uint8) if label_mode == "classes" else (
        composite.instances.astype(np.uint8) if len(resolved.specs) < 256 else composite.instances)
    report(progress, 0.92, "measuring")
    lesions = describe_lesions(volume, composite, resolved.specs, mask)
    warnings = resolved.warnings + composite.warnings
    result_report = _task_report(request, lesions, composite, warnings, seed=seed, seconds=time.perf_counter() - start)
    for w in warnings:
        logger.warning(w)
    report(progress, 1.0, "done")
    geometry = volume.ijk_to_ras
    out_volume = Volume(composite.out, geometry.copy())
    relative = [abs(float(s.contrast)) for s in resolved.specs if s.contrast_mode == "relative"]  # intended brightening
    check_result(volume, out_volume, task="lesion", margin=DEFAULT_MARGIN + max(relative, default=0.0))
    return LesionResult(out_volume, Volume(label_array, geometry.copy()), resolved.specs, result_report,
                        None if composite.moved is None else Volume(composite.moved, geometry.copy()))
