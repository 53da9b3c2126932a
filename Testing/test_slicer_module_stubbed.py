"""``MedSynth.py`` itself, imported with small stand-ins for ``slicer``, ``qt`` and ``ctk``.

Slicer cannot run in CI, but the Logic's own code (requests from the panel's settings, the
background run, atomic apply, undo, provenance, lesion segments) only needs a handful of Slicer
calls. The stand-ins below provide those calls on real ``vtkImageData`` / ``vtkMatrix4x4``
objects, so the Logic runs end to end on oblique phantoms with the real library and the real
worker thread. What they cannot check (Qt widgets, the real MRML scene) is covered by the
self-test ``MedSynthTest`` inside Slicer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import types
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_phantom
from MedSynthLib.errors import InputError

vtk = pytest.importorskip("vtk")

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MedSynth"


# ---- stand-ins for the Slicer application ---------------------------------------------------------
class FakeVolumeNode:
    _count = 0

    def __init__(self, name="volume"):
        FakeVolumeNode._count += 1
        self.id = f"vtkMRMLScalarVolumeNode{FakeVolumeNode._count}"
        self.name = name
        self.attributes: dict[str, str] = {}
        self.image = None
        self.matrix = vtk.vtkMatrix4x4()

    def GetID(self):
        return self.id

    def GetName(self):
        return self.name

    def SetName(self, name):
        self.name = name

    def GetAttribute(self, key):
        return self.attributes.get(key)

    def SetAttribute(self, key, value):
        self.attributes[key] = value

    def RemoveAttribute(self, key):
        self.attributes.pop(key, None)

    def GetImageData(self):
        return self.image

    def GetIJKToRASMatrix(self, matrix):
        matrix.DeepCopy(self.matrix)

    def SetIJKToRASMatrix(self, matrix):
        self.matrix.DeepCopy(matrix)

    def SetAndObserveImageData(self, image):
        self.image = image

    def StartModify(self):
        return 0

    def EndModify(self, previous):
        return None

    def GetParentTransformNode(self):
        return None


class FakeSegmentation:
    def __init__(self):
        self.segments: dict[str, dict] = {}
        self._next = 0

    def AddEmptySegment(self, segment_id, name, color):
        self._next += 1
        key = segment_id or f"Segment_{self._next}"
        self.segments[key] = {"name": name, "color": tuple(color), "mask": None}
        return key

    def GetNumberOfSegments(self):
        return len(self.segments)

    def GetSegment(self, key):
        return self.segments.get(key)

    def RemoveSegment(self, key):
        del self.segments[key]


class FakeSegmentationNode(FakeVolumeNode):
    def __init__(self, name):
        super().__init__(name)
        self.id = self.id.replace("ScalarVolume", "Segmentation")
        self.segmentation = FakeSegmentation()
        self.reference = None

    def GetSegmentation(self):
        return self.segmentation

    def CreateDefaultDisplayNodes(self):
        pass

    def SetReferenceImageGeometryParameterFromVolumeNode(self, node):
        self.reference = node


class FakeScene:
    def __init__(self):
        self.nodes: dict[str, object] = {}

    def add(self, node):
        self.nodes[node.GetID()] = node
        return node

    def GetNodeByID(self, node_id):
        return self.nodes.get(node_id)

    def GenerateUniqueName(self, name):
        names = {n.GetName() for n in self.nodes.values()}
        candidate, number = name, 1
        while candidate in names:
            number += 1
            candidate = f"{name}_{number}"
        return candidate

    def AddNewNodeByClass(self, class_name, name=""):
        assert class_name == "vtkMRMLSegmentationNode"
        return self.add(FakeSegmentationNode(name))


def _stub_modules(scene: FakeScene) -> dict[str, types.ModuleType]:
    def module(name, **attributes):
        m = types.ModuleType(name)
        m.__dict__.update(attributes)
        return m

    class GuiConnector:
        def __init__(self):
            self._callback = None

        def changed(self):
            if self._callback:
                self._callback()

    def unannotated(datatype):
        return typing.get_args(datatype)[0] if typing.get_origin(datatype) is typing.Annotated else datatype

    class Validator:
        def __init__(self, *args):
            self.args = args

    class ScriptedLoadableModuleLogic:
        def __init__(self, *args):
            pass

    def clone(scene_, node, name):
        new = FakeVolumeNode(name)
        new.attributes = dict(node.attributes)
        node.GetIJKToRASMatrix(new.matrix)
        return scene_.add(new)

    def update_segment(mask, segmentation_node, segment_id, reference):
        segmentation_node.GetSegmentation().segments[segment_id]["mask"] = np.array(mask)

    qt = module("qt", QTimer=object, QTabWidget=type("QTabWidget", (), {}), QComboBox=type("QComboBox", (), {}))
    ctk = module("ctk", ctkComboBox=type("ctkComboBox", (), {}))
    slicer = module(
        "slicer",
        vtkMRMLScalarVolumeNode=FakeVolumeNode,
        vtkMRMLSegmentationNode=FakeSegmentationNode,
        vtkMRMLMarkupsFiducialNode=type("vtkMRMLMarkupsFiducialNode", (), {}),
        mrmlScene=scene,
        app=SimpleNamespace(processEvents=lambda: None),
        modules=SimpleNamespace(volumes=SimpleNamespace(logic=lambda: SimpleNamespace(CloneVolumeWithoutImageData=clone))),
    )
    return {
        "qt": qt,
        "ctk": ctk,
        "slicer": slicer,
        "slicer.i18n": module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": module(
            "slicer.parameterNodeWrapper", Choice=Validator, WithinRange=Validator, GuiConnector=GuiConnector,
            parameterNodeGuiConnector=lambda cls: cls, parameterNodeWrapper=lambda cls: cls,
            unannotatedType=unannotated,
        ),
        "slicer.ScriptedLoadableModule": module(
            "slicer.ScriptedLoadableModule",
            ScriptedLoadableModule=type("ScriptedLoadableModule", (), {"__init__": lambda self, parent: setattr(self, "parent", parent)}),
            ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (), {}),
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest=type("ScriptedLoadableModuleTest", (), {}),
        ),
        "slicer.util": module(
            "slicer.util", VTKObservationMixin=type("VTKObservationMixin", (), {}),
            tryWithErrorDisplay=lambda *a, **k: contextlib.nullcontext(),
            setSliceViewerLayers=lambda **kwargs: None,
            updateSegmentBinaryLabelmapFromArray=update_segment,
        ),
    }


@pytest.fixture
def medsynth(monkeypatch):
    """(MedSynth module imported with the stand-ins, the fake scene)."""
    scene = FakeScene()
    for name, stub in _stub_modules(scene).items():
        monkeypatch.setitem(sys.modules, name, stub)
    sys.modules["slicer"].util = sys.modules["slicer.util"]
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    spec = importlib.util.spec_from_file_location("MedSynth_under_test", MODULE_DIR / "MedSynth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module, scene


@pytest.fixture
def logic(medsynth):
    module, _scene = medsynth
    instance = module.MedSynthLogic()
    yield instance
    instance.shutdown()


def _volume_node(scene, volume, name="T1"):
    from MedSynthSlicerLib import nodes

    node = scene.add(FakeVolumeNode(name))
    nodes.update_node_from_volume(node, volume)
    return node


def _array(node):
    from MedSynthSlicerLib import nodes

    return nodes.volume_from_node(node).array


def _history(node):
    return json.loads(node.GetAttribute("MedSynth.history"))


# ---- module metadata and connectors -------------------------------------------------------------
def test_module_metadata_links_the_docs(medsynth):
    module, _scene = medsynth
    parent = SimpleNamespace()
    module.MedSynth(parent)
    assert parent.title == "MedSynth" and parent.categories
    assert "docs/slicer.md" in parent.helpText and parent.acknowledgementText and parent.contributors


def test_ctk_combobox_connector_keeps_values_it_does_not_list(medsynth):
    module, _scene = medsynth

    class Combo:
        def __init__(self):
            self.items, self.currentIndex = [("auto", "auto"), ("CPU", "cpu")], 0

        def findData(self, value):
            return next((i for i, item in enumerate(self.items) if item[1] == value), -1)

        def addItem(self, label, value):
            self.items.append((label, value))

        @property
        def count(self):
            return len(self.items)

        @property
        def currentData(self):
            return self.items[self.currentIndex][1]

    combo = Combo()
    connector = module.CtkComboBoxToStrConnector(combo)
    connector.write("cpu")
    assert connector.read() == "cpu"
    connector.write("cuda:1")  # saved in a scene from another computer
    assert connector.read() == "cuda:1" and combo.items[-1] == ("cuda:1", "cuda:1")


# ---- panel settings -> requests ------------------------------------------------------------------
def _parameters(**overrides):
    image = vtk.vtkImageData()
    image.SetDimensions(28, 24, 10)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    values = dict(
        inputVolume=SimpleNamespace(GetImageData=lambda: image, GetParentTransformNode=lambda: None),
        maskSegmentation=None, task="fill", fillSlices="4", fillAxis="k", fillMethod="linear",
        fillUpsample=False, upsampleFactor=2, lesionPreset="", lesionCentres=None, lesionCount=3,
        lesionSize=0.0, lesionContrast=0.0, lesionLabels="per lesion", lesionSegmentation=None,
        enhanceDenoise=True, denoiseMethod="nlm", denoiseStrength=1.0, enhanceBias=False, biasShrink=4,
        enhanceSuperResolve=False, superResolveFactor=2, model="auto", modelFile=Path("."), device="cpu",
        seed=5, outputMode="in place",
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def test_requests_carry_every_setting_in_the_librarys_terms(logic):
    fill = logic.requestFor(_parameters(fillSlices="3, 6-7"))
    assert fill.task == "fill" and fill.parameters == {
        "device": "cpu", "seed": 5, "model": "auto", "slices": [3, 6, 7], "axis": "k", "method": "linear"}
    upsample = logic.requestFor(_parameters(fillUpsample=True, upsampleFactor=3))
    assert upsample.task == "upsample" and upsample.parameters["factor"] == 3
    lesion = logic.requestFor(_parameters(task="lesion", lesionSize=8.0, lesionLabels="per class"))
    assert lesion.parameters["centres"] == [] and lesion.parameters["count"] == 3
    assert lesion.parameters["size_mm"] == 8.0 and lesion.parameters["label_mode"] == "classes"
    enhance = logic.requestFor(_parameters(task="enhance", enhanceBias=True, enhanceSuperResolve=True,
                                           denoiseStrength=0.5, model="file", modelFile=Path("/m/denoise.json")))
    assert enhance.parameters["steps"] == ["bias:4", "denoise:nlm:0.5", "upsample:2"]
    assert enhance.parameters["model"] == "/m/denoise.json"
    with pytest.raises(InputError, match=r"\[0, 9\]"):
        logic.requestFor(_parameters(fillSlices="12"))


def test_apply_is_disabled_with_reasons(logic):
    assert logic.reasonsNotToApply(_parameters()) == []
    assert any("input volume" in r for r in logic.reasonsNotToApply(_parameters(inputVolume=None)))
    assert any("model package" in r for r in logic.reasonsNotToApply(_parameters(model="file")))
    assert any("enhancement step" in r for r in logic.reasonsNotToApply(
        _parameters(task="enhance", enhanceDenoise=False)))
    assert any("x" in r for r in logic.reasonsNotToApply(_parameters(fillSlices="4, x")))


# ---- the Logic end to end -----------------------------------------------------------------------
def test_fill_in_place_then_undo(medsynth, logic):
    module, scene = medsynth
    volume = make_phantom((10, 24, 28), dtype=np.int16)
    damaged = volume.array.copy()
    damaged[4] = 0
    node = _volume_node(scene, volume.with_array(damaged))
    output = logic.run(node, "fill", {"slices": [4], "axis": "k", "method": "linear"}, inPlace=True)
    assert output is node
    filled = _array(node)
    assert filled.dtype == np.int16 and np.any(filled[4])
    np.testing.assert_array_equal(np.delete(filled, 4, 0), np.delete(damaged, 4, 0))
    entry = _history(node)[-1]
    assert entry["task"] == "fill" and entry["action"] == "edited" and entry["parameters"]["seed"] == 0
    assert entry["report"]["method"] == "linear"
    assert logic.canUndo(node)
    assert "Undid fill" in logic.undo(node)
    np.testing.assert_array_equal(_array(node), damaged)
    assert node.GetAttribute("MedSynth.history") is None and not logic.canUndo(node)


def test_upsample_into_a_new_volume_keeps_the_input(medsynth, logic):
    module, scene = medsynth
    volume = make_phantom((6, 20, 22))
    node = _volume_node(scene, volume)
    output = logic.run(node, "upsample", {"factor": 2, "axis": "k", "method": "linear"})
    assert output is not node and output.GetName() == "T1 upsample"
    np.testing.assert_array_equal(_array(node), volume.array)
    from MedSynthSlicerLib import nodes

    result = nodes.volume_from_node(output)
    assert result.array.shape == (11, 20, 22)
    np.testing.assert_allclose(result.spacing, (0.8, 0.9, 1.5), atol=1e-6)
    entry = _history(output)[-1]
    assert entry["action"] == "created" and entry["source"].startswith("T1 (") and entry["output"] == "new volume"
    assert not logic.canUndo(node)


def test_lesions_name_the_volume_and_fill_named_coloured_segments(medsynth, logic):
    module, scene = medsynth
    volume = make_phantom((16, 40, 48), dtype=np.int16)
    node = _volume_node(scene, volume)
    centre = volume.ijk_points_to_ras([24.0, 20.0, 8.0]).tolist()
    output = logic.run(node, "lesion", {"centres": [centre], "size_mm": 8.0, "seed": 2})
    assert output.GetName() == "T1 lesion (synthetic lesions)"
    segmentation_nodes = [n for n in scene.nodes.values() if isinstance(n, FakeSegmentationNode)]
    assert len(segmentation_nodes) == 1
    seg = segmentation_nodes[0]
    assert seg.reference is output and seg.GetAttribute("MedSynth.history")
    (segment,) = seg.segmentation.segments.values()
    assert segment["name"].startswith("Synthetic lesion 1") and len(segment["color"]) == 3
    assert segment["mask"].shape == volume.array.shape and segment["mask"].sum() > 0
    # In place into the same segmentation; undo restores voxels and name and removes the new segment.
    before_name = node.GetName()
    logic.run(node, "lesion", {"centres": [centre], "size_mm": 8.0, "seed": 3}, inPlace=True, segmentationNode=seg)
    assert node.GetName().endswith("(synthetic lesions)") and seg.segmentation.GetNumberOfSegments() == 2
    logic.undo(node)
    assert node.GetName() == before_name and seg.segmentation.GetNumberOfSegments() == 1
    np.testing.assert_array_equal(_array(node), volume.array)


def test_a_failed_run_leaves_the_node_untouched(medsynth, logic):
    module, scene = medsynth
    volume = make_phantom((6, 20, 22), dtype=np.int16)
    node = _volume_node(scene, volume)
    with pytest.raises(InputError):
        logic.run(node, "fill", {"slices": [40], "axis": "k", "method": "linear"}, inPlace=True)
    np.testing.assert_array_equal(_array(node), volume.array)
    assert node.GetAttribute("MedSynth.history") is None and not logic.canUndo(node)


def test_cancel_leaves_the_node_untouched(medsynth, logic):
    module, scene = medsynth
    volume = make_phantom((6, 20, 22))
    node = _volume_node(scene, volume)
    request = module.tasks.TaskRequest("enhance", {"steps": ["denoise:nlm"]})
    job, _context = logic.start(node, request, inPlace=True)
    job.cancel()
    assert job.wait(60)
    assert job.status().state in (module.JobState.CANCELLED, module.JobState.SUCCEEDED)
    np.testing.assert_array_equal(_array(node), volume.array)
    assert not logic.canUndo(node)


def test_an_input_edited_while_running_gets_a_new_volume_instead(medsynth, logic):
    module, scene = medsynth
    volume = make_phantom((10, 24, 28), dtype=np.int16)
    node = _volume_node(scene, volume)
    request = module.tasks.TaskRequest("fill", {"slices": [4], "axis": "k", "method": "linear"})
    job, context = logic.start(node, request, inPlace=True)
    assert job.wait(60)
    from vtk.util import numpy_support

    numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars())[:10] += 7  # painted meanwhile
    edited = _array(node).copy()
    line = logic.apply(job.status().result, context)
    assert "new volume" in line and context["outputNode"] is not node
    np.testing.assert_array_equal(_array(node), edited)
    assert not logic.canUndo(node)


def test_an_unchanged_input_is_edited_in_place_even_if_vtk_touched_it(medsynth, logic):
    module, scene = medsynth
    volume = make_phantom((10, 24, 28), dtype=np.int16)
    node = _volume_node(scene, volume)
    request = module.tasks.TaskRequest("fill", {"slices": [4], "axis": "k", "method": "linear"})
    job, context = logic.start(node, request, inPlace=True)
    assert job.wait(60)
    node.GetImageData().Modified()  # e.g. a display pipeline bumping the modification time
    logic.apply(job.status().result, context)
    assert context["outputNode"] is node and logic.canUndo(node)
