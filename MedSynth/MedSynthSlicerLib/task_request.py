"""One run the user asked for, as the library's own options object: what the panel, ``process`` and scripts build.

Every way into a task ends in one :class:`TaskRequest`: the task's name and the library's frozen options object
for it (``FillOptions``, ``UpsampleOptions``, ``LesionOptions``, ``EnhanceOptions``), built once by
:func:`request_for` and handed to the task function unchanged by :func:`MedSynthSlicerLib.task_runs.run_request`.
The library validates it where it is built, so a typo or a value out of range is refused with the same message as
on the command line, before any work. No Slicer here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

# The task packages export lazily: importing them loads neither torch nor a task's methods; their options
# classes are torch-free, so a request can be built and checked before the heavy packages are installed.
from MedSynthLib.errors import InputError
from MedSynthLib.tasks import enhance as enhance_task
from MedSynthLib.tasks import fill as fill_task
from MedSynthLib.tasks import lesion as lesion_task
from MedSynthLib.volume import Volume

from .model_choice import lesion_models, resolve_model

__all__ = ["TASKS", "options_class", "TaskRequest", "TaskOutcome", "ProcessResult", "request_for"]

#: The tasks a request can name (upsampling is an option of the panel's Fill tab, a task of its own here).
TASKS = ("fill", "upsample", "lesion", "enhance")


def options_class(task: str) -> type:
    """The library's options class of ``task`` (``fill`` -> ``FillOptions``)."""
    classes = {
        "fill": lambda: fill_task.FillOptions,
        "upsample": lambda: fill_task.UpsampleOptions,
        "lesion": lambda: lesion_task.LesionOptions,
        "enhance": lambda: enhance_task.EnhanceOptions,
    }
    if task not in classes:
        raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return classes[task]()


@dataclass(frozen=True)
class TaskRequest:
    """One run the user asked for.

    Attributes
    ----------
    task : str
        ``fill``, ``upsample``, ``lesion`` or ``enhance``.
    options
        The task's options object (:func:`options_class`), exactly what the task function receives.
    """

    task: str
    options: Any

    def __post_init__(self) -> None:
        expected = options_class(self.task)
        if not isinstance(self.options, expected):
            raise InputError(f"a {self.task} request needs {expected.__name__}, got {type(self.options).__name__}")

    @property
    def parameters(self) -> dict:
        """The options as JSON (what the history records and the result line reads)."""
        return self.options.as_dict()


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
    #: uint8 on the output grid: 0 acquired, 1 synthesised, 2 rewritten (``MedSynthLib.provenance``).
    synthetic_mask: Optional[np.ndarray] = None
    #: float32 standard deviation of the synthesised voxels (fill/upsample with ``uncertainty=True``).
    uncertainty: Optional[np.ndarray] = None


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
    synthetic_mask
        The "MedSynth: synthesised" segmentation over the output (segments "synthesised" and "rewritten"),
        or None when the task made or changed nothing.
    uncertainty
        The uncertainty overlay (a scalar volume, standard deviation) when one was asked for, else None.
    """

    volume: Any
    segmentation: Any
    report: dict
    summary: str = ""
    synthetic_mask: Any = None
    uncertainty: Any = None


def request_for(task: str, options: Optional[dict] = None, *, centres: Optional[Sequence] = None) -> TaskRequest:
    """The :class:`TaskRequest` for ``task`` with the Python API's keyword arguments ``options``.

    ``model`` is the panel's model choice (``auto``, an installed package's name, or a package file): it is
    resolved here to the package the library loads (for lesions: an appearance or a shape package, by the
    package's own task). Everything else goes to the library's options class as it is, which refuses unknown
    names and bad values (a typo must not silently run with a default).

    Parameters
    ----------
    task : {"fill", "upsample", "lesion", "enhance"}
    options : dict, optional
        E.g. ``{"slices": [4], "method": "linear", "time_budget": 60}``.
    centres : sequence of (R, A, S), optional
        Lesion centres in the volume's own RAS frame (mm).

    Raises
    ------
    InputError
        An unknown task or option, a bad value, or centres for a task other than lesion.
    ModelError
        A model package that is not there or is for another task.
    """
    cls = options_class(task)
    given = dict(options or {})
    if centres is not None and len(centres) and task != "lesion":
        raise InputError(f"centres are lesion centres; the {task} task takes none")
    if centres is not None and len(centres):
        given["centres"] = tuple(tuple(float(x) for x in centre) for centre in centres)
    model = given.pop("model", "auto")
    if task == "lesion":
        given.update(lesion_models(model))
    else:
        given["model"] = resolve_model(model)
    return TaskRequest(task, cls.build(**given))
