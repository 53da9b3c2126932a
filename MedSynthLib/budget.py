"""Time budgets measured on the clock, and CPU threads chosen from the load actually there.

Why: an estimate of how long a method will take (from voxel counts, from a benchmark on an idle machine) is
wrong on a busy machine by large factors; ``auto`` once trained for 50 minutes inside a "180 s" budget. A
:class:`TimeBudget` is started when the task starts and asked while a method runs (``expired()``,
``remaining()``), so a method can stop early with its best result so far or hand over to a faster one; its
:meth:`TimeBudget.report` goes into the task report (budget, seconds spent, what was cut).

:func:`idle_cores` measures how many cores are idle now (``/proc/stat`` over a short window, less this
process's own use), and :func:`cpu_threads` turns that into a thread count: two torch threads on two cores
that another job keeps busy run several times slower than one (measured: step 1878 of 4800 after 100 minutes
against 590 s for the whole run on one thread).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

from .errors import check_number, check_whole_number

__all__ = ["TimeBudget", "idle_cores", "cpu_threads", "torch_threads"]


@dataclass
class TimeBudget:
    """A wall-clock budget started at construction; ``seconds=None`` means no limit.

    Examples
    --------
    >>> budget = TimeBudget(60.0)
    >>> budget.expired()
    False
    >>> TimeBudget(None).remaining()
    inf
    """

    seconds: Optional[float]
    started: float = field(default_factory=time.monotonic)
    cuts: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.seconds is not None:
            self.seconds = check_number(self.seconds, "time budget (seconds)", low=0.0, low_open=True)

    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return time.monotonic() - self.started

    def remaining(self) -> float:
        """Seconds left (``inf`` without a limit; never negative)."""
        if self.seconds is None:
            return math.inf
        return max(0.0, self.seconds - self.elapsed())

    def expired(self) -> bool:
        """True once the budget is spent."""
        return self.remaining() <= 0.0

    def cut(self, what: str) -> None:
        """Record that ``what`` was shortened or skipped to stay in the budget (goes into :meth:`report`)."""
        self.cuts.append(str(what))

    def report(self) -> dict:
        """``{"budget_s", "spent_s", "cut"}`` for a task report."""
        return {"budget_s": None if self.seconds is None else round(self.seconds, 3),
                "spent_s": round(self.elapsed(), 3), "cut": list(self.cuts)}


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _busy_jiffies() -> Optional[tuple[int, int]]:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``; None where there is no such file."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def idle_cores(*, window: float = 0.25) -> float:
    """Cores idle right now, measured over ``window`` seconds, not counting this process's own use.

    Falls back to ``cpu_count - (1-minute load average)`` where ``/proc/stat`` is missing, and to all cores
    where neither is available.
    """
    cores = _cpu_count()
    first = _busy_jiffies()
    if first is None:
        try:
            return float(max(0.0, cores - os.getloadavg()[0]))
        except (AttributeError, OSError):
            return float(cores)
    own_before, clock_before = time.process_time(), time.monotonic()
    time.sleep(window)
    second = _busy_jiffies()
    own = (time.process_time() - own_before) / max(time.monotonic() - clock_before, 1e-6)
    busy, total = second[0] - first[0], second[1] - first[1]
    online = os.cpu_count() or cores
    busy_cores = online * busy / total if total > 0 else 0.0
    return float(min(cores, max(0.0, cores - max(0.0, busy_cores - own))))


def cpu_threads(*, requested: Optional[int] = None, idle: Optional[float] = None) -> int:
    """Threads for a CPU run: ``requested`` when given, else the idle cores rounded (at least 1).

    ``idle`` (cores) is measured with :func:`idle_cores` when not given.
    """
    if requested is not None:
        return check_whole_number(requested, "threads", low=1, high=4096)
    free = idle_cores() if idle is None else float(idle)
    return int(max(1, min(_cpu_count(), math.floor(free + 0.5))))


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (None: as they are), and restore the caller's count after."""
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
