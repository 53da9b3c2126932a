"""Why the two noise estimators disagree: measured indicators and the plain-language reasons they support.

Why this exists: :func:`~MedSynthLib.noise.estimate_noise_array` carries two independent estimates (MR: the Rician
mode of the air against the in-tissue residual; CT: the 4-neighbour residual against the 2x2 diagonal), and on
real scans they often disagree (issue 30: 11 of the 14 scans of the corpus with both, by up to x17). A report that
only says *that* they disagree leaves the user guessing which one to believe; each cause leaves a trace that can
be measured, and :func:`explain_noise` measures them:

* **correlated noise or texture** (``whiteness``): the residual sigma on the native grid over twice that of 2x2
  in-plane block means. Averaging 4 voxels halves white noise, so white noise gives 1; noise correlated by the
  scanner's k-space filter, interpolation or resampling (and anatomy, which averaging keeps) gives less. Below
  :data:`WHITE_NOISE_FLOOR` the residual is not measuring white noise.
* **zeroed or clipped background** (``background_zero_fraction``): air is Rayleigh, exactly 0 only by rounding;
  many exact zeros mean a masked, thresholded or clipped image, whose air says nothing of sigma.
* **no background**: too few non-zero air voxels, or "air" brighter than half the tissue (no air in view).
* **quantisation** (``sigma_in_grey_levels``): an integer image whose sigma is about one grey level.
* **high SNR** (``snr``): a template, an average or a filtered scan has almost no noise; the residual then reads
  anatomy.
* **non-Rayleigh background** (``background_q75_over_q25``, ``background_equivalent_coils``): the air's quartile
  ratio is 2.195 for Rayleigh (one coil); multi-coil sum-of-squares data are chi with 2N degrees of freedom, whose
  narrower peak the Rayleigh mode reads high.
* **ghosts or tissue in the air** (``background_share_above_4sigma``): a Rayleigh variable exceeds 4 sigma in
  0.03 % of voxels; more is signal (motion/N/2 ghosts, neck, shoulders).
* **noise varying across slices** (``background_sigma_slices_p90_over_p10``) or across the volume (the local noise
  map's 95th over 5th percentile): one sigma cannot describe both the air and the tissue.
* **a third opinion**: the local noise map's median (:mod:`MedSynthLib.noise_map`, a high-pass that cancels
  axis-aligned edges) near one estimator and not the other. Stated, not judged: correlated noise lowers the map
  as it lowers the residual, so siding with the residual does not make the residual right.

A disagreement that none of these explains is reported as such: ``"no measured reason"`` comes first, then the
unmeasured guess (the direction of the disagreement). ``benchmarks/real_noise.py`` (part c) reports the same
indicators and reasons on every real scan of ``../shared/data``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from .noise import (MAX_BACKGROUND_ZEROS, MIN_BACKGROUND_VOXELS, NoiseEstimate, diagonal_sigma, erode_in_plane,
                    otsu_foreground, residual_sigma)
from .noise_coils import equivalent_coils
from .noise_map import NoiseMap
from .volume import Volume

__all__ = ["NoiseReasons", "explain_noise", "noise_indicators", "disagreement_reasons", "whiteness",
           "equivalent_coils", "NO_MEASURED_REASON", "WHITE_NOISE_FLOOR"]

#: The first reason when the estimators disagree and no measured indicator explains it.
NO_MEASURED_REASON = "no measured reason"
#: Whiteness below this is correlated noise or texture: white noise gives 1.0 within a few per cent (the MAD's
#: standard error on 2000 voxels is about 3 %); Gaussian-filtered noise of 0.7 voxels gave 0.45-0.55.
WHITE_NOISE_FLOOR = 0.8
#: Signal over sigma above which a scan has almost no noise (templates, averages): the in-tissue residual then
#: reads anatomy. The corpus's noisy acquisitions sit at 2-35, its templates at 45-220.
HIGH_SNR = 60
#: Fewest non-zero air voxels for the background's statistics (as the estimator's own minimum).
_MIN_AIR = MIN_BACKGROUND_VOXELS
#: Above the estimator's own limit the background is clipped; above this it is partly zeroed.
_CLIPPED_ZEROS, _PARTLY_ZEROED = MAX_BACKGROUND_ZEROS, 0.2
#: A Rayleigh variable exceeds 4 sigma with probability exp(-8) = 0.03 %; 5 % is signal in the air.
_GHOST_SHARE = 0.05
_SLICE_SPREAD = 1.3


@dataclass(frozen=True)
class NoiseReasons:
    """What :func:`explain_noise` measured and concluded.

    Attributes
    ----------
    indicators : dict
        Strict-JSON measurements (see the module notes); a ``null`` has a ``<key>_null_reason`` sibling.
    reasons : list of str
        Why the estimators disagree, or why there is no second one; empty when they agree. Starts with
        :data:`NO_MEASURED_REASON` when they disagree and no indicator explains it.
    """

    indicators: dict = field(default_factory=dict)
    reasons: list = field(default_factory=list)

    @property
    def main(self) -> Optional[str]:
        """The first reason (the one a one-line warning names), or None."""
        return self.reasons[0] if self.reasons else None

    @property
    def measured(self) -> bool:
        """True when at least one reason rests on a measured indicator."""
        return bool(self.reasons) and self.reasons[0] != NO_MEASURED_REASON

    def as_dict(self) -> dict:
        return {"reasons": list(self.reasons), "indicators": self.indicators}


def whiteness(array: np.ndarray, region: np.ndarray, axis: int) -> Optional[float]:
    """Residual sigma on the native grid over twice that of 2x2 in-plane block means (1 = white noise).

    Why: averaging four voxels halves white noise but not correlated noise or anatomy, so a value well below 1
    says the residual estimator measured something other than white noise. None when the block means leave
    fewer than 200 voxels in ``region`` (or none of their residual).
    """
    data = np.moveaxis(np.asarray(array, np.float32), axis, 0)
    reg = np.moveaxis(region, axis, 0)
    n1, n2 = (data.shape[1] // 2) * 2, (data.shape[2] // 2) * 2
    d, r = data[:, :n1, :n2], reg[:, :n1, :n2]
    block = d.reshape(d.shape[0], n1 // 2, 2, n2 // 2, 2).mean((2, 4))
    block_region = r.reshape(r.shape[0], n1 // 2, 2, n2 // 2, 2).all((2, 4))
    native, _ = residual_sigma(data, reg, 0)
    coarse, used = residual_sigma(block, block_region, 0)
    if coarse <= 0 or used < 200:
        return None
    return round(native / (2 * coarse), 3)


def _estimate_part(estimate: NoiseEstimate) -> dict:
    """The estimate and its cross-check, rounded as the benchmark's table shows them."""
    check = estimate.details.get("cross_check") or {}
    return {"modality": estimate.modality, "method": estimate.method, "sigma": round(float(estimate.sigma), 4),
            "signal": round(float(estimate.signal), 3),
            "snr": round(estimate.snr, 1) if np.isfinite(estimate.snr) else None,
            "primary": check.get("primary"), "primary_sigma": check.get("primary_sigma"),
            "second": check.get("second"), "second_sigma": check.get("second_sigma"),
            "ratio": check.get("ratio"), "agree": (check.get("agree") if check else None),
            "conservative_sigma": round(estimate.conservative_sigma, 4), "coils": estimate.coils}


def _air_part(array: np.ndarray, air: np.ndarray, background_sigma: float, axis: int) -> dict:
    """The air's quartile ratio, equivalent coil count, share above 4 sigma and spread over slices."""
    values = array[air]
    out: dict = {}
    if values.size < _MIN_AIR:
        why = f"{values.size} non-zero air voxels (fewer than {_MIN_AIR})"
        for key in ("background_q75_over_q25", "background_equivalent_coils", "background_share_above_4sigma",
                    "background_sigma_slices_p90_over_p10"):
            out[key], out[key + "_null_reason"] = None, why
        return out
    q25, q75 = np.percentile(values, [25, 75])
    ratio = float(q75 / q25) if q25 > 0 else None
    out["background_q75_over_q25"] = round(ratio, 3) if ratio else None
    out["background_equivalent_coils"] = round(equivalent_coils(ratio), 1) if ratio else None
    if not ratio:
        out["background_q75_over_q25_null_reason"] = "the air's lower quartile is 0"
        out["background_equivalent_coils_null_reason"] = "the air's lower quartile is 0"
    bs = background_sigma
    out["background_share_above_4sigma"] = round(float((values > 4 * bs).mean()), 4) if bs else None
    if not bs:
        out["background_share_above_4sigma_null_reason"] = "no background sigma (the air was not used)"
    moved, moved_air = np.moveaxis(array, axis, 0), np.moveaxis(air, axis, 0)
    per_slice = [float(np.median(s[a])) / float(np.sqrt(2 * np.log(2)))
                 for s, a in zip(moved, moved_air) if a.sum() >= 300]
    lo, hi = np.percentile(per_slice, [10, 90]) if len(per_slice) >= 3 else (0.0, 0.0)
    out["background_sigma_slices_p90_over_p10"] = round(float(hi / lo), 3) if lo > 0 else None
    if not lo > 0:
        out["background_sigma_slices_p90_over_p10_null_reason"] = "fewer than 3 slices with 300 air voxels"
    return out


def _map_part(noise_map: Optional[NoiseMap]) -> dict:
    """The local noise map's median and 95th over 5th percentile in the tissue."""
    if noise_map is None:
        return {}
    summary = noise_map.summary
    if summary.get("flat_because"):
        why = f"no noise map: {summary['flat_because']}"
        return {"noise_map_median": None, "noise_map_median_null_reason": why,
                "noise_map_p95_over_p5": None, "noise_map_p95_over_p5_null_reason": why}
    return {"noise_map_median": summary.get("median"), "noise_map_p95_over_p5": summary.get("p95_over_p5"),
            "noise_map_varies": bool(noise_map.varies)}


def noise_indicators(volume: Volume, estimate: NoiseEstimate, *, mask: Optional[np.ndarray] = None,
                     noise_map: Optional[NoiseMap] = None) -> dict:
    """The measurements :func:`disagreement_reasons` reads (see the module notes for what each detects).

    ``estimate`` is ``volume``'s (:func:`~MedSynthLib.noise.estimate_noise_array`), ``mask`` the tissue it was
    measured in (default: the Otsu foreground, as the estimator's), ``noise_map`` its local map (optional: adds
    the map's median and spread). Strict JSON; a ``null`` has a ``<key>_null_reason`` sibling.
    """
    array = np.asarray(volume.array, np.float32)
    details = estimate.details
    check = details.get("cross_check") or {}
    spacing = volume.spacing_kji
    axis = int(np.argmax(spacing)) if max(spacing) > 1.2 * min(spacing) else 0
    foreground = otsu_foreground(array) if mask is None else np.asarray(mask, bool)
    row = _estimate_part(estimate)
    if estimate.modality == "MR":
        row.update(background_sigma=round(float(details.get("background_sigma", 0)), 4),
                   residual_sigma=round(float(details.get("residual_sigma", 0)), 4),
                   background_voxels=details.get("background_voxels"),
                   background_zero_fraction=details.get("background_zero_fraction"))
        air = ~ndimage.binary_dilation(foreground, iterations=3) & (array != 0)
        row.update(_air_part(array, air, float(details.get("background_sigma") or 0), axis))
        tissue = erode_in_plane(foreground, axis, 2)
    else:
        row.update(residual_sigma=check.get("primary_sigma"), diagonal_sigma=check.get("second_sigma"))
        tissue = erode_in_plane(foreground & (array > -300) & (array < 400), axis, 1)
    enough = int(tissue.sum()) >= _MIN_AIR
    row["whiteness"] = whiteness(array, tissue, axis) if enough else None
    if row["whiteness"] is None:
        row["whiteness_null_reason"] = (f"{int(tissue.sum())} eroded tissue voxels (fewer than {_MIN_AIR})"
                                        if not enough else "too few 2x2 blocks inside the tissue")
    if estimate.modality == "MR":
        raw, _ = residual_sigma(array, tissue, axis)
        diag = diagonal_sigma(array, tissue, axis)
        row["diagonal_over_residual_raw"] = round(diag / raw, 3) if raw > 0 else None
        if not raw > 0:
            row["diagonal_over_residual_raw_null_reason"] = "no residual in the eroded tissue"
    integer = np.asarray(volume.array).dtype.kind in "iu"
    row["sigma_in_grey_levels"] = round(float(estimate.sigma), 3) if integer else None
    row.update(_map_part(noise_map))
    return row


def _no_second(row: dict) -> list[str]:
    """Why there is no cross-check (only one estimator applies)."""
    out: list[str] = []
    zeros, voxels, snr = row.get("background_zero_fraction") or 0, row.get("background_voxels"), row.get("snr") or 0
    if row["modality"] != "MR":
        return ["too little smooth soft tissue (-300..400 HU) for the second, diagonal estimate"]
    if row.get("method") == "background":
        out.append("no in-tissue residual: too little tissue to measure it")
    elif zeros > _CLIPPED_ZEROS:
        out.append(f"zeroed/clipped background: {100 * zeros:.0f} % of the air is exactly 0 ({voxels} non-zero air "
                   "voxels)")
    elif (voxels or 0) < _MIN_AIR:
        out.append(f"no background: {voxels} non-zero air voxels (< {_MIN_AIR})")
    else:
        out.append("background brighter than half the tissue: no air in view")
    if snr > HIGH_SNR:
        out.append(f"almost no noise (signal/sigma {snr:.0f}): a template/average or filtered scan")
    return out


def _from_the_map(row: dict) -> tuple[list[str], list[str]]:
    """The local noise map: (a reason: the noise varies; an observation: its median near one estimator only).

    The observation explains nothing by itself (see the module notes), so it never counts as a measured reason."""
    out: list[str] = []
    spread, median = row.get("noise_map_p95_over_p5"), row.get("noise_map_median")
    varies = [f"noise varies across the volume (noise map 95th/5th percentile x{spread:.2f}): one sigma cannot fit "
              "the air and the tissue"] if row.get("noise_map_varies") else []
    first, second = row.get("primary_sigma"), row.get("second_sigma")
    if median and first and second:
        near = [abs(np.log(median / v)) <= np.log(1.25) for v in (first, second)]
        if near[0] != near[1]:
            pairs = [(row["primary"], first), (row["second"], second)]
            (side, value), (other, far) = pairs if near[0] else pairs[::-1]
            out.append(f"a third estimate, the local noise map's median {median:.4g}, is near the {side} ({value:.4g}),"
                       f" not the {other} ({far:.4g})")
    return varies, out


def _mr_reasons(row: dict) -> tuple[list[str], list[str]]:
    """(measured reasons, unmeasured guesses) of an MR disagreement."""
    out: list[str] = []
    snr, white, zeros = row.get("snr") or 0, row.get("whiteness"), row.get("background_zero_fraction") or 0
    bg, res = row["background_sigma"], row["residual_sigma"]
    if zeros > _PARTLY_ZEROED:
        out.append(f"partly zeroed background ({100 * zeros:.0f} % zeros)")
    if row.get("sigma_in_grey_levels") is not None and min(bg, res) < 1.5:
        out.append(f"quantised: sigma {min(bg, res):.2f} grey levels")
    if white is not None and white < WHITE_NOISE_FLOOR:
        out.append(f"correlated noise or texture in the tissue (whiteness {white:.2f}; 1 = white noise)")
    if snr > HIGH_SNR:
        out.append(f"high SNR (signal/sigma {snr:.0f}): the in-tissue residual is dominated by anatomy, not noise")
    if bg > res:
        coils = row.get("background_equivalent_coils")
        if coils and coils >= 1.5 and (row.get("coils") or 1) <= 1:  # a chi estimate already read the air as chi
            out.append(f"background not Rayleigh (quartile ratio {row['background_q75_over_q25']}, like chi with "
                       f"{coils:g} coils): the mode reads high")
        if (row.get("background_share_above_4sigma") or 0) > _GHOST_SHARE:
            out.append(f"ghosts/tissue in the air ({100 * row['background_share_above_4sigma']:.0f} % above 4 sigma)")
        return out, []
    spread = row.get("background_sigma_slices_p90_over_p10")
    if spread and spread > _SLICE_SPREAD:
        out.append(f"noise varies across slices (background sigma p90/p10 {spread:.2f})")
    return out, ["residual above background: noise higher inside the head than in the air (coil/g-factor, "
                 "intensity normalisation) or tissue texture"]


def disagreement_reasons(indicators: dict) -> list[str]:
    """Plain-language reasons, from :func:`noise_indicators`' measurements, why the estimators disagree.

    Empty when they agree; why there is no second estimate when there is none. When they disagree and no
    indicator passes its threshold the list starts with :data:`NO_MEASURED_REASON`, followed by what was observed
    (the noise map's median near one estimator) and the unmeasured guess (which way they disagree), so that neither
    is read as a finding.
    """
    row = indicators
    if row.get("ratio") is None:
        return _no_second(row)
    if row["agree"]:
        return []
    varies, observed = _from_the_map(row)
    if row["modality"] == "MR":
        measured, guesses = _mr_reasons(row)
    else:
        white, snr = row.get("whiteness"), row.get("snr") or 0
        measured = [f"correlated noise (reconstruction kernel / resampling): whiteness {white:.2f}"] \
            if white is not None and white < WHITE_NOISE_FLOOR else []
        measured += ["almost no noise"] if snr > HIGH_SNR * 50 else []  # CT's "signal" is its whole range
        guesses = [] if measured or varies else ["texture in the soft tissue"]
    measured += varies
    return measured + observed + guesses if measured else [NO_MEASURED_REASON] + observed + guesses


def explain_noise(volume: Volume, estimate: NoiseEstimate, *, mask: Optional[np.ndarray] = None,
                  noise_map: Optional[NoiseMap] = None) -> NoiseReasons:
    """Measure why ``estimate``'s two estimators disagree on ``volume`` (or why there is no second one).

    Why: a disagreement alone does not tell a user which sigma to trust or whether the scan can be denoised at
    all (a template has no noise; a clipped background has no air); the measured cause does.

    Parameters
    ----------
    volume : Volume
        The volume ``estimate`` was measured on.
    estimate : NoiseEstimate
        Its :func:`~MedSynthLib.noise.estimate_noise_array`.
    mask : ndarray of bool, optional
        The tissue region the estimate used (default: the Otsu foreground, as the estimator's default).
    noise_map : NoiseMap, optional
        Its local noise map (:func:`~MedSynthLib.noise_map.estimate_noise_map`): adds whether the noise varies
        and the map's median as a third opinion.

    Returns
    -------
    NoiseReasons
        ``indicators`` (strict JSON) and ``reasons`` (plain language, the main one first).
    """
    indicators = noise_indicators(volume, estimate, mask=mask, noise_map=noise_map)
    return NoiseReasons(indicators=indicators, reasons=disagreement_reasons(indicators))
