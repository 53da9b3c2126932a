"""The files a command writes: checked before any work, written all together or not at all.

Every task command names its files once, as ``{"OUTPUT": ..., "--labels": ...}``
(outputs) and ``{"INPUT": ..., "--mask": ...}`` (inputs), and gets from
:func:`prepare` an :class:`Outputs` that has already refused, with one line:

- two outputs that are the same file, or an output that is one of the inputs
  (resolved paths, and the inode where both exist; ``--overwrite`` lets OUTPUT
  replace INPUT and nothing else);
- an output whose folder cannot be written (probed by creating a file there);
- a named ``--device`` that is absent.

Results are staged beside their destinations and moved into place by
:meth:`Outputs.commit` (Ctrl-C is held back for those few renames), so an
interrupted or failed run leaves no file. The report is written last (its
warnings printed on stderr first, whether or not ``--report`` is given): when
that fails the outputs stay and the command exits 2 saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

from ..errors import InputError
from ..io import WRITE_EXTENSIONS, StagedFile

__all__ = ["add_output_args", "prepare", "Outputs"]

#: Names of the outputs that hold volumes (the extension must be one MedSynth writes).
_VOLUME_OUTPUTS = ("OUTPUT", "--labels", "--field", "--synthetic-mask", "--uncertainty", "--noise-map")
#: Outputs every task command takes from ``args`` (the options :func:`add_output_args` adds, and ``--uncertainty``).
_SHARED_OUTPUTS = ("--report", "--qc", "--synthetic-mask", "--uncertainty")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """``--report``, ``--qc``, ``--synthetic-mask`` and ``--overwrite``, shared by every task command."""
    parser.add_argument("--report", metavar="FILE.json",
                        help="write the run's report (what was done, device, seconds, warnings) as JSON")
    parser.add_argument("--qc", metavar="FILE.png", help="write a QC picture: before, after and difference, titled")
    parser.add_argument("--synthetic-mask", metavar="FILE",
                        help="write a label map on the output grid: 0 acquired and unchanged, 1 synthesised (no "
                             "measurement there), 2 acquired but rewritten (see docs/provenance.md)")
    parser.add_argument("--overwrite", action="store_true", help="allow OUTPUT to replace INPUT (refused otherwise)")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_distinct(inputs: Mapping[str, Path], outputs: Mapping[str, Path], overwrite: bool) -> None:
    names = list(outputs)
    for position, name in enumerate(names):
        for other in names[position + 1:]:
            if _same_file(outputs[name], outputs[other]):
                raise InputError(f"{name} and {other} are the same file ({outputs[name]}); give each its own name")
        for source, path in inputs.items():
            if not _same_file(outputs[name], path):
                continue
            if name == "OUTPUT" and source == "INPUT":
                if overwrite:
                    continue
                raise InputError(f"OUTPUT would overwrite INPUT ({path}); choose another name, "
                                 "or pass --overwrite to replace the input")
            raise InputError(f"{name} would overwrite {source} ({path}); choose another name")


def _check_writable(name: str, path: Path) -> None:
    """Create (and remove) a file where ``path`` will be written: the only test that tells the truth."""
    if path.is_dir():
        raise InputError(f"cannot write {name} {path}: it is a folder")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {name} {path}: {folder} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise InputError(f"cannot write {name} {path}: no file can be created in {folder} ({reason})") from None
    os.close(handle)
    os.unlink(probe)


def _check_extension(name: str, path: Path) -> None:
    lower = path.name.lower()
    if name in _VOLUME_OUTPUTS and not any(lower.endswith(ext) for ext in WRITE_EXTENSIONS):
        raise InputError(f"cannot write {name} {path.name}: use one of the extensions {', '.join(WRITE_EXTENSIONS)}")
    if name == "--qc" and not lower.endswith(".png"):
        raise InputError(f"cannot write --qc {path.name}: the QC picture is a PNG (name it FILE.png)")


def prepare(args: argparse.Namespace, *, inputs: Mapping[str, Optional[str]],
            outputs: Mapping[str, Optional[str]]) -> "Outputs":
    """Check the command's files and device before any work; see the module docstring.

    ``outputs`` should not list ``--report``, ``--qc``, ``--synthetic-mask`` or ``--uncertainty``: they are
    taken from ``args`` (the options :func:`add_output_args` adds).
    """
    device = getattr(args, "device", None)
    if device not in (None, "auto"):
        from ..engine import select_device

        select_device(device)  # an absent device is refused before anything is read
    named_outputs = {k: Path(v) for k, v in outputs.items() if v}
    for option in _SHARED_OUTPUTS:
        value = getattr(args, option[2:].replace("-", "_"), None)
        if value:
            named_outputs[option] = Path(value)
    named_inputs = {k: Path(v) for k, v in inputs.items() if v and v != "auto"}
    _check_distinct(named_inputs, named_outputs, bool(getattr(args, "overwrite", False)))
    for name, path in named_outputs.items():
        _check_extension(name, path)
        _check_writable(name, path)
    return Outputs(named_outputs)


@contextlib.contextmanager
def _interrupt_held_back() -> Iterator[None]:
    """Ignore Ctrl-C for the few renames that put finished files in place (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Outputs:
    """A command's checked output paths, the results staged for them, and the report written last."""

    def __init__(self, paths: Mapping[str, Path]) -> None:
        self.paths = dict(paths)
        self._staged: dict[str, StagedFile] = {}
        self.written: list[Path] = []

    def path(self, name: str) -> Optional[Path]:
        return self.paths.get(name)

    def stage(self, name: str, writer: Callable[[Path], object]) -> None:
        """Write output ``name`` with ``writer(temporary_path)``; nothing is visible until :meth:`commit`."""
        if name not in self.paths:
            return
        staged = StagedFile(self.paths[name])
        self._staged[name] = staged
        writer(staged.path)

    def stage_volume(self, name: str, volume, metadata: Optional[Mapping[str, str]] = None) -> None:
        """Stage a volume; ``volume`` may be a callable that makes it, called only when ``name`` was asked for
        (a synthesised-voxel mask or an uncertainty costs nothing when not wanted)."""
        from ..io import write_volume

        if name not in self.paths:
            return
        made = volume() if callable(volume) else volume
        self.stage(name, lambda path: write_volume(made, path, metadata=metadata))

    def discard(self) -> None:
        for staged in self._staged.values():
            staged.discard()
        self._staged.clear()

    def commit(self) -> list[Path]:
        """Move every staged file into place; returns the paths written."""
        with _interrupt_held_back():
            for name in list(self._staged):
                self.written.append(self._staged.pop(name).commit())
        return self.written

    def write_report(self, report: Mapping) -> None:
        """Print the report's warnings on stderr (:func:`~.common.print_warnings`; with or without ``--report``),
        then write ``--report`` after the outputs; a failure keeps them and says so (exit 2)."""
        from .common import print_warnings, write_json

        print_warnings(report)
        path = self.paths.get("--report")
        if path is None:
            return

        try:
            write_json(report, path)
        except (OSError, InputError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            kept = ", ".join(str(p) for p in self.written) or "nothing"
            raise InputError(f"the result was written ({kept}), but the report could not be: "
                             f"cannot write {path}: {reason}") from None

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.discard()  # whatever was staged but not committed (an error, Ctrl-C) leaves no file
