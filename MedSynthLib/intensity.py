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


#: Soft tissue in Hounsfield units: water 0, fat about -100, parenchyma, muscle and blood 20-80 HU.
_SOFT_TISSUE_HU = (-100.0, 100.0)
#: Widest interquartile range (HU) of the foreground of a windowed CT: HU are absolute, grey and white matter
#: lie within about 15 HU of each other (30-45 HU) and CSF at 0-15 HU. In MR's arbitrary units tissue contrast
#: is a fraction of the signal: an 8-bit T1 head spreads its brain over 45-51 units (corpus: ITK k-means test
#: 54-99, Colin27 50-101) against 9 HU for the TotalSegmentator CT brain atlas (33-42).
_CT_TISSUE_SPREAD_HU = 30.0
#: Bone or calcification: at least this many HU, far above soft tissue (a window clips it at its top).
_BONE_HU = 150.0
#: Share of the voxels the constant background of a windowed / skull-stripped CT fills at least.
_BACKGROUND_SHARE = 0.2


def _looks_like_raw_ct(sample: np.ndarray) -> bool:
    """Air near -1000 HU fills part of the image and values reach soft tissue (MR magnitude is non-negative)."""
    low = float(np.percentile(sample, 1))
    share_air = float(np.mean((sample > -1100) & (sample < -850)))
    share_soft = float(np.mean((sample > -200) & (sample < 200)))
    return low < -500 and share_air > 0.02 and share_soft > 0.02


def _looks_like_windowed_ct(sample: np.ndarray) -> bool:
    """A CT windowed or skull-stripped to soft tissue (air gone): see :func:`guess_modality`'s Notes."""
    if not np.all(sample == np.round(sample)):  # HU are stored as whole numbers
        return False
    values, counts = np.unique(sample, return_counts=True)
    background = float(values[np.argmax(counts)])
    if counts.max() < _BACKGROUND_SHARE * sample.size or not -1024.0 <= background <= 0.0:
        return False
    foreground = sample[sample != background]
    if foreground.size < 1000:
        return False
    q25, q75 = np.percentile(foreground, [25, 75])
    in_soft_tissue = _SOFT_TISSUE_HU[0] <= q25 and q75 <= _SOFT_TISSUE_HU[1]
    bone = float(np.mean(foreground >= _BONE_HU))
    return bool(in_soft_tissue and q75 - q25 <= _CT_TISSUE_SPREAD_HU and bone >= 1e-4)


def guess_modality(volume: Volume) -> str:
    """``"CT"`` when intensities look like Hounsfield units, else ``"MR"``.

    Callers that know the modality should say so; this guess only guards presets and defaults against
    obvious misuse.

    Notes
    -----
    Two signatures of CT, either suffices:

    - raw CT: air near -1000 HU fills part of the image (over 2 % of the voxels between -1100 and -850,
      1st percentile below -500) and values reach soft tissue (-200 to 200 HU). MR magnitude images are
      non-negative.
    - windowed or skull-stripped CT (e.g. the TotalSegmentator CT brain atlas, windowed to -30..385 HU,
      81 % a constant 0): whole-number values; a constant background (the most common value, at least 20 %
      of the voxels) at the window's floor or zero, between -1024 and 0 HU; the other voxels' bulk (25th to
      75th percentile) inside soft tissue, -100 to 100 HU, and narrow, at most 30 HU wide, because HU are
      absolute and brain, muscle and organs lie within tens of HU of each other; and a bone-like bright
      tail, at least 0.01 % of them at 150 HU or more. An MR scan with a zero background either puts its
      tissue's bulk outside -100..100 (MNI template 158-206) or spreads it over 45 units or more (8-bit T1
      heads); MR scans with a narrow bulk (a breast crop, 54-66) have no large constant background.

    Examples
    --------
    >>> import numpy as np
    >>> brain = np.zeros((20, 20, 20), np.int16)
    >>> brain[4:16, 4:16, 4:16] = 35 + np.arange(12) % 7  # parenchyma at 35-41 HU
    >>> brain[4, 4, 4:8] = 300                           # a little bone
    >>> guess_modality(Volume(brain, np.eye(4)))
    'CT'
    >>> guess_modality(Volume((brain * 4).astype(np.int16), np.eye(4)))  # the same scaled: not HU
    'MR'
    """
    array = volume.array
    sample = array.ravel()[:: max(1, array.size // 500_000)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return "MR"
    return "CT" if _looks_like_raw_ct(sample) or _looks_like_windowed_ct(sample) else "MR"
