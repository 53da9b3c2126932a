"""The panel's run-time lists: devices, model packages, lesion presets and the tasks present.

What the combo boxes offer depends on what is installed, and opening the module must neither
install nor import torch: :func:`panel_choices` lists only what is importable now and says, in the
device line itself, when PyTorch is missing, CPU-only, or cannot use the GPU found.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from . import dependencies, devices
from .task_runs import available_tasks

__all__ = ["panel_choices", "torch_installed"]

log = logging.getLogger(__name__)


def torch_installed() -> bool:
    """True if torch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def _presets() -> list[tuple[str, str]]:
    """``auto`` (the library's :func:`default_preset` by modality) and every preset, from the library."""
    from MedSynthLib.tasks import lesion

    default = ", ".join(f"{modality}: {lesion.default_preset(modality)}" for modality in lesion.MODALITIES)
    return [(f"default ({default})", "auto")] + [
        (f"{preset['name']} ({preset['modality']})", preset["name"]) for preset in lesion.list_presets()]


def _models() -> list[tuple[str, str]]:
    models = [("auto (best available)", "auto"), ("from file...", "file")]
    try:
        from MedSynthLib.models import list_packages
    except ImportError as error:
        log.info("MedSynth: model packages not listed yet (%s)", error)
        return models
    listed = [(f"{info.name} ({info.task}{', bundled' if info.bundled else ''})", info.name) for info in list_packages()]
    return models[:1] + listed + models[1:]


def panel_choices() -> dict[str, Any]:
    """``devices``, ``models``, ``presets`` as ``[(label, value)]``, ``deviceSummary``, ``deviceWarning``, ``tasks``.

    Without torch only the device ``auto`` and the model choices ``auto`` and *from file* are
    offered (both are installed at the first Apply).
    """
    result: dict[str, Any] = {
        "devices": [("auto", "auto")],
        "deviceSummary": "PyTorch not installed yet: it is installed at the first Apply",
        "deviceWarning": None,
        "models": [("auto (best available)", "auto"), ("from file...", "file")],
        "presets": _presets(),
        "tasks": available_tasks(),
    }
    if not torch_installed():
        return result
    import torch

    result["devices"], result["deviceSummary"] = devices.device_choices(torch)
    result["deviceWarning"] = dependencies.torch_problem(torch, nvidia_gpu_present=devices.nvidia_gpu_present())
    if result["deviceWarning"]:
        # Said in the panel itself, not hidden in a tooltip: the CPU-only surprise is the most
        # reported problem of AI extensions.
        result["deviceSummary"] += " — " + result["deviceWarning"]
    result["models"] = _models()
    return result
