"""The noise a denoiser is set from: :func:`estimate_noise` (public) and the cross-check ``denoise`` applies to it.

The estimators themselves are core (:mod:`MedSynthLib.noise`, shared with training's pair making, and
:mod:`MedSynthLib.noise_map`); this module is the task's view of them: the public estimates with their checks,
:func:`working_noise`, the estimate a method is set from when the two estimators disagree (with the measured
reasons why, :func:`explain_if_needed`, from :mod:`MedSynthLib.noise_reasons`), and
:func:`map_normalisation`, the volume ``denoise`` works on when the noise varies across it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ...errors import InputError
from ...noise import NoiseEstimate, cross_check, estimate_noise_array
from ...noise_map import NoiseMap, estimate_noise_map as _estimate_map
from ...noise_reasons import NO_MEASURED_REASON, NoiseReasons, explain_noise
from ...volume import Volume, mask_on_grid, validate_volume
from ._options import MODALITIES
from ._results import MaskLike

__all__ = ["estimate_noise", "estimate_noise_map", "working_noise", "explain_if_needed", "map_normalisation",
           "divided_noise"]


def estimate_noise(volume: Volume, *, mask: MaskLike = None, modality: Optional[str] = None,
                   coils: Optional[float] = None) -> NoiseEstimate:
    """Estimate the noise standard deviation of ``volume`` in its own units.

    Parameters
    ----------
    volume : Volume
    mask : ndarray or Volume, optional
        Tissue region (same grid). Default: an Otsu foreground.
    modality : {"MR", "CT"}, optional
        Default: :func:`MedSynthLib.intensity.guess_modality`. MR is treated as
        a Rician magnitude image, CT as Gaussian.
    coils : float, optional
        MR: the effective receive-coil count (non-central chi with 2N degrees of freedom; 1: Rician). Default:
        read from the air, as ``denoise`` does (one estimate for both: BM4D beside ``denoise`` in the benchmarks
        was given a Rician reading of an 8-coil air, 3.6x too high).

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
    return estimate_noise_array(volume, mask=mask_on_grid(volume, mask), modality=modality, coils=coils)


def explain_if_needed(volume: Volume, estimate: NoiseEstimate, *, mask: Optional[np.ndarray] = None,
                      noise_map: Optional[NoiseMap] = None) -> Optional[NoiseReasons]:
    """Why ``estimate``'s two estimators disagree on ``volume``, or why there is no second one; None when they
    agree (nothing to explain, and the measurements cost a pass over the volume).

    ``noise_map``: the local map, only where ``volume`` was not already divided by it (then its variation is no
    longer a reason)."""
    if estimate.details.get("cross_check") and estimate.agree:
        return None
    return explain_noise(volume, estimate, mask=mask, noise_map=noise_map)


def _because(explanation: Optional[NoiseReasons]) -> str:
    """The end of the disagreement warning: its main measured reason, or that none was measured."""
    if explanation is None or not explanation.measured:
        return NO_MEASURED_REASON
    return f"likely because {explanation.main}"


def working_noise(noise: NoiseEstimate, method: str, *,
                  explanation: Optional[NoiseReasons] = None) -> tuple[NoiseEstimate, dict, list[str]]:
    """The estimate the method is set from: the conservative (smaller) sigma when ``auto`` and the two disagree.

    ``explanation``: :func:`explain_if_needed`'s, whose reasons go into the report's ``noise_check`` (``reasons``,
    ``indicators``) and whose main reason ends the warning, so that a user reads why, not only that, the two
    disagree. Returns (the estimate to use, the report's ``noise_check``, warnings).
    """
    check = dict(noise.details.get("cross_check") or {})
    found = {"reasons": list(explanation.reasons), "indicators": explanation.indicators} if explanation else {
        "reasons": [], "indicators": None, "indicators_null_reason": "the estimators agree: nothing to explain"}
    if not check:
        why = "no second estimator applies to this volume" + (f": {found['reasons'][0]}" if found["reasons"] else "")
        return noise, {"cross_check": None, "branch": "single estimate", "why": why, **found}, []
    if noise.agree:
        return noise, {"cross_check": check, "branch": "estimate",
                       "why": f"{check['primary']} and {check['second']} agree within x{check['factor']:g}",
                       **found}, []
    if not found["reasons"]:
        found = {**found, "reasons": [NO_MEASURED_REASON], "indicators": None,
                 "indicators_null_reason": "not measured (no explanation was asked for)"}
    line = (f"noise estimates disagree: {check['primary']} sigma {check['primary_sigma']:.4g}, {check['second']} "
            f"sigma {check['second_sigma']:.4g} (x{check['ratio']:.2f}, more than x{check['factor']:g})")
    because = _because(explanation)
    if method != "auto":
        return noise, {"cross_check": check, "branch": "estimate", "why": line + "; the method was chosen "
                       f"explicitly, so its usual estimate was used; {because}", **found}, [f"{line}; {because}"]
    used = dataclasses.replace(noise, sigma=noise.conservative_sigma)
    why = f"{line}; auto used the smaller, {used.sigma:.4g}, which smooths less; {because}"
    return used, {"cross_check": check, "branch": "conservative", "why": why, **found}, [why]


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
        spread = summary.get("heterogeneity") or {}
        why = summary.get("flat_because") or (
            f"the map is even (95th over 5th percentile x{ratio:.2f}, not above x{summary.get('variation_factor')}): "
            "one sigma" if ratio <= float(summary.get("variation_factor") or 0) else
            f"the map's x{ratio:.2f} is within what sampling explains (blocks' spread {spread.get('q_over_df')} "
            f"times the sampling variance, p {spread.get('p', 1):.2g}): one sigma")
        return None, {**summary, "used": False, "why": why}
    relative = noise_map.relative()
    if not np.all(np.isfinite(relative)) or float(relative.min()) <= 0:
        return None, {**summary, "used": False, "why": "the map is not positive everywhere: one sigma"}
    why = (f"the noise varies x{ratio:.2f} (95th over 5th percentile in the tissue, above "
           f"x{summary.get('variation_factor')}): the volume was divided by the map's shape, denoised with one "
           f"sigma and multiplied back")
    return relative, {**summary, "used": True, "why": why}


def divided_noise(divided: NoiseEstimate, noise_map: NoiseMap) -> NoiseEstimate:
    """The noise of the volume divided by the map's shape (:func:`map_normalisation`): the map's median in the
    tissue where it meets the global estimate read on the divided volume (within x1.25), else that estimate.

    Why the map's level: dividing by the map over its median leaves even noise *in the tissue* at that median, which
    the map measured there (block by block, Rician-corrected). The global estimators read the divided volume's air,
    where the map is only extrapolated from the nearest tissue blocks: on a g-factor field of 1-3x over a whole
    field of view (``benchmarks/noise_map.py``, MNI) the divided air read 10.26 for a tissue median of 11.81 (map
    11.70), and the smoother set from it lost 1.7 dB. Only where the two agree: the map's fine-scale high-pass
    under-reads correlated noise (the corpus' EPIs: x5 below the air) and over-reads texture (the DWI b0: x7 above),
    and there the divided volume's own estimate, with its own cross-check, is kept as before.
    """
    level = float(noise_map.summary.get("median") or 0.0)
    if level <= 0 or divided.sigma <= 0:
        return divided
    check = cross_check(level, float(divided.sigma), primary_name="noise map (tissue median)",
                        second_name=f"{divided.method} of the divided volume")
    if not check["agree"]:
        return dataclasses.replace(divided, details={**divided.details, "map_level": {
            **check, "used": False, "why": "the map's level does not meet the divided volume's estimate"}})
    details = {**divided.details, "divided_cross_check": divided.details.get("cross_check"), "cross_check": check,
               "map_level": {**check, "used": True}}
    return dataclasses.replace(divided, sigma=level, method="noise map", details=details)
