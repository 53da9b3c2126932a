"""The engine behind :func:`fill_slices` and :func:`upsample_slices`: one job, from the volume to the slices.

Normalises the good slices, measures the idle cores (torch threads follow them), starts the default
budget of ``auto``, estimates the slice profile where asked, lets ``_auto`` choose and run the method
within the budget, and maps the result back to the input's dtype and range. The report gains
``threads``, ``time_budget`` (budget, seconds spent, what was cut) and ``slice_profile``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ...budget import TimeBudget, cpu_threads, idle_cores, torch_threads
from ...errors import check_number
from ...intensity import restore_dtype, robust_scale
from ...network_inputs.fill import FILL_PERCENTILES
from ...progress import CancelToken, ProgressCallback, check_cancel, report, subrange
from ...volume import AXIS_NAMES, Volume
from ._auto import RUNNERS, FillJob, Synthesis, default_budget_seconds, resolve_method, synthesise
from ._interp import make_plan

__all__ = ["Request", "start_budget", "run", "report_of"]


@dataclass
class Request:
    """What the caller asked for: the method and its settings, the budget, and the slice profile rule.

    ``thickness``: ``None`` never models a slice profile (fills: the acquired slices are sharp);
    ``"auto"`` estimates it from the data (upsampling); a number is the profile FWHM in mm (a header).
    ``uncertainty``: also calibrate a per-voxel standard deviation of the synthesised slices (``_uncertainty``).
    """

    method: str
    model: object
    device: str
    seed: int
    options: Optional[dict]
    budget: TimeBudget
    thickness: Union[None, str, float] = None
    uncertainty: bool = False


def start_budget(time_budget) -> TimeBudget:
    """A :class:`TimeBudget` started now from seconds (0: none for training), or the one given."""
    if isinstance(time_budget, TimeBudget):
        return time_budget
    if time_budget is None:
        return TimeBudget(None)
    seconds = check_number(time_budget, "time budget (seconds)", low=0.0)
    return TimeBudget(max(seconds, 1e-3))  # 0 s: expired at once, so only instant methods are chosen


def _slice_profile(good: np.ndarray, volume: Volume, axis: int, thickness, pixels: tuple) -> Optional[dict]:
    """The acquired slices' profile (see ``_profile``), with its FWHM in pixels of H and W; None: not modelled."""
    from ._profile import THICK_RELATIVE_FWHM, estimate_slice_profile

    if thickness is None:
        return None
    spacing = volume.spacing_along(axis)
    if thickness == "auto":
        profile = estimate_slice_profile(good, slice_spacing=spacing, pixel_spacings=pixels)
        if profile is None:
            return None
    else:
        fwhm = check_number(thickness, "slice thickness (mm)", low=0.0)
        profile = {"fwhm_mm": fwhm, "relative": round(fwhm / spacing, 3),
                   "thick": fwhm / spacing >= THICK_RELATIVE_FWHM, "source": "given"}
    profile["px"] = [round(profile["fwhm_mm"] / p, 3) for p in pixels]
    return profile


def _threads(method: str, device: str) -> tuple[Optional[float], int]:
    """(idle cores measured now, torch threads for this task): the idle cores, never more than torch has."""
    if method in ("linear", "cubic", "spline") or device not in ("auto", "cpu"):
        return None, torch.get_num_threads()
    idle = idle_cores()
    return idle, min(torch.get_num_threads(), cpu_threads(idle=idle))


def _uncertainty(job: FillJob, done: Synthesis, cancel: Optional[CancelToken]) -> tuple[np.ndarray, dict]:
    """(standard deviation of the synthesised slices (Q, H, W), normalised units; the calibration report).

    Methods that run in seconds are run again on the calibration rows; selfsup goes through its base (the
    spline on thick slices, else linear) scaled by its held-out gain over that base (``_uncertainty``).
    """
    from skimage.filters import threshold_otsu

    from ._uncertainty import RERUN, calibrate, uncertainty_features

    through, scale, values = done.method, 1.0, done.values
    if through not in RERUN:
        summary = done.details.get("selfsup", {})
        through = "spline" if summary.get("slice_profile_px") is not None else "linear"
        gain = summary.get("held_out_gain_db")
        scale = 10.0 ** (-float(gain) / 20.0) if gain is not None else 1.0
        values = RUNNERS[through](job, None, None, cancel, through).values

    def run_method(good: np.ndarray, plan) -> np.ndarray:
        problem = replace(job, good=good, plan=plan, budget=TimeBudget(None), profile=None, profiled=False)
        return RUNNERS[through](problem, job.options.get(through), None, cancel, through).values

    sample = job.good[:: max(1, len(job.good) // 16)]
    foreground = float(threshold_otsu(sample)) if np.ptp(sample) > 0 else float(sample.max())
    row_steps = tuple(max(1, int(round(r))) for r in job.grid_ratio)
    calibration, figures = calibrate(job.good, job.plan, method=through, run_method=run_method,
                                     row_steps=row_steps, foreground=foreground, scale=scale, cancel=cancel)
    sigma = calibration.sigma(uncertainty_features(job.good, job.plan, values, through))
    figures.update(calibrated_with=through, scale=round(scale, 4))
    if through != done.method:
        figures["note"] = (f"{done.method} was calibrated through {through}, its sd scaled by its own held-out "
                           f"gain over {through}")
    return sigma, figures


def run(volume: Volume, *, axis: int, good_index: np.ndarray, positions: np.ndarray, targets: np.ndarray,
         request: Request, progress: Optional[ProgressCallback], cancel: Optional[CancelToken]):
    """(synthesised slices (Q, H, W) in the input's dtype, the report details, deblurred acquired slices or None,
    the slices' standard deviation (Q, H, W) float32 in the input's units or None when not asked for)."""
    check_cancel(cancel)
    stack = np.moveaxis(volume.array, axis, 0)
    good_raw = stack[good_index]
    scale = robust_scale(good_raw, percentiles=FILL_PERCENTILES)
    good = scale.forward(good_raw)
    plan = make_plan(positions, targets)
    # Output-grid step along the axis (upsampling refines it) against the finest in-plane spacing.
    span = float(good_index[-1] - good_index[0]) / float(positions[-1] - positions[0]) if len(good_index) > 1 else 1.0
    pixels = tuple(volume.spacing_along(a) for a in range(3) if a != axis)
    step_mm = volume.spacing_along(axis) * span
    method = str(request.method).lower()
    idle, threads = _threads(method, request.device)
    budget = request.budget
    if budget.seconds is None and method == "auto":
        from ...engine import select_device

        budget.seconds = default_budget_seconds(len(targets), select_device(request.device).type)
    job = FillJob(good=good, plan=plan, model=request.model, device=request.device, seed=request.seed,
                  options=request.options or {}, budget=budget, idle=2.0 if idle is None else min(idle, threads),
                  anisotropy=step_mm / min(pixels),
                  # the grid step in pixels of the stack's H and W axes (selfsup's training strips)
                  grid_ratio=tuple(step_mm / p for p in pixels),
                  profile=_slice_profile(good, volume, axis, request.thickness, pixels)
                  if method in ("auto", "selfsup") else None, profiled=request.thickness is not None)
    chosen, why = resolve_method(method, job)
    details: dict = {"method": chosen, "method_requested": method, "method_reason": why}
    report(progress, 0.02, f"filling {len(targets)} slice(s) with {chosen}")
    with torch_threads(threads):
        done = synthesise(job, chosen, requested=method, progress=subrange(progress, 0.02, 0.98), cancel=cancel)
    check_cancel(cancel)
    details.update(done.details)
    details["method"] = done.method
    if done.handover:
        details["method_reason"] = f"{why}; then {done.handover}"
    sigma = None
    if request.uncertainty:
        report(progress, 0.98, "calibrating the uncertainty on in-plane rows")
        sigma, details["uncertainty"] = _uncertainty(job, done, cancel)
        sigma = (sigma * scale.width).astype(np.float32)
        details["uncertainty"]["units"] = "the volume's intensity units (standard deviation)"
    low, high = float(good_raw.min()), float(good_raw.max())
    restored = restore_dtype(scale.inverse(done.values), volume.array.dtype, clip=(low, high))
    sharpened = done.acquired
    if sharpened is not None:
        sharpened = restore_dtype(scale.inverse(sharpened), volume.array.dtype, clip=(low, high))
    details.setdefault("device", "cpu")
    details["threads"] = {"torch": int(threads), "idle_cores": None if idle is None else round(idle, 2)}
    details["time_budget"] = budget.report()
    if job.profile is not None:
        details["slice_profile"] = job.profile
    return restored, details, sharpened, sigma


def report_of(operation: str, axis: int, slices: Sequence[int], details: dict, seconds: float, warnings: list) -> dict:
    out = {
        "task": "fill",
        "operation": operation,
        "method": details.pop("method"),
        "method_requested": details.pop("method_requested"),
        "method_reason": details.pop("method_reason"),
        "device": details.pop("device"),
        "axis": AXIS_NAMES[axis],
        "slices": [int(s) for s in slices],
        "seconds": round(seconds, 3),
        "warnings": list(warnings) + list(details.pop("warnings", [])),
    }
    out.update(details)
    return out

