"""The ``medsynth`` command line: files in, files out, the same task functions as the Slicer panel.

Exit codes: 0 success, 1 internal failure, 2 bad input or usage (one line on
stderr, no traceback), 130 cancelled (Ctrl-C).
"""

from __future__ import annotations

import os
import sys

from .._version import __version__

# Nothing but os and sys is imported before main() runs (argparse, logging and typing load inside it, annotations
# are strings), so a Ctrl-C while the standard library, numpy, SimpleITK or torch load (seconds, at start-up under
# load) is caught there: exit 130, one line, no traceback.

__all__ = ["main", "build_parser", "COMMANDS"]

#: Subcommand modules of this package; each defines ``register(subparsers)``.
COMMANDS = ("info", "check", "models", "enhance", "lesion", "augment", "fill", "demo")



def build_parser() -> "argparse.ArgumentParser":
    import importlib

    from .common import OneLineParser

    parser = OneLineParser(
        prog="medsynth",
        description="Generative editing of medical volumes: fill missing slices, "
        "insert synthetic lesions with exact masks, denoise and correct bias.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log messages (a result's warnings still go to stderr)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on failure")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def _options(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """The option strings of ``command`` (for :func:`cli_words`)."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        sub = getattr(action, "choices", {}).get(command)
        if sub is not None:
            return set(sub._option_string_actions)
    return set()


def _exit_cancelled(argv: Optional[Sequence[str]]) -> int:
    """130 for a cancelled run; as the process's own entry point (``argv`` None), exit with it at once.

    CPython ends a process by re-raising SIGINT on itself (exit status -2, not 130) when a KeyboardInterrupt
    once escaped code that a C extension ran through ``PyRun_String`` (importing torch does), even though
    :func:`main` caught it: under load a Ctrl-C during start-up hit that in 2 of 6 tries. Outputs are staged and
    moved into place atomically, so nothing is left to finish: flush what was printed and leave with 130.
    """
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:  # answered before any import
        print(f"medsynth {__version__}")
        return 0
    try:  # building the parser imports numpy, SimpleITK and torch (seconds): a Ctrl-C then is a clean exit too
        import logging

        from .common import cli_words, run_reporting_errors

        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("medsynth: cancelled; nothing was written", file=sys.stderr)
        return _exit_cancelled(argv)
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING,
        format="medsynth: %(levelname)s: %(message)s",
    )
    options = _options(parser, args.command)
    code = run_reporting_errors(
        lambda: args.func(args),
        prog="medsynth",
        debug=args.debug,
        cancelled_message=lambda error: "cancelled; nothing was written",
        words=lambda message: cli_words(message, options),
    )
    return _exit_cancelled(argv) if code == 130 else code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
