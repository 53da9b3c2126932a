"""What ``auto`` runs, within a time budget checked on the clock, and the dispatch to the methods.

Why: ``auto`` used to compare an estimate of selfsup's run time (from voxel counts, for an idle
machine) with its budget and then train for as long as training took: 50 minutes on a busy 2-core
machine for 3 missing slices. Now the budget is a :class:`~MedSynthLib.budget.TimeBudget` started with
the task; the estimate is scaled by the cores idle when the task starts, selfsup is told the budget
and fits its steps to it while it trains (stopping with its best network so far), and where training
was cut short without enough gain on held-out pairs ``auto`` hands over to the next-best method. The
default budget grows with the work: a few slices get well under a minute, a whole upsampling 3 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ...budget import TimeBudget
from ...errors import InputError
from ...progress import CancelToken, ProgressCallback
from ...volume import THICK_SLICE_RATIO
from ._options import METHODS
from ._interp import FillPlan, cubic_fill, linear_fill, make_plan, spline_fill

__all__ = ["METHODS", "FillJob", "default_budget_seconds", "resolve_method", "synthesise"]

#: ``auto`` does not use selfsup when the output slice grid is this many times coarser than the in-plane
#: pixels: rows removed in-plane then do not resemble the missing thick slices (measured on lung1 CT).
MAX_SELFSUP_ANISOTROPY = THICK_SLICE_RATIO

#: Longest default budget (seconds) of ``auto`` on a CPU; the default is shorter for small jobs.
AUTO_CPU_BUDGET_S = 180.0
#: Default CPU budget: this many seconds, plus :data:`AUTO_SECONDS_PER_SLICE` per synthesised slice.
AUTO_BASE_S = 30.0
AUTO_SECONDS_PER_SLICE = 1.5
#: Default budget on a GPU.
AUTO_GPU_BUDGET_S = 600.0
#: ``auto`` trains selfsup only when at least this many steps fit the budget, and hands over when training
#: was cut before them. Sharp slices (linear base): below about 1500 steps selfsup lost to the bundled model
#: (256^3, 10 isolated slices, 1 thread: MNI 397 steps +2.07 dB against +3.52; ROBEX 200-450 steps
#: +0.29-0.45 against +0.75), from 2400 it won (ROBEX single slices +1.19 against +0.86). Thick slices
#: (B-spline base): an untrained network is already the B-spline; 250 steps gained 0.7-3 dB over it.
MIN_USEFUL_STEPS = {"linear": 1500, "spline": 250}
#: Training cut short by the budget with less held-out gain over its base than this: ``auto`` hands over.
#: Over linear (sharp slices) the fallbacks gain about that much themselves (the bundled model on ROBEX
#: single slices +0.75 dB, where selfsup cut at 200-450 steps scored +0.29-0.45 with 0.46-0.48 dB held out);
#: over the B-spline base (thick slices) the fallback, the same spline, gains nothing.
MIN_HELD_OUT_GAIN_DB = {"linear": 1.0, "spline": 0.3}


@dataclass
class FillJob:
    """Everything a method needs besides its name: normalised good slices (G, H, W), the plan, and context."""

    good: np.ndarray
    plan: FillPlan
    model: object
    device: str
    seed: int
    options: dict
    budget: TimeBudget
    idle: float = 2.0
    anisotropy: float = 1.0
    grid_ratio: tuple = (1.0, 1.0)
    profile: Optional[dict] = None  # slice profile (thick slices), with "px" = FWHM in pixels of H and W
    profiled: bool = False  # the caller asked for a slice profile (upsampling): the slices may be thick


def default_budget_seconds(targets: int, device_type: str) -> float:
    """``auto``'s budget when none is given: 30 s + 1.5 s per synthesised slice on a CPU (at most 180 s)."""
    if device_type != "cpu":
        return AUTO_GPU_BUDGET_S
    return float(min(AUTO_CPU_BUDGET_S, AUTO_BASE_S + AUTO_SECONDS_PER_SLICE * targets))


def bundled_model():
    """The shipped ``fill_default`` package's path, or None where it is not installed."""
    from ...models import bundled_package

    return bundled_package("fill")


def fast_method(job: FillJob, why: str) -> tuple[str, str]:
    """What ``auto`` runs when selfsup does not: the spline where the slices may be thick (a slice profile was
    asked for: upsampling); the bundled model on sharp slices with integer gaps; else flow.

    Slices blurred by a slice profile are not sharp slices with gaps: flow and the bundled model were made for
    those. On the thick-slice benchmark (four scans, x2 / x4 / gap) the spline was the best instant method on 11
    of 12 rows (the bundled model 0.1-0.5 dB ahead on MNI, one of its training volumes). Upsampling takes the
    spline whatever the estimated profile says: the estimate called brain1's 4x-thick slices sharp (0.25 of
    the spacing for 1.0), and the bundled model then ended 1.3 dB below the spline. On sharp slices the
    bundled ``fill_default`` (never trained on ROBEX) beat flow on ROBEX in every scenario (x2 +0.61 against
    +0.33 dB, x4 +0.21 against -0.52, single +0.86 against +0.62, slabs +0.58 against -0.32) in under a
    second; on thick CT slices (lung1) flow stays ahead, so those keep flow.
    """
    from ...models.package import read_package_info

    if job.profiled:  # a thick profile implies it: profiles are only estimated or given when asked for
        return "spline", (f"{why}; the slices may be thick (upsampling), where the spline is the best instant "
                          "method (flow and the bundled model were made for sharp slices)")
    path = bundled_model()
    if job.anisotropy <= MAX_SELFSUP_ANISOTROPY and job.plan.integral and path is not None:
        trained = read_package_info(path).metadata.get("training", {}).get("config", {}).get("task_options", {})
        widest = float(np.max(job.plan.gaps))
        if widest <= float(trained.get("max_gap", 4)):  # gaps it was trained on, no wider
            return checked_against_linear(job, "model", f"{why}; the bundled fill model beats flow on thin slices "
                                                         "(ROBEX x2 +0.6 against +0.3 dB)")
    return checked_against_linear(job, "flow", f"{why}; flow needs no training")


def checked_against_linear(job: FillJob, name: str, why: str) -> tuple[str, str]:
    """``name`` where it beats linear interpolation on acquired slices of this volume held out with the fill's gap
    widths (``_uncertainty.held_out_slices``: up to 24, away from the real gaps), else ``linear``.

    Why: the bundled model and flow were chosen by rules measured on other scans; on the abdominal MR (3 mm, 3
    zeroed slices) the model ended 0.10 dB below linear. The check costs one run of the method on the held-out
    slices. Grids without an acquired slice to spare (an upsampling) keep ``name``.
    """
    import dataclasses

    from ._uncertainty import held_out_slices

    split = held_out_slices(job.plan)
    if split is None:
        return name, why
    kept, held = split
    trial = dataclasses.replace(job, good=job.good[kept], plan=make_plan(job.plan.positions[kept],
                                                                         job.plan.positions[held]))
    truth = job.good[held].astype(np.float64)
    guessed = RUNNERS[name](trial, job.options.get(name), None, None, name).values
    errors = [float(np.mean((np.asarray(v, dtype=np.float64) - truth) ** 2))
              for v in (guessed, linear_fill(trial.good, trial.plan))]
    gain = 10.0 * np.log10(max(errors[1], 1e-20) / max(errors[0], 1e-20))
    held_out = f"{gain:+.2f} dB over linear on {len(held)} acquired slices held out with the fill's gaps"
    if gain > 0:
        return name, f"{why}; {held_out}"
    return "linear", f"{why}; but {name} scored {held_out}, so linear"


def _affordable_steps(job: FillJob, target, settings: Optional[dict]) -> tuple[int, int]:
    """(steps that fit the remaining budget at the load measured now, steps planned)."""
    from ._selfsup import cost_estimate

    thick = job.profile is not None and bool(job.profile.get("thick"))
    per_step, inference, planned = cost_estimate(job.good, job.plan, device=target, settings=settings,
                                                 idle_cores=job.idle, deblur=thick)
    if job.budget.seconds is None:
        return planned, planned
    left = job.budget.remaining() - 1.2 * inference - 2.0
    return max(0, int(left / per_step)), planned


def resolve_method(method: str, job: FillJob) -> tuple[str, str]:
    """(method to run, why) for ``method``; ``auto`` decides by device, slices, load and budget."""
    name = str(method).lower()
    if name not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if name == "model" and job.model is None and bundled_model() is None:
        raise InputError("method 'model' needs a model package (--model PACKAGE.json); no bundled fill model is installed")
    if job.model is not None and name not in ("model", "auto"):
        raise InputError(f"a model package was given but method is {name!r}; use method 'model' or 'auto'")
    if name != "auto":
        return name, "requested"
    if job.model is not None:
        return "model", "a model package was given"
    from ...engine import select_device
    from . import _selfsup

    target = select_device(job.device)
    if not _selfsup.can_train(job.good, job.plan):
        return fast_method(job, "too few or too small slices to train selfsup")
    thick = job.profile is not None and job.profile.get("thick")
    if job.anisotropy > MAX_SELFSUP_ANISOTROPY and not thick:
        return fast_method(job, (
            f"the slice grid is {job.anisotropy:.1f}x coarser than the in-plane pixels: selfsup trained on sharp "
            "rows does not pay there (lung1 CT, 5 mm slices: +1.6 dB at x2 and +1.3 dB on single slices in "
            "minutes, flow +1.5 and +2.0 dB in seconds)"))
    fits, planned = _affordable_steps(job, target, job.options.get("selfsup"))
    least = MIN_USEFUL_STEPS["spline" if thick else "linear"]
    budget = f"the {job.budget.seconds:.0f} s budget" if job.budget.seconds is not None else "no time limit"
    load = f"{job.idle:.1f} idle core(s)" if target.type == "cpu" else str(target)
    if fits >= min(least, planned):
        kind = "selfsup with the estimated slice profile (thick slices)" if thick else "selfsup"
        return "selfsup", f"{kind}: about {min(fits, planned)} of {planned} steps fit within {budget} ({load})"
    return fast_method(job, f"selfsup: only about {max(fits, 0)} steps fit {budget} ({load}), under {least}")


@dataclass(frozen=True)
class Synthesis:
    """What a method returned: the synthesised slices, which method produced them, its report details.

    ``acquired``: the acquired slices rewritten (thick-slice selfsup deblurs them), or None; ``handover``:
    why ``auto``'s selfsup result was dropped for another method, or None.
    """

    values: np.ndarray
    method: str
    details: dict
    acquired: Optional[np.ndarray] = None
    handover: Optional[str] = None


def _interpolation(fill) -> Callable:
    def run(job: FillJob, settings, progress, cancel, method: str) -> Synthesis:
        return Synthesis(fill(job.good, job.plan), method, {})

    return run


def _flow(job: FillJob, settings, progress, cancel, method: str) -> Synthesis:
    from ._flow import flow_fill

    values, details = flow_fill(job.good, job.plan, device=job.device, settings=settings, progress=progress,
                                cancel=cancel)
    return Synthesis(values, method, details)


def _model(job: FillJob, settings, progress, cancel, method: str) -> Synthesis:
    from ._model import model_fill

    model = job.model if job.model is not None else bundled_model()
    values, details = model_fill(job.good, job.plan, model=model, device=job.device, seed=job.seed,
                                 settings=settings, progress=progress, cancel=cancel)
    return Synthesis(values, method, details)


def _selfsup(job: FillJob, settings, progress, cancel, method: str, accept=None) -> Synthesis:
    from ._selfsup import selfsup_fill

    profile = tuple(job.profile["px"]) if job.profile is not None and job.profile.get("thick") else None
    values, details, acquired = selfsup_fill(
        job.good, job.plan, device=job.device, seed=job.seed, settings=settings, progress=progress, cancel=cancel,
        grid_ratio=job.grid_ratio, budget=job.budget, profile=profile, deblur_acquired=True, accept=accept)
    return Synthesis(values, method, details, acquired)


def _base(summary: dict) -> str:
    """What a selfsup training is measured against: the spline on thick slices (a slice profile), else linear."""
    return "spline" if summary["slice_profile_px"] is not None else "linear"


def worth_keeping(summary: dict) -> bool:
    """Whether ``auto`` keeps a selfsup training: not when the budget cut it before :data:`MIN_USEFUL_STEPS` or
    without a held-out gain of :data:`MIN_HELD_OUT_GAIN_DB` over its base (the spline on thick slices)."""
    base = _base(summary)
    short = summary["steps"] < min(MIN_USEFUL_STEPS[base], summary["steps_planned"])
    return not (summary["stopped_early"] and (short or summary["held_out_gain_db"] < MIN_HELD_OUT_GAIN_DB[base]))


#: Method name -> runner; ``auto`` is resolved before (:func:`resolve_method`).
RUNNERS: dict[str, Callable[..., Synthesis]] = {
    "linear": _interpolation(linear_fill), "cubic": _interpolation(cubic_fill), "spline": _interpolation(spline_fill),
    "flow": _flow, "model": _model, "selfsup": _selfsup,
}


def synthesise(job: FillJob, method: str, *, requested: str, progress: Optional[ProgressCallback],
               cancel: Optional[CancelToken]) -> Synthesis:
    """Answer the job's plan with ``method`` (a name of :data:`RUNNERS`; any other is refused).

    ``auto``'s selfsup, cut short by the budget before :data:`MIN_USEFUL_STEPS` or without a held-out gain
    of :data:`MIN_HELD_OUT_GAIN_DB`, hands over to :func:`fast_method` (the result's ``handover`` says why;
    its details keep selfsup's record).
    """
    runner = RUNNERS.get(method)
    if runner is None:
        raise InputError(f"fill method must be one of {', '.join(RUNNERS)}, got {method!r}")
    if method != "selfsup" or requested != "auto":
        return runner(job, job.options.get(method), progress, cancel, method)
    # auto's selfsup: the hand-over is decided from the training alone, so a result that will be dropped is
    # never inferred (on a whole CT the inference cost minutes, and the budget doubled)
    done = _selfsup(job, job.options.get(method), progress, cancel, method, accept=worth_keeping)
    summary = done.details["selfsup"]
    if not summary["inference_skipped"]:  # worth_keeping accepted the training
        return done
    base = _base(summary)
    if summary.get("training_skipped"):
        dropped = f"selfsup was not started: {summary['training_skipped']} (useful from {MIN_USEFUL_STEPS[base]})"
    elif summary.get("abandoned"):
        dropped = (f"selfsup was {summary['abandoned']} (kept from {MIN_HELD_OUT_GAIN_DB[base]:+.1f} dB over its "
                   f"{base} base)")
    else:
        dropped = (f"selfsup was cut at step {summary['steps']} of {summary['steps_planned']} (useful from "
                   f"{MIN_USEFUL_STEPS[base]}) with {summary['held_out_gain_db']:+.2f} dB over its {base} base on "
                   "held-out pairs")
    fallback, why = fast_method(job, dropped)
    job.budget.cut(f"selfsup result dropped: handed over to {fallback}")
    after = synthesise(job, fallback, requested=fallback, progress=progress, cancel=cancel)
    warnings = done.details.get("warnings", []) + after.details.get("warnings", [])
    details = {**done.details, **after.details, **({"warnings": warnings} if warnings else {})}
    return Synthesis(after.values, fallback, details, None, why)
