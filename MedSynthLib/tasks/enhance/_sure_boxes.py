"""SURE fitted on probe boxes: the fusion of a whole scan without running every component on every voxel.

Every component runs twice (the observation and a +-1 probe of it) on a few sub-volumes spread over the
anatomy (:func:`probe_boxes`); SURE is fitted there for every subset of components; only the subset
:func:`choose_components` picks (the cheapest within :data:`~._sure_weights.FUSION_MIN_GAIN` of the best risk, by
the cost measured on the boxes, within the time budget) runs on the whole volume (:func:`box_fusion`). Before,
the whole lung1 CT took 12:47 for six whole-volume runs and used the DCT alone.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from ...budget import TimeBudget
from ...noise import magnitude_debias
from ...progress import CancelToken, ProgressCallback, check_cancel, report, subrange
from ._sure_weights import FUSION_MIN_GAIN, _fit_by_class, sole_component

__all__ = ["Box", "probe_boxes", "choose_components", "box_fusion", "COMBINE_RESERVE"]

Box = tuple[tuple[slice, ...], tuple[slice, ...]]


def probe_boxes(shape: tuple[int, int, int], foreground: np.ndarray, *, inner: tuple[int, int, int],
                margin: tuple[int, int, int], count: int) -> list[Box]:
    """Up to ``count`` sub-volumes where SURE is fitted: (outer slices in the volume, inner slices in the outer box).

    The volume is tiled with ``inner`` boxes (centred); the tiles at least half foreground (else the most
    foreground ones) are taken evenly spaced in raster order, so the probes spread over the anatomy, through
    the slices and in-plane. Each is grown by ``margin`` (clipped at the volume's ends) for its context.
    """
    inner = tuple(max(1, min(int(i), int(n))) for i, n in zip(inner, shape))
    grid = [max(1, n // i) for n, i in zip(shape, inner)]
    tiles = []
    for index in itertools.product(*[range(g) for g in grid]):
        start = [(n - g * i) // 2 + k * i for n, g, i, k in zip(shape, grid, inner, index)]
        where = tuple(slice(a, a + i) for a, i in zip(start, inner))
        tiles.append((float(foreground[where].mean()), where))
    good = [t for t in tiles if t[0] >= 0.5]
    if len(good) < count:
        good = sorted(tiles, key=lambda t: -t[0])[:count]
        good.sort(key=lambda t: [w.start for w in t[1]])
    picks = sorted({int(round(v)) for v in np.linspace(0, len(good) - 1, min(count, len(good)))})
    boxes = []
    for _, where in (good[i] for i in picks):
        outer = tuple(slice(max(0, w.start - m), min(n, w.stop + m)) for w, m, n in zip(where, margin, shape))
        boxes.append((outer, tuple(slice(w.start - o.start, w.stop - o.start) for w, o in zip(where, outer))))
    return boxes


def _gradient(estimate: np.ndarray) -> np.ndarray:
    """The local gradient magnitude the weight classes are drawn from (of the smoothed estimate)."""
    smooth = ndimage.gaussian_filter(estimate, 1.0)
    return np.sqrt(sum(g**2 for g in np.gradient(smooth)))


@dataclass
class _BoxProbe:
    """Every component on the probe boxes, as flat arrays over the boxes' inner voxels."""

    names: list
    estimates: list  # per component: its (debiased) estimate
    divergences: list  # per component: its Monte-Carlo divergence
    gradients: list  # per component: the local gradient of its estimate
    observed: np.ndarray
    foreground: np.ndarray
    seconds_per_voxel: list  # per component: measured on the boxes (both runs)
    seconds: float


def _probe_on_boxes(x: np.ndarray, smoothers: list, boxes: list[Box], *, s: float, seed: int, debias,
                    foreground: np.ndarray, budget: Optional[TimeBudget], cancel: Optional[CancelToken],
                    progress: Optional[ProgressCallback]) -> _BoxProbe:
    """Each component run twice on every box (the observation and a +-1 probe of it, the boxes' own groups held):
    its estimate and Monte-Carlo divergence on the inner voxels, and its measured cost per voxel. Components after
    the first are skipped once ``budget`` has run out."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed + 7919)
    eps = np.float32(0.05 * s)
    data = [np.ascontiguousarray(x[outer]) for outer, _ in boxes]
    probes = [rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=d.shape) for d in data]
    work = sum(d.size for d in data)
    probe = _BoxProbe([], [], [], [], np.concatenate([debias(d)[inner].ravel() for d, (_, inner) in zip(data, boxes)]),
                      np.concatenate([foreground[outer][inner].ravel() for outer, inner in boxes]), [], 0.0)
    for index, smoother in enumerate(smoothers):
        check_cancel(cancel)
        if index and budget is not None and budget.expired():
            budget.cut(f"fusion: the time budget ran out while probing, "
                       f"{', '.join(m.name for m in smoothers[index:])} skipped")
            break
        report(progress, index / len(smoothers), f"fusion: fitting the weights, {smoother.name} on {len(boxes)} "
                                                 f"probe boxes ({index + 1} of {len(smoothers)})")
        clock = time.perf_counter()
        parts: tuple[list, list, list] = ([], [], [])
        for d, p, (_, inner) in zip(data, probes, boxes):
            check_cancel(cancel)
            run = smoother.make()
            now = debias(run(d))
            moved = debias(run(d + eps * p))
            parts[0].append(now[inner].ravel())
            parts[1].append((p * (moved - now) / eps)[inner].ravel())
            parts[2].append(_gradient(now)[inner].ravel())
        probe.names.append(smoother.name)
        for target, values in zip((probe.estimates, probe.divergences, probe.gradients), parts):
            target.append(np.concatenate(values))
        probe.seconds_per_voxel.append((time.perf_counter() - clock) / (2 * work))
    probe.seconds = time.perf_counter() - started
    return probe


@dataclass
class _SubsetFit:
    members: tuple  # indices into the probe's components
    risk: float  # SURE per fitted voxel of the fused estimate
    single: list  # SURE per fitted voxel of each member alone
    weights: dict  # gradient class -> convex weights
    edges: Optional[np.ndarray]  # the gradient quantiles between classes (None: one class)
    fit_voxels: int


def _fit_subset(probe: _BoxProbe, members: tuple, *, s: float, variance: float, rician: bool,
                settings, coils: float = 1.0) -> _SubsetFit:
    """Convex SURE weights of ``members`` per gradient class (of the first member's estimate) on the boxes."""
    guide = probe.estimates[members[0]]
    fit = probe.foreground.copy()
    if rician:
        fit &= guide > 2 * s * math.sqrt(coils)
    arrays = [probe.estimates[i] for i in members]
    divergences = [probe.divergences[i] for i in members]
    edges, classes = None, np.zeros(guide.shape, np.int8)
    if fit.sum() >= settings.classes * 200 * len(members):
        gradient = probe.gradients[members[0]]
        edges = np.quantile(gradient[fit], np.linspace(0, 1, settings.classes + 1)[1:-1])
        classes = np.digitize(gradient, edges).astype(np.int8)

    def normal_equations(where: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
        n = int(where.sum())
        design = np.stack([a[where].astype(np.float64) for a in arrays], axis=1)
        target = probe.observed[where].astype(np.float64)
        div = np.array([float(d[where].sum(dtype=np.float64)) for d in divergences])
        return design.T @ design, design.T @ target - variance * div, float(target @ target) - n * variance, n

    _, weights, risks = _fit_by_class(arrays, classes, fit, normal_equations, min_voxels=200 * len(members),
                                      default=0)
    n = max(1, sum(r["n"] for r in risks))
    return _SubsetFit(tuple(members), sum(r["fused"] for r in risks) / n,
                      [sum(r["single"][i] for r in risks) / n for i in range(len(members))], weights, edges,
                      int(fit.sum()))


def choose_components(risks: dict, costs: dict, *, seconds_left: float = math.inf) -> tuple[tuple, str, bool]:
    """Which components to compute on the whole volume: (the subset, why, whether the budget decided it).

    ``risks``: SURE per voxel of the fused estimate of every subset (tuples of names); ``costs``: the projected
    seconds of each component on the whole volume. The subset is the cheapest whose risk is within
    :data:`FUSION_MIN_GAIN` of the best subset's (SURE's own scatter: a smaller gain is no evidence, the rule the
    fallback to a single component follows), lower risk breaking ties. When that would take longer than
    ``seconds_left``, the same rule picks among the subsets that fit; when none fits, the cheapest one runs.

    Examples
    --------
    >>> risks = {("a",): 10.0, ("b",): 10.5, ("a", "b"): 9.5}
    >>> choose_components(risks, {"a": 100.0, "b": 5.0})[0]
    ('a', 'b')
    >>> choose_components(risks, {"a": 100.0, "b": 5.0}, seconds_left=50.0)[1]
    'a, b (about 105 s) would not fit the 50 s left: b, about 5 s'
    """
    def cost(subset):
        return sum(costs[name] for name in subset)

    def cheapest_good(candidates):
        best = min(risks[subset] for subset in candidates)
        good = [subset for subset in candidates if risks[subset] <= best + FUSION_MIN_GAIN * abs(best)]
        return min(good, key=lambda subset: (cost(subset), risks[subset]))

    chosen = cheapest_good(list(risks))
    if cost(chosen) <= seconds_left:
        return chosen, (f"the cheapest set of components within {FUSION_MIN_GAIN:.0%} of the best estimated "
                        f"risk: {', '.join(chosen)}, about {cost(chosen):.0f} s"), False
    over = f"{', '.join(chosen)} (about {cost(chosen):.0f} s) would not fit the {seconds_left:.0f} s left"
    fitting = [subset for subset in risks if cost(subset) <= seconds_left]
    if fitting:
        chosen = cheapest_good(fitting)
        return chosen, f"{over}: {', '.join(chosen)}, about {cost(chosen):.0f} s", True
    chosen = min(risks, key=lambda subset: (cost(subset), risks[subset]))
    return chosen, f"{over}, nor would any other: the cheapest, {', '.join(chosen)}, about {cost(chosen):.0f} s", True


#: Seconds kept back from the budget for what follows the whole-volume components (combining them, the checks),
#: as a fraction of their projected time.
COMBINE_RESERVE = 0.15


def box_fusion(x: np.ndarray, s: float, smoothers: list, boxes: list[Box], *, rician: bool, coils: float = 1.0,
               foreground: np.ndarray, strength: float, seed: int, settings,
               budget: Optional[TimeBudget], cancel: Optional[CancelToken],
               progress: Optional[ProgressCallback]) -> tuple[np.ndarray, dict]:
    """The fusion fitted on probe boxes: every component on the boxes, SURE for every subset of them, then only
    the chosen subset (:func:`choose_components`) computed on the whole volume and combined with its weights."""
    variance = (float(strength) * s) ** 2

    def debias(values: np.ndarray) -> np.ndarray:
        return magnitude_debias(values, s, coils) if rician else values

    box_work = 2 * len(smoothers) * sum(math.prod(o.stop - o.start for o in outer) for outer, _ in boxes)
    probing = box_work / (box_work + x.size)  # the probes' share of the bar, by voxel work; the rest by measure
    probe = _probe_on_boxes(x, smoothers, boxes, s=s, seed=seed, debias=debias, foreground=foreground,
                            budget=budget, cancel=cancel, progress=subrange(progress, 0.0, probing))
    names = probe.names
    fits = {tuple(names[i] for i in members): _fit_subset(probe, members, s=s, variance=variance, rician=rician,
                                                          settings=settings, coils=coils)
            for size in range(1, len(names) + 1) for members in itertools.combinations(range(len(names)), size)}
    costs = {name: rate * x.size for name, rate in zip(names, probe.seconds_per_voxel)}
    left = math.inf if budget is None else budget.remaining() / (1 + COMBINE_RESERVE)
    chosen, why, cut = choose_components({k: f.risk for k, f in fits.items()}, costs, seconds_left=left)
    if cut:
        budget.cut(f"fusion: {why}")
    estimate, classes, used = _compute_chosen(x, smoothers, chosen, fits, costs, debias=debias, probing=probing,
                                              budget=budget, cancel=cancel, progress=progress)
    if used != chosen:
        why = f"{why}; the clock stopped it after {', '.join(used)}"
    return estimate, _box_report(names, used, fits, costs, classes, why, boxes, probe)


def _compute_chosen(x: np.ndarray, smoothers: list, chosen: tuple, fits: dict, costs: dict, *, debias,
                    probing: float, budget: Optional[TimeBudget], cancel: Optional[CancelToken],
                    progress: Optional[ProgressCallback]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """The chosen components on the whole volume (progress by their measured costs), combined with the weights of
    the subset computed: (estimate, gradient classes, that subset).

    The clock is checked before each component after the first: one whose projected time, scaled by how much the
    components so far overran theirs (a machine that got busier since the probes), no longer fits what is left of
    ``budget`` is skipped with the rest, and the subset computed so far is combined with its own SURE weights
    (every subset was fitted on the probes). A small CT took 54 s of its 41 s default beside another job."""
    total = sum(costs[name] for name in chosen)
    done, spent = 0.0, 0.0
    arrays, computed = [], []
    for name in chosen:
        check_cancel(cancel)
        if arrays and budget is not None and budget.seconds is not None:
            pace = max(1.0, spent / max(done, 1e-9))
            if costs[name] * pace > budget.remaining():
                budget.cut(f"fusion: {', '.join(n for n in chosen if n not in computed)} skipped: about "
                           f"{costs[name] * pace:.0f} s at the pace measured so far, {budget.remaining():.0f} s left")
                break
        began = time.perf_counter()
        start = probing + (1 - probing) * 0.95 * done / total
        stop = probing + (1 - probing) * 0.95 * (done + costs[name]) / total
        report(progress, start, f"fusion: {name} on the whole volume (about {costs[name]:.0f} s of {total:.0f} s, "
                                f"measured on the probes)")
        run = smoothers[[m.name for m in smoothers].index(name)].make()
        arrays.append(debias(run(x)))
        computed.append(name)
        done += costs[name]
        spent += time.perf_counter() - began
        report(progress, stop, f"fusion: {name} done")
    used = tuple(computed)
    fit = fits[used]
    if len(arrays) == 1:
        return np.asarray(arrays[0], np.float32), np.zeros(x.shape, np.int8), used
    report(progress, probing + (1 - probing) * 0.95, "fusion: combining with the SURE weights")
    classes = (np.digitize(_gradient(arrays[0]), fit.edges).astype(np.int8) if fit.edges is not None
               else np.zeros(x.shape, np.int8))
    estimate = np.zeros(x.shape, np.float32)
    for k, w in fit.weights.items():
        members = classes == k
        estimate[members] = sum(float(wi) * a[members] for wi, a in zip(w, arrays))
    return estimate, classes, used


def _box_report(names: list, chosen: tuple, fits: dict, costs: dict, classes: np.ndarray, why: str,
                boxes: list[Box], probe: _BoxProbe) -> dict:
    """What the report says of a probe-box fusion: components, weights, risks of every subset, the probes."""
    fit = fits[chosen]
    best_single = min(fits[(name,)].risk for name in names)
    single_best = [name for name in names if fits[(name,)].risk == best_single][0]
    alone = chosen[0] if len(chosen) == 1 else None
    return {"components": list(names), "whole_volume_components": list(chosen),
            "weights_by_gradient_class": [[round(float(v), 4) for v in fit.weights[k]] for k in sorted(fit.weights)],
            "weights_constraint": "non-negative, summing to 1 (a convex combination of the components)",
            "fallback": alone, "best_single": single_best, "why": why,
            "sure_mse": {"fused": round(fit.risk, 10),
                         **{name: round(fits[(name,)].risk, 10) for name in names},
                         "subsets": {"+".join(k): round(f.risk, 10) for k, f in fits.items()}},
            **sole_component(list(chosen), fit.weights, classes, alone, whole=True),
            "fit_voxels": fit.fit_voxels,
            "probe": {"mode": "boxes", "boxes": len(boxes),
                      "inner_kji": [[w.stop - w.start for w in inner] for _, inner in boxes][0],
                      "seconds": round(probe.seconds, 2),
                      "projected_whole_volume_s": {name: round(c, 1) for name, c in costs.items()}}}
