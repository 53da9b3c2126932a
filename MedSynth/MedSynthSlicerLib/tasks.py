"""What the panel asks for, as plain data, and how it is run with MedSynthLib (no Slicer here).

The widget turns its parameter node into a :class:`TaskRequest` (plain, JSON-able values that
go into the ``MedSynth.history`` attribute as they are), the worker thread calls
:func:`run_request` on a *copy* of the volume, and the widget applies the :class:`TaskOutcome`
on the main thread. Keeping this step free of Slicer means every panel setting is tested by
pytest against the real library.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from MedSynthLib.errors import InputError
from MedSynthLib.progress import CancelToken, ProgressCallback, check_cancel, report
from MedSynthLib.volume import Volume


__all__ = [
    "TASKS",
    "TaskRequest",
    "TaskOutcome",
    "available_tasks",
    "parse_slice_list",
    "format_slice_list",
    "run_request",
    "summarize",
    "segment_descriptions",
    "DEFAULT_PRESETS",
    "default_preset",
    "resolve_model",
]

log = logging.getLogger(__name__)

#: Panel task -> library module that provides it.
TASKS = {
    "fill": "MedSynthLib.tasks.fill",
    "upsample": "MedSynthLib.tasks.fill",
    "lesion": "MedSynthLib.tasks.lesion",
    "enhance": "MedSynthLib.tasks.enhance",
}

#: Segment colours (RGB in [0, 1]) for lesions and lesion classes, distinct on grey images.
_PALETTE = (
    (0.95, 0.30, 0.25), (0.25, 0.75, 0.95), (0.98, 0.80, 0.20), (0.45, 0.85, 0.40),
    (0.80, 0.45, 0.95), (1.00, 0.55, 0.10), (0.30, 0.45, 1.00), (0.95, 0.45, 0.70),
)
#: Label classes of ``insert_lesions(label_mode="classes")``: value -> (name, colour).
_CLASS_NAMES = {
    1: ("lesion", (0.95, 0.30, 0.25)),
    2: ("core", (0.55, 0.10, 0.10)),
    3: ("oedema", (0.98, 0.80, 0.20)),
}


@dataclass(frozen=True)
class TaskRequest:
    """One run the user asked for.

    Parameters
    ----------
    task : str
        ``fill``, ``upsample``, ``lesion`` or ``enhance``.
    parameters : dict
        Keyword arguments of the library function, JSON-able (what the history records).
    """

    task: str
    parameters: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")


@dataclass
class TaskOutcome:
    """What a run produced, handed from the worker thread to the GUI thread."""

    request: TaskRequest
    volume: Volume
    report: dict
    labels: Optional[np.ndarray] = None
    segments: list[dict] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    seconds: float = 0.0


def available_tasks() -> dict[str, bool]:
    """Which panel tasks the installed library provides (a tab is enabled only if True)."""
    found = {}
    for task, module in TASKS.items():
        try:
            found[task] = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found[task] = False
    return found


def parse_slice_list(text: str, *, size: Optional[int] = None) -> Optional[list[int]]:
    """Slice indices from the panel's field: ``"12, 15-17"`` -> ``[12, 15, 16, 17]``.

    An empty field returns None: the library then detects the missing slices itself. The
    grammar is the library's (:func:`MedSynthLib.tasks.fill.parse_slice_list`), so the panel and
    ``medsynth fill --slices`` accept the same text; this adds the bound check the panel can
    do before anything runs.

    Raises
    ------
    InputError
        A piece that is not an index or a range, or an index outside ``[0, size - 1]``.
    """
    text = (text or "").strip()
    if not text:
        return None
    from MedSynthLib.tasks.fill import parse_slice_list as parse

    result = sorted(set(parse(text.replace(";", ","))))
    if size is not None:
        bad = [i for i in result if not 0 <= i < size]
        if bad:
            raise InputError(f"slices must be indices in [0, {size - 1}], got {bad}")
    return result


def format_slice_list(indices: Sequence[int]) -> str:
    """Indices as the panel shows them, with runs collapsed: ``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    values = sorted({int(i) for i in indices})
    parts: list[str] = []
    start = prev = None
    for value in values:
        if start is None:
            start = prev = value
        elif value == prev + 1:
            prev = value
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = value
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def _module(task: str) -> Any:
    name = TASKS[task]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("MedSynthLib"):
            raise InputError(f"this MedSynth version has no {task} task ({name} is missing)") from None
        raise


#: The preset used when the panel says "default for the modality".
DEFAULT_PRESETS = {"MR": "mr-wmh", "CT": "ct-nodule-solid"}


def default_preset(volume: Volume) -> str:
    """The lesion preset for ``volume``'s modality (guessed from its intensities)."""
    from MedSynthLib.intensity import guess_modality

    return DEFAULT_PRESETS[guess_modality(volume)]


def resolve_model(model: Optional[str]) -> Optional[str]:
    """The package file the library should load for the panel's model choice.

    ``auto``/empty gives None (the library chooses). A package *name* (what the panel stores, so
    a saved scene works on another computer) is looked up among the bundled and installed
    packages; anything else is taken as a path to a package ``.json``.

    Raises
    ------
    InputError
        A name that no package has and no file either.
    """
    if model in (None, "", "auto"):
        return None
    from pathlib import Path

    if Path(model).suffix in (".json", ".safetensors") or Path(model).is_file():
        if not Path(model).with_suffix(".json").is_file():
            raise InputError(f"model package file {model} does not exist")
        return str(model)
    from MedSynthLib.models import list_packages

    for info in list_packages():
        if info.name == model:
            return str(info.json_path)
    raise InputError(f"model package {model!r} is not installed; choose another model or load it from a file")


def _model_argument(parameters: dict) -> Any:
    return resolve_model(parameters.get("model") or None)


def _lesion_models(parameters: dict) -> dict:
    """The panel's one model choice, for the lesion task: an appearance or a shape package.

    The package's own task decides what it is used for (``lesion-inpaint``: the lesion's
    interior; ``lesion-shape``: its outline); ``auto`` means the procedural generator.
    """
    path = _model_argument(parameters)
    if path is None:
        return {}
    from MedSynthLib.errors import ModelError
    from MedSynthLib.models import read_package_info

    info = read_package_info(path)
    if info.task == "lesion-inpaint":
        return {"appearance_model": path}
    if info.task == "lesion-shape":
        return {"shape_model": path}
    raise ModelError(f"model package {info.name} is a {info.task!r} model; synthetic lesions take a 'lesion-inpaint' "
                     "(appearance) or 'lesion-shape' package; choose one, or 'auto' for the procedural lesions")


def run_request(
    volume: Volume,
    request: TaskRequest,
    *,
    mask: Optional[np.ndarray] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> TaskOutcome:
    """Run ``request`` on ``volume`` with MedSynthLib and return what the panel applies.

    Parameters
    ----------
    volume : Volume
        A copy of the node's voxels; never the node's own memory.
    mask : ndarray, optional
        Boolean mask on ``volume``'s grid (denoise/bias mask, lesion region).
    progress, cancel
        Forwarded to the library task.
    """
    check_cancel(cancel)
    start = time.perf_counter()
    p = dict(request.parameters)
    task = request.task
    labels = None
    segments: list[dict] = []
    details: dict = {}
    if task == "fill":
        fill = _module("fill")
        result = fill.fill_slices(
            volume, slices=p.get("slices"), axis=p.get("axis", "auto"), method=p.get("method", "auto"),
            model=_model_argument(p), device=p.get("device", "auto"), seed=int(p.get("seed", 0)),
            progress=progress, cancel=cancel,
        )
        details["slices"] = [int(i) for i in result.slices]
    elif task == "upsample":
        fill = _module("upsample")
        result = fill.upsample_slices(
            volume, factor=int(p.get("factor", 2)), axis=p.get("axis", "auto"), method=p.get("method", "auto"),
            model=_model_argument(p), device=p.get("device", "auto"), seed=int(p.get("seed", 0)),
            progress=progress, cancel=cancel,
        )
        details["slices"] = [int(i) for i in result.slices]
    elif task == "lesion":
        lesion = _module("lesion")
        label_mode = p.get("label_mode", "instances")
        result = lesion.insert_lesions(
            volume,
            count=None if p.get("centres") else int(p.get("count", 1)),
            region=mask if mask is not None else "auto",
            preset=p.get("preset") or default_preset(volume),
            seed=int(p.get("seed", 0)),
            progress=progress,
            cancel=cancel,
            centres=[tuple(float(x) for x in c) for c in p.get("centres") or []] or None,
            size_mm=float(p["size_mm"]) if p.get("size_mm") else None,
            contrast=float(p["contrast"]) if p.get("contrast") else None,
            label_mode=label_mode,
            device=p.get("device", "auto"),
            **_lesion_models(p),
        )
        labels = np.asarray(result.labels.array)
        segments = segment_descriptions(labels, label_mode=label_mode, preset=result.report.get("preset"))
        details["lesion_ml"] = [float(item.get("volume_ml", 0.0)) for item in result.report.get("lesions", [])]
        details["specs"] = [spec.as_dict() if hasattr(spec, "as_dict") else spec for spec in result.specs]
    else:
        enhance = _module("enhance")
        result = enhance.enhance(
            volume, steps=list(p.get("steps", [])), mask=mask, model=_model_argument(p),
            device=p.get("device", "auto"), seed=int(p.get("seed", 0)), progress=progress, cancel=cancel,
        )
    check_cancel(cancel)
    report(progress, 1.0, "Done")
    return TaskOutcome(
        request=request, volume=result.volume, report=dict(result.report), labels=labels,
        segments=segments, details=details, seconds=time.perf_counter() - start,
    )


def segment_descriptions(labels: np.ndarray, *, label_mode: str = "instances",
                         preset: Optional[str] = None) -> list[dict]:
    """``{"value", "name", "color"}`` per label value present (the format of ``io.write_segmentation``).

    ``instances``: one segment per lesion, "Synthetic lesion N (preset)", distinct colours.
    ``classes``: the library's classes 1 lesion, 2 core, 3 oedema.
    """
    out = []
    suffix = f" ({preset})" if preset else ""
    for number, value in enumerate(int(v) for v in np.unique(labels) if v != 0):
        if label_mode == "classes":
            name, colour = _CLASS_NAMES.get(value, (f"Class {value}", _PALETTE[number % len(_PALETTE)]))
            name = f"Synthetic {name}{suffix}"
        else:
            name, colour = f"Synthetic lesion {value}{suffix}", _PALETTE[number % len(_PALETTE)]
        out.append({"value": value, "name": name, "color": tuple(float(c) for c in colour)})
    return out


def summarize(outcome: TaskOutcome) -> str:
    """The panel's result line: what changed, time, device, and any warning."""
    r = outcome.report
    device = r.get("device") or r.get("device_used") or "?"
    method = r.get("method", "?")
    task = outcome.request.task
    if task == "fill":
        slices = outcome.details.get("slices") or []
        what = f"Filled {len(slices)} slice(s)" + (f" ({format_slice_list(slices)})" if slices else "")
    elif task == "upsample":
        k, j, i = outcome.volume.array.shape
        what = f"Upsampled to {i}x{j}x{k} voxels ({len(outcome.details.get('slices', []))} new slices)"
    elif task == "lesion":
        sizes = outcome.details.get("lesion_ml", [])
        listed = ", ".join(f"{ml:.2f}" for ml in sizes)
        what = f"Inserted {len(sizes)} lesion(s): {listed} mL" if sizes else "No lesion voxels were written"
    else:
        what = f"Enhanced ({len(outcome.request.parameters.get('steps', []))} step(s))"
    line = f"{what} · {method} · {outcome.seconds:.1f} s · {device}"
    warnings = r.get("warnings") or []
    if warnings:
        line += f" · warning: {warnings[0]}" + (f" (+{len(warnings) - 1} more)" if len(warnings) > 1 else "")
    return line
