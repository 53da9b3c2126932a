"""Intensity handling shared by every task: robust scaling, modality guess, and output dtype.

Networks see intensities scaled to about [0, 1] by robust percentiles; results
go back to the input's units and dtype (int16 CT stays int16 HU, rounded and
clipped) through :func:`restore_dtype`, the one place that casts task outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .volume import Volume

__all__ = ["Scale", "robust_scale", "restore_dtype", "guess_modality"]


@dataclass(frozen=True)
class Scale:
    """Affine map ``normalised = (value - low) / (high - low)``; invertible."""

    low: float
    high: float

    @property
    def width(self) -> float:
        return max(self.high - self.low, 1e-12)

    def forward(self, values: np.ndarray) -> np.ndarray:
        return ((np.asarray(values, dtype=np.float32) - self.low) / self.width).astype(np.float32)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * self.width + self.low


def robust_scale(
    array: np.ndarray,
    *,
    mask: Optional[np.ndarray] = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> Scale:
    """Scale mapping the ``percentiles`` of ``array`` (over ``mask``) to 0 and 1.

    Falls back to min/max when the percentiles coincide (e.g. mostly-zero background).
    """
    values = np.asarray(array)[mask] if mask is not None else np.asarray(array).ravel()
    if values.size > 2_000_000:  # percentiles of a strided subsample are within noise and 10x faster
        values = values[:: values.size // 1_000_000]
    low, high = np.percentile(values, percentiles)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    return Scale(float(low), float(high))


def restore_dtype(values: np.ndarray, dtype: np.dtype, *, clip: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Cast task output ``values`` to ``dtype``: integers rounded and clipped to the dtype's range.

    ``clip`` additionally bounds the values (e.g. the input's own intensity
    range, or a modality's valid range such as [-1024, 3071] HU).
    """
    dtype = np.dtype(dtype)
    out = np.asarray(values, dtype=np.float64)
    if clip is not None:
        out = np.clip(out, clip[0], clip[1])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return out >= 0.5
    return out.astype(dtype)


def guess_modality(volume: Volume) -> str:
    """``"CT"`` when intensities look like Hounsfield units, else ``"MR"``.

    CT: air near -1000 HU fills part of the image and values reach soft tissue
    (0-100 HU). MR magnitude images are non-negative. Callers that know the
    modality should say so; this guess only guards presets against obvious misuse.
    """
    array = volume.array
    sample = array.ravel()[:: max(1, array.size // 500_000)]
    low = float(np.percentile(sample, 1))
    share_air = float(np.mean((sample > -1100) & (sample < -850)))
    share_soft = float(np.mean((sample > -200) & (sample < 200)))
    if low < -500 and share_air > 0.02 and share_soft > 0.02:
        return "CT"
    return "MR"
