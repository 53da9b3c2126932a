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

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from ...budget import TimeBudget
from ...noise import magnitude_debias
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from ._sure_boxes import Box, box_fusion, choose_components, probe_boxes
from ._sure_weights import FUSION_MIN_GAIN, OUTSIDE_THE_BOX, _fit_by_class, convex_sure_weights, sole_component

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


def _probe_mode(settings: FusionSettings, shape: tuple[int, ...], boxes: list[Box]) -> str:
    if settings.probe != "auto":
        return settings.probe
    work = sum(math.prod(o.stop - o.start for o in outer) for outer, _ in boxes)
    return "boxes" if 2 * work < math.prod(shape) else "whole"



def sure_fusion(x: np.ndarray, s: float, *, rician: bool, foreground: np.ndarray, strength: float, seed: int,
                coils: float = 1.0, settings: Optional[FusionSettings] = None, network: Optional[NetworkEstimates] = None,
                spacing: Optional[tuple[float, float, float]] = None, budget: Optional[TimeBudget] = None,
                cancel: Optional[CancelToken] = None, progress: Optional[ProgressCallback] = None
                ) -> tuple[np.ndarray, dict]:
    """The convex SURE-weighted combination of the training-free estimates (and the network's, when given).

    All arrays are in the magnitude (or intensity) domain with noise standard deviation ``s``. The weights
    minimise Stein's unbiased risk estimate ``|z - f|^2 + 2 s^2 div f - N s^2`` (a quadratic in ``w``), one
    set per class of local gradient; divergences: 0 for the blind prediction, one random +-1 probe
    (Monte-Carlo SURE) for the others. For Rician data every estimate is debiased first (``sqrt(m^2 - s^2)``,
    the high-SNR correction; ``sqrt(m^2 - (2N - 1) s^2)`` for non-central chi of ``coils`` N,
    :func:`~MedSynthLib.noise.magnitude_debias`) and only voxels above twice the noise (``2 s sqrt(N)``: the
    air's level grows as ``sqrt(2N)``) are fitted, where magnitude noise is close to Gaussian. The observation itself is not a component: with sigma from a conservative estimate
    (a little low), SURE under-charges it and gave it up to 0.32 of the weight on a whole head at 9 %
    (28.3 dB, where the DCT component alone had 31.9); the network's Wiener estimate already returns to the
    observation where that is right.

    Without the network, on a volume where the probe boxes are less work than one whole-volume run
    (``settings.probe``), the fit is made on the boxes and only the chosen components run on the whole volume
    (:func:`._sure_boxes.box_fusion`); with ``budget``, what would not fit what is left is left out.
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
            estimate, info = box_fusion(x, s, smoothers, boxes, rician=rician, coils=coils, foreground=foreground,
                                         strength=strength, seed=seed, settings=settings, budget=budget,
                                         cancel=cancel, progress=progress)
            return estimate, {**info, **described, "seconds": round(time.perf_counter() - started, 2)}
    region = (_bbox(foreground, margin=max(m.reach[1] for m in smoothers) + 2)
              if network is not None else tuple(slice(0, n) for n in x.shape))
    xr = np.ascontiguousarray(x[region])

    def debias(values: np.ndarray) -> np.ndarray:  # high-SNR Rician correction, identity otherwise
        return magnitude_debias(values, s, coils) if rician else values

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
        fit &= guide > 2 * s * math.sqrt(coils)
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


def denoise_fusion(array: np.ndarray, *, sigma: float, rician: bool, foreground: np.ndarray, strength: float = 1.0,
                   seed: int = 0, coils: float = 1.0, settings: Optional[FusionSettings] = None,
                   spacing: Optional[tuple[float, float, float]] = None, budget: Optional[TimeBudget] = None,
                   cancel: Optional[CancelToken] = None, progress: Optional[ProgressCallback] = None
                   ) -> tuple[np.ndarray, dict]:
    """The ``fusion`` method: the components of ``settings`` (collaborative filtering, sliding DCT, non-local
    means), SURE-weighted (no training, no network); ``spacing`` (mm, array order) shapes the blocks. Returns
    the float32 estimate and the fusion's report."""
    estimate, info = sure_fusion(np.asarray(array, np.float32), float(sigma), rician=rician, foreground=foreground,
                                 strength=strength, seed=seed, coils=coils, settings=settings, spacing=spacing, budget=budget,
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
