"""Progress reporting and cooperative cancellation shared by every long function.

A long function takes ``progress: ProgressCallback | None`` and
``cancel: CancelToken | None``. It calls ``progress(fraction, message)`` with a
fraction in [0, 1], and ``check_cancel(cancel)`` at safe points, which raises
:class:`~MedSynthLib.errors.Cancelled`. Because results are built on copies and
returned only at the end, a cancellation leaves every input untouched.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from .errors import Cancelled

__all__ = ["ProgressCallback", "CancelToken", "check_cancel", "report", "subrange"]

ProgressCallback = Callable[[float, str], None]


class CancelToken:
    """A thread-safe flag a GUI or signal handler sets to stop a running task."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user; the input was left unchanged")


def check_cancel(cancel: Optional[CancelToken]) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set; a ``None`` token never cancels."""
    if cancel is not None:
        cancel.raise_if_cancelled()


def report(progress: Optional[ProgressCallback], fraction: float, message: str) -> None:
    """Call ``progress`` if given, with the fraction clipped to [0, 1]."""
    if progress is not None:
        progress(min(1.0, max(0.0, float(fraction))), message)


def subrange(
    progress: Optional[ProgressCallback], start: float, stop: float
) -> Optional[ProgressCallback]:
    """Map a step's own 0..1 progress onto ``[start, stop]`` of its caller's bar.

    Lets a pipeline hand each step a callback without the step knowing its place.
    """
    if progress is None:
        return None

    def scaled(fraction: float, message: str) -> None:
        report(progress, start + (stop - start) * fraction, message)

    return scaled
