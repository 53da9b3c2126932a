"""SURE fusion of the self-supervised network's estimates with non-local means and the observation.

Split from :mod:`._selfsup` (the network and its training); see that module's notes for why the fusion
exists. What is here: the Monte-Carlo SURE fit (:func:`sure_fusion`), the convex weights
(:func:`convex_sure_weights`) and the rule that falls back to the best single component when the fused
risk is not clearly lower (:data:`FUSION_MIN_GAIN`).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Optional

import numpy as np
from scipy import ndimage

from ...progress import CancelToken, check_cancel
from ._selfsup import _bbox

if TYPE_CHECKING:
    from ._selfsup import SelfSupSettings

__all__ = ["sure_fusion", "convex_sure_weights", "FUSION_MIN_GAIN"]


def sure_fusion(x: np.ndarray, s: float, *, rician: bool, foreground: np.ndarray, blind: np.ndarray, wiener,
                 wiener_now: np.ndarray, strength: float, seed: int, settings: SelfSupSettings,
                 cancel: Optional[CancelToken]) -> tuple[np.ndarray, dict]:
    """Combine the blind prediction, its Wiener fusion, non-local means and the observation by SURE.

    All arrays are in the normalised magnitude (or intensity) domain, noise standard deviation ``s``.
    The combination ``sum_i w_i f_i`` minimises Stein's unbiased risk estimate
    ``|z - f|^2 + 2 s^2 div f - N s^2``, a quadratic in ``w``: no clean image is needed. Divergences:
    0 for the blind prediction (J-invariant), 1 per voxel for the observation, and one random +-1
    probe (Monte-Carlo SURE) for non-local means and the Wiener fusion. Non-local means is local
    (radius patch/2 + distance), so its probe runs on a few thin slabs only, where the weights are
    fitted; one set of weights per class of local gradient of the blind prediction.
    For Rician data the observation and non-local means are first debiased (``sqrt(m^2 - s^2)``, the
    high-SNR correction) and only voxels above twice the noise are fitted, where the noise is close
    to Gaussian.
    """
    from ._classical import NLM_DEFAULTS

    started = time.perf_counter()
    variance = (float(strength) * s) ** 2
    influence = NLM_DEFAULTS["patch_size"] // 2 + NLM_DEFAULTS["patch_distance"]
    region = _bbox(foreground, margin=influence + 2)
    xr = np.ascontiguousarray(x[region])

    def debias(values: np.ndarray) -> np.ndarray:  # high-SNR Rician correction, identity otherwise
        return np.sqrt(np.maximum(values**2 - s * s, 0)) if rician else values

    nlm_now, nlm_div, fit, probe, eps = _nlm_with_divergences(xr, s=s, strength=strength, settings=settings,
                                                               influence=influence, seed=seed, debias=debias,
                                                               cancel=cancel)
    # the Wiener fusion is cheap: probe it on the whole volume, then crop
    full_probe = np.zeros(x.shape, np.float32)
    full_probe[region] = probe
    wiener_div = (full_probe * (wiener(x + eps * full_probe) - wiener_now) / eps)[region]
    del full_probe

    blind_r = blind[region]
    wiener_r = wiener_now[region]
    observed = debias(xr)
    components = [blind_r, wiener_r, *nlm_now, observed]
    names = ["blind", "wiener", *[f"nlm_h{h:g}" for h in settings.nlm_h_factors], "observed"]
    divergences = [None, wiener_div, *nlm_div, None]
    fit &= foreground[region]
    if rician:
        fit &= blind_r > 2 * s
    classes = _gradient_classes(blind_r, fit, settings=settings, components=len(components))

    def normal_equations(where: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
        """SURE(w) * n = w'Gw - 2 b'w + const over ``where``: (G, b, const, n)."""
        n = int(where.sum())
        design = np.stack([c[where].astype(np.float64) for c in components], axis=1)
        target = observed[where].astype(np.float64)
        div = np.array([0.0 if d is None else float(d[where].sum(dtype=np.float64)) for d in divergences])
        div[names.index("observed")] = n
        const = float(target @ target) - n * variance
        return design.T @ design, design.T @ target - variance * div, const, n

    estimate_r, weights, risks = _fit_by_class(components, classes, fit, normal_equations,
                                               min_voxels=200 * len(components))
    chosen = _fallback_choice(risks, names)
    if chosen["fallback"] is not None:
        single = names.index(chosen["fallback"])
        estimate_r = np.asarray(components[single], np.float32).copy()
    estimate = wiener_now.copy()  # outside the foreground's box: background, the Wiener estimate
    estimate[region] = estimate_r
    info = {"components": names, "weights_by_gradient_class": [[round(float(v), 4) for v in weights[k]] for k in sorted(weights)],
            "weights_constraint": "non-negative, summing to 1 (a convex combination of the components)",
            **chosen, "fit_voxels": int(fit.sum()), "nlm_h_factors": list(settings.nlm_h_factors),
            "seconds": round(time.perf_counter() - started, 2)}
    return estimate, info


def _nlm_with_divergences(xr: np.ndarray, *, s: float, strength: float, settings, influence: int, seed: int,
                          debias, cancel: Optional[CancelToken]):
    """Non-local means at each ``h`` factor, and its Monte-Carlo divergence on a few thin slabs along axis 0.

    Returns (estimates, divergences, the fitted voxels, the +-1 probe, its step): the probe is shared with the
    Wiener fusion's divergence.
    """
    from ._classical import denoise_nlm

    def nlm(values: np.ndarray, h_factor: float) -> np.ndarray:
        return debias(denoise_nlm(values, sigma=s, strength=strength, h_factor=h_factor)[0])

    nlm_now = []
    for h_factor in settings.nlm_h_factors:
        check_cancel(cancel)
        nlm_now.append(nlm(xr, h_factor))
    depth = xr.shape[0]
    thickness = settings.sure_block_slices
    if depth <= settings.sure_blocks * (thickness + 2 * influence):
        blocks = [(0, depth)]
    else:
        centres = np.linspace(influence + thickness / 2, depth - influence - thickness / 2, settings.sure_blocks)
        blocks = [(int(c - thickness / 2), int(c - thickness / 2) + thickness) for c in centres]
    rng = np.random.default_rng(seed + 7919)
    probe = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=xr.shape)
    eps = np.float32(0.05 * s)
    nlm_div = [np.zeros(xr.shape, np.float32) for _ in settings.nlm_h_factors]
    fit = np.zeros(xr.shape, bool)
    for a, b in blocks:
        a0, b0 = max(0, a - influence), min(depth, b + influence)
        for h_factor, now, div in zip(settings.nlm_h_factors, nlm_now, nlm_div):
            check_cancel(cancel)
            moved = nlm(xr[a0:b0] + eps * probe[a0:b0], h_factor)[a - a0:b - a0]
            div[a:b] = probe[a:b] * (moved - now[a:b]) / eps
        fit[a:b] = True
    return nlm_now, nlm_div, fit, probe, eps


def _gradient_classes(blind: np.ndarray, fit: np.ndarray, *, settings, components: int) -> np.ndarray:
    """One class per quantile band of the blind prediction's local gradient (0 everywhere when too few voxels)."""
    smooth = ndimage.gaussian_filter(blind, 1.0)
    gradient = np.sqrt(sum(g**2 for g in np.gradient(smooth)))
    classes = np.zeros(blind.shape, np.int8)
    if fit.sum() >= settings.sure_classes * 200 * components:
        edges = np.quantile(gradient[fit], np.linspace(0, 1, settings.sure_classes + 1)[1:-1])
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


def _fit_by_class(components, classes, fit, normal_equations, *, min_voxels: int):
    """Convex SURE weights per gradient class (the global fit where a class has too few voxels).

    Returns the combined estimate, the weights by class, and per class the SURE totals of the fused
    estimate and of every single component (``{"n", "fused", "single": [...]}``).
    """
    count = len(components)
    if fit.any():
        gram, linear, _, _ = normal_equations(fit)
        global_weights = convex_sure_weights(gram, linear)
    else:  # nothing to fit: the Wiener estimate
        global_weights = np.eye(count)[1]
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
