"""Reading and writing volumes through SimpleITK: NRRD, NIfTI, MHA/MHD and DICOM series.

Every failure a user can cause (missing path, unreadable file, 2D or 4D image,
colour image) becomes an :class:`~MedSynthLib.errors.InputError` that names the
file and the problem. The voxel dtype is kept on read and on write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import SimpleITK as sitk

from .convert import from_sitk, to_sitk
from .errors import InputError
from .volume import Volume

__all__ = ["read_volume", "write_volume", "WRITE_EXTENSIONS", "READ_EXTENSIONS"]

PathLike = Union[str, "os.PathLike[str]"]

WRITE_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
READ_EXTENSIONS = WRITE_EXTENSIONS + (".dcm",)


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"no DICOM series found in folder {folder}")
    if len(series) > 1:
        sizes = {s: len(reader.GetGDCMSeriesFileNames(str(folder), s)) for s in series}
        raise InputError(
            f"folder {folder} holds {len(series)} DICOM series ({', '.join(f'{s}: {n} files' for s, n in sizes.items())}); "
            "put the series you want in a folder of its own"
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader.SetFileNames(files)
    return reader.Execute()


def read_volume(path: PathLike) -> Volume:
    """Read a 3D scalar volume from a file, or from a folder holding one DICOM series.

    Raises
    ------
    InputError
        The path does not exist, is not an image SimpleITK can read, or is not a
        3D scalar volume (2D, 4D, colour/vector).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()  # cheap header read: refuse 4D before loading voxels
            dimension = reader.GetDimension()
            size = reader.GetSize()
            if dimension == 4 and size[3] > 1:
                raise InputError(
                    f"{path.name} is a 4D volume of size {size} (a time series or multi-volume); "
                    "MedSynth needs a single 3D volume: extract one frame first"
                )
            if dimension < 3 or (dimension == 3 and size[2] == 1 and _extension(path) == ".dcm"):
                raise InputError(f"{path.name} is a 2D image of size {size[:2]}; MedSynth needs a 3D volume")
            image = reader.Execute()
            if image.GetDimension() == 4:  # a 4D image with a single frame
                image = image[:, :, :, 0]
    except InputError:
        raise
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise InputError(f"cannot read {path}: not an image format MedSynth can open ({first_line})") from None
    return from_sitk(image)


def write_volume(volume: Volume, path: PathLike, *, compress: bool = True) -> Path:
    """Write ``volume`` (dtype and geometry kept) to NRRD, NIfTI or MHA/MHD by file extension.

    Parent folders are created. Returns the path written.
    """
    path = Path(path)
    if _extension(path) not in WRITE_EXTENSIONS:
        raise InputError(
            f"cannot write {path.name}: use one of the extensions {', '.join(WRITE_EXTENSIONS)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    image = to_sitk(volume)
    try:
        sitk.WriteImage(image, str(path), useCompression=compress)
    except RuntimeError as error:
        raise InputError(f"cannot write {path}: {str(error).strip().splitlines()[-1]}") from None
    return path
