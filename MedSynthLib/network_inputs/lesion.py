"""The one definition of what a lesion-inpaint network sees and predicts (format ``lesion-inpaint-2.5d`` v1).

Training (``LesionInpaintPairs``) and inference (the lesion task's painter) both build the network input with
:func:`make_inpaint_inputs` and describe or check it with :func:`inpaint_input_spec` /
:func:`check_inpaint_input_spec`, so a trained package sees exactly what the task gives it.

Convention:

* intensities normalised by :func:`MedSynthLib.intensity.robust_scale` over the *whole volume* with percentiles
  :data:`INPAINT_PERCENTILES` (a crop's own percentiles would change with the lesion's surroundings);
* ``2 * context + 1`` slices across an axis, nearest the centre in the middle, with the lesion (mask > 0) set
  to 0, then the centre slice's mask (0/1): ``2 * context + 2`` channels;
* output: the centre slice with the lesion painted in, normalised units.

Examples
--------
>>> import numpy as np
>>> planes = np.ones((2, 3, 8, 8), np.float32); masks = np.zeros((2, 3, 8, 8), bool); masks[:, :, 2:4, 2:4] = True
>>> x = make_inpaint_inputs(planes, masks, context=1)
>>> x.shape, float(x[0, 1, 2, 2]), float(x[0, 3, 2, 2])
((2, 4, 8, 8), 0.0, 1.0)
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError

__all__ = ["INPAINT_FORMAT", "INPAINT_PERCENTILES", "make_inpaint_inputs", "inpaint_input_spec",
           "check_inpaint_input_spec"]

INPAINT_FORMAT = ("lesion-inpaint-2.5d", 1)
INPAINT_PERCENTILES = (0.5, 99.5)


def make_inpaint_inputs(planes: np.ndarray, masks: np.ndarray, *, context: int) -> np.ndarray:
    """Network input (N, 2c+2, H, W) float32 from normalised ``planes`` and boolean ``masks`` (N, 2c+1, H, W)."""
    if planes.shape != masks.shape or planes.ndim != 4 or planes.shape[1] != 2 * context + 1:
        raise ValueError(f"planes {planes.shape} and masks {masks.shape} must both be (N, {2 * context + 1}, H, W)")
    blanked = np.where(masks, 0.0, planes).astype(np.float32)
    centre_mask = masks[:, context : context + 1].astype(np.float32)
    return np.concatenate([blanked, centre_mask], axis=1)


def inpaint_input_spec(*, context: int, crop: int) -> dict:
    """The ``input`` field of a lesion-inpaint package trained with ``context`` on ``crop``-pixel crops."""
    return {
        "format": INPAINT_FORMAT[0],
        "version": INPAINT_FORMAT[1],
        "context": int(context),
        "channels": 2 * int(context) + 2,
        "layout": "N, C, H, W: 2*context+1 slices with the lesion mask region set to 0, then the centre mask (0/1)",
        "normalisation": {"kind": "robust_percentile", "percentiles": list(INPAINT_PERCENTILES)},
        "crop": int(crop),
        "output": "centre slice with the lesion painted in, normalised units",
    }


def check_inpaint_input_spec(spec: dict, *, name: str = "model package") -> int:
    """The package's context, or :class:`ModelError` when its input spec is not this convention."""
    found = (spec.get("format"), spec.get("version"))
    if found != INPAINT_FORMAT:
        raise ModelError(f"{name} has input format {found[0]!r} version {found[1]!r}; "
                         f"this MedSynth reads {INPAINT_FORMAT[0]!r} version {INPAINT_FORMAT[1]}")
    context = spec.get("context")
    if not isinstance(context, int) or context < 0 or spec.get("channels") != 2 * context + 2:
        raise ModelError(f"{name}: input context {context!r} and channels {spec.get('channels')!r} "
                         "do not match (channels must be 2 x context + 2)")
    return context
