"""Fill missing slices: find them, fill them, and upsample through-plane with the same machinery.

Three entry points, one implementation:

* :func:`find_missing_slices` lists blank and corrupted slices with a reason each.
* :func:`fill_slices` replaces the listed slices (every other voxel stays
  bit-identical); runs of consecutive missing slices (slabs) are filled at
  their fractional positions between the bounding good slices.
* :func:`upsample_slices` inserts new slices between the existing ones (by an
  integer factor or to a target spacing). Original slice ``i`` keeps its
  physical position (it becomes slice ``i * factor``), the new spacing is
  exact, and the new grid ends at the last original slice: nothing is
  extrapolated past it, so ``n`` slices become ``(n - 1) * factor + 1``.

Both filling and upsampling reduce to one problem (see ``_interp``): good
slices at known positions and target positions between them, answered by one
of the methods in :data:`METHODS`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from ...budget import TimeBudget
from ...checks import check_result
from ...errors import InputError
from ...progress import CancelToken, ProgressCallback, check_cancel, report, subrange
from ...volume import AXIS_NAMES, Volume, array_axis, validate_volume
from ._options import METHODS, FillOptions, UpsampleOptions, parse_slice_list
from ._job import Request as _Request, report_of as _report, run as _run, start_budget as _start_budget

__all__ = [
    "METHODS",
    "FillOptions",
    "UpsampleOptions",
    "FillResult",
    "find_missing_slices",
    "fill_slices",
    "upsample_slices",
]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FillResult:
    """The output of :func:`fill_slices` and :func:`upsample_slices`.

    Attributes
    ----------
    volume : Volume
        The filled (or upsampled) volume, in the input's dtype.
    slices : tuple of int
        Indices, along ``axis`` of the *output*, of the slices that were synthesised.
    axis : int
        Array axis the slices were filled along (0 = k, 1 = j, 2 = i).
    report : dict
        ``task``, ``operation``, ``method`` (what ran), ``method_requested``,
        ``device``, ``axis``, ``slices``, ``seconds``, ``warnings`` and
        method details; ``uncertainty`` (its calibration figures) when one was asked for.
    rewritten : tuple of int
        Output slices that hold acquired data rewritten (deblurred thick slices), not copied bit for bit.
    uncertainty : Volume or None
        With ``uncertainty=True``: float32 on the output grid, the standard deviation of each synthesised
        voxel in the volume's units (calibrated on held-out in-plane rows, ``_uncertainty``), 0 elsewhere.
    """

    volume: Volume
    slices: tuple[int, ...]
    axis: int
    report: dict = field(default_factory=dict)
    rewritten: tuple[int, ...] = ()
    uncertainty: Optional[Volume] = None

    @functools.cached_property
    def synthetic_mask(self) -> Volume:
        """uint8 on the output grid: 1 on the synthesised slices, 2 on rewritten acquired ones, 0 elsewhere
        (:mod:`~MedSynthLib.provenance`); made on first use, once."""
        from ...provenance import slice_provenance

        return slice_provenance(self.volume, axis=self.axis, synthesised=self.slices, rewritten=self.rewritten)


# ---- slice lists ---------------------------------------------------------------------------


def _check_slices(slices: Iterable[int], count: int, axis: int) -> list[int]:
    try:
        values = sorted({int(s) for s in slices})
    except (TypeError, ValueError):
        raise InputError(f"slices must be integer indices, got {slices!r}") from None
    bad = [s for s in values if s < 0 or s >= count]
    if bad:
        raise InputError(
            f"slices must be indices in [0, {count - 1}] along {AXIS_NAMES[axis]}, got {bad[:10]}"
        )
    if len(values) >= count:
        raise InputError(f"every slice along {AXIS_NAMES[axis]} is listed as missing; there is nothing to fill from")
    good = [s for s in range(count) if s not in set(values)]
    if len(good) < 2:
        raise InputError(f"only {len(good)} good slice(s) along {AXIS_NAMES[axis]}; filling needs at least 2")
    edge = [s for s in values if s < good[0] or s > good[-1]]
    if edge:
        raise InputError(
            f"slice(s) {edge[:10]} along {AXIS_NAMES[axis]} have no good slice on one side; "
            "only gaps with good slices on both sides can be filled (crop the volume to drop edge slices)"
        )
    return values


def _runs(values: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


# ---- public API ----------------------------------------------------------------------------


def fill_slices(
    volume: Volume,
    options: Optional[FillOptions] = None,
    /,
    *,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    **knobs: Any,
) -> FillResult:
    """Replace missing or corrupted slices; every other voxel stays bit-identical.

    Parameters
    ----------
    volume : Volume
        The scan. Not modified.
    options : FillOptions, optional
        Every knob below in one validated object (what the CLI, the Slicer panel and ``augment`` build);
        keyword arguments are the convenient form of the same object (``FillOptions.build(options, **knobs)``).
    slices : iterable of int, optional
        0-based indices along ``axis`` to replace. ``None`` runs
        :func:`find_missing_slices` first.
    axis : {"i", "j", "k", "auto"} or int, optional
        Slice axis (IJK name or array axis); ``None``/``"auto"`` is the axis
        with the largest spacing (k on an isotropic volume).
    method : str
        One of :data:`METHODS`. ``auto`` uses ``model`` when given; else ``selfsup``
        when enough training steps fit ``time_budget`` at the load measured now
        (and the slice grid is at most 1.5x coarser than the pixels); else the
        bundled model on thin slices with small gaps, else ``flow``. selfsup cut
        short by the budget without a held-out gain hands over to those. The
        report says which ran and why.
    model : str, Path or LoadedModel, optional
        A fill model package (``method="model"``).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    seed : int
        Seed of ``selfsup``'s training; CPU runs are deterministic for a seed.
    time_budget : float, optional
        Seconds the task may spend, checked on the clock while it runs: selfsup
        fits its training steps to it and stops at it with its best network so
        far. Default for ``auto``: 30 s + 1.5 s per synthesised slice on a CPU (at
        most 180 s), 600 s on a GPU; other methods: no limit. The report's
        ``time_budget`` gives the budget, the seconds spent and what was cut. CPU
        threads follow the cores idle when the task starts (never more than
        ``torch.get_num_threads()``); the report's ``threads`` says how many.
    method_options : dict, optional
        Per-method settings keyed by method name, e.g. ``{"selfsup": {"steps": 300}}`` or
        ``{"model": {"ddim_steps": 50}}`` for a diffusion package (see ``SELFSUP_DEFAULTS``,
        ``FLOW_DEFAULTS`` and ``MODEL_DEFAULTS``); recorded in the report.
    progress, cancel
        Progress callback and cancel token; cancelling leaves ``volume`` untouched.

    Returns
    -------
    FillResult

    Raises
    ------
    InputError
        Indices out of range, every slice missing, a gap without good slices on
        both sides, an unknown axis or method.

    Examples
    --------
    >>> import numpy as np
    >>> from MedSynthLib.volume import Volume
    >>> a = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 4, 4), np.float32)
    >>> a[2] = 0
    >>> result = fill_slices(Volume(a, np.eye(4)), slices=[2], method="linear")
    >>> float(result.volume.array[2, 0, 0]), result.slices
    (2.0, (2,))
    """
    start = time.perf_counter()
    options = FillOptions.build(options, **knobs)
    budget = _start_budget(options.time_budget)
    validate_volume(volume, min_slices=1)
    axis_index = array_axis(options.axis, volume)
    count = volume.array.shape[axis_index]
    slices, method = options.slices, options.method
    if count < 3:
        raise InputError(f"the volume has {count} slice(s) along {AXIS_NAMES[axis_index]}; filling needs at least 3")
    warnings: list[str] = []
    if slices is None:
        found = find_missing_slices(volume, axis=axis_index)
        slices = [index for index, _ in found]
        if not slices:
            warnings.append("no missing or corrupted slice was found; the volume is returned unchanged")
    values = _check_slices(slices, count, axis_index) if slices else []
    if not values:
        return FillResult(
            volume=volume.copy(), slices=(), axis=axis_index,
            report={"task": "fill", "operation": "fill", "method": "none", "method_requested": str(method),
                    "method_reason": "nothing to fill", "device": "cpu", "axis": AXIS_NAMES[axis_index],
                    "slices": [], "seconds": round(time.perf_counter() - start, 3), "warnings": warnings},
        )
    missing = set(values)
    good_index = np.array([s for s in range(count) if s not in missing])
    request = _Request(method=method, model=options.model, device=options.device, seed=options.seed,
                       options=options.method_options, budget=budget, uncertainty=options.uncertainty)
    restored, details, _, sigma = _run(
        volume, axis=axis_index, good_index=good_index, positions=good_index.astype(np.float64),
        targets=np.array(values, dtype=np.float64), request=request, progress=progress, cancel=cancel,
    )
    out = volume.array.copy()
    np.moveaxis(out, axis_index, 0)[values] = restored
    details["runs"] = [[a, b] for a, b in _runs(values)]
    report(progress, 1.0, "done")
    result_report = _report("fill", axis_index, values, details, time.perf_counter() - start, warnings)
    check_result(volume, volume.with_array(out), task=f"fill ({result_report['method']})", axis=axis_index, slices=values)
    uncertainty = None if sigma is None else _slices_volume(sigma, volume.ijk_to_ras, out.shape, axis_index, values)
    return FillResult(volume=volume.with_array(out), slices=tuple(values), axis=axis_index, report=result_report,
                      uncertainty=uncertainty)


def upsample_slices(
    volume: Volume,
    options: Optional[UpsampleOptions] = None,
    /,
    *,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    **knobs: Any,
) -> FillResult:
    """Insert slices through-plane: by an integer ``factor`` or to a target ``spacing`` (mm).

    Geometry: slice 0 keeps its position (the origin does not move), the slice
    axis's spacing becomes exactly ``spacing`` (or old spacing / ``factor``)
    with its direction unchanged, and the new grid ends at the last original
    slice or just before it: ``n`` slices become ``floor((n - 1) * old / new) + 1``
    (``(n - 1) * factor + 1`` for a factor). Every original slice that falls on
    the new grid (all of them for an integer factor, original ``i`` at new
    ``i * factor``) is copied bit for bit; the others are synthesised at their
    fractional positions.

    Parameters
    ----------
    volume : Volume
        The scan. Not modified.
    options : UpsampleOptions, optional
        Every knob below in one validated object; keyword arguments build the same object.
    factor : int, optional
        Integer factor in [2, 16]. Give ``factor`` or ``spacing``, not both (neither: 2).
    spacing : float, optional
        Target spacing in mm along the slice axis, smaller than the current one.
    axis, method, model, device, seed, time_budget, method_options, progress, cancel
        As in :func:`fill_slices`. ``selfsup`` with a non-integer ratio upsamples
        by the next integer factor and resamples that linearly to the target grid.
    slice_thickness : float, "auto" or None
        FWHM (mm) of the acquired slices' profile where the header says it;
        ``"auto"`` (default) estimates it from the data (through-plane against
        in-plane power spectra, ``_profile``); None treats the slices as sharp.
        Thick slices (a profile at least half the slice spacing) make ``selfsup``
        train SMORE-style: in-plane data blurred by the profile, learning to undo
        it, and (``method_options={"selfsup": {"deblur": True}}``, the default)
        rewrite the acquired slices deblurred too; the report's ``slice_profile``
        and ``selfsup.deblurred_acquired`` say so. Otherwise original slices are
        copied bit for bit.

    Returns
    -------
    FillResult
        ``slices`` lists the synthesised output slices.

    Examples
    --------
    >>> import numpy as np
    >>> from MedSynthLib.volume import Volume
    >>> v = Volume(np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 4, 4), np.float32), np.diag([1, 1, 4, 1]))
    >>> r = upsample_slices(v, factor=2, method="linear")
    >>> r.volume.array[:, 0, 0].tolist(), r.volume.spacing
    ([0.0, 0.5, 1.0, 1.5, 2.0], (1.0, 1.0, 2.0))
    """
    options = UpsampleOptions.build(options, **knobs)
    return _upsample(volume, options, _start_budget(options.time_budget), progress=progress, cancel=cancel)


def _upsample(volume: Volume, options: UpsampleOptions, budget: TimeBudget, *,
              progress: Optional[ProgressCallback], cancel: Optional[CancelToken]) -> FillResult:
    """:func:`upsample_slices` with its options built and its budget started (a non-integer selfsup reuses both)."""
    start = time.perf_counter()
    validate_volume(volume, min_slices=1)
    axis_index = array_axis(options.axis, volume)
    grid = _upsampled_grid(volume, axis_index, factor=options.factor, spacing=options.spacing)
    if not grid.integral and options.method == "selfsup":
        # Learned through-plane planes need integer gaps: go up by the next integer factor, then resample.
        step = int(math.ceil(grid.ratio - 1e-9))
        fine = _upsample(volume, options.replace(factor=step, spacing=None, axis=AXIS_NAMES[axis_index]), budget,
                         progress=subrange(progress, 0.0, 0.95), cancel=cancel)
        restored, details, sharpened, sigma = _resample_linearly(fine, grid, axis_index, step, seed=options.seed,
                                                                 cancel=cancel)
    else:
        request = _Request(method=options.method, model=options.model, device=options.device, seed=options.seed,
                           options=options.method_options, budget=budget, thickness=options.slice_thickness,
                           uncertainty=options.uncertainty)
        restored, details, sharpened, sigma = _run(
            volume, axis=axis_index, good_index=np.arange(grid.count), positions=grid.positions,
            targets=grid.targets, request=request, progress=progress, cancel=cancel,
        )
    check_cancel(cancel)
    out, matrix = _assemble(volume, grid, axis_index, restored, sharpened)
    details.update(factor=round(grid.ratio, 6), spacing_before=grid.old, spacing_after=grid.new,
                   slices_before=grid.count, slices_after=grid.n_new)
    report(progress, 1.0, "done")
    notes = [] if sharpened is None else [
        "the acquired slices were rewritten deblurred (thick slices: estimated slice profile "
        f"{details['slice_profile']['fwhm_mm']:g} mm); slice_thickness=None keeps them bit for bit"]
    target_index = grid.targets.astype(int)
    result_report = _report("upsample", axis_index, target_index.tolist(), details, time.perf_counter() - start, notes)
    check_result(volume, Volume(out, matrix), task=f"upsample ({result_report['method']})")
    uncertainty = None if sigma is None else _slices_volume(sigma, matrix, out.shape, axis_index, target_index)
    rewritten = () if sharpened is None else tuple(sorted(grid.original_at))
    return FillResult(volume=Volume(out, matrix), slices=tuple(target_index.tolist()), axis=axis_index,
                      report=result_report, rewritten=rewritten, uncertainty=uncertainty)


def _slices_volume(values: np.ndarray, matrix: np.ndarray, shape: tuple, axis: int, index) -> Volume:
    """float32 ``values`` (Q, H, W) at slices ``index`` along ``axis`` of a volume of ``shape``, 0 elsewhere."""
    out = np.zeros(shape, np.float32)
    if len(index):
        np.moveaxis(out, axis, 0)[index] = values
    return Volume(out, matrix.copy())


@dataclass(frozen=True)
class _Grid:
    """The upsampled grid along the slice axis: spacings, sizes, where the original slices land, the rest."""

    old: float
    new: float
    ratio: float
    count: int
    n_new: int
    positions: np.ndarray  # the original slices' positions on the new grid (new-slice units)
    original_at: dict  # new index -> original index, for the originals that fall on the grid
    targets: np.ndarray  # the new indices to synthesise
    integral: bool


def _upsampled_grid(volume: Volume, axis_index: int, *, factor, spacing) -> _Grid:
    """Validate ``factor`` / ``spacing`` and lay out the new grid (slice 0 stays where it is)."""
    count = volume.array.shape[axis_index]
    if count < 2:
        raise InputError(f"the volume has {count} slice(s) along {AXIS_NAMES[axis_index]}; upsampling needs at least 2")
    old = volume.spacing_along(axis_index)
    if (factor is None) == (spacing is None):
        raise InputError("give either a factor or a target spacing for upsampling (not both)")
    if factor is not None:
        if isinstance(factor, bool) or not float(factor).is_integer() or int(factor) < 2:
            raise InputError(f"factor must be an integer >= 2, got {factor!r} (use spacing for other ratios)")
        ratio = float(int(factor))
        new = old / ratio
    else:
        try:
            new = float(spacing)
        except (TypeError, ValueError):
            raise InputError(f"spacing must be a number of mm, got {spacing!r}") from None
        if not math.isfinite(new) or new <= 0:
            raise InputError(f"spacing must be a positive number of mm, got {spacing!r}")
        if new >= old * (1 - 1e-9):
            raise InputError(
                f"target spacing {new:g} mm is not smaller than the current {old:g} mm along "
                f"{AXIS_NAMES[axis_index]}; upsampling only adds slices"
            )
        ratio = old / new
    n_new = int(math.floor((count - 1) * ratio + 1e-6)) + 1
    if n_new * volume.array.size // count > 1024**3:
        raise InputError(f"upsampling to {n_new} slices would exceed MedSynth's size limit; choose a coarser spacing")
    positions = np.arange(count, dtype=np.float64) * ratio
    on_grid = np.abs(positions - np.round(positions)) < 1e-6
    original_at = {int(round(p)): i for i, p in enumerate(positions) if on_grid[i] and round(p) < n_new}
    targets = np.array([j for j in range(n_new) if j not in original_at], dtype=np.float64)
    return _Grid(old, new, ratio, count, n_new, positions, original_at, targets, bool(np.all(on_grid)))


def _resample_linearly(fine: FillResult, grid: _Grid, axis_index: int, step: int, *, seed: int,
                       cancel: Optional[CancelToken]):
    """The target slices of a non-integer ratio, linearly from an integer-factor upsampling ``fine``."""
    fine_stack = np.moveaxis(fine.volume.array, axis_index, 0)
    fine_positions = np.arange(fine_stack.shape[0], dtype=np.float64) * (grid.ratio / step)
    linear = _Request(method="linear", model=None, device="cpu", seed=seed, options=None, budget=TimeBudget(None))
    restored, _, _, _ = _run(
        fine.volume, axis=axis_index, good_index=np.arange(fine_stack.shape[0]), positions=fine_positions,
        targets=grid.targets, request=linear, progress=None, cancel=cancel,
    )
    details = dict(fine.report)
    details["warnings"] = list(details.get("warnings", [])) + [
        f"non-integer ratio {grid.ratio:.4g}: upsampled x{step} with {details['method']}, then resampled linearly"
    ]
    details.pop("slices", None)
    for key in ("task", "operation", "axis", "seconds", "factor", "spacing_before", "spacing_after"):
        details.pop(key, None)
    sigma = None
    if fine.uncertainty is not None:  # the fine grid's sd, resampled the same way (linear weights)
        sigma, _, _, _ = _run(
            fine.uncertainty, axis=axis_index, good_index=np.arange(fine_stack.shape[0]), positions=fine_positions,
            targets=grid.targets, request=linear, progress=None, cancel=cancel)
        sigma = sigma.astype(np.float32)
    return restored, details, None, sigma


def _assemble(volume: Volume, grid: _Grid, axis_index: int, restored: np.ndarray,
              sharpened: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The new array (originals where they fall, deblurred when ``sharpened``; synthesised slices elsewhere)
    and its IJK-to-RAS (the slice axis's column scaled, the origin kept)."""
    shape = list(volume.array.shape)
    shape[axis_index] = grid.n_new
    out = np.empty(shape, dtype=volume.array.dtype)
    out_stack = np.moveaxis(out, axis_index, 0)
    in_stack = np.moveaxis(volume.array, axis_index, 0)
    for j, i in grid.original_at.items():
        out_stack[j] = in_stack[i] if sharpened is None else sharpened[i]  # deblurred: thick slices, selfsup
    target_index = grid.targets.astype(int)
    if len(target_index):
        out_stack[target_index] = restored
    matrix = volume.ijk_to_ras.copy()
    column = 2 - axis_index
    matrix[:3, column] = matrix[:3, column] * (grid.new / grid.old)
    return out, matrix


def find_missing_slices(volume: Volume, *, axis: Union[int, str, None] = None) -> list[tuple[int, str]]:
    """Blank and corrupted slices along ``axis``, each with the reason it was flagged.

    See ``_detect`` for the tests applied (constant slices, and slices
    that disagree with the interpolation of their neighbours far more than the
    volume's other slices do).

    Returns
    -------
    list of (int, str)
        0-based slice index and reason, sorted by index.
    """
    from ._detect import detect

    validate_volume(volume, min_slices=1)
    axis_index = array_axis(axis, volume)
    return detect(np.moveaxis(volume.array, axis_index, 0), axis_name=AXIS_NAMES[axis_index])
