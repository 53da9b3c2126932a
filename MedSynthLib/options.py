"""One frozen options object per task: every knob with its default, range, choices and help, checked once.

A task's options are a frozen dataclass deriving from :class:`TaskOptions`; each field is declared with
:func:`knob`, which records what a front end needs to offer it (choices, range, help text). The object is
validated where it is built (``__post_init__``), so the CLI's parser, the Slicer panel, ``MedSynthLogic.process``,
``augment`` and the MONAI transform hand the *same* object to the task function and get the same refusal for
the same value. The panel reads its combo boxes and spin-box ranges from :meth:`TaskOptions.knobs` instead of
copying them, and the CLI builds its flags' choices from them.

This module is core: it imports no task, no torch, no Slicer, so a front end can list choices before the heavy
libraries are installed.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo(TaskOptions):
...     method: str = knob("auto", choices=("auto", "linear"), help="how")
...     factor: int = knob(2, low=2, high=8, help="how many")
>>> Demo(method="LINEAR").method
'linear'
>>> Demo.build(factor=3).as_dict()
{'method': 'auto', 'factor': 3}
>>> Demo.build(speed=1)
Traceback (most recent call last):
...
MedSynthLib.errors.InputError: unknown option 'speed'; the options are method, factor
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, Sequence, TypeVar

from .errors import InputError, check_number

__all__ = ["Knob", "TaskOptions", "knob", "seed_knob", "device_knob", "budget_knob", "MAX_SEED", "MAX_BUDGET_S",
           "DEVICE_HELP", "SEED_HELP", "MODEL_HELP", "BUDGET_HELP"]

T = TypeVar("T", bound="TaskOptions")

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps; a named device that is absent is an error, never a silent CPU run"
SEED_HELP = "seed of everything random (placement, training); CPU runs are deterministic for a seed"
MODEL_HELP = "a model package (.json path or installed name); auto: the best available, or none"
BUDGET_HELP = "seconds the task may spend, checked on the clock while it runs; unset: the task's automatic budget"
#: The seeds every task accepts (the largest a 32-bit signed generator seed takes).
MAX_SEED = 2**31 - 1
#: The longest time budget a task accepts: a day.
MAX_BUDGET_S = 86400.0


@dataclass(frozen=True)
class Knob:
    """One option as a front end offers it.

    Attributes
    ----------
    name : str
        The library's keyword (``time_budget``); the CLI flag is ``--time-budget``.
    default : Any
        The value when the option is not given.
    help : str
        One line for the CLI's ``--help`` and the panel's tooltip.
    choices : tuple of str, optional
        The accepted words (case-insensitive; stored lower case).
    low, high : float, optional
        The accepted range (inclusive), for numbers.
    whole : bool
        A whole number (an ``int`` option).
    optional : bool
        ``None`` is accepted (it means "the task decides").
    low_open : bool
        ``low`` itself is refused (a range ``(low, high]``).
    """

    name: str
    default: Any
    help: str
    choices: Optional[tuple[str, ...]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    whole: bool = False
    optional: bool = False
    low_open: bool = False

    @property
    def label(self) -> str:
        """The option's name in messages: ``time budget``."""
        return self.name.replace("_", " ")

    def check(self, value: Any) -> Any:
        """``value`` normalised (choices lower case, numbers as int/float), or :class:`InputError` naming it."""
        if value is None:
            if self.optional or self.default is None:
                return None
            raise InputError(f"{self.label} must be given (default {self.default!r})")
        if self.choices is not None:
            word = str(value).strip().lower()
            if word not in self.choices:
                raise InputError(f"{self.label} must be one of {', '.join(self.choices)}, got {value!r}")
            return word
        if self.low is None and self.high is None:
            return value
        low = -math.inf if self.low is None else float(self.low)
        high = math.inf if self.high is None else float(self.high)
        if self.whole:
            if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
                if not (isinstance(value, numbers.Real) and float(value).is_integer() and not isinstance(value, bool)):
                    raise InputError(f"{self.label} must be a whole number, got {value!r}")
            number = check_number(value, self.label, low=low, high=high, low_open=self.low_open)
            return int(number)
        return check_number(value, self.label, low=low, high=high, low_open=self.low_open)


def knob(default: Any, *, help: str, choices: Optional[Sequence[str]] = None, low: Optional[float] = None,
         high: Optional[float] = None, optional: bool = False, low_open: bool = False) -> Any:
    """A dataclass field of a :class:`TaskOptions`, with what a front end needs to offer it (see :class:`Knob`).

    Mutable defaults (lists) are not allowed: options are frozen and shared, so sequences are tuples.
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError("an option's default must be immutable (a tuple, not a list)")
    metadata = {"medsynth": {"help": help, "choices": tuple(c.lower() for c in choices) if choices else None,
                             "low": low, "high": high, "optional": optional, "low_open": low_open}}
    return field(default=default, metadata=metadata)


def seed_knob(help: str = SEED_HELP) -> Any:
    """The ``seed`` knob every task shares (0 to :data:`MAX_SEED`), with the task's own help."""
    return knob(0, low=0, high=MAX_SEED, help=help)


def device_knob(help: str = DEVICE_HELP) -> Any:
    """The ``device`` knob every task shares (``auto``; presence is checked when the task selects it)."""
    return knob("auto", help=help)


def budget_knob(help: str = BUDGET_HELP, *, low_open: bool = False) -> Any:
    """The ``time_budget`` knob (seconds up to :data:`MAX_BUDGET_S`, unset: the task's own); ``low_open``: 0 refused
    (where 0 would mean nothing may run)."""
    return knob(None, low=0.0, high=MAX_BUDGET_S, low_open=low_open, optional=True, help=help)


@dataclass(frozen=True)
class TaskOptions:
    """Base of every task's options: validation at construction, building from keywords, JSON out.

    Subclasses declare fields with :func:`knob` (plain fields are allowed for data that front ends do not
    offer, e.g. lesion centres) and may add cross-field rules in :meth:`_check`. Instances are frozen: a
    front end builds one, and the task receives it unchanged.
    """

    #: Short names accepted by :meth:`build` as well (``size`` for ``size_mm``).
    aliases = {}

    def __post_init__(self) -> None:
        for item in fields(self):
            spec = item.metadata.get("medsynth")
            if spec is None:
                continue
            value = getattr(self, item.name)
            checked = self._knob(item).check(value)
            if isinstance(checked, list):
                checked = tuple(checked)
            object.__setattr__(self, item.name, checked)
        self._check()

    def _check(self) -> None:
        """Rules between options (e.g. exactly one of ``factor`` or ``spacing``); raise :class:`InputError`."""

    @classmethod
    def _knob(cls, item: dataclasses.Field) -> Knob:
        spec = item.metadata["medsynth"]
        default = item.default
        whole = isinstance(default, int) and not isinstance(default, bool) or item.type in ("int", "Optional[int]")
        return Knob(name=item.name, default=default, help=spec["help"], choices=spec["choices"], low=spec["low"],
                    high=spec["high"], whole=whole, optional=spec["optional"], low_open=spec["low_open"])

    @classmethod
    def knobs(cls) -> tuple[Knob, ...]:
        """Every option a front end offers, in declaration order (the panel and the CLI read these)."""
        return tuple(cls._knob(item) for item in fields(cls) if "medsynth" in item.metadata)

    @classmethod
    def knob(cls, name: str) -> Knob:
        """The :class:`Knob` called ``name``."""
        for found in cls.knobs():
            if found.name == name:
                return found
        raise KeyError(f"{cls.__name__} has no option {name!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every field name (knobs and data), what :meth:`build` accepts."""
        return tuple(item.name for item in fields(cls))

    @classmethod
    def build(cls: type[T], options: Optional[Any] = None, /, **changes: Any) -> T:
        """The options from an instance, a mapping or nothing, with ``changes`` on top; unknown names refused.

        This is how every task function and front end makes one: ``fill_slices(volume, method="linear")``
        is ``fill_slices(volume, FillOptions.build(method="linear"))``.

        Raises
        ------
        InputError
            An option this task does not take (a typo must never run silently with a default), or an
            invalid value.
        """
        if options is not None and not isinstance(options, (cls, Mapping)):
            raise InputError(f"options must be {cls.__name__} or a mapping, got {type(options).__name__}")
        given = dict(options) if isinstance(options, Mapping) else {}
        given.update(changes)
        for alias, name in cls.aliases.items():
            if alias in given:
                if name in given:
                    raise InputError(f"give {alias} or {name}, not both")
                given[name] = given.pop(alias)
        unknown = sorted(set(given) - set(cls.names()))
        if unknown:
            plural = "s" if len(unknown) > 1 else ""
            raise InputError(f"unknown option{plural} {', '.join(map(repr, unknown))}; "
                             f"the options are {', '.join(cls.names())}")
        if isinstance(options, cls):
            return dataclasses.replace(options, **given) if given else options
        return cls(**given)

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes`` (validated like a new one)."""
        return type(self).build(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON-able values (what a report and the Slicer history record)."""
        from .reports import to_jsonable

        return {item.name: to_jsonable(getattr(self, item.name)) for item in fields(self) if item.repr}
