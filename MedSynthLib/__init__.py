"""MedSynthLib: generative editing of medical volumes (fill slices, synthetic lesions, enhance).

The library behind the MedSynth 3D Slicer module and the ``medsynth`` /
``medsynth-train`` command lines. It never imports Slicer: everything works on
:class:`Volume` objects (KJI voxel array + IJK-to-RAS matrix) and files.
"""

from ._version import __version__
from .errors import Cancelled, DeviceError, InputError, MedSynthError, ModelError, ResourceError
from .io import read_volume, write_volume
from .progress import CancelToken
from .volume import Volume, array_axis, validate_volume

__all__ = [
    "__version__",
    "Volume",
    "array_axis",
    "validate_volume",
    "read_volume",
    "write_volume",
    "CancelToken",
    "MedSynthError",
    "InputError",
    "ModelError",
    "DeviceError",
    "ResourceError",
    "Cancelled",
]
