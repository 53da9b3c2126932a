"""Measurements of an inserted lesion, shared by the report, the tests and the benchmark.

One definition of each quantity, so the guarantees the report states are the
ones the tests check:

- *surrounding tissue*: voxels outside the lesion label within ``shell_mm`` of it
  (at least one voxel of the coarsest axis), on the image before insertion;
- *local noise*: robust standard deviation (central 90 %) of in-plane
  neighbour differences, over pairs inside each lesion compartment (its voxels
  free of partial volume, see :func:`interior_masks`) on the output image, versus pairs inside the shell on the image
  before insertion.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

__all__ = ["shell_mask", "robust_std", "neighbour_differences", "interior_masks", "pooled_differences", "noise_ratio", "contrast_of", "contrast_error"]


def shell_mask(lesion: np.ndarray, spacing_kji: tuple[float, float, float], *, shell_mm: float = 3.0,
               exclude: Optional[np.ndarray] = None) -> np.ndarray:
    """Voxels outside ``lesion`` (bool, KJI) within ``max(shell_mm, coarsest spacing)`` of it."""
    width = max(shell_mm, 1.01 * max(spacing_kji))
    distance = ndimage.distance_transform_edt(~lesion, sampling=spacing_kji)
    shell = (distance > 0) & (distance <= width)
    if exclude is not None:
        shell &= ~exclude
    return shell


def robust_std(values: np.ndarray) -> float:
    """Standard deviation of the central 90 % of ``values``, scaled to a Gaussian's (divided by 0.7906).

    Ignores a few edges and outliers like the MAD does, but stays continuous on
    integer data (CT in HU), where the MAD jumps between a few integer values.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan")
    low, high = np.percentile(values, (5, 95))
    central = values[(values >= low) & (values <= high)]
    return float(central.std() / 0.7906) if central.size > 1 else 0.0


def neighbour_differences(array: np.ndarray, mask: np.ndarray, *, axes: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """``(x[n+1] - x[n]) / sqrt(2)`` along ``axes`` for neighbour pairs whose voxels are both in ``mask``.

    For white noise of standard deviation sigma these have standard deviation
    sigma; an edge only enters through the pairs that straddle it, and pairs
    must lie inside one compartment, so compartment borders never do.
    The default axes are the in-plane ones (array axes j and i).
    """
    data = np.asarray(array, dtype=np.float64)
    parts = []
    for axis in axes:
        if data.shape[axis] < 2:
            continue
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        both = mask[tuple(a)] & mask[tuple(b)]
        parts.append((data[tuple(a)][both] - data[tuple(b)][both]) / np.sqrt(2.0))
    return np.concatenate(parts) if parts else np.zeros(0)


def interior_masks(compartments: list[np.ndarray], spacing_kji: Optional[tuple[float, float, float]] = None,
                   *, pure: Optional[np.ndarray] = None) -> list[np.ndarray]:
    """The part of each compartment where noise can be measured without partial-volume steps.

    With ``pure`` (voxels the lesion fills entirely or not at all, which the
    renderer knows): each compartment restricted to it. Without: each
    compartment eroded by two voxels (on thick slices: two in-plane and one
    through-plane). A small lesion may keep too few voxels either way: its
    noise is then not measured (NaN), never guessed from partial-volume voxels.
    Pairs are taken within one mask, so a step between compartments never
    counts as noise.
    """
    if pure is not None:
        return [m & pure for m in compartments]
    masks = []
    for mask in compartments:
        if spacing_kji is not None and spacing_kji[0] > 2.0 * max(spacing_kji[1:]):
            # thick slices: two voxels in-plane, and the first/last slice of the lesion (partial in k)
            in_plane = np.zeros((3, 3, 3), bool)
            in_plane[1] = ndimage.generate_binary_structure(2, 1)
            through = np.zeros((3, 3, 3), bool)
            through[:, 1, 1] = True
            eroded = ndimage.binary_erosion(ndimage.binary_erosion(mask, in_plane, iterations=2), through)
        else:
            eroded = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1), iterations=2)
        masks.append(eroded)
    return masks


def pooled_differences(array: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """:func:`neighbour_differences` within each mask, concatenated."""
    parts = [neighbour_differences(array, m) for m in masks]
    return np.concatenate(parts) if parts else np.zeros(0)


def noise_ratio(after: np.ndarray, compartments: list[np.ndarray], shell: np.ndarray, *, before: np.ndarray,
                spacing_kji: Optional[tuple[float, float, float]] = None,
                pure: Optional[np.ndarray] = None) -> tuple[float, float, float]:
    """(noise inside the lesion in ``after``, noise of the surrounding tissue in ``before``, ratio).

    The shell is measured before insertion: afterwards its first layer holds
    the lesion's own partial-volume edge, which is not noise.

    Inside: neighbour differences within :func:`interior_masks` of the
    compartments; shell: within the shell. NaN when fewer than 16 pairs are available.
    """
    inside_values = pooled_differences(after, interior_masks(compartments, spacing_kji, pure=pure))
    outside_values = neighbour_differences(before, shell)
    if inside_values.size < 16 or outside_values.size < 16:
        return float("nan"), float("nan"), float("nan")
    inside = robust_std(inside_values)
    outside = robust_std(outside_values)
    return inside, outside, inside / outside if outside > 0 else float("nan")


def contrast_of(mode: str, lesion_mean: float, background: float) -> float:
    """The contrast a lesion of mean ``lesion_mean`` has on ``background`` in ``mode``'s units."""
    if mode == "relative":
        return (lesion_mean - background) / background if background else float("nan")
    if mode == "offset":
        return lesion_mean - background
    return lesion_mean  # absolute


def contrast_error(mode: str, requested: float, measured: float, background: float) -> float:
    """Relative error of the contrast; for absolute values, relative to the requested step from the background."""
    if mode == "absolute":
        step = abs(requested - background)
        return abs(measured - requested) / step if step > 0 else float("nan")
    return abs(measured - requested) / abs(requested) if requested else float("nan")
