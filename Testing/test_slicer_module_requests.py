"""The Slicer module's requests, tested with plain objects and the real library (no scene): panel
settings -> the Python API's options -> one request, the reasons Apply is disabled, the run on small
oblique phantoms (cancel mid-batch included), the choice lists, the dependency install flow and the
torch thread limit. MRML is in ``test_slicer_module_mrml.py``, on Slicer's real nodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_phantom
from MedSynthLib.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSynth"))

from MedSynthSlicerLib import (choices, dependencies, devices, model_choice, panel_settings, result_line,  # noqa: E402
                               task_request, task_runs)


# ---- panel requests through the real library -------------------------------------------------------
def test_slice_field_parsing_and_formatting():
    assert panel_settings.parse_slice_list("") is None and panel_settings.parse_slice_list("   ") is None
    assert panel_settings.parse_slice_list("12, 15-17; 3") == [3, 12, 15, 16, 17]
    assert panel_settings.format_slice_list([3, 12, 15, 16, 17]) == "3, 12, 15-17"
    with pytest.raises(InputError, match=r"\[0, 9\]"):
        panel_settings.parse_slice_list("4, 10", size=10)
    with pytest.raises(InputError):
        panel_settings.parse_slice_list("4, x")
    with pytest.raises(InputError):
        task_request.TaskRequest("segment", {})


def test_available_tasks_names_the_library_modules():
    found = task_runs.available_tasks()
    assert set(found) == {"fill", "upsample", "lesion", "enhance"}
    assert all(isinstance(v, bool) for v in found.values())


def test_result_lines_say_what_changed_with_the_method_and_device():
    """The voxels of each task are checked once, on real MRML (the self-test); here only what the panel says."""
    volume = make_phantom((6, 20, 22), dtype=np.int16)
    damaged = volume.with_array(np.where(np.arange(6)[:, None, None] == 4, 0, volume.array).astype(np.int16))
    messages = []
    fill = task_runs.run_request(damaged, task_request.request_for("fill", {"slices": [4], "axis": "k", "method": "linear"}),
                                progress=lambda f, m: messages.append(f))
    assert messages and messages[-1] == 1.0 and fill.details["slices"] == [4]
    assert result_line.summarize(fill).startswith("Filled 1 slice(s) (4) · linear · ")
    upsample = task_runs.run_request(volume, task_request.request_for("upsample", {"factor": 2, "axis": "k", "method": "linear"}))
    assert result_line.summarize(upsample).startswith("Upsampled to 22x20x11 voxels (5 new slices) · linear")
    enhance = task_runs.run_request(volume, task_request.request_for("enhance", {"steps": "bias:6,denoise:auto:1"}))
    assert result_line.summarize(enhance).startswith("Enhanced (2 step(s))")
    lesion = task_runs.run_request(volume, task_request.request_for(
        "lesion", {"size_mm": 6.0, "label_mode": "instances"}, centres=[volume.ijk_points_to_ras([11.0, 10.0, 3.0])]))
    assert f"Inserted 1 lesion(s): {lesion.details['lesion_ml'][0]:.2f} mL · procedural" in result_line.summarize(lesion)


def test_the_same_request_and_seed_give_the_same_voxels():
    """What the history promises: its parameters and seed reproduce the edit."""
    volume = make_phantom((16, 40, 48), dtype=np.int16)
    options = {"count": 2, "size_mm": 5.0, "seed": 11, "preset": "mr-wmh"}
    first = task_runs.run_request(volume, task_request.request_for("lesion", options), mask=volume.array > 50)
    again = task_runs.run_request(volume, task_request.request_for("lesion", options), mask=volume.array > 50)
    np.testing.assert_array_equal(again.volume.array, first.volume.array)
    np.testing.assert_array_equal(again.labels, first.labels)
    other = task_runs.run_request(volume, task_request.request_for("lesion", {**options, "seed": 12}), mask=volume.array > 50)
    assert not np.array_equal(other.labels, first.labels)


def test_lesion_request_uses_the_chosen_package_by_its_task(tmp_path):
    pytest.importorskip("MedSynthLib.tasks.lesion")
    from MedSynthLib.errors import ModelError
    from MedSynthLib.models import build_network, save_package

    volume = make_phantom((16, 40, 48))
    centre = volume.ijk_points_to_ras([24.0, 20.0, 8.0]).tolist()
    parameters = {"centres": [centre], "size_mm": 8.0, "contrast": 0.5, "seed": 1, "preset": "mr-wmh", "device": "cpu"}
    spec = {"format": "lesion-inpaint-2.5d", "version": 1, "context": 1, "channels": 4,
            "normalisation": {"kind": "robust_percentile", "percentiles": [0.5, 99.5]}}
    args = {"spatial_dims": 2, "in_channels": 4, "out_channels": 1, "features": [4, 4, 8, 8, 16, 4]}
    network = build_network("basic_unet", **args)
    inpaint = save_package(network, tmp_path / "paint", task="lesion-inpaint", family="unet", builder="basic_unet",
                           builder_args=args, input_spec=spec)
    painted = task_runs.run_request(volume, task_request.request_for("lesion", {**parameters, "model": str(inpaint)}))
    plain = task_runs.run_request(volume, task_request.request_for("lesion", {**parameters, "model": "auto"}))
    assert painted.report["method"] == "procedural + learned appearance"
    assert plain.report["method"] == "procedural"
    np.testing.assert_array_equal(painted.labels, plain.labels)
    fill = save_package(network, tmp_path / "fill", task="fill", family="unet", builder="basic_unet",
                        builder_args=args, input_spec=spec)
    with pytest.raises(ModelError, match="synthetic lesions take a 'lesion-inpaint'"):
        task_request.request_for("lesion", {**parameters, "model": str(fill)})  # refused before any work


def test_segment_names_and_colours_are_the_librarys():
    from MedSynthLib.errors import InputError as Refused
    from MedSynthLib.lesion_segments import segment_descriptions

    labels = np.array([[[0, 1, 2, 3]]], np.uint8)
    classes = segment_descriptions(labels, label_mode="classes", preset="mr-tumour")
    assert [s["name"] for s in classes] == [
        "Synthetic lesion (mr-tumour)", "Synthetic core (mr-tumour)", "Synthetic oedema (mr-tumour)"]
    instances = segment_descriptions([0, 2, 1, 1], label_mode="instances")
    assert [(s["value"], s["name"]) for s in instances] == [(1, "Synthetic lesion 1"), (2, "Synthetic lesion 2")]
    assert len({s["color"] for s in instances}) == 2 and all(len(s["color"]) == 3 for s in instances)
    with pytest.raises(Refused, match="label_mode"):
        segment_descriptions(labels, label_mode="lesions")


def test_a_request_cancelled_mid_batch_raises_and_leaves_the_volume_untouched():
    pytest.importorskip("MedSynthLib.tasks.lesion")
    from MedSynthLib.errors import Cancelled
    from MedSynthLib.progress import CancelToken

    volume = make_phantom((16, 40, 48), dtype=np.int16)
    before = volume.array.copy()
    token, seen = CancelToken(), []

    def progress(fraction, message):
        seen.append(message)
        if message.startswith("lesion 2 of"):
            token.cancel()  # between the second and the third lesion of the batch

    request = task_request.request_for("lesion", {"count": 4, "size_mm": 4.0, "preset": "mr-wmh", "device": "cpu"})
    with pytest.raises(Cancelled):
        task_runs.run_request(volume, request, mask=volume.array > 50, progress=progress, cancel=token)
    assert "lesion 1 of 4" in seen and not any(m.startswith("lesion 3") for m in seen)
    np.testing.assert_array_equal(volume.array, before)


# ---- panel settings -> the Python API's options -> requests ----------------------------------------
class _Image:
    """The two image-data calls the settings helpers make."""

    def __init__(self, dimensions=(28, 24, 10), components=1):
        self.dimensions, self.components = dimensions, components

    def GetDimensions(self):
        return self.dimensions

    def GetNumberOfScalarComponents(self):
        return self.components


class _Volume:
    def __init__(self, image=None):
        self.image = image

    def GetImageData(self):
        return self.image


def _panel_defaults() -> dict:
    """The @parameterNodeWrapper class's defaults, read from MedSynth.py (fields without one are None)."""
    import ast

    source = (Path(__file__).resolve().parents[1] / "MedSynth" / "MedSynth.py").read_text(encoding="utf-8")
    wrapper = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "MedSynthParameterNode")
    return {item.target.id: None if item.value is None else ast.literal_eval(item.value)
            for item in wrapper.body if isinstance(item, ast.AnnAssign)}


def _settings(**overrides):
    from types import SimpleNamespace

    values = {**_panel_defaults(), "inputVolume": _Volume(_Image()), "fillSlices": "4", "fillAxis": "k",
              "fillMethod": "linear", "device": "cpu", "seed": 5, "modelFile": Path(".")}
    values.update(overrides)
    return SimpleNamespace(**values)


def test_panel_settings_become_the_python_apis_options():
    assert panel_settings.options_from_settings(_settings(fillSlices="3, 6-7")) == ("fill", {
        "device": "cpu", "seed": 5, "model": "auto", "slices": [3, 6, 7], "axis": "k", "method": "linear"})
    task, options = panel_settings.options_from_settings(_settings(fillUpsample=True, upsampleFactor=3))
    assert task == "upsample" and options["factor"] == 3 and "slices" not in options
    task, options = panel_settings.options_from_settings(_settings(task="lesion", lesionSize=8.0, lesionLabels="instances"))
    assert task == "lesion" and options["size_mm"] == 8.0 and options["label_mode"] == "instances"
    assert options["count"] == 3 and options["preset"] == "auto" and "contrast" not in options  # 0: the preset's
    assert "count" not in panel_settings.options_from_settings(_settings(task="lesion"), has_centres=True)[1]
    task, options = panel_settings.options_from_settings(_settings(
        task="enhance", enhanceBias=True, denoiseStrength=0.5, denoiseMethod="nlm",
        model="file", modelFile=Path("/m/denoise.json")))
    # The Enhance tab hands the library's step objects, not a string for the library to parse back.
    assert [step.label() for step in options["steps"]] == ["bias(shrink=6)", "denoise(method=nlm,strength=0.5)"]
    assert options["model"] == "/m/denoise.json"
    with pytest.raises(InputError, match=r"\[0, 9\]"):
        panel_settings.options_from_settings(_settings(fillSlices="12"))


def test_the_panels_time_budget_reaches_fill_and_upsample():
    """0 (shown as "automatic") leaves the library's default budget; seconds go through as ``time_budget``."""
    assert "time_budget" not in panel_settings.options_from_settings(_settings())[1]
    assert panel_settings.options_from_settings(_settings(timeBudget=30.0))[1]["time_budget"] == 30.0
    task, options = panel_settings.options_from_settings(_settings(fillUpsample=True, timeBudget=12.0))
    assert task == "upsample" and options["time_budget"] == 12.0
    assert task_request.request_for("fill", {"time_budget": 5.0, "slices": [2]}).parameters["time_budget"] == 5.0


def test_the_enhance_tabs_time_budget_reaches_the_pipeline():
    """The Enhance tab has its own budget (0: "none"); the Fill tab's does not leak into it."""
    assert "time_budget" not in panel_settings.options_from_settings(_settings(task="enhance", timeBudget=30.0))[1]
    task, options = panel_settings.options_from_settings(_settings(task="enhance", enhanceTimeBudget=20.0))
    assert task == "enhance" and options["time_budget"] == 20.0
    assert task_request.request_for("enhance", {"steps": ["denoise"], "time_budget": 3.0}).parameters["time_budget"] == 3.0


def test_requests_are_the_librarys_options_objects():
    from MedSynthLib.tasks.fill import FillOptions
    from MedSynthLib.tasks.lesion import LesionOptions

    request = task_request.request_for("lesion", {"size": 8.0}, centres=[(1, 2, 3)])
    assert isinstance(request.options, LesionOptions) and request.options.size_mm == 8.0
    assert request.parameters["centres"] == [[1.0, 2.0, 3.0]] and request.parameters["count"] is None
    fill = task_request.request_for("fill", {"slices": [2], "time_budget": 7.25, "method": "LINEAR"})
    assert fill.options == FillOptions(slices=(2,), time_budget=7.25, method="linear")
    with pytest.raises(InputError, match="unknown options 'factor', 'spacing'"):
        task_request.request_for("fill", {"factor": 2, "spacing": 1.0})
    with pytest.raises(InputError, match=r"time budget must be a number in \[0, 86400\]"):
        task_request.request_for("fill", {"time_budget": -1})
    with pytest.raises(InputError, match="FillOptions"):
        task_request.TaskRequest("fill", LesionOptions(count=1))
    with pytest.raises(InputError, match="size or size_mm"):
        task_request.request_for("lesion", {"size": 8.0, "size_mm": 8.0})
    with pytest.raises(InputError, match="centres are lesion centres"):
        task_request.request_for("fill", {}, centres=[(1, 2, 3)])
    with pytest.raises(InputError, match="unknown task"):
        task_request.request_for("segment", {})


def test_apply_is_disabled_with_reasons():
    assert panel_settings.reasons_not_to_apply(_settings()) == []
    assert any("input volume" in r for r in panel_settings.reasons_not_to_apply(_settings(inputVolume=None)))
    assert any("no voxels" in r for r in panel_settings.reasons_not_to_apply(_settings(inputVolume=_Volume())))
    assert any("scalar" in r for r in panel_settings.reasons_not_to_apply(_settings(inputVolume=_Volume(_Image(components=3)))))
    assert any("model package" in r for r in panel_settings.reasons_not_to_apply(_settings(model="file")))
    assert any("enhancement step" in r for r in panel_settings.reasons_not_to_apply(
        _settings(task="enhance", enhanceDenoise=False)))
    assert any("x" in r for r in panel_settings.reasons_not_to_apply(_settings(fillSlices="4, x")))


def test_panel_defaults_are_the_librarys_defaults():
    """Every widget that shows a library option starts at the library's default (0 where 0 means "not given")."""
    panel = _panel_defaults()
    for entry in panel_settings.PANEL_KNOBS:
        knob = panel_settings.knob_of(entry)
        expected = panel_settings.PANEL_ONLY_DEFAULTS.get(entry.parameter, knob.default)
        assert panel[entry.parameter] == (0.0 if expected is None and entry.zero else expected), entry.parameter
    assert panel["device"] == "auto" and panel["lesionPreset"] == "auto"


def test_the_panel_offers_every_library_option_with_the_librarys_choices_and_ranges():
    """A library option the panel neither shows nor lists as left out fails here; so does a widget whose
    choices or range are written into the .ui or MedSynth.py instead of read from the library."""
    import ast
    import xml.etree.ElementTree as ET

    repo = Path(__file__).resolve().parents[1]
    shown = {(entry.owner, entry.option) for entry in panel_settings.PANEL_KNOBS}
    for owner in ("fill", "upsample", "lesion", "denoise", "bias", "enhance"):
        for knob in panel_settings.owner_options(owner).knobs():
            assert (owner, knob.name) in shown or knob.name in panel_settings.NOT_ON_PANEL.get(owner, {}), (
                f"the library's {owner} option {knob.name!r} is neither on the panel nor in NOT_ON_PANEL")
    offers = panel_settings.panel_knobs()
    widgets = {w.get("name"): w for w in ET.parse(repo / "MedSynth/Resources/UI/MedSynth.ui").iter("widget")}
    for entry in panel_settings.PANEL_KNOBS:
        knob, widget, offer = panel_settings.knob_of(entry), widgets[entry.widget], offers[entry.widget]
        assert widget.find("property[@name='SlicerParameterName']/string").text == entry.parameter
        copied = {p.get("name") for p in widget.findall("property")} & {"toolTip", "minimum", "maximum"}
        assert not copied and not widget.findall("item"), f"{entry.widget} copies {copied or 'items'} into the .ui"
        assert offer["toolTip"] == knob.help
        if knob.choices:
            assert widget.get("class") == "ctkComboBox"  # filled at run time (CtkComboBoxToStrConnector)
            assert [value for _label, value in offer["items"]] == list(knob.choices)
        else:
            assert offer["high"] == knob.high and offer["low"] == (0.0 if entry.zero else knob.low)
    wrapper = next(n for n in ast.parse((repo / "MedSynth/MedSynth.py").read_text(encoding="utf-8")).body
                   if isinstance(n, ast.ClassDef) and n.name == "MedSynthParameterNode")
    parameters = {entry.parameter for entry in panel_settings.PANEL_KNOBS}
    for item in wrapper.body:
        if isinstance(item, ast.AnnAssign) and item.target.id in parameters:
            literals = [n for n in ast.walk(item.annotation) if isinstance(n, (ast.Constant, ast.List))
                        and not isinstance(getattr(n, "value", None), str)]
            assert not literals, f"{item.target.id} copies a Choice or a range into MedSynth.py"


# ---- choices, dependencies, threads ---------------------------------------------------------------------
def test_panel_choices_list_what_is_installed():
    found = choices.panel_choices()
    assert found["devices"][0] == ("auto (best available)", "auto") or found["devices"] == [("auto", "auto")]
    assert found["models"][0][1] == "auto" and found["models"][-1][1] == "file"
    assert found["presets"][0][1] == "auto" and "mr-wmh" in [value for _label, value in found["presets"]]
    assert set(found["tasks"]) == {"fill", "upsample", "lesion", "enhance"}
    from MedSynthLib.models import list_packages

    assert {info.name for info in list_packages()} <= {value for _label, value in found["models"]}


def test_the_install_flow_asks_once_and_installs_only_what_is_missing():
    calls = []

    def flow(torch_present, torch_ok, answer, requirements=("monai>=1.4", "surely-not-installed-pkg>=1")):
        calls.clear()
        return dependencies.ensure_dependencies(
            list(requirements), torch_installed=lambda: torch_present,
            install_torch=lambda: calls.append("torch") or torch_ok,
            confirm=lambda text: calls.append(("confirm", text)) or answer,
            install_packages=lambda missing: calls.append(("pip", missing)), status=lambda text: calls.append(text))

    assert flow(True, True, True)
    assert calls[0][0] == "confirm" and "surely-not-installed-pkg" in calls[0][1] and "monai" not in calls[0][1]
    assert calls[-1] == ("pip", ["surely-not-installed-pkg>=1"])
    assert not flow(True, True, False) and not any(c[0] == "pip" for c in calls if isinstance(c, tuple))
    assert not flow(False, False, True) and calls == ["torch"]  # torch declined: nothing else asked
    assert flow(False, True, True, requirements=("monai>=1.4",)) and calls == ["torch"]


def test_torch_threads_leave_one_core_to_the_gui():
    import torch

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        assert devices.limit_torch_threads(cores=8) == 7 and torch.get_num_threads() == 7
        assert devices.limit_torch_threads(cores=8) is None  # already below the cores: kept
        torch.set_num_threads(2)
        assert devices.limit_torch_threads(cores=2) is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
