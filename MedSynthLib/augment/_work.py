"""One output of ``medsynth augment``: read a case, insert lesions with its derived seed, write both files.

This is the function worker processes and Dask workers run: it takes a plain,
picklable :class:`OutputTask`, never raises for a bad case (it returns a
``failed`` row with the reason) and writes its files by atomic rename.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import InputError, MedSynthError
from ..io import read_volume, write_volume
from ..reports import to_json
from ..tasks.lesion import LesionOptions
from ..volume import Volume
from ._inputs import Case, file_sha256
from ._layout import OUTPUT_FILES, output_paths, replace_atomically, temporary_name
from ._options import AugmentOptions

__all__ = ["OutputTask", "run_output", "limit_threads", "region_is_name"]


def region_is_name(region: str) -> bool:
    """A manifest's region that names a tissue (``auto``, ``lung``...) rather than a label map's path."""
    return str(region).strip().lower() in LesionOptions.knob("region").choices


@dataclass(frozen=True)
class OutputTask:
    """Everything one output needs, in plain values (sent to worker processes and Dask workers)."""

    case: Case
    variant: int
    seed: int
    root: str
    options: AugmentOptions
    source_sha256: str = ""
    inputs_sha256: str = ""
    threads: Optional[int] = None


def limit_threads(threads: int) -> None:
    """Limit this process's math libraries to ``threads`` (set before they start their pools)."""
    threads = max(1, int(threads))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _dask_worker_threads() -> Optional[int]:
    """Cores per task on a Dask worker (its cores shared by its task threads), or None outside one."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    nthreads = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", 1)
    return max(1, (os.cpu_count() or 1) // max(1, int(nthreads)))


def _read_inputs(case: Case, options: AugmentOptions) -> tuple[Volume, Optional[Volume], Any]:
    """The case's image, its label map (ids checked against the synthetic ones) and its region (a label map
    read from the manifest's path, a tissue name, or None for the run's region)."""
    volume = read_volume(case.image)
    labels = None
    if case.label:
        labels = read_volume(case.label)
        if not volume.same_grid(labels):
            raise InputError(f"label {Path(case.label).name} is on another grid (shape {labels.array.shape}) "
                             f"than its image (shape {volume.array.shape}); resample it to the image first")
        if labels.array.dtype.kind not in "biu":
            labels = labels.with_array(np.rint(labels.array).astype(np.int32))
        used = {int(v) for v in (options.lesion_label, options.oedema_label) if v is not None}
        clash = sorted(used & {int(v) for v in np.unique(labels.array)})
        if clash:
            raise InputError(f"label {Path(case.label).name} already uses id {clash[0]}, the synthetic lesions' id; "
                             "choose another --lesion-label")
    region = case.region or None
    if region is not None and not region_is_name(region):
        region = read_volume(region)
    return volume, labels, region


def _compose_labels(result, labels: Optional[Volume], options: AugmentOptions) -> np.ndarray:
    """Existing labels (moved by any mass effect), synthetic oedema where unlabelled, synthetic lesion on top."""
    synthetic = result.labels.array
    base = (np.zeros(synthetic.shape, np.int64) if labels is None
            else np.asarray(result.moved_labels.array, dtype=np.int64).copy())
    if options.oedema_label is not None:
        base[(synthetic == 3) & (base == 0)] = options.oedema_label
    base[(synthetic == 1) | (synthetic == 2)] = options.lesion_label
    return base.astype(np.uint8 if base.max(initial=0) < 256 else np.uint16)


def _insert(task: OutputTask) -> tuple[dict, list[tuple[Path, Path]]]:
    from ..tasks.lesion import insert_lesions, provenance_metadata

    case, options, root = task.case, task.options, Path(task.root)
    volume, labels, region = _read_inputs(case, options)
    changes: dict[str, Any] = {"seed": task.seed, "labels": labels}
    if case.preset:
        changes["preset"] = case.preset
    if region is not None:
        changes["region"] = region
    result = insert_lesions(volume, options.lesion, **changes)
    label_array = _compose_labels(result, labels, options)
    metadata = provenance_metadata(result)
    name = f"{case.name}_v{task.variant:03d}"
    finals = output_paths(root, name)
    temporaries = tuple(temporary_name(root, final) for final in finals)
    write_volume(result.volume, temporaries[0], metadata=metadata)
    write_volume(result.volume.with_array(label_array), temporaries[1], metadata=metadata)
    write_volume(result.synthetic_mask, temporaries[2], metadata=metadata)
    existing = [] if labels is None else sorted(int(v) for v in np.unique(result.moved_labels.array) if v)
    row = {
        "status": "ok", **{key: final.relative_to(root).as_posix() for key, final in zip(OUTPUT_FILES, finals)},
        **{f"{key}_sha256": file_sha256(temporary) for key, temporary in zip(OUTPUT_FILES, temporaries)},
        "preset": result.report["preset"], "modality": result.report["modality"],
        "specs": to_json([s.as_dict() for s in result.specs], separators=(",", ":")),
        "lesion_ml": to_json([lesion["volume_ml"] for lesion in result.report["lesions"]]),
        "label_ids": to_json(existing),
        "warnings": list(result.report["warnings"]),  # for the command line's stderr; not a manifest column
    }
    return row, list(zip(temporaries, finals))


def run_output(task: OutputTask) -> dict:
    """Make one output; return its manifest row (``status`` ``ok`` or ``failed`` with ``error``)."""
    start, cpu = time.perf_counter(), time.process_time()
    threads = task.threads or _dask_worker_threads()
    if threads:
        limit_threads(threads)
    row: dict[str, Any] = {
        "case": task.case.name, "variant": task.variant, "source": task.case.image,
        "source_sha256": task.source_sha256, "source_label": task.case.label or "",
        "inputs_sha256": task.inputs_sha256, "seed": task.seed, "error": "",
    }
    pairs: list[tuple[Path, Path]] = []
    try:
        done, pairs = _insert(task)
        row.update(done)
        replace_atomically(pairs)
        pairs = []
    except (MedSynthError, OSError, ValueError, RuntimeError, MemoryError) as error:
        row.update(status="failed", error=f"{type(error).__name__}: {error}" if not isinstance(error, MedSynthError)
                   else str(error))
    finally:
        for temporary, _ in pairs:  # failed or interrupted after writing: leave nothing half-done
            temporary.unlink(missing_ok=True)
    row["seconds"] = round(time.perf_counter() - start, 3)
    row["cpu_seconds"] = round(time.process_time() - cpu, 3)  # of this process; the worker's share of a busy machine
    return row
