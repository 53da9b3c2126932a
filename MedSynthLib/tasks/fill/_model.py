"""``model``: fill slices with a trained fill model package (input convention in :mod:`MedSynthLib.network_inputs.fill`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from ...engine import EngineReport, describe_device, run_slices, select_device
from ...errors import InputError, ModelError, check_whole_number
from ...models.package import LoadedModel, load_package
from ...models.sampling import ddim_sample_batches, package_schedule, size_multiple
from ...progress import CancelToken, ProgressCallback
from ...network_inputs.fill import apply_fill_output, check_fill_input_spec, make_fill_inputs
from ._interp import FillPlan, context_offsets, gather_context

__all__ = ["MODEL_DEFAULTS", "load_fill_model", "model_fill"]


def load_fill_model(model: Union[str, Path, LoadedModel]) -> LoadedModel:
    """Load (or accept) a fill package and check its input spec against ``FILL_INPUT_SPEC``.

    Raises
    ------
    ModelError
        Not a fill package, or an input convention this MedSynth does not use.
    """
    loaded = model if isinstance(model, LoadedModel) else load_package(model, task="fill")
    if loaded.info.task != "fill":
        raise ModelError(f"model package {loaded.info.name} is a {loaded.info.task!r} model; filling needs a 'fill' model")
    check_fill_input_spec(loaded.metadata["input"], name=f"model package {loaded.info.name}")
    return loaded


#: Settings of the ``model`` method (``method_options={"model": {...}}``).
MODEL_DEFAULTS = {"ddim_steps": 20}


def _diffusion_residual(loaded: LoadedModel, inputs: np.ndarray, *, device: str, batch_size: int, steps: int,
                        seed: int, cancel: Optional[CancelToken], engine: EngineReport) -> np.ndarray:
    """DDIM samples of a diffusion fill package on whole planes: the residual over linear, (N, 1, H, W).

    The package was trained on ``target - linear + 0.5`` (``FillPairs`` with the diffusion family),
    so the residual is the sample minus 0.5. Whole planes, not tiles: a DDIM sample of this kind of
    model depends on how much of the plane it sees (small tiles drift; see docs/training.md).
    """
    sample = ddim_sample_batches(loaded.network, inputs, scheduler_settings=package_schedule(loaded), steps=steps,
                                 seed=seed, device=device, batch_size=batch_size,
                                 multiple=size_multiple(loaded.metadata["builder_args"].get("channels", (32, 64, 64))), cancel=cancel,
                                 report_to=engine)
    return sample - 0.5


def model_fill(
    good: np.ndarray,
    plan: FillPlan,
    *,
    model: Union[str, Path, LoadedModel],
    device: str = "auto",
    batch_size: int = 8,
    seed: int = 0,
    settings: Optional[dict] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> tuple[np.ndarray, dict]:
    """Answer ``plan`` from ``good`` (G, H, W, normalised) with a fill package: ((Q, H, W) float32, details).

    ``unet`` / ``gan`` packages predict the residual over linear interpolation directly; ``diffusion``
    packages sample it with DDIM (``settings["ddim_steps"]``, 10-50; seeded by ``seed``).
    """
    details: dict = {}
    cfg = {**MODEL_DEFAULTS, **(settings or {})}
    unknown = sorted(set(cfg) - set(MODEL_DEFAULTS))
    if unknown:
        raise InputError(f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(MODEL_DEFAULTS)}")
    steps = check_whole_number(cfg["ddim_steps"], "model option ddim_steps", low=1, high=1000)
    loaded = load_fill_model(model)
    diffusion = loaded.info.family == "diffusion"
    context = int(loaded.metadata["input"]["context"])
    engine = EngineReport()
    select_device(device)  # a missing device fails before any work
    result = np.empty((len(plan.targets),) + good.shape[1:], np.float32)
    chunk = 64  # bounds the memory of the stacked inputs
    for first in range(0, len(plan.targets), chunk):
        rows = np.arange(first, min(first + chunk, len(plan.targets)))
        before, after = gather_context(good, plan, context, rows)
        inputs = make_fill_inputs(before, after, plan.t[rows], offsets=context_offsets(plan, context, rows),
                                  context=context)
        if diffusion:
            output = _diffusion_residual(loaded, inputs, device=device, batch_size=batch_size, steps=int(steps),
                                         seed=seed, cancel=cancel, engine=engine)
        else:
            output = run_slices(
                loaded.network, inputs, device=device, batch_size=batch_size, amp=True,
                progress=None, cancel=cancel, report_to=engine,
            )
        result[rows] = apply_fill_output(before, after, plan.t[rows], output)
        if progress is not None:
            progress(min(1.0, (first + chunk) / len(plan.targets)), "running the fill model")
    details["device"] = describe_device(select_device(engine.device_used))
    details["model"] = {"name": loaded.info.name, "path": str(loaded.info.json_path), "family": loaded.info.family,
                        "engine": engine.as_dict()}
    if diffusion:
        details["model"]["ddim_steps"] = int(steps)
    if engine.fallbacks:
        details["warnings"] = list(engine.fallbacks)
    return result, details
