"""The three tasks of MedSynth as pure functions: a Volume in, a frozen result dataclass out.

One subpackage per task (``fill``, ``lesion``, ``enhance``), each listing its public names in ``__all__``; the
task functions are re-exported here, so ``from MedSynthLib.tasks import fill_slices, insert_lesions, denoise`` works.
Each result carries the output volume(s) and a ``report`` dict with at least ``task``, ``method``, ``device``,
``seconds`` and ``warnings`` (a list of strings).
"""

from .._lazy import lazy_exports

#: Public name -> the task subpackage that defines it (imported on first use: a task does not load the others).
_EXPORTS = {
    **dict.fromkeys(("find_missing_slices", "fill_slices", "upsample_slices", "parse_slice_list"), "fill"),
    **dict.fromkeys(("LesionSpec", "insert_lesions", "list_presets"), "lesion"),
    **dict.fromkeys(("estimate_noise", "estimate_noise_map", "denoise", "correct_bias", "super_resolve"), "enhance"),
}

__all__ = ["fill", "lesion", "enhance", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
