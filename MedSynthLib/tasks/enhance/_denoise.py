"""``denoise``: choose a method, cross-check the noise estimate, run it on the clock, check what it removed.

Why each step exists:

* **noise cross-check**: every method is set from sigma, and a wrong sigma is the commonest silent failure
  (the demo sample once read 138 where its air says 27: non-local means then blurred the anatomy away). The
  estimate carries a second, independent one (:mod:`MedSynthLib.noise`); when they differ by more than
  :data:`~MedSynthLib.noise.AGREEMENT_FACTOR`, ``auto`` uses the smaller (it smooths less) and says why; the
  report's ``noise_check`` gives the measured reasons they disagree (:mod:`MedSynthLib.noise_reasons`: correlated
  noise, a clipped background, a template without noise, ...) and the warning ends with the main one.
* **local noise**: real noise is not even (MR g-factor and coil sensitivities, CT attenuation). The local noise
  map (:mod:`MedSynthLib.noise_map`) is estimated on every call and summarised in the report's ``noise_map``; where
  it varies (95th over 5th percentile in the tissue above :data:`~MedSynthLib.noise_map.VARIATION_FACTOR`) the
  volume is divided by the map's shape, the noise is estimated and removed there as if it were even, and the
  result is multiplied back (:func:`._noise.map_normalisation`). ``sigma_used`` is then the divided volume's.
  On even noise nothing changes, bit for bit.
* **time budget**: ``time_budget`` seconds are measured on the clock (:class:`~MedSynthLib.budget.TimeBudget`);
  ``auto`` without one gets :func:`~._options.default_budget_seconds` (it grows with the voxel count). The fusion
  computes on the whole volume only the components that fit what is left (their cost measured on its probes),
  the self-supervised training stops early with its network so far, and the report's ``time_budget`` gives the
  budget, whether it was the default, the time spent and what was cut.
* **plausibility**: what a method removed must look like noise (:mod:`._checks`). When it does not, ``auto``
  falls back to the next safer method (``selfsup`` -> ``nlm`` -> ``aniso`` -> unchanged) and the report says
  what was implausible; an explicitly chosen method raises :class:`~MedSynthLib.errors.InputError` instead,
  so nothing implausible is ever written.
* **result check**: the output is then checked like every task's (:func:`~MedSynthLib.checks.check_result`:
  finite, within the input's plausible range), here and not in a front end, so the CLI, the Slicer panel,
  ``MedSynthLogic.process`` and ``enhance`` get the same refusal.

The methods themselves are one table (:mod:`._runners`): a name without a runner is an error.
"""


from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import numpy as np

from ...budget import TimeBudget
from ...checks import check_result
from ...engine import EngineReport, select_device
from ...errors import InputError
from ...noise import NoiseEstimate, estimate_noise_array, magnitude_rebias
from ...progress import CancelToken, ProgressCallback, check_cancel, report, subrange
from ...volume import Volume, mask_on_grid, validate_volume
from ._checks import check_removed_part
from ._noise import divided_noise, estimate_noise_map, explain_if_needed, map_normalisation, working_noise
from ._options import DenoiseOptions, default_budget_seconds
from ._results import DenoiseResult, MaskLike, finish_volume
from ._runners import DenoiseRun, run_method

__all__ = ["denoise", "choose_method", "produced_by", "AUTO_FALLBACKS"]

#: What ``auto`` tries next when a method's result fails the plausibility check.
AUTO_FALLBACKS = {"model": "fusion", "selfsup": "fusion", "fusion": "dct", "dct": "nlm", "nlm": "aniso",
                  "aniso": None}


def choose_method(options: DenoiseOptions) -> str:
    """The method ``options.method`` names; for ``auto``: ``model`` with a package, ``selfsup`` on a GPU, else
    ``fusion``."""
    if options.method != "auto":
        return options.method
    if options.model is not None:
        return "model"
    if select_device(options.device).type != "cpu":
        return "selfsup"
    return "fusion"


def _noise_hint(estimate: NoiseEstimate) -> Optional[str]:
    """What an explicit method's refusal suggests when the two noise estimates disagree."""
    if estimate.agree:
        return None
    return (f"the second noise estimate is {estimate.conservative_sigma:.4g}: --method auto would use it, or try "
            f"--strength {max(0.1, round(estimate.conservative_sigma / max(estimate.sigma, 1e-12), 1)):g}")


def _run_checked(first: str, options: DenoiseOptions, run: DenoiseRun, estimate: NoiseEstimate,
                 progress: Optional[ProgressCallback]) -> tuple[str, np.ndarray, dict, dict, list]:
    """Run ``first`` and check it; ``auto`` walks :data:`AUTO_FALLBACKS` until a result is plausible.

    Returns (method used, values, its parameters, its check, the rejected attempts).
    """
    check_sigma = min(float(run.noise.sigma), estimate.conservative_sigma)
    foreground = run.foreground
    # a multi-coil magnitude sits (2N - 1) sigma^2 above its signal and every method debiases what it smoothed: that
    # bias is not noise, so the check compares the input with the output biased back (magnitude_rebias), i.e. what
    # the smoothing alone removed (at 30 coils the bias, 2.6 sigma on a block at SNR 12, refused every method and
    # the volume came back unchanged: 19.19 dB on benchmarks/noise_map.py's MNI where 31 were reached)
    chi = run.coils > 1
    attempts: list[dict] = []
    method: Optional[str] = first
    while method is not None:
        check_cancel(run.cancel)
        values, details = run_method(method, options, run, progress)
        output = finish_volume(run.volume, values, run.mask, floor=0.0 if run.rician else None).array
        smoothed = magnitude_rebias(output, run.noise.sigma, run.coils) if chi else output
        if chi and run.mask is not None:  # outside the mask the output is the input itself: nothing to bias back
            smoothed = np.where(run.mask, smoothed, run.data)
        verdict = check_removed_part(run.data, smoothed, sigma=check_sigma, foreground=foreground,
                                     strength=options.strength)
        if not verdict["failed"]:
            return method, values, details, verdict, attempts
        if options.method != "auto":
            hint = _noise_hint(estimate) or "try --strength below 1 or a --mask of the tissue"
            raise InputError(f"denoise --method {method}: the result is implausible, nothing was written: "
                             f"{verdict['failed'][0]} (noise sigma {run.noise.sigma:.4g}; {hint})")
        attempts.append({"method": method, "failed": verdict["failed"], "measures": verdict["measures"]})
        method = AUTO_FALLBACKS.get(method)
    return "none", run.data, {}, {"failed": [], "measures": {}}, attempts


def _divided(volume: Volume, relative: np.ndarray) -> Volume:
    """``volume`` over the noise map's shape (float32, same geometry): even noise of the map's median sigma."""
    return Volume((volume.array.astype(np.float32) / relative).astype(np.float32), volume.ijk_to_ras.copy())


def _same_coils(divided: NoiseEstimate, first: NoiseEstimate) -> NoiseEstimate:
    """The divided volume's estimate, read with the coil count (and its source) of the volume's own air."""
    if first.coils <= 1:
        return divided
    return dataclasses.replace(divided, details={**divided.details, "coils_source": first.details.get("coils_source",
                                                                                                     "given")})


def produced_by(chosen: str, details: dict, *, unchanged: bool = False) -> str:
    """What produced the voxels, for the report's ``method``: ``chosen``, or ``fusion (dct_p8 alone)`` when the
    SURE fusion of ``fusion`` or ``selfsup`` put all its weight on one component (``...alone inside the
    foreground's box`` when selfsup's fusion covered only that box), or ``none`` when the input came back
    unchanged (strength 0, no measurable noise)."""
    if unchanged:
        return "none"
    fusion = details.get("fusion") if isinstance(details, dict) else None
    sole = fusion.get("sole_component") if isinstance(fusion, dict) else None
    if not sole:
        return chosen
    where = fusion.get("sole_component_where", "every voxel")
    return f"{chosen} ({sole} alone)" if where == "every voxel" else f"{chosen} ({sole} alone {where})"


def _denoised(chosen: str, options: DenoiseOptions, run: DenoiseRun, estimate: NoiseEstimate,
              progress: Optional[ProgressCallback]) -> tuple[str, np.ndarray, dict, dict, list, list[str]]:
    """The checked run of ``chosen`` (or the data unchanged when there is nothing to remove), with its warnings."""
    if options.strength == 0 or run.noise.sigma <= 0:
        return chosen, run.data, {}, {"failed": [], "measures": {}}, [], [
            "strength 0: the volume was returned unchanged" if options.strength == 0 else
            "no noise was measurable in this volume; it was returned unchanged"]
    chosen, values, details, verdict, attempts = _run_checked(chosen, options, run, estimate,
                                                              subrange(progress, 0.05, 1.0))
    warnings = [f"auto: {a['method']} was rejected ({a['failed'][0]})" for a in attempts]
    if chosen == "none":
        warnings.append("auto: no method gave a plausible result; the volume was returned unchanged")
    if chosen == "model" and options.strength > 1:
        warnings.append("strength above 1 has no further effect with a model; 1 was used")
    return chosen, values, details, verdict, attempts, warnings


def denoise(
    volume: Volume,
    options: Optional[DenoiseOptions] = None,
    /,
    *,
    mask: MaskLike = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    **knobs: Any,
) -> DenoiseResult:
    """Remove noise from ``volume``, keeping its grid and dtype (integer CT stays integer HU).

    Parameters
    ----------
    volume : Volume
    options : DenoiseOptions, optional
        Every knob (see :class:`DenoiseOptions`); keywords build the same object
        (``denoise(volume, method="nlm")`` is ``denoise(volume, DenoiseOptions(method="nlm"))``), on top of
        ``options`` when both are given. An unknown name is an error.
    mask : ndarray or Volume, optional
        Region to denoise (same grid); voxels outside stay bit-identical. The
        noise is estimated inside it.

    The knobs:

    method : {"auto", "fusion", "dct", "selfsup", "model", "nlm", "aniso"}
        See :mod:`MedSynthLib.tasks.enhance`; ``auto`` picks ``model`` when ``model`` is given, ``selfsup`` on a
        GPU, else ``fusion``, and falls back to a safer method when a result fails the plausibility check.
    strength : float in [0, 2]
        1 is the method's calibrated setting; 0 returns the input unchanged.
        For ``fusion`` and ``selfsup`` it scales the noise variance the fusion trusts (and the sigma of its
        components), for ``dct`` the sigma, for
        ``nlm`` the filter parameter ``h``, for ``aniso`` the iterations; for
        ``model`` it blends output and input (values above 1 act as 1).
    model : path or LoadedModel, optional
        A denoise model package, for ``method="model"`` (default: the bundled ``denoise_default``).
    modality : {"MR", "CT"}, optional
        Overrides the guess; MR noise is Rician, CT noise Gaussian.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (network methods).
    seed : int
        Seeds the self-supervised training: same seed, same CPU result (without a time budget).
    method_options : dict, optional
        Per-method options, as for :func:`~MedSynthLib.tasks.fill.fill_slices`: ``{"selfsup": {"steps": N}}``
        sets the self-supervised training length (default from
        :class:`~MedSynthLib.tasks.enhance._selfsup.SelfSupSettings`); fewer is faster.
    time_budget : float, optional
        Seconds of wall time, checked on the clock. The fusion fits its weights on probe boxes, measures there
        what each component costs, and computes on the whole volume only the components that fit what is left
        (the best estimated risk among those, else the cheapest); on small volumes, where it probes the whole
        volume, it skips its remaining components once the budget has run out (the first always runs). The
        self-supervised training stops early (its network so far) so that the rest of the run fits. The report's
        ``time_budget`` says what was cut. Unset: for ``auto``, :func:`~._options.default_budget_seconds`
        (about what ANTs takes: CT 30 s + 8 s, MR 60 s + 20 s per million voxels); for a named method, no limit (reproducible).
    threads : int, optional
        Torch CPU threads for the network methods; default: the cores idle now
        (:func:`~MedSynthLib.budget.cpu_threads`), because threads fighting another job for busy cores run
        several times slower than one.
    batch_size : int
        Slices per batch of the ``model`` method.
    local_noise : {"auto", "off"}
        ``auto``: follow the local noise map where it varies (see the module notes); ``off``: one sigma.
    coils : float, optional
        MR magnitude noise: the effective coil count N of a sum-of-squares reconstruction, whose noise is
        non-central chi with 2N degrees of freedom (the background sigma from chi's mode, the debiasing
        ``sqrt(m^2 - (2N - 1) sigma^2)``); 1: Rician; unset: estimated from the air's quartile ratio. The
        report's ``noise_model`` says which (``rician`` or ``noncentral-chi, N coils (estimated from the air)``).

    Returns
    -------
    DenoiseResult

    Raises
    ------
    InputError
        Unknown method, option or method option, strength outside [0, 2], an empty mask or one on another
        grid, a bad budget, or an explicit method whose result failed the plausibility check.
    ResultError
        The output is not plausible (non-finite, far outside the input's range): nothing is returned.
    Cancelled
        ``cancel`` was set; the input is untouched.
    """
    options = DenoiseOptions.build(options, **knobs)
    validate_volume(volume)
    select_device(options.device)  # a named device that is absent is an error for every method, classical ones too
    automatic = options.time_budget is None and options.method == "auto"
    budget = TimeBudget(options.time_budget)  # on the clock from here; the default is set once the noise model is known
    boolean_mask = mask_on_grid(volume, mask)
    start = time.perf_counter()
    chosen = choose_method(options)
    check_cancel(cancel)
    report(progress, 0.0, "estimating noise")
    estimate = estimate_noise_array(volume, mask=boolean_mask, modality=options.modality, coils=options.coils)
    local = estimate_noise_map(volume, mask=boolean_mask, modality=estimate.modality)
    relative, map_report = map_normalisation(volume, local, use=options.local_noise)
    work = volume if relative is None else _divided(volume, relative)
    # on even noise (relative None) this is the one-sigma path exactly; else the estimators see the divided volume
    work_estimate = estimate if relative is None else divided_noise(_same_coils(
        estimate_noise_array(work, mask=boolean_mask, modality=estimate.modality, coils=estimate.coils), estimate),
        local)
    explanation = explain_if_needed(work, work_estimate, mask=boolean_mask,
                                    noise_map=local if relative is None else None)  # divided: no longer a reason
    noise, noise_check, warnings = working_noise(work_estimate, options.method, explanation=explanation)
    if relative is not None:
        map_report["divided_noise"] = work_estimate.as_dict()
    engine_report = EngineReport(device_requested=str(options.device))
    run = DenoiseRun(volume=work, data=work.array.astype(np.float32), mask=boolean_mask, noise=noise,
                     budget=budget, engine_report=engine_report, cancel=cancel)
    if automatic:
        budget.seconds = default_budget_seconds("denoise", volume.array.size,
                                                noise_model="rician" if run.rician else "gaussian")
    unchanged = options.strength == 0 or run.noise.sigma <= 0
    chosen, values, details, verdict, attempts, notes = _denoised(chosen, options, run, work_estimate, progress)
    if relative is not None:  # back to the volume's units; what came back unchanged is the input itself
        values = volume.array if values is run.data else values * relative
    warnings.extend(notes)
    warnings.extend(engine_report.fallbacks)
    warnings.extend(f"time budget: {cut}" for cut in budget.cuts)
    check_cancel(cancel)
    output = finish_volume(volume, values, boolean_mask, floor=0.0 if run.rician else None)
    check_result(volume, output, task=f"denoise ({chosen})")
    uses_device = chosen in ("selfsup", "model")
    result_report = {
        "task": "denoise", "method": produced_by(chosen, details, unchanged=unchanged),
        "method_requested": options.method, "strength": options.strength,
        "seed": options.seed, "noise": estimate.as_dict(), "sigma_used": round(float(noise.sigma), 6),
        "noise_model": noise.noise_model if run.rician else "gaussian",
        "noise_map": map_report, "noise_check": noise_check, "plausibility": {**verdict, "rejected": attempts},
        "device": engine_report.device_used if uses_device else "cpu",
        "engine": engine_report.as_dict() if uses_device else None, "parameters": details,
        "time_budget": {**budget.report(), "default": automatic}, "masked": boolean_mask is not None,
        "seconds": round(time.perf_counter() - start, 3), "warnings": warnings,
    }
    report(progress, 1.0, f"denoised ({result_report['method']})")
    return DenoiseResult(volume=output, noise=estimate, report=result_report, noise_map=local.volume)
