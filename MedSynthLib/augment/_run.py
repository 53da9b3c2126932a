"""Where the outputs of ``medsynth augment`` are made: in this process, in N worker processes, or on Dask.

All three run the same :func:`~MedSynthLib.augment._work.run_output` on the same
tasks (each with its own derived seed), so they give the same bytes; only the
order in which rows arrive differs, and the caller sorts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Optional, Sequence

from ..errors import InputError, ResourceError
from ..progress import CancelToken, check_cancel
from ._work import OutputTask, limit_threads, run_output

__all__ = ["execute", "require_dask", "DASK_MISSING"]

DASK_MISSING = ("--scheduler needs Dask distributed, which is not installed: "
                "pip install 'medsynth[distributed]' (or pip install 'dask[distributed]')")

OnRow = Callable[[dict], None]
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _serial(tasks: Sequence[OutputTask], on_row: OnRow, cancel: Optional[CancelToken]) -> None:
    for task in tasks:
        check_cancel(cancel)
        on_row(run_output(task))


def _init_worker(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops handing out work
    limit_threads(threads)


@contextlib.contextmanager
def _thread_environment(threads: int) -> Iterator[None]:
    """Thread limits in the environment while workers start (libraries read them when they load)."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in _THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one (workers fork from a clean, preloaded server: fast and thread-safe), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["MedSynthLib.augment._work", "MedSynthLib.tasks.lesion"])
        return context
    return multiprocessing.get_context("spawn")


def _processes(tasks: Sequence[OutputTask], jobs: int, on_row: OnRow, cancel: Optional[CancelToken]) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    tasks = [dataclasses.replace(task, threads=threads) for task in tasks]
    with _thread_environment(threads):
        executor = ProcessPoolExecutor(max_workers=jobs, mp_context=_context(), initializer=_init_worker,
                                       initargs=(threads,))
        futures = [executor.submit(run_output, task) for task in tasks]
    delivered = set()
    try:
        for future in as_completed(futures):
            check_cancel(cancel)
            delivered.add(future)
            on_row(future.result())
    except BrokenProcessPool:
        raise ResourceError(
            "a worker process died: out of memory (try fewer --jobs), or a Python script that calls augment(jobs>1) "
            "without the `if __name__ == \"__main__\":` guard worker processes need") from None
    finally:
        # stopped (Ctrl-C, cancel, --strict): outputs in flight finish, and get their rows; the rest never start
        executor.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            if future not in delivered and not future.cancelled() and future.exception() is None:
                with contextlib.suppress(Exception):
                    on_row(future.result())


def require_dask() -> None:
    """Raise :class:`InputError` saying how to install Dask distributed when it is missing."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError(DASK_MISSING) from None


def _client(scheduler: Any) -> tuple[Any, bool]:
    require_dask()
    from distributed import Client

    if isinstance(scheduler, Client):
        return scheduler, False
    if hasattr(scheduler, "scheduler_address"):  # a cluster object (LocalCluster, dask-jobqueue's SLURMCluster...)
        return Client(scheduler), True
    try:
        return Client(str(scheduler), timeout="20s"), True
    except (OSError, TimeoutError, ValueError) as error:
        raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None


def _dask(tasks: Sequence[OutputTask], scheduler: Any, on_row: OnRow, cancel: Optional[CancelToken]) -> None:
    client, owned = _client(scheduler)
    from distributed import as_completed as dask_completed

    token = uuid.uuid4().hex[:8]
    keys = [f"medsynth-augment-{task.case.name}-v{task.variant}-{token}" for task in tasks]
    futures = client.map(run_output, list(tasks), key=keys, pure=False)
    try:
        for future in dask_completed(futures):
            check_cancel(cancel)
            on_row(future.result())
    finally:
        client.cancel([f for f in futures if not f.done()])
        if owned:
            client.close()


def execute(tasks: Sequence[OutputTask], *, jobs: int = 1, scheduler: Any = None,
            on_row: OnRow, cancel: Optional[CancelToken] = None) -> None:
    """Run every task and hand each finished row to ``on_row`` (in the calling process, as they finish).

    ``on_row`` may raise (``--strict``, cancellation) to stop: work not started is
    dropped and work in flight is let finish (its files are whole, so nothing is half-written).
    """
    if not tasks:
        return
    if scheduler is not None:
        _dask(tasks, scheduler, on_row, cancel)
    elif jobs > 1 and len(tasks) > 1:
        _processes(tasks, min(jobs, len(tasks)), on_row, cancel)
    else:
        _serial(tasks, on_row, cancel)
