"""SURE's convex weights: fitting them per class of local gradient, and naming a component that carries them all.

Shared by the whole-volume fit (:mod:`._sure`) and the probe-box fit (:mod:`._sure_boxes`).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = ["convex_sure_weights", "sole_component", "FUSION_MIN_GAIN", "OUTSIDE_THE_BOX"]

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
