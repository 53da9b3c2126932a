"""One persistent background thread that runs MedSynth tasks while Slicer's GUI keeps running.

Why a thread and not a ``PythonSlicer`` subprocess (the other choice Slicer extensions make):

- The volume is already in memory. A subprocess needs it written to disk and read back twice
  (input and result), doubling peak memory, the complaint of SlicerMONAIAuto3DSeg#20.
- MedSynthLib tasks take a :class:`~MedSynthLib.progress.CancelToken` and a progress callback,
  so cancel and progress need no process plumbing, and a cancelled run leaves the input untouched.
- One *persistent* thread keeps the CUDA context, cuDNN's per-thread autotuning cache and loaded
  models warm between runs (SlicerNNInteractive does the same).
- torch and numpy release the GIL in their kernels, so the GUI thread stays responsive.

The price: a task stuck inside one C call cannot be killed, only asked to stop at its next
cancel check. Tasks check between slices/batches, which keeps Cancel under a second or two.

Nothing here touches Qt or MRML: the GUI thread polls :meth:`Job.status` from a ``QTimer``
and applies results itself, so MRML is only ever touched on the main thread.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

from MedSynthLib.errors import Cancelled
from MedSynthLib.progress import CancelToken, ProgressCallback

__all__ = ["JobState", "JobStatus", "Job", "BackgroundWorker"]

log = logging.getLogger(__name__)

#: What a job runs: ``function(progress, cancel) -> result``.
JobFunction = Callable[[ProgressCallback, CancelToken], Any]


class JobState(enum.Enum):
    """Life cycle of a :class:`Job`."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobStatus:
    """A consistent snapshot of a job, safe to read on the GUI thread."""

    state: JobState
    fraction: float
    message: str
    seconds: float
    result: Any = None
    error: Optional[BaseException] = None
    error_details: str = ""


class Job:
    """One unit of work: runs on the worker thread, observed and cancelled from the GUI thread."""

    def __init__(self, function: JobFunction, *, description: str = "") -> None:
        self.function = function
        self.description = description
        self.cancel_token = CancelToken()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._state = JobState.QUEUED
        self._fraction = 0.0
        self._message = "Waiting for the worker"
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._details = ""
        self._started: Optional[float] = None
        self._finished: Optional[float] = None

    # ---- called on the worker thread --------------------------------------------------------
    def progress(self, fraction: float, message: str) -> None:
        """Progress callback handed to the task (worker thread); only stores the values."""
        with self._lock:
            self._fraction = min(1.0, max(0.0, float(fraction)))
            self._message = str(message)

    def _run(self) -> None:
        with self._lock:
            if self.cancel_token.cancelled:
                self._state = JobState.CANCELLED
                self._message = "Cancelled before it started"
                self._finished = time.perf_counter()
                self._done.set()
                return
            self._state = JobState.RUNNING
            self._started = time.perf_counter()
            self._message = "Starting"
        try:
            result = self.function(self.progress, self.cancel_token)
        except Cancelled as error:
            self._finish(JobState.CANCELLED, error=error, message="Cancelled; nothing was changed")
        except BaseException as error:  # noqa: BLE001 - reported to the GUI thread, never lost
            details = traceback.format_exc()
            log.debug("MedSynth job %r failed:\n%s", self.description, details)
            self._finish(JobState.FAILED, error=error, message=str(error), details=details)
        else:
            self._finish(JobState.SUCCEEDED, result=result, message="Done")

    def _finish(self, state: JobState, *, result: Any = None, error: Optional[BaseException] = None,
                message: str = "", details: str = "") -> None:
        with self._lock:
            self._state = state
            self._result = result
            self._error = error
            self._details = details
            self._message = message
            if state == JobState.SUCCEEDED:
                self._fraction = 1.0
            self._finished = time.perf_counter()
        self._done.set()

    # ---- called on the GUI thread -----------------------------------------------------------
    def cancel(self) -> None:
        """Ask the task to stop at its next cancel check; the input stays untouched."""
        self.cancel_token.cancel()
        with self._lock:
            if not self._state.finished:
                self._message = "Cancelling..."

    def status(self) -> JobStatus:
        with self._lock:
            if self._started is None:
                seconds = 0.0
            else:
                seconds = (self._finished or time.perf_counter()) - self._started
            return JobStatus(
                state=self._state,
                fraction=self._fraction,
                message=self._message,
                seconds=seconds,
                result=self._result,
                error=self._error,
                error_details=self._details,
            )

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the job ends (for tests and scripts; the GUI polls instead)."""
        return self._done.wait(timeout)


class BackgroundWorker:
    """A persistent daemon thread that runs :class:`Job` objects one at a time, in order.

    Parameters
    ----------
    name : str
        Thread name (shows in debuggers and ``threading.enumerate()``).
    """

    def __init__(self, name: str = "MedSynthWorker") -> None:
        self._name = name
        self._queue: "queue.Queue[Optional[Job]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._current: Optional[Job] = None
        self._lock = threading.Lock()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._current = job
            try:
                job._run()
            finally:
                with self._lock:
                    self._current = None

    def submit(self, function: JobFunction, *, description: str = "") -> Job:
        """Queue ``function(progress, cancel)`` and return its :class:`Job` at once."""
        job = Job(function, description=description)
        self._ensure_thread()
        self._queue.put(job)
        return job

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None or not self._queue.empty()

    def shutdown(self, *, timeout: float = 5.0) -> bool:
        """Cancel the running job, stop the thread; True if it ended within ``timeout``."""
        with self._lock:
            current = self._current
        if current is not None:
            current.cancel()
        thread = self._thread
        if thread is None:
            return True
        self._queue.put(None)
        thread.join(timeout)
        alive = thread.is_alive()
        if not alive:
            self._thread = None
        return not alive
