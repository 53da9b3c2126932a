"""How a :class:`~MedSynthSlicerLib.task_request.TaskRequest` runs: one table, task -> the library call.

The worker thread calls :func:`run_request` on a *copy* of the volume; each runner hands the request's options
object to the task function unchanged and returns what the panel applies. The task packages are imported
plainly (they export lazily: torch loads only when a task runs). No Slicer here.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Callable, Optional

import numpy as np

from MedSynthLib.lesion_segments import segment_descriptions
from MedSynthLib.progress import CancelToken, ProgressCallback, check_cancel, report
from MedSynthLib.tasks import enhance as enhance_task
from MedSynthLib.tasks import fill as fill_task
from MedSynthLib.tasks import lesion as lesion_task
from MedSynthLib.volume import Volume

from .task_request import TASKS, TaskOutcome, TaskRequest

__all__ = ["RUNNERS", "run_request", "available_tasks"]


def _slices(result) -> dict:
    """What the panel applies of a fill or upsample: the volume, the synthesised-voxel mask, the uncertainty."""
    return {"volume": result.volume, "report": result.report, "details": {"slices": [int(i) for i in result.slices]},
            "synthetic_mask": result.synthetic_mask.array,
            "uncertainty": None if result.uncertainty is None else result.uncertainty.array}


def _fill(volume: Volume, request: TaskRequest, mask, progress, cancel) -> dict:
    return _slices(fill_task.fill_slices(volume, request.options, progress=progress, cancel=cancel))


def _upsample(volume: Volume, request: TaskRequest, mask, progress, cancel) -> dict:
    return _slices(fill_task.upsample_slices(volume, request.options, progress=progress, cancel=cancel))


def _lesion(volume: Volume, request: TaskRequest, mask, progress, cancel) -> dict:
    data = {} if mask is None else {"region": mask}  # the panel's mask: the region random lesions go into
    result = lesion_task.insert_lesions(volume, request.options, progress=progress, cancel=cancel, **data)
    labels = np.asarray(result.labels.array)
    mode = request.options.label_mode
    return {
        "volume": result.volume, "report": result.report, "labels": labels,
        "segments": segment_descriptions(labels, label_mode=mode, preset=result.report.get("preset")),
        "synthetic_mask": result.synthetic_mask.array,
        "details": {"lesion_ml": [float(item.get("volume_ml", 0.0)) for item in result.report.get("lesions", [])],
                    "specs": [spec.as_dict() if hasattr(spec, "as_dict") else spec for spec in result.specs]},
    }


def _enhance(volume: Volume, request: TaskRequest, mask, progress, cancel) -> dict:
    result = enhance_task.enhance(volume, request.options, mask=mask, progress=progress, cancel=cancel)
    return {"volume": result.volume, "report": result.report, "synthetic_mask": result.synthetic_mask.array}


#: Task -> runner: ``(volume, request, mask, progress, cancel) -> TaskOutcome fields``.
RUNNERS: dict[str, Callable[..., dict]] = {"fill": _fill, "upsample": _upsample, "lesion": _lesion,
                                           "enhance": _enhance}


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
    fields = RUNNERS[request.task](volume, request, mask, progress, cancel)
    check_cancel(cancel)
    report(progress, 1.0, "Done")
    fields["report"] = dict(fields["report"])
    return TaskOutcome(request=request, seconds=time.perf_counter() - start, **fields)


def available_tasks() -> dict[str, bool]:
    """Which panel tasks the installed library provides (a tab is enabled only if True)."""
    packages = {"fill": "MedSynthLib.tasks.fill", "upsample": "MedSynthLib.tasks.fill",
                "lesion": "MedSynthLib.tasks.lesion", "enhance": "MedSynthLib.tasks.enhance"}
    found = {}
    for task in TASKS:
        try:
            found[task] = importlib.util.find_spec(packages[task]) is not None
        except ModuleNotFoundError:
            found[task] = False
    return found
