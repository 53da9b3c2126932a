"""Step 2 of :func:`~._insert.insert_lesions`: render every resolved lesion into a copy of the volume and
write its labels.

Each lesion is rendered in float on a window around its region of influence (a sub-volume with its own
shifted geometry) and written back in the input's dtype: the cost follows the lesion's size, not the volume's.
Labels: class 3 oedema (never over an earlier lesion), 1 lesion, 2 core; instance ``n`` for lesion ``n``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ...errors import InputError
from ...intensity import restore_dtype
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from ...volume import Volume
from ._render import RenderedLesion, crop_for, render_lesion, roi_radius

__all__ = ["Composite", "render_lesions", "CT_RANGE", "valid_range"]

#: Values a CT volume in HU may hold.
CT_RANGE = (-1024.0, 3071.0)


@dataclass
class Composite:
    """The edited voxels and label layers (KJI, the input's grid), one :class:`RenderedLesion` per lesion."""

    out: np.ndarray
    classes: np.ndarray
    instances: np.ndarray
    moved: Optional[np.ndarray]
    items: list[RenderedLesion] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def valid_range(volume: Volume, modality: str) -> tuple[float, float]:
    low, high = float(volume.array.min()), float(volume.array.max())
    if modality == "CT":
        return min(CT_RANGE[0], low), max(CT_RANGE[1], high)
    dtype = volume.array.dtype
    upper = float(np.iinfo(dtype).max) if dtype.kind in "iu" else float("inf")
    return min(0.0, low), upper



def _window_geometry(volume: Volume, window: tuple[slice, slice, slice]) -> np.ndarray:
    """IJK-to-RAS of the sub-volume ``window`` (its first voxel becomes index 0)."""
    offset = np.array([window[2].start, window[1].start, window[0].start, 1.0])  # i, j, k
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] = (volume.ijk_to_ras @ offset)[:3]
    return matrix


def _write_labels(composite: Composite, number: int, item: RenderedLesion) -> None:
    crop = item.crop
    overlap = composite.instances[crop][item.lesion | item.oedema]
    if np.any(overlap > 0):
        composite.warnings.append(f"lesion {number} overlaps an earlier lesion; the later one wins")
    view_c, view_i = composite.classes[crop], composite.instances[crop]
    view_c[item.oedema & (view_c == 0)] = 3
    view_c[item.lesion] = 1
    view_c[item.core] = 2
    view_i[item.lesion] = number


def render_lesions(volume: Volume, specs: list, shapes: list, *, mask: Optional[np.ndarray], painter: Any,
                   labels: Optional[Volume], value_range: tuple[float, float],
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> Composite:
    """Render ``specs`` (with their ``shapes``) in order; the input volume is never touched.

    ``labels`` (optional, same grid) are moved by the mass effect; values outside ``value_range`` are clipped
    (the count goes into the warnings).
    """
    low, high = value_range
    composite = Composite(out=volume.array.copy(), classes=np.zeros(volume.array.shape, np.uint16),
                          instances=np.zeros(volume.array.shape, np.uint16),
                          moved=None if labels is None else np.asarray(labels.array).copy())
    clipped = 0
    for number, (spec, shape) in enumerate(zip(specs, shapes), start=1):
        check_cancel(cancel)
        report(progress, 0.1 + 0.8 * (number - 1) / len(specs), f"lesion {number} of {len(specs)}")
        centre_ijk = volume.ras_points_to_ijk(shape.centre)
        window = crop_for(centre_ijk, roi_radius(spec, shape, volume.ijk_to_ras), volume.ijk_to_ras,
                           volume.array.shape, margin=12)
        work = composite.out[window].astype(np.float64)
        layers = [composite.classes[window], composite.instances[window]] + (
            [] if composite.moved is None else [composite.moved[window]])  # views
        try:
            item = render_lesion(spec, shape, work, layers, _window_geometry(volume, window),
                                 region=None if mask is None else mask[window], painter=painter)
        except ValueError as error:
            raise InputError(f"lesion {number}: {spec.diameter_mm:.1f} mm is too small for this grid ({error})") from None
        clipped += int(np.count_nonzero((work < low) | (work > high)))
        composite.out[window] = restore_dtype(work, volume.array.dtype, clip=(low, high))
        item = dataclasses.replace(item, crop=tuple(slice(w.start + c.start, w.start + c.stop)
                                                     for w, c in zip(window, item.crop)))
        _write_labels(composite, number, item)
        composite.warnings.extend(f"lesion {number}: {w}" for w in item.warnings)
        composite.notes.extend(f"lesion {number}: {n}" for n in item.notes)
        composite.items.append(item)
    check_cancel(cancel)
    if clipped:
        composite.warnings.append(f"{clipped} voxel(s) clipped to the valid range [{low:g}, {high:g}]")
    return composite
