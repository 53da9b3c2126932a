"""Task reports as plain JSON: what the CLI writes with ``--report`` and the Slicer module stores in a node's
``MedSynth.history`` attribute (one conversion for both, so a report reads the same everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """Numpy scalars/arrays, paths, tuples and dataclass-like objects to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "as_dict"):
        return to_jsonable(value.as_dict())
    return value
