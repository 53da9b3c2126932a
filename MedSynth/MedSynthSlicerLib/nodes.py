"""Volume node <-> :class:`~MedSynthLib.volume.Volume`, with only VTK (no Slicer import).

A Slicer scalar volume node holds a ``vtkImageData`` whose own origin and spacing Slicer
ignores, plus an IJK-to-RAS ``vtkMatrix4x4`` that is the geometry. These functions use only
the node methods that carry that pair (``GetImageData``, ``GetIJKToRASMatrix``,
``SetAndObserveImageData``, ``SetIJKToRASMatrix``), and do the maths in
:mod:`MedSynthLib.convert`, so they are tested with the plain ``vtk`` wheel and a small
stand-in node, and orientation bugs (TotalSegmentator#20, #31) are caught outside Slicer.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from MedSynthLib.convert import from_vtk, to_vtk
from MedSynthLib.errors import InputError
from MedSynthLib.volume import Volume

__all__ = [
    "matrix_to_array",
    "array_to_matrix",
    "volume_from_node",
    "update_node_from_volume",
    "control_points_ras",
    "world_to_volume",
    "centres_in_volume_frame",
    "lesion_volumes_ml",
]


def matrix_to_array(matrix: Any) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4x4 float64 array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def array_to_matrix(array: Sequence, matrix: Any = None) -> Any:
    """A 4x4 array written into ``matrix`` (a new ``vtkMatrix4x4`` if None)."""
    if matrix is None:
        import vtk

        matrix = vtk.vtkMatrix4x4()
    array = np.asarray(array, dtype=np.float64)
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def volume_from_node(node: Any) -> Volume:
    """A copy of a scalar volume node's voxels (KJI) with its IJK-to-RAS geometry.

    The copy is what makes cancel and failure safe: the task never sees the node's memory.

    Raises
    ------
    InputError
        No node, no image data, or a vector (multi-component) image.
    """
    import vtk

    if node is None:
        raise InputError("no input volume selected")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume {node.GetName()!r} has no voxel data")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return from_vtk(image, matrix)


def update_node_from_volume(node: Any, volume: Volume) -> None:
    """Replace ``node``'s voxels and geometry by ``volume``'s, as one modification.

    Shape and spacing may change (upsampling). Image data and matrix are swapped inside one
    ``StartModify``/``EndModify`` so views never see new voxels on the old grid.
    """
    image, matrix = to_vtk(volume)
    was_modifying = node.StartModify() if hasattr(node, "StartModify") else None
    try:
        node.SetIJKToRASMatrix(matrix)
        node.SetAndObserveImageData(image)
        if hasattr(node, "StorableModified"):
            # Mark the voxels as changed since loading, so Save offers to write them (as
            # slicer.util.updateVolumeFromArray does).
            node.StorableModified()
    finally:
        if was_modifying is not None:
            node.EndModify(was_modifying)


def control_points_ras(
    markups: Any, *, world_to_local: Optional[Callable[[Sequence[float]], Sequence[float]]] = None
) -> list[tuple[float, float, float]]:
    """RAS positions (mm) of a markups point list's control points.

    Parameters
    ----------
    markups : vtkMRMLMarkupsFiducialNode
        The point list (world positions are read, so a transformed list works).
    world_to_local : callable, optional
        Maps a world point into the volume's own RAS frame when the volume sits under a
        transform; identity when None.
    """
    if markups is None:
        return []
    points = []
    defined = getattr(markups, "PositionDefined", None)
    for index in range(markups.GetNumberOfControlPoints()):
        if defined is not None and markups.GetNthControlPointPositionStatus(index) != defined:
            continue  # a point still being placed (preview) or cleared: not a centre
        position = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPositionWorld(index, position)
        if world_to_local is not None:
            position = list(world_to_local(position))
        points.append(tuple(float(x) for x in position))
    return points


def world_to_volume(volume_node: Any) -> Optional[Callable[[Sequence[float]], Sequence[float]]]:
    """The map from world RAS into ``volume_node``'s own RAS frame; None when it is under no transform.

    Slicer's ``GetTransformFromWorld`` fills the ``vtkGeneralTransform`` it is given. A non-linear
    transform is refused: the voxel grid is not where a rigid map would put a point.

    Raises
    ------
    InputError
        The volume is under a non-linear transform.
    """
    import vtk

    transform_node = volume_node.GetParentTransformNode()
    if transform_node is None:
        return None
    if not transform_node.IsTransformToWorldLinear():
        raise InputError(
            f"volume {volume_node.GetName()!r} is under the non-linear transform {transform_node.GetName()!r}; "
            "harden it (Transforms module) or remove it before placing lesions at points")
    from_world = vtk.vtkGeneralTransform()
    transform_node.GetTransformFromWorld(from_world)
    return from_world.TransformPoint


def centres_in_volume_frame(volume_node: Any, centres: Any) -> list[tuple[float, float, float]]:
    """Lesion centres (a markups point list, or world RAS points) in ``volume_node``'s own RAS frame.

    Markups are read at their world positions (their own transform applied), then everything goes
    through the inverse of the volume's transform, so points shown on a registered volume land there.

    Raises
    ------
    InputError
        A point that is not three numbers, or a volume under a non-linear transform.
    """
    if centres is None:
        return []
    if hasattr(centres, "GetNumberOfControlPoints"):
        world = control_points_ras(centres)
    else:
        world = [tuple(float(x) for x in point) for point in centres]
        if any(len(point) != 3 for point in world):
            raise InputError("each lesion centre must be an (R, A, S) point in mm")
    to_volume = world_to_volume(volume_node) if world else None
    if to_volume is None:
        return world
    return [tuple(float(x) for x in to_volume(point)) for point in world]


def lesion_volumes_ml(labels: np.ndarray, volume: Volume) -> dict[int, float]:
    """Volume in mL of every non-zero label of ``labels`` (on ``volume``'s grid)."""
    labels = np.asarray(labels)
    if labels.shape != volume.array.shape:
        raise InputError(f"label map shape {labels.shape} does not match the volume's {volume.array.shape}")
    voxel_ml = abs(float(np.linalg.det(volume.ijk_to_ras[:3, :3]))) / 1000.0
    ids, counts = np.unique(labels[labels != 0], return_counts=True)
    return {int(i): float(c) * voxel_ml for i, c in zip(ids, counts)}
