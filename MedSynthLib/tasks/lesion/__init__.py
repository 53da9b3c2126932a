"""Synthetic lesions with exact ground-truth labels.

Public surface: :class:`LesionSpec` (one lesion, fully resolved), the modality presets, :func:`insert_lesions`
(the task), :func:`provenance_metadata` (the header note that a volume holds synthetic lesions), the automatic
tissue region (:func:`auto_region`) and the measures the guarantees are stated in (:func:`contrast_of`,
:func:`contrast_error`, :func:`noise_ratio`, :func:`shell_mask`), which benchmarks and users check results with.
Private modules: ``_shape`` (outlines), ``_render`` (voxels and labels), ``_region`` (placement),
``_presets``, ``_measure``, ``_inpaint`` (learned appearance), ``_insert`` (the thin public layer).
"""

from ._insert import (CONTRAST_MODES, LABEL_CLASSES, PRESETS, LesionResult, LesionSpec, Preset, insert_lesions,
                      list_presets, provenance_metadata)
from ._measure import contrast_error, contrast_of, noise_ratio, shell_mask
from ._region import auto_region

__all__ = ["LesionSpec", "LesionResult", "PRESETS", "Preset", "list_presets", "insert_lesions",
           "provenance_metadata", "CONTRAST_MODES", "LABEL_CLASSES", "auto_region", "contrast_of",
           "contrast_error", "noise_ratio", "shell_mask"]
