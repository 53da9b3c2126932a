"""Local noise maps: a smooth, spatially varying noise sigma for a volume.

Why: :func:`~MedSynthLib.noise.estimate_noise_array` gives one sigma, but real noise is not stationary. MR magnitude
noise varies across the field of view (parallel-imaging g-factor, coil sensitivities, intensity normalisation after
reconstruction), and CT noise grows with the attenuation along the rays (the centre of a body is noisier than its
rim). A denoiser set from one sigma then over-smooths where the noise is low and leaves noise where it is high.

How (:func:`estimate_noise_map`):

1. **high-pass**: the Haar diagonal detail of every 2x2x2 cube of voxels (the eight voxels with alternating signs,
   over ``sqrt(8)``; on thick slices the 2x2 in-plane detail, over 2). It has unit gain for white noise and is
   exactly 0 on any signal that is constant along one of the axes, so smooth anatomy and edges that lie along an
   axis cancel; only corners and oblique fine texture leak in. The 4-neighbour residual of the global estimator
   passes every edge and read anatomy as noise on real scans (issue 30: 1.5-17x the background sigma).
2. **local robust sigma**: ``1.4826 x`` the median absolute detail in blocks of about ``block_mm`` millimetres
   (a thick-slice scan: one slice thick), inside the tissue (Otsu foreground eroded in-plane; on CT the soft
   tissue, -300..400 HU, as the global estimator), where the signal is. Blocks with too few such voxels carry no
   value. MR: the detail of a Rician magnitude has the variance ``xi(SNR) sigma^2`` (Koay-Basser), below
   ``sigma^2`` where the local signal is low: each block is corrected at its own SNR, iterated.
3. **smooth map**: the log-sigma of the blocks, smoothed by a Gaussian normalised convolution (each block weighted
   by its voxel count; blocks more than :data:`_OUTLIER_LOG` off the smooth surface, e.g. a block of oblique
   texture, are dropped and the surface made again), then interpolated linearly to every voxel. Outside the tissue
   the map is the extrapolation of the nearest blocks. On thick slices the smoothing does not cross slices: each
   slice has its own map (slice-wise noise, e.g. interleaved or normalised slices, is kept).

The map's level is that of the tissue's high-pass; the global estimators (air background, in-tissue residual) can
read otherwise on correlated or textured noise. Callers that only need the map's shape use
:meth:`NoiseMap.relative` (the map over its median in the tissue). :data:`VARIATION_FACTOR` says when the map varies
enough for a denoiser to use it: homogeneous noise gives a nearly flat map (95th over 5th percentile 1.03-1.06 on the
tests' phantoms, 1.08 / 1.10 / 1.22 on the MNI benchmark crop with even Rician noise at 3 / 5 / 9 %), a g-factor map of
1-3x gave 1.42-1.55 (``benchmarks/noise_map.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from .intensity import guess_modality
from .noise import erode_in_plane, otsu_foreground, rician_correction_factor
from .volume import THICK_SLICE_RATIO, Volume

__all__ = ["NoiseMap", "estimate_noise_map", "VARIATION_FACTOR", "NOISE_MAP_DEFAULTS"]

_MAD_TO_SIGMA = 1.4826
#: A map whose 95th over 5th percentile inside the foreground exceeds this is "varying": denoisers then use it.
VARIATION_FACTOR = 1.3
#: ``block_mm``: edge of the blocks the local sigma is measured in; ``smoothing_mm``: the Gaussian that smooths the
#: log-sigma of the blocks; ``min_voxels``: fewest tissue voxels a block needs to carry a value.
NOISE_MAP_DEFAULTS = {"block_mm": 12.0, "smoothing_mm": 6.0, "min_voxels": 64}
#: The variance of a block's log-sigma from sampling alone is this over its voxel count: 1.35 for the MAD of
#: independent Gaussian values (efficiency 0.37), 2.5 times that measured here (homogeneous Rician phantoms, 16-720
#: blocks: the weighted variance over 1.35/n was 1.4-2.5 times its degrees of freedom), because the overlapping
#: 2x2(x2) detail windows correlate neighbouring values.
_LOG_SIGMA_SAMPLING = 3.4
#: A map varies only where its blocks differ more than sampling explains at this significance (chi-square test of
#: heterogeneity): a 12 x 40 x 48 phantom with even noise had 30 blocks spread x1.39 (95th over 5th percentile).
_HETEROGENEITY_P = 1e-3
#: Blocks whose log-sigma is off the smooth surface by more than this (x1.5) are dropped as structure, not noise.
_OUTLIER_LOG = float(np.log(1.5))


@dataclass(frozen=True)
class NoiseMap:
    """A smooth noise sigma per voxel, in the volume's intensity units.

    Attributes
    ----------
    volume : Volume
        The map: float32, the input's grid and geometry (``ijk_to_ras``).
    model : str
        ``"rician"`` (MR magnitude: sigma of each Gaussian channel) or ``"gaussian"`` (CT).
    modality : str
        ``"MR"`` or ``"CT"``.
    summary : dict
        Strict-JSON summary: range, 5th/50th/95th percentiles inside the foreground, their ratio, whether it
        ``varies`` (ratio above :data:`VARIATION_FACTOR`), where it is highest (RAS of the maximum; centre or
        periphery of the foreground; the spread of the slices' medians) and how it was measured.
    """

    volume: Volume
    model: str
    modality: str
    summary: dict = field(default_factory=dict)

    @property
    def sigma(self) -> np.ndarray:
        return self.volume.array

    @property
    def varies(self) -> bool:
        """True when the map's 95th over 5th percentile in the foreground exceeds :data:`VARIATION_FACTOR` and its
        blocks differ by more than sampling explains (``summary["heterogeneity"]``)."""
        return bool(self.summary.get("varies", False))

    def relative(self) -> np.ndarray:
        """The map over its median inside the foreground (float32): the shape of the noise, level 1."""
        median = float(self.summary.get("median") or 0.0)
        if median <= 0:
            return np.ones(self.sigma.shape, np.float32)
        return (self.sigma / np.float32(median)).astype(np.float32)


def _diagonal_detail(array: np.ndarray, planar: bool) -> np.ndarray:
    """Haar diagonal detail of every 2x2x2 cube (2x2 in-plane with ``planar``, axes 1 and 2), unit noise gain.

    Shape: one less than ``array`` along each axis it spans (axis 0 kept when ``planar``)."""
    a = np.asarray(array, np.float32)
    d = a[:, :-1, :-1] - a[:, 1:, :-1] - a[:, :-1, 1:] + a[:, 1:, 1:]
    if planar:
        return d * np.float32(0.5)
    return (d[:-1] - d[1:]) * np.float32(1.0 / np.sqrt(8.0))


def _detail_region(region: np.ndarray, planar: bool) -> np.ndarray:
    """Where every voxel of the detail's cube (or square) lies inside ``region``."""
    r = region[:, :-1, :-1] & region[:, 1:, :-1] & region[:, :-1, 1:] & region[:, 1:, 1:]
    return r if planar else r[:-1] & r[1:]


def _block_medians(values: np.ndarray, valid: np.ndarray, block: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """Per block of ``block`` voxels: the median of ``values`` where ``valid`` (inf where none), and the count."""
    grid = tuple(-(-n // b) for n, b in zip(values.shape, block))
    padded = np.full(tuple(g * b for g, b in zip(grid, block)), np.inf, np.float32)
    padded[tuple(slice(0, n) for n in values.shape)] = np.where(valid, values, np.inf)
    rows = padded.reshape(grid[0], block[0], grid[1], block[1], grid[2], block[2]).transpose(0, 2, 4, 1, 3, 5)
    rows = rows.reshape(*grid, -1)
    counts = np.isfinite(rows).sum(-1)
    rows = np.sort(rows, axis=-1)
    middle = np.take_along_axis(rows, np.maximum((counts - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    return middle, counts


def _rician_corrected(raw: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """Block sigmas corrected for the Rician variance loss at each block's SNR (three fixed-point steps)."""
    sigma = raw.copy()
    for _ in range(3):
        amplitude = np.sqrt(np.maximum(signal**2 - 2.0 * sigma**2, 0.0))
        xi = np.array([rician_correction_factor(a / s) if s > 0 else 1.0
                       for a, s in zip(amplitude.ravel(), sigma.ravel())]).reshape(raw.shape)
        sigma = raw / np.sqrt(xi)
    return sigma


def _smooth_log(log_sigma: np.ndarray, weight: np.ndarray, width: tuple[float, float, float]) -> np.ndarray:
    """Normalised Gaussian convolution of ``log_sigma`` weighted by ``weight``, outliers dropped twice.

    Far from every weighted block (the convolution's support ends) the weighted median fills in."""
    weight = weight.astype(np.float64)
    values = np.where(weight > 0, log_sigma, 0.0)
    smooth = np.zeros_like(values)
    for _ in range(3):
        numerator = ndimage.gaussian_filter(weight * values, width, mode="nearest")
        denominator = ndimage.gaussian_filter(weight, width, mode="nearest")
        kept = weight > 0
        order = np.argsort(values[kept])
        cumulative = np.cumsum(weight[kept][order])
        fill = float(values[kept][order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])
        floor = 1e-3 * float(denominator.max())
        smooth = np.where(denominator > floor, numerator / np.maximum(denominator, floor), fill)
        outliers = kept & (np.abs(values - smooth) > _OUTLIER_LOG)
        if not outliers.any() or outliers.sum() >= 0.5 * kept.sum():
            break
        weight = np.where(outliers, 0.0, weight)
    return smooth


def _upsample(grid: np.ndarray, shape: tuple[int, ...], block: tuple[int, int, int]) -> np.ndarray:
    """Linear interpolation of block-centre values to every voxel (separable; constant beyond the outer centres)."""
    out = grid
    for axis, (n, b) in enumerate(zip(shape, block)):
        count = grid.shape[axis]
        position = np.clip((np.arange(n) + 0.5) / b - 0.5, 0, count - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, count - 1)
        frac = (position - low).reshape([-1 if a == axis else 1 for a in range(3)])
        out = np.take(out, low, axis=axis) * (1 - frac) + np.take(out, high, axis=axis) * frac
    return out


def _region(array: np.ndarray, foreground: np.ndarray, modality: str, slice_axis: int) -> np.ndarray:
    """Where the local noise is measured: the tissue eroded in-plane (CT: soft tissue), else the foreground."""
    region = foreground & (array > -300) & (array < 400) if modality == "CT" else foreground
    eroded = erode_in_plane(region, slice_axis, 1 if modality == "CT" else 2)
    return eroded if eroded.sum() >= 2000 else region


def _where_highest(sigma: np.ndarray, where: np.ndarray, volume: Volume) -> dict:
    """RAS of the map's maximum inside ``where``, and whether the centre or the periphery of ``where`` is noisier
    (median of the map over the deeper half of the region, by distance to its edge, over the shallower half)."""
    kji = np.unravel_index(int(np.argmax(np.where(where, sigma, -np.inf))), sigma.shape)
    ras = volume.ijk_to_ras @ np.array([kji[2], kji[1], kji[0], 1.0])
    step = 2 if where.size > 2_000_000 else 1  # the distance on every other voxel: same halves, a quarter the time
    coarse = where[::step, ::step, ::step]
    depth = ndimage.distance_transform_edt(coarse, sampling=[step * s for s in volume.spacing_kji])
    inner = depth >= np.median(depth[coarse]) if coarse.any() else coarse
    coarse_sigma = sigma[::step, ::step, ::step]
    deep, shallow = coarse_sigma[inner & coarse], coarse_sigma[~inner & coarse]
    ratio = float(np.median(deep) / np.median(shallow)) if deep.size and shallow.size else 1.0
    location = "centre" if ratio > 1.1 else "periphery" if ratio < 1 / 1.1 else "even"
    return {"max_ras": [round(float(v), 2) for v in ras[:3]], "max_kji": [int(v) for v in kji],
            "highest": location, "centre_over_periphery": round(ratio, 3)}


def _heterogeneity(log_sigma: np.ndarray, counts: np.ndarray) -> dict:
    """Whether the blocks' log-sigmas differ by more than sampling explains (Cochran's chi-square, variance
    :data:`_LOG_SIGMA_SAMPLING` / count per block)."""
    from scipy import stats

    if log_sigma.size < 2:
        return {"q_over_df": None, "p": None, "significant": False}
    weight = counts.astype(np.float64) / _LOG_SIGMA_SAMPLING
    mean = float(np.sum(weight * log_sigma) / np.sum(weight))
    q = float(np.sum(weight * (log_sigma - mean) ** 2))
    df = log_sigma.size - 1
    p = float(stats.chi2.sf(q, df))
    return {"q_over_df": round(q / df, 3), "p": p, "significant": bool(p < _HETEROGENEITY_P)}


def _summary(sigma: np.ndarray, foreground: np.ndarray, volume: Volume, slice_axis: int) -> dict:
    """The strict-JSON summary of :class:`NoiseMap` (percentiles inside ``foreground``; the whole volume if empty)."""
    where = foreground if int(foreground.sum()) >= 10 else np.ones(sigma.shape, bool)
    values = sigma[where].astype(np.float64)
    p5, p50, p95 = (float(v) for v in np.percentile(values, [5, 50, 95]))
    ratio = p95 / p5 if p5 > 0 else 1.0
    moved, moved_where = np.moveaxis(sigma, slice_axis, 0), np.moveaxis(where, slice_axis, 0)
    slices = [float(np.median(s[w])) for s, w in zip(moved, moved_where) if w.sum() >= 10]
    spread = max(slices) / min(slices) if slices and min(slices) > 0 else 1.0
    return {"min": round(float(values.min()), 6), "max": round(float(values.max()), 6), "p5": round(p5, 6),
            "median": round(p50, 6), "p95": round(p95, 6), "p95_over_p5": round(ratio, 4),
            "varies": bool(ratio > VARIATION_FACTOR), "variation_factor": VARIATION_FACTOR,
            "slice_axis": int(slice_axis), "slice_medians_max_over_min": round(spread, 4),
            **_where_highest(sigma, where, volume)}


def estimate_noise_map(
    volume: Volume,
    *,
    mask: Optional[np.ndarray] = None,
    modality: Optional[str] = None,
    block_mm: float = NOISE_MAP_DEFAULTS["block_mm"],
    smoothing_mm: float = NOISE_MAP_DEFAULTS["smoothing_mm"],
    min_voxels: int = NOISE_MAP_DEFAULTS["min_voxels"],
) -> NoiseMap:
    """A smooth noise sigma per voxel of ``volume`` (see the module notes for how and why).

    Parameters
    ----------
    volume : Volume
    mask : ndarray of bool, optional
        The tissue region (same shape); default: the Otsu foreground. The map is measured inside it and summarised
        there; elsewhere it is extrapolated.
    modality : {"MR", "CT"}, optional
        Default: :func:`~MedSynthLib.intensity.guess_modality`. MR: Rician-corrected per block; CT: Gaussian in soft
        tissue.
    block_mm, smoothing_mm : float
        Edge of the blocks the local sigma is measured in, and the width (Gaussian sigma) of the smoothing of their
        log-sigma, in millimetres. Smaller follows faster variation and is noisier (a 12 mm block of 1 mm voxels
        holds about 1700 voxels: a 3 % standard error).
    min_voxels : int
        Fewest tissue voxels a block needs to carry a value.

    Returns
    -------
    NoiseMap
        A flat map (``summary["flat_because"]``) when no block had enough tissue.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = np.full((32, 64, 64), 100.0, np.float32)
    >>> ramp = np.linspace(2, 6, 64, dtype=np.float32)[None, None, :]
    >>> noisy = np.hypot(clean + rng.normal(0, 1, clean.shape) * ramp, rng.normal(0, 1, clean.shape) * ramp)
    >>> found = estimate_noise_map(Volume(noisy.astype(np.float32), np.eye(4)), mask=np.ones(clean.shape, bool))
    >>> bool(found.varies), 1.5 < found.summary["p5"] < 3.5, 4.5 < found.summary["p95"] < 6.5
    (True, True, True)
    """
    array = np.asarray(volume.array, np.float32)
    modality = modality or guess_modality(volume)
    spacing = volume.spacing_kji
    planar = max(spacing) > THICK_SLICE_RATIO * min(spacing)
    axis = int(np.argmax(spacing)) if planar else 0
    foreground = otsu_foreground(array) if mask is None else np.asarray(mask, bool)
    moved = np.moveaxis(array, axis, 0)
    region = np.moveaxis(_region(array, foreground, modality, axis), axis, 0)
    moved_spacing = (spacing[axis], *(s for a, s in enumerate(spacing) if a != axis))
    block = tuple(1 if planar and a == 0 else max(2, int(round(block_mm / s))) for a, s in enumerate(moved_spacing))
    detail, valid = np.abs(_diagonal_detail(moved, planar)), _detail_region(region, planar)
    medians, counts = _block_medians(detail, valid, block)
    raw = _MAD_TO_SIGMA * medians
    has = (counts >= min_voxels) & np.isfinite(raw) & (raw > 0)
    details = {"block_voxels": list(block), "block_mm": float(block_mm), "smoothing_mm": float(smoothing_mm),
               "planar": bool(planar), "blocks_measured": int(has.sum()), "blocks": int(has.size),
               "high_pass": "2x2 in-plane diagonal detail" if planar else "2x2x2 diagonal (Haar HHH) detail"}
    model = "gaussian" if modality == "CT" else "rician"
    if not has.any():
        sigma_full = np.zeros(array.shape, np.float32)
        summary = {**_summary(sigma_full, foreground, volume, axis), "flat_because": "no block held enough tissue"}
        return NoiseMap(Volume(sigma_full, volume.ijk_to_ras.copy()), model, modality, {**summary, **details})
    block_sigma = raw.astype(np.float64)
    if model == "rician":
        signal, _ = _block_medians(moved[tuple(slice(0, n) for n in detail.shape)], valid, block)
        block_sigma[has] = _rician_corrected(raw[has].astype(np.float64), signal[has].astype(np.float64))
    width = tuple(0.0 if planar and a == 0 else smoothing_mm / (b * s)
                  for a, (b, s) in enumerate(zip(block, moved_spacing)))
    log_grid = _smooth_log(np.log(np.where(has, block_sigma, 1.0)), np.where(has, counts, 0), width)
    sigma_moved = np.exp(_upsample(log_grid, moved.shape, block)).astype(np.float32)
    sigma_full = np.ascontiguousarray(np.moveaxis(sigma_moved, 0, axis))
    summary = _summary(sigma_full, foreground, volume, axis)
    spread = _heterogeneity(np.log(block_sigma[has]), counts[has])
    summary.update(heterogeneity=spread, varies=bool(summary["varies"] and spread["significant"]))
    return NoiseMap(Volume(sigma_full, volume.ijk_to_ras.copy()), model, modality, {**summary, **details})
