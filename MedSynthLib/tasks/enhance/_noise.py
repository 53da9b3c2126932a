"""The noise a denoiser is set from: :func:`estimate_noise` (public) and the cross-check ``denoise`` applies to it.

The estimators themselves are core (:mod:`MedSynthLib.noise`, shared with training's pair making, and
:mod:`MedSynthLib.noise_map`); this module is the task's view of them: the public estimates with their checks,
:func:`working_noise`, the estimate a method is set from when the two estimators disagree, and
:func:`map_normalisation`, the volume ``denoise`` works on when the noise varies across it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ...errors import InputError
from ...noise import NoiseEstimate, estimate_noise_array
from ...noise_map import NoiseMap, estimate_noise_map as _estimate_map
from ...volume import Volume, mask_on_grid, validate_volume
from ._options import MODALITIES
from ._results import MaskLike

__all__ = ["estimate_noise", "estimate_noise_map", "working_noise", "map_normalisation"]


def estimate_noise(volume: Volume, *, mask: MaskLike = None, modality: Optional[str] = None) -> NoiseEstimate:
    """Estimate the noise standard deviation of ``volume`` in its own units.

    Parameters
    ----------
    volume : Volume
    mask : ndarray or Volume, optional
        Tissue region (same grid). Default: an Otsu foreground.
    modality : {"MR", "CT"}, optional
        Default: :func:`MedSynthLib.intensity.guess_modality`. MR is treated as
        a Rician magnitude image, CT as Gaussian.

    Returns
    -------
    NoiseEstimate
        ``sigma`` of the underlying Gaussian noise, the model and the method used.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> clean = np.zeros((20, 64, 64), np.float32); clean[4:16, 16:48, 16:48] = 100
    >>> noisy = np.hypot(clean + rng.normal(0, 5, clean.shape), rng.normal(0, 5, clean.shape))
    >>> round(estimate_noise(Volume(noisy, np.eye(4))).sigma)
    5
    """
    validate_volume(volume)
    if modality is not None and modality not in MODALITIES:
        raise InputError(f"modality must be 'MR' or 'CT', got {modality!r}")
    return estimate_noise_array(volume, mask=mask_on_grid(volume, mask), modality=modality)


def working_noise(noise: NoiseEstimate, method: str) -> tuple[NoiseEstimate, dict, list[str]]:
    """The estimate the method is set from: the conservative (smaller) sigma when ``auto`` and the two disagree.

    Returns (the estimate to use, the report's ``noise_check``, warnings).
    """
    check = dict(noise.details.get("cross_check") or {})
    if not check:
        return noise, {"cross_check": None, "branch": "single estimate",
                       "why": "no second estimator applies to this volume"}, []
    if noise.agree:
        return noise, {"cross_check": check, "branch": "estimate",
                       "why": f"{check['primary']} and {check['second']} agree within x{check['factor']:g}"}, []
    line = (f"noise estimates disagree: {check['primary']} sigma {check['primary_sigma']:.4g}, {check['second']} "
            f"sigma {check['second_sigma']:.4g} (x{check['ratio']:.2f}, more than x{check['factor']:g})")
    if method != "auto":
        return noise, {"cross_check": check, "branch": "estimate", "why": line + "; the method was chosen "
                       "explicitly, so its usual estimate was used"}, [line]
    used = dataclasses.replace(noise, sigma=noise.conservative_sigma)
    why = f"{line}; auto used the smaller, {used.sigma:.4g}, which smooths less"
    return used, {"cross_check": check, "branch": "conservative", "why": why}, [why]


def estimate_noise_map(volume: Volume, *, mask: MaskLike = None, modality: Optional[str] = None) -> NoiseMap:
    """A smooth noise sigma per voxel of ``volume`` (:func:`MedSynthLib.noise_map.estimate_noise_map`).

    Parameters
    ----------
    volume : Volume
    mask : ndarray or Volume, optional
        Tissue region (same grid) the map is measured and summarised in. Default: an Otsu foreground.
    modality : {"MR", "CT"}, optional
        Default: guessed. MR is Rician-corrected block by block, CT Gaussian in soft tissue.

    Returns
    -------
    NoiseMap
        ``volume`` (float32 map on the input's grid), ``summary`` (range, percentiles, where it is highest,
        whether it ``varies``).
    """
    validate_volume(volume)
    if modality is not None and modality not in MODALITIES:
        raise InputError(f"modality must be 'MR' or 'CT', got {modality!r}")
    return _estimate_map(volume, mask=mask_on_grid(volume, mask), modality=modality)


def map_normalisation(volume: Volume, noise_map: NoiseMap, *, use: str) -> tuple[Optional[np.ndarray], dict]:
    """The map's shape to divide ``volume`` by before denoising (None: not used), and the report's ``noise_map``.

    Why divide: a smooth positive field ``r`` turns noise of sigma ``sigma(x)`` into ``sigma(x) / r(x)``, even
    when ``r`` is the map's shape (the map over its median in the tissue), and it keeps a Rician magnitude Rician
    (``|A + n| / r = |A / r + n / r|``). Every method then works as designed on even noise (thresholds, Wiener
    weights, ``h``, SURE's variance, the Rician debiasing), and multiplying back returns the volume's units. Only
    where the map varies (:attr:`NoiseMap.varies`): on even noise the map's own scatter (a few per cent) would
    change the result for nothing, so it stays bit for bit what one sigma gives.
    """
    summary = {**noise_map.summary, "model": noise_map.model}
    if use == "off":
        return None, {**summary, "used": False, "why": "local_noise='off': one sigma everywhere"}
    ratio = summary.get("p95_over_p5", 1.0)
    if not noise_map.varies or summary.get("flat_because"):
        why = summary.get("flat_because") or (f"the map is even (95th over 5th percentile x{ratio:.2f}, "
                                              f"not above x{summary.get('variation_factor')}): one sigma")
        return None, {**summary, "used": False, "why": why}
    relative = noise_map.relative()
    if not np.all(np.isfinite(relative)) or float(relative.min()) <= 0:
        return None, {**summary, "used": False, "why": "the map is not positive everywhere: one sigma"}
    why = (f"the noise varies x{ratio:.2f} (95th over 5th percentile in the tissue, above "
           f"x{summary.get('variation_factor')}): the volume was divided by the map's shape, denoised with one "
           f"sigma and multiplied back")
    return relative, {**summary, "used": True, "why": why}
