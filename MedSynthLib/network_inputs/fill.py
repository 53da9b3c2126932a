"""The one definition of what a fill network sees and what it predicts.

Used by :func:`MedSynthLib.tasks.fill.fill_slices` (``method="model"``) at
inference and by the training pipeline when it makes (input, target) pairs,
so a trained package and the task can never disagree about channels, order,
normalisation or output convention.

Convention (``FILL_INPUT_SPEC``, stored as a package's ``"input"`` field):

* Intensities are normalised by :func:`MedSynthLib.intensity.robust_scale`
  with percentiles ``(0.5, 99.5)`` over the volume's *good* slices, so 0 is
  about the background and 1 about the brightest tissue.
* A missing slice at fractional position ``t`` in (0, 1) between the nearest
  good slice before it (``before[:, 0]``) and after it (``after[:, 0]``) is
  described by ``context`` good slices on each side, nearest first. Where a
  side has fewer good slices, the farthest available one is repeated.
* Network input, shape (N, 4 * context - 1, H, W) float32, channels in this
  order: ``before_0 .. before_{context-1}, after_0 .. after_{context-1}, t``,
  then the *offsets* ``before_1 .. before_{context-1}, after_1 ..
  after_{context-1}``: each constant plane holds how far that slice lies
  beyond the nearest one on its side, in units of the gap (0 where a slice is
  repeated at the end of the volume).
* Why the offsets (version 2): the slices beyond a gap are 1 slice apart
  around an isolated missing slice or a slab, but a whole gap apart when every
  second (x2) or three of every four (x4) slices are missing. A network that
  cannot tell them apart learns one spacing and extrapolates wrongly at the
  other: version 1 packages trained on adjacent context slices scored 0.9 dB
  *below* linear interpolation on MNI x2, their own training volume.
* Network output, shape (N, 1, H, W): a *residual* in normalised units over
  linear interpolation ``(1 - t) * before_0 + t * after_0``. A network that
  outputs zeros is exactly linear interpolation, so an untrained or weak model
  degrades gracefully.

Examples
--------
>>> import numpy as np
>>> before = np.zeros((3, 2, 8, 8), np.float32); after = np.ones((3, 2, 8, 8), np.float32)
>>> make_fill_inputs(before, after, 0.25, offsets=1.0).shape
(3, 7, 8, 8)
>>> float(apply_fill_output(before, after, 0.25, np.zeros((3, 1, 8, 8)))[0, 0, 0])
0.25
"""

from __future__ import annotations

from typing import Union

import numpy as np

from ..errors import ModelError

__all__ = [
    "FILL_CONTEXT",
    "FILL_PERCENTILES",
    "FILL_INPUT_SPEC",
    "make_fill_inputs",
    "linear_estimate",
    "apply_fill_output",
    "check_fill_input_spec",
]

#: Good slices used on each side of a gap.
FILL_CONTEXT = 2
#: Percentiles of the good slices mapped to 0 and 1.
FILL_PERCENTILES = (0.5, 99.5)

#: The ``input`` field of every fill model package.
FILL_INPUT_SPEC: dict = {
    "kind": "fill-slices",
    "version": 2,
    "context": FILL_CONTEXT,
    "channels": 4 * FILL_CONTEXT - 1,
    "channel_order": ["before_nearest_first", "after_nearest_first", "t", "offsets_before", "offsets_after"],
    "normalisation": {"method": "robust_scale", "percentiles": list(FILL_PERCENTILES), "over": "good slices"},
    "output": "residual_over_linear",
}

_CHECKED_KEYS = ("kind", "version", "context", "channels", "channel_order", "normalisation", "output")


def _as_t(t: Union[np.ndarray, float], count: int) -> np.ndarray:
    values = np.asarray(t, dtype=np.float32).reshape(-1)
    if values.size == 1:
        values = np.full(count, float(values[0]), np.float32)
    if values.size != count:
        raise ValueError(f"t must be a scalar or have one value per sample ({count}), got {values.size}")
    if np.any(values <= 0) or np.any(values >= 1):
        raise ValueError(f"t must lie strictly between 0 and 1, got {values.min()}..{values.max()}")
    return values


def _fit_context(stack: np.ndarray, context: int, name: str) -> np.ndarray:
    stack = np.asarray(stack, dtype=np.float32)
    if stack.ndim != 4 or stack.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, context, H, W) with context >= 1, got {stack.shape}")
    if stack.shape[1] >= context:
        return stack[:, :context]
    pad = np.repeat(stack[:, -1:], context - stack.shape[1], axis=1)
    return np.concatenate([stack, pad], axis=1)


def make_fill_inputs(
    before: np.ndarray,
    after: np.ndarray,
    t: Union[np.ndarray, float],
    *,
    offsets: Union[np.ndarray, float],
    context: int = FILL_CONTEXT,
) -> np.ndarray:
    """Network input for missing slices from the good slices around them.

    Parameters
    ----------
    before, after : ndarray, shape (N, C, H, W)
        Normalised good slices before and after each gap, nearest first. ``C``
        may be smaller than ``context`` (the farthest slice is repeated) or
        larger (the extra ones are ignored).
    t : float or ndarray, shape (N,)
        Fractional position of each missing slice between ``before[:, 0]`` (0)
        and ``after[:, 0]`` (1), strictly inside (0, 1).
    offsets : float or ndarray, shape (N, 2 * (context - 1))
        How far ``before[:, 1:]`` and then ``after[:, 1:]`` lie beyond
        ``before[:, 0]`` / ``after[:, 0]``, in units of each gap
        (:func:`~MedSynthLib.tasks.fill._interp.context_offsets`); a scalar
        for all (1.0: a regular grid, every slice a gap apart).
    context : int
        Slices per side the network expects (``FILL_INPUT_SPEC["context"]``).

    Returns
    -------
    ndarray, shape (N, 4 * context - 1, H, W), float32
    """
    before = _fit_context(before, context, "before")
    after = _fit_context(after, context, "after")
    if before.shape[0] != after.shape[0] or before.shape[2:] != after.shape[2:]:
        raise ValueError(f"before {before.shape} and after {after.shape} do not match")
    n, _, h, w = before.shape
    t_values = _as_t(t, n)
    t_plane = np.broadcast_to(t_values[:, None, None, None], (n, 1, h, w))
    count = 2 * (context - 1)
    offset_values = np.broadcast_to(np.asarray(offsets, dtype=np.float32), (n, count))
    if not np.all(np.isfinite(offset_values)) or np.any(offset_values < 0):
        raise ValueError("offsets must be finite and >= 0")
    offset_planes = np.broadcast_to(offset_values[:, :, None, None], (n, count, h, w))
    return np.ascontiguousarray(np.concatenate([before, after, t_plane, offset_planes], axis=1), dtype=np.float32)


def linear_estimate(before: np.ndarray, after: np.ndarray, t: Union[np.ndarray, float]) -> np.ndarray:
    """Linear interpolation between the nearest slices: the baseline the residual is added to.

    ``before``/``after`` as in :func:`make_fill_inputs`; returns (N, H, W) float32.
    """
    before = np.asarray(before, dtype=np.float32)
    after = np.asarray(after, dtype=np.float32)
    t_values = _as_t(t, before.shape[0])[:, None, None]
    return (1 - t_values) * before[:, 0] + t_values * after[:, 0]


def apply_fill_output(
    before: np.ndarray, after: np.ndarray, t: Union[np.ndarray, float], output: np.ndarray
) -> np.ndarray:
    """The filled slices (N, H, W), normalised units: linear estimate plus the network's residual."""
    output = np.asarray(output, dtype=np.float32)
    if output.ndim == 4:
        output = output[:, 0]
    return linear_estimate(before, after, t) + output


def check_fill_input_spec(spec: dict, *, name: str = "model package") -> None:
    """Refuse a package whose ``input`` spec differs from :data:`FILL_INPUT_SPEC`.

    Raises
    ------
    ModelError
        A key is missing or has another value; the message names the key.
    """
    if not isinstance(spec, dict):
        raise ModelError(f"{name}: its input spec must be a JSON object")
    for key in _CHECKED_KEYS:
        if key not in spec:
            raise ModelError(f"{name}: input spec lacks {key!r}; fill models need {FILL_INPUT_SPEC[key]!r}")
        expected = FILL_INPUT_SPEC[key]
        value = spec[key]
        if isinstance(expected, (list, tuple)):
            value, expected = list(value) if isinstance(value, (list, tuple)) else value, list(expected)
        if value != expected:
            raise ModelError(
                f"{name}: input spec {key!r} is {spec[key]!r}, this MedSynth's fill models use {FILL_INPUT_SPEC[key]!r}"
            )
