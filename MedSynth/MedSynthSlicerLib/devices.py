"""The device choices the panel offers, with the GPU found named (or "CPU only" said plainly)."""

from __future__ import annotations

import shutil
from typing import Optional

__all__ = ["device_choices", "nvidia_gpu_present"]


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
