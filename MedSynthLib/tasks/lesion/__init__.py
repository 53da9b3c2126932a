"""Synthetic lesions with exact ground-truth labels.

Public surface: :class:`LesionOptions` (every option of a call, checked once), :func:`default_preset` and
:func:`default_region` (the one rule that picks by modality), :class:`LesionSpec` (one lesion, fully resolved),
the modality presets, :func:`insert_lesions` (the task), :func:`provenance_metadata` (the header note that a
volume holds synthetic lesions), the automatic tissue region (:func:`auto_region`) and the measures the
guarantees are stated in (:func:`contrast_of`, :func:`contrast_error`, :func:`noise_ratio`, :func:`shell_mask`),
which benchmarks and users check results with.
Private modules: ``_options`` (the options and defaults, torch- and scipy-free), ``_presets`` (the table),
``_specs`` (resolving), ``_shape`` (outlines), ``_render`` and ``_compose`` (voxels and labels), ``_region``
(placement), ``_measure``, ``_report``, ``_inpaint`` (learned appearance), ``_insert`` (the thin public layer).
"""

from ..._lazy import lazy_exports

#: Public name -> private module (imported on first use: the options, presets and defaults load without
#: torch or scipy, for the Slicer panel and the CLI's choices).
_EXPORTS = {
    **dict.fromkeys(("LesionOptions", "MODALITIES", "DEFAULT_PRESETS", "BODY_PARTS", "default_preset", "auto_preset",
                     "default_region"), "_options"),
    **dict.fromkeys(("PRESETS", "Preset", "REGIONS", "list_presets"), "_presets"),
    **dict.fromkeys(("LesionSpec", "CONTRAST_MODES"), "_specs"),
    **dict.fromkeys(("LesionResult", "insert_lesions", "provenance_metadata", "LABEL_CLASSES"), "_insert"),
    **dict.fromkeys(("contrast_error", "contrast_of", "noise_ratio", "shell_mask"), "_measure"),
    "auto_region": "_region",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
