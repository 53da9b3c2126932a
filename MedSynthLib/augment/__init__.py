"""Synthetic-lesion training sets from a cohort: ``medsynth augment`` in Python.

:func:`augment` reads a folder, a glob or a CSV manifest of scans, makes
``variants`` synthetic versions of each (lesions from :func:`~MedSynthLib.tasks.lesion.insert_lesions`,
existing labels kept, the synthetic lesions under their own class id) and writes
them in the nnU-Net v2 raw layout with a MONAI datalist and a ``manifest.csv``
holding each output's provenance. See the README, "Build a training set".
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from ..errors import InputError
from ..progress import CancelToken, ProgressCallback
from ..reports import to_json
from ..tasks.lesion import LesionOptions
from ._inputs import Case, derive_seed, file_sha256, read_cases
from ._layout import (OUTPUT_FILES, check_output_dir, clear_partial, datalist_json, dataset_json, output_paths, read_manifest,
                      write_manifest, write_text_if_changed)
from ._options import COHORT_LESION, AugmentOptions
from ._run import DASK_MISSING, execute, require_dask
from ._work import OutputTask, region_is_name

__all__ = ["augment", "AugmentOptions", "AugmentResult", "LesionOptions", "COHORT_LESION", "Case", "read_cases",
           "derive_seed", "DASK_MISSING"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentResult:
    """What a run did: every manifest row (sorted), and how many outputs were written, kept or failed."""

    output_dir: Path
    rows: list[dict]
    written: int
    skipped: int
    failed: list[dict]
    #: The lesion task's warnings of the outputs made by this run, each prefixed with its case and variant.
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the end of a run."""
        return (f"{self.written} output(s) written, {self.skipped} already up to date, {len(self.failed)} failed; "
                f"dataset in {self.output_dir}")


def _default_lesion_label(cases: list[Case]) -> int:
    """One more than the largest id in the cases' label maps (nnU-Net wants consecutive ids), 1 without any."""
    from ..io import read_volume

    largest = 0
    for case in cases:
        if case.label:
            try:
                largest = max(largest, int(np.max(read_volume(case.label).array, initial=0)))
            except InputError:
                pass  # reported with the case itself
    return largest + 1


def _inputs_sha256(case: Case, source_sha256: str, config: Mapping) -> str:
    parts = [source_sha256, file_sha256(case.label) if case.label else None,
             case.region if case.region is None or region_is_name(case.region) else file_sha256(case.region),
             case.preset, config]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _up_to_date(row: Optional[Mapping], task: OutputTask, root: Path) -> bool:
    if not row or row.get("status") != "ok" or str(row.get("seed")) != str(task.seed):
        return False
    if row.get("inputs_sha256") != task.inputs_sha256:
        return False
    # every file of the case, the synthesised-voxel mask included (an output made before it existed is made again)
    return all(row.get(k) and file_sha256(root / row[k]) == row[f"{k}_sha256"] for k in OUTPUT_FILES)


def _plan(cases: list[Case], root: Path, options: AugmentOptions, config: Mapping) -> tuple[list[OutputTask], dict]:
    """Tasks still to do, and the rows of the outputs an earlier run already made (kept as they are)."""
    previous = read_manifest(root)
    carried = options.replace(scheduler=None)  # what every worker gets (a Dask client does not travel)
    rows = {key: row for key, row in previous.items() if row.get("status") == "ok"}  # earlier outputs stay
    tasks = []
    for case in cases:
        source = file_sha256(case.image)
        inputs = _inputs_sha256(case, source, config)
        for variant in range(1, options.variants + 1):
            task = OutputTask(case=case, variant=variant, seed=derive_seed(options.seed, source, variant),
                              root=str(root), options=carried, source_sha256=source, inputs_sha256=inputs)
            key = (case.name, variant)
            if not _up_to_date(previous.get(key), task, root):
                rows.pop(key, None)
                tasks.append(task)
    return tasks, rows


def _finish(root: Path, rows: dict, config: Mapping, options: AugmentOptions) -> None:
    write_manifest(root, rows)
    dataset = dataset_json(rows, name=root.name, config=config, lesion_label=options.lesion_label,
                           oedema_label=options.oedema_label)
    write_text_if_changed(root, root / "dataset.json", to_json(dataset, indent=2) + "\n")
    write_text_if_changed(root, root / "datalist.json", to_json(datalist_json(rows), indent=2) + "\n")
    clear_partial(root)


def _progress_sink(progress: Union[None, bool, ProgressCallback], total: int, initial: int):
    """(update(failed), close()) for a tqdm bar (``progress=True``), a callback, or nothing."""
    done = [initial]
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, desc="augment", unit="output", dynamic_ncols=True)

        def update(failed: int) -> None:
            bar.set_postfix_str(f"{failed} failed", refresh=False)
            bar.update(1)

        return update, bar.close

    def call(failed: int) -> None:
        done[0] += 1
        if callable(progress):
            progress(done[0] / max(1, total), f"{done[0]} of {total} outputs, {failed} failed")

    return call, lambda: None


def augment(source: Union[str, Path], output_dir: Union[str, Path], options: Optional[AugmentOptions] = None, /, *,
            progress: Union[None, bool, ProgressCallback] = None, cancel: Optional[CancelToken] = None,
            **knobs: Any) -> AugmentResult:
    """Write ``variants`` synthetic-lesion versions of every scan of ``source`` as a training set.

    Parameters
    ----------
    source : str or Path
        A folder of volumes, a glob pattern, or a CSV manifest ``image[,label][,region][,preset]``
        (relative paths from the manifest's folder; a header row naming the columns is optional; a
        region is a label map's path or a tissue name such as ``auto``).
    output_dir : str or Path
        Gets ``imagesTr/``, ``labelsTr/``, ``dataset.json`` (nnU-Net v2), ``datalist.json``
        (MONAI) and ``manifest.csv``. A folder holding another dataset is refused.
    options : AugmentOptions or mapping, optional
        The run, built once; keywords change it (``augment(src, out, variants=2)`` builds one).
    progress : bool or callback, optional
        ``True`` for a tqdm bar (outputs, failures, ETA), or a ``progress(fraction, message)`` callback.
    cancel : CancelToken, optional
        Stops between outputs; every output written so far is complete and in the manifest.
    **knobs
        Any field of :class:`AugmentOptions`:

        variants : int
            Synthetic versions per scan; each output's seed comes from ``(seed, source content, variant)``.
        seed : int
            The run's seed: the same seed gives the same bytes whatever the order, jobs or machine.
        lesion : LesionOptions or mapping
            The lesions (:class:`~MedSynthLib.tasks.lesion.LesionOptions`): preset (``"auto"``:
            :func:`~MedSynthLib.tasks.lesion.default_preset` of each scan's modality), count, size,
            contrast, region...; a mapping goes on top of :data:`COHORT_LESION`.
        lesion_label, oedema_label : int
            Class ids of the synthetic lesion and oedema; ``lesion_label`` unset: one more than the
            largest id in the sources' labels; ``oedema_label`` unset: oedema is not labelled.
        jobs : int
            Worker processes on this machine (each with its share of the cores).
        scheduler : str, dask.distributed.Client or a Dask cluster object
            Run on a Dask cluster (needs ``medsynth[distributed]``): a scheduler address, a client,
            or a cluster (``LocalCluster``, dask-jobqueue's ``SLURMCluster``...); the output folder
            must be on a file system the workers share.
        strict : bool
            Stop at the first failing case instead of recording it and going on.

    Returns
    -------
    AugmentResult

    Raises
    ------
    InputError
        Bad options, no inputs, an output folder holding another dataset, Dask missing or
        unreachable, or (``strict``) the first failing case.
    """
    options = AugmentOptions.build(options, **knobs)
    if options.scheduler is not None:
        require_dask()
    cases = read_cases(source)
    if options.lesion_label is None:
        options = options.replace(lesion_label=_default_lesion_label(cases))
    root = Path(output_dir)
    config = json.loads(json.dumps(options.fingerprint()))
    check_output_dir(root, config)
    root.mkdir(parents=True, exist_ok=True)
    tasks, rows = _plan(cases, root, options, config)
    total = len(cases) * options.variants
    update, close = _progress_sink(progress, total, total - len(tasks))
    failed: list[dict] = []
    warnings: list[str] = []

    def on_row(row: dict) -> None:
        rows[(row["case"], int(row["variant"]))] = row
        warnings.extend(f"{row['case']} variant {row['variant']}: {w}" for w in row.get("warnings") or ())
        if row["status"] != "ok":
            failed.append(row)
            name = f"{row['case']}_v{int(row['variant']):03d}"
            for stale in output_paths(root, name):  # an earlier run's output of it
                stale.unlink(missing_ok=True)
        write_manifest(root, rows)
        update(len(failed))
        if options.strict and row["status"] != "ok":
            raise InputError(f"{row['source']}: {row['error']} (stopped: --strict)")

    try:
        execute(tasks, jobs=options.jobs, scheduler=options.scheduler, on_row=on_row, cancel=cancel)
    finally:
        close()
        _finish(root, rows, config, options)
    ordered = [dict(rows[k]) for k in sorted(rows)]
    return AugmentResult(root, ordered, len(tasks) - len(failed), total - len(tasks), failed, warnings)
