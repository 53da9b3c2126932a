"""The options of :func:`fill_slices` and :func:`upsample_slices`: every knob, its default, range and choices.

Torch-free on purpose: the Slicer panel and the CLI read the method list and ranges from here before the heavy
libraries load (``from MedSynthLib.tasks.fill import FillOptions`` imports only this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ...errors import InputError, check_number
from ...options import TaskOptions, budget_knob, device_knob, knob, seed_knob
from ...volume import AXIS_NAMES

__all__ = ["METHODS", "AXES", "FillOptions", "UpsampleOptions", "parse_slice_list"]

#: Fill and upsample methods; ``auto`` picks among the others and says why in the report.
METHODS = ("auto", "linear", "cubic", "spline", "flow", "selfsup", "model")
#: Slice axes as the user names them; ``auto`` is the axis with the largest spacing.
AXES = ("auto", "k", "j", "i")

_METHOD_HELP = ("linear/cubic/spline: instant baselines (spline: cubic spline through all good slices, best of them "
                "on thick slices); flow: registration, seconds; selfsup: trains a small network on this volume, best "
                "quality, minutes on a CPU; model: a trained package; auto: selfsup when enough training fits the "
                "time budget at the current load (SMORE-style on thick slices), else the spline when upsampling, "
                "the bundled model or flow; the report says which ran and why")
_BUDGET_HELP = ("seconds the task may spend, checked on the clock while it runs: selfsup fits its training to it and "
                "stops with its best result so far (automatic for auto: 30 s + 1.5 s per synthesised slice on a CPU, "
                "at most 180, 600 on a GPU; other methods: no limit); the report gives the budget, the time spent "
                "and what was cut")
_UNCERTAINTY_HELP = ("also give a per-voxel standard deviation of the synthesised voxels (the volume's units, 0 on "
                     "acquired voxels), calibrated on held-out in-plane rows of this volume; costs one more run of "
                     "the method on those rows")


def _axis_name(axis: Any) -> Any:
    """An array axis (0 = k, 1 = j, 2 = i) as its IJK name; names and None pass through."""
    if isinstance(axis, bool):
        raise InputError(f"axis must be one of {', '.join(AXES)} (or array axis 0-2), got {axis!r}")
    if isinstance(axis, int):
        if axis not in (0, 1, 2):
            raise InputError(f"array axis must be 0, 1 or 2, got {axis}")
        return AXIS_NAMES[axis]
    return "auto" if axis is None else axis


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


@dataclass(frozen=True)
class _SliceOptions(TaskOptions):
    """What fill and upsample share: the axis, the method and how it runs."""

    axis: str = knob("auto", choices=AXES, help="slice axis (IJK); auto: the axis with the largest spacing")
    method: str = knob("auto", choices=METHODS, help=_METHOD_HELP)
    time_budget: Optional[float] = budget_knob(_BUDGET_HELP)
    device: str = device_knob()
    seed: int = seed_knob()
    uncertainty: bool = knob(False, help=_UNCERTAINTY_HELP)
    #: A fill model package: a path, an installed name resolved by the caller, or a loaded package.
    model: Any = None
    #: Per-method settings keyed by method name, e.g. ``{"selfsup": {"steps": 300}}``; recorded in the report.
    method_options: Optional[dict] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", _axis_name(self.axis))
        super().__post_init__()
        if not isinstance(self.uncertainty, bool):
            raise InputError(f"uncertainty must be True or False, got {self.uncertainty!r}")
        if self.method_options is not None and not isinstance(self.method_options, dict):
            raise InputError(f"method_options must be a dict keyed by method name, got {self.method_options!r}")


@dataclass(frozen=True)
class FillOptions(_SliceOptions):
    """Options of :func:`~MedSynthLib.tasks.fill.fill_slices`.

    Examples
    --------
    >>> FillOptions(slices=[4, 3], method="Linear")
    FillOptions(axis='auto', method='linear', time_budget=None, device='auto', seed=0, uncertainty=False, model=None, method_options=None, slices=(3, 4))
    """

    #: 0-based indices along ``axis`` to replace; None: detect the missing slices first.
    slices: Optional[tuple[int, ...]] = field(default=None)

    def _check(self) -> None:
        if self.slices is None:
            return
        try:
            values = tuple(sorted({int(s) for s in self.slices}))
        except (TypeError, ValueError):
            raise InputError(f"slices must be integer indices, got {self.slices!r}") from None
        object.__setattr__(self, "slices", values)


@dataclass(frozen=True)
class UpsampleOptions(_SliceOptions):
    """Options of :func:`~MedSynthLib.tasks.fill.upsample_slices`: a ``factor`` or a target ``spacing``.

    Examples
    --------
    >>> UpsampleOptions(factor=3).factor
    3
    >>> UpsampleOptions(factor=2, spacing=1.0)
    Traceback (most recent call last):
    ...
    MedSynthLib.errors.InputError: give either a factor or a target spacing for upsampling (not both)
    """

    factor: Optional[int] = knob(None, low=2, high=16, optional=True,
                                 help="integer factor through-plane: n slices become (n-1)*factor+1, the spacing is divided by it")
    spacing: Optional[float] = knob(None, low=0.0, low_open=True, optional=True,
                                    help="target spacing (mm) along the slice axis, instead of a factor")
    #: FWHM (mm) of the acquired slices' profile; "auto" estimates it from the data; None: sharp slices.
    slice_thickness: Union[float, str, None] = "auto"

    def _check(self) -> None:
        if (self.factor is None) == (self.spacing is None):
            if self.factor is None:
                object.__setattr__(self, "factor", 2)  # neither given: the default factor
            else:
                raise InputError("give either a factor or a target spacing for upsampling (not both)")
        if self.slice_thickness not in (None, "auto"):
            object.__setattr__(self, "slice_thickness",
                               check_number(self.slice_thickness, "slice thickness (mm)", low=0.0))
