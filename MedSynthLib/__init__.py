"""MedSynthLib: generative editing of medical volumes (fill slices, synthetic lesions, enhance).

The library behind the MedSynth 3D Slicer module and the ``medsynth`` /
``medsynth-train`` command lines. It never imports Slicer: everything works on
:class:`Volume` objects (KJI voxel array + IJK-to-RAS matrix) and files.

The names below are imported on first use (PEP 562), so ``import MedSynthLib``
itself costs nothing: the command line can then catch a Ctrl-C during start-up
(numpy, SimpleITK and torch load inside its error handling) instead of
printing a traceback.
"""

from __future__ import annotations

from ._lazy import lazy_exports
from ._version import __version__

#: Public name -> submodule that defines it.
_EXPORTS = {
    "Volume": "volume",
    "array_axis": "volume",
    "validate_volume": "volume",
    "read_volume": "io",
    "write_volume": "io",
    "CancelToken": "progress",
    "MedSynthError": "errors",
    "InputError": "errors",
    "ModelError": "errors",
    "DeviceError": "errors",
    "ResourceError": "errors",
    "Cancelled": "errors",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
