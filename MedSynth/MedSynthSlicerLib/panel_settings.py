"""The panel's settings in the library's terms, and what the panel offers, read from the library (no Slicer here).

:func:`options_from_settings` turns the parameter node into ``(task, options)``, the same keyword arguments
``MedSynthLogic.process`` and the Python API take (the Enhance tab hands :class:`EnhanceStep` objects, not a
step string). :data:`PANEL_KNOBS` says which library option each widget shows: the panel fills its combo
boxes, spin-box ranges, defaults and tooltips from the options objects at start-up (:func:`panel_knobs`), so
nothing is copied into ``MedSynth.py`` or the ``.ui``. :func:`reasons_not_to_apply` says why Apply is disabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from MedSynthLib.errors import InputError
from MedSynthLib.tasks import enhance as enhance_task
from MedSynthLib.tasks import fill as fill_task
from MedSynthLib.tasks import lesion as lesion_task

__all__ = ["PanelKnob", "PANEL_KNOBS", "NOT_ON_PANEL", "PANEL_ONLY_DEFAULTS", "owner_options", "knob_of", "panel_knobs", "slider_range", "options_from_settings", "reasons_not_to_apply",
           "parse_slice_list", "format_slice_list"]


@dataclass(frozen=True)
class PanelKnob:
    """One widget of the panel showing one library option.

    ``zero`` is the text of the widget's special value 0 where 0 means "not given" (the task decides:
    the automatic budget, the preset's own size); ``labels`` the item texts of a combo box, by value.
    """

    widget: str
    parameter: str
    owner: str  # "fill" | "upsample" | "lesion" | "denoise" | "bias" | "enhance"
    option: str
    zero: Optional[str] = None
    labels: Optional[dict] = None


#: Every panel widget that shows a library option (combo boxes list its choices; spin boxes take its range).
PANEL_KNOBS = (
    PanelKnob("fillAxisComboBox", "fillAxis", "fill", "axis"),
    PanelKnob("fillMethodComboBox", "fillMethod", "fill", "method"),
    PanelKnob("upsampleFactorSpinBox", "upsampleFactor", "upsample", "factor"),
    PanelKnob("timeBudgetSpinBox", "timeBudget", "fill", "time_budget", zero="automatic"),
    PanelKnob("lesionCountSpinBox", "lesionCount", "lesion", "count"),
    PanelKnob("lesionSizeSliderWidget", "lesionSize", "lesion", "size_mm", zero="preset"),
    PanelKnob("lesionContrastSpinBox", "lesionContrast", "lesion", "contrast", zero="preset"),
    PanelKnob("lesionLabelsComboBox", "lesionLabels", "lesion", "label_mode",
              labels={"classes": "per class", "instances": "per lesion"}),
    PanelKnob("biasShrinkSpinBox", "biasShrink", "bias", "shrink"),
    PanelKnob("denoiseMethodComboBox", "denoiseMethod", "denoise", "method"),
    PanelKnob("denoiseStrengthSliderWidget", "denoiseStrength", "denoise", "strength"),
    PanelKnob("enhanceTimeBudgetSpinBox", "enhanceTimeBudget", "enhance", "time_budget", zero="automatic"),
    PanelKnob("seedSpinBox", "seed", "fill", "seed"),
)


#: Library options the panel does not show, and why (a new library option must be added to one of the two lists).
NOT_ON_PANEL = {
    "fill": {"device": "the Device setting", "model": "the Model setting", "method_options": "per-method tuning: "
             "the Python API", "slices": "the Slices field (text)",
             "uncertainty": "the uncertainty check box (yes/no; its tooltip is the library's help)"},
    "upsample": {"device": "the Device setting", "seed": "the Seed setting", "model": "the Model setting",
                 "method_options": "the Python API", "spacing": "a factor is the panel's way", "slice_thickness":
                 "estimated from the data", "axis": "the Fill tab's Axis", "method": "the Fill tab's Method",
                 "time_budget": "the Fill tab's Time budget", "uncertainty": "the Fill tab's uncertainty check box"},
    "lesion": {"preset": "the Preset list (presets with their modality)", "region": "the Mask / region input",
               "min_spacing_mm": "the Python API", "modality": "guessed from the voxels", "seed": "the Seed setting",
               "appearance_steps": "the Python API", "device": "the Device setting"},
    "denoise": {"modality": "guessed from the voxels", "device": "the Device setting", "seed": "the Seed setting",
                "time_budget": "the Enhance tab's Time budget", "threads": "the idle cores", "batch_size":
                "halved on out-of-memory by itself", "local_noise": "auto: the map is followed where it varies",
                "coils": "estimated from the air: Rician or non-central chi as its distribution says"},
    "bias": {"iterations": "the Python API", "control_points": "the Python API", "output_dtype": "auto: never clipped",
             "time_budget": "the Enhance tab's Time budget"},
    "enhance": {"steps": "the Enhance tab's boxes", "device": "the Device setting", "seed": "the Seed setting"},
}

#: Panel fields whose default is the panel's own, where the library has none (the option is then not given).
PANEL_ONLY_DEFAULTS = {"lesionCount": 3, "upsampleFactor": 2}


def owner_options(name: str) -> type:
    """The library's options class behind a :class:`PanelKnob`'s ``owner``."""
    return {"fill": fill_task.FillOptions, "upsample": fill_task.UpsampleOptions, "lesion": lesion_task.LesionOptions,
            "denoise": enhance_task.DenoiseOptions, "bias": enhance_task.BiasOptions,
            "enhance": enhance_task.EnhanceOptions}[name]


def knob_of(entry: PanelKnob):
    """The library's :class:`~MedSynthLib.options.Knob` a widget shows."""
    return owner_options(entry.owner).knob(entry.option)


def panel_knobs() -> dict[str, dict]:
    """Widget name -> what it offers, from the library: ``items`` [(label, value)] or ``low``/``high``,
    ``default``, ``toolTip`` and the special-value text of 0 (``zero``)."""
    found = {}
    for entry in PANEL_KNOBS:
        knob = knob_of(entry)
        offer: dict[str, Any] = {"parameter": entry.parameter, "default": knob.default, "toolTip": knob.help,
                                 "zero": entry.zero}
        if knob.choices is not None:
            offer["items"] = [((entry.labels or {}).get(value, value), value) for value in knob.choices]
        else:
            offer["low"] = 0.0 if entry.zero else float(knob.low if knob.low is not None else -1e9)
            offer["high"] = float(knob.high if knob.high is not None else 1e9)
        found[entry.widget] = offer
    return found


def slider_range(widget: str) -> tuple[float, float]:
    """(low, high) of a slider widget, from the library: Slicer's slider connector needs the range on the
    parameter itself (``WithinRange``), so the parameter node reads it from here instead of copying it."""
    offer = panel_knobs()[widget]
    return offer["low"], offer["high"]


def options_from_settings(p: Any, *, has_centres: bool = False) -> tuple[str, dict]:
    """The panel's settings ``p`` (the parameter node) as ``(task, options)`` in the Python API's terms.

    Centres are not included: the Logic reads them from ``p.lesionCentres`` with the transforms; with
    ``has_centres`` the random count is left out (clicked centres replace it). A 0 in a field whose special
    value is "automatic", "none" or "preset" leaves the option to the library.

    Raises
    ------
    InputError
        A slice list that does not parse or lies outside the volume.
    """
    common = {"device": p.device or "auto", "seed": int(p.seed),
              "model": str(p.modelFile) if p.model == "file" else p.model}
    budget = float((p.enhanceTimeBudget if p.task == "enhance" else p.timeBudget) or 0.0)
    timed = {"time_budget": budget} if budget > 0 else {}
    shown = {"uncertainty": True} if getattr(p, "fillUncertainty", False) else {}
    if p.task == "fill" and p.fillUpsample:
        return "upsample", {**common, "factor": int(p.upsampleFactor), "axis": p.fillAxis, "method": p.fillMethod,
                            **timed, **shown}
    if p.task == "fill":
        axis_size = None
        image = p.inputVolume.GetImageData() if p.inputVolume is not None else None
        if image is not None and p.fillAxis in ("i", "j", "k"):
            axis_size = image.GetDimensions()["ijk".index(p.fillAxis)]
        slices = parse_slice_list(p.fillSlices, size=axis_size)
        return "fill", {**common, "slices": slices, "axis": p.fillAxis, "method": p.fillMethod, **timed, **shown}
    if p.task == "lesion":
        given = {"preset": p.lesionPreset or "auto", "label_mode": p.lesionLabels}
        if not has_centres:
            given["count"] = int(p.lesionCount)
        if float(p.lesionSize or 0.0) > 0:
            given["size_mm"] = float(p.lesionSize)
        if float(p.lesionContrast or 0.0) != 0:
            given["contrast"] = float(p.lesionContrast)
        return "lesion", {**common, **given}
    steps = []
    if p.enhanceBias:
        steps.append(enhance_task.EnhanceStep("bias", {"shrink": int(p.biasShrink)}))
    if p.enhanceDenoise:
        steps.append(enhance_task.EnhanceStep("denoise", {"method": p.denoiseMethod,
                                                          "strength": float(p.denoiseStrength)}))
    return "enhance", {**common, "steps": steps, **timed}


def reasons_not_to_apply(p: Any) -> list[str]:
    """Why Apply is disabled, for its tooltip; empty when it can run."""
    reasons = []
    image = p.inputVolume.GetImageData() if p.inputVolume is not None else None
    if p.inputVolume is None:
        reasons.append("Select an input volume.")
    elif image is None:
        reasons.append("The input volume has no voxels.")
    elif image.GetNumberOfScalarComponents() != 1:
        reasons.append("The input is a colour or vector volume; MedSynth needs a scalar volume.")
    if p.model == "file" and not str(p.modelFile or "").strip(". "):
        reasons.append("Choose the model package file (.json) or another model.")
    if p.task == "enhance" and not (p.enhanceDenoise or p.enhanceBias):
        reasons.append("Tick at least one enhancement step.")
    if p.task == "fill" and not p.fillUpsample and image is not None:
        try:
            parse_slice_list(p.fillSlices)
        except ValueError as error:
            reasons.append(str(error))
    return reasons


def parse_slice_list(text: str, *, size: Optional[int] = None) -> Optional[list[int]]:
    """Slice indices from the panel's field: ``"12, 15-17"`` -> ``[12, 15, 16, 17]``.

    An empty field returns None: the library then detects the missing slices itself. The
    grammar is the library's (:func:`MedSynthLib.tasks.fill.parse_slice_list`), so the panel and
    ``medsynth fill --slices`` accept the same text; this adds the bound check the panel can
    do before anything runs.

    Raises
    ------
    InputError
        A piece that is not an index or a range, or an index outside ``[0, size - 1]``.
    """
    text = (text or "").strip()
    if not text:
        return None
    result = sorted(set(fill_task.parse_slice_list(text.replace(";", ","))))
    if size is not None:
        bad = [i for i in result if not 0 <= i < size]
        if bad:
            raise InputError(f"slices must be indices in [0, {size - 1}], got {bad}")
    return result


def format_slice_list(indices: Sequence[int]) -> str:
    """Indices as the panel shows them, with runs collapsed: ``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    values = sorted({int(i) for i in indices})
    parts: list[str] = []
    start = prev = None
    for value in values:
        if start is None:
            start = prev = value
        elif value == prev + 1:
            prev = value
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = value
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)
