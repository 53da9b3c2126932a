"""What ``medsynth augment`` reads: a folder, a glob or a CSV manifest, turned into a list of cases.

A case is one source scan with its optional label map, region and preset. Each
output is a (case, variant) pair whose seed is derived from the run's seed, the
source file's content (sha256) and the variant number, so results depend on
neither order, worker count, path nor machine.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..io import READ_EXTENSIONS

__all__ = ["Case", "read_cases", "file_sha256", "derive_seed", "is_label_name", "MANIFEST_COLUMNS"]

logger = logging.getLogger(__name__)

#: Words of a file name that mark a label, mask or probability map, not a scan (``*_label*``, ``*_seg``,
#: BIDS ``_dseg``/``_probseg``/``_mask``, FSL ``_pve_1``, ``brainmask``, ``GMprob``).
_LABEL_WORDS = re.compile(r"^(labels?|seg|dseg|probseg|segmentation|pve)$|(label|mask|prob)$", re.IGNORECASE)

#: Columns a CSV manifest may have (a header row naming them, or these positions without one).
MANIFEST_COLUMNS = ("image", "label", "region", "preset")


@dataclass(frozen=True)
class Case:
    """One source scan: where it is, what goes with it, and the name its outputs get."""

    name: str
    image: str
    label: Optional[str] = None
    region: Optional[str] = None
    preset: Optional[str] = None
    row: int = 0  #: 1-based row (manifest) or position (folder, glob), for messages


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (a DICOM series) in name order; ``""`` when unreadable."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for item in files:
            if path.is_dir():
                digest.update(item.name.encode() + b"\0")
            with open(item, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def derive_seed(seed: int, source_sha256: str, variant: int) -> int:
    """The seed of one output: a hash of (run seed, source content, variant), in [0, 2**31)."""
    text = f"medsynth-augment:{int(seed)}:{source_sha256}:{int(variant)}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little") & 0x7FFFFFFF


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name.endswith(".seg.nrrd"):
        return False
    return path.is_file() and any(name.endswith(ext) for ext in READ_EXTENSIONS if ext != ".dcm")


def is_label_name(path: str | Path) -> bool:
    """True when a file's name marks a label, mask or probability map (a word of it after the first, split at ``_ - .``,
    is ``label(s)``, ``seg``, ``dseg``, ``probseg``, ``segmentation`` or ``pve``, or ends with ``label``, ``mask`` or
    ``prob``): a folder or glob of scans skips it.

    >>> [is_label_name(n) for n in ("ct_3mm_label.nii.gz", "brain1_lesion_label_x.nrrd", "MNI_GMprob.nii.gz",
    ...                             "ROBEX_brainmask.nii.gz", "case_seg.nii.gz", "sub-01_T1w.nii.gz",
    ...                             "ct_totalseg_example.nii.gz", "segment.nii.gz")]
    [True, True, True, True, True, False, False, False]
    """
    words = re.split(r"[_.\-]+", _stem(str(path)))
    return any(_LABEL_WORDS.search(word) for word in words[1:])


def _scans(files: list[Path], source: str) -> list[Path]:
    """The files that are scans; label, mask and probability maps named as such are skipped (logged)."""
    skipped = [f.name for f in files if is_label_name(f)]
    if skipped:
        logger.warning("%s: skipped %d label/mask/probability map(s) by name: %s (give them as the label column "
                       "of a CSV manifest)", source, len(skipped), ", ".join(skipped))
    return [f for f in files if not is_label_name(f)]


def _stem(path: str) -> str:
    name = Path(path.rstrip("/\\")).name
    for ext in sorted(READ_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "case"


def _manifest_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [r for r in csv.reader(handle) if any(cell.strip() for cell in r) and not r[0].startswith("#")]
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read manifest {path}: {error}") from None
    if not rows:
        raise InputError(f"manifest {path} has no rows")
    header = [cell.strip().lower() for cell in rows[0]]
    if "image" in header:
        unknown = sorted(set(header) - set(MANIFEST_COLUMNS) - {""})
        if unknown:
            raise InputError(f"manifest {path}: unknown column(s) {', '.join(unknown)}; "
                             f"known: {', '.join(MANIFEST_COLUMNS)}")
        names, rows = header, rows[1:]
    else:
        names = list(MANIFEST_COLUMNS)
    if any(len(r) > len(names) for r in rows):
        raise InputError(f"manifest {path}: a row has more than the {len(names)} columns {', '.join(names)}")
    return [{k: (v.strip() or None) for k, v in zip(names, r)} for r in rows]


def _resolve(base: Path, value: Optional[str]) -> Optional[str]:
    if value is None or value == "auto":
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _from_manifest(path: Path) -> list[Case]:
    cases = []
    for number, row in enumerate(_manifest_rows(path), start=1):
        if not row.get("image"):
            raise InputError(f"manifest {path}, row {number}: no image")
        cases.append(Case(name=_stem(row["image"]), image=_resolve(path.parent, row["image"]),
                          label=_resolve(path.parent, row.get("label")), region=_resolve(path.parent, row.get("region")),
                          preset=row.get("preset"), row=number))
    return cases


def read_cases(source: str | Path) -> list[Case]:
    """The cases of a folder (its image files), a glob pattern, or a CSV manifest (``.csv``).

    A folder or a glob skips files named as label, mask or probability maps (:func:`is_label_name`); a manifest
    is taken as written.

    Case names come from the file names; two sources with the same name get the
    first 8 hex digits of their path's hash appended, so every output name is unique.

    Raises
    ------
    InputError
        Nothing matches, the folder holds no images, or the manifest is malformed.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise InputError(f"manifest not found: {path}")
        cases = _from_manifest(path)
    elif path.is_dir():
        files = _scans(sorted(p for p in path.iterdir() if _is_image(p)), text)
        if not files:
            raise InputError(f"folder {path} holds no volumes ({', '.join(READ_EXTENSIONS[:-1])})")
        cases = [Case(name=_stem(str(f)), image=str(f), row=n) for n, f in enumerate(files, start=1)]
    elif glob.has_magic(text):
        files = _scans(sorted(Path(p) for p in glob.glob(str(path)) if _is_image(Path(p)) or Path(p).is_dir()), text)
        if not files:
            raise InputError(f"no volumes match {text}")
        cases = [Case(name=_stem(str(f)), image=str(f), row=n) for n, f in enumerate(files, start=1)]
    else:
        raise InputError(f"{text} is not a folder, a glob pattern or a .csv manifest"
                         + ("" if path.exists() else " (it does not exist)"))
    return _unique_names(cases)


def _unique_names(cases: list[Case]) -> list[Case]:
    seen: dict[str, int] = {}
    for case in cases:
        seen[case.name] = seen.get(case.name, 0) + 1
    out = []
    for case in cases:
        if seen[case.name] > 1:
            tag = hashlib.sha256(str(Path(case.image).resolve()).encode()).hexdigest()[:8]
            case = Case(f"{case.name}-{tag}", case.image, case.label, case.region, case.preset, case.row)
        out.append(case)
    return out
