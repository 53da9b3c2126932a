"""One exception family for everything MedSynth reports to a user.

The Slicer panel and the CLI show ``str(error)`` as is, so messages name the
problem and what to do about it, in a clinician's words, in one line.
"""

from __future__ import annotations

import math

__all__ = [
    "MedSynthError",
    "InputError",
    "ResultError",
    "ModelError",
    "DeviceError",
    "ResourceError",
    "Cancelled",
    "check_whole_number",
    "check_number",
]


class MedSynthError(Exception):
    """Base of every error MedSynth raises on purpose."""


class InputError(MedSynthError, ValueError):
    """The user's input cannot be used as given (file, volume, parameter).

    The CLI maps it to exit code 2.
    """


class ResultError(InputError):
    """A computed result failed a plausibility check (non-finite, out of range); nothing was written.

    An ``InputError`` because what the user can do is the same: change the input,
    the method or the model. The CLI maps it to exit code 2.
    """


class ModelError(MedSynthError):
    """A model package is missing, malformed or does not fit the task."""


class DeviceError(MedSynthError):
    """A requested compute device is not present on this machine."""


class ResourceError(MedSynthError):
    """The work does not fit in memory even after every fallback."""


class Cancelled(MedSynthError):
    """The user cancelled; inputs are untouched. The CLI exits with 130."""


def check_whole_number(value, name: str, *, low: int, high: int) -> int:
    """``value`` as an int, or :class:`InputError` quoting it: "NAME must be a whole number from LOW to HIGH".

    Booleans and floats are refused (``True`` is not a count, ``2.5`` steps is a typo).
    """
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise InputError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def check_number(value, name: str, *, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the stated range, or :class:`InputError` quoting it.

    The message reads "NAME must be a number in [LOW, HIGH], got VALUE" (``(`` / ``)`` for open ends, and
    "> LOW" or ">= LOW" when there is no upper end). Booleans, strings and NaN/inf are refused.
    """
    import numbers

    good = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if good:
        x = float(value)
        good = (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    if not good:
        if math.isinf(high):
            wanted = f"{'>' if low_open else '>='} {low:g}" if math.isfinite(low) else "finite"
            raise InputError(f"{name} must be a number {wanted}, got {value!r}")
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise InputError(f"{name} must be a number in {left}{low:g}, {high:g}{right}, got {value!r}")
    return float(value)
