"""Steps 3 and 4 of :func:`~._insert.insert_lesions`: measure each lesion on the final output (rounded and
clipped, as it will be written) and assemble the task report.

The measured numbers (volume in mL against the requested ``pi/6 d^3``, compartment contrasts against the
request, noise inside against the surrounding tissue, the region of influence) are the evidence for the
guarantees that the module docstring of ``_insert`` states.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ...volume import Volume
from ._compose import Composite
from ._measure import contrast_error, contrast_of, noise_measurement, shell_mask
from ._specs import LesionSpec

__all__ = ["describe_lesion", "describe_lesions"]

_NO_VOXEL = "the lesion has no voxel in the output (a later lesion overwrote it, or it is below the grid's resolution)"
_NO_SHELL = "no surrounding tissue to measure the background on (the shell around the lesion is empty)"


def _put(entry: dict[str, Any], key: str, value: Optional[float], digits: int, reason: str) -> None:
    """``entry[key]`` rounded, or None with ``<key>_null_reason`` when the value could not be measured (strict
    JSON: the report's convention, :mod:`MedSynthLib.reports`)."""
    if value is None or not np.isfinite(value):
        entry[key], entry[key + "_null_reason"] = None, reason
    else:
        entry[key] = round(float(value), digits)


def describe_lesions(volume: Volume, composite: Composite, specs: list[LesionSpec],
                     region: Optional[np.ndarray]) -> list[dict[str, Any]]:
    """One report entry per lesion, in order."""
    return [describe_lesion(volume, composite.out, composite.classes, composite.instances, number, spec, item, region)
            for number, (spec, item) in enumerate(zip(specs, composite.items), start=1)]


def describe_lesion(volume: Volume, out: np.ndarray, classes: np.ndarray, instances: np.ndarray,
              number: int, spec: LesionSpec, item, region: Optional[np.ndarray]) -> dict[str, Any]:
    """The report entry of one lesion, measured on the final (rounded, clipped) output."""
    crop = item.crop
    spacing_kji = volume.spacing_kji
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
    background = float(before[shell].mean()) if shell.any() else None
    idx = np.argwhere(lesion) + np.array([s.start for s in crop])
    centroid = volume.ijk_points_to_ras(idx[:, ::-1].mean(axis=0)) if idx.size else None
    requested_ml = np.pi / 6.0 * spec.diameter_mm**3 / 1000.0
    volume_ml = float(np.count_nonzero(lesion)) * voxel_ml
    entry: dict[str, Any] = {
        "id": number,
        "spec": spec.as_dict(),
        "centre_ras": [round(float(x), 3) for x in spec.centre_ras],
        "centroid_ras": None if centroid is None else [round(float(x), 3) for x in centroid],
        "centre_error_mm": (None if centroid is None
                            else round(float(np.linalg.norm(centroid - np.asarray(spec.centre_ras))), 3)),
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
        "background_mean": None,  # measured below (None with a reason when there is no surrounding tissue)
        "noise_sigma_background": round(item.noise_sigma, 3),
    }
    if centroid is None:
        entry["centroid_ras_null_reason"] = entry["centre_error_mm_null_reason"] = _NO_VOXEL
    _put(entry, "background_mean", background, 3, _NO_SHELL)
    _contrasts(entry, spec, after, ring, core, background)
    if core.any():
        entry["core_volume_ml"] = round(float(np.count_nonzero(core)) * voxel_ml, 4)
    if spec.oedema_mm > 0:
        entry["oedema_volume_ml"] = round(float(np.count_nonzero(classes[crop][item.oedema] == 3)) * voxel_ml, 4)
    noise = noise_measurement(after, [m for m in (ring, core) if m.any()], shell, before=before,
                              spacing_kji=spacing_kji, pure=item.pure)
    for key in ("noise_inside", "noise_surrounding", "noise_ratio"):
        _put(entry, key, noise[key], 3, noise.get(key + "_null_reason", ""))
    if item.mass_effect:
        entry["mass_effect"] = item.mass_effect
    return entry


def _contrasts(entry: dict[str, Any], spec: LesionSpec, after: np.ndarray, ring: np.ndarray, core: np.ndarray,
               background: Optional[float]) -> None:
    """The measured contrast of the lesion (its ring) and of its core, and the lesion's error against the request;
    None with a reason where there is no background or the contrast is undefined (relative to a zero background,
    an error relative to a zero request)."""
    for key, where in (("contrast_measured", ring), ("core_contrast_measured", core)):
        if not where.any():
            continue
        if background is None:
            _put(entry, key, None, 4, _NO_SHELL)
            if key == "contrast_measured":
                _put(entry, "contrast_error", None, 4, _NO_SHELL)
            continue
        measured = contrast_of(spec.contrast_mode, float(after[where].mean()), background)
        _put(entry, key, measured, 4, "a relative contrast is undefined on a background of 0")
        if key == "contrast_measured":
            error = contrast_error(spec.contrast_mode, spec.contrast, measured, background)
            _put(entry, "contrast_error", error, 4, "the contrast measured is undefined" if not np.isfinite(measured)
                 else "a relative error is undefined for a requested contrast of 0 (or no step from the background)")
