"""The three tasks of MedSynth as pure functions: a Volume in, a frozen result dataclass out.

One subpackage per task (``fill``, ``lesion``, ``enhance``), each listing its public names in ``__all__``; the
task functions are re-exported here, so ``from MedSynthLib.tasks import fill_slices, insert_lesions, denoise`` works.
Each result carries the output volume(s) and a ``report`` dict with at least ``task``, ``method``, ``device``,
``seconds`` and ``warnings`` (a list of strings).
"""

from . import enhance, fill, lesion
from .enhance import correct_bias, denoise, estimate_noise, super_resolve
from .fill import fill_slices, find_missing_slices, parse_slice_list, upsample_slices
from .lesion import LesionSpec, insert_lesions, list_presets

__all__ = ["fill", "lesion", "enhance", "find_missing_slices", "fill_slices", "upsample_slices", "parse_slice_list",
           "LesionSpec", "insert_lesions", "list_presets", "estimate_noise", "denoise", "correct_bias",
           "super_resolve"]
