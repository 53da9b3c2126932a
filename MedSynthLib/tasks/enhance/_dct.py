"""Sliding-window 3D DCT denoising: hard thresholding, then an empirical Wiener filter (training-free).

Why this method: in an orthonormal transform, white noise of standard deviation sigma stays white with the
same sigma in every coefficient, while anatomy is sparse in a local DCT (smooth tissue lives in a few
low-frequency coefficients). Every overlapping ``patch^3`` block is transformed, filtered and transformed
back, and the overlapping estimates are averaged (Yu & Sapiro 2011, "DCT image denoising"; the two stages
and their weights are those of BM3D/BM4D's, Dabov et al. 2007, without the block matching):

1. **hard threshold**: coefficients below ``threshold * sigma`` are zeroed (2.7, BM3D's ``lambda_3D``: the
   level a Gaussian coefficient exceeds with probability 0.7 %); each block's estimate is weighted by
   ``1 / (kept coefficients)``, so sparse (well-explained) blocks count more.
2. **empirical Wiener**: the first estimate's coefficients ``P`` set the shrinkage ``P^2 / (P^2 + sigma^2)``
   of the noisy coefficients, block weight ``1 / (sigma^2 * sum(shrinkage^2))``, the inverse of the block
   estimate's noise variance.

There is no tuned constant beyond those two published choices; the patch size is a parameter, and
:mod:`._sure` lets SURE weigh two patch sizes against non-local means. Linear in the voxel count; the blocks
are processed a slab at a time so memory stays bounded (:data:`DCT_CHUNK_VALUES`).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ...progress import CancelToken, ProgressCallback, check_cancel, report

__all__ = ["denoise_dct", "DCT_DEFAULTS", "dct_influence", "mirror_pad", "shrink"]

#: ``patch`` (block edge, voxels), ``step`` (block stride), ``threshold`` (hard threshold, in sigma).
DCT_DEFAULTS = {"patch": 4, "step": 1, "threshold": 2.7}
#: At most this many block coefficients are held at once (float32: 4 bytes each; 2^26 is 256 MiB).
DCT_CHUNK_VALUES = 2**26


def dct_influence(patch: int) -> int:
    """How far (voxels) a change in the input can move the output: one block radius per stage."""
    return 2 * (int(patch) - 1)


def _dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (rows are the basis functions)."""
    k = np.arange(n)
    matrix = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return torch.tensor(matrix, dtype=torch.float32)


def mirror_pad(values: np.ndarray, *, patch: int, step: int, margin: int = 0) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``values`` mirrored by ``patch - 1`` on every side (edge voxels then lie in as many blocks as inner ones),
    plus what the stride needs to reach the far end, plus ``margin``; and the slices of the original in it."""
    pads = [(patch - 1 + margin, patch - 1 + (-(n + patch - 2)) % step + margin) for n in values.shape]
    inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, values.shape))
    return torch.from_numpy(np.pad(values, pads, mode="symmetric")), inner


def shrink(noisy: torch.Tensor, guide: Optional[torch.Tensor], sigma: float, *, threshold: float,
           ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BM3D's two filters on transform coefficients whose last ``ndim`` axes are one block (or group).

    ``guide`` None: hard threshold at ``threshold * sigma`` (the mean coefficient always kept), weight
    ``1 / kept``; else the empirical Wiener shrinkage ``P^2 / (P^2 + sigma^2)`` of the guide's coefficients
    ``P``, weight ``1 / (sigma^2 * sum(shrinkage^2))``. Returns (filtered coefficients, weight per block).
    """
    axes = tuple(range(-ndim, 0))
    if guide is None:
        keep = noisy.abs() > threshold * sigma
        keep[(Ellipsis,) + (0,) * ndim] = True
        return noisy * keep, 1.0 / keep.sum(dim=axes).to(noisy.dtype)
    power = guide**2
    gain = power / (power + sigma * sigma)
    return noisy * gain, 1.0 / (sigma * sigma * (gain**2).sum(dim=axes).clamp_min(1e-6))


def _transform(blocks: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Separable 3D transform of ``(..., p, p, p)`` blocks: ``matrix`` along each of the last three axes."""
    return torch.einsum("ai,bj,ck,...ijk->...abc", matrix, matrix, matrix, blocks)


def _inverse(coefficients: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ai,bj,ck,...abc->...ijk", matrix, matrix, matrix, coefficients)


def _blocks(x: torch.Tensor, first: int, count: int, patch: int, step: int) -> torch.Tensor:
    """The blocks whose first index along axis 0 is block ``first .. first + count - 1``: (count, ny, nx, p, p, p)."""
    z0 = first * step
    slab = x[z0:z0 + (count - 1) * step + patch]
    return slab.unfold(0, patch, step).unfold(1, patch, step).unfold(2, patch, step)


def _box_sum(values: torch.Tensor, width: int) -> torch.Tensor:
    """Full box sum (output grows by ``width - 1`` per axis), separable by cumulative sums (in float64: a
    difference of running sums would otherwise carry rounding from one end of the volume to the other)."""
    out = values.double()
    for axis in range(3):
        pad = [0, 0] * 3
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = width - 1
        summed = torch.cumsum(torch.nn.functional.pad(out, pad), dim=axis)
        head = summed.narrow(axis, width - 1, summed.shape[axis] - width + 1)
        tail = torch.cat([torch.zeros_like(summed.narrow(axis, 0, 1)),
                          summed.narrow(axis, 0, summed.shape[axis] - width)], dim=axis)
        out = head - tail
    return out.to(values.dtype)


def _accumulate(total: torch.Tensor, norm: torch.Tensor, values: torch.Tensor, weights: torch.Tensor,
                first: int, step: int) -> None:
    """Add weighted blocks (count, ny, nx, p, p, p) back onto the grid: a 3D ``fold``, done as one 2D
    ``fold`` (col2im) per offset along axis 0; the weights' coverage is a box sum."""
    count, ny, nx, patch = values.shape[:4]
    height, width = total.shape[1:]
    z0 = first * step
    span = step * (count - 1) + 1
    weighted = values * weights[..., None, None, None]
    for a in range(patch):
        columns = weighted[..., a, :, :].permute(0, 3, 4, 1, 2).reshape(count, patch * patch, ny * nx)
        planes = torch.nn.functional.fold(columns, (height, width), kernel_size=patch, stride=step)
        total[z0 + a:z0 + a + span:step] += planes[:, 0]
    if step > 1:
        spread = torch.zeros((span, step * (ny - 1) + 1, step * (nx - 1) + 1), dtype=weights.dtype)
        spread[::step, ::step, ::step] = weights
        weights = spread
    coverage = _box_sum(weights, patch)
    norm[z0:z0 + coverage.shape[0], :coverage.shape[1], :coverage.shape[2]] += coverage


def _stage(x: torch.Tensor, pilot: Optional[torch.Tensor], sigma: float, *, patch: int, step: int,
           threshold: float, cancel: Optional[CancelToken]) -> torch.Tensor:
    """One pass over all blocks: hard threshold (``pilot`` None) or Wiener shrinkage guided by ``pilot``,
    a slab of block rows at a time."""
    matrix = _dct_matrix(patch)
    grid = [(n - patch) // step + 1 for n in x.shape]
    rows = max(1, DCT_CHUNK_VALUES // max(grid[1] * grid[2] * patch**3, 1))
    total, norm = torch.zeros_like(x), torch.zeros_like(x)
    for first in range(0, grid[0], rows):
        check_cancel(cancel)
        count = min(rows, grid[0] - first)
        noisy = _transform(_blocks(x, first, count, patch, step), matrix)
        guide = None if pilot is None else _transform(_blocks(pilot, first, count, patch, step), matrix)
        filtered, weights = shrink(noisy, guide, sigma, threshold=threshold, ndim=3)
        _accumulate(total, norm, _inverse(filtered, matrix), weights, first, step)
    return total / norm


def denoise_dct(
    array: np.ndarray,
    *,
    sigma: float,
    strength: float = 1.0,
    patch: int = DCT_DEFAULTS["patch"],
    step: int = DCT_DEFAULTS["step"],
    threshold: float = DCT_DEFAULTS["threshold"],
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> tuple[np.ndarray, dict]:
    """Two-stage sliding 3D DCT denoising of ``array`` with Gaussian noise ``sigma`` (times ``strength``).

    Returns the float32 estimate (same shape) and the parameters used. Rician magnitude data are filtered
    as they are (as BM4D's Gaussian model does); ``denoise`` debiases the result
    (:func:`~MedSynthLib.noise.rician_debias`).
    """
    patch, step = int(patch), int(step)
    if patch < 2 or not 1 <= step <= patch:
        raise ValueError(f"patch must be >= 2 and 1 <= step <= patch, got patch {patch}, step {step}")
    noise = float(sigma) * float(strength)
    params = {"patch": patch, "step": step, "threshold": float(threshold), "sigma": float(noise)}
    values = np.asarray(array, dtype=np.float32)
    if noise <= 0:
        return values.copy(), params
    padded, inner = mirror_pad(values, patch=patch, step=step)
    report(progress, 0.0, "DCT denoising: hard threshold")
    first = _stage(padded, None, noise, patch=patch, step=step, threshold=threshold, cancel=cancel)
    report(progress, 0.5, "DCT denoising: Wiener")
    second = _stage(padded, first, noise, patch=patch, step=step, threshold=threshold, cancel=cancel)
    report(progress, 1.0, "DCT denoising done")
    return np.ascontiguousarray(second[inner].numpy(), dtype=np.float32), params
