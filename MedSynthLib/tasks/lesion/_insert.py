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

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ...checks import DEFAULT_MARGIN, check_result
from ...engine import select_device
from ...errors import InputError, ModelError, check_whole_number
from ...intensity import guess_modality, restore_dtype
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from ...volume import Volume, validate_volume
from ._measure import contrast_error, contrast_of, noise_ratio, shell_mask
from ._presets import PRESETS, Preset, draw_parameters
from ._region import auto_region, place_centres
from ._render import _crop_for, render_lesion, roi_radius
from ._shape import FAMILIES, Shape, make_shape, shape_from_mask

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

CONTRAST_MODES = ("relative", "offset", "absolute")
LABEL_CLASSES = {1: "lesion", 2: "core", 3: "oedema"}
CT_RANGE = (-1024.0, 3071.0)


@dataclass(frozen=True)
class LesionSpec:
    """Everything that defines one lesion, in physical units.

    Parameters
    ----------
    centre_ras : tuple of 3 floats or None
        Centre in RAS mm (Slicer's convention). ``None``: placed at random in the region.
    diameter_mm : float
        Diameter of the sphere of equal volume; the labelled volume matches ``pi/6 d^3``.
    shape : {"round", "lobulated", "irregular", "infiltrative", "learned"}
        Shape family (smooth random surfaces; infiltrative is not star-shaped;
        learned: decoded by a lesion-shape VAE package, see ``shape_model``).
    contrast : float
        Lesion intensity, read by ``contrast_mode``: ``"relative"`` a fraction of the
        surrounding tissue's mean (0.5: 50 % brighter; MR), ``"offset"`` a difference
        in the volume's units (-40: 40 HU darker), ``"absolute"`` the lesion's mean
        value itself (e.g. 30 HU for a solid nodule).
    heterogeneity : float
        Standard deviation of the smooth internal texture, as a fraction of the
        lesion's step from the surrounding tissue (0: uniform).
    edge_width_mm : float
        Width of the soft margin (0: the sharpest edge the voxels allow).
    core_fraction, core_contrast : float
        A core of the same shape scaled by ``core_fraction`` (0: none), with its
        own contrast in ``contrast_mode`` (necrotic core, or the solid part of a
        part-solid nodule). Label class 2.
    oedema_mm, oedema_contrast : float
        A rim this thick around the lesion (0: none); contrast relative to the
        tissue for ``"relative"``, else an offset in the volume's units. The rim
        keeps the anatomy beneath it. Label class 3.
    mass_effect_mm : float
        How far the tissue at the lesion's edge is pushed outwards (0: none).
    anatomy : float
        Share (0-1) of the underlying anatomy that shows through the lesion
        (0: opaque, the tissue is replaced; ~0.7: ground glass, vessels stay
        visible). A core is always opaque.
    elongation : float
        Ratio of the longest to the shortest axis (>= 1), volume-preserving.
    irregularity : float or None
        Amplitude of the surface modulation as a fraction of the radius
        (None: the family's default).
    seed : int or None
        Seed of this lesion's shape, orientation, texture and noise (None: drawn
        from the call's seed).
    kind : str
        What the lesion models (the preset name), for the report.
    """

    centre_ras: Optional[tuple[float, float, float]] = None
    diameter_mm: float = 10.0
    shape: str = "round"
    contrast: float = 0.5
    contrast_mode: str = "relative"
    heterogeneity: float = 0.1
    edge_width_mm: float = 1.0
    core_fraction: float = 0.0
    core_contrast: float = 0.0
    oedema_mm: float = 0.0
    oedema_contrast: float = 0.0
    mass_effect_mm: float = 0.0
    anatomy: float = 0.0
    elongation: float = 1.0
    irregularity: Optional[float] = None
    seed: Optional[int] = None
    kind: str = "custom"

    def validate(self) -> "LesionSpec":
        """Return self, or raise :class:`InputError` quoting the bad field and value."""
        def bad(name: str, rule: str) -> InputError:
            return InputError(f"lesion {name} must be {rule}, got {getattr(self, name)!r}")

        if self.centre_ras is not None:
            centre = np.asarray(self.centre_ras, dtype=np.float64)
            if centre.shape != (3,) or not np.all(np.isfinite(centre)):
                raise bad("centre_ras", "three finite RAS coordinates in mm")
        if not (0.5 <= float(self.diameter_mm) <= 300):
            raise bad("diameter_mm", "between 0.5 and 300 mm")
        if self.shape not in FAMILIES:
            raise bad("shape", f"one of {', '.join(FAMILIES)}")
        if self.contrast_mode not in CONTRAST_MODES:
            raise bad("contrast_mode", f"one of {', '.join(CONTRAST_MODES)}")
        if self.contrast_mode == "relative" and not (-0.95 <= self.contrast <= 20):
            raise bad("contrast", "a relative contrast between -0.95 and 20")
        if self.contrast_mode == "relative" and not (-0.95 <= self.core_contrast <= 20):
            raise bad("core_contrast", "a relative contrast between -0.95 and 20")
        if not (0 <= self.heterogeneity <= 1):
            raise bad("heterogeneity", "between 0 and 1")
        if not (0 <= self.edge_width_mm <= 20):
            raise bad("edge_width_mm", "between 0 and 20 mm")
        if not (0 <= self.core_fraction <= 0.9):
            raise bad("core_fraction", "between 0 and 0.9")
        if not (0 <= self.oedema_mm <= 50):
            raise bad("oedema_mm", "between 0 and 50 mm")
        if not (0 <= self.mass_effect_mm <= 0.4 * self.diameter_mm):
            raise bad("mass_effect_mm", f"between 0 and 0.4 x the diameter ({0.4 * self.diameter_mm:.1f} mm)")
        if not (0 <= self.anatomy <= 1):
            raise bad("anatomy", "between 0 and 1")
        if not (1 <= self.elongation <= 4):
            raise bad("elongation", "between 1 and 4")
        if self.irregularity is not None and not (0 <= self.irregularity <= 0.6):
            raise bad("irregularity", "between 0 and 0.6 (or null for the family's default)")
        return self

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["centre_ras"] is not None:
            data["centre_ras"] = [float(x) for x in data["centre_ras"]]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LesionSpec":
        """Build a spec from a mapping (e.g. JSON); unknown keys are an :class:`InputError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown lesion spec field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        values = dict(data)
        if values.get("centre_ras") is not None:
            values["centre_ras"] = tuple(float(x) for x in values["centre_ras"])
        return cls(**values).validate()


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


# ---- helpers ---------------------------------------------------------------------------------------
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
                "(no air near -1000 HU); use an MR preset, or pass modality='CT' if it really is CT")
        raise InputError(
            f"preset {preset.name!r} is for MR, but this volume looks like CT in HU; use a CT preset "
            "(e.g. ct-nodule-solid), or pass modality='MR' if it really is MR")
    return found


def _region_mask(volume: Volume, region: Union[Volume, np.ndarray, str, None], preset: Optional[Preset],
                 modality: str) -> Optional[np.ndarray]:
    if region is None:
        return None
    if isinstance(region, str):
        if region != "auto":
            raise InputError(f"region must be a label map on the volume's grid or 'auto', got {region!r}")
        kind = preset.region if preset is not None else ("lung" if modality == "CT" else "white-matter")
        return auto_region(volume, kind)
    if isinstance(region, Volume):
        if not volume.same_grid(region):
            raise InputError(
                f"the region mask is on another grid (shape {region.array.shape}, spacing "
                f"{tuple(round(s, 3) for s in region.spacing)}) than the volume (shape {volume.array.shape}, spacing "
                f"{tuple(round(s, 3) for s in volume.spacing)}); resample it to the volume first")
        mask = np.asarray(region.array) != 0
    else:
        mask = np.asarray(region) != 0
        if mask.shape != volume.array.shape:
            raise InputError(f"the region mask has shape {mask.shape}, the volume {volume.array.shape}")
    if not mask.any():
        raise InputError("the region mask is empty")
    return mask


def _load_shape_model(shape_model: Any):
    """A lesion-shape VAE package: a path (loaded and checked) or an object with ``network`` and ``metadata``."""
    if shape_model is None or (hasattr(shape_model, "network") and hasattr(shape_model, "metadata")):
        return shape_model
    from ...models import load_package

    return load_package(shape_model, task="lesion-shape")


def _shape_for(spec: LesionSpec, centre: np.ndarray, shape_model: Any = None) -> Shape:
    rng = np.random.default_rng([int(spec.seed), 7])
    if spec.shape == "learned":
        if shape_model is None:
            raise InputError("shape 'learned' needs a lesion-shape model package (shape_model=..., "
                             "CLI --shape-model), trained by medsynth-train lesion-shape")
        from ...models.sampling import sample_lesion_shapes

        mask = sample_lesion_shapes(shape_model.network, metadata=shape_model.metadata, count=1, seed=int(spec.seed))[0]
        voxel_mm = float(shape_model.metadata.get("input", {}).get("voxel_mm", 1.0))
        try:
            return shape_from_mask(mask, voxel_mm, rng, centre=centre, diameter_mm=spec.diameter_mm,
                                   elongation=spec.elongation)
        except ValueError as error:
            raise ModelError(f"{error} for lesion seed {spec.seed}; try another seed or a better-trained model") from None
    return make_shape(rng, centre=centre, diameter_mm=spec.diameter_mm, family=spec.shape,
                      elongation=spec.elongation, irregularity=spec.irregularity)


def _check_inside(volume: Volume, spec: LesionSpec, shape: Shape, number: int, region: Optional[np.ndarray]) -> None:
    centre = np.asarray(spec.centre_ras, dtype=np.float64)
    ijk = volume.ras_points_to_ijk(centre)
    size = np.array(volume.shape_ijk)
    text = ",".join(f"{x:g}" for x in centre)
    if np.any(ijk < -0.5) or np.any(ijk > size - 0.5):
        raise InputError(f"lesion {number} at RAS ({text}) mm is outside the volume (voxel index "
                         f"{tuple(round(float(x), 1) for x in ijk)}, volume size {tuple(int(s) for s in size)})")
    extent = shape.extent(grow=spec.oedema_mm)
    half = extent * np.linalg.norm(volume.ras_to_ijk()[:3, :3], axis=1)
    if np.any(ijk - half < -0.5) or np.any(ijk + half > size - 0.5):
        raise InputError(f"lesion {number} at RAS ({text}) mm, {spec.diameter_mm:.1f} mm across, extends beyond "
                         "the edge of the volume; move it inwards or make it smaller")
    if region is not None:
        index = tuple(int(round(float(x))) for x in ijk[::-1])
        if not region[index]:
            raise InputError(f"lesion {number} at RAS ({text}) mm is outside the region")


def _valid_range(volume: Volume, modality: str) -> tuple[float, float]:
    low, high = float(volume.array.min()), float(volume.array.max())
    if modality == "CT":
        return min(CT_RANGE[0], low), max(CT_RANGE[1], high)
    dtype = volume.array.dtype
    upper = float(np.iinfo(dtype).max) if dtype.kind in "iu" else float("inf")
    return min(0.0, low), upper


def _draw_specs(preset: Optional[Preset], rng: np.random.Generator, n: int,
                size_mm: Optional[float], contrast: Optional[float], *, learned: bool = False) -> list[LesionSpec]:
    specs = []
    for _ in range(n):
        values: dict[str, Any] = draw_parameters(preset, rng) if preset is not None else {}
        values["seed"] = int(rng.integers(0, 2**31 - 1))
        if size_mm is not None:
            values["diameter_mm"] = float(size_mm)
            values["mass_effect_mm"] = min(values.get("mass_effect_mm", 0.0), 0.4 * float(size_mm))
        if contrast is not None:
            values["contrast"] = float(contrast)
        values["kind"] = preset.name if preset is not None else "custom"
        if learned:  # the shape comes from the model; the preset's other draws stay as they were
            values["shape"] = "learned"
        specs.append(LesionSpec(**values))
    return specs


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
    if label_mode not in ("classes", "instances"):
        raise InputError(f"label_mode must be 'classes' or 'instances', got {label_mode!r}")
    given = [x is not None for x in (specs, count, centres)]
    if sum(given) != 1:
        raise InputError("give exactly one of specs, centres or count")
    if count is not None:
        check_whole_number(count, "count", low=1, high=1000)
    if min_spacing_mm < 0:
        raise InputError(f"min_spacing_mm must be >= 0, got {min_spacing_mm}")
    if size_mm is not None and not (0.5 <= float(size_mm) <= 300):
        raise InputError(f"size must be between 0.5 and 300 mm, got {size_mm}")
    if labels is not None and not volume.same_grid(labels):
        raise InputError("the label map to move is on another grid than the volume; resample it first")
    check_whole_number(appearance_steps, "appearance_steps", low=1, high=1000)
    if str(device).strip().lower() not in ("auto", "cpu"):  # absent: an error even when no network runs
        select_device(device)
    preset_obj = _resolve_preset(preset)
    model = _load_shape_model(shape_model)
    painter = None
    if appearance_model is not None:
        from ._inpaint import make_painter

        painter = make_painter(volume.array, appearance_model, slice_axis=volume.slice_axis(),
                               steps=int(appearance_steps), device=device)
    found_modality = _check_modality(volume, preset_obj, modality) if preset_obj is not None else (
        modality.upper() if modality else guess_modality(volume))
    warnings: list[str] = []
    notes: list[str] = []
    rng = np.random.default_rng(seed)
    report(progress, 0.0, "resolving lesions")

    # ---- 1. resolve the specs -------------------------------------------------------------------
    if specs is not None:
        resolved = []
        for number, item in enumerate(specs):
            spec = LesionSpec.from_dict(item) if isinstance(item, Mapping) else item
            if not isinstance(spec, LesionSpec):
                raise InputError(f"specs must hold LesionSpec objects or dicts, got {type(item).__name__}")
            spec.validate()
            seed_i = int(rng.integers(0, 2**31 - 1))
            if spec.seed is None:
                spec = dataclasses.replace(spec, seed=seed_i)
            resolved.append(spec)
        if not resolved:
            raise InputError("specs is empty: give at least one lesion")
    elif centres is not None:
        points = [np.asarray(c, dtype=np.float64) for c in centres]
        if not points or any(p.shape != (3,) or not np.all(np.isfinite(p)) for p in points):
            raise InputError("centres must be a non-empty list of (R, A, S) points in mm")
        resolved = [dataclasses.replace(s, centre_ras=tuple(float(x) for x in p)).validate()
                    for s, p in zip(_draw_specs(preset_obj, rng, len(points), size_mm, contrast, learned=model is not None), points)]
    else:
        resolved = [s.validate() for s in _draw_specs(preset_obj, rng, int(count), size_mm, contrast, learned=model is not None)]
        if region is None:
            region = "auto"

    needs_placing = [i for i, s in enumerate(resolved) if s.centre_ras is None]
    if needs_placing and region is None:
        region = "auto"
    report(progress, 0.05, "finding the region")
    mask = _region_mask(volume, region, preset_obj, found_modality)
    if needs_placing:
        assert mask is not None
        extents = [_shape_for(resolved[i], np.zeros(3), model).extent(grow=resolved[i].oedema_mm) for i in needs_placing]
        placed = place_centres(mask, volume, extents, rng, min_spacing_mm=min_spacing_mm)
        for i, point in zip(needs_placing, placed):
            resolved[i] = dataclasses.replace(resolved[i], centre_ras=tuple(float(x) for x in point))

    shapes = []
    for number, spec in enumerate(resolved, start=1):
        shape = _shape_for(spec, np.asarray(spec.centre_ras), model)
        _check_inside(volume, spec, shape, number, mask if number - 1 not in needs_placing else None)
        min_size = 1.5 * min(volume.spacing)
        if spec.diameter_mm < min_size:
            warnings.append(f"lesion {number} ({spec.diameter_mm:.1f} mm) is small for this grid "
                            f"(voxels {min(volume.spacing):.2f}-{max(volume.spacing):.2f} mm); its volume may be off")
        shapes.append(shape)

    # ---- 2. render ------------------------------------------------------------------------------
    # each lesion is rendered in float on a window around its region of influence (a sub-volume
    # with its own shifted geometry) and written back in the input's dtype: the cost follows the
    # lesion's size, not the volume's
    check_cancel(cancel)
    low, high = _valid_range(volume, found_modality)
    out = volume.array.copy()  # the input is never touched
    classes = np.zeros(volume.array.shape, np.uint16)
    instances = np.zeros(volume.array.shape, np.uint16)
    moved = None if labels is None else np.asarray(labels.array).copy()
    rendered = []
    clipped = 0
    for number, (spec, shape) in enumerate(zip(resolved, shapes), start=1):
        check_cancel(cancel)
        report(progress, 0.1 + 0.8 * (number - 1) / len(resolved), f"lesion {number} of {len(resolved)}")
        centre_ijk = volume.ras_points_to_ijk(shape.centre)
        window = _crop_for(centre_ijk, roi_radius(spec, shape, volume.ijk_to_ras), volume.ijk_to_ras,
                           volume.array.shape, margin=12)
        offset = np.array([window[2].start, window[1].start, window[0].start, 1.0])  # i, j, k
        matrix = volume.ijk_to_ras.copy()
        matrix[:3, 3] = (volume.ijk_to_ras @ offset)[:3]
        work = out[window].astype(np.float64)
        layers = [classes[window], instances[window]] + ([] if moved is None else [moved[window]])  # views
        try:
            item = render_lesion(spec, shape, work, layers, matrix, region=None if mask is None else mask[window],
                                 painter=painter)
        except ValueError as error:
            raise InputError(f"lesion {number}: {spec.diameter_mm:.1f} mm is too small for this grid ({error})") from None
        clipped += int(np.count_nonzero((work < low) | (work > high)))
        out[window] = restore_dtype(work, volume.array.dtype, clip=(low, high))
        item.crop = tuple(slice(w.start + c.start, w.start + c.stop) for w, c in zip(window, item.crop))
        crop = item.crop
        overlap = instances[crop][item.lesion | item.oedema]
        if np.any(overlap > 0):
            warnings.append(f"lesion {number} overlaps an earlier lesion; the later one wins")
        view_c, view_i = classes[crop], instances[crop]
        view_c[item.oedema & (view_c == 0)] = 3
        view_c[item.lesion] = 1
        view_c[item.core] = 2
        view_i[item.lesion] = number
        warnings.extend(f"lesion {number}: {w}" for w in item.warnings)
        notes.extend(f"lesion {number}: {n}" for n in item.notes)
        rendered.append(item)
    check_cancel(cancel)

    # ---- 3. back to the input's units and dtype (done per window above) -----------------------------
    if clipped:
        warnings.append(f"{clipped} voxel(s) clipped to the valid range [{low:g}, {high:g}]")
    label_array = classes.astype(np.uint8) if label_mode == "classes" else (
        instances.astype(np.uint8) if len(resolved) < 256 else instances)
    out_volume = Volume(out, volume.ijk_to_ras.copy())
    label_volume = Volume(label_array, volume.ijk_to_ras.copy())

    # ---- 4. measure what was made ---------------------------------------------------------------
    report(progress, 0.92, "measuring")
    lesions = [_describe(volume, out, classes, instances, number, spec, item, mask)
               for number, (spec, item) in enumerate(zip(resolved, rendered), start=1)]
    appearance = None if painter is None else painter.describe()
    result_report = {
        "task": "lesion",
        "method": " + ".join(["procedural"] + (["learned shapes"] if model is not None else [])
                             + (["learned appearance"] if painter is not None else [])),
        "shape_model": None if model is None else str(getattr(getattr(model, "info", None), "name", "given")),
        "appearance_model": appearance,
        "device": "cpu" if appearance is None else appearance["device"],
        "seed": int(seed),
        "preset": preset_obj.name if preset_obj is not None else None,
        "modality": found_modality,
        "label_mode": label_mode,
        "label_classes": LABEL_CLASSES if label_mode == "classes" else "lesion n has id n",
        "region": None if region is None else ("auto" if isinstance(region, str) else "label map"),
        "lesions": lesions,
        "seconds": round(time.perf_counter() - start, 3),
        "warnings": warnings,
        "notes": notes,
    }
    if painter is not None:
        warnings.extend(painter.engine.fallbacks)
    for w in warnings:
        logger.warning(w)
    report(progress, 1.0, "done")
    relative = [abs(float(s.contrast)) for s in resolved if s.contrast_mode == "relative"]  # intended brightening
    check_result(volume, out_volume, task="lesion", margin=DEFAULT_MARGIN + max(relative, default=0.0))
    return LesionResult(out_volume, label_volume, resolved, result_report,
                        None if moved is None else Volume(moved, volume.ijk_to_ras.copy()))


def _describe(volume: Volume, out: np.ndarray, classes: np.ndarray, instances: np.ndarray,
              number: int, spec: LesionSpec, item, region: Optional[np.ndarray]) -> dict[str, Any]:
    """The report entry of one lesion, measured on the final (rounded, clipped) output."""
    crop = item.crop
    spacing_kji = tuple(volume.spacing_along(a) for a in range(3))
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    lesion = instances[crop] == number
    core = lesion & (classes[crop] == 2)
    ring = lesion & ~core
    others = (classes[crop] > 0) & ~lesion
    before = volume.array[crop].astype(np.float64)
    after = out[crop].astype(np.float64)
    own = lesion | (item.oedema & (classes[crop] == 3))
    shell = shell_mask(own, spacing_kji, exclude=others & ~own)
    shell &= item.roi_mask
    if region is not None and np.count_nonzero(shell & region[crop]) >= 16:
        shell &= region[crop]  # the surrounding tissue is the region's tissue, as when rendering
    background = float(before[shell].mean()) if shell.any() else float("nan")
    idx = np.argwhere(lesion) + np.array([s.start for s in crop])
    centroid = volume.ijk_points_to_ras(idx[:, ::-1].mean(axis=0)) if idx.size else np.full(3, np.nan)
    requested_ml = np.pi / 6.0 * spec.diameter_mm**3 / 1000.0
    volume_ml = float(np.count_nonzero(lesion)) * voxel_ml
    entry: dict[str, Any] = {
        "id": number,
        "spec": spec.as_dict(),
        "centre_ras": [round(float(x), 3) for x in spec.centre_ras],
        "centroid_ras": [round(float(x), 3) for x in centroid],
        "centre_error_mm": round(float(np.linalg.norm(centroid - np.asarray(spec.centre_ras))), 3),
        "volume_ml": round(volume_ml, 4),
        "requested_volume_ml": round(requested_ml, 4),
        "volume_error": round((volume_ml - requested_ml) / requested_ml, 4),
        "bbox_ijk": [[int(idx[:, a].min()), int(idx[:, a].max()) + 1] for a in (2, 1, 0)] if idx.size else None,
        "region_of_influence": {
            "centre_ras": [round(float(x), 3) for x in spec.centre_ras],
            "radius_mm": round(item.roi_radius_mm, 3),
            "bbox_ijk": [[crop[a].start, crop[a].stop] for a in (2, 1, 0)],
        },
        "shape_scale_mm": round(float(item.shape.scale), 4),
        "background_mean": round(background, 3),
        "noise_sigma_background": round(item.noise_sigma, 3),
    }
    if ring.any():
        measured = contrast_of(spec.contrast_mode, float(after[ring].mean()), background)
        entry["contrast_measured"] = round(measured, 4)
        entry["contrast_error"] = round(contrast_error(spec.contrast_mode, spec.contrast, measured, background), 4)
    if core.any():
        measured = contrast_of(spec.contrast_mode, float(after[core].mean()), background)
        entry["core_contrast_measured"] = round(measured, 4)
        entry["core_volume_ml"] = round(float(np.count_nonzero(core)) * voxel_ml, 4)
    if spec.oedema_mm > 0:
        entry["oedema_volume_ml"] = round(float(np.count_nonzero(classes[crop][item.oedema] == 3)) * voxel_ml, 4)
    inside, outside, ratio = noise_ratio(after, [m for m in (ring, core) if m.any()], shell, before=before,
                                         spacing_kji=spacing_kji, pure=item.pure)
    entry["noise_inside"] = round(inside, 3)
    entry["noise_surrounding"] = round(outside, 3)
    entry["noise_ratio"] = round(ratio, 3)
    if item.mass_effect:
        entry["mass_effect"] = item.mass_effect
    return entry
