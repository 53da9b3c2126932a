"""What the enhance functions return, and the one way they cast a result back: the bottom of the enhance house.

Every module of the task may import this one; it imports none of them (and no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Union

import numpy as np

from ...intensity import restore_dtype
from ...noise import NoiseEstimate
from ...volume import Volume

__all__ = ["MaskLike", "DenoiseResult", "BiasResult", "SuperResolveResult", "EnhanceResult", "finish_volume"]

#: A mask as a caller gives it: an array or a Volume on the same grid, or None (the task decides).
MaskLike = Union[np.ndarray, Volume, None]


@dataclass(frozen=True)
class DenoiseResult:
    """A denoised volume (same grid and dtype as the input), the noise estimate and a report; ``noise_map`` the
    local noise sigma (float32, the input's grid: :mod:`MedSynthLib.noise_map`), used or not (``report["noise_map"]``)."""

    volume: Volume
    noise: NoiseEstimate
    report: dict
    noise_map: Optional[Volume] = None


@dataclass(frozen=True)
class BiasResult:
    """The bias-corrected volume and the multiplicative field (float32, geometric mean 1 in the mask).

    Unpacks as ``corrected, field = correct_bias(volume)``.
    """

    volume: Volume
    field: Volume
    report: dict

    def __iter__(self) -> Iterator[Volume]:
        return iter((self.volume, self.field))


@dataclass(frozen=True)
class SuperResolveResult:
    """A volume upsampled through-plane (new slice spacing, same physical extent of the original slices), and its
    synthesised-voxel mask (:mod:`~MedSynthLib.provenance`: 1 on the new slices, 2 on rewritten acquired ones)."""

    volume: Volume
    report: dict
    synthetic_mask: Optional[Volume] = None


@dataclass(frozen=True)
class EnhanceResult:
    """The output of a whole pipeline; ``field`` is the last bias step's field, if any; ``synthetic_mask`` what
    the steps together made (1) or rewrote (2) on the output grid (:mod:`~MedSynthLib.provenance`)."""

    volume: Volume
    field: Optional[Volume]
    steps: tuple[dict, ...]
    report: dict
    synthetic_mask: Optional[Volume] = None


def finish_volume(volume: Volume, values: np.ndarray, mask: Optional[np.ndarray], *, clip: bool = True,
                  floor: Optional[float] = None) -> Volume:
    """Cast back to the input's dtype (clipped to its range, widened down to ``floor`` when given); voxels outside
    ``mask`` kept bit for bit.

    ``floor``: a magnitude's signal reaches 0 although its noise floor never does (a 32-coil air reads 24 at
    sigma 5): debiased values below the input's minimum are signal, not overshoot; clipping them there had put
    the air and dark tissue of a chi magnitude back on its noise floor."""
    array = volume.array
    low = float(array.min()) if floor is None else min(float(array.min()), float(floor))
    bounds = (low, float(array.max())) if clip else None
    out = restore_dtype(values, array.dtype, clip=bounds)
    if mask is not None:
        out = np.where(mask, out, array)
    return Volume(out, volume.ijk_to_ras.copy())
