"""Which Python packages MedSynth still needs inside Slicer, and how to install them safely.

Installed at first use, never at import: torch through SlicerPyTorch's ``PyTorchUtils`` (it
picks the CUDA build that fits the GPU and driver), everything else with Slicer's pip helper
after one confirmation listing the packages. Slicer's own numpy, SimpleITK and vtk are never
touched: they are removed from the requirement list and pinned in a constraints file, because
replacing them breaks Slicer (Slicer#6711, #7661). torch is pinned too, so installing MONAI
cannot swap PyTorchUtils' CUDA build for a CPU-only one (SlicerTotalSegmentator#50).
Nothing here imports Slicer; the module's Logic runs the installs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

__all__ = [
    "PROTECTED",
    "IMPORT_NAMES",
    "read_requirements",
    "requirement_name",
    "missing_requirements",
    "constraints_text",
    "torch_problem",
    "install_message",
    "ensure_dependencies",
]

#: Distributions Slicer ships (or PyTorchUtils manages) that pip must never replace.
PROTECTED = ("numpy", "simpleitk", "vtk", "torch")

#: Distribution name -> import name where they differ.
IMPORT_NAMES = {"scikit-image": "skimage", "pyyaml": "yaml", "simpleitk": "SimpleITK"}

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a requirement line (``"monai>=1.4"`` -> ``"monai"``)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def read_requirements(path: Union[str, Path]) -> list[str]:
    """Requirement lines of ``path`` without comments, blanks and protected packages."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if requirement_name(line) in PROTECTED:
            continue
        lines.append(line)
    return lines


def _importable(distribution: str) -> bool:
    module = IMPORT_NAMES.get(distribution, distribution.replace("-", "_"))
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """The requirements whose package cannot be imported (version checks are left to pip)."""
    return [r for r in requirements if not _importable(requirement_name(r))]


def constraints_text(distributions: Iterable[str] = PROTECTED) -> str:
    """A pip constraints file pinning the installed version of each protected distribution."""
    lines = []
    for name in distributions:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + ("\n" if lines else "")


def torch_problem(torch_module: Optional[object], *, nvidia_gpu_present: bool) -> Optional[str]:
    """A message when torch is missing or CPU-only while an NVIDIA GPU is present, else None."""
    if torch_module is None:
        return ("PyTorch is not installed. Install the PyTorch extension from the Extensions Manager; "
                "MedSynth then installs a PyTorch build that matches your GPU at first use.")
    cuda_build = getattr(getattr(torch_module, "version", None), "cuda", None)
    if nvidia_gpu_present and not cuda_build:
        return ("An NVIDIA GPU was found but the installed PyTorch is CPU-only, so MedSynth runs on the CPU. "
                "Reinstall PyTorch from the 'PyTorch Util' module choosing a CUDA backend, then restart Slicer.")
    if nvidia_gpu_present and cuda_build and not torch_module.cuda.is_available():
        return (f"PyTorch was built for CUDA {cuda_build} but cannot use the GPU (driver too old or GPU too new "
                "for this build); MedSynth runs on the CPU. Update the NVIDIA driver or reinstall PyTorch.")
    return None


def install_message(packages: Sequence[str]) -> str:
    """The confirmation text listing what pip is about to install."""
    return ("MedSynth needs these Python packages, which will be downloaded and installed now "
            "(Slicer's own numpy, SimpleITK, vtk and the installed PyTorch are kept):\n\n" + "\n".join(packages))


def ensure_dependencies(
    requirements: Sequence[str],
    *,
    torch_installed: Callable[[], bool],
    install_torch: Callable[[], bool],
    confirm: Callable[[str], bool],
    install_packages: Callable[[list[str]], None],
    status: Optional[Callable[[str], None]] = None,
) -> bool:
    """The first-use install flow: torch first (through PyTorchUtils), then the rest after one confirmation.

    The Slicer parts are passed in (``install_torch`` runs PyTorchUtils, ``confirm`` shows the
    dialog, ``install_packages`` runs Slicer's pip with the protected packages pinned), so the
    order and the refusals are tested without Slicer.

    Returns
    -------
    bool
        True when everything needed is installed; False when the user declined an install.
    """
    if not torch_installed() and not install_torch():
        return False
    missing = missing_requirements(requirements)
    if not missing:
        return True
    if not confirm(install_message(missing)):
        return False
    if status is not None:
        status("Installing Python packages...")
    install_packages(missing)
    importlib.invalidate_caches()
    return True
