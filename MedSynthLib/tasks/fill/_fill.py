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

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ...checks import check_result
from ...errors import InputError
from ...intensity import restore_dtype, robust_scale
from ...progress import CancelToken, ProgressCallback, check_cancel, report, subrange
from ...volume import AXIS_NAMES, Volume, array_axis, validate_volume
from ...network_inputs.fill import FILL_PERCENTILES
from ._interp import FillPlan, cubic_fill, linear_fill, make_plan

__all__ = [
    "METHODS",
    "FillResult",
    "find_missing_slices",
    "fill_slices",
    "upsample_slices",
    "parse_slice_list",
]

log = logging.getLogger(__name__)

#: Fill methods; ``auto`` picks one by device and time budget and the report says which ran.
METHODS = ("auto", "linear", "cubic", "flow", "selfsup", "model")

#: ``auto`` does not use selfsup when the output slice grid is this many times coarser than the in-plane
#: pixels: rows removed in-plane then do not resemble the missing thick slices (measured on lung1 CT).
MAX_SELFSUP_ANISOTROPY = 1.5

#: Default time budget (seconds) of ``auto`` on a CPU.
AUTO_CPU_BUDGET_S = 180.0


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
        method details.
    """

    volume: Volume
    slices: tuple[int, ...]
    axis: int
    report: dict = field(default_factory=dict)


# ---- slice lists ---------------------------------------------------------------------------


def parse_slice_list(text: str) -> list[int]:
    """Parse ``"3,7,10-12"`` into ``[3, 7, 10, 11, 12]`` (0-based, ranges inclusive).

    Raises
    ------
    InputError
        A piece that is not an integer or a range ``a-b`` with ``a <= b``.
    """
    indices: list[int] = []
    for piece in str(text).replace(" ", "").split(","):
        if not piece:
            continue
        cut = piece.find("-", 1)
        try:
            first, last = (int(piece), int(piece)) if cut < 0 else (int(piece[:cut]), int(piece[cut + 1:]))
        except ValueError:
            raise InputError(f"slices must be 0-based indices or ranges like 3,7,10-12, got {piece!r}") from None
        if last < first:
            raise InputError(f"slice range {piece!r} runs backwards; write it as {last}-{first}")
        indices.extend(range(first, last + 1))
    if not indices:
        raise InputError(f"no slice index found in {text!r}")
    return indices


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


# ---- the shared engine ---------------------------------------------------------------------


def _resolve_method(
    method: str,
    *,
    good: np.ndarray,
    plan: FillPlan,
    model,
    device: str,
    time_budget: Optional[float],
    options: Optional[dict] = None,
    anisotropy: float = 1.0,
) -> tuple[str, str]:
    """(method to run, why) for ``method``; ``auto`` decides by device, size and budget."""
    name = str(method).lower()
    if name not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if name == "model" and model is None and _bundled_model() is None:
        raise InputError("method 'model' needs a model package (--model PACKAGE.json); no bundled fill model is installed")
    if model is not None and name not in ("model", "auto"):
        raise InputError(f"a model package was given but method is {name!r}; use method 'model' or 'auto'")
    if name != "auto":
        return name, "requested"
    if model is not None:
        return "model", "a model package was given"
    from ...engine import select_device
    from . import _selfsup

    target = select_device(device)
    budget = time_budget if time_budget is not None else (AUTO_CPU_BUDGET_S if target.type == "cpu" else 600.0)
    if not _selfsup.can_train(good, plan):
        return _fast_method(plan, anisotropy, "too few or too small slices to train selfsup")
    if anisotropy > MAX_SELFSUP_ANISOTROPY:
        return "flow", (
            f"the slice grid is {anisotropy:.1f}x coarser than the in-plane pixels: flow is as good in seconds "
            "(lung1 CT, 5 mm slices: thick-slice selfsup +1.6 dB at x2 and +1.3 dB on single slices in minutes, "
            "flow +1.5 and +2.0 dB)"
        )
    estimate = _selfsup.estimate_seconds(good, plan, device=target, settings=options)
    if estimate <= budget:
        return "selfsup", f"selfsup estimated at {estimate:.0f} s on {target}, within the {budget:.0f} s budget"
    return _fast_method(plan, anisotropy, f"selfsup estimated at {estimate:.0f} s on {target}, over the {budget:.0f} s budget")


def _bundled_model():
    """The shipped ``fill_default`` package's path, or None where it is not installed."""
    from ...models import bundled_package

    return bundled_package("fill")


def _fast_method(plan: FillPlan, anisotropy: float, why: str) -> tuple[str, str]:
    """What ``auto`` runs when selfsup does not: the bundled model on thin slices with integer gaps, else flow.

    The bundled ``fill_default`` (never trained on ROBEX) beat flow on ROBEX in every scenario (x2 +0.61
    against +0.33 dB, x4 +0.21 against -0.52, single +0.86 against +0.62, slabs +0.58 against -0.32) in
    under a second; on thick CT slices (lung1) flow stays ahead, so those keep flow.
    """
    from ...models.package import read_package_info

    path = _bundled_model()
    if anisotropy <= MAX_SELFSUP_ANISOTROPY and plan.integral and path is not None:
        trained = read_package_info(path).metadata.get("training", {}).get("config", {}).get("task_options", {})
        widest = float(np.max(plan.gaps))
        if widest <= float(trained.get("max_gap", 4)):  # gaps it was trained on, no wider
            return "model", f"{why}; the bundled fill model beats flow on thin slices (ROBEX x2 +0.6 against +0.3 dB)"
    return "flow", f"{why}; flow needs no training"


def _synthesise(
    good: np.ndarray,
    plan: FillPlan,
    *,
    method: str,
    model,
    device: str,
    seed: int,
    options: Optional[dict],
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelToken],
    details: dict,
    grid_ratio: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Answer ``plan`` from the normalised ``good`` slices (G, H, W) with ``method``; (Q, H, W) float32."""
    if method == "linear":
        return linear_fill(good, plan)
    if method == "cubic":
        return cubic_fill(good, plan)
    if method == "flow":
        from ._flow import flow_fill

        return flow_fill(good, plan, device=device, settings=options, progress=progress, cancel=cancel, details=details)
    if method == "selfsup":
        from ._selfsup import selfsup_fill

        return selfsup_fill(
            good, plan, device=device, seed=seed, settings=options, progress=progress, cancel=cancel, details=details,
            grid_ratio=grid_ratio,
        )
    if method == "model":
        from ._model import model_fill

        return model_fill(good, plan, model=model, device=device, seed=seed, settings=options, progress=progress,
                          cancel=cancel, details=details)
    raise InputError(f"unknown fill method {method!r}")  # pragma: no cover - _resolve_method checks first


def _run(
    volume: Volume,
    *,
    axis: int,
    good_index: np.ndarray,
    positions: np.ndarray,
    targets: np.ndarray,
    method: str,
    model,
    device: str,
    seed: int,
    time_budget: Optional[float],
    options: Optional[dict],
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelToken],
) -> tuple[np.ndarray, dict]:
    """Synthesised slices (Q, H, W) in the input's dtype, and the report details."""
    check_cancel(cancel)
    stack = np.moveaxis(volume.array, axis, 0)
    good_raw = stack[good_index]
    scale = robust_scale(good_raw, percentiles=FILL_PERCENTILES)
    good = scale.forward(good_raw)
    plan = make_plan(positions, targets)
    # Output-grid step along the axis (upsampling refines it) against the finest in-plane spacing.
    span = float(good_index[-1] - good_index[0]) / float(positions[-1] - positions[0]) if len(good_index) > 1 else 1.0
    in_plane = min(volume.spacing_along(a) for a in range(3) if a != axis)
    step_mm = volume.spacing_along(axis) * span
    anisotropy = step_mm / in_plane
    # the grid step in pixels of the stack's H and W axes (selfsup's thick-slice training pairs)
    grid_ratio = tuple(step_mm / volume.spacing_along(a) for a in range(3) if a != axis)
    chosen, why = _resolve_method(method, good=good, plan=plan, model=model, device=device, time_budget=time_budget,
                                  options=(options or {}).get("selfsup"), anisotropy=anisotropy)
    if chosen == "model" and model is None:  # method "model" without a package, or auto's pick on thin slices
        model = _bundled_model()
    details: dict = {"method": chosen, "method_requested": str(method).lower(), "method_reason": why}
    report(progress, 0.02, f"filling {len(targets)} slice(s) with {chosen}")
    values = _synthesise(
        good, plan, method=chosen, model=model, device=device, seed=seed,
        options=(options or {}).get(chosen), progress=subrange(progress, 0.02, 0.98), cancel=cancel, details=details,
        grid_ratio=grid_ratio,
    )
    check_cancel(cancel)
    low, high = float(good_raw.min()), float(good_raw.max())
    restored = restore_dtype(scale.inverse(values), volume.array.dtype, clip=(low, high))
    details.setdefault("device", "cpu")
    return restored, details


def _report(operation: str, axis: int, slices: Sequence[int], details: dict, seconds: float, warnings: list) -> dict:
    out = {
        "task": "fill",
        "operation": operation,
        "method": details.pop("method"),
        "method_requested": details.pop("method_requested"),
        "method_reason": details.pop("method_reason"),
        "device": details.pop("device"),
        "axis": AXIS_NAMES[axis],
        "slices": [int(s) for s in slices],
        "seconds": round(seconds, 3),
        "warnings": list(warnings) + list(details.pop("warnings", [])),
    }
    out.update(details)
    return out


# ---- public API ----------------------------------------------------------------------------


def fill_slices(
    volume: Volume,
    *,
    slices: Optional[Iterable[int]] = None,
    axis: Union[int, str, None] = None,
    method: str = "auto",
    model=None,
    device: str = "auto",
    seed: int = 0,
    time_budget: Optional[float] = None,
    method_options: Optional[dict] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> FillResult:
    """Replace missing or corrupted slices; every other voxel stays bit-identical.

    Parameters
    ----------
    volume : Volume
        The scan. Not modified.
    slices : iterable of int, optional
        0-based indices along ``axis`` to replace. ``None`` runs
        :func:`find_missing_slices` first.
    axis : {"i", "j", "k", "auto"} or int, optional
        Slice axis (IJK name or array axis); ``None``/``"auto"`` is the axis
        with the largest spacing (k on an isotropic volume).
    method : str
        One of :data:`METHODS`. ``auto`` uses ``model`` when given; else
        ``flow`` when at most 10 % of the slices are missing (isolated gaps,
        where flow measured best); else ``selfsup`` when its estimated time fits
        ``time_budget`` on the chosen device, else ``flow``. The report says
        which ran and why.
    model : str, Path or LoadedModel, optional
        A fill model package (``method="model"``).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    seed : int
        Seed of ``selfsup``'s training; CPU runs are deterministic for a seed.
    time_budget : float, optional
        Seconds ``auto`` may spend (default 180 on a CPU).
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
    validate_volume(volume, min_slices=1)
    axis_index = array_axis(axis, volume)
    count = volume.array.shape[axis_index]
    if count < 3:
        raise InputError(f"the volume has {count} slice(s) along {AXIS_NAMES[axis_index]}; filling needs at least 3")
    warnings: list[str] = []
    if slices is not None:
        slices = list(slices)
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
    restored, details = _run(
        volume, axis=axis_index, good_index=good_index, positions=good_index.astype(np.float64),
        targets=np.array(values, dtype=np.float64), method=method, model=model, device=device, seed=seed,
        time_budget=time_budget, options=method_options, progress=progress, cancel=cancel,
    )
    out = volume.array.copy()
    np.moveaxis(out, axis_index, 0)[values] = restored
    details["runs"] = [[a, b] for a, b in _runs(values)]
    report(progress, 1.0, "done")
    result_report = _report("fill", axis_index, values, details, time.perf_counter() - start, warnings)
    check_result(volume, volume.with_array(out), task=f"fill ({result_report['method']})", axis=axis_index, slices=values)
    return FillResult(volume=volume.with_array(out), slices=tuple(values), axis=axis_index, report=result_report)


def upsample_slices(
    volume: Volume,
    *,
    factor: Optional[int] = None,
    spacing: Optional[float] = None,
    axis: Union[int, str, None] = None,
    method: str = "auto",
    model=None,
    device: str = "auto",
    seed: int = 0,
    time_budget: Optional[float] = None,
    method_options: Optional[dict] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
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
    factor : int, optional
        Integer factor >= 2. Give ``factor`` or ``spacing``, not both.
    spacing : float, optional
        Target spacing in mm along the slice axis, smaller than the current one.
    axis, method, model, device, seed, time_budget, method_options, progress, cancel
        As in :func:`fill_slices`. ``selfsup`` with a non-integer ratio upsamples
        by the next integer factor and resamples that linearly to the target grid.

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
    start = time.perf_counter()
    validate_volume(volume, min_slices=1)
    axis_index = array_axis(axis, volume)
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
    integral = bool(np.all(on_grid))
    method_name = str(method).lower()
    two_stage = not integral and method_name in ("selfsup",)
    if two_stage:
        # Learned through-plane planes need integer gaps: go up by the next integer factor, then resample.
        step = int(math.ceil(ratio - 1e-9))
        fine = upsample_slices(
            volume, factor=step, axis=axis_index, method=method, model=model, device=device, seed=seed,
            time_budget=time_budget, method_options=method_options, progress=subrange(progress, 0.0, 0.95),
            cancel=cancel,
        )
        fine_stack = np.moveaxis(fine.volume.array, axis_index, 0)
        fine_positions = np.arange(fine_stack.shape[0], dtype=np.float64) * (ratio / step)
        restored, _ = _run(
            fine.volume, axis=axis_index, good_index=np.arange(fine_stack.shape[0]), positions=fine_positions,
            targets=targets, method="linear", model=None, device="cpu", seed=seed, time_budget=None,
            options=None, progress=None, cancel=cancel,
        )
        details = dict(fine.report)
        details["warnings"] = list(details.get("warnings", [])) + [
            f"non-integer ratio {ratio:.4g}: upsampled x{step} with {details['method']}, then resampled linearly"
        ]
        details.pop("slices", None)
        for key in ("task", "operation", "axis", "seconds", "factor", "spacing_before", "spacing_after"):
            details.pop(key, None)
    else:
        restored, details = _run(
            volume, axis=axis_index, good_index=np.arange(count), positions=positions, targets=targets,
            method=method, model=model, device=device, seed=seed, time_budget=time_budget,
            options=method_options, progress=progress, cancel=cancel,
        )
    check_cancel(cancel)
    shape = list(volume.array.shape)
    shape[axis_index] = n_new
    out = np.empty(shape, dtype=volume.array.dtype)
    out_stack = np.moveaxis(out, axis_index, 0)
    in_stack = np.moveaxis(volume.array, axis_index, 0)
    for j, i in original_at.items():
        out_stack[j] = in_stack[i]
    target_index = targets.astype(int)
    if len(target_index):
        out_stack[target_index] = restored
    matrix = volume.ijk_to_ras.copy()
    column = 2 - axis_index
    matrix[:3, column] = matrix[:3, column] * (new / old)
    details["factor"] = round(ratio, 6)
    details["spacing_before"] = old
    details["spacing_after"] = new
    details["slices_before"] = count
    details["slices_after"] = n_new
    report(progress, 1.0, "done")
    result_report = _report("upsample", axis_index, target_index.tolist(), details, time.perf_counter() - start, [])
    check_result(volume, Volume(out, matrix), task=f"upsample ({result_report['method']})")
    return FillResult(volume=Volume(out, matrix), slices=tuple(target_index.tolist()), axis=axis_index, report=result_report)


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
