"""The options of ``medsynth augment``: the run's own knobs and the library's :class:`LesionOptions`, in one
frozen :class:`AugmentOptions` that travels unchanged to every worker.

Imports no task body, no torch and no image library: the CLI builds its flags from these knobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import InputError
from ..options import TaskOptions, knob, seed_knob
from ..tasks.lesion import LesionOptions

__all__ = ["AugmentOptions", "COHORT_LESION", "FINGERPRINT_FORMAT"]

#: The lesion options of a cohort run unless given: a preset by modality, one lesion, the automatic region.
COHORT_LESION = {"preset": "auto", "count": 1, "region": "auto"}

FINGERPRINT_FORMAT = "medsynth-augment-1"

#: The lesion options that decide an output's bytes, in the order the fingerprint has always listed them.
#: The others do not (``device``) or are fixed for a cohort (``seed``, ``label_mode``; specs, centres and
#: masks are refused), see :meth:`AugmentOptions._check`.
_FINGERPRINT_LESION = ("preset", "count", "size_mm", "contrast", "region", "min_spacing_mm", "modality",
                       "shape_model", "appearance_model", "appearance_steps")


def _lesion_options(lesion: Any) -> LesionOptions:
    """The cohort's LesionOptions: an object as given, or a mapping on top of :data:`COHORT_LESION`."""
    if isinstance(lesion, LesionOptions):
        return lesion
    if lesion is not None and not isinstance(lesion, Mapping):
        raise InputError(f"lesion options must be LesionOptions or a mapping, got {type(lesion).__name__}")
    given = dict(lesion or {})
    moved = sorted({"lesion_label", "oedema_label"} & set(given))
    if moved:
        raise InputError(f"{' and '.join(moved)} {'is an option' if len(moved) == 1 else 'are options'} of augment "
                         f"itself ({moved[0]}=...), not of the lesions")
    if given.get("specs") is not None or given.get("centres") is not None:
        raise InputError("augment places lesions at random in every scan: give count, not specs or centres")
    return LesionOptions.build({**COHORT_LESION, **given})


@dataclass(frozen=True)
class AugmentOptions(TaskOptions):
    """Options of :func:`~MedSynthLib.augment.augment`: how many outputs, how they are run, their label ids, and
    the lesions (``lesion``: :class:`~MedSynthLib.tasks.lesion.LesionOptions`, or a mapping of its fields on top
    of :data:`COHORT_LESION`).

    Examples
    --------
    >>> options = AugmentOptions.build(variants=2, lesion={"size_mm": 6})
    >>> options.lesion.preset, options.lesion.count, options.lesion.size_mm
    ('auto', 1, 6.0)
    >>> AugmentOptions.build(lesion={"size_m": 6})
    Traceback (most recent call last):
    ...
    MedSynthLib.errors.InputError: unknown option 'size_m'; the options are preset, count, size_mm, contrast, region, min_spacing_mm, label_mode, modality, seed, appearance_steps, device, specs, centres, shape_model, appearance_model, region_mask, labels
    """

    variants: int = knob(1, low=1, high=10000, help="synthetic versions per scan")
    seed: int = seed_knob("the run's seed: each output's seed comes from (seed, the source's content, the variant), so "
                          "the bytes do not depend on order, jobs or machine")
    jobs: int = knob(1, low=1, high=1024, help="worker processes on this machine, each with its share of the cores")
    strict: bool = knob(False, help="stop at the first bad scan instead of recording it and going on")
    lesion_label: Optional[int] = knob(None, low=1, high=65535, optional=True,
                                       help="class id of the synthetic lesions (unset: one more than the largest "
                                       "id in the input labels, 1 without)")
    oedema_label: Optional[int] = knob(None, low=1, high=65535, optional=True,
                                       help="class id of synthetic oedema (unset: oedema is not labelled)")
    #: The lesions: LesionOptions, or a mapping of its fields (on top of COHORT_LESION); None: COHORT_LESION.
    lesion: Any = None
    #: A Dask scheduler address, client or cluster object (not part of what the outputs hold).
    scheduler: Any = field(default=None, repr=False, compare=False)

    def _check(self) -> None:
        if not isinstance(self.strict, bool):
            raise InputError(f"strict must be True or False, got {self.strict!r}")
        if self.oedema_label is not None and self.oedema_label == self.lesion_label:
            raise InputError("the oedema label must differ from the lesion label")
        lesion = _lesion_options(self.lesion)
        if lesion.count is None:
            raise InputError("augment places lesions at random in every scan: give count, not specs or centres")
        if lesion.region_mask is not None or lesion.labels is not None:
            raise InputError("per-scan regions and label maps come from the manifest's region and label columns, "
                             "not from the lesion options")
        if lesion.label_mode != "classes":
            raise InputError("augment writes class labels (--lesion-label, --oedema-label): label_mode must be classes")
        if lesion.seed != 0:
            raise InputError("augment derives every output's lesion seed from the run's seed: give seed to augment, "
                             "not in the lesion options")
        for name in ("shape_model", "appearance_model"):
            if getattr(lesion, name) is not None and not isinstance(getattr(lesion, name), (str, Path)):
                raise InputError(f"{name} must be a package path for augment (every worker loads it)")
        if lesion.region is None:  # a count places lesions in the automatic region: say so (the fingerprint)
            lesion = lesion.replace(region="auto")
        object.__setattr__(self, "lesion", lesion)

    def fingerprint(self) -> dict[str, Any]:
        """What decides the outputs' bytes (the device and the way of running do not): a dataset made with
        another fingerprint is refused. Model packages are named by file name and sha256."""
        from ._inputs import file_sha256

        data: dict[str, Any] = {"format": FINGERPRINT_FORMAT, "seed": self.seed}
        data.update((name, getattr(self.lesion, name)) for name in _FINGERPRINT_LESION)
        data.update(lesion_label=self.lesion_label, oedema_label=self.oedema_label)
        for key in ("shape_model", "appearance_model"):
            if data[key]:
                data[key] = {"name": Path(data[key]).name, "sha256": file_sha256(data[key])}
        return data
