"""Reading and writing volumes through SimpleITK: NRRD, NIfTI, MHA/MHD and DICOM series.

Every failure a user can cause (missing path, unreadable file, 2D or 4D image,
colour image) becomes an :class:`~MedSynthLib.errors.InputError` that names the
file and the problem. The voxel dtype is kept on read and on write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .convert import from_sitk, to_sitk
from .errors import InputError
from .volume import Volume

__all__ = ["read_volume", "write_volume", "write_segmentation", "WRITE_EXTENSIONS", "READ_EXTENSIONS"]

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


def write_volume(
    volume: Volume, path: PathLike, *, compress: bool = True, metadata: Optional[Mapping[str, str]] = None
) -> Path:
    """Write ``volume`` (dtype and geometry kept) to NRRD, NIfTI or MHA/MHD by file extension.

    Parent folders are created. Returns the path written. ``metadata`` key/values
    go into the header (NRRD keys, MetaImage fields); the key ``ITK_FileNotes``
    becomes the NIfTI ``descrip`` field (80 characters), the only free text NIfTI keeps.
    """
    path = Path(path)
    if _extension(path) not in WRITE_EXTENSIONS:
        raise InputError(
            f"cannot write {path.name}: use one of the extensions {', '.join(WRITE_EXTENSIONS)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    image = to_sitk(volume)
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))
    try:
        sitk.WriteImage(image, str(path), useCompression=compress)
    except RuntimeError as error:
        raise InputError(f"cannot write {path}: {str(error).strip().splitlines()[-1]}") from None
    return path


def write_segmentation(
    labels: Volume,
    path: PathLike,
    segments: Sequence[Mapping],
) -> Path:
    """Write a label map as a Slicer segmentation file (``.seg.nrrd``) with named, coloured segments.

    The file is a plain 3D NRRD (any reader sees the label map) whose header
    carries Slicer's segmentation fields, so Slicer loads it as a segmentation
    node with one segment per entry of ``segments``.

    Parameters
    ----------
    labels : Volume
        Integer label map on the image's grid (0 = background).
    segments : sequence of mappings
        One per label value: ``{"value": int, "name": str, "color": (r, g, b)}``, colour in [0, 1].
    """
    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise InputError(f"a segmentation file must end in .seg.nrrd, got {path.name}")
    if labels.array.dtype.kind not in "biu":
        raise InputError(f"a label map must hold integers, got {labels.array.dtype}")
    array = labels.array.astype(np.uint8 if labels.array.max(initial=0) < 256 else np.uint16)
    image = to_sitk(labels.with_array(array))
    k, j, i = array.shape
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for index, segment in enumerate(segments):
        value = int(segment["value"])
        red, green, blue = (float(c) for c in segment.get("color", (1.0, 1.0, 0.0)))
        prefix = f"Segment{index}_"
        fields = {
            "ID": f"Segment_{value}",
            "Name": str(segment["name"]),
            "NameAutoGenerated": "0",
            "Color": f"{red:.6g} {green:.6g} {blue:.6g}",
            "ColorAutoGenerated": "0",
            "LabelValue": str(value),
            "Layer": "0",
            "Extent": f"0 {i - 1} 0 {j - 1} 0 {k - 1}",
            "Tags": "|",
        }
        for key, text in fields.items():
            image.SetMetaData(prefix + key, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path
