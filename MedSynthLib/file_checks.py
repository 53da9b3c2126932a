"""Is a volume file whole? Checks made before ITK reads the voxels.

ITK reads a NIfTI file whose data stops early without an error and fills the
missing voxels with zeros, so a truncated download or copy would be processed
as if it were a scan (a blank slab, "corrupted" slices). :func:`check_complete`
compares what the header promises (dimensions x components x bytes per voxel,
from the data offset) with what is there, and reads every compressed stream
(gzip NIfTI, gzip NRRD, zlib MetaImage) to its end, which also checks its CRC.
Uncompressed files cost a ``stat``; a compressed one costs one more
decompression (about as long as ITK's own).

:func:`check_slice_positions` finds a DICOM series with a slice position
missing, duplicated or unevenly spaced, which ITK stacks at one spacing.

Every problem is an :class:`~MedSynthLib.errors.InputError`: one line naming the file and the problem.
Headers this module does not follow (other encodings, file lists) are left to ITK.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Sequence

import numpy as np

from .errors import InputError

__all__ = ["check_complete", "check_slice_positions", "NiftiHeader", "nifti_header"]

_CHUNK = 1 << 20  # compressed bytes read at a time
_MAX_OUT = 1 << 24  # decompressed bytes at a time: a 1 MiB chunk of zeros inflates to 1 GiB
_GZIP, _ZLIB_OR_GZIP = 31, 47  # zlib wbits: gzip members; zlib or gzip (MetaIO's own choice)
_HEADER_LIMIT = 1 << 20  # NRRD/MetaImage text headers longer than this are left to ITK
_AGAIN = "a download or copy was cut short? Copy the file again"


def _size(count: int) -> str:
    return f"{count:,} bytes"


def _truncated(path: Path, detail: str) -> InputError:
    return InputError(f"cannot read {path}: the file is truncated ({detail}); {_AGAIN}")


def _damaged(path: Path, detail: str) -> InputError:
    return InputError(f"cannot read {path}: the file is damaged ({detail}); copy the file again")


@dataclass
class _Inflated:
    """What reading a compressed stream to its end gave: bytes out, the first bytes, and whether it ended properly."""

    total: int
    head: bytes
    complete: bool


def _inflate(stream: BinaryIO, wbits: int, head_size: int = 0) -> _Inflated:
    """Decompress ``stream`` to its end, keeping only a count and the first ``head_size`` bytes.

    Gzip may hold several members and zero padding; other bytes after a whole
    stream are ignored (zlib's gzread does the same). Raises ``zlib.error`` on a
    damaged stream (bad data, CRC or length); ``complete`` is False where the
    input ends before the end-of-stream marker.
    """
    decompressor = zlib.decompressobj(wbits)
    head, total, data = bytearray(), 0, b""
    while True:
        if not data:
            data = stream.read(_CHUNK)
            if not data:
                return _Inflated(total, bytes(head), decompressor.eof)
        if decompressor.eof:  # one stream done: a further gzip member, padding, or trailing bytes
            data = data.lstrip(b"\0")
            if len(data) == 1:
                data += stream.read(1)
            if not data:
                continue
            if wbits != _GZIP or data[:2] != b"\x1f\x8b":
                return _Inflated(total, bytes(head), True)
            decompressor = zlib.decompressobj(wbits)
        out = decompressor.decompress(data, _MAX_OUT)
        total += len(out)
        if len(head) < head_size:
            head += out[: head_size - len(head)]
        data = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail


def _inflate_checked(path: Path, stream: BinaryIO, wbits: int, head_size: int = 0) -> _Inflated:
    try:
        return _inflate(stream, wbits, head_size)
    except zlib.error as error:
        raise _damaged(path, f"its compressed data fails to decompress: {error}") from None


# ---- NIfTI ---------------------------------------------------------------------------------------


#: Bits per voxel of each NIfTI datatype code (nifticlib sizes the data by the code, not by ``bitpix``).
_NIFTI_BITS = {
    1: 1, 2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64,
    1536: 128, 1792: 128, 2048: 256, 2304: 32,
}


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1/2 header that say where the voxels are and how many bytes they take."""

    byte_order: str  # "<" or ">"
    datatype: int
    dims: tuple  # dim[1..dim[0]]
    offset: int  # vox_offset, at least the header size + 4

    @property
    def data_bytes(self) -> Optional[int]:
        """Bytes of voxel data the header promises; None for a datatype code NIfTI does not define."""
        bits = _NIFTI_BITS.get(self.datatype)
        return None if bits is None else (int(np.prod(self.dims, dtype=np.int64)) * bits + 7) // 8

    @property
    def file_bytes(self) -> Optional[int]:
        return None if self.data_bytes is None else self.offset + self.data_bytes


def nifti_header(header: bytes) -> Optional[NiftiHeader]:
    """Parse the first 348 (NIfTI-1) or 540 (NIfTI-2) bytes of a single-file NIfTI; None if they are not one."""
    for order in ("<", ">"):
        if len(header) < 348:
            return None
        size = int(np.frombuffer(header[:4], f"{order}i4")[0])
        if size == 348 and header[344:347] == b"n+1":
            # dim int16[8] at 40, datatype int16 at 70, vox_offset float32 at 108
            dims = np.frombuffer(header[40:56], f"{order}i2").astype(np.int64)
            code = int(np.frombuffer(header[70:72], f"{order}i2")[0])
            offset = int(np.frombuffer(header[108:112], f"{order}f4")[0])
        elif size == 540 and len(header) >= 540 and header[4:7] == b"n+2":
            # datatype int16 at 12, dim int64[8] at 16, vox_offset int64 at 168
            code = int(np.frombuffer(header[12:14], f"{order}i2")[0])
            dims = np.frombuffer(header[16:80], f"{order}i8")
            offset = int(np.frombuffer(header[168:176], f"{order}i8")[0])
        else:
            continue
        rank = int(dims[0])
        if not 1 <= rank <= 7 or np.any(dims[1 : rank + 1] < 1):
            return None
        return NiftiHeader(order, code, tuple(int(d) for d in dims[1 : rank + 1]), max(offset, size + 4))
    return None


def _cut_in_header(head: bytes) -> bool:
    """Whether ``head`` starts a NIfTI-1/2 header (its sizeof_hdr, either byte order) but is shorter than one."""
    sizes = {int.from_bytes(head[:4], order) for order in ("little", "big")} if len(head) >= 4 else set()
    return any(size in (348, 540) and len(head) < size for size in sizes)


def _check_nifti(path: Path) -> None:
    with open(path, "rb") as stream:
        compressed = stream.read(2) == b"\x1f\x8b"  # ITK also reads an uncompressed file named .nii.gz
        stream.seek(0)
        if not compressed:
            head = stream.read(540)
            if _cut_in_header(head):
                raise _truncated(path, "it ends inside its header")
            header = nifti_header(head)
            if header is not None and header.file_bytes is not None:
                _check_length(path, header.file_bytes, path.stat().st_size, header.offset)
            return
        inflated = _inflate_checked(path, stream, _GZIP, head_size=540)
    if inflated.complete and _cut_in_header(inflated.head):
        raise _truncated(path, "it ends inside its header")
    header = nifti_header(inflated.head)
    promised = header.file_bytes if header is not None else None
    if not inflated.complete:
        raise _ends_early(path, inflated.total, promised)
    if promised is not None:
        _check_length(path, promised, inflated.total, header.offset)


def _ends_early(path: Path, total: int, promised: Optional[int], what: str = "") -> InputError:
    """The error for a compressed stream that ends before its end-of-stream marker."""
    where = f"{what}: its" if what else "its"
    if promised is not None and total >= promised:
        return _truncated(path, f"{where} compressed data lacks its end-of-stream marker and checksum")
    promises = f" of the {_size(promised)} its header promises" if promised is not None else ""
    return _truncated(path, f"{where} compressed data stops after {_size(total)}{promises}")


def _check_length(path: Path, promised: int, present: int, offset: int = 0, what: str = "") -> None:
    """Refuse a file (or ``what``, its data file) holding fewer bytes than ``promised``."""
    if present < promised:
        detail = f"its header promises {_size(promised - offset)} of voxel data, {_size(max(present - offset, 0))} are there"
        raise _truncated(path, f"{what}: {detail}" if what else detail)


# ---- NRRD and MetaImage: text headers ------------------------------------------------------------

_NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t",
        "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
_NRRD_TYPE_BYTES = {name: size for size, names in _NRRD_TYPES.items() for name in names}
_META_TYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _text_header(path: Path, end: "re.Pattern[bytes]") -> "tuple[bytes, int, bool]":
    """(header bytes up to the end of ``end``'s match, offset of the data after it, whether ``end`` was found).

    A match must be followed by more bytes or by the end of the file, so a line cut at a block border is not taken.
    """
    text, at_end = b"", False
    with open(path, "rb") as stream:
        while len(text) < _HEADER_LIMIT and not at_end:
            block = stream.read(65536)
            at_end = not block
            text += block
            match = end.search(text)
            if match and (match.end() < len(text) or at_end):
                return text[: match.end()], match.end(), True
    return text, len(text), False


def _whole_number(text: str) -> Optional[int]:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _data_size(path: Path, data: Optional[Path], offset: int) -> int:
    """Bytes of data there are: in the data file, or after ``offset`` in ``path`` itself."""
    if data is None:
        return max(path.stat().st_size - offset, 0)
    if not data.is_file():
        raise InputError(f"cannot read {path}: its data file {data.name} is missing (looked for {data})")
    return data.stat().st_size


def _check_data(path: Path, data: Optional[Path], offset: int, promised: int, *, wbits: Optional[int], skip: int) -> None:
    """Check raw (``wbits`` None) or compressed data of ``promised`` bytes after ``skip`` bytes."""
    what = f"its data file {data.name}" if data is not None else ""
    if wbits is None:
        present = _data_size(path, data, offset) - max(skip, 0)
        _check_length(path, promised, present, 0, what)
        return
    _data_size(path, data, offset)  # a missing data file is named as such
    with open(data or path, "rb") as stream:
        stream.seek(0 if data is not None else offset)
        inflated = _inflate_checked(path, stream, wbits)
    if not inflated.complete:
        raise _ends_early(path, inflated.total, promised + max(skip, 0), what)
    _check_length(path, promised + max(skip, 0), inflated.total, 0, what)


def _check_nrrd(path: Path) -> None:
    header, offset, ended = _text_header(path, re.compile(rb"\r?\n\r?\n"))
    if not header.startswith(b"NRRD000"):
        return  # not a NRRD: left to ITK
    fields = {}
    for line in header.decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        name, value = line.split(":", 1)
        fields[name.strip().replace(" ", "")] = value.strip()
    data_file = fields.get("datafile")
    if not ended and data_file is None and len(header) < _HEADER_LIMIT:
        raise _truncated(path, "it ends inside its header")
    sizes = [_whole_number(s) for s in fields.get("sizes", "").split()]
    typesize = _NRRD_TYPE_BYTES.get(" ".join(fields.get("type", "").lower().split()))
    encoding = fields.get("encoding", "").lower()
    skip = _whole_number(fields.get("byteskip", "0"))
    if (not sizes or None in sizes or typesize is None or skip is None or encoding not in ("raw", "gz", "gzip")
            or _whole_number(fields.get("lineskip", "0")) != 0 or (skip < 0 and encoding != "raw")
            or (data_file is not None and (len(data_file.split()) > 1 or data_file == "LIST"))):
        return  # text encodings, bzip2, line skips, file lists: left to ITK
    data = None if data_file is None else (path.parent / data_file)
    promised = int(np.prod(sizes, dtype=np.int64)) * typesize
    _check_data(path, data, offset, promised, wbits=None if encoding == "raw" else _GZIP, skip=skip)


def _check_metaimage(path: Path) -> None:
    header, offset, ended = _text_header(path, re.compile(rb"ElementDataFile[ \t]*=[^\r\n]*(\r?\n|$)"))
    if not ended:
        if len(header) < _HEADER_LIMIT and re.match(rb"\s*(ObjectType|NDims)\s*=", header):
            raise _truncated(path, "it ends inside its header")
        return  # not a MetaImage header this module follows: left to ITK
    fields = {}
    for line in header.decode("latin-1").splitlines():
        if "=" in line:
            name, value = line.split("=", 1)
            fields[name.strip()] = value.strip()
    sizes = [_whole_number(s) for s in fields.get("DimSize", "").split()]
    typesize = _META_TYPE_BYTES.get(fields.get("ElementType", ""))
    channels = _whole_number(fields.get("ElementNumberOfChannels", "1"))
    skip = _whole_number(fields.get("HeaderSize", "0"))
    data_file = fields.get("ElementDataFile", "")
    if (not sizes or None in sizes or typesize is None or channels is None or skip is None
            or fields.get("BinaryData", "True").lower() == "false" or data_file in ("", "LIST")
            or len(data_file.split()) > 1 or "%" in data_file):
        return  # ASCII data, file lists and patterns: left to ITK
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if compressed and skip != 0:
        return
    data = None if data_file == "LOCAL" else (path.parent / data_file)
    promised = int(np.prod(sizes, dtype=np.int64)) * channels * typesize
    _check_data(path, data, offset, promised, wbits=_ZLIB_OR_GZIP if compressed else None, skip=skip)


def check_complete(path: Path) -> None:
    """Refuse a NIfTI, NRRD or MetaImage file whose data is shorter than its header says, or whose compressed data
    ends early or fails its check (:class:`InputError`, one line). Other files are left to ITK."""
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            _check_nifti(path)
        elif name.endswith((".nrrd", ".nhdr")):
            _check_nrrd(path)
        elif name.endswith((".mha", ".mhd")):
            _check_metaimage(path)
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None


# ---- DICOM series --------------------------------------------------------------------------------


def check_slice_positions(
    folder: Path, names: Sequence[str], positions: Sequence[Optional[str]], normal: Sequence[float]
) -> None:
    """Refuse a DICOM series whose slices are not at equally spaced, distinct positions along ``normal``.

    ``positions`` are the files' ImagePositionPatient (0020,0032) values as the
    files hold them (``None`` where absent). A gap may differ from the typical
    (median) gap by at most 0.01 mm or 1 % of it, whichever is larger: Slicer's
    DICOM reader warns from 0.01 mm; ITK would stack the slices at one spacing.
    """
    if len(names) < 2:
        return
    points = [_position(value) for value in positions]
    missing = [name for name, point in zip(names, points) if point is None]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(
            f"cannot read the DICOM series in {folder}: {len(missing)} of its {len(names)} slice files lack a position "
            f"(ImagePositionPatient 0020,0032): {shown}; MedSynth cannot place them"
        )
    along = np.asarray(points, dtype=float) @ np.asarray(normal, dtype=float)
    order = np.argsort(along, kind="stable")
    along = along[order]
    gaps = np.diff(along)
    positive = gaps[gaps > 0.01]
    typical = float(np.median(positive)) if positive.size else 0.0
    tolerance = max(0.01, 0.01 * typical)
    for index, gap in enumerate(gaps):
        first, second = names[order[index]], names[order[index + 1]]
        if gap <= tolerance:
            raise InputError(
                f"cannot read the DICOM series in {folder}: {first} and {second} are at the same slice position "
                f"({along[index]:.3f} mm along the slice normal): a duplicated slice; remove one"
            )
        if abs(gap - typical) > tolerance:
            steps = round(gap / typical)
            cause = (f"{steps - 1} slice{'s are' if steps > 2 else ' is'} missing" if steps >= 2
                     and abs(gap - steps * typical) <= tolerance * steps else "the slice spacing is unequal")
            raise InputError(
                f"cannot read the DICOM series in {folder}: the gap between {first} and {second} is {gap:.3f} mm, "
                f"the other slices are {typical:.3f} mm apart: {cause}"
            )


def _position(value: Optional[str]) -> Optional[tuple]:
    try:
        point = tuple(float(part) for part in str(value).strip().split("\\"))
    except ValueError:
        return None
    return point if len(point) == 3 and all(np.isfinite(point)) else None
