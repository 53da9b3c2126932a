"""Noise estimation: Rician-aware for MR magnitude images, Gaussian for CT.

Two estimators, because neither works everywhere:

* **background** (MR): magnitude images have Rayleigh-distributed noise where
  there is no signal (air around the head). Its mode is ``sigma``. What lies
  outside the Otsu foreground is not all air: on a whole-head scan the scalp,
  skull and neck fall there too (the demo sample: the plain median of that
  region gave sigma 138 where the air's histogram peaks at 27). So the
  estimate starts at the histogram's mode and is refined by the median of the
  values below twice the current estimate (a Rayleigh variable truncated at
  ``2 sigma`` has its median at ``1.0645 sigma``), which only the air's peak
  decides. Exact zeros (padding, masked-out regions) are not noise and are
  left out; when half or more of the air is exactly 0 the background was clipped
  or thresholded and is not used at all (the residual estimate stands alone).
* **residual** (CT, or MR without background): the difference between each
  voxel and the mean of its four in-plane neighbours is mostly noise inside
  smooth tissue; its median absolute deviation, divided by the Gaussian
  factor ``sqrt(1 + 1/4)``, gives sigma. For MR the high-pass of a Rician
  variable has less spread than sigma where the signal-to-noise ratio is low;
  the Koay-Basser correction factor ``xi(SNR)`` undoes that. The region is the
  Otsu tissue eroded in-plane (the stencil is in-plane); where that leaves too
  few voxels (heavy noise fragments the mask; a crop inside the head with thick
  slices), the mask of a smoothed copy, then wider regions
  (:func:`_residual_region`), never an empty one: that gave sigma 0.

scikit-image's ``estimate_sigma`` (wavelet MAD over the whole image)
underestimates Rician noise by about a quarter on the MNI template because the
background's Rayleigh spread is smaller than sigma; hence the dedicated paths.

**Cross-check.** Every estimate carries a second, independent one in
``details["cross_check"]``: for MR the in-tissue residual against the
background, for CT a diagonal high-pass (``(a - b - c + d) / 2`` over each
2x2 in-plane block, unit gain for white noise) against the 4-neighbour
residual. They measure the same sigma by different means; when they differ by
more than :data:`AGREEMENT_FACTOR` one of them is measuring something else,
and both contaminations push upward (tissue in the "background", texture in
the residual), so callers that must not over-smooth (``denoise(method="auto")``)
take the smaller. Why 1.25: on noise added to the ROBEX whole head (3-9 %),
whose dark tissue outside the Otsu mask looks like air at that noise level,
the background read 1.4-1.5x the true sigma while the residual stayed within
12 %; where there is real air (the demo sample, MNI) the two agree within 6 %.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from scipy import ndimage, special

from .intensity import guess_modality
from .noise_coils import estimate_coils_in_blocks
from .volume import Volume

__all__ = ["AGREEMENT_FACTOR", "NoiseEstimate", "estimate_noise_array", "otsu_foreground",
           "rician_correction_factor", "rician_debias", "magnitude_debias", "magnitude_rebias", "cross_check", "MIN_BACKGROUND_VOXELS",
           "MAX_BACKGROUND_ZEROS", "residual_sigma", "diagonal_sigma", "erode_in_plane"]

log = logging.getLogger(__name__)

_RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))
_MAD_TO_SIGMA = 1.4826
#: Fewest non-zero air voxels the background estimate is made from.
MIN_BACKGROUND_VOXELS = 2000
#: Median of a Rayleigh variable truncated at twice its sigma, in units of sigma: sqrt(-2 ln(1 - (1 - e^-2) / 2)).
_TRUNCATED_RAYLEIGH_MEDIAN = float(np.sqrt(-2.0 * np.log(1.0 - (1.0 - np.exp(-2.0)) / 2.0)))
#: Two noise estimators that differ by more than this factor disagree (see the module notes).
AGREEMENT_FACTOR = 1.25


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise level of a volume, in its own intensity units.

    Attributes
    ----------
    sigma : float
        Standard deviation of the underlying Gaussian noise (for MR: of each
        of the real and imaginary channels before the magnitude was taken).
    model : str
        ``"rician"`` (MR magnitude) or ``"gaussian"`` (CT, or MR when forced).
    method : str
        ``"background"`` or ``"residual"``: where the estimate came from.
    modality : str
        ``"MR"`` or ``"CT"``.
    signal : float
        Median intensity of the foreground, to put ``sigma`` in proportion.
    details : dict
        Both estimators' values and the voxel counts they used.
    """

    sigma: float
    model: str
    method: str
    modality: str
    signal: float
    details: dict = field(default_factory=dict)
    #: MR magnitude: the effective receive-coil count (1: Rician; N > 1: non-central chi with 2N degrees of
    #: freedom, a sum-of-squares reconstruction); ``details["coils_source"]`` says whether estimated or given.
    coils: float = 1.0

    @property
    def noise_model(self) -> str:
        """``"gaussian"``, ``"rician"`` or ``"noncentral-chi, N coils (estimated from the air|given)"``."""
        if self.model != "rician":
            return self.model
        if self.coils <= 1:
            return "rician"
        return f"noncentral-chi, {self.coils:g} coils ({self.details.get('coils_source', 'given')})"

    @property
    def agree(self) -> bool:
        """False when the cross-check estimator differs from ``sigma`` by more than :data:`AGREEMENT_FACTOR`."""
        return bool(self.details.get("cross_check", {}).get("agree", True))

    @property
    def conservative_sigma(self) -> float:
        """The smaller of the two estimates (less smoothing) when they disagree, else ``sigma``."""
        check = self.details.get("cross_check", {})
        if check.get("agree", True):
            return float(self.sigma)
        values = [v for v in (check.get("primary_sigma"), check.get("second_sigma")) if v and v > 0]
        return float(min(values)) if values else float(self.sigma)

    @property
    def snr(self) -> float:
        """Foreground median over sigma."""
        return float(self.signal / self.sigma) if self.sigma > 0 else float("inf")

    def as_dict(self) -> dict:
        return {
            "sigma": round(float(self.sigma), 6),
            "model": self.model,
            "method": self.method,
            "modality": self.modality,
            "signal": round(float(self.signal), 6),
            "snr": round(self.snr, 3) if np.isfinite(self.snr) else None,
            "coils": float(self.coils), "noise_model": self.noise_model,
            "details": self.details,
        }


def otsu_foreground(array: np.ndarray, *, smooth: float = 0.0) -> np.ndarray:
    """Otsu foreground (bool), largest components kept (holes are not filled).

    Used as the default tissue mask for N4 and the denoisers and to separate MR background from head.
    ``smooth`` (voxels): the threshold, taken from the values, is applied to a copy smoothed by a Gaussian of
    that width. Why: at 9 % noise the raw mask is sprinkled over the air and holed through the tissue, and
    the eroded tissue the noise estimate is measured in shrank to a few dozen voxels (ROBEX, brain1 crops);
    at low noise the smoothed mask is larger (it closes sulci) and holds more structure, so the noise
    estimate uses it only when the raw one is too small (:func:`_residual_region`).
    """
    from skimage.filters import threshold_otsu

    values = np.asarray(array, dtype=np.float32)
    sample = values.ravel()[:: max(1, values.size // 1_000_000)]
    threshold = float(threshold_otsu(sample)) if np.ptp(sample) > 0 else float(sample[0])
    if smooth > 0 and min(values.shape) >= 3:
        values = ndimage.gaussian_filter(values, float(smooth), mode="nearest")
    mask = values > threshold
    mask = ndimage.binary_opening(mask, iterations=1) if mask.sum() > 1000 else mask
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        keep = np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1
        mask = np.isin(labels, keep)
    return mask


#: The noise residual is measured in at least this many voxels where it can (the MAD's standard error is then
#: about 3 %), and never in fewer than :data:`_FEWEST_RESIDUAL_VOXELS` (7 %); see :func:`_residual_region`.
_MIN_RESIDUAL_VOXELS = 2000
_FEWEST_RESIDUAL_VOXELS = 500


def erode_in_plane(region: np.ndarray, axis: int, iterations: int) -> np.ndarray:
    """``region`` eroded across ``axis`` only: the high-pass of :func:`residual_sigma` is in-plane, so only
    in-plane edges bias it (a 3D erosion emptied the tissue of a 6.5 mm-slice scan)."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_erosion(region, structure=np.moveaxis(structure, 0, axis), iterations=iterations)


def _residual_region(region: np.ndarray, axis: int, iterations: int, *,
                     smoothed: Optional[Callable[[], np.ndarray]] = None) -> tuple[np.ndarray, str]:
    """Where the noise residual is measured, and which region that is.

    In order of preference: ``region`` eroded in-plane; ``smoothed()`` (the mask of a smoothed copy, which noise
    does not fragment; made only when the first falls short) eroded in-plane; ``region`` itself. The first with
    :data:`_MIN_RESIDUAL_VOXELS`, else the first with :data:`_FEWEST_RESIDUAL_VOXELS`, else the whole volume (the
    median absolute residual is robust to the minority of edges there). The raw mask comes first: at low noise
    the smoothed one closes sulci and holds more structure (the residual of the demo sample rose from 29 to 34
    in it). Before, a region that erosion had emptied gave sigma 0, and the volume came back unchanged (brain1
    crops, ROBEX at 9 %).
    """
    eroded = erode_in_plane(region, axis, iterations)
    if eroded.sum() >= _MIN_RESIDUAL_VOXELS:
        return eroded, "tissue, eroded in-plane"
    candidates = [(eroded, "tissue, eroded in-plane")]
    if smoothed is not None:
        candidates.append((erode_in_plane(smoothed(), axis, iterations),
                           "tissue of the smoothed volume, eroded in-plane (too little in the raw mask)"))
    candidates.append((region, "tissue, not eroded (too little left after erosion)"))
    for least in (_MIN_RESIDUAL_VOXELS, _FEWEST_RESIDUAL_VOXELS):
        for where, name in candidates:
            if where.sum() >= least:
                return where, name
    return np.ones(region.shape, bool), "whole volume (too little tissue)"


def magnitude_debias(values: np.ndarray, sigma: float, coils: float = 1.0) -> np.ndarray:
    """``sqrt(max(m^2 - (2N - 1) sigma^2, 0))``: a smoothed magnitude ``m`` back to the signal ``A``. The one
    magnitude correction every denoiser applies (Gudbjartsson & Patz 1995, high-SNR form): a smoother averages
    the magnitude, whose mean sits above the signal, so without it dark tissue stays brighter than it is.

    ``coils`` N: a sum-of-squares magnitude of N coils is non-central chi with 2N degrees of freedom, whose mean
    is ``sqrt(A^2 + (2N - 1) sigma^2)`` to second order in ``sigma / A`` (its second moment ``A^2 + 2N sigma^2``
    less the variance ``sigma^2`` of the channel the signal lies in); N = 1 is Rician, ``m^2 - sigma^2``, bit for
    bit. Returns float32.
    """
    values = np.asarray(values, dtype=np.float32)
    return np.sqrt(np.maximum(values * values - _magnitude_bias(sigma, coils), 0)).astype(np.float32, copy=False)


def magnitude_rebias(values: np.ndarray, sigma: float, coils: float = 1.0) -> np.ndarray:
    """``sqrt(A^2 + (2N - 1) sigma^2)``: :func:`magnitude_debias` inverted where it did not clip, a debiased signal
    ``A`` back to the smoothed magnitude it came from. Why: what a smoother removed is measured in the magnitude's
    own domain; the bias it corrected afterwards is not noise. Returns float32."""
    values = np.asarray(values, dtype=np.float32)
    return np.sqrt(values * values + _magnitude_bias(sigma, coils)).astype(np.float32, copy=False)


def _magnitude_bias(sigma: float, coils: float) -> np.float32:
    """``(2N - 1) sigma^2`` in float32: what a smoothed magnitude's square sits above the signal's."""
    return np.float32(sigma) ** 2 * np.float32(2.0 * float(coils) - 1.0)  # x 1.0 when N = 1: exact


def rician_debias(values: np.ndarray, sigma: float) -> np.ndarray:
    """:func:`magnitude_debias` with one coil: ``sqrt(max(m^2 - sigma^2, 0))``. Returns float32."""
    return magnitude_debias(values, sigma, 1.0)


def rician_correction_factor(snr: float) -> float:
    """Koay-Basser ``xi(theta)``: variance of a Rician variable over sigma^2 at SNR ``theta``.

    ``xi`` goes from ``2 - pi/2`` (about 0.43, pure background) to 1 (high SNR).
    """
    theta = float(max(snr, 0.0))
    if theta > 40:
        return 1.0
    z = theta**2 / 4.0
    bessel = (2 + theta**2) * special.i0e(z) + theta**2 * special.i1e(z)  # exp(-z) scaled
    # exp(-theta^2/2) * I(z)^2 == (exp(-z) I(z))^2 since theta^2/2 == 2 z
    value = 2 + theta**2 - (np.pi / 8) * bessel**2
    return float(np.clip(value, 2 - np.pi / 2, 1.0))


def residual_sigma(array: np.ndarray, region: np.ndarray, axis: int) -> tuple[float, int]:
    """Gaussian-model sigma from the MAD of an in-plane 4-neighbour high-pass inside ``region``."""
    data = np.moveaxis(np.asarray(array, dtype=np.float32), axis, 0)
    region = np.moveaxis(region, axis, 0)
    centre = data[:, 1:-1, 1:-1]
    neighbours = 0.25 * (data[:, :-2, 1:-1] + data[:, 2:, 1:-1] + data[:, 1:-1, :-2] + data[:, 1:-1, 2:])
    residual = (centre - neighbours)[region[:, 1:-1, 1:-1]]
    if residual.size < 50:
        return 0.0, int(residual.size)
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return _MAD_TO_SIGMA * mad / float(np.sqrt(1.25)), int(residual.size)


#: Air around a magnitude image is Rayleigh: exactly 0 only where rounding takes it there (under 40 % of the voxels
#: even at sigma 0.5 grey levels). Half or more exact zeros is a clipped or thresholded background (a Gaussian
#: clipped at 0, a processed or masked image): its positive tail is not Rayleigh and says nothing of sigma.
MAX_BACKGROUND_ZEROS = 0.45


@functools.lru_cache(maxsize=64)
def _chi_constants(coils: float) -> tuple[float, float, float]:
    """(mode, median, median below twice the mode) of a unit central chi with 2N degrees of freedom; one coil:
    Rayleigh's (1, :data:`_RAYLEIGH_MEDIAN`, :data:`_TRUNCATED_RAYLEIGH_MEDIAN`)."""
    if coils <= 1:
        return 1.0, _RAYLEIGH_MEDIAN, _TRUNCATED_RAYLEIGH_MEDIAN
    from scipy import stats

    k = 2.0 * float(coils)
    mode = float(np.sqrt(k - 1.0))
    below = float(stats.chi.cdf(2.0 * mode, k))
    return mode, float(stats.chi.median(k)), float(stats.chi.ppf(below / 2.0, k))


def _background_sigma(values: np.ndarray, coils: float = 1.0) -> tuple[float, float]:
    """(robust sigma, plain-median sigma) of background magnitudes of ``coils`` coils: the air's peak, not the
    tissue's tail.

    The mode of a smoothed histogram over the unit distribution's mode, then the median of the values below twice
    the mode over that truncated distribution's median, iterated. One coil: Rayleigh. N coils (a sum-of-squares
    magnitude: central chi with 2N degrees of freedom in the air): chi's own constants; Rayleigh's read sigma
    ``sqrt(2N - 1)`` times too high there (x3.9 at 8 coils).
    """
    mode, median, truncated = _chi_constants(float(coils))
    values = np.abs(np.asarray(values, dtype=np.float64))
    median_sigma = float(np.median(values)) / median
    top = float(np.percentile(values, 99.0))
    if top <= 0:
        return median_sigma, median_sigma
    edges = np.linspace(0.0, top, 401)
    counts = ndimage.gaussian_filter1d(np.histogram(values, edges)[0].astype(np.float64), 3.0)
    centres = 0.5 * (edges[1:] + edges[:-1])
    sigma = float(centres[1 + int(np.argmax(counts[1:]))]) / mode
    for _ in range(30):
        below = values[values < 2.0 * mode * sigma]
        if below.size < 100:
            break
        updated = float(np.median(below)) / truncated
        converged = abs(updated - sigma) <= 1e-4 * sigma
        sigma = updated
        if converged:
            break
    return sigma, median_sigma


def diagonal_sigma(array: np.ndarray, region: np.ndarray, axis: int) -> float:
    """Gaussian sigma from the MAD of the 2x2 diagonal high-pass ``(a - b - c + d) / 2`` inside ``region``."""
    data = np.moveaxis(np.asarray(array, dtype=np.float32), axis, 0)
    region = np.moveaxis(region, axis, 0)
    high = 0.5 * (data[:, :-1, :-1] - data[:, 1:, :-1] - data[:, :-1, 1:] + data[:, 1:, 1:])
    inside = region[:, :-1, :-1] & region[:, 1:, 1:]
    values = high[inside]
    if values.size < 50:
        return 0.0
    return _MAD_TO_SIGMA * float(np.median(np.abs(values - np.median(values))))


def cross_check(primary: float, second: float, *, primary_name: str, second_name: str) -> dict:
    """Both estimates, their ratio and whether they agree within :data:`AGREEMENT_FACTOR`."""
    ratio = max(primary, second) / min(primary, second) if min(primary, second) > 0 else None
    return {"primary": primary_name, "primary_sigma": round(float(primary), 6), "second": second_name,
            "second_sigma": round(float(second), 6), "ratio": None if ratio is None else round(float(ratio), 3),
            "factor": AGREEMENT_FACTOR, "agree": bool(ratio is None or ratio <= AGREEMENT_FACTOR)}


def estimate_noise_array(
    volume: Volume,
    *,
    mask: Optional[np.ndarray] = None,
    modality: Optional[str] = None,
    coils: Optional[float] = 1.0,
) -> NoiseEstimate:
    """Estimate the noise of ``volume`` (see the module notes); ``mask`` limits the tissue region.

    ``coils`` (MR): the magnitude's effective receive-coil count; 1 Rician (the default), N > 1 non-central chi
    with 2N degrees of freedom (the background sigma from chi's mode), None: estimated from the air's quartile
    ratio (:func:`~MedSynthLib.noise_coils.estimate_coils_in_blocks`; one coil where there is no usable air).
    """
    array = np.asarray(volume.array, dtype=np.float32)
    modality = modality or guess_modality(volume)
    spacing = volume.spacing_kji
    slice_axis = int(np.argmax(spacing)) if max(spacing) > 1.2 * min(spacing) else 0
    foreground = otsu_foreground(array) if mask is None else np.asarray(mask, dtype=bool)
    details: dict = {"foreground_voxels": int(foreground.sum())}
    signal = float(np.median(array[foreground])) if foreground.any() else float(np.median(array))

    if modality == "CT":
        # soft tissue only: air, lung, bone edges and the scanner table are not smooth
        soft = (array > -300) & (array < 400)
        smoothed = (lambda: otsu_foreground(array, smooth=1.0) & soft) if mask is None else None
        region, where = _residual_region(foreground & soft, slice_axis, 1, smoothed=smoothed)
        sigma, used = residual_sigma(array, region, slice_axis)
        details["residual_region"] = where
        diagonal = diagonal_sigma(array, region, slice_axis)
        details.update(residual_sigma=sigma, residual_voxels=used, diagonal_sigma=diagonal)
        if diagonal > 0 and sigma > 0:
            details["cross_check"] = cross_check(sigma, diagonal, primary_name="residual", second_name="diagonal")
        soft = array[region] if region.any() else array[foreground]
        signal = float(np.median(soft)) if soft.size else signal
        # a CT "signal" of soft tissue near 0 HU is meaningless as an SNR: use the soft-tissue/air range
        signal = float(np.percentile(array, 99.5) - np.percentile(array, 0.5))
        return NoiseEstimate(sigma=max(sigma, 0.0), model="gaussian", method="residual", modality="CT",
                             signal=signal, details=details)

    # MR magnitude: background first
    near_head = ndimage.binary_dilation(foreground, iterations=3)
    outside = ~near_head
    background = outside & (array != 0)
    background_sigma = 0.0
    zeros = 1.0 - float(background.sum()) / max(int(outside.sum()), 1)
    details["background_zero_fraction"] = round(zeros, 4)
    usable = int(background.sum()) >= MIN_BACKGROUND_VOXELS and zeros <= MAX_BACKGROUND_ZEROS
    if coils is None:
        coils, ratio, blocks = estimate_coils_in_blocks(array, background) if usable else (1.0, None, 0)
        details.update(coils_source="estimated from the air" if usable else "no usable air: Rician",
                       background_q75_over_q25=None if ratio is None else round(ratio, 4), coil_blocks=blocks)
    elif coils != 1:
        details["coils_source"] = "given"
    coils = float(coils)
    if coils < 1:
        raise ValueError(f"coils must be at least 1, got {coils:g}")
    if usable:
        background_sigma, median_sigma = _background_sigma(array[background], coils)
        details["background_median_sigma"] = median_sigma
    details.update(background_sigma=background_sigma, background_voxels=int(background.sum()))

    smoothed = (lambda: otsu_foreground(array, smooth=1.0)) if mask is None else None
    tissue, where = _residual_region(foreground, slice_axis, 2, smoothed=smoothed)
    raw_sigma, used = residual_sigma(array, tissue, slice_axis)
    details["residual_region"] = where
    if raw_sigma > 0:
        snr = signal / raw_sigma
        tissue_sigma = raw_sigma / float(np.sqrt(rician_correction_factor(snr)))
    else:
        tissue_sigma = 0.0
    details.update(residual_sigma=tissue_sigma, residual_voxels=used)
    if details.get("coils_source") == "estimated from the air" and coils > 1:
        # the air's shape alone also reads tissue (a crop inside the head) or smoothed air as many coils: chi is
        # taken only where its sigma meets the independent in-tissue residual's (Rayleigh's reads x sqrt(2N - 1))
        ratio = background_sigma / tissue_sigma if tissue_sigma > 0 else 0.0
        if not (1 / AGREEMENT_FACTOR <= ratio <= AGREEMENT_FACTOR and background_sigma < 0.5 * signal):
            details.update(coils_source=f"Rician: the air read like {coils:g} coils, but chi's sigma "
                                        f"{background_sigma:.4g} does not meet the residual's {tissue_sigma:.4g}",
                           coils_estimated=coils)
            coils = 1.0
            if usable:
                background_sigma, median_sigma = _background_sigma(array[background], 1.0)
                details.update(background_median_sigma=median_sigma, background_sigma=background_sigma)

    # background noise of a scan with no air in view, or with a zero-filled/clipped background, is useless
    if background_sigma > 0 and background_sigma < 0.5 * signal:
        if tissue_sigma > 0:
            details["cross_check"] = cross_check(background_sigma, tissue_sigma, primary_name="background",
                                                  second_name="residual")
        return NoiseEstimate(sigma=background_sigma, model="rician", method="background", modality="MR",
                             signal=signal, details=details, coils=coils)
    return NoiseEstimate(sigma=tissue_sigma, model="rician", method="residual", modality="MR",
                         signal=signal, details=details, coils=coils)
