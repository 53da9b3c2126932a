"""Provenance: the ``MedSynth.history`` attribute every node MedSynth edits or creates carries.

The attribute is a JSON list of entries, oldest first, saved with the scene (node attributes
are written to the .mrml file), so a reader of a saved scene can tell which voxels are
synthetic, how they were made, and reproduce them (parameters, seed, model, device, versions).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import logging
from typing import Any, Optional

from MedSynthLib import __version__ as library_version
from MedSynthLib.reports import to_json, to_jsonable

__all__ = [
    "HISTORY_ATTRIBUTE",
    "SYNTHETIC_LESIONS_SUFFIX",
    "history_entry",
    "plain",
    "append_history",
    "read_history",
    "lesion_volume_name",
]

log = logging.getLogger(__name__)

#: Node attribute holding the JSON history.
HISTORY_ATTRIBUTE = "MedSynth.history"

#: Added to the name of every volume holding synthetic lesions, so nobody mistakes it for a scan.
SYNTHETIC_LESIONS_SUFFIX = " (synthetic lesions)"


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


def plain(value: Any) -> Any:
    """``value`` as plain, strict JSON types (numpy, paths, dataclasses and enums converted; others str; a
    non-finite number null with a reason, as in every report: :mod:`MedSynthLib.reports`)."""
    return json.loads(to_json(value, default=_default))


def history_entry(
    *,
    action: str,
    task: str,
    parameters: dict,
    report: Optional[dict] = None,
    source: Optional[str] = None,
    output: str = "in place",
) -> dict:
    """One history record.

    Parameters
    ----------
    action : str
        What happened to this node: ``"edited"``, ``"created"`` or ``"undone"``.
    task : str
        ``fill``, ``upsample``, ``lesion``, ``enhance``.
    parameters : dict
        The task's arguments as run (seed, model and device included).
    report : dict, optional
        The library's report (method actually used, device used, seconds, warnings).
    source : str, optional
        Name and ID of the input node when this node was created from another.
    output : str
        ``"in place"`` or ``"new volume"``.
    """
    entry = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "action": action,
        "task": task,
        "output": output,
        "parameters": plain(parameters),
        "report": plain(report or {}),
        "medsynth_version": library_version,
    }
    if source:
        entry["source"] = source
    return entry


def read_history(text: Optional[str]) -> list[dict]:
    """Entries stored in an attribute value; an unreadable value is kept as a raw entry."""
    if not text:
        return []
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        log.warning("MedSynth.history attribute is not valid JSON; keeping it as raw text")
        return [{"raw": str(text)}]
    if isinstance(value, list):
        return [v if isinstance(v, dict) else {"raw": v} for v in value]
    return [value if isinstance(value, dict) else {"raw": value}]


def append_history(existing: Optional[str], entry: dict) -> str:
    """The attribute value after adding ``entry`` to ``existing`` (JSON in, strict JSON out: a ``NaN`` an older
    attribute holds is written as null with a reason)."""
    entries = read_history(existing)
    entries.append(entry)
    return to_json(entries, default=_default, sort_keys=False)


def lesion_volume_name(name: str) -> str:
    """``name`` marked as holding synthetic lesions (idempotent)."""
    name = name or "Volume"
    return name if name.endswith(SYNTHETIC_LESIONS_SUFFIX) else name + SYNTHETIC_LESIONS_SUFFIX
