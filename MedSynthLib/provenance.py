"""Which voxels of an output were acquired, which were made: the synthesised-voxel mask of every edit.

An annotator who traces a boundary across a filled slab, or a radiologist who measures on an upsampled
slice, must be able to tell measured voxels from made ones. Every MedSynth task can give a label map on its
output grid (uint8) with one meaning per value, the same for all tasks:

====  ==============  =========================================================================================
0     acquired        measured by the scanner and unchanged (bit for bit where the dtype allows)
1     synthesised     no measurement exists there: filled slices, new slices of an upsampling
2     rewritten       measured, then changed: acquired slices deblurred by a thick-slice upsampling, denoised
                      or bias-corrected voxels, a lesion's region of influence (the lesion and every voxel
                      its rendering or mass effect moved)
====  ==============  =========================================================================================

The functions here build those maps from what a task knows (the slices it synthesised, or the voxels it
changed); they hold no task logic.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from .volume import Volume

__all__ = [
    "ACQUIRED", "SYNTHESISED", "REWRITTEN", "PROVENANCE_NAMES", "PROVENANCE_COLOURS",
    "slice_provenance", "changed_provenance", "combine_provenance", "provenance_summary",
]

ACQUIRED = 0
SYNTHESISED = 1
REWRITTEN = 2
#: Mask value -> name (the segment names in Slicer, the legend of the QC picture, the docs).
PROVENANCE_NAMES = {ACQUIRED: "acquired", SYNTHESISED: "synthesised", REWRITTEN: "rewritten"}
#: Mask value -> RGB in 0..1 for display (magenta: made; amber: changed); acquired is not drawn.
PROVENANCE_COLOURS = {SYNTHESISED: (0.95, 0.2, 0.85), REWRITTEN: (1.0, 0.7, 0.1)}


def slice_provenance(output: Volume, *, axis: int, synthesised: Iterable[int],
                     rewritten: Iterable[int] = ()) -> Volume:
    """The mask of a slice edit on ``output``'s grid: whole slices along array ``axis`` marked 1 or 2.

    ``synthesised``: output slices made from nothing (filled, new upsampled ones); ``rewritten``: acquired
    slices that were replaced by a processed version of themselves (deblurred thick slices).
    """
    mask = np.zeros(output.array.shape, np.uint8)
    stack = np.moveaxis(mask, axis, 0)
    rewritten = [int(s) for s in rewritten]
    if rewritten:
        stack[rewritten] = REWRITTEN
    synthesised = [int(s) for s in synthesised]
    if synthesised:
        stack[synthesised] = SYNTHESISED
    return Volume(mask, output.ijk_to_ras.copy())


def changed_provenance(before: Volume, after: Volume, *, where: Optional[np.ndarray] = None) -> Volume:
    """The mask of a voxel edit on the same grid: 2 where ``after`` differs from ``before`` (or, given,
    inside ``where``: the region the task rewrote, e.g. a lesion's region of influence), 0 elsewhere."""
    if before.array.shape != after.array.shape:
        raise ValueError(f"a voxel edit keeps the grid: {before.array.shape} against {after.array.shape}")
    changed = np.asarray(where, bool) if where is not None else np.asarray(before.array != after.array)
    return Volume(np.where(changed, REWRITTEN, ACQUIRED).astype(np.uint8), after.ijk_to_ras.copy())


def combine_provenance(earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """Two masks of successive edits on one grid as one: synthesised stays synthesised, then the larger value
    (a rewritten voxel of either edit is rewritten)."""
    combined = np.maximum(earlier, later)
    return np.where((earlier == SYNTHESISED) | (later == SYNTHESISED), SYNTHESISED, combined).astype(np.uint8)


def provenance_summary(mask: Volume) -> dict:
    """Voxel counts and volumes (mL) per mask value: what a report says of its mask."""
    counts = np.bincount(np.asarray(mask.array, np.uint8).ravel(), minlength=3)
    voxel_ml = float(np.prod(mask.spacing)) / 1000.0
    return {name: {"voxels": int(counts[value]), "ml": round(float(counts[value]) * voxel_ml, 3)}
            for value, name in PROVENANCE_NAMES.items()}
