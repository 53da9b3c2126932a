"""``denoise``: choose a method, cross-check the noise estimate, run it on the clock, check what it removed.

Why each step exists:

* **noise cross-check**: every method is set from sigma, and a wrong sigma is the commonest silent failure
  (the demo sample once read 138 where its air says 27: non-local means then blurred the anatomy away). The
  estimate carries a second, independent one (:mod:`MedSynthLib.noise`); when they differ by more than
  :data:`~MedSynthLib.noise.AGREEMENT_FACTOR`, ``auto`` uses the smaller (it smooths less) and says why.
* **time budget**: ``time_budget`` seconds are measured on the clock (:class:`~MedSynthLib.budget.TimeBudget`);
  the self-supervised training stops early with its network so far when they run out, and the report gives
  the budget, the time spent and what was cut.
* **plausibility**: what a method removed must look like noise (:mod:`._checks`). When it does not, ``auto``
  falls back to the next safer method (``selfsup`` -> ``nlm`` -> ``aniso`` -> unchanged) and the report says
  what was implausible; an explicitly chosen method raises :class:`~MedSynthLib.errors.InputError` instead,
  so nothing implausible is ever written.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Optional

import numpy as np

from ...budget import TimeBudget, cpu_threads, torch_threads
from ...engine import EngineReport, select_device
from ...errors import InputError, check_whole_number
from ...noise import NoiseEstimate, estimate_noise_array, otsu_foreground, rician_debias
from ...progress import CancelToken, ProgressCallback, check_cancel, report, subrange
from ...volume import THICK_SLICE_RATIO, Volume, mask_on_grid, validate_volume
from ._checks import check_removed_part
from ._enhance import (DENOISE_METHODS, DenoiseResult, MaskLike,
                       _check_strength, _finish)

__all__ = ["denoise", "AUTO_FALLBACKS"]

log = logging.getLogger(__name__)

#: What ``auto`` tries next when a method's result fails the plausibility check.
AUTO_FALLBACKS = {"model": "fusion", "selfsup": "fusion", "fusion": "dct", "dct": "nlm", "nlm": "aniso",
                  "aniso": None}


def _choose_method(method: str, volume: Volume, model: Any, device: str) -> str:
    if method != "auto":
        return method
    if model is not None:
        return "model"
    if select_device(device).type != "cpu":
        return "selfsup"
    return "fusion"


def _working_noise(noise: NoiseEstimate, method: str) -> tuple[NoiseEstimate, dict, list[str]]:
    """The estimate the method is set from: the conservative (smaller) sigma when ``auto`` and the two disagree."""
    check = dict(noise.details.get("cross_check") or {})
    if not check:
        return noise, {"cross_check": None, "branch": "single estimate",
                       "why": "no second estimator applies to this volume"}, []
    if noise.agree:
        return noise, {"cross_check": check, "branch": "estimate",
                       "why": f"{check['primary']} and {check['second']} agree within x{check['factor']:g}"}, []
    line = (f"noise estimates disagree: {check['primary']} sigma {check['primary_sigma']:.4g}, {check['second']} "
            f"sigma {check['second_sigma']:.4g} (x{check['ratio']:.2f}, more than x{check['factor']:g})")
    if method != "auto":
        return noise, {"cross_check": check, "branch": "estimate", "why": line + "; the method was chosen "
                       "explicitly, so its usual estimate was used"}, [line]
    used = dataclasses.replace(noise, sigma=noise.conservative_sigma)
    why = f"{line}; auto used the smaller, {used.sigma:.4g}, which smooths less"
    return used, {"cross_check": check, "branch": "conservative", "why": why}, [why]


#: The methods that smooth the magnitude as it is; on Rician data their output is debiased by
#: :func:`~MedSynthLib.noise.rician_debias` (``fusion`` and ``selfsup`` debias inside, where they fuse).
SMOOTHERS = ("nlm", "aniso", "dct")


def _run_method(chosen: str, volume: Volume, data: np.ndarray, noise: NoiseEstimate, context: dict,
                progress: Optional[ProgressCallback]) -> tuple[np.ndarray, dict]:
    """One method on the float32 data; ``context`` holds the shared knobs (strength, mask, seed, ...).

    One Rician policy for every method: magnitude data come back debiased (the smoothers here, the fusions
    inside), so choosing a method never changes which quantity is estimated."""
    values, details = _run_smoother_or_model(chosen, volume, data, noise, context, progress)
    if chosen in SMOOTHERS:
        rician = _is_rician(noise, data)
        if rician:
            values = rician_debias(values, noise.sigma)
        details = {**details, "noise_model": "rician" if rician else "gaussian", "rician_debias": rician}
    return values, details


def _run_smoother_or_model(chosen: str, volume: Volume, data: np.ndarray, noise: NoiseEstimate, context: dict,
                           progress: Optional[ProgressCallback]) -> tuple[np.ndarray, dict]:
    strength, cancel = context["strength"], context["cancel"]
    if chosen == "nlm":
        from ._classical import denoise_nlm

        return denoise_nlm(data, sigma=noise.sigma, strength=strength, progress=progress, cancel=cancel)
    if chosen == "aniso":
        from ._classical import aniso_iterations, denoise_aniso

        relative = noise.sigma / max(abs(noise.signal), 1e-6)
        return denoise_aniso(data, iterations=aniso_iterations(relative, strength), progress=progress, cancel=cancel)
    if chosen == "model":
        return _denoise_model(volume, context, progress)
    if chosen in ("dct", "fusion"):
        return _training_free(chosen, data, noise, context, progress)
    return _selfsup(volume, data, noise, context, progress)


def _is_rician(noise: NoiseEstimate, data: np.ndarray) -> bool:
    return noise.model == "rician" and bool(data.min() >= 0)  # a "magnitude" image with negative values is not one


def _training_free(chosen: str, data: np.ndarray, noise: NoiseEstimate, context: dict,
                   progress: Optional[ProgressCallback]) -> tuple[np.ndarray, dict]:
    """``dct`` or ``fusion`` (torch's CPU threads from the idle cores, as for the network methods)."""
    from ._dct import DCT_DEFAULTS, denoise_dct, shaped_blocks
    from ._sure import denoise_fusion

    strength, cancel = context["strength"], context["cancel"]
    threads = cpu_threads(requested=context["threads"])
    spacing = context["spacing"]
    with torch_threads(threads):
        if chosen == "dct":
            blocks = shaped_blocks(spacing, edge=DCT_DEFAULTS["patch"], step=DCT_DEFAULTS["step"])
            values, details = denoise_dct(data, sigma=noise.sigma, strength=strength, progress=progress,
                                          cancel=cancel, **blocks)
        else:
            foreground = context["mask"] if context["mask"] is not None else otsu_foreground(data)
            report(progress, 0.0, "DCT and non-local means, SURE-weighted")
            values, details = denoise_fusion(data, sigma=noise.sigma, rician=_is_rician(noise, data),
                                             foreground=foreground, strength=strength, seed=context["seed"],
                                             spacing=spacing, budget=context["budget"], cancel=cancel)
    return values, {**details, "cpu_threads": threads}


def _denoise_model(volume: Volume, context: dict, progress: Optional[ProgressCallback]) -> tuple[np.ndarray, dict]:
    from ...engine import run_slices
    from ...models.package import LoadedModel, load_package
    from ...network_inputs.denoise import (assemble_denoise_outputs, check_denoise_input_spec, make_denoise_inputs,
                                           normalise_for_denoise)

    model = context["model"]
    if model is None:  # the shipped package, as fill's model method does
        from ...models import bundled_package

        model = bundled_package("denoise")
        if model is None:
            raise InputError("method 'model' needs a denoise model package (model=PATH, or --model); "
                             "the bundled denoise_default is not installed")
    loaded = model if isinstance(model, LoadedModel) else load_package(model, task="denoise")
    spec = check_denoise_input_spec(loaded.metadata["input"], name=f"model package {loaded.info.name}")
    axis = volume.slice_axis()
    normalised, scale = normalise_for_denoise(volume.array)
    inputs = make_denoise_inputs(normalised, axis=axis, context=spec)
    outputs = run_slices(loaded.network, inputs, device=context["device"], batch_size=context["batch_size"],
                         progress=progress, cancel=context["cancel"], report_to=context["engine_report"])
    denoised = scale.inverse(assemble_denoise_outputs(outputs, axis=axis))
    blend = min(context["strength"], 1.0)
    original = volume.array.astype(np.float64)
    values = original + blend * (denoised - original)
    return values, {"package": loaded.info.name, "context": spec, "axis": int(axis), "blend": blend}


def _selfsup(volume: Volume, data: np.ndarray, noise: NoiseEstimate, context: dict,
             progress: Optional[ProgressCallback]) -> tuple[np.ndarray, dict]:
    from ._selfsup import SelfSupSettings, denoise_selfsup

    steps = context["selfsup_options"].get("steps")
    settings = SelfSupSettings() if steps is None else SelfSupSettings(steps=int(steps))
    spacing = volume.spacing_kji
    planar = max(spacing) > THICK_SLICE_RATIO * min(spacing)
    axis = volume.slice_axis() if planar else 0
    mask = context["mask"]
    foreground = mask if mask is not None else otsu_foreground(data)
    rician = _is_rician(noise, data)
    moved = np.moveaxis(data, axis, 0)
    on_cpu = select_device(context["device"]).type == "cpu"
    threads = cpu_threads(requested=context["threads"]) if on_cpu else None
    with torch_threads(threads):
        values, details = denoise_selfsup(
            np.ascontiguousarray(moved), sigma=noise.sigma, rician=rician,
            foreground=np.ascontiguousarray(np.moveaxis(foreground, axis, 0)), planar=planar,
            spacing=(spacing[axis], *(d for a, d in enumerate(spacing) if a != axis)),  # as the moved axes
            strength=context["strength"], seed=context["seed"], device=context["device"], settings=settings,
            budget=context["budget"], progress=progress, cancel=context["cancel"],
            engine_report=context["engine_report"])
    details.update(slice_axis=int(axis), noise_model="rician" if rician else "gaussian", cpu_threads=threads)
    return np.moveaxis(values, 0, axis), details


def _run_checked(volume: Volume, data: np.ndarray, first: str, noise: NoiseEstimate, context: dict,
                 progress: Optional[ProgressCallback], requested: str) -> tuple[str, np.ndarray, dict, dict, list]:
    """Run ``first`` and check it; ``auto`` walks :data:`AUTO_FALLBACKS` until a result is plausible.

    Returns (method used, values, its parameters, its check, the rejected attempts).
    """
    foreground = context["mask"] if context["mask"] is not None else otsu_foreground(data)
    attempts: list[dict] = []
    method: Optional[str] = first
    while method is not None:
        check_cancel(context["cancel"])
        values, details = _run_method(method, volume, data, noise, context, progress)
        output = _finish(volume, values, context["mask"]).array
        verdict = check_removed_part(data, output, sigma=context["check_sigma"], foreground=foreground,
                                     strength=context["strength"])
        if not verdict["failed"]:
            return method, values, details, verdict, attempts
        if requested != "auto":
            hint = context["noise_hint"] or "try --strength below 1 or a --mask of the tissue"
            raise InputError(f"denoise --method {method}: the result is implausible, nothing was written: "
                             f"{verdict['failed'][0]} (noise sigma {noise.sigma:.4g}; {hint})")
        attempts.append({"method": method, "failed": verdict["failed"], "measures": verdict["measures"]})
        method = AUTO_FALLBACKS.get(method)
    return "none", data, {}, {"failed": [], "measures": {}}, attempts


#: What ``method_options`` may hold, per method (the grammar of ``fill_slices``'s ``method_options``).
METHOD_OPTIONS = {"selfsup": ("steps",)}


def _method_options(method_options: Optional[dict]) -> dict:
    """The selfsup options, checked: ``{"selfsup": {"steps": N}}`` (training length, the name fill uses too)."""
    options = dict(method_options or {})
    unknown = sorted(set(options) - set(METHOD_OPTIONS))
    if unknown:
        raise InputError(f"method_options for denoise take {', '.join(METHOD_OPTIONS)}, got {', '.join(unknown)}")
    selfsup = dict(options.get("selfsup") or {})
    bad = sorted(set(selfsup) - set(METHOD_OPTIONS["selfsup"]))
    if bad:
        raise InputError(f"denoise selfsup options are {', '.join(METHOD_OPTIONS['selfsup'])}, got {', '.join(bad)}")
    if selfsup.get("steps") is not None:
        check_whole_number(selfsup["steps"], "selfsup steps", low=1, high=10**6)
    return selfsup


def _validate(volume: Volume, method: str, strength: float, modality: Optional[str], model: Any) -> float:
    validate_volume(volume)
    if method not in DENOISE_METHODS:
        raise InputError(f"method must be one of {', '.join(DENOISE_METHODS)}, got {method!r}")
    strength = _check_strength(strength)
    if modality is not None and modality not in ("MR", "CT"):
        raise InputError(f"modality must be MR or CT, got {modality!r}")
    return strength


def denoise(
    volume: Volume,
    *,
    method: str = "auto",
    strength: float = 1.0,
    mask: MaskLike = None,
    model: Any = None,
    modality: Optional[str] = None,
    device: str = "auto",
    seed: int = 0,
    method_options: Optional[dict] = None,
    time_budget: Optional[float] = None,
    threads: Optional[int] = None,
    batch_size: int = 16,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> DenoiseResult:
    """Remove noise from ``volume``, keeping its grid and dtype (integer CT stays integer HU).

    Parameters
    ----------
    volume : Volume
    method : {"auto", "fusion", "dct", "selfsup", "model", "nlm", "aniso"}
        See :mod:`MedSynthLib.tasks.enhance`; ``auto`` picks ``model`` when ``model`` is given, ``selfsup`` on a
        GPU, else ``fusion``, and falls back to a safer method when a result fails the plausibility check.
    strength : float in [0, 2]
        1 is the method's calibrated setting; 0 returns the input unchanged.
        For ``fusion`` and ``selfsup`` it scales the noise variance the fusion trusts (and the sigma of its
        components), for ``dct`` the sigma, for
        ``nlm`` the filter parameter ``h``, for ``aniso`` the iterations; for
        ``model`` it blends output and input (values above 1 act as 1).
    mask : ndarray or Volume, optional
        Region to denoise (same grid); voxels outside stay bit-identical. The
        noise is estimated inside it.
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
        Seconds of wall time, checked on the clock: the self-supervised training stops early (its network so
        far) so that the rest of the run fits, and the fusion skips its remaining components once the budget
        has run out (the collaborative filter, the first, always runs); the report's ``budget`` says what was
        cut.
    threads : int, optional
        Torch CPU threads for the network methods; default: the cores idle now
        (:func:`~MedSynthLib.budget.cpu_threads`), because threads fighting another job for busy cores run
        several times slower than one.

    Returns
    -------
    DenoiseResult

    Raises
    ------
    InputError
        Unknown method or method option, strength outside [0, 2], an empty mask or one on another grid, a bad
        budget, or an explicit method whose result failed the plausibility check.
    Cancelled
        ``cancel`` was set; the input is untouched.
    """
    strength = _validate(volume, method, strength, modality, model)
    selfsup_options = _method_options(method_options)
    select_device(device)  # a named device that is absent is an error for every method, classical ones too
    budget = TimeBudget(time_budget)
    boolean_mask = mask_on_grid(volume, mask)
    start = time.perf_counter()
    chosen = _choose_method(method, volume, model, device)
    check_cancel(cancel)
    report(progress, 0.0, "estimating noise")
    estimate = estimate_noise_array(volume, mask=boolean_mask, modality=modality)
    noise, noise_check, warnings = _working_noise(estimate, method)
    engine_report = EngineReport(device_requested=str(device))
    context = {"strength": strength, "mask": boolean_mask, "spacing": volume.spacing_kji, "model": model,
               "device": device, "seed": int(seed),
               "selfsup_options": selfsup_options, "threads": threads, "batch_size": batch_size, "budget": budget,
               "check_sigma": min(float(noise.sigma), estimate.conservative_sigma),
               "noise_hint": None if estimate.agree else f"the second noise estimate is "
               f"{estimate.conservative_sigma:.4g}: --method auto would use it, or try --strength "
               f"{max(0.1, round(estimate.conservative_sigma / max(estimate.sigma, 1e-12), 1)):g}",
               "cancel": cancel, "engine_report": engine_report}
    data = volume.array.astype(np.float32)
    details: dict = {}
    verdict: dict = {"failed": [], "measures": {}}
    attempts: list = []
    if strength == 0 or noise.sigma <= 0:
        values = data
        warnings.append("strength 0: the volume was returned unchanged" if strength == 0 else
                        "no noise was measurable in this volume; it was returned unchanged")
    else:
        chosen, values, details, verdict, attempts = _run_checked(volume, data, chosen, noise, context,
                                                                  subrange(progress, 0.05, 1.0), method)
        warnings.extend(f"auto: {a['method']} was rejected ({a['failed'][0]})" for a in attempts)
        if chosen == "none":
            warnings.append("auto: no method gave a plausible result; the volume was returned unchanged")
        if chosen == "model" and strength > 1:
            warnings.append("strength above 1 has no further effect with a model; 1 was used")
    warnings.extend(engine_report.fallbacks)
    warnings.extend(f"time budget: {cut}" for cut in budget.cuts)
    check_cancel(cancel)
    output = _finish(volume, values, boolean_mask)
    uses_device = chosen in ("selfsup", "model")
    result_report = {
        "task": "denoise", "method": chosen, "method_requested": method, "strength": strength, "seed": int(seed),
        "noise": estimate.as_dict(), "sigma_used": round(float(noise.sigma), 6), "noise_check": noise_check,
        "plausibility": {**verdict, "rejected": attempts},
        "device": engine_report.device_used if uses_device else "cpu",
        "engine": engine_report.as_dict() if uses_device else None, "parameters": details,
        "budget": budget.report(), "masked": boolean_mask is not None,
        "seconds": round(time.perf_counter() - start, 3), "warnings": warnings,
    }
    report(progress, 1.0, f"denoised ({chosen})")
    return DenoiseResult(volume=output, noise=estimate, report=result_report)
