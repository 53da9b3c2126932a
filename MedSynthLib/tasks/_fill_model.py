"""``model``: fill slices with a trained fill model package (input convention in ``_fill_inputs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..engine import EngineReport, describe_device, run_slices, select_device
from ..models.package import LoadedModel, load_package
from ..progress import CancelToken, ProgressCallback
from ._fill_inputs import apply_fill_output, check_fill_input_spec, make_fill_inputs
from ._fill_interp import FillPlan, gather_context

__all__ = ["load_fill_model", "model_fill"]


def load_fill_model(model: Union[str, Path, LoadedModel]) -> LoadedModel:
    """Load (or accept) a fill package and check its input spec against ``FILL_INPUT_SPEC``.

    Raises
    ------
    ModelError
        Not a fill package, or an input convention this MedSynth does not use.
    """
    loaded = model if isinstance(model, LoadedModel) else load_package(model, task="fill")
    if loaded.info.task != "fill":
        from ..errors import ModelError

        raise ModelError(f"model package {loaded.info.name} is a {loaded.info.task!r} model; filling needs a 'fill' model")
    check_fill_input_spec(loaded.metadata["input"], name=f"model package {loaded.info.name}")
    return loaded


def model_fill(
    good: np.ndarray,
    plan: FillPlan,
    *,
    model: Union[str, Path, LoadedModel],
    device: str = "auto",
    batch_size: int = 8,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    details: Optional[dict] = None,
) -> np.ndarray:
    """Answer ``plan`` from ``good`` (G, H, W, normalised) with a fill package; (Q, H, W) float32."""
    details = details if details is not None else {}
    loaded = load_fill_model(model)
    context = int(loaded.metadata["input"]["context"])
    engine = EngineReport()
    select_device(device)  # a missing device fails before any work
    result = np.empty((len(plan.targets),) + good.shape[1:], np.float32)
    chunk = 64  # bounds the memory of the stacked inputs
    for first in range(0, len(plan.targets), chunk):
        rows = np.arange(first, min(first + chunk, len(plan.targets)))
        before, after = gather_context(good, plan, context, rows)
        inputs = make_fill_inputs(before, after, plan.t[rows], context=context)
        output = run_slices(
            loaded.network, inputs, device=device, batch_size=batch_size, amp=True,
            progress=None, cancel=cancel, report_to=engine,
        )
        result[rows] = apply_fill_output(before, after, plan.t[rows], output)
        if progress is not None:
            progress(min(1.0, (first + chunk) / len(plan.targets)), "running the fill model")
    details["device"] = describe_device(select_device(engine.device_used))
    details["model"] = {"name": loaded.info.name, "path": str(loaded.info.json_path), "engine": engine.as_dict()}
    if engine.fallbacks:
        details.setdefault("warnings", []).extend(engine.fallbacks)
    return result
