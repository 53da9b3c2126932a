"""``enhance``: steps in order (bias, denoise, upsample), all checked first, the result returned only when all ran.

The top of the enhance house: it calls the public functions of the task (:func:`correct_bias`, :func:`denoise`,
:func:`super_resolve`) with options objects built from each :class:`EnhanceStep` and what the pipeline shares.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import numpy as np

from ...budget import TimeBudget
from ...checks import check_result
from ...engine import select_device
from ...errors import InputError
from ...progress import CancelToken, ProgressCallback, check_cancel, report, subrange
from ...provenance import changed_provenance, combine_provenance
from ...volume import Volume, array_axis, mask_on_grid, validate_volume
from ..fill import UpsampleOptions
from ._bias_task import BIAS_MARGIN, correct_bias
from ._denoise import denoise
from ._options import BiasOptions, DenoiseOptions, EnhanceOptions, EnhanceStep, default_budget_seconds
from ._results import EnhanceResult, MaskLike
from ._superres import super_resolve

__all__ = ["enhance"]

Steps = Union[str, Sequence[Union[str, EnhanceStep]]]


def _left(budget: TimeBudget) -> Optional[float]:
    """What a step may spend: the pipeline budget's remainder (1 ms once it is spent, so the step cuts all it can),
    None without a budget."""
    if budget.seconds is None:
        return None
    return max(budget.remaining(), 1e-3)


def default_pipeline_budget(steps: Sequence[EnhanceStep], volume: Volume, device: str) -> float:
    """The pipeline's budget when none is given: the sum of its steps' default budgets (denoise and bias:
    :func:`~._options.default_budget_seconds` of the voxels the step will see, the noise model from the
    modality guess; upsample: fill's ``auto`` default
    for the slices it synthesises)."""
    from ..fill import default_budget_seconds as fill_budget

    from ...intensity import guess_modality

    model = "gaussian" if guess_modality(volume) == "CT" else "rician"
    voxels, total = int(volume.array.size), 0.0
    for step in steps:
        if step.name in ("bias", "denoise"):
            total += default_budget_seconds(step.name, voxels, noise_model=model)
            continue
        factor = int(step.options.get("factor") or 2)
        slices = int(volume.array.shape[volume.slice_axis()])
        total += fill_budget((slices - 1) * (factor - 1), select_device(device).type)
        voxels *= factor
    return round(total, 1)


def _check_mask_order(steps: Sequence[EnhanceStep]) -> None:
    """With a mask, no bias or denoise step may follow an upsample step (the grid changed)."""
    upsampled = False
    for step in steps:
        if step.name == "upsample":
            upsampled = True
        elif upsampled:
            raise InputError(f"step {step.label()} uses the mask but comes after an upsample step, which changes "
                             "the grid; put upsample last")


def _run_step(step: EnhanceStep, current: Volume, options: EnhanceOptions, mask: Any, budget: TimeBudget,
              progress: Optional[ProgressCallback], cancel: Optional[CancelToken]) -> Any:
    """One step on ``current`` with its own options and the pipeline's device, seed, model and time left."""
    if step.name == "bias":
        return correct_bias(current, BiasOptions.build(**step.options, time_budget=_left(budget)), mask=mask,
                            progress=progress, cancel=cancel)
    shared = {"device": options.device, "seed": options.seed, "time_budget": _left(budget)}
    if step.name == "denoise":
        knobs = DenoiseOptions.build(**step.options, model=options.model, **shared)
        return denoise(current, knobs, mask=mask, progress=progress, cancel=cancel)
    return super_resolve(current, UpsampleOptions.build(**step.options, **shared), progress=progress, cancel=cancel)


def _step_method(step: EnhanceStep, step_report: dict) -> str:
    """The step's label, with what produced its voxels in brackets where that is not what the label asked
    (``denoise[fusion (dct_p8 alone)]`` for ``denoise``, which is ``auto``; ``upsample(factor=2)[spline]``)."""
    ran = step_report.get("method")
    if step.name == "bias" or ran is None or ran == step.options.get("method"):
        return step.label()
    return f"{step.label()}[{ran}]"


def _build_options(options: Union[EnhanceOptions, Steps, None], knobs: dict) -> EnhanceOptions:
    """The options object; steps given in place of ``options`` (a string or a sequence) read as ``steps=``."""
    if isinstance(options, (str, list, tuple)):
        if "steps" in knobs:
            raise InputError("give the steps once: as the second argument or as steps=, not both")
        return EnhanceOptions.build(steps=options, **knobs)
    return EnhanceOptions.build(options, **knobs)


def enhance(
    volume: Volume,
    options: Union[EnhanceOptions, Steps, None] = None,
    /,
    *,
    mask: MaskLike = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    **knobs: Any,
) -> EnhanceResult:
    """Run ``steps`` in order and return the result only when every step succeeded.

    Parameters
    ----------
    volume : Volume
    options : EnhanceOptions, str or sequence, optional
        The pipeline's options (see :class:`EnhanceOptions`), or just its steps; keywords build the same object
        (``enhance(volume, steps="bias,denoise:nlm", device="cpu")``).
    mask : ndarray or Volume, optional
        Tissue mask for ``bias`` and ``denoise`` (same grid). Such steps cannot
        follow an ``upsample`` step when a mask is given (the grid changed).

    The knobs:

    steps : str or sequence
        E.g. ``"bias,denoise:nlm"``, ``["bias", "denoise", "upsample:2"]`` or
        ``[EnhanceStep("bias"), EnhanceStep("denoise", {"method": "nlm"})]``; see :func:`parse_steps`. All steps
        are parsed and checked first.
    model, device, seed
        Passed to the denoise steps (device and seed to the upsample steps too).
    time_budget : float, optional
        Wall seconds for the whole pipeline, on the clock: each step gets what is left when it starts (its
        report's ``time_budget`` says what it cut; the pipeline's lists every step's cuts). Unset: the sum of the
        steps' default budgets (:func:`default_pipeline_budget`).

    Returns
    -------
    EnhanceResult
        The final volume, checked (:func:`~MedSynthLib.checks.check_result`; each step checks its own too);
        nothing partial is ever returned: an error or a cancellation in any step raises and the input is
        untouched.
    """
    options = _build_options(options, knobs)
    validate_volume(volume)
    select_device(options.device)  # absent: an error before the first step, whichever steps need a network
    automatic = options.time_budget is None
    budget = TimeBudget(default_pipeline_budget(options.steps, volume, options.device) if automatic
                        else options.time_budget)
    boolean_mask = mask_on_grid(volume, mask)
    if boolean_mask is not None:
        _check_mask_order(options.steps)
    start = time.perf_counter()
    current = volume
    field_volume: Optional[Volume] = None
    reports: list[dict] = []
    count = len(options.steps)
    made = np.zeros(volume.array.shape, np.uint8)  # what the steps made (1) or rewrote (2), on the current grid
    for number, step in enumerate(options.steps):
        check_cancel(cancel)
        step_progress = subrange(progress, number / count, (number + 1) / count)
        report(progress, number / count, f"step {number + 1}/{count}: {step.label()}")
        outcome = _run_step(step, current, options, boolean_mask, budget, step_progress, cancel)
        if step.name == "bias":
            field_volume = outcome.field
        made = _carry_provenance(made, current, outcome)
        current = outcome.volume
        reports.append({"step": step.label(), **outcome.report})
    check_cancel(cancel)
    label = "+".join(s.label() for s in options.steps)
    check_result(volume, current, task=f"enhance ({label})", margin=BIAS_MARGIN)
    warnings = [f"{r['step']}: {w}" for r in reports for w in r.get("warnings", [])]
    result_report = {
        "task": "enhance",
        "method": "+".join(_step_method(step, r) for step, r in zip(options.steps, reports)),
        "method_requested": label,
        "steps": reports,
        "device": ",".join(sorted({str(r.get("device", "cpu")) for r in reports})),
        "time_budget": {**budget.report(), "default": automatic,
                        "cut": [f"{r['step']}: {cut}" for r in reports for cut in (r.get("time_budget") or {}).get("cut", [])]},
        "seconds": round(time.perf_counter() - start, 3),
        "warnings": warnings,
    }
    report(progress, 1.0, "enhance done")
    return EnhanceResult(volume=current, field=field_volume, steps=tuple(reports), report=result_report,
                         synthetic_mask=Volume(made, current.ijk_to_ras.copy()))


def _carry_provenance(made: np.ndarray, before: Volume, outcome: Any) -> np.ndarray:
    """The pipeline's mask after one step: a voxel step marks what it changed as rewritten; an upsampling brings
    the earlier mask along with the acquired slices (original ``i`` on the new grid where it lands) and adds its
    own (new slices synthesised, deblurred ones rewritten)."""
    new_mask = getattr(outcome, "synthetic_mask", None)
    if new_mask is None:  # bias, denoise: same grid
        return combine_provenance(made, changed_provenance(before, outcome.volume).array)
    inner = outcome.report["fill_report"]
    axis = array_axis(inner["axis"], before)
    ratio = float(inner["factor"])
    carried = np.zeros(new_mask.array.shape, np.uint8)
    target, source = np.moveaxis(carried, axis, 0), np.moveaxis(made, axis, 0)
    for index in range(source.shape[0]):
        position = index * ratio
        if abs(position - round(position)) < 1e-4 and round(position) < target.shape[0]:
            target[int(round(position))] = source[index]
    return combine_provenance(carried, new_mask.array)
