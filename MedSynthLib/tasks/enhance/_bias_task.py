"""``correct_bias``: N4 on a shifted copy when needed, the field applied at full resolution, the result checked."""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from ...checks import check_result
from ...errors import InputError
from ...noise import otsu_foreground
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from ...volume import Volume, mask_on_grid, validate_volume
from . import _bias
from ._options import BiasOptions
from ._results import BiasResult, MaskLike, finish_volume

__all__ = ["correct_bias", "BIAS_MARGIN"]

#: Bias correction divides by a field that can dip to about 0.5: its results may reach twice the input's range
#: (the ``margin`` of :func:`~MedSynthLib.checks.check_result`, as a fraction of the input's span).
BIAS_MARGIN = 1.0


def correct_bias(
    volume: Volume,
    options: Optional[BiasOptions] = None,
    /,
    *,
    mask: MaskLike = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    **knobs: Any,
) -> BiasResult:
    """Remove a smooth multiplicative intensity field (MR shading) with N4.

    Parameters
    ----------
    volume : Volume
    options : BiasOptions, optional
        ``shrink``, ``iterations``, ``control_points`` (see :class:`BiasOptions`); keywords build the same
        object (``correct_bias(volume, shrink=4)``), on top of ``options`` when both are given.
    mask : ndarray or Volume, optional
        Where the field is fitted (same grid). Default: an Otsu foreground.
        The correction is applied everywhere.

    ``shrink`` 6 (a ~6 mm fitting grid on a 1 mm brain): on the MNI benchmark it is 3.4x faster than 4 with 50
    iterations, and as good (white-matter CV 0.0259 vs 0.0249, clean 0.0261; field correlation 0.961 vs
    0.954). Three fitting levels of 40 iterations: on the MNI template with a known field a fourth level
    started fitting anatomy (white-matter CV 0.033 instead of 0.025, field correlation 0.93 instead of 0.95);
    more iterations per level do the same (shrink 6: 50 per level gave CV 0.0265, 40 gave 0.0259, 30 gave
    0.0250).

    Returns
    -------
    BiasResult
        ``volume``: ``input / field`` in the input's dtype; ``field``: float32 on
        the same grid, geometric mean 1 inside the mask.

    Notes
    -----
    N4 works on the logarithm of intensities, so it needs positive values inside
    the mask. Non-positive values there (CT, or a background offset) are handled
    by shifting the image up for the fit and shifting back after dividing, and
    the report says so. The result is checked (:func:`~MedSynthLib.checks.check_result`, within
    :data:`BIAS_MARGIN` of the input's span) before it is returned, whatever the front end.

    Raises
    ------
    InputError
        A shrink outside 1-16, bad iterations, an unknown option, an empty mask or one on another grid.
    ResultError
        The corrected volume is not plausible (non-finite, or far outside the input's range).
    """
    options = BiasOptions.build(options, **knobs)
    validate_volume(volume, min_slices=2)
    boolean_mask = mask_on_grid(volume, mask)
    start = time.perf_counter()
    check_cancel(cancel)
    report(progress, 0.0, "N4: preparing")
    data = volume.array.astype(np.float32)
    fit_mask = boolean_mask if boolean_mask is not None else otsu_foreground(data)
    if not fit_mask.any():
        raise InputError("no foreground was found for bias correction; give a mask")
    warnings: list[str] = []
    low = float(data[fit_mask].min())
    shift = 0.0
    if low <= 0:
        span = float(data[fit_mask].max()) - low
        shift = -low + max(0.01 * span, 1e-3)
        warnings.append(f"intensities inside the mask reach {low:g}; shifted by {shift:g} for N4 (needs positive values)")
    field, details = _bias.n4_field(data + shift, fit_mask, spacing_kji=volume.spacing_kji, shrink=options.shrink,
                                    iterations=list(options.iterations), control_points=options.control_points,
                                    progress=progress, cancel=cancel)
    corrected = data / field if shift == 0 else (data.astype(np.float64) + shift) / field - shift
    output = finish_volume(volume, corrected, None, clip=False)
    check_result(volume, output, task="bias correction", margin=BIAS_MARGIN)
    result_report = {
        "task": "bias",
        "method": "n4",
        "device": "cpu",
        "shrink": options.shrink,
        "shift": shift,
        "mask": "given" if boolean_mask is not None else "otsu",
        "mask_voxels": int(fit_mask.sum()),
        "parameters": details,
        "seconds": round(time.perf_counter() - start, 3),
        "warnings": warnings,
    }
    return BiasResult(volume=output, field=Volume(field, volume.ijk_to_ras.copy()), report=result_report)
