"""Plausibility checks of a task's result, run before anything is written.

A damaged model, a numerical blow-up or a bug can produce a volume that looks
like a result: the right grid and dtype, but NaN voxels, values far outside
anything in the input, or a "restored" slice that is all zeros. Written to
disk, such a volume is silent damage. :func:`check_result` refuses it with a
:class:`~MedSynthLib.errors.ResultError` (an ``InputError``: exit 2 in the CLI)
whose one line says what was implausible, so nothing is written.

The checks are deliberately loose (they catch broken results, not imperfect
ones): every task may legitimately move intensities somewhat beyond the
input's range (cubic overshoot, bias correction brightening a shaded region,
a lesion brighter than its tissue), so the allowed range is the input's range
widened by ``margin`` times its span on both sides.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .errors import ResultError, check_number
from .volume import AXIS_NAMES, Volume

__all__ = ["check_result", "DEFAULT_MARGIN"]

#: Fraction of the input's intensity span a result may lie beyond the input's range.
DEFAULT_MARGIN = 0.5


def check_result(
    before: Volume,
    after: Volume,
    *,
    task: str,
    margin: float = DEFAULT_MARGIN,
    axis: Optional[int] = None,
    slices: Optional[Sequence[int]] = None,
) -> None:
    """Raise :class:`ResultError` when ``after`` is not a plausible result of ``task`` on ``before``.

    Parameters
    ----------
    before, after : Volume
        The task's input and result (grids may differ, e.g. after upsampling).
    task : str
        Name used in the message ("fill", "denoise", ...).
    margin : float
        How far beyond the input's range the result may go, as a fraction of
        the input's span (0.5: an input spanning 0-1000 allows -500 to 1500).
    axis, slices : optional
        For slice filling: the array axis and the restored slices. The input's
        range is then taken from the other (good) slices, and a restored slice
        that came out constant while its nearest good neighbours vary is refused.
    """
    margin = check_number(margin, "margin", low=0.0)
    result = after.array
    if result.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(result)))
        if bad:
            raise ResultError(f"{task} produced {bad:,} NaN or infinite voxel(s); nothing was written")
    low, high = _good_range(before.array, axis, slices)
    span = max(high - low, abs(high), 1e-6)
    allowed = (low - margin * span, high + margin * span)
    got_low, got_high = float(result.min()), float(result.max())
    if got_low < allowed[0] or got_high > allowed[1]:
        outside = int(np.count_nonzero((result < allowed[0]) | (result > allowed[1])))
        raise ResultError(
            f"{task} produced {outside:,} voxel(s) outside the plausible range {allowed[0]:.4g} to {allowed[1]:.4g} "
            f"(input {low:.4g} to {high:.4g}, result {got_low:.4g} to {got_high:.4g}); nothing was written"
        )
    if axis is not None and slices:
        _check_restored_slices(before.array, result, axis=axis, slices=slices, task=task)


def _good_range(array: np.ndarray, axis: Optional[int], slices: Optional[Sequence[int]]) -> tuple[float, float]:
    """Finite min and max of the input, over its good slices when restored ones are named."""
    if axis is not None and slices:
        keep = np.setdiff1d(np.arange(array.shape[axis]), np.asarray(list(slices), dtype=int))
        if keep.size:
            array = np.take(array, keep, axis=axis)
    values = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    if values.size == 0:
        return 0.0, 0.0
    return float(values.min()), float(values.max())


def _check_restored_slices(before: np.ndarray, after: np.ndarray, *, axis: int, slices: Sequence[int], task: str) -> None:
    """A restored slice must not be constant (e.g. all zeros) when the good slices beside it are not."""
    stack_before = np.moveaxis(before, axis, 0)
    stack_after = np.moveaxis(after, axis, 0)
    restored = set(int(s) for s in slices)
    good = [s for s in range(stack_before.shape[0]) if s not in restored]
    for index in sorted(restored):
        plane = stack_after[index]
        if plane.max() != plane.min() or not good:
            continue
        neighbours = sorted(good, key=lambda s: abs(s - index))[:2]
        if any(stack_before[n].max() != stack_before[n].min() for n in neighbours):
            raise ResultError(
                f"{task} restored slice {AXIS_NAMES[axis]}={index} as a constant {float(plane.flat[0]):g} while the "
                f"slices beside it ({', '.join(f'{AXIS_NAMES[axis]}={n}' for n in neighbours)}) hold an image; "
                "nothing was written"
            )
