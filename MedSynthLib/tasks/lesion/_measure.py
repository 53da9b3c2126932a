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

from typing import Any, Optional

import numpy as np
from scipy import ndimage

__all__ = ["shell_mask", "robust_std", "neighbour_differences", "interior_masks", "pooled_differences", "noise_ratio",
           "noise_measurement", "MIN_NOISE_PAIRS", "contrast_of", "contrast_error"]


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
    noise is then not measured (None with a reason, :func:`noise_measurement`),
    never guessed from partial-volume voxels.
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


#: Fewest neighbour pairs a noise level is measured from (fewer: not measured, never guessed).
MIN_NOISE_PAIRS = 16


def noise_measurement(after: np.ndarray, compartments: list[np.ndarray], shell: np.ndarray, *, before: np.ndarray,
                      spacing_kji: Optional[tuple[float, float, float]] = None,
                      pure: Optional[np.ndarray] = None) -> dict[str, Any]:
    """The report's noise entries: ``noise_inside`` (the lesion in ``after``), ``noise_surrounding`` (the shell in
    ``before``) and ``noise_ratio``, each measured on its own; one that cannot be measured is ``None`` with a
    ``<key>_null_reason`` beside it (the report's convention, :mod:`MedSynthLib.reports`), never NaN.

    The shell is measured before insertion: afterwards its first layer holds the lesion's own partial-volume
    edge, which is not noise. Inside: neighbour differences within :func:`interior_masks` of the compartments;
    shell: within the shell; each needs :data:`MIN_NOISE_PAIRS` pairs. A lesion of a few millimetres on a
    thick-slice grid has almost no voxel free of partial volume, so its inside is not measured.
    """
    inside_values = pooled_differences(after, interior_masks(compartments, spacing_kji, pure=pure))
    outside_values = neighbour_differences(before, shell)
    entry: dict[str, Any] = {}
    for key, values, where in (("noise_inside", inside_values, "inside the lesion clear of its partial-volume edge"),
                               ("noise_surrounding", outside_values, "in the surrounding tissue")):
        if values.size >= MIN_NOISE_PAIRS:
            entry[key] = robust_std(values)
        else:
            entry[key] = None
            entry[key + "_null_reason"] = (f"too few voxel pairs {where} to measure noise ({values.size}, at least "
                                           f"{MIN_NOISE_PAIRS} needed): the lesion is small for this grid")
    inside, outside = entry["noise_inside"], entry["noise_surrounding"]
    if inside is not None and outside is not None and outside > 0:
        entry["noise_ratio"] = inside / outside
    else:
        entry["noise_ratio"] = None
        entry["noise_ratio_null_reason"] = ("the surrounding tissue has no noise (its neighbour differences are 0)"
                                            if outside is not None and inside is not None else
                                            "needs noise_inside and noise_surrounding, and "
                                            + " and ".join(k for k in ("noise_inside", "noise_surrounding")
                                                           if entry[k] is None) + " could not be measured")
    return entry


def noise_ratio(after: np.ndarray, compartments: list[np.ndarray], shell: np.ndarray, *, before: np.ndarray,
                spacing_kji: Optional[tuple[float, float, float]] = None,
                pure: Optional[np.ndarray] = None) -> tuple[float, float, float]:
    """(noise inside the lesion in ``after``, noise of the surrounding tissue in ``before``, ratio), as floats.

    The numbers of :func:`noise_measurement`; all three NaN when either side has fewer than
    :data:`MIN_NOISE_PAIRS` pairs (the ratio alone NaN when the surrounding tissue has no noise). The report uses
    :func:`noise_measurement`, which says why instead.
    """
    entry = noise_measurement(after, compartments, shell, before=before, spacing_kji=spacing_kji, pure=pure)
    if entry["noise_inside"] is None or entry["noise_surrounding"] is None:
        return float("nan"), float("nan"), float("nan")
    ratio = entry["noise_ratio"]
    return entry["noise_inside"], entry["noise_surrounding"], float("nan") if ratio is None else ratio


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
