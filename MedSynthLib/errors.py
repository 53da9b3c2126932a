"""One exception family for everything MedSynth reports to a user.

The Slicer panel and the CLI show ``str(error)`` as is, so messages name the
problem and what to do about it, in a clinician's words, in one line.
"""

from __future__ import annotations

__all__ = [
    "MedSynthError",
    "InputError",
    "ModelError",
    "DeviceError",
    "ResourceError",
    "Cancelled",
    "check_whole_number",
]


class MedSynthError(Exception):
    """Base of every error MedSynth raises on purpose."""


class InputError(MedSynthError, ValueError):
    """The user's input cannot be used as given (file, volume, parameter).

    The CLI maps it to exit code 2.
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
