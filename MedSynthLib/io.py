"""Reading and writing volumes through SimpleITK: NRRD, NIfTI, MHA/MHD and DICOM series.

Every failure a user can cause (missing path, unreadable file, 2D or 4D image,
colour image, a file shorter than its header says or whose compressed data ends
early, a DICOM series with a slice missing, duplicated or out of step) becomes an
:class:`~MedSynthLib.errors.InputError` that names the file and the problem,
before any voxel is used (:mod:`~MedSynthLib.file_checks`). The voxel dtype is
kept on read and on write.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .convert import from_sitk, to_sitk
from .errors import InputError
from .file_checks import check_complete, check_slice_positions, nifti_header
from .volume import Volume

__all__ = [
    "read_volume", "write_volume", "write_segmentation", "staged_file", "StagedFile",
    "WRITE_EXTENSIONS", "READ_EXTENSIONS",
]

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
    reader.MetaDataDictionaryArrayUpdateOn()  # each slice's tags, for the position check
    with _itk_warnings_off():  # ITK's multi-line "non uniform sampling" warning: the check below says it in one
        image = reader.Execute()
    position = "0020|0032"
    check_slice_positions(
        folder,
        [Path(name).name for name in files],
        [reader.GetMetaData(i, position) if reader.HasMetaDataKey(i, position) else None for i in range(len(files))],
        np.asarray(image.GetDirection()).reshape(3, 3)[:, 2],
    )
    return image


@contextlib.contextmanager
def _itk_warnings_off() -> Iterator[None]:
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


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
            check_complete(path)  # ITK reads a truncated NIfTI without an error, as zeros
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
    volume = from_sitk(image)
    if path.is_file() and _extension(path) in (".nii", ".nii.gz"):
        _restore_nifti_non_finite(path, volume.array)
    return volume


#: NIfTI float datatype codes and their numpy types (the only codes that can hold NaN or infinity).
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _restore_nifti_non_finite(path: Path, array: np.ndarray) -> None:
    """Put back the NaN and infinite voxels ITK's NIfTI reader turns into 0.

    SimpleITK reads a float NIfTI voxel that holds NaN or infinity as 0, so a
    corrupt file would pass every check and be processed as if it were tissue
    (NRRD and MetaImage keep them). Only zero voxels can have been such a
    voxel, so a float volume without zeros costs nothing; otherwise the raw
    voxels are read once and the non-finite ones restored in place, for
    :func:`~MedSynthLib.volume.validate_volume` to refuse.
    """
    if array.dtype.kind != "f" or not np.any(array == 0):
        return
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
            layout = _nifti_layout(header)
            if layout is None:
                return
            dtype, offset, count = layout
            stream.seek(offset)
            raw = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype)
    except (OSError, EOFError, ValueError):
        return  # ITK read it; a header this parser does not follow is left to ITK
    if raw.size < array.size:
        return
    raw = raw[: array.size].reshape(array.shape)
    bad = ~np.isfinite(raw)
    if bad.any():
        array[bad] = raw[bad]


def _nifti_layout(header: bytes) -> "Optional[tuple[np.dtype, int, int]]":
    """(voxel dtype, data offset, voxels in the first 3D volume) of a float NIfTI-1/2 header, else None."""
    parsed = nifti_header(header)
    if parsed is None or parsed.datatype not in _NIFTI_FLOATS or len(parsed.dims) < 3:
        return None
    count = int(np.prod(parsed.dims[:3]))
    return np.dtype(parsed.byte_order + _NIFTI_FLOATS[parsed.datatype]), parsed.offset, count


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
    image = to_sitk(volume)
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))
    with staged_file(path) as temporary:
        _write_image(image, temporary, path, compress=compress)
    return path


def _write_image(image: sitk.Image, temporary: Path, path: Path, *, compress: bool) -> None:
    try:
        sitk.WriteImage(image, str(temporary), useCompression=compress)
    except RuntimeError as error:
        raise InputError(f"cannot write {path}: {str(error).strip().splitlines()[-1]}") from None


class StagedFile:
    """A file written under its final name in a hidden folder beside its destination, moved there by :meth:`commit`.

    Writing in the destination's own folder makes the final move an atomic
    ``os.replace`` on the same file system: a reader (or a crash, a full disk,
    a Ctrl-C) sees the old file or the whole new one, never half of it. Formats
    that write two files (``.mhd`` + ``.zraw``, ``.nhdr`` + ``.raw.gz``) keep
    the data file's name the header refers to; the header moves last.
    """

    def __init__(self, destination: PathLike) -> None:
        self.destination = Path(destination)
        if self.destination.is_dir():
            raise InputError(f"cannot write {self.destination}: it is a folder")
        parent = self.destination.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", suffix=".partial", dir=parent))
        except OSError as error:
            raise InputError(f"cannot write {self.destination}: {error.strerror or error}") from None
        self.path = self.folder / self.destination.name

    def commit(self) -> Path:
        """Move the written file(s) into place (header last) and remove the hidden folder."""
        if not self.path.exists():
            self.discard()
            raise InputError(f"cannot write {self.destination}: nothing was written")
        try:
            for item in sorted(self.folder.iterdir(), key=lambda p: p.name == self.destination.name):
                os.replace(item, self.destination.parent / item.name)
        except OSError as error:
            raise InputError(f"cannot write {self.destination}: {error.strerror or error}") from None
        finally:
            self.discard()
        return self.destination

    def discard(self) -> None:
        """Remove the hidden folder and whatever was written into it (idempotent)."""
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def staged_file(destination: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``destination`` to; on success it replaces ``destination`` atomically.

    On any failure (including ``KeyboardInterrupt``) the temporary file is
    removed and ``destination`` is left as it was.
    """
    staged = StagedFile(destination)
    try:
        yield staged.path
    except BaseException:
        staged.discard()
        raise
    staged.commit()


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
    with staged_file(path) as temporary:
        _write_image(image, temporary, path, compress=True)
    return path
