"""The slice profile of a thick-slice acquisition, estimated from the data.

Why: a thick slice is an average over its thickness (a slice profile), not a sample of a thin one. A
method that treats the acquired slices as sharp (interpolation, flow, the bundled model, selfsup
trained on sharp rows) cannot undo that blur; SMORE-style training can, if it knows the profile. The
header rarely says it (NIfTI has no slice thickness), so it is measured: the anatomy is assumed to be
statistically alike in every direction, so the power spectrum along the slice axis should look like
the spectrum of in-plane rows that were blurred by the same profile and sampled at the slice spacing.
The estimate is the Gaussian FWHM whose simulated in-plane spectrum fits the through-plane spectrum
best (least squares on the log spectra, up to a common gain), with or without the in-plane noise floor
added back (noise added after the slice average is not blurred by it; noise of thin data blurred afterwards
is), whichever fits better.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ...volume import THICK_SLICE_RATIO

__all__ = ["THICK_RELATIVE_FWHM", "estimate_slice_profile"]

#: A profile at least this share of the slice spacing counts as thick (sharp slices measure about 0-0.25).
THICK_RELATIVE_FWHM = 0.5
#: Candidate FWHMs, as shares of the slice spacing.
CANDIDATES = np.round(np.arange(0.0, 2.01, 0.125), 3)
_SEGMENT = 32
_MAX_COLUMNS = 3000


def _spectrum(signals: np.ndarray) -> np.ndarray:
    """Mean power spectrum of (M, L) segments: mean removed, Hann window."""
    window = np.hanning(signals.shape[1])
    centred = signals - signals.mean(axis=1, keepdims=True)
    return np.mean(np.abs(np.fft.rfft(centred * window, axis=1)) ** 2, axis=0)


def _segments(lines: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Up to :data:`_MAX_COLUMNS` windows of ``length`` samples from (M, N) lines, at random offsets."""
    m, n = lines.shape
    pick = rng.choice(m, size=min(m, _MAX_COLUMNS), replace=False)
    offsets = rng.integers(0, n - length + 1, size=len(pick))
    return np.stack([lines[p, o:o + length] for p, o in zip(pick, offsets)])


def _foreground_lines(lines: np.ndarray) -> np.ndarray:
    """The lines whose mean is above the 60th percentile of line means (tissue, not air)."""
    means = lines.mean(axis=1)
    return lines[means > np.percentile(means, 60)]


def _resampled_rows(images: np.ndarray, step: float) -> np.ndarray:
    """Rows of (S, H, W) images along H sampled every ``step`` pixels (linear), as (S * W, R) lines."""
    positions = np.arange(0.0, images.shape[1] - 1, step)
    lower = np.floor(positions).astype(int)
    frac = (positions - lower)[None, :, None].astype(np.float32)
    rows = (1 - frac) * images[:, lower] + frac * images[:, np.minimum(lower + 1, images.shape[1] - 1)]
    return np.moveaxis(rows, 1, 2).reshape(-1, len(positions))


def _noise_power(images: np.ndarray, length: int, rng: np.random.Generator) -> float:
    """White-noise power per bin of a Hann-windowed segment of ``length``, from the floor of the in-plane
    spectrum at full resolution (its top eighth of frequencies, where anatomy has little power left)."""
    lines = _foreground_lines(np.moveaxis(images, 1, 2).reshape(-1, images.shape[1]))
    full = min(_SEGMENT, lines.shape[1] - lines.shape[1] % 2)
    spectrum = _spectrum(_segments(lines, full, rng))
    sigma2 = float(np.mean(spectrum[-max(1, len(spectrum) // 8):])) / float(np.sum(np.hanning(full) ** 2))
    return sigma2 * float(np.sum(np.hanning(length) ** 2))


def estimate_slice_profile(stack: np.ndarray, *, slice_spacing: float, pixel_spacings: tuple[float, float],
                           seed: int = 0) -> Optional[dict]:
    """Estimate the slice profile of (N, H, W) acquired slices; None where the data cannot tell.

    Parameters
    ----------
    stack : ndarray (N, H, W)
        The acquired slices, slice axis first.
    slice_spacing : float
        Distance between acquired slices (mm).
    pixel_spacings : (float, float)
        Pixel spacing of H and W (mm). Only in-plane axes finer than the slice spacing / ``THICK_SLICE_RATIO`` are used.

    Returns
    -------
    dict or None
        ``fwhm_mm``, ``relative`` (FWHM / slice spacing), ``thick`` (``relative >= THICK_RELATIVE_FWHM``),
        ``fit`` (residual of the best candidate) and ``source`` = ``"estimated"``.
    """
    from scipy import ndimage

    n = stack.shape[0]
    usable = [axis for axis, d in enumerate(pixel_spacings) if d * THICK_SLICE_RATIO < slice_spacing]
    if n < 12 or not usable:
        return None
    rows = [int(np.ceil((stack.shape[1 + axis] - 1) / (slice_spacing / pixel_spacings[axis]))) for axis in usable]
    length = min([_SEGMENT, n] + rows)
    length -= length % 2
    if length < 12:
        return None
    rng = np.random.default_rng(seed)
    stack = np.asarray(stack, np.float32)
    through = _foreground_lines(stack.reshape(n, -1).T)
    if len(through) < 50:
        return None
    target = np.log(_spectrum(_segments(through, length, rng))[1:] + 1e-12)
    picks = np.linspace(0, n - 1, min(n, 8)).round().astype(int)
    errors = np.zeros(len(CANDIDATES))
    for axis in usable:
        images = stack[picks] if axis == 0 else np.swapaxes(stack[picks], 1, 2)
        pixel = pixel_spacings[axis]
        noise = _noise_power(images, length, rng)
        for c, share in enumerate(CANDIDATES):
            sigma = share * slice_spacing / 2.355 / pixel
            blurred = ndimage.gaussian_filter1d(images, sigma, axis=1, mode="nearest") if sigma > 0.05 else images
            lines = _foreground_lines(_resampled_rows(blurred, slice_spacing / pixel))
            if lines.shape[1] < length or len(lines) < 50:
                return None
            # noise added after the slice average keeps its power; the in-plane copy of it was blurred away
            freq = np.arange(1, length // 2 + 1) / (length * slice_spacing / pixel)  # cycles per pixel
            lost = 1.0 - np.exp(-4.0 * np.pi ** 2 * sigma ** 2 * freq ** 2)
            # the same windows for every candidate (a fresh generator): candidates differ by the blur alone
            blurred_power = _spectrum(_segments(lines, length, np.random.default_rng(seed + 1 + axis)))[1:]
            # two hypotheses: noise added after the slice average (a real acquisition), or averaged with the
            # anatomy (thin data blurred afterwards); the better fit counts
            fits = []
            for floor in (noise * lost, 0.0):
                gap = target - np.log(blurred_power + floor + 1e-12)
                fits.append(float(np.mean((gap - gap.mean()) ** 2)))
            errors[c] += min(fits)
    best = int(np.argmin(errors))
    relative = float(CANDIDATES[best])
    return {"fwhm_mm": round(relative * slice_spacing, 3), "relative": relative,
            "thick": relative >= THICK_RELATIVE_FWHM, "fit": round(errors[best] / len(usable), 5), "source": "estimated"}
