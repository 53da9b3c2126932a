"""What ``medsynth augment`` writes: nnU-Net v2 raw layout, a MONAI datalist and ``manifest.csv``.

Layout of ``OUTPUT_DIR``::

    imagesTr/CASE_0000.nii.gz   labelsTr/CASE.nii.gz   synthesisedTr/CASE.nii.gz
    dataset.json   datalist.json   manifest.csv

``synthesisedTr`` holds each case's synthesised-voxel mask (:mod:`~MedSynthLib.provenance`: 2 where the
lesions changed the scan, 0 elsewhere); nnU-Net and MONAI read only ``imagesTr``/``labelsTr``.

Every file appears by rename from a temporary file in ``OUTPUT_DIR/.partial``
(same file system), so a reader (or a run killed at any moment) only ever sees
complete files; JSON and CSV files are rewritten only when their content changes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import threading
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional

from ..errors import InputError

__all__ = [
    "FILE_ENDING", "MANIFEST_FIELDS", "OUTPUT_FILES", "image_path", "label_path", "synthetic_mask_path", "output_paths", "partial_dir", "replace_atomically",
    "write_text_if_changed", "read_manifest", "write_manifest", "dataset_json", "datalist_json",
    "check_output_dir", "clear_partial", "deferred_interrupt",
]

FILE_ENDING = ".nii.gz"
PARTIAL = ".partial"
MANIFEST_FIELDS = (
    "case", "variant", "status", "image", "label", "source", "source_sha256", "source_label", "inputs_sha256",
    "seed", "preset", "modality", "specs", "lesion_ml", "label_ids", "image_sha256", "label_sha256",
    "synthetic_mask", "synthetic_mask_sha256", "seconds", "cpu_seconds", "error",
)
#: The files every output case has (manifest columns holding their paths, each with a ``_sha256`` column).
OUTPUT_FILES = ("image", "label", "synthetic_mask")


def image_path(root: Path, case: str) -> Path:
    return Path(root) / "imagesTr" / f"{case}_0000{FILE_ENDING}"


def label_path(root: Path, case: str) -> Path:
    return Path(root) / "labelsTr" / f"{case}{FILE_ENDING}"


def synthetic_mask_path(root: Path, case: str) -> Path:
    return Path(root) / "synthesisedTr" / f"{case}{FILE_ENDING}"


def output_paths(root: Path, case: str) -> tuple[Path, Path, Path]:
    """The paths of a case's files, in the order of :data:`OUTPUT_FILES`."""
    return image_path(root, case), label_path(root, case), synthetic_mask_path(root, case)


def partial_dir(root: Path) -> Path:
    return Path(root) / PARTIAL


def temporary_name(root: Path, final: Path) -> Path:
    """A unique temporary path for ``final`` in the partial folder (same ending, so writers pick the format)."""
    folder = partial_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    ending = FILE_ENDING if final.name.endswith(FILE_ENDING) else final.suffix
    return folder / f"{final.name[: -len(ending)]}.{uuid.uuid4().hex}{ending}"


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C until the block is done (main thread only), so a pair of renames is never split."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    except ValueError:  # not allowed here (embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def replace_atomically(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Rename each temporary file onto its final path, all or (on Ctrl-C) none of them pending."""
    with deferred_interrupt():
        for temporary, final in pairs:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, final)


def write_text_if_changed(root: Path, path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless it already holds exactly that; True if written."""
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    temporary = temporary_name(root, path)
    temporary.write_text(text, encoding="utf-8")
    replace_atomically([(temporary, path)])
    return True


def read_manifest(root: Path) -> dict[tuple[str, int], dict]:
    """Rows of an existing ``manifest.csv`` by (case, variant); empty when there is none."""
    path = Path(root) / "manifest.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {(r["case"], int(r["variant"])): r for r in rows if r.get("case") and str(r.get("variant", "")).isdigit()}


def write_manifest(root: Path, rows: Mapping[tuple[str, int], Mapping]) -> bool:
    """Write ``manifest.csv``: one row per output, sorted by case and variant."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for key in sorted(rows):
        writer.writerow({k: rows[key].get(k, "") for k in MANIFEST_FIELDS})
    return write_text_if_changed(root, Path(root) / "manifest.csv", buffer.getvalue())


def _ok(rows: Mapping[tuple[str, int], Mapping]) -> list[Mapping]:
    return [rows[k] for k in sorted(rows) if rows[k].get("status") == "ok"]


def dataset_json(rows: Mapping[tuple[str, int], Mapping], *, name: str, config: Mapping,
                 lesion_label: int, oedema_label: Optional[int]) -> dict:
    """nnU-Net v2 ``dataset.json``: ``channel_names``, ``labels`` (name -> id), ``numTraining``, ``file_ending``.

    Existing label ids found in the sources are named ``label_N`` (rename them
    freely: a rerun compares ids, not names); the synthetic classes get their own ids.
    """
    ok = _ok(rows)
    modalities = sorted({r.get("modality") or "MR" for r in ok}) or [config.get("modality") or "MR"]
    existing = sorted({int(i) for r in ok for i in json.loads(r.get("label_ids") or "[]")})
    labels = {"background": 0, **{f"label_{i}": i for i in existing if i not in (0, lesion_label, oedema_label)}}
    labels["synthetic_lesion"] = int(lesion_label)
    if oedema_label is not None:
        labels["synthetic_oedema"] = int(oedema_label)
    return {
        "channel_names": {"0": "CT" if modalities == ["CT"] else modalities[0] if len(modalities) == 1 else "mixed"},
        "labels": dict(sorted(labels.items(), key=lambda item: item[1])),
        "numTraining": len(ok),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": "synthetic lesions inserted by MedSynth (medsynth augment); not real findings",
        "medsynth": {"synthetic_lesions": True, "config": dict(config)},
    }


def datalist_json(rows: Mapping[tuple[str, int], Mapping]) -> dict:
    """MONAI datalist (``load_decathlon_datalist``): paths relative to the output folder."""
    return {"training": [{"image": r["image"], "label": r["label"]} for r in _ok(rows)]}


def check_output_dir(root: Path, config: Mapping) -> None:
    """Refuse, before anything is written, a folder that holds another dataset.

    Another dataset: a ``dataset.json`` not written by ``medsynth augment`` or
    written with other options (seed, preset, label ids...), or nnU-Net folders
    without one. Also clears temporary files a killed run left behind.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(f"output {root} exists and is not a folder")
    existing = root / "dataset.json"
    if existing.is_file():
        try:
            data = json.loads(existing.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise InputError(f"{root} holds an unreadable dataset.json; choose another output folder") from None
        theirs = data.get("medsynth", {}).get("config") if isinstance(data, dict) else None
        if theirs is None:
            raise InputError(f"{root} holds another dataset (its dataset.json was not written by medsynth augment); "
                             "choose another output folder")
        if theirs != json.loads(json.dumps(dict(config))):
            changed = sorted(k for k in set(theirs) | set(config) if theirs.get(k) != config.get(k))
            raise InputError(f"{root} holds a dataset made with other options ({', '.join(changed)}); "
                             "choose another output folder, or rerun with the same options to resume it")
    elif any((root / sub).is_dir() and any((root / sub).iterdir()) for sub in ("imagesTr", "labelsTr")):
        raise InputError(f"{root} holds imagesTr/labelsTr files but no dataset.json (another dataset?); "
                         "choose another output folder")
    clear_partial(root)


def clear_partial(root: Path) -> None:
    """Remove the temporary files of outputs that never finished (a killed run, a cancelled worker)."""
    shutil.rmtree(partial_dir(root), ignore_errors=True)
