"""The plumbing every command line shares (`medsynth` and `medsynth-train`): one-line argument errors, exit codes, progress bars, JSON reports, argument types."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence


from ..errors import Cancelled, DeviceError, InputError, MedSynthError, ModelError
from ..progress import ProgressCallback
from ..reports import to_json

__all__ = [
    "progress_bar", "write_json", "axis_arg", "device_arg", "add_report_arg",
    "positive_int", "number_in", "run_reporting_errors", "OneLineParser", "cli_words", "report_warnings",
    "print_warnings",
]


@contextlib.contextmanager
def progress_bar(quiet: bool, description: str = "") -> Iterator[Optional[ProgressCallback]]:
    """A tqdm bar driven by a ``progress(fraction, message)`` callback; ``None`` when quiet."""
    if quiet:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=1000, desc=description, unit="‰", leave=False, dynamic_ncols=True,
              bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}") as bar:

        def update(fraction: float, message: str) -> None:
            # tqdm's own update throttles redraws (mininterval), so chatty tasks do not flood the terminal
            bar.set_postfix_str(message, refresh=False)
            bar.update(int(round(1000 * fraction)) - bar.n)

        yield update


def write_json(data: Any, path: Optional[str | Path]) -> None:
    """Write ``data`` as indented, strict JSON to ``path`` atomically (no-op for ``None``; a non-finite number is
    null with a reason: :func:`MedSynthLib.reports.to_json`)."""
    if path is None:
        return
    from ..io import staged_file

    text = to_json(data, indent=2) + "\n"
    with staged_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def report_warnings(report: Any, where: tuple[str, ...] = ()) -> list[str]:
    """Every warning of ``report``, one line each, in order, without repeats.

    A dict with a ``warnings`` list gives those (a pipeline's already holds its steps', so nothing under it is
    read again); otherwise its values are searched, each warning prefixed with where it was found
    (``enhance/denoise: ...`` in the demo's report; the keys ``report``, ``steps`` and ``summary`` and a key
    that repeats the last place add nothing, and a list item with a ``task`` is named by it).
    """
    found: list[str] = []
    if isinstance(report, dict):
        if isinstance(report.get("warnings"), (list, tuple)):
            prefix = "/".join(where)
            found = [" ".join(str(w).split()) for w in report["warnings"]]
            found = [f"{prefix}: {w}" if prefix else w for w in found]
        else:
            for key, value in report.items():
                skip = key in ("report", "steps", "summary") or (where and where[-1] == str(key))
                found += report_warnings(value, where if skip else (*where, str(key)))
    elif isinstance(report, (list, tuple)):
        for item in report:
            named = isinstance(item, dict) and isinstance(item.get("task"), str) and item["task"] not in where[-1:]
            found += report_warnings(item, (*where, item["task"]) if named else where)
    return list(dict.fromkeys(found))


def print_warnings(report: Any, *, prog: str = "medsynth") -> None:
    """Print every warning of ``report`` (:func:`report_warnings`) on stderr, one line each:
    ``medsynth: warning: ...``. Every task command does, even with ``--quiet``: a warning is part of the
    result (the report holds it too), not a progress or log message."""
    for line in report_warnings(report):
        print(f"{prog}: warning: {line}", file=sys.stderr)


def axis_arg(text: str) -> str:
    """argparse type for ``--axis``: auto, i, j or k."""
    value = text.strip().lower()
    if value not in ("auto", "i", "j", "k"):
        raise argparse.ArgumentTypeError(f"axis must be auto, i, j or k, not {text!r}")
    return value


def device_arg(text: str) -> str:
    """argparse type for ``--device``: auto, cpu, cuda, cuda:N or mps (presence checked later)."""
    value = text.strip().lower()
    if value in ("auto", "cpu", "cuda", "mps") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"device must be auto, cpu, cuda, cuda:N or mps, not {text!r}")


EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line in the command's words, without the usage block.

    ``medsynth fill: --slices: '3-x' is not an index or range like 3,7,10-12`` instead of
    six lines of usage and "argument --slices: invalid _slices_arg value: '3-x'".
    """

    _KINDS = {"int": "a whole number", "float": "a number", "positive_int": "a positive whole number"}

    def error(self, message: str):  # type: ignore[override]
        message = re.sub(r"^argument ", "", message)
        invalid = re.search(r"invalid (\w+) value: (.*)$", message)
        if invalid:
            kind = self._KINDS.get(invalid.group(1), "a valid value")
            message = message[: invalid.start()] + f"{invalid.group(2)} is not {kind}"
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def cli_words(message: str, options: set[str]) -> str:
    """Python keyword syntax in a library message (``modality='CT'``) as the CLI option (``--modality CT``).

    Only names that are options of the command are rewritten, so other text stays as it is.
    """

    def option(match: re.Match) -> str:
        name = "--" + match.group(1).replace("_", "-")
        return f"{name} {match.group(3)}" if name in options else match.group(0)

    return re.sub(r"\b([a-z][a-z_]*)=(['\"]?)([^'\"\s,;)]+)\2", option, message)


def run_reporting_errors(
    action: Callable[[], int],
    *,
    prog: str,
    debug: bool,
    cancelled_message: Callable[[BaseException], str],
    words: Callable[[str], str] = str,
) -> int:
    """Run ``action`` and turn every failure into one line on stderr and the documented exit code.

    Input, device and model errors exit 2; cancellation and Ctrl-C 130; anything else 1.
    ``debug`` re-raises instead, for a full traceback. ``words`` rewrites a
    message in the command line's terms (see :func:`cli_words`).
    """
    try:
        return int(action() or EXIT_OK)
    except (InputError, DeviceError, ModelError) as error:
        if debug:
            raise
        print(f"{prog}: error: {words(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except (Cancelled, KeyboardInterrupt) as error:
        print(f"{prog}: {cancelled_message(error)}", file=sys.stderr)
        return EXIT_CANCELLED
    except MedSynthError as error:
        if debug:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if debug:
            raise
        print(f"{prog}: internal error: {type(error).__name__}: {error} (run with --debug for details)", file=sys.stderr)
        return EXIT_FAILURE


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def number_in(low: float, high: float, *, include_high: bool = True):
    """argparse type factory: a number in [low, high] (or [low, high) when ``include_high`` is False)."""
    interval = f"[{low:g}, {high:g}{']' if include_high else ')'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}") from None
        if not (low <= value <= high if include_high else low <= value < high):
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {value:g}")
        return value

    return parse


def add_report_arg(parser: argparse.ArgumentParser) -> None:
    """``--report`` only; task commands use :func:`MedSynthLib.cli._outputs.add_output_args` (also --qc, --overwrite)."""
    parser.add_argument("--report", metavar="FILE.json", help="write the run's report (what was done, device, seconds, warnings) as JSON")


def add_option_args(parser: argparse.ArgumentParser, options_class: Any, names: Sequence[str], *,
                    types: Optional[dict] = None, helps: Optional[dict] = None, metavars: Optional[dict] = None,
                    flags: Optional[dict] = None) -> None:
    """``--NAME`` flags for the knobs ``names`` of a task's options class, with its choices, help and default.

    The flags' choices, ranges and defaults come from the options object (:meth:`TaskOptions.knobs`), never
    copied here; argparse leaves an absent flag at None, so the options object's own default applies and
    its validation gives the one-line error (exit 2). ``types``/``helps``/``metavars`` override per name
    (e.g. ``device_arg``, or a longer help); ``flags`` renames a flag (``{"size_mm": "--size"}``).
    """
    types, helps, metavars, flags = types or {}, helps or {}, metavars or {}, flags or {}
    for name in names:
        knob = options_class.knob(name)
        kind = types.get(name) or (str.lower if knob.choices else int if knob.whole
                                   else float if knob.low is not None or knob.high is not None else str)
        text = helps.get(name, knob.help)
        if knob.low is not None or knob.high is not None:
            shown = (lambda x: str(int(x))) if knob.whole else (lambda x: f"{x:g}")
            low = "-inf" if knob.low is None else shown(knob.low)
            high = "inf" if knob.high is None else shown(knob.high)
            text += f"; range {'(' if knob.low_open else '['}{low}, {high}]"
        if knob.default is not None:
            text += f" (default: {knob.default})"
        parser.add_argument(flags.get(name, f"--{name.replace('_', '-')}"), dest=name, type=kind, default=None, choices=knob.choices,
                            metavar=metavars.get(name), help=text)


def options_from_args(options_class: Any, args: argparse.Namespace, names: Sequence[str], **extra: Any) -> Any:
    """The task's options object from the parsed flags ``names`` (absent ones keep the default) and ``extra``."""
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return options_class.build(**given, **extra)
