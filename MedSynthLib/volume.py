"""The one image type of MedSynth: a voxel array plus where it sits in the patient.

``Volume.array`` is in KJI order (slowest axis k, fastest i), the order of
Slicer's ``arrayFromVolume`` and SimpleITK's ``GetArrayFromImage``.
``Volume.ijk_to_ras`` is the 4x4 matrix mapping a voxel index (i, j, k, 1) to
patient RAS millimetres (Slicer's convention). Everything else (spacing,
origin, direction, orientation code) is derived from it, so geometry can
never disagree with itself.

Array axes and IJK axes are easy to mix up: array axis 0 is k, 1 is j, 2 is i.
Functions that take an ``axis`` use array axes; :func:`array_axis` converts a
user's ``"i" | "j" | "k"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from .errors import InputError

__all__ = [
    "Volume",
    "AXIS_NAMES",
    "array_axis",
    "validate_volume",
    "MAX_VOXELS",
    "THICK_SLICE_RATIO",
    "GRID_TOLERANCE_MM",
    "mask_on_grid",
]

#: IJK name of each array axis (array axis 0 is k).
AXIS_NAMES = ("k", "j", "i")

#: Largest volume MedSynth processes (voxels); 1024^3 float32 is already 4 GiB.
MAX_VOXELS = 1024**3

#: A slice spacing this many times the finest in-plane spacing makes a scan "thick-slice": methods that
#: learn from in-plane data then degrade it with a slice profile first, and 3D filters work in-plane.
THICK_SLICE_RATIO = 1.5

#: Two grids are the same when their IJK-to-RAS matrices agree within this many mm (masks exported by
#: other tools carry float32 geometry, off by ~1e-5 mm).
GRID_TOLERANCE_MM = 1e-3

_SUPPORTED_KINDS = ("b", "u", "i", "f")


def array_axis(axis: Union[int, str, None], volume: Optional["Volume"] = None) -> int:
    """Array axis (0, 1 or 2) for ``axis`` given as ``"i"|"j"|"k"``, an int, or ``None``/"auto".

    ``None`` and ``"auto"`` pick ``volume.slice_axis()`` (the thickest axis).
    """
    if axis is None or (isinstance(axis, str) and axis.lower() == "auto"):
        if volume is None:
            raise InputError("axis 'auto' needs a volume to choose from")
        return volume.slice_axis()
    if isinstance(axis, str):
        name = axis.lower()
        if name not in AXIS_NAMES:
            raise InputError(f"axis must be one of i, j, k or auto, got {axis!r}")
        return AXIS_NAMES.index(name)
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) and 0 <= int(axis) <= 2:
        return int(axis)
    raise InputError(f"axis must be one of i, j, k, auto or an array axis 0-2, got {axis!r}")


@dataclass(frozen=True, eq=False)
class Volume:
    """A scalar 3D image with its IJK-to-RAS geometry.

    Parameters
    ----------
    array : ndarray, shape (K, J, I)
        Voxel values in KJI order. Any real numeric dtype; the dtype is kept
        through MedSynth's operations unless a caller asks for float.
    ijk_to_ras : ndarray, shape (4, 4)
        Affine from voxel index (i, j, k) to RAS mm. Must be finite and invertible.

    Examples
    --------
    >>> import numpy as np
    >>> v = Volume(np.zeros((4, 5, 6), np.int16), np.diag([0.5, 0.5, 3.0, 1.0]))
    >>> v.spacing, v.slice_axis()
    ((0.5, 0.5, 3.0), 0)
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise InputError(
                f"expected a 3D volume, got an array of {array.ndim} dimension(s) with shape {array.shape}"
            )
        if array.dtype.kind not in _SUPPORTED_KINDS:
            raise InputError(f"voxel type {array.dtype} is not supported; MedSynth needs real numbers")
        matrix = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise InputError(f"ijk_to_ras must be a 4x4 matrix, got shape {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise InputError("ijk_to_ras contains NaN or infinite values")
        if not np.allclose(matrix[3], [0, 0, 0, 1]):
            raise InputError(f"ijk_to_ras last row must be [0, 0, 0, 1], got {matrix[3].tolist()}")
        if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
            raise InputError("ijk_to_ras is singular: a voxel axis has zero spacing or axes are parallel")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "ijk_to_ras", matrix)

    # ---- geometry -------------------------------------------------------------------------
    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (the reverse of ``array.shape``)."""
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))

    @property
    def origin(self) -> tuple[float, float, float]:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return tuple(float(x) for x in self.ijk_to_ras[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the i, j, k axes."""
        return self.ijk_to_ras[:3, :3] / np.asarray(self.spacing)

    def spacing_along(self, axis: int) -> float:
        """Spacing (mm) along array axis ``axis`` (0 = k, 1 = j, 2 = i)."""
        return self.spacing[2 - axis]

    @property
    def spacing_kji(self) -> tuple[float, float, float]:
        """Spacing (mm) per array axis, in array order (k, j, i): what ``ndimage`` ``sampling=`` wants."""
        return tuple(self.spacing[::-1])

    def slice_axis(self) -> int:
        """Array axis with the largest spacing: the through-plane axis of a thick-slice scan.

        On ties the lowest array axis wins, so an isotropic volume slices along k.
        """
        spacing_kji = self.spacing_kji
        largest = max(spacing_kji)
        return next(a for a in range(3) if spacing_kji[a] >= largest * (1 - 1e-6))

    def ras_to_ijk(self) -> np.ndarray:
        """The inverse 4x4 affine: RAS mm to continuous voxel index (i, j, k)."""
        return np.linalg.inv(self.ijk_to_ras)

    def ijk_points_to_ras(self, points_ijk: Sequence) -> np.ndarray:
        """Map continuous voxel indices, shape (N, 3) or (3,), in (i, j, k) order, to RAS mm."""
        pts = np.asarray(points_ijk, dtype=np.float64)
        flat = pts.reshape(-1, 3)
        out = flat @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]
        return out.reshape(pts.shape)

    def ras_points_to_ijk(self, points_ras: Sequence) -> np.ndarray:
        """Map RAS mm points, shape (N, 3) or (3,), to continuous (i, j, k) voxel indices."""
        pts = np.asarray(points_ras, dtype=np.float64)
        inv = self.ras_to_ijk()
        flat = pts.reshape(-1, 3)
        out = flat @ inv[:3, :3].T + inv[:3, 3]
        return out.reshape(pts.shape)

    def orientation_code(self) -> str:
        """Three letters naming where the i, j, k axes point (RAS, LPS, LIA, ...).

        The nibabel convention: "RAS" means i runs towards Right, j towards Anterior.
        """
        letters = (("L", "R"), ("P", "A"), ("I", "S"))
        code = ""
        for column in self.direction.T:
            dominant = int(np.argmax(np.abs(column)))
            code += letters[dominant][int(column[dominant] > 0)]
        return code

    # ---- derived volumes ------------------------------------------------------------------
    def with_array(self, array: np.ndarray) -> "Volume":
        """A volume on the same grid holding ``array`` (same shape required)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise InputError(f"array shape {array.shape} does not match the volume's {self.array.shape}")
        return Volume(array, self.ijk_to_ras.copy())

    def copy(self) -> "Volume":
        return Volume(self.array.copy(), self.ijk_to_ras.copy())

    def crop(self, window: Sequence[slice]) -> "Volume":
        """The sub-volume ``window`` (KJI slices; a step keeps every step-th voxel) with its own geometry: voxel
        ``(i, j, k)`` of the result sits where voxel ``(start + step * i, ...)`` of this volume sits. The array is
        a view of this one's.

        Examples
        --------
        >>> v = Volume(np.zeros((5, 4, 4), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
        >>> c = v.crop((slice(1, 5, 2), slice(None), slice(2, 4)))
        >>> c.array.shape, c.spacing, c.origin
        ((2, 4, 2), (1.0, 1.0, 4.0), (2.0, 0.0, 2.0))
        """
        window = tuple(window)
        ranges = [part.indices(n) for part, n in zip(window, self.array.shape)]  # KJI (start, stop, step)
        to_old = np.eye(4)
        for column, (start, _stop, step) in zip((2, 1, 0), ranges):  # array axis 0 is k: IJK column 2
            to_old[column, column], to_old[column, 3] = step, start
        return Volume(self.array[window], self.ijk_to_ras @ to_old)

    def same_grid(self, other: "Volume", *, atol: float = GRID_TOLERANCE_MM) -> bool:
        """True if ``other`` has this volume's shape and geometry (within ``atol`` mm)."""
        return self.array.shape == other.array.shape and np.allclose(
            self.ijk_to_ras, other.ijk_to_ras, atol=atol
        )


def mask_on_grid(volume: Volume, mask: Union[Volume, np.ndarray, None], *, name: str = "mask") -> Optional[np.ndarray]:
    """``mask`` as a boolean array on ``volume``'s grid (None stays None): the one mask check of every task.

    A :class:`Volume` must share the volume's grid (:data:`GRID_TOLERANCE_MM`); a plain array its shape.
    Refuses other grids, NaN/inf and empty masks with an :class:`InputError` naming ``name``.
    """
    if mask is None:
        return None

    def describe(v: Volume) -> str:
        return f"shape {v.array.shape} (KJI), spacing {tuple(round(x, 3) for x in v.spacing)}"

    if isinstance(mask, Volume):
        if not volume.same_grid(mask):
            raise InputError(f"the {name} is on another grid ({describe(mask)}) than the volume ({describe(volume)}, "
                             f"or a different origin or direction); resample the {name} onto the volume's grid first")
        array = np.asarray(mask.array)
    else:
        array = np.asarray(mask)
        if array.shape != volume.array.shape:
            raise InputError(f"the {name} has shape {array.shape} but the volume has {volume.array.shape}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InputError(f"the {name} contains NaN or infinite values")
    boolean = array != 0
    if not boolean.any():
        raise InputError(f"the {name} is empty (every voxel is 0)")
    return boolean


def validate_volume(
    volume: Volume,
    *,
    min_slices: int = 2,
    axis: Optional[int] = None,
    allow_constant: bool = False,
    max_voxels: int = MAX_VOXELS,
) -> None:
    """Check that ``volume`` can be processed; raise :class:`InputError` naming the problem.

    Every task calls this first, so bad input fails in a second with a clear
    message instead of minutes later inside torch.

    Parameters
    ----------
    min_slices : int
        Minimum number of voxels along ``axis`` (or along every axis when ``axis`` is None).
    axis : int, optional
        Array axis the operation works across.
    allow_constant : bool
        Accept a volume whose voxels all hold the same value.
    max_voxels : int
        Refuse volumes larger than this, before any memory is allocated for them.
    """
    array = volume.array
    if array.size == 0:
        raise InputError(f"the volume is empty (shape {array.shape})")
    if array.size > max_voxels:
        raise InputError(
            f"the volume has {array.size:,} voxels, more than MedSynth's limit of {max_voxels:,}; "
            "crop or downsample it first"
        )
    axes = range(3) if axis is None else [axis]
    for a in axes:
        if array.shape[a] < min_slices:
            raise InputError(
                f"the volume has {array.shape[a]} slice(s) along {AXIS_NAMES[a]}; "
                f"MedSynth needs at least {min_slices}"
            )
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(
                f"the volume has {bad:,} NaN or infinite voxel(s); replace them (e.g. with 0) first"
            )
    if not allow_constant:
        first = array.flat[0]
        if np.all(array == first):
            raise InputError(f"the volume is constant (every voxel is {first}); there is nothing to process")
