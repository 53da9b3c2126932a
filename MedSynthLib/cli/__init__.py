"""The ``medsynth`` command line: files in, files out, the same task functions as the Slicer panel.

Exit codes: 0 success, 1 internal failure, 2 bad input or usage (one line on
stderr, no traceback), 130 cancelled (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from .._version import __version__
from ..errors import Cancelled, DeviceError, InputError, MedSynthError, ModelError

__all__ = ["main", "build_parser", "COMMANDS"]

#: Subcommand modules of this package; each defines ``register(subparsers)``.
COMMANDS = ("info", "check", "models", "enhance", "lesion", "fill", "demo")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsynth",
        description="Generative editing of medical volumes: fill missing slices, "
        "insert synthetic lesions with exact masks, denoise and correct bias.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log messages")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on failure")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING,
        format="medsynth: %(levelname)s: %(message)s",
    )
    try:
        return int(args.func(args) or EXIT_OK)
    except (InputError, DeviceError, ModelError) as error:
        if args.debug:
            raise
        print(f"medsynth: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (Cancelled, KeyboardInterrupt):
        print("medsynth: cancelled; nothing was written", file=sys.stderr)
        return EXIT_CANCELLED
    except MedSynthError as error:
        if args.debug:
            raise
        print(f"medsynth: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if args.debug:
            raise
        print(
            f"medsynth: internal error: {type(error).__name__}: {error} (run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
