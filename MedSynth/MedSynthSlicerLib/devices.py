"""The device choices the panel offers, with the GPU found named (or "CPU only" said plainly)."""

from __future__ import annotations

import os
import shutil
from typing import Optional

__all__ = ["device_choices", "nvidia_gpu_present", "limit_torch_threads"]


def nvidia_gpu_present() -> bool:
    """True if the NVIDIA driver tool is on PATH (a GPU torch could use with a CUDA build)."""
    return shutil.which("nvidia-smi") is not None


def device_choices(torch_module: Optional[object] = None) -> tuple[list[tuple[str, str]], str]:
    """``[(label, value)]`` for the device box and a one-line summary of the compute found.

    ``value`` is what MedSynthLib's ``device=`` takes (``auto``, ``cpu``, ``cuda:0``, ``mps``).
    Without torch only ``auto`` is offered: torch is installed at the first Apply, and
    importing it here would make opening the module slow.
    """
    if torch_module is None:
        return [("auto", "auto")], "PyTorch not installed yet: it is installed at the first Apply"
    from MedSynthLib.engine import available_devices, describe_device, select_device

    present = available_devices()
    choices = [("auto (best available)", "auto")]
    for name in present:
        label = "CPU" if name == "cpu" else describe_device(torch_module.device(name))
        choices.append((label, name))
    best = select_device("auto")
    if best.type == "cpu":
        summary = "CPU only: no usable GPU found (slower; see Troubleshooting in the docs)"
    else:
        summary = f"GPU: {describe_device(best)}"
    return choices, summary


def limit_torch_threads(*, cores: Optional[int] = None) -> Optional[int]:
    """Leave one CPU core to Slicer's GUI while torch works; returns the thread count set, or None.

    Called on the worker thread before each task. With two cores or fewer nothing changes (one
    thread would halve the speed); a limit the user set below the core count is kept.
    """
    try:
        import torch
    except ImportError:
        return None
    cores = cores if cores is not None else (os.cpu_count() or 1)
    if cores > 2 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)
        return cores - 1
    return None
