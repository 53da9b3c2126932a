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
from ._measure import contrast_error, contrast_of, noise_ratio, shell_mask
from ._specs import LesionSpec

__all__ = ["describe_lesion", "describe_lesions"]


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
