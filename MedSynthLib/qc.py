"""Quality-control pictures: before | after | difference through the edited region, as a PNG.

Written with SimpleITK's PNG writer, so no plotting library is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .volume import Volume

__all__ = ["qc_picture", "save_qc_png", "most_changed_slice"]


def most_changed_slice(before: np.ndarray, after: np.ndarray, *, axis: int) -> int:
    """Index along ``axis`` of the slice with the largest summed absolute change (the middle if none)."""
    change = np.abs(after.astype(np.float64) - before.astype(np.float64))
    other = tuple(a for a in range(3) if a != axis)
    totals = change.sum(axis=other)
    return int(np.argmax(totals)) if totals.max() > 0 else before.shape[axis] // 2


def _to_display(plane: np.ndarray, spacing_rows: float, spacing_cols: float, low: float, high: float) -> np.ndarray:
    scaled = np.clip((plane - low) / max(high - low, 1e-12), 0, 1)
    # stretch rows so that pixels are square in millimetres (thick slices stay readable)
    factor = spacing_rows / spacing_cols
    if abs(factor - 1) > 0.05:
        rows = max(1, int(round(plane.shape[0] * factor)))
        source = np.linspace(0, plane.shape[0] - 1, rows)
        lower = np.floor(source).astype(int)
        upper = np.minimum(lower + 1, plane.shape[0] - 1)
        weight = (source - lower)[:, None]
        scaled = scaled[lower] * (1 - weight) + scaled[upper] * weight
    return scaled


def qc_picture(before: Volume, after: Volume, *, axis: Optional[int] = None, index: Optional[int] = None) -> np.ndarray:
    """uint8 image (rows, 3 * cols + gaps): before, after and |after - before| on one slice.

    ``before`` and ``after`` must share a grid. The slice defaults to the one
    that changed most along the volume's slice axis; the difference panel is
    scaled to its own maximum so faint edits stay visible.
    """
    if before.array.shape != after.array.shape:
        raise ValueError("before and after must have the same shape for a QC picture")
    axis = before.slice_axis() if axis is None else axis
    index = most_changed_slice(before.array, after.array, axis=axis) if index is None else index
    b = np.take(before.array, index, axis=axis).astype(np.float64)
    a = np.take(after.array, index, axis=axis).astype(np.float64)
    low, high = np.percentile(b, [1, 99.5])
    in_plane = [ax for ax in range(3) if ax != axis]
    diff = np.abs(a - b)
    planes, (rows_axis, cols_axis) = _radiological([b, a, diff], before, in_plane)
    rows_sp, cols_sp = before.spacing_along(rows_axis), before.spacing_along(cols_axis)
    panels = [
        _to_display(planes[0], rows_sp, cols_sp, low, high),
        _to_display(planes[1], rows_sp, cols_sp, low, high),
        _to_display(planes[2], rows_sp, cols_sp, 0.0, float(diff.max()) or 1.0),
    ]
    gap = np.ones((panels[0].shape[0], 4))
    picture = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    return (picture * 255).round().astype(np.uint8)


def _radiological(planes: list, volume: Volume, in_plane: list) -> tuple[list, tuple[int, int]]:
    """Orient 2D planes as a radiologist reads them, whatever the volume's direction matrix.

    Up is superior (or anterior on an axial plane); left on screen is the patient's right
    (anterior on a sagittal plane). ``in_plane`` are the two array axes of the plane, in
    the planes' row, column order; returns the planes and the (row, column) array axes.
    """
    # RAS direction of each array axis (array axis a is IJK axis 2 - a)
    directions = {ax: volume.direction[:, 2 - ax] for ax in in_plane}
    dominant = {ax: int(np.argmax(np.abs(directions[ax]))) for ax in in_plane}
    # vertical: the axis closest to S, else to A
    vertical_letter = 2 if 2 in dominant.values() else 1
    rows_axis = next((ax for ax in in_plane if dominant[ax] == vertical_letter), in_plane[0])
    cols_axis = next(ax for ax in in_plane if ax != rows_axis)
    out = [p.T if rows_axis != in_plane[0] else p for p in planes]
    if directions[rows_axis][vertical_letter] > 0:  # row index grows upwards in the patient
        out = [np.flipud(p) for p in out]
    horizontal = dominant[cols_axis]
    # screen-left is the patient's right (R: x > 0) or, on a sagittal plane, anterior (A: y > 0):
    # flip when the column index grows towards that side
    flip = directions[cols_axis][horizontal] > 0
    if flip:
        out = [np.fliplr(p) for p in out]
    return out, (rows_axis, cols_axis)


def save_qc_png(before: Volume, after: Volume, path: str | Path, **kwargs) -> Path:
    """Write :func:`qc_picture` to ``path`` (PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(qc_picture(before, after, **kwargs)), str(path))
    return path
