"""Lesion presets: physical parameter ranges per modality, drawn into explicit specs from a seed.

Ranges come from the radiology literature's typical appearances and were
checked against the two real labelled lesions in ``../shared/data``
(brain1: a 16 cm^3 enhancing lesion on T1 post-contrast; lung1: a 1.4 cm^3
solid nodule at about 0-60 HU in lung at about -850 HU; breast1: a 0.13 cm^3
enhancing mass, 6.3 mm across, +1.11 over the tissue around it, sphericity 0.73).

Ranges wider than the textbook value, for physical reasons (checked against every real lesion of the corpus by
``benchmarks/lesion_realism.py``, which measures real and synthetic lesions with the same functions):

- edges (10-90 % rise): lung1's nodule measures 2.7 mm on 5 mm slices (partial volume through-plane, breathing
  motion, a soft kernel), beyond ``ct-nodule-solid``'s 0.3-0.8 mm rendering (0.86-2.70 mm measured); 1.5 is the
  setting that measures 2.7. breast1's mass measures 1.5 mm (an indistinct margin, BI-RADS) against 1.0-1.3 mm
  for ``mr-breast-mass`` at 0.3-1.0: now up to 2.0;
- shape: lung1's nodule (sphericity 0.76) and breast1's mass (0.73) are less round than their presets drew
  (0.78-0.81, 0.85-0.89): irregularity up to 0.6 (the spec's limit; lobulated and spiculated margins are the
  malignant ones); brain1's tumour (0.48, in two pieces) is further still, beyond any family (``infiltrative`` reaches 0.66, and
  its field made a 31.5 mm lesion need a region 100-110 mm across: 3 of 8 placements in brain1 refused, so the
  enhancing presets do not draw it);
- enhancement: brain1's tumour measures +0.40 over the brain around it, at the bottom of 0.4-0.8 as rendered
  (+0.52 to +0.83 measured: the synthetic oedema darkens the shell it is measured against); weakly and
  patchily enhancing parts and partial volume on 6.5 mm slices: contrast from 0.25.

Two more ranges are wider than the textbook value:

- ``ct-nodule-solid`` contrast: the contrast is the mean over the *label*, and
  a label drawn on CT includes the nodule's partial-volume edge. A soft-tissue
  nodule (20-60 HU inside) in lung (-850 HU) on 3-5 mm slices has a third to a
  half of its labelled voxels on that edge, half lung, half nodule, so its
  labelled mean is about -150 to +40 HU; requesting 10-60 HU there forced the
  interior well above soft tissue. Range -150..60 HU.
- ``mr-enhancing-lesion``: what ``auto`` draws on a head MR. Which enhancing lesion a scan holds is not
  known from its voxels (a post-contrast T1 looks like a plain T1 outside vessels), and real ones span 5 mm
  metastases to brain1's 31.5 mm tumour: trained only on ``mr-metastasis`` (5-15 mm) a segmenter found brain1's
  tumour at Dice 0.19, on ``mr-enhancing-tumour`` (15-35 mm) at 0.58. The union of the two ranges, sizes
  log-uniform (as many 5-10 mm lesions as 17-35 mm ones).
- ``mr-enhancing-tumour`` core: enhancing tumours are rim-enhancing around
  necrosis (glioblastoma) or enhance solidly (metastases, lymphoma, parts of
  gliomas); the core fraction goes from 0 (solid) to 0.65, and the internal
  heterogeneity up to 0.3 (patchy enhancement).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Preset", "PRESETS", "REGIONS", "list_presets", "draw_parameters"]

#: The tissues an automatic region finds (``auto_region``; a preset's ``region`` is one of them).
REGIONS = ("white-matter", "brain", "lung", "liver", "brain-ct", "breast")


@dataclass(frozen=True)
class Preset:
    """A named family of lesions.

    Attributes
    ----------
    name, modality, description : str
        ``modality`` is ``"CT"`` or ``"MR"``; presets refuse the other one.
    region : str
        What ``region="auto"`` finds for this preset, one of :data:`REGIONS`: ``"white-matter"``, ``"brain"``,
        ``"lung"``, ``"liver"``, ``"brain-ct"`` or ``"breast"``.
    ranges : dict
        Per ``LesionSpec`` field: ``(low, high)`` drawn uniformly (``diameter_mm``
        log-uniformly), a tuple of choices (strings), or a fixed value.
    """

    name: str
    modality: str
    description: str
    region: str
    ranges: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "modality": self.modality, "description": self.description,
                "auto_region": self.region, "ranges": {k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in self.ranges.items()}}


_PRESET_LIST = [
    Preset("mr-wmh", "MR", "T2/FLAIR white-matter hyperintensities: small ovoid bright foci in white matter "
           "(periventricular or deep), no mass effect", "white-matter",
           {"diameter_mm": (3.0, 10.0), "shape": ("round", "lobulated"), "elongation": (1.2, 2.0),
            "contrast_mode": "relative", "contrast": (0.3, 0.6), "heterogeneity": (0.03, 0.1),
            "edge_width_mm": (0.5, 1.5)}),
    Preset("mr-enhancing-tumour", "MR", "T1 post-contrast enhancing tumour (glioblastoma-like): enhancing "
           "ring, dark necrotic core, hypointense oedema rim, mass effect", "brain",
           {"diameter_mm": (15.0, 35.0), "shape": ("lobulated", "irregular"), "elongation": (1.0, 1.4),
            "contrast_mode": "relative", "contrast": (0.25, 0.8), "heterogeneity": (0.08, 0.3),
            "edge_width_mm": (0.5, 1.5), "core_fraction": (0.0, 0.65), "core_contrast": (-0.5, -0.3),
            "oedema_mm": (3.0, 7.0), "oedema_contrast": (-0.15, -0.06), "mass_effect_mm": (1.0, 3.0),
            "irregularity": (0.3, 0.6)}),
    Preset("mr-metastasis", "MR", "T1 post-contrast brain metastasis: small round enhancing lesion, sometimes a "
           "small necrotic centre, oedema (at the grey-white junction: anywhere in the brain)", "brain",
           {"diameter_mm": (5.0, 15.0), "shape": ("round", "lobulated"), "elongation": (1.0, 1.2),
            "contrast_mode": "relative", "contrast": (0.4, 0.8), "heterogeneity": (0.05, 0.12),
            "edge_width_mm": (0.5, 1.0), "core_fraction": (0.0, 0.35), "core_contrast": (-0.3, -0.1),
            "oedema_mm": (2.0, 5.0), "oedema_contrast": (-0.12, -0.05), "mass_effect_mm": (0.0, 0.8)}),
    Preset("mr-enhancing-lesion", "MR", "T1 post-contrast enhancing brain lesion of any kind, from a small solid "
           "metastasis to a large ring-enhancing tumour with a necrotic core, oedema and mass effect (what preset "
           "auto draws on a head MR: the ranges of mr-metastasis and mr-enhancing-tumour together)", "brain",
           {"diameter_mm": (5.0, 35.0), "shape": ("round", "lobulated", "irregular"),
            "elongation": (1.0, 1.4), "contrast_mode": "relative", "contrast": (0.25, 0.8), "heterogeneity": (0.05, 0.3),
            "edge_width_mm": (0.5, 1.5), "core_fraction": (0.0, 0.65), "core_contrast": (-0.5, -0.1),
            "oedema_mm": (2.0, 5.0), "oedema_contrast": (-0.15, -0.05), "mass_effect_mm": (0.0, 1.5),
            "irregularity": (0.0, 0.6)}),
    Preset("mr-breast-mass", "MR", "T1 post-contrast / DCE enhancing breast mass (BI-RADS mass: oval, round or "
           "irregular; circumscribed to irregular/spiculated margins; homogeneous, heterogeneous or rim enhancement)",
           "breast",
           {"diameter_mm": (5.0, 50.0), "shape": ("round", "lobulated", "irregular"), "elongation": (1.0, 1.6),
            "contrast_mode": "relative", "contrast": (0.4, 1.5), "heterogeneity": (0.05, 0.2),
            "edge_width_mm": (0.3, 2.0), "core_fraction": (0.0, 0.5), "core_contrast": (-0.6, -0.3),
            "irregularity": (0.1, 0.6)}),
    Preset("ct-nodule-solid", "CT", "CT solid lung nodule: soft-tissue density (HU; the labelled mean, partial-"
           "volume edge included), round, lobulated or spiculated", "lung",
           {"diameter_mm": (5.0, 20.0), "shape": ("round", "lobulated", "irregular"), "elongation": (1.0, 1.3),
            "contrast_mode": "absolute", "contrast": (-150.0, 60.0), "heterogeneity": (0.02, 0.06),
            "edge_width_mm": (0.3, 1.5), "irregularity": (0.06, 0.6)}),
    Preset("ct-nodule-ground-glass", "CT", "CT ground-glass lung nodule: hazy density (HU) through which "
           "vessels stay visible, soft margin", "lung",
           {"diameter_mm": (8.0, 25.0), "shape": ("round", "lobulated"), "elongation": (1.0, 1.4),
            "contrast_mode": "absolute", "contrast": (-700.0, -450.0), "heterogeneity": (0.05, 0.12),
            "edge_width_mm": (1.0, 2.5), "anatomy": (0.5, 0.8)}),
    Preset("ct-nodule-part-solid", "CT", "CT part-solid lung nodule: ground-glass halo (HU) around a solid "
           "core (HU, label 2)", "lung",
           {"diameter_mm": (10.0, 25.0), "shape": ("round", "lobulated"), "elongation": (1.0, 1.3),
            "contrast_mode": "absolute", "contrast": (-650.0, -450.0), "heterogeneity": (0.05, 0.1),
            "edge_width_mm": (1.0, 2.0), "core_fraction": (0.35, 0.6), "core_contrast": (-20.0, 50.0),
            "anatomy": (0.4, 0.7)}),
    Preset("ct-lung-mass", "CT", "CT lung mass (a lung tumour above 3 cm: T2-T3 lung cancer): soft-tissue density "
           "(HU), lobulated or spiculated, heterogeneous (necrosis), low-attenuation necrotic core possible", "lung",
           {"diameter_mm": (30.0, 70.0), "shape": ("lobulated", "irregular"), "elongation": (1.0, 1.4),
            "contrast_mode": "absolute", "contrast": (10.0, 60.0), "heterogeneity": (0.05, 0.2),
            "edge_width_mm": (0.5, 1.5), "core_fraction": (0.0, 0.5), "core_contrast": (-40.0, -10.0),
            "irregularity": (0.2, 0.45)}),
    Preset("ct-liver-hypodense", "CT", "CT hypodense liver lesion (cyst/metastasis-like): darker than liver "
           "by an offset in HU", "liver",
           {"diameter_mm": (8.0, 30.0), "shape": ("round", "lobulated"), "elongation": (1.0, 1.3),
            "contrast_mode": "offset", "contrast": (-60.0, -25.0), "heterogeneity": (0.05, 0.15),
            "edge_width_mm": (0.5, 1.5)}),
    Preset("mr-liver-lesion", "MR", "MR focal liver lesion on T1 (pre-contrast or portal-venous phase): metastasis "
           "or cyst darker than the liver, round or lobulated, sharply marginated", "liver",
           {"diameter_mm": (8.0, 30.0), "shape": ("round", "lobulated"), "elongation": (1.0, 1.3),
            "contrast_mode": "relative", "contrast": (-0.6, -0.2), "heterogeneity": (0.05, 0.15),
            "edge_width_mm": (0.5, 1.5)}),
    Preset("ct-haemorrhage", "CT", "CT intraparenchymal haemorrhage: hyperdense blood (HU) with a thin "
           "hypodense oedema rim and mass effect", "brain-ct",
           {"diameter_mm": (10.0, 35.0), "shape": ("lobulated", "irregular"), "elongation": (1.0, 1.6),
            "contrast_mode": "absolute", "contrast": (55.0, 80.0), "heterogeneity": (0.05, 0.12),
            "edge_width_mm": (0.5, 1.0), "oedema_mm": (1.5, 4.0), "oedema_contrast": (-10.0, -4.0),
            "mass_effect_mm": (0.5, 2.0)}),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESET_LIST}


def list_presets() -> list[dict]:
    """Name, modality, description, automatic region and parameter ranges of every preset."""
    return [p.as_dict() for p in PRESETS.values()]


def draw_parameters(preset: Preset, rng: np.random.Generator) -> dict[str, Any]:
    """One draw of every field the preset ranges over; order of draws is fixed, so a seed reproduces it."""
    values: dict[str, Any] = {}
    for name in sorted(preset.ranges):
        spec = preset.ranges[name]
        if isinstance(spec, tuple) and spec and isinstance(spec[0], str):
            values[name] = str(spec[int(rng.integers(len(spec)))])
        elif isinstance(spec, tuple):
            low, high = float(spec[0]), float(spec[1])
            if name == "diameter_mm":
                values[name] = float(np.exp(rng.uniform(np.log(low), np.log(high))))
            else:
                values[name] = float(rng.uniform(low, high))
        else:
            values[name] = spec
    return values
