"""Converters between :class:`Volume` and the image types of SimpleITK and VTK.

SimpleITK (like DICOM, ITK and NRRD files) works in LPS; Slicer and MedSynth in
RAS. The flip ``diag(-1, -1, 1)`` is applied here and nowhere else.

A Slicer scalar volume node holds a ``vtkImageData`` (origin 0, spacing 1; its
own geometry is ignored by Slicer) plus an IJK-to-RAS ``vtkMatrix4x4``. The VTK
converters reproduce exactly that pair, so the Slicer module's node conversion
is a thin call into these functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    import vtk

__all__ = ["from_sitk", "to_sitk", "from_vtk", "to_vtk", "LPS_TO_RAS"]

#: Flip between LPS and RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def from_sitk(image: sitk.Image) -> Volume:
    """Volume from a 3D scalar SimpleITK image (array copied, dtype kept)."""
    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D image, got a {image.GetDimension()}D image of size {image.GetSize()}")
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(
            f"the volume has {components} components per voxel (colour or vector image); "
            "MedSynth needs a scalar volume"
        )
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return Volume(sitk.GetArrayFromImage(image), LPS_TO_RAS @ ijk_to_lps)


def to_sitk(volume: Volume) -> sitk.Image:
    """SimpleITK image (LPS geometry) holding a copy of ``volume``'s voxels."""
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    ijk_to_lps = LPS_TO_RAS @ volume.ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in (ijk_to_lps[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(float(o) for o in ijk_to_lps[:3, 3]))
    return image


def to_vtk(volume: Volume) -> "tuple[vtk.vtkImageData, vtk.vtkMatrix4x4]":
    """The (vtkImageData, IJK-to-RAS vtkMatrix4x4) pair a Slicer volume node holds."""
    from vtk.util import numpy_support

    import vtk

    array = np.ascontiguousarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(*volume.shape_ijk)
    image.SetSpacing(1.0, 1.0, 1.0)
    image.SetOrigin(0.0, 0.0, 0.0)
    # KJI C-order is exactly VTK's point order (i fastest); deep copy so VTK owns its memory.
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(volume.ijk_to_ras[r, c]))
    return image, matrix


def from_vtk(image: Any, ijk_to_ras: Any) -> Volume:
    """Volume from a vtkImageData and its IJK-to-RAS vtkMatrix4x4 (or a 4x4 array).

    As in Slicer, the image data's own origin and spacing are ignored: the
    matrix is the geometry.
    """
    from vtk.util import numpy_support

    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise InputError("the image has no voxel data")
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(
            f"the volume has {scalars.GetNumberOfComponents()} components per voxel; "
            "MedSynth needs a scalar volume"
        )
    i, j, k = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(scalars).reshape(k, j, i).copy()
    if hasattr(ijk_to_ras, "GetElement"):
        matrix = np.array([[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    else:
        matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    return Volume(array, matrix)
