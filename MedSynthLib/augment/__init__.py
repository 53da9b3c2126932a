"""Synthetic-lesion training sets from a cohort: ``medsynth augment`` in Python.

:func:`augment` reads a folder, a glob or a CSV manifest of scans, makes
``variants`` synthetic versions of each (lesions from :func:`~MedSynthLib.tasks.lesion.insert_lesions`,
existing labels kept, the synthetic lesions under their own class id) and writes
them in the nnU-Net v2 raw layout with a MONAI datalist and a ``manifest.csv``
holding each output's provenance. See the README, "Build a training set".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from ..errors import InputError, check_whole_number
from ..progress import CancelToken, ProgressCallback
from ._inputs import Case, derive_seed, file_sha256, read_cases
from ._layout import (check_output_dir, clear_partial, datalist_json, dataset_json, image_path, label_path, read_manifest,
                      write_manifest, write_text_if_changed)
from ._run import DASK_MISSING, execute, require_dask
from ._work import AUTO_PRESETS, LesionOptions, OutputTask

__all__ = ["augment", "AugmentResult", "LesionOptions", "Case", "read_cases", "derive_seed", "AUTO_PRESETS",
           "DASK_MISSING"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentResult:
    """What a run did: every manifest row (sorted), and how many outputs were written, kept or failed."""

    output_dir: Path
    rows: list[dict]
    written: int
    skipped: int
    failed: list[dict]

    def summary(self) -> str:
        """One line for the end of a run."""
        return (f"{self.written} output(s) written, {self.skipped} already up to date, {len(self.failed)} failed; "
                f"dataset in {self.output_dir}")


def _options(lesion: Union[LesionOptions, Mapping[str, Any], None]) -> LesionOptions:
    if isinstance(lesion, LesionOptions):
        return lesion
    names = {f.name for f in dataclasses.fields(LesionOptions)}
    unknown = sorted(set(lesion or {}) - names)
    if unknown:
        raise InputError(f"unknown lesion option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return LesionOptions(**dict(lesion or {}))


def _check(options: LesionOptions, variants: int, jobs: int) -> None:
    from ..tasks.lesion import PRESETS

    check_whole_number(variants, "variants", low=1, high=10000)
    check_whole_number(jobs, "jobs", low=1, high=1024)
    check_whole_number(options.count, "count", low=1, high=1000)
    if options.preset not in (None, "auto") and options.preset not in PRESETS:
        raise InputError(f"unknown preset {options.preset!r}; choose auto or one of {', '.join(PRESETS)}")
    for name in ("lesion_label", "oedema_label"):
        value = getattr(options, name)
        if value is not None:
            check_whole_number(value, name, low=1, high=65535)
    if options.oedema_label is not None and options.oedema_label == options.lesion_label:
        raise InputError("the oedema label must differ from the lesion label")


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
             case.region if case.region in (None, "auto") else file_sha256(case.region), case.preset, config]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _up_to_date(row: Optional[Mapping], task: OutputTask, root: Path) -> bool:
    if not row or row.get("status") != "ok" or str(row.get("seed")) != str(task.seed):
        return False
    if row.get("inputs_sha256") != task.inputs_sha256:
        return False
    return all(file_sha256(root / row[k]) == row[f"{k}_sha256"] for k in ("image", "label") if row.get(k))


def _plan(cases: list[Case], root: Path, seed: int, variants: int, options: LesionOptions,
          config: Mapping) -> tuple[list[OutputTask], dict]:
    """Tasks still to do, and the rows of the outputs an earlier run already made (kept as they are)."""
    previous = read_manifest(root)
    rows = {key: row for key, row in previous.items() if row.get("status") == "ok"}  # earlier outputs stay
    tasks = []
    for case in cases:
        source = file_sha256(case.image)
        inputs = _inputs_sha256(case, source, config)
        for variant in range(1, variants + 1):
            task = OutputTask(case=case, variant=variant, seed=derive_seed(seed, source, variant), root=str(root),
                              options=options, source_sha256=source, inputs_sha256=inputs)
            key = (case.name, variant)
            if not _up_to_date(previous.get(key), task, root):
                rows.pop(key, None)
                tasks.append(task)
    return tasks, rows


def _finish(root: Path, rows: dict, config: Mapping, options: LesionOptions) -> None:
    write_manifest(root, rows)
    dataset = dataset_json(rows, name=root.name, config=config, lesion_label=options.lesion_label,
                           oedema_label=options.oedema_label)
    write_text_if_changed(root, root / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    write_text_if_changed(root, root / "datalist.json", json.dumps(datalist_json(rows), indent=2) + "\n")
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


def augment(source: Union[str, Path], output_dir: Union[str, Path], *, variants: int = 1, seed: int = 0,
            lesion: Union[LesionOptions, Mapping[str, Any], None] = None, jobs: int = 1, scheduler: Any = None,
            strict: bool = False, progress: Union[None, bool, ProgressCallback] = None,
            cancel: Optional[CancelToken] = None) -> AugmentResult:
    """Write ``variants`` synthetic-lesion versions of every scan of ``source`` as a training set.

    Parameters
    ----------
    source : str or Path
        A folder of volumes, a glob pattern, or a CSV manifest ``image[,label][,region][,preset]``
        (relative paths from the manifest's folder; a header row naming the columns is optional).
    output_dir : str or Path
        Gets ``imagesTr/``, ``labelsTr/``, ``dataset.json`` (nnU-Net v2), ``datalist.json``
        (MONAI) and ``manifest.csv``. A folder holding another dataset is refused.
    variants : int
        Synthetic versions per scan; each output's seed comes from ``(seed, source content, variant)``.
    seed : int
        The run's seed: the same seed gives the same bytes whatever the order, jobs or machine.
    lesion : LesionOptions or mapping, optional
        Preset (``"auto"``: by modality), count, size, contrast, region, label ids...
        ``lesion_label=None`` picks one more than the largest id in the sources' labels.
    jobs : int
        Worker processes on this machine (each with its share of the cores).
    scheduler : str, dask.distributed.Client or a Dask cluster object, optional
        Run on a Dask cluster (needs ``medsynth[distributed]``): a scheduler address, a client,
        or a cluster (``LocalCluster``, dask-jobqueue's ``SLURMCluster``...); the output folder
        must be on a file system the workers share.
    strict : bool
        Stop at the first failing case instead of recording it and going on.
    progress : bool or callback, optional
        ``True`` for a tqdm bar (outputs, failures, ETA), or a ``progress(fraction, message)`` callback.
    cancel : CancelToken, optional
        Stops between outputs; every output written so far is complete and in the manifest.

    Returns
    -------
    AugmentResult

    Raises
    ------
    InputError
        Bad options, no inputs, an output folder holding another dataset, Dask missing or
        unreachable, or (``strict``) the first failing case.
    """
    options = _options(lesion)
    _check(options, variants, jobs)
    if scheduler is not None:
        require_dask()
    cases = read_cases(source)
    if options.lesion_label is None:
        options = dataclasses.replace(options, lesion_label=_default_lesion_label(cases))
    root = Path(output_dir)
    config = json.loads(json.dumps(options.fingerprint(seed)))
    check_output_dir(root, config)
    root.mkdir(parents=True, exist_ok=True)
    tasks, rows = _plan(cases, root, seed, variants, options, config)
    total = len(cases) * variants
    update, close = _progress_sink(progress, total, total - len(tasks))
    failed: list[dict] = []

    def on_row(row: dict) -> None:
        rows[(row["case"], int(row["variant"]))] = row
        if row["status"] != "ok":
            failed.append(row)
            name = f"{row['case']}_v{int(row['variant']):03d}"
            for stale in (image_path(root, name), label_path(root, name)):  # an earlier run's output of it
                stale.unlink(missing_ok=True)
        write_manifest(root, rows)
        update(len(failed))
        if strict and row["status"] != "ok":
            raise InputError(f"{row['source']}: {row['error']} (stopped: --strict)")

    try:
        execute(tasks, jobs=jobs, scheduler=scheduler, on_row=on_row, cancel=cancel)
    finally:
        close()
        _finish(root, rows, config, options)
    ordered = [dict(rows[k]) for k in sorted(rows)]
    return AugmentResult(root, ordered, len(tasks) - len(failed), total - len(tasks), failed)
