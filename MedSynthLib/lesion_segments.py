"""Names and colours of synthetic-lesion segments, defined once for the CLI and the Slicer module.

``medsynth lesion --labels x.seg.nrrd`` and the Slicer panel both turn a lesion label map into
named, coloured segments; they use :func:`segment_descriptions`, so a ``.seg.nrrd`` written by the
CLI and a segmentation made in Slicer name and colour the same lesion the same way.
"""

from __future__ import annotations

from typing import Iterable, Optional, Union

import numpy as np

from .errors import InputError

__all__ = ["LABEL_MODES", "PALETTE", "CLASS_SEGMENTS", "segment_descriptions"]

#: ``insert_lesions(label_mode=...)`` values: one label per lesion, or the classes below.
LABEL_MODES = ("instances", "classes")

#: Segment colours (RGB in [0, 1]) for lesion instances, distinct on grey images.
PALETTE = (
    (0.95, 0.30, 0.25), (0.25, 0.75, 0.95), (0.98, 0.80, 0.20), (0.45, 0.85, 0.40),
    (0.80, 0.45, 0.95), (1.00, 0.55, 0.10), (0.30, 0.45, 1.00), (0.95, 0.45, 0.70),
)

#: Label classes of ``insert_lesions(label_mode="classes")``: value -> (name, colour).
CLASS_SEGMENTS = {
    1: ("lesion", (0.95, 0.30, 0.25)),
    2: ("core", (0.55, 0.10, 0.10)),
    3: ("oedema", (0.98, 0.80, 0.20)),
}


def segment_descriptions(
    labels: Union[np.ndarray, Iterable[int]], *, label_mode: str = "instances", preset: Optional[str] = None
) -> list[dict]:
    """``{"value", "name", "color"}`` per non-zero label present, the format of ``io.write_segmentation``.

    Parameters
    ----------
    labels : ndarray or iterable of int
        The label map (its distinct non-zero values are used) or the label values themselves.
    label_mode : {"instances", "classes"}
        ``instances``: "Synthetic lesion N (preset)", colours cycling through :data:`PALETTE`.
        ``classes``: "Synthetic lesion/core/oedema (preset)" with the class colours.
    preset : str, optional
        The preset that drew the lesions, appended to every name so a reader knows what they are.

    Raises
    ------
    InputError
        An unknown ``label_mode``.
    """
    if label_mode not in LABEL_MODES:
        raise InputError(f"label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
    values = sorted({int(v) for v in np.unique(np.asarray(labels)) if int(v) != 0})
    suffix = f" ({preset})" if preset else ""
    out = []
    for number, value in enumerate(values):
        if label_mode == "classes" and value in CLASS_SEGMENTS:
            name, colour = CLASS_SEGMENTS[value]
            name = f"Synthetic {name}{suffix}"
        elif label_mode == "classes":
            name, colour = f"Synthetic class {value}{suffix}", PALETTE[number % len(PALETTE)]
        else:
            name, colour = f"Synthetic lesion {value}{suffix}", PALETTE[number % len(PALETTE)]
        out.append({"value": value, "name": name, "color": tuple(float(c) for c in colour)})
    return out
