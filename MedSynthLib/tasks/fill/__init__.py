"""Fill missing slices and upsample through-plane.

Public surface: :func:`find_missing_slices` (detection, with a reason per slice), :func:`fill_slices`,
:func:`upsample_slices` and :func:`parse_slice_list` (the ``3,7,10-12`` grammar the CLI and the panel share).
The private modules hold one method each: ``_interp`` (the fill plan, linear, cubic and spline), ``_flow``
(registration), ``_selfsup`` (a network trained on the volume itself), ``_model`` (trained packages) and
``_detect``; ``_options`` holds :class:`FillOptions` and :class:`UpsampleOptions` (every knob, torch-free);
``_fill`` is the thin public layer that validates and dispatches.
"""

from ..._lazy import lazy_exports

#: Public name -> private module (imported on first use: the options and method list load without torch).
_EXPORTS = {
    **dict.fromkeys(("METHODS", "AXES", "FillOptions", "UpsampleOptions", "parse_slice_list"), "_options"),
    **dict.fromkeys(("FillResult", "find_missing_slices", "fill_slices", "upsample_slices"), "_fill"),
    "default_budget_seconds": "_auto",  # auto's budget when none is given (the enhance pipeline sums it)
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
