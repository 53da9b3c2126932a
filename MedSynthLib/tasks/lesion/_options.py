"""The options of :func:`insert_lesions` (every knob with its default, range, choices and help) and the two
rules that pick by modality: :func:`default_preset` and :func:`default_region`.

Torch-free and scipy-free on purpose (the preset table, numpy and the core only): the Slicer panel, the CLI,
``augment`` and the MONAI transform read the preset list, the ranges and the defaults from here, and build the
one :class:`LesionOptions` that ``insert_lesions`` receives (``from MedSynthLib.tasks.lesion import
LesionOptions, default_preset`` imports only this module and the preset table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import numpy as np

from ...errors import InputError
from ...lesion_segments import LABEL_MODES
from ...options import DEVICE_HELP, TaskOptions, device_knob, knob, seed_knob
from ...volume import Volume
from ._presets import PRESETS, REGIONS, Preset

__all__ = ["LesionOptions", "MODALITIES", "DEFAULT_PRESETS", "BODY_PARTS", "auto_preset", "default_preset",
           "default_region"]

#: The modalities presets are made for (CT in Hounsfield units).
MODALITIES = ("CT", "MR")

#: What ``preset="auto"`` draws on each modality when no body part is known (see :func:`default_preset`).
DEFAULT_PRESETS = {"CT": "ct-nodule-solid", "MR": "mr-enhancing-lesion"}

#: Body parts :func:`default_preset` knows, with the words (DICOM ``BodyPartExamined`` included) read as each.
BODY_PARTS = {"head": ("head", "brain", "skull"), "chest": ("chest", "thorax", "lung", "lungs"),
              "abdomen": ("abdomen", "liver"), "breast": ("breast", "breasts", "mamma")}

_BY_BODY_PART = {("CT", "head"): "ct-haemorrhage", ("CT", "chest"): "ct-nodule-solid",
                 ("CT", "abdomen"): "ct-liver-hypodense", ("MR", "head"): "mr-enhancing-lesion",
                 ("MR", "breast"): "mr-breast-mass", ("MR", "abdomen"): "mr-liver-lesion"}

_PRESET_HELP = ("lesion family (see medsynth lesion --list-presets); checks the modality; auto: by modality and the "
                f"body part in view ({', '.join(f'{m}: {p}' for m, p in DEFAULT_PRESETS.items())} when none is "
                "recognised); none: auto for lesions placed at random (a count), the spec defaults at given centres")
_REGION_HELP = ("where random lesions go: auto (the preset's tissue: the brain on MR, lungs on CT) or a tissue "
                f"({', '.join(REGIONS)}); unset: auto for random lesions, no check of given centres")
_CONTRAST_HELP = ("lesion contrast in the preset's mode (a relative fraction on MR, HU on CT; overrides the "
                  "preset's draw)")
_LABEL_MODE_HELP = "classes (1 lesion, 2 core, 3 oedema) or instances (lesion n has id n)"


def _modality(modality: Any) -> str:
    word = str(modality).strip().upper() if modality is not None else ""
    if word not in MODALITIES:
        raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    return word


def default_preset(modality: str, body_part: Optional[str] = None) -> str:
    """The preset for a volume of ``modality`` (``"CT"`` or ``"MR"``), and of ``body_part`` where known.

    The one rule every front end uses (``preset="auto"``, ``medsynth augment``, the Slicer panel's default):
    CT - a solid lung nodule (``ct-nodule-solid``); head: ``ct-haemorrhage``; abdomen: ``ct-liver-hypodense``.
    MR breast: an enhancing breast mass (``mr-breast-mass``); MR abdomen: a T1-dark liver lesion (``mr-liver-lesion``).
    MR (head, or no body part known) - an enhancing brain lesion of any size (``mr-enhancing-lesion``: small
    metastases to large ring-enhancing tumours; which one a scan holds is not known from its voxels), a T1
    post-contrast lesion in the brain found by skull stripping; ``mr-wmh`` is a T2/FLAIR finding, on whose images
    white matter is darker than grey matter.

    Parameters
    ----------
    modality : {"CT", "MR"}
        Case-insensitive (``intensity.guess_modality`` gives one from the voxels).
    body_part : str, optional
        ``head``, ``chest``, ``abdomen`` or ``breast`` (or a word of :data:`BODY_PARTS`, such as DICOM's ``BRAIN``).

    Raises
    ------
    InputError
        Another modality, an unknown body part, or one without a preset for the modality (MR chest).

    Examples
    --------
    >>> default_preset("MR"), default_preset("ct"), default_preset("CT", "HEAD")
    ('mr-enhancing-lesion', 'ct-nodule-solid', 'ct-haemorrhage')
    """
    found = _modality(modality)
    if body_part is None:
        return DEFAULT_PRESETS[found]
    word = str(body_part).strip().lower()
    part = next((name for name, words in BODY_PARTS.items() if word in words), None)
    if part is None:
        words = sorted({w for ws in BODY_PARTS.values() for w in ws} - set(BODY_PARTS))
        raise InputError(f"body part must be one of {', '.join(BODY_PARTS)} (or {', '.join(words)}), got {body_part!r}")
    if (found, part) not in _BY_BODY_PART:
        raise InputError(f"no {found} preset for the {part}; the {found} presets are "
                         f"{', '.join(p.name for p in PRESETS.values() if p.modality == found)}")
    return _BY_BODY_PART[found, part]


def auto_preset(volume: Volume, modality: Optional[str] = None) -> tuple[str, Optional[str]]:
    """``preset="auto"`` on a volume: :func:`default_preset` of its modality (guessed when not given) and of the
    body part its voxels show (``_region.guess_body_part``: a brain makes a head, lungs a chest, a liver an abdomen,
    a brainless MR trunk an abdomen, a narrow brainless MR a breast). Returns the preset and the body part (None:
    none recognised, the modality's default). A body part without a preset of the modality (an MR chest) gives the
    modality's default.
    Loads scipy (the body part is found on the voxels).
    """
    from ...intensity import guess_modality
    from ._region import guess_body_part

    found = _modality(modality) if modality is not None else guess_modality(volume)
    part = guess_body_part(volume, found)
    if part is None or (found, part) not in _BY_BODY_PART:
        return DEFAULT_PRESETS[found], part
    return _BY_BODY_PART[found, part], part


def default_region(preset: Union[str, Preset, None], modality: Optional[str] = None) -> str:
    """The tissue ``region="auto"`` finds: the preset's own, or (no preset, or ``"auto"``) that of the modality's
    :func:`default_preset` - the brain on MR, lungs on CT. One of :data:`~._presets.REGIONS`.

    Examples
    --------
    >>> default_region("mr-enhancing-tumour"), default_region(None, "CT"), default_region("auto", "MR")
    ('brain', 'lung', 'brain')
    """
    name = preset.name if isinstance(preset, Preset) else preset
    if name in (None, "auto"):
        name = default_preset(modality)
    if name not in PRESETS:
        raise InputError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return PRESETS[name].region


def _is_mask(value: Any) -> bool:
    return value is not None and not isinstance(value, str)


def _route_region(given: Mapping[str, Any]) -> dict[str, Any]:
    """``region`` as callers give it (a name, or a mask) split into the ``region`` knob and the ``region_mask``.

    A mask replaces any region name; a name replaces any mask (unless a ``region_mask`` is given too, which
    :meth:`LesionOptions._check` then refuses).
    """
    given = dict(given)
    if "region" not in given:
        return given
    value = given["region"]
    if _is_mask(value):
        if given.get("region_mask") is not None:
            raise InputError("give the region as a name or as a mask (region_mask), not both")
        given["region"], given["region_mask"] = None, value
    elif value is not None:
        given.setdefault("region_mask", None)
    return given


def _centres(centres: Any) -> tuple[tuple[float, float, float], ...]:
    try:
        points = [np.asarray(c, dtype=np.float64) for c in centres]
    except (TypeError, ValueError):
        points = []
    if not points or any(p.shape != (3,) or not np.all(np.isfinite(p)) for p in points):
        raise InputError("centres must be a non-empty list of (R, A, S) points in mm")
    return tuple(tuple(float(x) for x in p) for p in points)


@dataclass(frozen=True)
class LesionOptions(TaskOptions):
    """Options of :func:`~MedSynthLib.tasks.lesion.insert_lesions`: one request, built once, checked once.

    The knobs (what the CLI and the panel offer) come first; then the data of a call, plain fields that front
    ends fill from files or the scene: ``specs`` or ``centres`` (or ``count``: exactly one of the three),
    the models, ``region_mask`` (a region given as a label map instead of a name) and ``labels`` (a label map
    the mass effect moves). ``region=`` given as a mask (a :class:`~MedSynthLib.volume.Volume` or a boolean
    array on the volume's grid, as ``insert_lesions(volume, region=mask)`` takes it) is stored as the
    ``region_mask``. ``size`` is accepted for ``size_mm``.

    Examples
    --------
    >>> LesionOptions(count=2, preset="MR-WMH", modality="mr").preset, LesionOptions(count=2, modality="mr").modality
    ('mr-wmh', 'MR')
    >>> LesionOptions.build(count=1, size=6).size_mm
    6.0
    >>> LesionOptions(count=1, centres=[(0, 0, 0)])
    Traceback (most recent call last):
    ...
    MedSynthLib.errors.InputError: give exactly one of specs, centres or count (--spec, --at or --count); got centres and count
    """

    aliases = {"size": "size_mm"}

    preset: Optional[str] = knob(None, choices=("auto", *PRESETS), optional=True, help=_PRESET_HELP)
    count: Optional[int] = knob(None, low=1, high=1000, optional=True,
                                help="lesions drawn from the preset and placed at random inside the region")
    size_mm: Optional[float] = knob(None, low=0.5, high=300.0, optional=True,
                                    help="lesion diameter in mm (overrides the preset's draw)")
    contrast: Optional[float] = knob(None, low=-4096.0, high=4096.0, optional=True, help=_CONTRAST_HELP)
    region: Optional[str] = knob(None, choices=("auto", *REGIONS), optional=True, help=_REGION_HELP)
    min_spacing_mm: float = knob(5.0, low=0.0, help="gap in mm between random lesions' bounding balls")
    label_mode: str = knob("classes", choices=LABEL_MODES, help=_LABEL_MODE_HELP)
    modality: Optional[str] = knob(None, choices=MODALITIES, optional=True,
                                   help="CT or MR: overrides the modality guess used to check presets and clip values")
    seed: int = seed_knob()
    appearance_steps: int = knob(20, low=1, high=1000,
                                 help="DDIM steps of a diffusion appearance model (10-50 useful; more is slower)")
    device: str = device_knob("where the appearance model runs: " + DEVICE_HELP)
    #: Explicit lesions (LesionSpec objects or dicts); a spec without a centre is placed at random.
    specs: Optional[tuple] = None
    #: Lesion centres in RAS mm, the other parameters drawn from the preset.
    centres: Optional[tuple] = None
    #: A lesion-shape VAE package (path or loaded): lesions drawn from a preset get learned shapes.
    shape_model: Any = None
    #: A lesion-inpaint package (path or loaded): each lesion's interior painted from the surrounding tissue.
    appearance_model: Any = None
    #: The region as a label map (Volume or array on the volume's grid; non-zero voxels), instead of a name.
    region_mask: Any = field(default=None, repr=False, compare=False)
    #: A label map on the volume's grid that the mass effect moves too.
    labels: Optional[Volume] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.preset, Preset):  # a preset of the table, as an object: its name
            if PRESETS.get(self.preset.name) != self.preset:
                raise InputError(f"preset {self.preset.name!r} is not one of the presets ({', '.join(PRESETS)})")
            object.__setattr__(self, "preset", self.preset.name)
        super().__post_init__()

    @classmethod
    def build(cls, options: Optional[Any] = None, /, **changes: Any) -> "LesionOptions":
        """As :meth:`TaskOptions.build`; a ``region`` given as a mask is the ``region_mask``."""
        if isinstance(options, Mapping):
            options = _route_region(options)
        return super().build(options, **_route_region(changes))

    def _check(self) -> None:
        given = [name for name in ("specs", "centres", "count") if getattr(self, name) is not None]
        if len(given) != 1:
            raise InputError("give exactly one of specs, centres or count (--spec, --at or --count)"
                             + (f"; got {' and '.join(given)}" if given else ""))
        if self.centres is not None:
            object.__setattr__(self, "centres", _centres(self.centres))
        if self.specs is not None:
            if isinstance(self.specs, (str, bytes, Mapping)) or not hasattr(self.specs, "__iter__"):
                raise InputError(f"specs must be a list of lesion specs (LesionSpec objects or dicts), got {self.specs!r}")
            object.__setattr__(self, "specs", tuple(self.specs))
        if self.modality is not None:
            object.__setattr__(self, "modality", self.modality.upper())
        if self.region is not None and self.region_mask is not None:
            raise InputError("give the region as a name or as a mask (region_mask), not both")
        if self.labels is not None and not isinstance(self.labels, Volume):
            raise InputError(f"labels must be a label map Volume on the volume's grid, got {type(self.labels).__name__}")

    def places_at_random(self) -> bool:
        """True when lesions are placed at random (a count, or a spec without a centre): in the region, which is
        then ``"auto"`` unless one is given."""
        if self.count is not None:
            return True
        return self.specs is not None and any(
            (s.get("centre_ras") if isinstance(s, Mapping) else getattr(s, "centre_ras", None)) is None
            for s in self.specs)

    def region_tissue(self, modality: Optional[str] = None) -> Optional[str]:
        """The tissue the automatic region finds for these options on a volume of ``modality`` (used when the
        options name none): the named tissue, or :func:`default_region` for ``"auto"`` (also what no region
        means for lesions placed at random); None for a mask, or given centres without a region."""
        if self.region_mask is not None:
            return None
        region = self.region if self.region is not None else ("auto" if self.places_at_random() else None)
        if region != "auto":
            return region
        return default_region(self.preset, self.modality or modality)
