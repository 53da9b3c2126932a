"""``super_resolve``: the fill task's through-plane upsampling, reported as an enhance step."""

from __future__ import annotations

import time
from typing import Any, Optional

from ...progress import CancelToken, ProgressCallback
from ...volume import Volume, array_axis
from ..fill import UpsampleOptions
from ._results import SuperResolveResult

__all__ = ["super_resolve"]


def super_resolve(
    volume: Volume,
    options: Optional[UpsampleOptions] = None,
    /,
    *,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    **knobs: Any,
) -> SuperResolveResult:
    """Upsample ``volume`` through-plane: :func:`MedSynthLib.tasks.fill.upsample_slices`, reported as an enhance step.

    One implementation, one set of options: ``options`` is an :class:`~MedSynthLib.tasks.fill.UpsampleOptions`
    and every keyword (``factor`` or ``spacing``, ``axis``, ``method``, ``model``, ``device``, ``seed``,
    ``time_budget``, ``method_options``) is one of its knobs, validated there, so ``factor=2.0`` is accepted here
    exactly when it is there. The result is checked by ``upsample_slices``
    (:func:`~MedSynthLib.checks.check_result`). What this adds is the enhance-style report (spacing before and
    after, the fill report inside).
    """
    from ..fill import upsample_slices  # the fill machinery (torch) loads when it runs

    options = UpsampleOptions.build(options, **knobs)
    start = time.perf_counter()
    result = upsample_slices(volume, options, progress=progress, cancel=cancel)
    inner = dict(result.report)
    axis = array_axis(inner["axis"], volume)
    result_report = {
        "task": "super_resolve",
        "method": inner.get("method"),
        "factor": inner.get("factor", options.factor),
        "axis": axis,
        "spacing_before": list(volume.spacing),
        "spacing_after": list(result.volume.spacing),
        "device": inner.get("device", "cpu"),
        "fill_report": inner,
        "seconds": round(time.perf_counter() - start, 3),
        "warnings": list(inner.get("warnings", [])),
    }
    return SuperResolveResult(volume=result.volume, report=result_report, synthetic_mask=result.synthetic_mask)
