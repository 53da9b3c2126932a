"""Public names imported on first use (PEP 562): one mechanism for every package that re-exports.

A package that lists its public names by submodule gets a module ``__getattr__`` that imports the defining
submodule only when a name is first asked for (and any submodule of the package by name), and a ``__dir__``
that shows them. Importing the package then costs nothing: ``import MedSynthLib.tasks.lesion`` does not load
torch through the fill and enhance tasks, and the CLI can catch a Ctrl-C while the heavy imports run.
"""

from __future__ import annotations

import importlib

# No ``typing`` import (annotations are strings): this module loads first when the CLI starts, and every
# millisecond before the CLI's Ctrl-C handling begins is a window where Ctrl-C prints a traceback.


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to its submodule (relative)."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            namespace[name] = value
            return value
        if not name.startswith("__"):
            try:
                return importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as error:
                if error.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
