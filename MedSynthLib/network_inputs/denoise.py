"""The one definition of what a denoising network sees: 2.5D slice stacks in robust-normalised units.

Both sides of a denoise model package use this module, so they can never drift
apart: the training code builds its (noisy input, target) pairs with
:func:`make_denoise_inputs`, and :func:`MedSynthLib.tasks.enhance.denoise` with
``method="model"`` (and the self-supervised method) builds its inference input
with the same function. :data:`DENOISE_INPUT_SPEC` is the ``input`` dict a denoise
package stores; :func:`check_denoise_input_spec` refuses a package whose spec
does not describe this convention.

Convention (format ``denoise-2.5d`` version 1):

* intensities scaled by :func:`MedSynthLib.intensity.robust_scale` with
  percentiles (0.5, 99.5) over the whole volume: 0.5th percentile -> 0,
  99.5th -> 1; the same scale maps the output back;
* one sample per slice along the chosen array axis (the slice axis by
  default), with ``context`` neighbouring slices on each side as extra
  channels, channel ``context`` being the slice itself; slices past the ends
  are replicated from the edge;
* the network returns one channel: the clean centre slice, in the same
  normalised units (not a residual).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..errors import InputError, ModelError
from ..intensity import Scale, robust_scale

__all__ = [
    "DENOISE_INPUT_SPEC",
    "DENOISE_PERCENTILES",
    "normalise_for_denoise",
    "make_denoise_inputs",
    "assemble_denoise_outputs",
    "check_denoise_input_spec",
]

#: Percentiles mapped to 0 and 1 before a denoise network sees the volume.
DENOISE_PERCENTILES = (0.5, 99.5)

#: The ``input`` dict of a denoise model package (``save_package(..., input_spec=DENOISE_INPUT_SPEC)``).
DENOISE_INPUT_SPEC: dict[str, Any] = {
    "format": "denoise-2.5d",
    "version": 1,
    "context": 2,
    "channels": 5,
    "layout": "N, 2*context+1, H, W: slices along the slice axis, neighbours as channels, edges replicated",
    "normalisation": {"kind": "robust_percentile", "percentiles": list(DENOISE_PERCENTILES)},
    "output": "clean centre slice, normalised units (not a residual)",
}


def normalise_for_denoise(array: np.ndarray, *, mask: Optional[np.ndarray] = None) -> tuple[np.ndarray, Scale]:
    """Scale ``array`` to the denoise convention; returns (float32 array, the scale to invert).

    Parameters
    ----------
    array : ndarray, shape (K, J, I)
        Raw intensities (any real dtype).
    mask : ndarray of bool, optional
        Voxels the percentiles are taken over (default: all).
    """
    scale = robust_scale(array, mask=mask, percentiles=DENOISE_PERCENTILES)
    return scale.forward(array), scale


def make_denoise_inputs(volume_normalised: np.ndarray, *, axis: int, context: int) -> np.ndarray:
    """Stack each slice with its ``context`` neighbours on each side as channels.

    Parameters
    ----------
    volume_normalised : ndarray, shape (K, J, I)
        Intensities already normalised (see :func:`normalise_for_denoise`).
    axis : int
        Array axis (0, 1 or 2) the slices are taken across.
    context : int
        Neighbours on each side (0 gives plain 2D samples).

    Returns
    -------
    ndarray, shape (N, 2*context+1, H, W), float32
        ``N`` is the number of slices along ``axis``; ``H, W`` are the other two
        array axes in their original order. Channel ``context`` is the slice itself;
        neighbours past either end repeat the edge slice.

    Examples
    --------
    >>> x = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    >>> make_denoise_inputs(x, axis=0, context=1).shape
    (4, 3, 2, 3)
    """
    array = np.asarray(volume_normalised)
    if array.ndim != 3:
        raise InputError(f"denoise inputs need a 3D array, got shape {array.shape}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be an array axis 0-2, got {axis!r}")
    if int(context) != context or context < 0:
        raise InputError(f"context must be a non-negative integer, got {context!r}")
    context = int(context)
    slices = np.moveaxis(array, axis, 0).astype(np.float32, copy=False)
    count = slices.shape[0]
    offsets = np.arange(-context, context + 1)
    index = np.clip(np.arange(count)[:, None] + offsets[None, :], 0, count - 1)  # (N, C)
    return np.ascontiguousarray(slices[index])


def assemble_denoise_outputs(outputs: np.ndarray, *, axis: int) -> np.ndarray:
    """Inverse of the slicing in :func:`make_denoise_inputs`: (N, 1, H, W) or (N, H, W) back to (K, J, I)."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 4:
        if outputs.shape[1] != 1:
            raise ModelError(f"a denoise network must return one channel, got {outputs.shape[1]}")
        outputs = outputs[:, 0]
    return np.moveaxis(outputs, 0, axis)


def check_denoise_input_spec(spec: dict, *, name: str = "model package") -> int:
    """Refuse an ``input`` spec that is not this convention; returns its ``context``."""
    if not isinstance(spec, dict) or spec.get("format") != DENOISE_INPUT_SPEC["format"]:
        raise ModelError(
            f"{name} does not declare the denoise input format {DENOISE_INPUT_SPEC['format']!r} "
            f"(found {spec.get('format') if isinstance(spec, dict) else spec!r}); it was not made for MedSynth denoising"
        )
    if spec.get("version") != DENOISE_INPUT_SPEC["version"]:
        raise ModelError(f"{name} uses denoise input version {spec.get('version')!r}; this MedSynth reads version 1")
    context = spec.get("context")
    if not isinstance(context, int) or context < 0:
        raise ModelError(f"{name}: input context must be a non-negative integer, got {context!r}")
    channels = spec.get("channels", 2 * context + 1)
    if channels != 2 * context + 1:
        raise ModelError(f"{name}: {channels} input channels do not match context {context} (needs {2 * context + 1})")
    return context
