"""Resolving lesions: from what the caller gave (explicit specs, centres, or a count) to one fully drawn
:class:`LesionSpec` and :class:`~._shape.Shape` per lesion, placed and checked to lie inside the volume and region.

Every random draw happens here, from the call's seed, before anything is rendered: the resolved specs reproduce
the run on their own (``insert_lesions(volume, specs=result.specs)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ...errors import InputError, ModelError, check_number
from ...volume import Volume
from ._presets import PRESETS, Preset, draw_parameters
from ._region import place_centres
from ._shape import FAMILIES, Shape, make_shape, shape_from_mask

__all__ = ["LesionSpec", "CONTRAST_MODES", "draw_specs", "load_shape_model", "shape_for", "check_inside",
           "resolve_specs", "ResolvedLesions"]

CONTRAST_MODES = ("relative", "offset", "absolute")

#: The range of each numeric spec field (mm, fractions, ratios): what the renderer is tested for.
_SPEC_RANGES = {"diameter_mm": (0.5, 300.0), "heterogeneity": (0.0, 1.0), "edge_width_mm": (0.0, 20.0),
                "core_fraction": (0.0, 0.9), "oedema_mm": (0.0, 50.0), "anatomy": (0.0, 1.0), "elongation": (1.0, 4.0)}


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
        for name, (low, high) in _SPEC_RANGES.items():
            check_number(getattr(self, name), f"lesion {name}", low=low, high=high)
        if self.shape not in FAMILIES:
            raise bad("shape", f"one of {', '.join(FAMILIES)}")
        if self.contrast_mode not in CONTRAST_MODES:
            raise bad("contrast_mode", f"one of {', '.join(CONTRAST_MODES)}")
        relative = self.contrast_mode == "relative"
        for name in ("contrast", "core_contrast", "oedema_contrast"):
            low, high = (-0.95, 20.0) if relative and name != "oedema_contrast" else (-math.inf, math.inf)
            check_number(getattr(self, name), f"lesion {name}" + (" (relative)" if relative else ""), low=low, high=high)
        check_number(self.mass_effect_mm, "lesion mass_effect_mm (at most 0.4 x the diameter)", low=0.0,
                     high=0.4 * float(self.diameter_mm))
        if self.irregularity is not None:
            check_number(self.irregularity, "lesion irregularity (or null for the family's default)", low=0.0, high=0.6)
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



@dataclass(frozen=True)
class ResolvedLesions:
    """Step 1's output: the specs with centres and seeds, their shapes, and small-lesion warnings."""

    specs: list[LesionSpec]
    shapes: list[Shape]
    warnings: list[str]


def _given_specs(specs: Sequence[Union[LesionSpec, Mapping[str, Any]]], rng: np.random.Generator) -> list[LesionSpec]:
    resolved = []
    for item in specs:
        spec = LesionSpec.from_dict(item) if isinstance(item, Mapping) else item
        if not isinstance(spec, LesionSpec):
            raise InputError(f"specs must hold LesionSpec objects or dicts, got {type(item).__name__}")
        spec.validate()
        seed_i = int(rng.integers(0, 2**31 - 1))  # drawn for every spec, so seeds do not depend on which are given
        if spec.seed is None:
            spec = dataclasses.replace(spec, seed=seed_i)
        resolved.append(spec)
    if not resolved:
        raise InputError("specs is empty: give at least one lesion")
    return resolved


def _specs_at(centres: Sequence[Sequence[float]], preset: Optional[Preset], rng: np.random.Generator, *,
              size_mm: Optional[float], contrast: Optional[float], learned: bool) -> list[LesionSpec]:
    drawn = draw_specs(preset, rng, len(centres), size_mm, contrast, learned=learned)
    return [dataclasses.replace(s, centre_ras=tuple(float(x) for x in p)).validate() for s, p in zip(drawn, centres)]


def _shrinker(resolved: list, needs_placing: list[int], extents: list[float], low: float, model: Any):
    """``shrink(index, deepest_mm)`` for :func:`place_centres`: lesion ``needs_placing[index]`` drawn again smaller,
    log-uniformly within the preset's range below what the region's deepest point allows (at most 0.9 of its
    diameter; the preset's smallest last); its new extent, or None once the smallest did not fit."""
    def shrink(index: int, deepest: float) -> Optional[float]:
        number = needs_placing[index]
        spec = resolved[number]
        if spec.diameter_mm <= low * 1.0001:
            return None
        grow = spec.oedema_mm
        ratio = max(0.0, deepest - grow) / max(extents[index] - grow, 1e-6)
        high = min(0.9, ratio) * spec.diameter_mm
        rng = np.random.default_rng([int(spec.seed), 11, int(1000 * spec.diameter_mm)])
        diameter = low if high <= low else float(np.exp(rng.uniform(np.log(low), np.log(high))))
        spec = dataclasses.replace(spec, diameter_mm=diameter, mass_effect_mm=min(spec.mass_effect_mm, 0.4 * diameter))
        resolved[number] = spec
        return shape_for(spec, np.zeros(3), model).extent(grow=grow)

    return shrink


#: A drawn lesion must hold at least this many voxels' volume (fewer: no voxel may be half inside it).
GRID_MIN_VOXELS = 2.0


def grid_smallest_mm(volume: Volume) -> float:
    """Diameter (mm) of the sphere of ``GRID_MIN_VOXELS`` voxels' volume: the smallest lesion this grid holds."""
    return float((6.0 / np.pi * GRID_MIN_VOXELS * float(np.prod(volume.spacing))) ** (1.0 / 3.0))


def _fit_grid(resolved: list, preset: Preset, volume: Volume) -> tuple[list, list[str]]:
    """Lesions drawn from ``preset`` smaller than the grid can hold (``GRID_MIN_VOXELS`` voxels: a 4 x 4 x 6 mm
    ASL grid cannot show a 4 mm white-matter focus) drawn again, log-uniformly, within the preset's range above
    that size (deterministic from each lesion's seed); unchanged where the preset's largest is below it (the error
    then names the grid). Returns the specs and a note per redrawn lesion."""
    span = preset.ranges.get("diameter_mm")
    if not isinstance(span, tuple) or len(span) != 2:
        return resolved, []
    smallest = grid_smallest_mm(volume)
    low, high = max(float(span[0]), smallest), float(span[1])
    if low > high:
        return resolved, []
    out, notes = [], []
    for number, spec in enumerate(resolved, start=1):
        if spec.centre_ras is None and spec.diameter_mm < smallest:
            rng = np.random.default_rng([int(spec.seed), 13])
            diameter = float(np.exp(rng.uniform(np.log(low), np.log(high))))
            notes.append(f"lesion {number}: drawn {spec.diameter_mm:.1f} mm is below what this grid holds "
                         f"({smallest:.1f} mm: {GRID_MIN_VOXELS:g} voxels of {np.prod(volume.spacing):.0f} mm^3); "
                         f"drawn again within the preset's range: {diameter:.1f} mm")
            spec = dataclasses.replace(spec, diameter_mm=diameter,
                                       mass_effect_mm=min(spec.mass_effect_mm, 0.4 * diameter))
        out.append(spec)
    return out, notes


def resolve_specs(volume: Volume, options: Any, *, mask: Optional[np.ndarray],
                  rng: np.random.Generator, region_name: str = "region") -> ResolvedLesions:
    """Draw, place and check every lesion of ``options`` (a :class:`~._options.LesionOptions` whose preset and
    shape model are resolved: a preset name or None, a loaded model or None).

    ``mask`` is the region (boolean, volume grid) random centres are placed in and explicit centres are
    checked against; the caller resolves it (``"auto"`` for a count) before calling.
    """
    model = options.shape_model
    learned = model is not None
    preset = None if options.preset is None else PRESETS[options.preset]
    if options.specs is not None:
        resolved = _given_specs(options.specs, rng)
    elif options.centres is not None:
        resolved = _specs_at(options.centres, preset, rng, size_mm=options.size_mm, contrast=options.contrast,
                             learned=learned)
    else:
        drawn = draw_specs(preset, rng, options.count, options.size_mm, options.contrast, learned=learned)
        resolved = [s.validate() for s in drawn]
    grid_notes = []
    if preset is not None and options.specs is None and options.size_mm is None:
        resolved, grid_notes = _fit_grid(resolved, preset, volume)
    needs_placing = [i for i, s in enumerate(resolved) if s.centre_ras is None]
    if needs_placing:
        extents = [shape_for(resolved[i], np.zeros(3), model).extent(grow=resolved[i].oedema_mm)
                   for i in needs_placing]
        low = None if preset is None or options.size_mm is not None or options.specs is not None \
            else float(preset.ranges.get("diameter_mm", (None,))[0] or 0) or None
        if low is not None:  # shrinking stops at what the grid holds too (when the preset's range reaches it)
            low = max(low, min(grid_smallest_mm(volume), float(preset.ranges["diameter_mm"][1])))
        shrink = None if low is None else _shrinker(resolved, needs_placing, extents, low, model)
        placed = place_centres(mask, volume, extents, rng, min_spacing_mm=options.min_spacing_mm, shrink=shrink,
                               name=region_name)
        for i, point in zip(needs_placing, placed):
            resolved[i] = dataclasses.replace(resolved[i], centre_ras=tuple(float(x) for x in point))
    shapes, warnings = [], list(grid_notes)
    for number, spec in enumerate(resolved, start=1):
        shape = shape_for(spec, np.asarray(spec.centre_ras), model)
        check_inside(volume, spec, shape, number, mask if number - 1 not in needs_placing else None)
        if spec.diameter_mm < 1.5 * min(volume.spacing):
            warnings.append(f"lesion {number} ({spec.diameter_mm:.1f} mm) is small for this grid "
                            f"(voxels {min(volume.spacing):.2f}-{max(volume.spacing):.2f} mm); its volume may be off")
        shapes.append(shape)
    return ResolvedLesions(resolved, shapes, warnings)


def load_shape_model(shape_model: Any):
    """A lesion-shape VAE package: a path (loaded and checked) or an object with ``network`` and ``metadata``."""
    if shape_model is None or (hasattr(shape_model, "network") and hasattr(shape_model, "metadata")):
        return shape_model
    from ...models import load_package

    return load_package(shape_model, task="lesion-shape")


def shape_for(spec: LesionSpec, centre: np.ndarray, shape_model: Any = None) -> Shape:
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


def check_inside(volume: Volume, spec: LesionSpec, shape: Shape, number: int, region: Optional[np.ndarray]) -> None:
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


def draw_specs(preset: Optional[Preset], rng: np.random.Generator, n: int,
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
