"""Task reports as strict JSON: what the CLI writes with ``--report`` and the Slicer module stores in a node's
``MedSynth.history`` attribute (one conversion for both, so a report reads the same everywhere).

Strict means what every JSON parser accepts: no ``NaN``, ``Infinity`` or ``-Infinity`` (Python's ``json``
writes them by default; JavaScript's ``JSON.parse``, ``jq`` and most other parsers refuse the file). A number
that is not finite becomes ``null``, and the report says why beside it: in a dict, the key ``"<key>_null_reason"``
(:data:`NULL_REASON_SUFFIX`) next to the key whose value is, or holds, the ``null``. A measurement that knows
why it has no value (too few voxels to measure, say) writes its ``null`` and its ``<key>_null_reason`` itself;
one that does not gets ``"not finite (NaN)"`` (or ``inf``, ``-inf``; inside a list, with the positions). The
reason a source gave is never replaced.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["to_jsonable", "to_json", "NULL_REASON_SUFFIX"]

#: The sibling key that says why a value is ``null``: ``{"noise_ratio": null, "noise_ratio_null_reason": "..."}``.
NULL_REASON_SUFFIX = "_null_reason"

#: How many positions a reason lists before it says "and N more".
_SHOWN_POSITIONS = 5


def _kind(value: float) -> str:
    return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _reason(bad: list[tuple[str, str]]) -> str:
    """Why a value is (or holds) ``null``, from its non-finite (position, kind) pairs."""
    kinds = sorted({kind for _, kind in bad})
    if len(bad) == 1 and not bad[0][0]:
        return f"not finite ({kinds[0]})"
    shown = ", ".join(position for position, _ in bad[:_SHOWN_POSITIONS])
    more = f" and {len(bad) - _SHOWN_POSITIONS} more" if len(bad) > _SHOWN_POSITIONS else ""
    return f"not finite ({', '.join(kinds)}) at {shown}{more}"


def _convert(value: Any) -> tuple[Any, list[tuple[str, str]]]:
    """(``value`` as plain strict JSON types, its non-finite numbers not yet explained: (position, kind) pairs).

    A dict explains its own keys' (the ``<key>_null_reason`` sibling), so it passes nothing up.
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            out[name], bad = _convert(item)
            reason_key = name + NULL_REASON_SUFFIX
            if bad and reason_key not in value:
                out[reason_key] = _reason(bad)
        # a reason placed before its key (or by the source) is kept as given
        return out, []
    if isinstance(value, (list, tuple)):
        items, bad = [], []
        for index, item in enumerate(value):
            converted, inner = _convert(item)
            items.append(converted)
            bad.extend((f"[{index}]{position}", kind) for position, kind in inner)
        return items, bad
    if isinstance(value, np.ndarray):
        return _convert(value.tolist())
    if isinstance(value, np.generic):
        return _convert(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None, [("", _kind(value))]
    if isinstance(value, Path):
        return str(value), []
    if hasattr(value, "as_dict"):
        return _convert(value.as_dict())
    return value, []


def to_jsonable(value: Any) -> Any:
    """Numpy scalars/arrays, paths, tuples and dataclass-like objects (``as_dict``) to plain, strict JSON types.

    Every non-finite float (Python's, numpy's, inside arrays and lists, at any depth) becomes ``None``; in a
    dict its key gets a ``"<key>_null_reason"`` sibling unless it already has one (see the module docstring).
    """
    return _convert(value)[0]


def to_json(value: Any, **dumps_options: Any) -> str:
    """``value`` as strict JSON text: :func:`to_jsonable`, then ``json.dumps(..., allow_nan=False)``.

    Every JSON file MedSynth writes goes through here (reports, histories, datasets, benchmark results), so
    no ``NaN`` can be written again: one that slipped past the conversion would raise instead.
    ``dumps_options``: ``json.dumps``'s own (``indent``, ``separators``, ``sort_keys``, ``default``).
    """
    return json.dumps(to_jsonable(value), allow_nan=False, **dumps_options)
