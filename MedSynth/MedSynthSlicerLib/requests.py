"""What the panel and ``MedSynthLogic.process`` ask for, as plain data, and how it runs (no Slicer here).

Both ways in end in one :class:`TaskRequest`: :func:`request_for` turns the Python API's keyword
arguments (what ``process(task, volume, **options)`` takes) into one, and
:func:`options_from_settings` turns the panel's settings into those same keyword arguments, so the
panel's Apply, ``process`` and the ``medsynth`` CLI call the library the same way. The worker thread
calls :func:`run_request` on a *copy* of the volume and the Logic applies the :class:`TaskOutcome`
on the main thread. :func:`reasons_not_to_apply` says why Apply is disabled. None of this needs a
scene, so every panel setting is tested with plain objects against the real library.
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
from MedSynthLib.lesion_segments import segment_descriptions
from MedSynthLib.progress import CancelToken, ProgressCallback, check_cancel, report
from MedSynthLib.volume import Volume


__all__ = [
    "TASKS",
    "TASK_OPTIONS",
    "TaskRequest",
    "TaskOutcome",
    "ProcessResult",
    "available_tasks",
    "parse_slice_list",
    "format_slice_list",
    "request_for",
    "options_from_settings",
    "reasons_not_to_apply",
    "run_request",
    "summarize",
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


@dataclass
class ProcessResult:
    """What ``MedSynthLogic.process`` returns (and the panel shows).

    Attributes
    ----------
    volume
        The output volume node: a new node, or the input when edited in place.
    segmentation
        Lesions: the segmentation node holding the new segments; other tasks: None.
    report : dict
        The library's report (method that ran, device, seconds, warnings, lesions...).
    summary : str
        The panel's one-line result.
    """

    volume: Any
    segmentation: Any
    report: dict
    summary: str = ""


#: Keyword arguments every task takes (the library's names).
COMMON_OPTIONS = ("device", "seed", "model")

#: Keyword arguments of each task, as the Python API names them; ``centres`` are passed apart.
TASK_OPTIONS = {
    "fill": ("slices", "axis", "method", "time_budget"),
    "upsample": ("factor", "axis", "method", "time_budget"),
    "lesion": ("preset", "count", "size_mm", "contrast", "label_mode"),
    "enhance": ("steps", "time_budget"),
}

#: Short names accepted as well (``size`` is the panel's and the CLI's word for ``size_mm``).
_ALIASES = {"size": "size_mm"}


def request_for(task: str, options: Optional[dict] = None, *, centres: Optional[Sequence] = None) -> TaskRequest:
    """The :class:`TaskRequest` for ``task`` with the Python API's keyword arguments ``options``.

    Unknown names are refused (a typo must not silently run with a default), so ``process`` and
    the panel can only ask for what the library takes.

    Parameters
    ----------
    task : {"fill", "upsample", "lesion", "enhance"}
    options : dict, optional
        E.g. ``{"slices": [4], "method": "linear"}``; ``device``, ``seed``, ``model`` default to
        ``"auto"``, 0, ``"auto"``.
    centres : sequence of (R, A, S), optional
        Lesion centres in the volume's own RAS frame (mm).

    Raises
    ------
    InputError
        An unknown task or option, or centres for a task other than lesion.
    """
    TaskRequest(task)  # checks the task name
    given = dict(options or {})
    for alias, name in _ALIASES.items():
        if alias in given:
            if name in given:
                raise InputError(f"give {alias} or {name}, not both")
            given[name] = given.pop(alias)
    allowed = COMMON_OPTIONS + TASK_OPTIONS[task]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise InputError(f"{task} takes no option {', '.join(unknown)}; its options are {', '.join(allowed)}")
    if centres and task != "lesion":
        raise InputError(f"centres are lesion centres; the {task} task takes none")
    parameters = {"device": "auto", "seed": 0, "model": "auto", **given}
    if task == "lesion":
        parameters["centres"] = [[float(x) for x in centre] for centre in centres or []]
    return TaskRequest(task, parameters)


def options_from_settings(p: Any) -> tuple[str, dict]:
    """The panel's settings ``p`` (the parameter node) as ``(task, options)`` in the Python API's terms.

    Centres are not included: the Logic reads them from ``p.lesionCentres`` with the transforms.

    Raises
    ------
    InputError
        A slice list that does not parse or lies outside the volume.
    """
    common = {"device": p.device or "auto", "seed": int(p.seed),
              "model": str(p.modelFile) if p.model == "file" else p.model}
    budget = float((p.enhanceTimeBudget if p.task == "enhance" else p.timeBudget) or 0.0)
    timed = {"time_budget": budget} if budget > 0 else {}  # 0: the library's automatic budget (enhance: none)
    if p.task == "fill" and p.fillUpsample:
        return "upsample", {**common, "factor": int(p.upsampleFactor), "axis": p.fillAxis, "method": p.fillMethod,
                            **timed}
    if p.task == "fill":
        axis_size = None
        image = p.inputVolume.GetImageData() if p.inputVolume is not None else None
        if image is not None and p.fillAxis in ("i", "j", "k"):
            axis_size = image.GetDimensions()["ijk".index(p.fillAxis)]
        slices = parse_slice_list(p.fillSlices, size=axis_size)
        return "fill", {**common, "slices": slices, "axis": p.fillAxis, "method": p.fillMethod, **timed}
    if p.task == "lesion":
        return "lesion", {
            **common, "preset": p.lesionPreset, "count": int(p.lesionCount), "size_mm": float(p.lesionSize),
            "contrast": float(p.lesionContrast),
            "label_mode": "classes" if p.lesionLabels == "per class" else "instances",
        }
    # The library's step grammar (``medsynth enhance --steps`` takes the same strings).
    steps = []
    if p.enhanceBias:
        steps.append(f"bias:{int(p.biasShrink)}")
    if p.enhanceDenoise:
        steps.append(f"denoise:{p.denoiseMethod}:{float(p.denoiseStrength):g}")
    return "enhance", {**common, "steps": steps, **timed}


def reasons_not_to_apply(p: Any) -> list[str]:
    """Why Apply is disabled, for its tooltip; empty when it can run."""
    reasons = []
    image = p.inputVolume.GetImageData() if p.inputVolume is not None else None
    if p.inputVolume is None:
        reasons.append("Select an input volume.")
    elif image is None:
        reasons.append("The input volume has no voxels.")
    elif image.GetNumberOfScalarComponents() != 1:
        reasons.append("The input is a colour or vector volume; MedSynth needs a scalar volume.")
    if p.model == "file" and not str(p.modelFile or "").strip(". "):
        reasons.append("Choose the model package file (.json) or another model.")
    if p.task == "enhance" and not (p.enhanceDenoise or p.enhanceBias):
        reasons.append("Tick at least one enhancement step.")
    if p.task == "fill" and not p.fillUpsample and image is not None:
        try:
            parse_slice_list(p.fillSlices)
        except ValueError as error:
            reasons.append(str(error))
        except ImportError:
            pass  # checked again after the dependencies are installed
    return reasons


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
        label_mode = p.get("label_mode") or "classes"
        result = lesion.insert_lesions(
            volume,
            count=None if p.get("centres") else p.get("count"),
            region=mask,
            # "" is the panel's "default" item: the modality's preset; None (the API's default) is none.
            preset=default_preset(volume) if p.get("preset") == "" else p.get("preset"),
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
            volume, steps=p.get("steps") or [], mask=mask, model=_model_argument(p),
            device=p.get("device", "auto"), seed=int(p.get("seed", 0)), progress=progress, cancel=cancel,
        )
    check_cancel(cancel)
    report(progress, 1.0, "Done")
    return TaskOutcome(
        request=request, volume=result.volume, report=dict(result.report), labels=labels,
        segments=segments, details=details, seconds=time.perf_counter() - start,
    )


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
        what = f"Enhanced ({len(outcome.report.get('steps') or outcome.request.parameters.get('steps') or [])} step(s))"
    line = f"{what} · {method} · {outcome.seconds:.1f} s · {device}"
    warnings = r.get("warnings") or []
    if warnings:
        line += f" · warning: {warnings[0]}" + (f" (+{len(warnings) - 1} more)" if len(warnings) > 1 else "")
    return line
