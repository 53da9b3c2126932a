"""How far a synthesised voxel can be trusted: a per-voxel standard deviation, calibrated on the volume itself.

Why this way. A fill or upsampling answers "what lies between these slices"; the scan holds the same question
with a known answer: acquired slices held out through-plane with the fill's gap widths (fills), and rows of
acquired slices removed in-plane with the same gap pattern (runs of missing rows for a fill, every k-th row kept
for an upsampling, rows first thinned to the through-plane step in mm) are answered by the same method, and
their error is measured. That error is explained by a model over what every method has at every voxel:

* ``bridge``: how different the two bounding good slices are there (``|b - a|``), weighted by the distance to the
  nearer one (``2 min(t, 1 - t)``: largest at the middle of a gap, where any interpolation is least sure);
* ``disagreement``: how far the method's answer is from another answer (linear interpolation; cubic for linear
  itself), the spread between candidate methods; ``curvature``: linear against cubic (what linear misses);
* ``edge``: the answer's in-plane gradient (a misplaced edge costs its height); ``bounding_edges``: the bounding
  slices' own; ``context_change``: how fast the anatomy changes through-plane around the gap;
* each of those read at two in-plane widths (:data:`SCALES`): at the voxel (Gaussian 0.5 voxel: the error sits
  on the edge, not beside it) and around it (3 voxels); the answer's local texture (sd in 3 x 3) and intensity;

``log(|error|)`` regressed on their logarithms and pairwise products (least squares through normal equations
accumulated in chunks of rows; where the calibration has under :data:`ROWS_PER_COLUMN` rows per column, a small
crop of thick slices, only the :data:`COMPACT` third of the features), then mapped monotonically onto the
measured root-mean-square error in bins of the prediction (isotonic in the binned means), so that the standard
deviation means the same on every scan. The figures the report gives (share within two standard deviations,
Spearman rank correlation of the standard deviation with the absolute error) are measured on held-out rows that
the fit did not see.

On the 13 thin scans of ``../shared/data`` (``benchmarks/provenance_ceiling.py``: 3 slices zeroed, default fill)
the two widths took the Spearman of the sd with the true error from mean 0.483 (min 0.216, 7 scans >= 0.5; one
width of 1 voxel) to mean 0.505 (min 0.230, 9 scans), within two sd 94.7-99.7 % as before; the same file compares
them with oracle ceilings: where the error is mostly stationary acquisition noise (CT of the head) no smooth sd
ranks it. The 4 thick scans went up too (0.570/0.650/0.364/0.068 to 0.573/0.662/0.405/0.087, all 94-97 % in 2 sd).

selfsup trains for minutes and cannot be run again on the rows: it is calibrated through its base (the spline on
thick slices, linear otherwise) and scaled by its own held-out gain over that base (``10^(-gain/20)``), which it
measured on in-plane rows too.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from ...progress import CancelToken, check_cancel
from ._interp import FillPlan, cubic_fill, linear_fill, make_plan

__all__ = ["uncertainty_features", "calibrate", "CALIBRATION_SLICES"]

#: Consecutive acquired slices the calibration reads (two blocks, at a third and two thirds of the stack).
CALIBRATION_SLICES = 16
#: Good rows between the removed runs of a fill's calibration pattern (the context the methods use).
SEPARATION = 5
#: Rows of features handled at once by the fit and the prediction (bounds their memory).
CHUNK_ROWS = 200_000
#: Calibration rows per regression column that all the features need (else :data:`COMPACT`).
ROWS_PER_COLUMN = 100
#: Bins of the isotonic map from the variance model to the measured error.
BINS = 24
#: Methods that are run again on the calibration rows (instant or seconds); others go through their base.
RERUN = ("linear", "cubic", "spline", "flow", "model")


#: In-plane Gaussian widths (voxels) the features are read at: at the voxel (an error sits on an edge, not beside
#: it) and around it (a gap spanning changing anatomy errs over a neighbourhood).
SCALES = (0.5, 3.0)
#: The raw features, each read at every scale of :data:`SCALES`.
RAW_FEATURES = ("bridge", "disagreement", "curvature", "edge", "bounding_edges", "context_change")
#: The features' names, in the order of :func:`uncertainty_features` (after the constant).
FEATURES = tuple(f"{name}@{scale:g}" for scale in SCALES for name in RAW_FEATURES) + ("texture", "intensity")


#: The features fitted when the calibration has too few rows for all (:data:`ROWS_PER_COLUMN`): each at the voxel,
#: the bridge around it and the intensity (about a third of the regression's columns).
COMPACT = tuple(f"{name}@{SCALES[0]:g}" for name in RAW_FEATURES) + (f"bridge@{SCALES[1]:g}", "intensity")


def _compact() -> tuple[int, ...]:
    """The rows of :func:`uncertainty_features` that :data:`COMPACT` reads, the constant first."""
    return (0,) + tuple(1 + FEATURES.index(name) for name in COMPACT)


def uncertainty_features(good: np.ndarray, plan: FillPlan, values: np.ndarray, method: str) -> np.ndarray:
    """(1 + len(FEATURES), Q, H, W) float32: the regressors of the log-error model: a constant, the logarithms of
    the positive features (bridge, disagreement, curvature, edge, bounding edges, context change), each smoothed
    in-plane at every width of :data:`SCALES`, of the answer's local texture (standard deviation in 3 x 3) and the
    answer's intensity (darker tissue beside bright tissue errs more: CSF beside grey matter)."""
    t = plan.t[:, None, None].astype(np.float32)
    a, b = good[plan.lower], good[plan.lower + 1]
    last = len(good) - 1
    before, after = good[np.clip(plan.lower - 1, 0, last)], good[np.clip(plan.lower + 2, 0, last)]
    linear, cubic = linear_fill(good, plan), cubic_fill(good, plan)
    other = cubic if method == "linear" else linear

    def gradient(image: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(image.astype(np.float32), axis=(1, 2))
        return np.hypot(gy, gx)

    raw = (np.abs(b - a) * 2.0 * np.minimum(t, 1.0 - t),  # bridge: what the gap has to span
           np.abs(values - other),  # disagreement between candidate answers
           np.abs(linear - cubic),  # curvature through-plane (what linear misses)
           gradient(values),  # the answer's own edges
           gradient(a) + gradient(b),  # the bounding slices' edges
           np.abs(a - before) + np.abs(after - b))  # how fast the anatomy changes through-plane around the gap
    logs = [np.log(ndimage.gaussian_filter(f, sigma=(0, s, s)) + FLOOR) for s in SCALES for f in raw]
    answer = values.astype(np.float32)
    mean, square = (ndimage.uniform_filter(x, size=(1, 3, 3)) for x in (answer, answer**2))
    logs.append(np.log(np.sqrt(np.maximum(square - mean**2, 0.0)) + FLOOR))  # the answer's local texture
    return np.stack([np.ones_like(values, np.float32)] + logs + [np.clip(values, 0.0, 2.0)]).astype(np.float32)


#: Added to every feature and error before the logarithm (normalised units: 0.1 % of the intensity range).
FLOOR = 1e-3


def _pattern(plan: FillPlan, rows: int, separation: int = 5) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(good rows, target rows) that repeat the plan's gaps along ``rows`` calibration rows.

    A regular grid (upsampling by k) keeps every k-th row; isolated gaps and slabs (a fill) remove runs of the
    same lengths, separated by ``separation`` good rows (:data:`SEPARATION`), cycling through the gap widths.
    """
    gaps = np.unique(np.maximum(np.round(plan.gaps).astype(int), 2))
    spacing = np.diff(plan.positions)
    regular = len(spacing) > 0 and np.allclose(spacing, spacing[0]) and spacing[0] > 1.0 + 1e-6
    if regular:
        step = max(2, int(round(spacing[0])))
        good = np.arange(0, rows, step)
        if len(good) < 3:
            return None
        good = good[good <= good[-1]]
        targets = np.setdiff1d(np.arange(good[0], good[-1] + 1), good)
        return good, targets
    targets: list[int] = []
    row, cycle = separation, 0
    while True:
        run = int(gaps[cycle % len(gaps)]) - 1
        if row + run + separation > rows:
            break
        targets.extend(range(row, row + run))
        row += run + separation
        cycle += 1
    if not targets:
        return None
    targets_array = np.array(targets)
    return np.setdiff1d(np.arange(rows), targets_array), targets_array


def _calibration_stacks(good: np.ndarray, row_steps: tuple[int, int]) -> list[np.ndarray]:
    """Reformatted planes of consecutive acquired slices: rows along H, then along W, as (rows, slices, length)
    stacks, rows thinned to the through-plane step (``row_steps``, pixels per output slice step)."""
    count = len(good)
    take = min(CALIBRATION_SLICES, count)
    starts = sorted({int(np.clip(round(f * count - take / 2), 0, count - take)) for f in (1 / 3, 2 / 3)})
    stacks = []
    for start in starts:
        block = good[start:start + take]
        stacks.append(np.ascontiguousarray(np.moveaxis(block, 1, 0)[:: row_steps[0]]))  # (H, S, W)
        stacks.append(np.ascontiguousarray(np.moveaxis(block, 2, 0)[:: row_steps[1]]))  # (W, S, H)
    return stacks


def _design(features: np.ndarray) -> np.ndarray:
    """The regression's columns: the features (constant first) and their pairwise products (second order: an
    edge matters more where the gap is wide)."""
    n = features.shape[1]
    pairs = [features[:, i] * features[:, j] for i in range(1, n) for j in range(i, n)]
    return np.column_stack([features] + pairs)


def _fit_log_error(features: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of ``log(|error| + FLOOR)`` on :func:`_design` of the feature rows: a
    multiplicative model of the error's typical size, what ranks voxels by how far they can be trusted. Solved
    through the normal equations accumulated over chunks of rows (the design of a whole volume's calibration
    rows, about 50 columns in float64, would take hundreds of megabytes and most of the calibration's time)."""
    target = np.log(np.abs(error) + FLOOR)
    gram, moment = 0.0, 0.0
    for rows in np.array_split(np.arange(len(features)), max(1, len(features) // CHUNK_ROWS)):
        design = _design(features[rows].astype(np.float64))
        gram, moment = gram + design.T @ design, moment + design.T @ target[rows]
    coefficients, *_ = np.linalg.lstsq(gram, moment, rcond=None)
    return coefficients


def _predict(features: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """``_design(features) @ coefficients`` without the design: the linear part plus the pairwise products as a
    quadratic form (the same sum, the same order of pairs)."""
    n = features.shape[1]
    pairs = np.zeros((n, n))
    pairs[tuple(np.array([(i, j) for i in range(1, n) for j in range(i, n)]).T)] = coefficients[n:]
    out = []
    for chunk in np.array_split(features, max(1, len(features) // CHUNK_ROWS)):
        chunk = chunk.astype(np.float64)
        out.append(chunk @ coefficients[:n] + np.einsum("ij,ij->i", chunk @ pairs, chunk))
    return np.concatenate(out)


def _isotonic_map(predicted: np.ndarray, squared_error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(knots of the predicted log-error, measured RMS error at them, non-decreasing): the model's prediction
    mapped onto the standard deviation of the error it stands for, in quantile bins of the prediction."""
    order = np.argsort(predicted)
    chunks = np.array_split(order, min(BINS, max(1, len(order) // 200)))
    knots = np.array([np.median(predicted[c]) for c in chunks])
    rms = np.sqrt(np.array([np.mean(squared_error[c]) for c in chunks]))
    return knots, np.maximum.accumulate(np.maximum(rms, FLOOR))  # never 0: a made voxel is never certain


class Calibration:
    """The fitted variance model and its isotonic map; :meth:`sigma` applies them to features (``columns``: the
    rows of :func:`uncertainty_features` the model reads, constant first; None: all)."""

    def __init__(self, coefficients: np.ndarray, knots: np.ndarray, levels: np.ndarray, scale: float = 1.0,
                 columns: Optional[tuple[int, ...]] = None) -> None:
        self.coefficients, self.knots, self.levels, self.scale = coefficients, knots, levels, float(scale)
        self.columns = None if columns is None else list(columns)

    @classmethod
    def fit(cls, features: np.ndarray, error: np.ndarray, columns: Optional[tuple[int, ...]] = None) -> "Calibration":
        chosen = features if columns is None else features[:, list(columns)]
        coefficients = _fit_log_error(chosen, error)
        knots, levels = _isotonic_map(_predict(chosen, coefficients), error**2)
        return cls(coefficients, knots, levels, columns=columns)

    def sigma(self, features: np.ndarray) -> np.ndarray:
        """Standard deviations for feature rows (n, F) or stacks (F, ...)."""
        stacked = features.ndim > 2
        flat = features.reshape(len(features), -1).T if stacked else features
        predicted = _predict(flat if self.columns is None else flat[:, self.columns], self.coefficients)
        out = np.interp(predicted, self.knots, self.levels) * self.scale
        return out.reshape(features.shape[1:]).astype(np.float32) if stacked else out


def _agreement(sigma: np.ndarray, error: np.ndarray) -> dict:
    """The calibration figures: share within 1 and 2 sd, Spearman rank correlation of sd with |error|."""
    from scipy.stats import spearmanr

    error = np.abs(error)
    rho = float(spearmanr(sigma, error).statistic) if len(error) > 2 and np.ptp(sigma) > 0 else None
    return {"voxels": int(len(error)),
            "within_1sd": round(float(np.mean(error <= sigma)), 4),
            "within_2sd": round(float(np.mean(error <= 2 * sigma)), 4),
            "spearman": None if rho is None or not np.isfinite(rho) else round(rho, 4)}


def held_out_slices(plan: FillPlan, *, separation: int = 3, limit: int = 24) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(kept, held out) indices into the good slices: acquired slices removed through-plane with the fill's gap
    widths, :data:`SEPARATION` good slices from the real gaps and from each other, in the middle 80 % of the
    stack; None for a regular grid (an upsampling has no acquired slice to spare between its gaps)."""
    spacing = np.diff(plan.positions)
    if len(spacing) == 0 or (np.allclose(spacing, spacing[0]) and spacing[0] > 1.0 + 1e-6):
        return None
    gaps = np.unique(np.maximum(np.round(plan.gaps).astype(int), 2))
    count = len(plan.positions)
    near_gap = np.zeros(count, bool)
    for lower in np.unique(plan.lower):  # good slices bounding a real gap, and their neighbours
        near_gap[max(0, lower - separation + 1): lower + separation + 1] = True
    held: list[int] = []
    index, cycle = max(separation, int(0.1 * count)), 0
    while index < min(count - separation, int(0.9 * count)) and len(held) < limit:
        run = int(gaps[cycle % len(gaps)]) - 1
        block = range(index, index + run)
        if index + run + separation <= count and not near_gap[max(0, index - 1): index + run + 1].any() and \
                np.allclose(np.diff(plan.positions[index - 1: index + run + 1]), 1.0):
            held.extend(block)
            index += run + separation
            cycle += 1
        else:
            index += 1
    if not held:
        return None
    held_array = np.array(held)
    return np.setdiff1d(np.arange(count), held_array), held_array


def _problems(good: np.ndarray, plan: FillPlan, row_steps: tuple[int, int]):
    """The calibration problems, as (good slices, plan, truth, source) with the fill's gap pattern: acquired
    slices held out through-plane (fills: the same problem at other places; source None) and in-plane rows of
    reformatted planes (both; upsampling: rows only, thinned to the through-plane step; source: the row steps
    used)."""
    through = held_out_slices(plan)
    if through is not None:
        kept, held = through
        yield good[kept], make_plan(plan.positions[kept], plan.positions[held]), good[held], None
    # short stacks (a small volume, rows thinned to thick slices): closer runs, then unthinned rows
    for steps, separation in ((row_steps, SEPARATION), (row_steps, 2), ((1, 1), 2)):
        found = False
        for stack in _calibration_stacks(good, steps):
            pattern = _pattern(plan, len(stack), separation)
            if pattern is None:
                continue
            rows, targets = pattern
            found = True
            yield stack[rows], make_plan(rows.astype(np.float64), targets.astype(np.float64)), stack[targets], steps
        if found:
            return


def calibrate(good: np.ndarray, plan: FillPlan, *, method: str, run_method, row_steps: tuple[int, int],
              foreground: float, scale: float = 1.0, cancel: Optional[CancelToken] = None) -> tuple[Calibration, dict]:
    """Fit the uncertainty of ``method`` on held-out data of ``good`` (G, H, W, normalised): acquired slices held
    out through-plane with the fill's gap pattern, and in-plane rows (:func:`_problems`).

    ``run_method(good, plan) -> (Q, H, W)`` answers a calibration problem with the method (or its base);
    ``foreground``: the normalised intensity above which a voxel is tissue (the fit and the figures use tissue
    voxels, where an annotator works); ``scale`` multiplies the result (selfsup's gain over its base).
    Returns the calibration and its report (fit and held-out figures).
    """
    features, errors, halves = [], [], []
    sources = set()
    for kept, problem, truth, source in _problems(good, plan, row_steps):
        check_cancel(cancel)
        answer = np.asarray(run_method(kept, problem), np.float32)
        tissue = np.maximum(truth, answer) > foreground
        if not tissue.any():
            continue
        sources.add(source)
        features.append(uncertainty_features(kept, problem, answer, method)[:, tissue].T)
        errors.append((answer - truth)[tissue])
        halves.append(np.broadcast_to((np.arange(len(truth)) % 2 == 1)[:, None, None], truth.shape)[tissue])
    if not errors:
        width = _design(np.zeros((1, len(FEATURES) + 1))).shape[1]
        return Calibration(np.zeros(width), np.array([0.0]), np.array([0.0]), scale), {
            "calibrated": False, "reason": "too few acquired rows with tissue to calibrate on"}
    features_all, error_all, held = np.concatenate(features), np.concatenate(errors), np.concatenate(halves)
    # every feature where the rows can carry the model (a small crop of thick slices has hundreds), else COMPACT
    columns = None if len(error_all) >= ROWS_PER_COLUMN * _design(features_all[:1]).shape[1] else _compact()
    half = Calibration.fit(features_all[~held], error_all[~held], columns) if held.any() and (~held).any() else None
    final = Calibration.fit(features_all, error_all, columns)
    final.scale = float(scale)
    rows = [steps for steps in sources if steps is not None]
    figures = {"calibrated": True,
               "calibrated_on": ("acquired slices held out through-plane and " if None in sources else "")
               + "in-plane rows of acquired slices, the gap pattern repeated" if rows
               else "acquired slices held out through-plane",
               "row_step_px": list(rows[0]) if rows else None,
               "model": f"log-error regression on {len(FEATURES) if columns is None else len(COMPACT)} features "
                        + ("" if columns is None else f"(too few rows for all {len(FEATURES)}) ")
                        + f"and their pairwise products, isotonic map to the RMS error in {len(final.knots)} bins"}
    if half is not None:
        figures["held_out"] = _agreement(half.sigma(features_all[held]), error_all[held])
    figures["fit"] = _agreement(final.sigma(features_all) / max(final.scale, 1e-12), error_all)
    return final, figures

