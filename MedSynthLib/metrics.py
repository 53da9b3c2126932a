"""Image-quality metrics used by tests and benchmarks: PSNR, SSIM (2D per slice and 3D), masked.

Conventions (the ones DESIGN.md's reference numbers use): the data range is the
reference's max - min over the whole reference unless given; a mask restricts
which voxels are averaged, not which voxels feed the SSIM windows.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from skimage.metrics import structural_similarity

__all__ = ["psnr", "ssim", "brats_metrics"]


def _pair(reference: np.ndarray, test: np.ndarray, mask: Optional[np.ndarray]):
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"reference shape {reference.shape} differs from test shape {test.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != reference.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {reference.shape}")
        if not mask.any():
            raise ValueError("mask is empty")
    return reference, test, mask


def psnr(
    reference: np.ndarray,
    test: np.ndarray,
    *,
    mask: Optional[np.ndarray] = None,
    data_range: Optional[float] = None,
) -> float:
    """Peak signal-to-noise ratio in dB over ``mask`` (all voxels when None).

    ``data_range`` defaults to ``reference.max() - reference.min()``. Identical
    images give ``inf``.
    """
    reference, test, mask = _pair(reference, test, mask)
    if data_range is None:
        data_range = float(reference.max() - reference.min())
    diff = (reference - test) if mask is None else (reference - test)[mask]
    mse = float(np.mean(diff**2))
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(data_range**2 / mse))


def ssim(
    reference: np.ndarray,
    test: np.ndarray,
    *,
    mask: Optional[np.ndarray] = None,
    data_range: Optional[float] = None,
    axis: Optional[int] = None,
    slices: Optional[np.ndarray] = None,
) -> float:
    """Structural similarity, 3D (``axis=None``) or 2D per slice along ``axis`` and averaged.

    Parameters
    ----------
    mask : ndarray of bool, optional
        Average the SSIM map over these voxels only.
    axis : int, optional
        Compute 2D SSIM on each slice along this array axis and average the
        per-slice means (slices whose mask is empty are skipped).
    slices : array of int, optional
        With ``axis``: only these slice indices (e.g. the restored ones).
    """
    reference, test, mask = _pair(reference, test, mask)
    if data_range is None:
        data_range = float(reference.max() - reference.min())
    if axis is None:
        smap = structural_similarity(reference, test, data_range=data_range, full=True, gaussian_weights=False)[1]
        return float(smap[mask].mean() if mask is not None else smap.mean())
    indices = range(reference.shape[axis]) if slices is None else np.asarray(slices, dtype=int)
    values = []
    for index in indices:
        ref2d = np.take(reference, index, axis=axis)
        test2d = np.take(test, index, axis=axis)
        smap = structural_similarity(ref2d, test2d, data_range=data_range, full=True)[1]
        if mask is None:
            values.append(smap.mean())
            continue
        m2d = np.take(mask, index, axis=axis)
        if m2d.any():
            values.append(smap[m2d].mean())
    if not values:
        raise ValueError("no slice with voxels inside the mask")
    return float(np.mean(values))


def brats_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    mask: np.ndarray,
    *,
    context_mask: Optional[np.ndarray] = None,
) -> dict:
    """BraTS-Inpainting-style scores of ``prediction`` inside ``mask``: SSIM, PSNR, MSE.

    Both images are normalised the way the BraTS 2023 local-synthesis
    (inpainting) evaluation does: clipped to the reference's 0.5 and 99.5
    percentiles (taken over ``context_mask``, default the whole volume), scaled to
    [0, 1]; then PSNR with data range 1 and SSIM (3D map) and MSE averaged over ``mask``.
    """
    reference, prediction, mask = _pair(reference, prediction, mask)
    source = reference if context_mask is None else reference[np.asarray(context_mask, dtype=bool)]
    low, high = np.percentile(source, [0.5, 99.5])
    scale = max(high - low, np.finfo(np.float64).eps)
    ref_n = (np.clip(reference, low, high) - low) / scale
    pred_n = (np.clip(prediction, low, high) - low) / scale
    mse = float(np.mean((ref_n - pred_n)[mask] ** 2))
    return {
        "ssim": ssim(ref_n, pred_n, mask=mask, data_range=1.0),
        "psnr": psnr(ref_n, pred_n, mask=mask, data_range=1.0),
        "mse": mse,
    }
