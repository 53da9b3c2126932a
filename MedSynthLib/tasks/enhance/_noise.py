"""The noise a denoiser is set from: :func:`estimate_noise` (public) and the cross-check ``denoise`` applies to it.

The estimators themselves are core (:mod:`MedSynthLib.noise`, shared with training's pair making); this module
is the task's view of them: the public estimate with its checks, and :func:`working_noise`, the estimate a
method is set from when the two estimators disagree.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ...errors import InputError
from ...noise import NoiseEstimate, estimate_noise_array
from ...volume import Volume, mask_on_grid, validate_volume
from ._options import MODALITIES
from ._results import MaskLike

__all__ = ["estimate_noise", "working_noise"]


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
