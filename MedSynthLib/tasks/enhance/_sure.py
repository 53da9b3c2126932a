"""SURE fusion: training-free denoisers (collaborative filtering, sliding DCT, non-local means), optionally the
self-supervised network.

What is here: the Monte-Carlo SURE fit (:func:`sure_fusion`), the convex weights (:func:`convex_sure_weights`)
and the rule that falls back to the best single component when the fused risk is not clearly lower
(:data:`FUSION_MIN_GAIN`). :func:`denoise_fusion` is the ``fusion`` method (the CPU default of ``auto``);
:mod:`._selfsup` adds its network's two estimates to the same components.

Where the weights are fitted: on a small volume every component runs on the whole volume and its divergence is
probed on a few slabs; on a whole scan (when the probes are less work than one whole-volume run) every component
runs on a few probe boxes (:func:`probe_boxes`), SURE is fitted there for every subset of components, and only
the subset :func:`choose_components` picks (the cheapest within :data:`FUSION_MIN_GAIN` of the best risk, by the
cost measured on the boxes, within the time budget) is computed on the whole volume. Before, the whole lung1 CT
took 12:47 for six whole-volume runs and used the DCT alone.

Why fuse: block-matching collaborative filtering (:mod:`._collaborative`), the sliding-DCT Wiener filter
(:mod:`._dct`) and non-local means fail in different places (the block filters keep fine texture and ring at
sharp edges, non-local means flattens texture and keeps repeated edges), and SURE picks the mixture per class of
local gradient. SURE needs only the noisy data and sigma: the clean image is never used, so nothing is tuned on
the scan being scored. On the benchmark crops the collaborative filter carried 0.87-1.0 of the weight;
the others add up to 0.1 dB where they help (lung CT, the MNI template).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from ...budget import TimeBudget
from ...noise import rician_debias
from ...progress import CancelToken, ProgressCallback, check_cancel, report, subrange

__all__ = ["sure_fusion", "denoise_fusion", "convex_sure_weights", "sole_component", "choose_components",
           "probe_boxes", "FusionSettings", "DEFAULT_SETTINGS", "FUSION_MIN_GAIN", "OUTSIDE_THE_BOX"]


@dataclass(frozen=True)
class FusionSettings:
    """Which training-free components are fused and where SURE is fitted.

    ``collaborative``: block-matching collaborative filtering (:mod:`._collaborative`, its defaults);
    ``dct_blocks``: (patch, step) of each sliding-DCT component; ``nlm_h_factors``: non-local means strengths
    (times sigma). One set of weights per ``classes`` quantile classes of the local gradient.

    Where SURE is fitted (``probe``): ``"whole"`` computes every component on the whole volume and probes the
    divergences on ``blocks`` slabs of ``block_slices`` slices along axis 0 (the benchmark's crops);
    ``"boxes"`` fits the weights on ``probe_boxes`` sub-volumes of about ``probe_edge^3`` voxels (shaped by the
    voxel size like the blocks, spread over the foreground) and then computes on the whole volume only the
    components the fit needs (:func:`choose_components`); ``"auto"`` takes the boxes when their two runs (the
    estimate and its probe) are less work than one whole-volume run, i.e. on whole scans.
    """

    collaborative: bool = True
    dct_blocks: tuple[tuple[int, int], ...] = ((8, 3),)
    nlm_h_factors: tuple[float, ...] = (0.5,)
    blocks: int = 3
    block_slices: int = 10
    classes: int = 4
    probe: str = "auto"
    probe_boxes: int = 6
    probe_edge: int = 24


#: The settings ``fusion`` (and ``auto`` on a CPU) runs with.
DEFAULT_SETTINGS = FusionSettings()


@dataclass(frozen=True)
class NetworkEstimates:
    """The self-supervised network's part of the fusion (whole-volume arrays, magnitude domain).

    ``wiener`` recomputes the Wiener fusion for a perturbed observation (its divergence is probed on the whole
    volume: it is cheap); the blind prediction's divergence is 0 exactly (J-invariance).
    """

    blind: np.ndarray
    wiener_now: np.ndarray
    wiener: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Component:
    name: str
    estimate: np.ndarray
    divergence: Optional[np.ndarray]  # None: 0 exactly


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    where = np.nonzero(mask.any(axis=(1, 2))), np.nonzero(mask.any(axis=(0, 2))), np.nonzero(mask.any(axis=(0, 1)))
    return tuple(
        slice(max(0, int(w[0][0]) - margin), min(n, int(w[0][-1]) + 1 + margin)) for w, n in zip(where, mask.shape)
    )


def block_knobs(settings: FusionSettings, spacing: Optional[tuple[float, float, float]]) -> dict[str, dict]:
    """Block shape, stride (and search box) of each block-filter component, shaped by ``spacing`` (mm, array
    order; :func:`._dct.block_shape`): the published cube settings on an isotropic grid."""
    from ._collaborative import COLLABORATIVE_DEFAULTS
    from ._dct import search_box, shaped_blocks

    knobs = {}
    if settings.collaborative:
        edge = COLLABORATIVE_DEFAULTS["patch"]
        blocks = shaped_blocks(spacing, edge=edge, step=COLLABORATIVE_DEFAULTS["step"])
        knobs["collaborative"] = {**blocks, "search": search_box(COLLABORATIVE_DEFAULTS["search"], blocks["patch"],
                                                                 edge=edge)}
    for patch, step in settings.dct_blocks:
        knobs[f"dct_p{patch}"] = shaped_blocks(spacing, edge=patch, step=step)
    return knobs


@dataclass(frozen=True)
class _Smoother:
    """One training-free component: ``make()`` returns the estimator (a function of the observation; a new one per
    sub-volume, so that the collaborative filter's held groups belong to one array), its influence radius in voxels
    (``reach``: along axis 0, along any axis: where the result is exactly the whole volume's) and ``margin`` (per
    axis, one stage's reach: enough context around a probe box for its inner values to be the whole volume's but
    for the second stage's faint echo)."""

    name: str
    make: Callable[[], Callable[[np.ndarray], np.ndarray]]
    reach: tuple[int, int]
    margin: tuple[int, int, int]


def _smoothers(s: float, strength: float, settings: FusionSettings, blocks: dict[str, dict]) -> list[_Smoother]:
    """Every training-free component, the block filters set by ``blocks`` (:func:`block_knobs`)."""
    from ._classical import NLM_DEFAULTS, denoise_nlm
    from ._collaborative import collaborative_influence, denoise_collaborative
    from ._dct import as_triple, dct_influence, denoise_dct

    out = []
    for name, knobs in blocks.items():
        patch = as_triple(knobs["patch"], "patch")
        if name == "collaborative":
            def make(k=knobs):
                matches: dict = {}  # the groups of the first run, held for the probe run of the same shape
                return lambda v: denoise_collaborative(v, sigma=s, strength=strength, matches=matches, **k)[0]

            search = as_triple(knobs["search"], "search")
            out.append(_Smoother(name, make, tuple(collaborative_influence(knobs["patch"], knobs["search"], axis=a)
                                                   for a in (0, None)),
                                 tuple(r + p - 1 for r, p in zip(search, patch))))
        else:
            out.append(_Smoother(name, lambda k=knobs: (lambda v: denoise_dct(v, sigma=s, strength=strength, **k)[0]),
                                 tuple(dct_influence(knobs["patch"], axis=a) for a in (0, None)),
                                 tuple(p - 1 for p in patch)))
    nlm_reach = NLM_DEFAULTS["patch_size"] // 2 + NLM_DEFAULTS["patch_distance"]
    for h in settings.nlm_h_factors:
        out.append(_Smoother(f"nlm_h{h:g}",
                             lambda f=h: (lambda v: denoise_nlm(v, sigma=s, strength=strength, h_factor=f)[0]),
                             (nlm_reach, nlm_reach), (nlm_reach,) * 3))
    return out


def _probe_slabs(depth: int, settings: FusionSettings) -> list[tuple[int, int]]:
    """The slabs along axis 0 where the divergences are probed and SURE is fitted: ``blocks`` slabs of
    ``block_slices`` slices spread over the depth (the whole depth when that is not more)."""
    thickness = settings.block_slices
    if depth <= settings.blocks * thickness:
        return [(0, depth)]
    centres = np.linspace(thickness / 2, depth - thickness / 2, settings.blocks)
    return [(int(round(c - thickness / 2)), int(round(c - thickness / 2)) + thickness) for c in centres]


def _divergence(run, debias, xr: np.ndarray, now: np.ndarray, probe: np.ndarray, eps: float,
                slabs: list[tuple[int, int]], reach: int) -> np.ndarray:
    """Monte-Carlo divergence of one local estimator on ``slabs``: each slab plus a margin of ``reach`` (the
    estimator's influence; clipped at the volume's ends, where the whole volume ends too) gives the whole
    volume's values there; one whole-volume run when that is not more work."""
    depth = xr.shape[0]
    divergence = np.zeros(xr.shape, np.float32)
    margins = [(max(0, a - reach), min(depth, b + reach)) for a, b in slabs]
    if sum(b0 - a0 for a0, b0 in margins) >= depth:
        margins = [(0, depth)] * len(slabs)
        moved_all = debias(run(xr + eps * probe))
    for (a, b), (a0, b0) in zip(slabs, margins):
        if (a0, b0) == (0, depth):
            moved = moved_all[a:b]
        else:
            moved = debias(run(xr[a0:b0] + eps * probe[a0:b0]))[a - a0:b - a0]
        divergence[a:b] = probe[a:b] * (moved - now[a:b]) / eps
    return divergence


def _smoother_components(xr: np.ndarray, smoothers: list, *, s: float, settings: FusionSettings, seed: int,
                         debias, cancel: Optional[CancelToken], budget: Optional[TimeBudget] = None,
                         progress: Optional[ProgressCallback] = None):
    """Every estimate of ``smoothers`` (:func:`_smoothers`) on ``xr``, and its Monte-Carlo divergence on a few thin
    slabs along axis 0.

    All of them are local (:func:`_smoothers` gives each one's reach), so a slab plus a margin of that reach
    gives the same values there as the whole volume. Returns (components, the fitted voxels, the +-1 probe,
    its step): the probe is shared with the network's Wiener fusion. The components come in the order of their
    weight in the benchmark's fusions; once ``budget`` has run out, the rest are skipped (the first always runs)
    and the budget's report says which. Progress is reported as each component starts and its divergence is
    probed, so a long component shows where the run is instead of a bar that stays at its first step.
    """
    rng = np.random.default_rng(seed + 7919)
    probe = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=xr.shape)
    eps = np.float32(0.05 * s)
    slabs = _probe_slabs(xr.shape[0], settings)
    fit = np.zeros(xr.shape, bool)
    for a, b in slabs:
        fit[a:b] = True
    components = []
    for index, smoother in enumerate(smoothers):
        name, run, reach = smoother.name, smoother.make(), smoother.reach
        check_cancel(cancel)
        if index and budget is not None and budget.expired():
            budget.cut(f"fusion: the time budget ran out, {', '.join(m.name for m in smoothers[index:])} skipped")
            break
        report(progress, 0.9 * index / len(smoothers), f"fusion: {name} ({index + 1} of {len(smoothers)})")
        now = debias(run(xr))
        check_cancel(cancel)
        report(progress, 0.9 * (index + 0.6) / len(smoothers), f"fusion: {name}, probing its divergence")
        components.append(_Component(name, now, _divergence(run, debias, xr, now, probe, eps, slabs, reach[0])))
    report(progress, 0.9, "fusion: SURE weights")
    return components, fit, probe, eps


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


def _probe_mode(settings: FusionSettings, shape: tuple[int, ...], boxes: list[Box]) -> str:
    if settings.probe != "auto":
        return settings.probe
    work = sum(math.prod(o.stop - o.start for o in outer) for outer, _ in boxes)
    return "boxes" if 2 * work < math.prod(shape) else "whole"


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


def _probe_on_boxes(x: np.ndarray, smoothers: list[_Smoother], boxes: list[Box], *, s: float, seed: int, debias,
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
                settings: FusionSettings) -> _SubsetFit:
    """Convex SURE weights of ``members`` per gradient class (of the first member's estimate) on the boxes."""
    guide = probe.estimates[members[0]]
    fit = probe.foreground.copy()
    if rician:
        fit &= guide > 2 * s
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


def _box_fusion(x: np.ndarray, s: float, smoothers: list[_Smoother], boxes: list[Box], *, rician: bool,
                foreground: np.ndarray, strength: float, seed: int, settings: FusionSettings,
                budget: Optional[TimeBudget], cancel: Optional[CancelToken],
                progress: Optional[ProgressCallback]) -> tuple[np.ndarray, dict]:
    """The fusion fitted on probe boxes: every component on the boxes, SURE for every subset of them, then only
    the chosen subset (:func:`choose_components`) computed on the whole volume and combined with its weights."""
    variance = (float(strength) * s) ** 2

    def debias(values: np.ndarray) -> np.ndarray:
        return rician_debias(values, s) if rician else values

    box_work = 2 * len(smoothers) * sum(math.prod(o.stop - o.start for o in outer) for outer, _ in boxes)
    probing = box_work / (box_work + x.size)  # the probes' share of the bar, by voxel work; the rest by measure
    probe = _probe_on_boxes(x, smoothers, boxes, s=s, seed=seed, debias=debias, foreground=foreground,
                            budget=budget, cancel=cancel, progress=subrange(progress, 0.0, probing))
    names = probe.names
    fits = {tuple(names[i] for i in members): _fit_subset(probe, members, s=s, variance=variance, rician=rician,
                                                          settings=settings)
            for size in range(1, len(names) + 1) for members in itertools.combinations(range(len(names)), size)}
    costs = {name: rate * x.size for name, rate in zip(names, probe.seconds_per_voxel)}
    left = math.inf if budget is None else budget.remaining() / (1 + COMBINE_RESERVE)
    chosen, why, cut = choose_components({k: f.risk for k, f in fits.items()}, costs, seconds_left=left)
    if cut:
        budget.cut(f"fusion: {why}")
    fit = fits[chosen]
    total = sum(costs[name] for name in chosen)
    done = 0.0
    arrays = []
    for name in chosen:
        check_cancel(cancel)
        start = probing + (1 - probing) * 0.95 * done / total
        stop = probing + (1 - probing) * 0.95 * (done + costs[name]) / total
        report(progress, start, f"fusion: {name} on the whole volume (about {costs[name]:.0f} s of {total:.0f} s, "
                                f"measured on the probes)")
        run = smoothers[[m.name for m in smoothers].index(name)].make()
        arrays.append(debias(run(x)))
        done += costs[name]
        report(progress, stop, f"fusion: {name} done")
    if len(arrays) == 1:
        estimate = np.asarray(arrays[0], np.float32)
        classes = np.zeros(x.shape, np.int8)
    else:
        report(progress, probing + (1 - probing) * 0.95, "fusion: combining with the SURE weights")
        classes = (np.digitize(_gradient(arrays[0]), fit.edges).astype(np.int8) if fit.edges is not None
                   else np.zeros(x.shape, np.int8))
        estimate = np.zeros(x.shape, np.float32)
        for k, w in fit.weights.items():
            members = classes == k
            estimate[members] = sum(float(wi) * a[members] for wi, a in zip(w, arrays))
    best_single = min(fits[(name,)].risk for name in names)
    single_best = [name for name in names if fits[(name,)].risk == best_single][0]
    alone = chosen[0] if len(chosen) == 1 else None
    info = {"components": list(names), "whole_volume_components": list(chosen),
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
    return estimate, info


def sure_fusion(x: np.ndarray, s: float, *, rician: bool, foreground: np.ndarray, strength: float, seed: int,
                settings: Optional[FusionSettings] = None, network: Optional[NetworkEstimates] = None,
                spacing: Optional[tuple[float, float, float]] = None, budget: Optional[TimeBudget] = None,
                cancel: Optional[CancelToken] = None, progress: Optional[ProgressCallback] = None
                ) -> tuple[np.ndarray, dict]:
    """The convex SURE-weighted combination of the training-free estimates (and the network's, when given).

    All arrays are in the magnitude (or intensity) domain with noise standard deviation ``s``. The weights
    minimise Stein's unbiased risk estimate ``|z - f|^2 + 2 s^2 div f - N s^2`` (a quadratic in ``w``), one
    set per class of local gradient; divergences: 0 for the blind prediction, one random +-1 probe
    (Monte-Carlo SURE) for the others. For Rician data every estimate is debiased first (``sqrt(m^2 - s^2)``,
    the high-SNR correction) and only voxels above twice the noise are fitted, where magnitude noise is
    close to Gaussian. The observation itself is not a component: with sigma from a conservative estimate
    (a little low), SURE under-charges it and gave it up to 0.32 of the weight on a whole head at 9 %
    (28.3 dB, where the DCT component alone had 31.9); the network's Wiener estimate already returns to the
    observation where that is right.

    Without the network, on a volume where the probe boxes are less work than one whole-volume run
    (``settings.probe``), the fit is made on the boxes and only the chosen components run on the whole volume
    (:func:`_box_fusion`); with ``budget``, what would not fit what is left is left out.
    """
    from ._dct import block_shape

    started = time.perf_counter()
    settings = DEFAULT_SETTINGS if settings is None else settings
    variance = (float(strength) * s) ** 2
    blocks = block_knobs(settings, spacing)
    smoothers = _smoothers(s, strength, settings, blocks)
    described = {"dct_blocks": [list(b) for b in settings.dct_blocks],
                 "spacing": None if spacing is None else [round(float(v), 4) for v in spacing],
                 "blocks": {name: {key: list(value) for key, value in knobs.items()} for name, knobs in blocks.items()},
                 "nlm_h_factors": list(settings.nlm_h_factors)}
    if network is None:
        margin = tuple(max(m.margin[a] for m in smoothers) for a in range(3))
        boxes = probe_boxes(x.shape, foreground, inner=block_shape(spacing, edge=settings.probe_edge), margin=margin,
                            count=settings.probe_boxes)
        if _probe_mode(settings, x.shape, boxes) == "boxes":
            estimate, info = _box_fusion(x, s, smoothers, boxes, rician=rician, foreground=foreground,
                                         strength=strength, seed=seed, settings=settings, budget=budget,
                                         cancel=cancel, progress=progress)
            return estimate, {**info, **described, "seconds": round(time.perf_counter() - started, 2)}
    region = (_bbox(foreground, margin=max(m.reach[1] for m in smoothers) + 2)
              if network is not None else tuple(slice(0, n) for n in x.shape))
    xr = np.ascontiguousarray(x[region])

    def debias(values: np.ndarray) -> np.ndarray:  # high-SNR Rician correction, identity otherwise
        return rician_debias(values, s) if rician else values

    components, fit, probe, eps = _smoother_components(xr, smoothers, s=s, settings=settings, seed=seed,
                                                      debias=debias, cancel=cancel, budget=budget, progress=progress)
    guide = components[0].estimate
    if network is not None:
        full_probe = np.zeros(x.shape, np.float32)
        full_probe[region] = probe
        wiener_div = (full_probe * (network.wiener(x + eps * full_probe) - network.wiener_now) / eps)[region]
        del full_probe
        guide = network.blind[region]
        components = [_Component("blind", guide, None), _Component("wiener", network.wiener_now[region], wiener_div),
                      *components]
    observed = debias(xr)
    fit &= foreground[region]
    if rician:
        fit &= guide > 2 * s
    names = [c.name for c in components]
    arrays = [c.estimate for c in components]
    classes = _gradient_classes(guide, fit, settings=settings, components=len(components))

    def normal_equations(where: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
        """SURE(w) * n = w'Gw - 2 b'w + const over ``where``: (G, b, const, n)."""
        n = int(where.sum())
        design = np.stack([a[where].astype(np.float64) for a in arrays], axis=1)
        target = observed[where].astype(np.float64)
        div = np.array([0.0 if c.divergence is None else float(c.divergence[where].sum(dtype=np.float64))
                        for c in components])
        const = float(target @ target) - n * variance
        return design.T @ design, design.T @ target - variance * div, const, n

    estimate_r, weights, risks = _fit_by_class(arrays, classes, fit, normal_equations,
                                               min_voxels=200 * len(components), default=1 if network else 0)
    chosen = _fallback_choice(risks, names)
    if chosen["fallback"] is not None:
        estimate_r = np.asarray(arrays[names.index(chosen["fallback"])], np.float32).copy()
    if network is not None:
        estimate = network.wiener_now.copy()  # outside the foreground's box: background, the Wiener estimate
        estimate[region] = estimate_r
    else:
        estimate = estimate_r
    whole = all(part == slice(0, n) for part, n in zip(region, x.shape))
    info = {"components": names,
            "weights_by_gradient_class": [[round(float(v), 4) for v in weights[k]] for k in sorted(weights)],
            "weights_constraint": "non-negative, summing to 1 (a convex combination of the components)",
            **chosen, **sole_component(names, weights, classes, chosen["fallback"], whole=whole),
            "fit_voxels": int(fit.sum()), "probe": {"mode": "whole"}, **described,
            "seconds": round(time.perf_counter() - started, 2)}
    return estimate, info


#: What the report says about the voxels outside the foreground's box of a fusion with the network (they are
#: the network's Wiener estimate).
OUTSIDE_THE_BOX = "inside the foreground's box; the network's Wiener estimate outside it"


def sole_component(names: list[str], weights: dict, classes: np.ndarray, fallback: Optional[str], *,
                   whole: bool) -> dict:
    """``{"sole_component": name or None, "sole_component_where": ...}``: the one component that produced every
    fused voxel, when there is one (the fallback to the best single component, or weights that put everything on
    the same component in every gradient class present), so the report can name what made the voxels.

    ``whole``: the fusion covered the whole array (without the network it always does; with it, the foreground's
    box, and the Wiener estimate outside: :data:`OUTSIDE_THE_BOX`).
    """
    name = fallback
    if name is None:
        winners = set()
        for k in np.unique(classes):
            w = np.asarray(weights[int(k)], dtype=np.float64)
            top = int(np.argmax(w))
            winners.add(top if w[top] >= 1.0 - 1e-9 else -1)  # -1: a class with a true mixture
        name = names[winners.pop()] if len(winners) == 1 and -1 not in winners else None
    if name is None:
        return {"sole_component": None}
    return {"sole_component": name, "sole_component_where": "every voxel" if whole else OUTSIDE_THE_BOX}


def denoise_fusion(array: np.ndarray, *, sigma: float, rician: bool, foreground: np.ndarray, strength: float = 1.0,
                   seed: int = 0, settings: Optional[FusionSettings] = None,
                   spacing: Optional[tuple[float, float, float]] = None, budget: Optional[TimeBudget] = None,
                   cancel: Optional[CancelToken] = None, progress: Optional[ProgressCallback] = None
                   ) -> tuple[np.ndarray, dict]:
    """The ``fusion`` method: the components of ``settings`` (collaborative filtering, sliding DCT, non-local
    means), SURE-weighted (no training, no network); ``spacing`` (mm, array order) shapes the blocks. Returns
    the float32 estimate and the fusion's report."""
    estimate, info = sure_fusion(np.asarray(array, np.float32), float(sigma), rician=rician, foreground=foreground,
                                 strength=strength, seed=seed, settings=settings, spacing=spacing, budget=budget,
                                 cancel=cancel, progress=progress)
    return np.asarray(estimate, np.float32), {"fusion": info, "noise_model": "rician" if rician else "gaussian"}


def _gradient_classes(blind: np.ndarray, fit: np.ndarray, *, settings, components: int) -> np.ndarray:
    """One class per quantile band of the blind prediction's local gradient (0 everywhere when too few voxels)."""
    smooth = ndimage.gaussian_filter(blind, 1.0)
    gradient = np.sqrt(sum(g**2 for g in np.gradient(smooth)))
    classes = np.zeros(blind.shape, np.int8)
    if fit.sum() >= settings.classes * 200 * components:
        edges = np.quantile(gradient[fit], np.linspace(0, 1, settings.classes + 1)[1:-1])
        classes = np.digitize(gradient, edges).astype(np.int8)
    return classes


def convex_sure_weights(gram: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """The weights minimising ``w'Gw - 2 b'w`` with ``w >= 0`` and ``sum(w) == 1``, exactly.

    Why constrained: unconstrained SURE weights extrapolate (``+1.84, -0.74, -0.49`` on a whole-head scan at
    9 % noise, 1.3 dB above the noisy input and 3 dB below plain non-local means), because the Monte-Carlo
    divergences and the Rician debiasing make the risk estimate wrong in directions no single component goes.
    A convex combination can never be worse than its worst component and is judged where SURE is reliable.
    Few components (five): every support set is solved in closed form (KKT) and the best feasible one kept.
    """
    count = len(linear)
    gram = gram + 1e-9 * max(float(np.trace(gram)), 1e-30) / count * np.eye(count)
    best, best_risk = np.eye(count)[int(np.argmin(np.diag(gram) - 2 * linear))], math.inf
    for bits in range(1, 2**count):
        support = [i for i in range(count) if bits >> i & 1]
        g, b, ones = gram[np.ix_(support, support)], linear[support], np.ones(len(support))
        try:
            u, v = np.linalg.solve(g, b), np.linalg.solve(g, ones)
        except np.linalg.LinAlgError:
            continue
        if abs(float(ones @ v)) < 1e-30:
            continue
        w_support = u + (1.0 - float(ones @ u)) / float(ones @ v) * v
        if np.any(w_support < -1e-12):
            continue
        w = np.zeros(count)
        w[support] = np.maximum(w_support, 0.0)
        w /= w.sum()
        risk = float(w @ gram @ w - 2 * linear @ w)
        if risk < best_risk:
            best, best_risk = w, risk
    return best


def _fit_by_class(components, classes, fit, normal_equations, *, min_voxels: int, default: int):
    """Convex SURE weights per gradient class (the global fit where a class has too few voxels).

    Returns the combined estimate, the weights by class, and per class the SURE totals of the fused
    estimate and of every single component (``{"n", "fused", "single": [...]}``).
    """
    count = len(components)
    if fit.any():
        gram, linear, _, _ = normal_equations(fit)
        global_weights = convex_sure_weights(gram, linear)
    else:  # nothing to fit: the ``default`` component (the network's Wiener estimate, or the DCT's)
        global_weights = np.eye(count)[default]
    estimate = np.zeros(components[0].shape, np.float32)
    weights, risks = {}, []
    for k in range(int(classes.max()) + 1):
        where = fit & (classes == k)
        system = normal_equations(where) if where.any() else None
        w = convex_sure_weights(system[0], system[1]) if system is not None and system[3] >= min_voxels else global_weights
        weights[k] = w
        members = classes == k
        estimate[members] = sum(float(wi) * c[members] for wi, c in zip(w, components))
        if system is not None:
            gram, linear, const, n = system
            risks.append({"n": n, "fused": float(w @ gram @ w - 2 * linear @ w + const),
                          "single": [float(gram[i, i] - 2 * linear[i] + const) for i in range(count)]})
    return estimate, weights, risks


#: The fusion must beat its best single component's estimated risk by this fraction to be used.
FUSION_MIN_GAIN = 0.01


def _fallback_choice(risks: list, names: list) -> dict:
    """Compare the fused SURE risk with each single component's; fall back to the best single one unless the
    fusion is better by :data:`FUSION_MIN_GAIN` (SURE's own scatter: smaller gains are not evidence)."""
    n = sum(r["n"] for r in risks)
    if not n:
        return {"fallback": None, "sure_mse": None, "why": "no voxels to judge the fusion on; fused weights used"}
    fused = sum(r["fused"] for r in risks) / n
    single = [sum(r["single"][i] for r in risks) / n for i in range(len(names))]
    best = int(np.argmin(single))
    summary = {"sure_mse": {"fused": round(fused, 10), **{name: round(v, 10) for name, v in zip(names, single)}},
               "best_single": names[best]}
    if fused < single[best] - FUSION_MIN_GAIN * abs(single[best]):
        if fused > 0 and single[best] > 0:
            why = f"fusion's estimated risk is {10 * math.log10(single[best] / fused):.2f} dB below its best single " \
                  f"component's ({names[best]})"
        else:  # SURE is an unbiased but noisy estimate: a small risk can come out at or below zero
            why = f"fusion's estimated risk ({fused:.3g}, at or below SURE's resolution) is below its best single " \
                  f"component's ({names[best]}, {single[best]:.3g})"
        return {"fallback": None, **summary, "why": why}
    return {"fallback": names[best], **summary,
            "why": f"fusion's estimated risk ({fused:.3g}) is not {FUSION_MIN_GAIN:.0%} better than its best single "
                   f"component's ({names[best]}, {single[best]:.3g}): that component alone was used"}
