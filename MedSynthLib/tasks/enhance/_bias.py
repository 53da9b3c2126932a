"""N4 bias-field correction through SimpleITK: fitted on a shrunk image, applied at full resolution.

N4 models the image as ``true * field`` with a smooth B-spline ``log(field)``.
Fitting on an image shrunk by ``shrink`` along each axis (fewer along thin
axes) is where the speed comes from; ``GetLogBiasFieldAsImage(full_image)``
then evaluates the fitted B-spline on the full grid, so the correction has no
blockiness from the shrink. The field is rescaled to a geometric mean of 1
inside the mask, so the corrected image keeps the input's intensity level.

:func:`cross_fitted_field` fits N4 on two interleaved halves of the mask, so that every voxel can be corrected by a
field fitted without it; :func:`tissue_cv` is the judge of that held-out correction: the tissue coefficient of
variation before and after, in the same mask, and how much that difference would move by chance (a
delete-a-block jackknife). ``correct_bias`` applies the field only where it lowers the tissue CV by more than that.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ...budget import TimeBudget
from ...errors import InputError
from ...progress import CancelToken, ProgressCallback, check_cancel, report, subrange

__all__ = ["n4_field", "cross_fitted_field", "fold_mask", "FOLD_BLOCK_MM", "tissue_cv", "TissueCV", "TISSUE_CV_MEASURE", "SIGNIFICANCE"]

log = logging.getLogger(__name__)


def _shrink_factors(shape_kji: Sequence[int], shrink: int) -> list[int]:
    """Per-axis shrink in SimpleITK (x, y, z) order; an axis keeps at least 8 voxels."""
    factors = [int(max(1, min(shrink, n // 8))) for n in shape_kji]
    return factors[::-1]


def n4_field(
    array: np.ndarray,
    mask: np.ndarray,
    *,
    spacing_kji: Sequence[float],
    shrink: int = 6,
    iterations: Sequence[int] = (40, 40, 40),
    convergence: float = 1e-7,
    control_points: int = 4,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    budget: Optional[TimeBudget] = None,
    budget_share: float = 1.0,
) -> tuple[np.ndarray, dict]:
    """Fit N4 and return the multiplicative field on the full grid (float32) and run details.

    ``array`` must be positive inside ``mask`` (the caller shifts it if needed). With ``budget``, the fit's
    duration is projected from a short measured run first (:data:`PROBE_ITERATIONS` iterations on the same shrunk
    image, each later iteration taken as long as the slowest of them: ITK's N4 does not stop when asked, so it is
    measured before, not interrupted); when the fit would not fit what is left of the budget, it runs on an image
    shrunk twice as much (8 times fewer voxels, the projection scaled by the voxel count), up to
    :data:`MAX_BUDGET_SHRINK`, and the budget's report says so (``details["shrink_requested"]`` keeps what was
    asked). ``budget_share``: the fraction of what is left of the budget this fit may take (a first fit of two: 0.5).
    """
    import SimpleITK as sitk

    requested = int(shrink)
    if budget is not None and budget.seconds is not None:
        try:
            per_iteration, voxels = _seconds_per_iteration(array, mask, spacing_kji=spacing_kji, shrink=shrink,
                                                           control_points=control_points)
        except RuntimeError:  # the fit itself says what is wrong (a mask too small at this shrink)
            per_iteration, voxels = 0.0, 1
        needed = per_iteration * sum(int(i) for i in iterations)
        while needed > budget_share * budget.remaining() and shrink < MAX_BUDGET_SHRINK:
            coarser = min(MAX_BUDGET_SHRINK, 2 * shrink)
            fewer = _shrunk_voxels(np.shape(array), coarser) / voxels
            budget.cut(f"N4: the fit at shrink {shrink} would take about {needed:.0f} s with "
                       f"{budget_share * budget.remaining():.0f} s of the budget left for it; fitted at shrink "
                       f"{coarser} instead")
            shrink, needed = coarser, needed * fewer
    field, details = _n4_fit(sitk, array, mask, spacing_kji=spacing_kji, shrink=shrink, iterations=iterations,
                             convergence=convergence, control_points=control_points, progress=progress,
                             cancel=cancel)
    return field, {**details, "shrink_requested": requested}


#: The coarsest shrink the time budget moves N4 to (an axis keeps 8 voxels whatever the shrink).
MAX_BUDGET_SHRINK = 16
#: Iterations of the short run that measures N4's pace before a budgeted fit.
PROBE_ITERATIONS = 4


def _shrunk_voxels(shape: Sequence[int], shrink: int) -> int:
    return int(np.prod([-(-n // f) for n, f in zip(shape, _shrink_factors(shape, shrink)[::-1])]))


def _seconds_per_iteration(array: np.ndarray, mask: np.ndarray, *, spacing_kji: Sequence[float], shrink: int,
                           control_points: int) -> tuple[float, int]:
    """(the slowest iteration after the first of a short N4 run at ``shrink``, the shrunk image's voxels)."""
    import SimpleITK as sitk

    small, small_mask, _ = _shrunk(sitk, array, mask, spacing_kji, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([PROBE_ITERATIONS])
    corrector.SetConvergenceThreshold(0.0)
    corrector.SetNumberOfControlPoints([int(control_points)] * 3)
    stamps: list = []
    corrector.AddCommand(sitk.sitkIterationEvent, lambda: stamps.append(time.perf_counter()))
    started = time.perf_counter()
    corrector.Execute(small, small_mask)
    gaps = np.diff(stamps) if len(stamps) > 1 else [time.perf_counter() - started]
    return float(np.max(gaps)), int(np.prod(small.GetSize()))


def _shrunk(sitk, array, mask, spacing_kji, shrink):
    data = np.asarray(array, dtype=np.float32)
    image = sitk.GetImageFromArray(data)
    image.SetSpacing(tuple(float(s) for s in spacing_kji[::-1]))
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    factors = _shrink_factors(data.shape, shrink)
    return sitk.Shrink(image, factors), sitk.Shrink(mask_image, factors), image


def _n4_fit(sitk, array: np.ndarray, mask: np.ndarray, *, spacing_kji: Sequence[float], shrink: int,
            iterations: Sequence[int], convergence: float, control_points: int,
            progress: Optional[ProgressCallback], cancel: Optional[CancelToken]) -> tuple[np.ndarray, dict]:
    """One N4 fit at ``shrink``: the field on the full grid and the run's details."""
    check_cancel(cancel)
    factors = _shrink_factors(np.shape(array), shrink)
    small, small_mask, image = _shrunk(sitk, array, mask, spacing_kji, shrink)
    if int(sitk.GetArrayViewFromImage(small_mask).sum()) < 20:
        raise InputError("the mask is too small for bias-field correction at this shrink factor; use a larger mask or --shrink 1")

    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.SetConvergenceThreshold(float(convergence))
    corrector.SetNumberOfControlPoints([int(control_points)] * 3)
    levels = len(iterations)
    state = {"iteration": 0}

    def on_iteration() -> None:
        state["iteration"] += 1
        level = corrector.GetCurrentLevel()
        report(progress, 0.9 * (level + min(1.0, corrector.GetElapsedIterations() / max(1, iterations[min(level, levels - 1)]))) / levels,
               f"N4 level {level + 1}/{levels}")
        if cancel is not None and cancel.cancelled:
            corrector.Abort()

    corrector.AddCommand(sitk.sitkIterationEvent, on_iteration)
    try:
        corrector.Execute(small, small_mask)
    except RuntimeError:
        check_cancel(cancel)
        raise
    check_cancel(cancel)
    report(progress, 0.92, "N4: evaluating the field at full resolution")
    # float32 throughout: the log field is small (|log| < ~2), so float32 keeps ~1e-7 relative precision
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image)).astype(np.float32, copy=False)
    centre = np.float32(np.mean(log_field[mask], dtype=np.float64))  # geometric mean 1 inside the mask
    field = np.exp(log_field - centre, dtype=np.float32)
    details = {
        "shrink": int(shrink),
        "shrink_factors_xyz": factors,
        "iterations": [int(i) for i in iterations],
        "iterations_run": int(state["iteration"]),
        "control_points": int(control_points),
        "field_range": [round(float(field[mask].min()), 4), round(float(field[mask].max()), 4)],
    }
    report(progress, 1.0, "N4 done")
    return field, details


# ---- cross-fitting: each voxel judged by a field fitted without it ---------------------------------------------

#: The two folds of the cross-fit: a 3D checkerboard of cubes this many mm on a side. Finer than N4's final
#: B-spline mesh (about 30 mm on a head with 4 control points and 3 levels), so each fold constrains every
#: control point, and coarse enough that a fold's voxels are not the other's neighbours at the noise's scale.
FOLD_BLOCK_MM = 20.0


def fold_mask(mask: np.ndarray, spacing_kji: Sequence[float], *, block_mm: float = FOLD_BLOCK_MM) -> np.ndarray:
    """The first fold of the cross-fit over ``mask``'s grid: a checkerboard of boxes ``block_mm`` on a side, or a
    quarter of the mask's extent along an axis where that is less (each fold then spans the mask along every
    axis, however thin the volume)."""
    parity = np.zeros(mask.shape, dtype=np.int64)
    occupied = np.nonzero(mask) if mask.any() else [np.arange(n) for n in mask.shape]
    for axis, (n, step, where) in enumerate(zip(mask.shape, spacing_kji, occupied)):
        extent = (int(where.max()) - int(where.min()) + 1) * float(step)
        edge = max(float(step), min(float(block_mm), extent / 4))
        box = ((np.arange(int(n)) - int(where.min())) * float(step) // edge).astype(np.int64)
        parity = parity + box.reshape([-1 if a == axis else 1 for a in range(mask.ndim)])
    return parity % 2 == 0


#: The fewest voxels a fold keeps on N4's shrunk grid; the cross-fit shrinks less on smaller masks.
MIN_FOLD_VOXELS = 64


def _sampled_voxels(mask: np.ndarray, shrink: int) -> int:
    """Voxels of ``mask`` on the grid N4 fits on at ``shrink`` (every factor-th voxel along each axis)."""
    k, j, i = _shrink_factors(mask.shape, shrink)[::-1]
    return int(np.count_nonzero(mask[::k, ::j, ::i]))


def _unit_geometric_mean(field: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return field / np.float32(np.exp(np.mean(np.log(field[mask]), dtype=np.float64)))


def cross_fitted_field(
    array: np.ndarray,
    mask: np.ndarray,
    *,
    spacing_kji: Sequence[float],
    block_mm: float = FOLD_BLOCK_MM,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    budget: Optional[TimeBudget] = None,
    **n4: object,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """N4 fitted twice, on the two folds of :func:`fold_mask` inside ``mask``: (the field to apply, the held-out
    field, details).

    Why: N4 sharpens the histogram of the voxels it fits, so a tissue CV measured on those same voxels falls
    whether or not the scan had a field (on templates and already-corrected scans it fell by 2-15 %, while the
    field fitted anatomy). The held-out field corrects each voxel with the fit of the fold that did not contain it:
    a real shading, smooth across the folds, lowers the CV there too; a fit to one fold's anatomy or noise does
    not. The field to apply is the geometric mean of the two fits (each fold's voxels count once), the same cost
    as one fit on the whole mask. Both fields have a geometric mean of 1 inside ``mask``; outside it the field to
    apply is held within the range it takes inside (the B-spline's extrapolation is not evidence). ``n4``: the knobs
    of :func:`n4_field`.
    """
    first = fold_mask(mask, spacing_kji, block_mm=block_mm)
    shrink = requested = int(n4.pop("shrink", 6))
    while shrink > 1 and min(_sampled_voxels(mask & fold, shrink) for fold in (first, ~first)) < MIN_FOLD_VOXELS:
        shrink -= 1  # a small mask: each fold keeps enough voxels on the shrunk grid for a fit
    n4["shrink"] = shrink
    fields, runs = [], []
    for k, fold in enumerate((first, ~first)):
        if runs:  # the second fold at the first's resolution (a budget may have coarsened it): like fields
            n4 = {**n4, "shrink": runs[0]["shrink"]}
        field, details = n4_field(array, mask & fold, spacing_kji=spacing_kji, cancel=cancel, budget=budget,
                                  budget_share=0.5 if k == 0 else 1.0,
                                  progress=subrange(progress, k / 2, (k + 1) / 2), **n4)
        fields.append(_unit_geometric_mean(field, mask))
        runs.append(details)
    held_out = np.where(first, fields[1], fields[0])
    combined = _unit_geometric_mean(np.sqrt(fields[0] * fields[1]), mask)
    # outside the mask the B-spline extrapolates: no stronger there than anywhere it was fitted (on the sdcflows
    # EPI it reached x1.29 on 11 640 bright voxels beyond the mask, x1.24 at most inside, and raised their CV)
    inside = combined[mask]
    combined = np.where(mask, combined, np.clip(combined, inside.min(), inside.max())).astype(np.float32)
    logs = [np.log(f[mask]) for f in fields]
    agreement = float(np.corrcoef(*logs)[0, 1]) if min(np.ptp(x) for x in logs) > 0 else None
    details = {**runs[-1], "shrink_requested": requested, "folds": runs, "fold_block_mm": float(block_mm),
               "fold_agreement": None if agreement is None else round(agreement, 4),
               "field_range": [round(float(combined[mask].min()), 4), round(float(combined[mask].max()), 4)]}
    return combined, held_out, details


# ---- the judge: tissue CV before and after, and the noise of their difference ----------------------------------

#: What :func:`tissue_cv` measures, in words (the report's ``tissue_cv_measure``).
TISSUE_CV_MEASURE = ("pooled within-class standard deviation of log intensity (about the coefficient of variation) "
                     "of three Otsu tissue classes, each image its own classes, inside the mask; voxels beyond the "
                     "0.5th-99.5th percentiles left out; after: each voxel corrected by the N4 fit of the fold that "
                     "did not contain it (cross-fitted)")
#: Tissue classes (dark, middle, bright: CSF, grey and white matter on a T1 brain; their analogues elsewhere).
_CLASSES = 3
#: Otsu's thresholds are searched on this many bins of log intensity; each is split in :data:`_FINE` for the
#: class moments, which are exact sums over voxels (the bins only place the thresholds).
_COARSE_BINS = 256
_FINE = 16
#: The jackknife leaves out one block of a grid of this many blocks per axis over the mask's bounding box.
_BLOCKS_PER_AXIS = 4
#: A correction counts when it lowers the tissue CV by more than this many standard errors of the difference:
#: a lowering that large arises by chance about 2 % of the time (one-sided, normal).
SIGNIFICANCE = 2.0


#: Names of the three classes, darkest first, for messages.
CLASS_NAMES = ("dark", "middle", "bright")


@dataclass(frozen=True)
class TissueCV:
    """Tissue CV of two images in one mask; ``noise``: the jackknife standard error of ``after - before``.

    ``classes_*``: the same per class (dark, middle, bright), so that a correction that lowers the pooled
    measure while it raises one tissue's spread is caught (N4 on central crops of brain1 and of the MNI template:
    pooled CV down, the dark class's up by more than its noise).
    """

    before: float
    after: float
    noise: float
    blocks: int
    classes_before: tuple = ()
    classes_after: tuple = ()
    classes_noise: tuple = ()

    @property
    def raised_class(self) -> Optional[int]:
        """The class whose CV rose by more than :data:`SIGNIFICANCE` of its standard errors (the largest rise), or
        None."""
        rises = [(a - b) / n if n > 0 else -np.inf
                 for b, a, n in zip(self.classes_before, self.classes_after, self.classes_noise)]
        worst = int(np.argmax(rises)) if rises else -1
        return worst if rises and rises[worst] > SIGNIFICANCE else None

    @property
    def lowered(self) -> bool:
        """``after`` is below ``before`` by more than :data:`SIGNIFICANCE` standard errors, and no tissue class's CV
        rose by more than that."""
        return self.after - self.before < -SIGNIFICANCE * self.noise and self.raised_class is None


def _otsu3(counts: np.ndarray) -> tuple[int, int]:
    """Bin indices ``a < b`` splitting a histogram into three classes (``< a``, ``a..b-1``, ``>= b``) by
    multi-Otsu (the largest between-class variance)."""
    n = counts.size
    centre = np.arange(n) + 0.5
    weight = np.concatenate([[0.0], np.cumsum(counts)])
    moment = np.concatenate([[0.0], np.cumsum(counts * centre)])
    a, b = np.meshgrid(np.arange(1, n), np.arange(1, n), indexing="ij")
    w0, w1, w2 = weight[a], weight[b] - weight[a], weight[n] - weight[b]
    m0, m1, m2 = moment[a], moment[b] - moment[a], moment[n] - moment[b]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where((b > a) & (w0 > 0) & (w1 > 0) & (w2 > 0), m0 ** 2 / w0 + m1 ** 2 / w1 + m2 ** 2 / w2, -np.inf)
    best = int(np.argmax(score))
    if not np.isfinite(score.ravel()[best]):  # fewer than three occupied bins: one class
        return n, n
    return int(a.ravel()[best]), int(b.ravel()[best])


def _pooled_sd(count: np.ndarray, sum1: np.ndarray, sum2: np.ndarray) -> np.ndarray:
    """[pooled within-class standard deviation, then each class's] from per-fine-bin voxel counts and sums of
    values and squares."""
    total = count.sum()
    if total < 2:
        return np.zeros(1 + _CLASSES)
    a, b = _otsu3(count.reshape(_COARSE_BINS, _FINE).sum(axis=1))
    within, per_class = 0.0, []
    for start, stop in ((0, a * _FINE), (a * _FINE, b * _FINE), (b * _FINE, count.size)):
        n = count[start:stop].sum()
        squares = 0.0
        if n > 0:
            s1, s2 = sum1[start:stop].sum(), sum2[start:stop].sum()
            squares = max(s2 - s1 * s1 / n, 0.0)
        within += squares
        per_class.append(np.sqrt(squares / n) if n > 1 else 0.0)
    return np.array([np.sqrt(within / total), *per_class])


def _block_index(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """For each voxel of ``mask`` (in ``np.nonzero`` order) its block of the jackknife grid, numbered 0..B-1."""
    index = np.zeros(int(mask.sum()), dtype=np.int64)
    for coords in np.nonzero(mask):
        low, high = int(coords.min()), int(coords.max()) + 1
        parts = min(_BLOCKS_PER_AXIS, high - low)
        index = index * _BLOCKS_PER_AXIS + np.minimum((coords - low) * parts // (high - low), parts - 1)
    occupied = np.bincount(index) > 0
    return (np.cumsum(occupied) - 1)[index], int(occupied.sum())


def _cv_with_leave_outs(values: np.ndarray, block: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """The measure (pooled, then per class) on all voxels and with each block left out in turn (positive
    ``values``, one per voxel): shapes (4,) and (blocks, 4)."""
    logs = np.log(values.astype(np.float64))
    low, high = np.percentile(logs, [0.5, 99.5])
    keep = (logs >= low) & (logs <= high)
    bins = _COARSE_BINS * _FINE
    if not high > low:
        return np.zeros(1 + _CLASSES), np.zeros((blocks, 1 + _CLASSES))
    x = logs[keep] - low  # centred near zero: the sums of squares lose no precision
    where = block[keep] * bins + np.minimum((x / (high - low) * bins).astype(np.int64), bins - 1)
    count, sum1, sum2 = (np.bincount(where, weights=w, minlength=blocks * bins).reshape(blocks, bins)
                         for w in (None, x, x * x))
    total = (count.sum(axis=0), sum1.sum(axis=0), sum2.sum(axis=0))
    full = _pooled_sd(*total)
    left_out = np.stack([_pooled_sd(total[0] - count[k], total[1] - sum1[k], total[2] - sum2[k])
                         for k in range(blocks)])
    return full, left_out


def tissue_cv(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> TissueCV:
    """The tissue CV of ``before`` and ``after`` (positive inside ``mask``) and the noise of their difference.

    The measure (:data:`TISSUE_CV_MEASURE`): the log intensities inside the mask are split into three classes by
    multi-Otsu, each image its own split, and the within-class variances pooled by voxel count; the square
    root is about the tissue CV. In logarithms a multiplicative field is an added smooth term, so its variance
    adds to every class's and removing it removes exactly that. The noise is the delete-a-block jackknife
    standard error of ``after - before``: a grid of up to 4 x 4 x 4 blocks over the mask, the measure redone
    with each block left out (blocks, not voxels: neighbouring voxels are not independent).
    """
    block, blocks = _block_index(mask)
    full_before, out_before = _cv_with_leave_outs(before[mask], block, blocks)
    full_after, out_after = _cv_with_leave_outs(after[mask], block, blocks)
    differences = out_after - out_before
    # one block (a mask one voxel thick along every axis): no noise estimate, so no difference counts
    noise = np.full(1 + _CLASSES, np.inf)
    if blocks > 1:
        noise = np.sqrt((blocks - 1) / blocks * np.sum((differences - differences.mean(axis=0)) ** 2, axis=0))
    return TissueCV(before=float(full_before[0]), after=float(full_after[0]), noise=float(noise[0]), blocks=blocks,
                    classes_before=tuple(float(v) for v in full_before[1:]),
                    classes_after=tuple(float(v) for v in full_after[1:]),
                    classes_noise=tuple(float(v) for v in noise[1:]))
