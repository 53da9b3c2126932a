"""The denoise methods as one table: method name -> runner, each on the same options and the same run state.

A runner takes the call's :class:`DenoiseOptions` (unchanged, as the front end built it), the
:class:`DenoiseRun` (what the call computed once: the float32 data, the mask, the working noise estimate, the
clock) and a progress callback, and returns the denoised float values with the method's parameters.
:func:`run_method` looks the name up in :data:`RUNNERS`, so a method name without a runner is an error, never
another method run silently.

One Rician policy for every method: magnitude data come back debiased (the smoothers through
:func:`~MedSynthLib.noise.magnitude_debias` here, with the estimate's coil count, the fusions inside, where they fuse), so choosing a method never
changes which quantity is estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional

import numpy as np

from ...budget import TimeBudget, cpu_threads, torch_threads
from ...engine import EngineReport, select_device
from ...errors import InputError
from ...noise import NoiseEstimate, magnitude_debias, otsu_foreground
from ...progress import CancelToken, ProgressCallback, report
from ...volume import THICK_SLICE_RATIO, Volume
from ._options import DenoiseOptions

__all__ = ["DenoiseRun", "RUNNERS", "SMOOTHERS", "run_method", "is_rician"]

Outcome = tuple[np.ndarray, dict]


@dataclass(frozen=True)
class DenoiseRun:
    """The per-call state every method reads beside the options (computed once by ``denoise``)."""

    volume: Volume
    #: The voxels as float32 (a copy: the input is never modified).
    data: np.ndarray
    #: Boolean mask on the grid; None: the whole volume.
    mask: Optional[np.ndarray]
    #: The estimate the methods are set from (the conservative one when ``auto`` and the estimators disagree).
    noise: NoiseEstimate
    budget: TimeBudget
    engine_report: EngineReport
    cancel: Optional[CancelToken] = None

    @cached_property
    def foreground(self) -> np.ndarray:
        """Where the methods fit and the plausibility check looks: the mask, else an Otsu foreground."""
        return self.mask if self.mask is not None else otsu_foreground(self.data)

    @property
    def rician(self) -> bool:
        return is_rician(self.noise, self.data)

    @property
    def coils(self) -> float:
        """The magnitude's effective coil count (1: Rician; Gaussian data: 1, unused)."""
        return float(self.noise.coils) if self.rician else 1.0


def is_rician(noise: NoiseEstimate, data: np.ndarray) -> bool:
    return noise.model == "rician" and bool(data.min() >= 0)  # a "magnitude" image with negative values is not one


def _nlm(options: DenoiseOptions, run: DenoiseRun, progress: Optional[ProgressCallback]) -> Outcome:
    from ._classical import denoise_nlm

    return denoise_nlm(run.data, sigma=run.noise.sigma, strength=options.strength, progress=progress,
                       cancel=run.cancel)


def _aniso(options: DenoiseOptions, run: DenoiseRun, progress: Optional[ProgressCallback]) -> Outcome:
    from ._classical import aniso_iterations, denoise_aniso

    relative = run.noise.sigma / max(abs(run.noise.signal), 1e-6)
    return denoise_aniso(run.data, iterations=aniso_iterations(relative, options.strength), progress=progress,
                         cancel=run.cancel)


def _dct(options: DenoiseOptions, run: DenoiseRun, progress: Optional[ProgressCallback]) -> Outcome:
    """The sliding DCT filter alone (torch's CPU threads from the idle cores, as for the network methods)."""
    from ._dct import DCT_DEFAULTS, denoise_dct, shaped_blocks

    threads = cpu_threads(requested=options.threads)
    with torch_threads(threads):
        blocks = shaped_blocks(run.volume.spacing_kji, edge=DCT_DEFAULTS["patch"], step=DCT_DEFAULTS["step"])
        values, details = denoise_dct(run.data, sigma=run.noise.sigma, strength=options.strength, progress=progress,
                                      cancel=run.cancel, **blocks)
    return values, {**details, "cpu_threads": threads}


def _fusion(options: DenoiseOptions, run: DenoiseRun, progress: Optional[ProgressCallback]) -> Outcome:
    """Collaborative filter, sliding DCT and non-local means, SURE-weighted (no training)."""
    from ._sure import denoise_fusion

    threads = cpu_threads(requested=options.threads)
    with torch_threads(threads):
        report(progress, 0.0, "collaborative filter, DCT and non-local means, SURE-weighted")
        values, details = denoise_fusion(run.data, sigma=run.noise.sigma, rician=run.rician, coils=run.coils,
                                         foreground=run.foreground, strength=options.strength, seed=options.seed,
                                         spacing=run.volume.spacing_kji, budget=run.budget, cancel=run.cancel,
                                         progress=progress)
    return values, {**details, "cpu_threads": threads}


def _model(options: DenoiseOptions, run: DenoiseRun, progress: Optional[ProgressCallback]) -> Outcome:
    """A trained denoise package, 2.5D slices, blended with the input by ``strength`` (at most 1)."""
    from ...engine import run_slices
    from ...models.package import LoadedModel, load_package
    from ...network_inputs.denoise import (assemble_denoise_outputs, check_denoise_input_spec, make_denoise_inputs,
                                           normalise_for_denoise)

    model = options.model
    if model is None:  # the shipped package, as fill's model method does
        from ...models import bundled_package

        model = bundled_package("denoise")
        if model is None:
            raise InputError("method 'model' needs a denoise model package (model=PATH, or --model); "
                             "the bundled denoise_default is not installed")
    loaded = model if isinstance(model, LoadedModel) else load_package(model, task="denoise")
    spec = check_denoise_input_spec(loaded.metadata["input"], name=f"model package {loaded.info.name}")
    volume = run.volume
    axis = volume.slice_axis()
    normalised, scale = normalise_for_denoise(volume.array)
    inputs = make_denoise_inputs(normalised, axis=axis, context=spec)
    outputs = run_slices(loaded.network, inputs, device=options.device, batch_size=options.batch_size,
                         progress=progress, cancel=run.cancel, report_to=run.engine_report)
    denoised = scale.inverse(assemble_denoise_outputs(outputs, axis=axis))
    blend = min(options.strength, 1.0)
    original = volume.array.astype(np.float64)
    values = original + blend * (denoised - original)
    return values, {"package": loaded.info.name, "context": spec, "axis": int(axis), "blend": blend}


def _selfsup(options: DenoiseOptions, run: DenoiseRun, progress: Optional[ProgressCallback]) -> Outcome:
    """``fusion`` plus a blind-spot network trained on this volume, with the slice axis moved first."""
    from ._selfsup import SelfSupSettings, denoise_selfsup

    steps = options.selfsup_steps
    settings = SelfSupSettings() if steps is None else SelfSupSettings(steps=steps)
    spacing = run.volume.spacing_kji
    planar = max(spacing) > THICK_SLICE_RATIO * min(spacing)
    axis = run.volume.slice_axis() if planar else 0
    rician = run.rician
    moved = np.moveaxis(run.data, axis, 0)
    on_cpu = select_device(options.device).type == "cpu"
    threads = cpu_threads(requested=options.threads) if on_cpu else None
    with torch_threads(threads):
        values, details = denoise_selfsup(
            np.ascontiguousarray(moved), sigma=run.noise.sigma, rician=rician, coils=run.coils,
            foreground=np.ascontiguousarray(np.moveaxis(run.foreground, axis, 0)), planar=planar,
            spacing=(spacing[axis], *(d for a, d in enumerate(spacing) if a != axis)),  # as the moved axes
            strength=options.strength, seed=options.seed, device=options.device, settings=settings,
            budget=run.budget, progress=progress, cancel=run.cancel, engine_report=run.engine_report)
    details.update(slice_axis=int(axis), noise_model=run.noise.noise_model if rician else "gaussian",
                   cpu_threads=threads)
    return np.moveaxis(values, 0, axis), details


Runner = Callable[[DenoiseOptions, DenoiseRun, Optional[ProgressCallback]], Outcome]

#: Every denoise method but ``auto`` (which picks one of these), by name.
RUNNERS: dict[str, Runner] = {"fusion": _fusion, "dct": _dct, "selfsup": _selfsup, "model": _model, "nlm": _nlm,
                              "aniso": _aniso}

#: The methods that smooth the magnitude as it is; on Rician data their output is debiased here
#: (``fusion`` and ``selfsup`` debias inside, where they fuse).
SMOOTHERS = ("nlm", "aniso", "dct")

def run_method(name: str, options: DenoiseOptions, run: DenoiseRun,
               progress: Optional[ProgressCallback]) -> Outcome:
    """Method ``name`` on the float32 data, Rician-debiased like every other method.

    Raises
    ------
    InputError
        ``name`` is no method (``auto`` is resolved by the caller first).
    """
    runner = RUNNERS.get(name)
    if runner is None:
        raise InputError(f"denoise has no method {name!r}; the methods are {', '.join(RUNNERS)}")
    values, details = runner(options, run, progress)
    if name in SMOOTHERS:
        rician = is_rician(run.noise, run.data)
        if rician:
            values = magnitude_debias(values, run.noise.sigma, run.coils)
        details = {**details, "noise_model": run.noise.noise_model if rician else "gaussian", "rician_debias": rician}
    return values, details
