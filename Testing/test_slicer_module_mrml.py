"""The Slicer module on Slicer's real MRML (the ``slicer-core`` wheel), through ``MedSynthLogic.process``.

Every scenario that touches MRML runs here once, on real nodes, storage nodes and module logics
(``Testing/slicer_harness.py``); fill + undo, upsample, lesions + undo, enhance, cancel mid-run and
the mask from a segmentation are the module's own self-test ``MedSynthTest``, run here with ``runTest()``.
Skipped where ``slicer-core`` has no wheel.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_phantom, oblique_matrix
from MedSynthLib.errors import InputError
from slicer_harness import SlicerHarness, require_slicer_core

require_slicer_core()

@pytest.fixture
def medsynth(monkeypatch):
    """``(MedSynth module, slicer)`` with a fresh real scene and module logics."""
    harness = SlicerHarness()
    harness.install(monkeypatch)
    module = harness.load_module()
    yield module, harness.slicer
    harness.scene.Clear(True)


@pytest.fixture
def logic(medsynth):
    instance = medsynth[0].MedSynthLogic()
    yield instance
    instance.shutdown()


def _node(slicer, volume, name="T1"):
    return slicer.util.addVolumeFromArray(volume.array, ijkToRAS=volume.ijk_to_ras, name=name)


def _matrix(slicer, node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


# ---- the module's own self-test ---------------------------------------------------------------------
def test_the_modules_self_test_passes_on_real_mrml(medsynth):
    """``MedSynthTest.runTest()`` as Slicer's *Reload and Test* runs it: fill + undo, upsample, lesions + undo,
    enhance, a cancel mid-training, a mask drawn on another grid (each scenario is tested only there)."""
    module, slicer = medsynth
    case = module.MedSynthTest()
    ran = []
    for name in [n for n in dir(case) if n.startswith("test_")]:
        method = getattr(case, name)
        setattr(case, name, lambda method=method, name=name: (ran.append(name), method()))
    case.runTest()
    assert sorted(ran) == sorted(n for n in dir(module.MedSynthTest) if n.startswith("test_")) and len(ran) == 6


# ---- node <-> Volume ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_node_round_trip_on_a_real_node(medsynth, dtype):
    module, slicer = medsynth
    from MedSynthSlicerLib import nodes

    volume = make_phantom((7, 11, 13), dtype=dtype)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T1")
    nodes.update_node_from_volume(node, volume)
    # What Slicer itself sees: its own array view and IJK-to-RAS matrix.
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), volume.array)
    assert slicer.util.arrayFromVolume(node).dtype == np.dtype(dtype)
    np.testing.assert_allclose(_matrix(slicer, node), volume.ijk_to_ras, rtol=0, atol=1e-9)
    back = nodes.volume_from_node(slicer.util.addVolumeFromArray(volume.array, ijkToRAS=volume.ijk_to_ras))
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, rtol=0, atol=1e-9)


def test_a_real_node_can_change_shape_and_geometry_in_one_modification(medsynth):
    _module, slicer = medsynth
    from MedSynthLib.convert import to_vtk
    from MedSynthSlicerLib import nodes

    node = _node(slicer, make_phantom((6, 8, 9)))
    events = []
    node.AddObserver(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, lambda caller, event: events.append(event))
    node.AddObserver("ModifiedEvent", lambda caller, event: events.append(event))
    bigger = make_phantom((11, 8, 9), matrix=oblique_matrix(spacing=(0.8, 0.9, 1.5)))
    nodes.update_node_from_volume(node, bigger)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), bigger.array)
    np.testing.assert_allclose(_matrix(slicer, node), bigger.ijk_to_ras, rtol=0, atol=1e-9)
    assert events.count("ModifiedEvent") == 1  # views never see new voxels on the old grid
    # The image data's own origin and spacing are ignored, as Slicer ignores them.
    image, matrix = to_vtk(bigger)
    image.SetSpacing(2.0, 3.0, 4.0)
    image.SetOrigin(10.0, 20.0, 30.0)
    node.SetAndObserveImageData(image)
    np.testing.assert_allclose(nodes.volume_from_node(node).ijk_to_ras, bigger.ijk_to_ras, rtol=0, atol=1e-9)


def test_nodes_without_scalar_voxels_are_refused(medsynth):
    _module, slicer = medsynth
    from MedSynthSlicerLib import nodes

    with pytest.raises(InputError, match="no input volume"):
        nodes.volume_from_node(None)
    with pytest.raises(InputError, match="no voxel data"):
        nodes.volume_from_node(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"))
    rgb = slicer.util.addVolumeFromArray(np.zeros((3, 4, 5, 3), np.uint8), nodeClassName="vtkMRMLVectorVolumeNode")
    with pytest.raises(InputError, match="components"):
        nodes.volume_from_node(rgb)


# ---- files: MedSynthLib.io against Slicer's storage nodes --------------------------------------------
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_a_file_medsynth_writes_is_read_by_slicers_storage_node(medsynth, tmp_path, suffix):
    _module, slicer = medsynth
    from MedSynthLib.io import write_volume

    volume = make_phantom((7, 11, 13), dtype=np.int16)
    path = write_volume(volume, tmp_path / f"t1{suffix}")
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), volume.array)
    # NIfTI stores the matrix as float32: within that precision, NRRD exactly.
    np.testing.assert_allclose(_matrix(slicer, node), volume.ijk_to_ras, rtol=0,
                               atol=1e-9 if suffix == ".nrrd" else 1e-5)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_a_file_slicer_writes_is_read_by_medsynth(medsynth, tmp_path, suffix):
    _module, slicer = medsynth
    from MedSynthLib.io import read_volume

    volume = make_phantom((7, 11, 13), dtype=np.float32)
    node = _node(slicer, volume)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(tmp_path / f"t1{suffix}"))
    assert storage.WriteData(node)
    back = read_volume(tmp_path / f"t1{suffix}")
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, rtol=0, atol=1e-9 if suffix == ".nrrd" else 1e-5)


def test_a_seg_nrrd_medsynth_writes_is_read_by_slicers_segmentation_storage(medsynth, tmp_path):
    _module, slicer = medsynth
    from MedSynthLib.io import write_segmentation
    from MedSynthLib.lesion_segments import segment_descriptions

    volume = make_phantom((8, 12, 14), dtype=np.int16)
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[2:5, 3:7, 4:9] = 1
    labels[6, 1:3, 1:3] = 3
    segments = segment_descriptions(labels, label_mode="classes", preset="mr-tumour")
    path = write_segmentation(volume.with_array(labels), tmp_path / "lesions.seg.nrrd", segments)
    segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(segmentationNode)
    segmentation = segmentationNode.GetSegmentation()
    reference = _node(slicer, volume)
    assert segmentation.GetNumberOfSegments() == 2
    for index, segment in enumerate(segments):
        read = segmentation.GetNthSegment(index)
        assert read.GetName() == segment["name"] == ["Synthetic lesion (mr-tumour)", "Synthetic oedema (mr-tumour)"][index]
        np.testing.assert_allclose(read.GetColor(), segment["color"], atol=1e-5)
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentation.GetNthSegmentID(index), reference)
        np.testing.assert_array_equal(voxels > 0, labels == segment["value"])


# ---- lesions: segments equal the library's labels; markups and transforms -----------------------------
def test_lesion_segments_equal_the_librarys_labels(medsynth, logic):
    _module, slicer = medsynth
    from MedSynthLib.tasks.lesion import insert_lesions

    volume = make_phantom((16, 40, 48), dtype=np.int16)
    node = _node(slicer, volume)
    centres = [volume.ijk_points_to_ras([18.0, 20.0, 8.0]).tolist(), volume.ijk_points_to_ras([32.0, 22.0, 8.0]).tolist()]
    result = logic.process("lesion", node, centres=centres, preset="mr-wmh", size=7.0, seed=5, label_mode="classes")
    direct = insert_lesions(volume, centres=centres, preset="mr-wmh", size_mm=7.0, seed=5, label_mode="classes")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.volume), direct.volume.array)  # the Python API's result
    segmentation = result.segmentation.GetSegmentation()
    values = [v for v in np.unique(direct.labels.array) if v]
    assert segmentation.GetNumberOfSegments() == len(values) >= 1
    for index, value in enumerate(values):
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentation, segmentation.GetNthSegmentID(index), node)
        np.testing.assert_array_equal(voxels > 0, direct.labels.array == value)
    assert result.report["preset"] == "mr-wmh" and len(result.report["lesions"]) == 2


def _linear_transform(slicer, matrix, name):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def _rigid(angle, shift):
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.eye(4)
    matrix[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    matrix[:3, 3] = shift
    return matrix


def test_markups_centres_go_through_both_transforms(medsynth, logic):
    _module, slicer = medsynth
    volume = make_phantom((16, 40, 48), dtype=np.int16)
    node = _node(slicer, volume)
    volumeToWorld = _rigid(0.4, (10.0, -5.0, 3.0))
    markupsToWorld = _rigid(-0.3, (-7.0, 2.0, 11.0))
    node.SetAndObserveTransformNodeID(_linear_transform(slicer, volumeToWorld, "registration").GetID())
    markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "centres")
    markups.SetAndObserveTransformNodeID(_linear_transform(slicer, markupsToWorld, "markups pose").GetID())
    local = volume.ijk_points_to_ras([24.0, 20.0, 8.0])  # the lesion's place in the volume's own frame
    world = volumeToWorld @ [*local, 1.0]
    markups.AddControlPoint(*(np.linalg.inv(markupsToWorld) @ world)[:3])  # the point as the markups hold it
    np.testing.assert_allclose(logic.centresInVolumeFrame(node, markups), [local], atol=1e-9)
    np.testing.assert_allclose(logic.centresInVolumeFrame(node, [world[:3]]), [local], atol=1e-9)
    result = logic.process("lesion", node, centres=markups, size=8.0, seed=2)
    assert result.volume.GetTransformNodeID() == node.GetTransformNodeID()
    assert result.segmentation.GetTransformNodeID() == node.GetTransformNodeID()
    from MedSynthLib.tasks.lesion import insert_lesions

    direct = insert_lesions(volume, centres=[local], size_mm=8.0, seed=2, label_mode="classes")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.volume), direct.volume.array)


def test_a_volume_under_a_non_linear_transform_is_refused_for_centres(medsynth, logic):
    _module, slicer = medsynth
    volume = make_phantom((8, 16, 18), dtype=np.int16)
    node = _node(slicer, volume)
    warp = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(InputError, match="non-linear transform 'warp'.*harden"):
        logic.process("lesion", node, centres=[volume.ijk_points_to_ras([9.0, 8.0, 4.0]).tolist()])
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1


# ---- process: options, names, results equal to the library ----------------------------------------
def test_process_gives_the_librarys_result_and_refuses_unknown_options(medsynth, logic):
    _module, slicer = medsynth
    from MedSynthLib.tasks.fill import fill_slices

    volume = make_phantom((10, 24, 28), dtype=np.int16)
    damaged = volume.array.copy()
    damaged[4] = 0
    node = _node(slicer, volume.with_array(damaged))
    result = logic.process("fill", node, slices=[4], axis="k", method="cubic")
    direct = fill_slices(volume.with_array(damaged), slices=[4], axis="k", method="cubic")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.volume), direct.volume.array)
    assert result.segmentation is None and result.report["method"] == "cubic"
    assert result.summary.startswith("Filled 1 slice(s) (4)")
    with pytest.raises(InputError, match="unknown option 'factor'"):
        logic.process("fill", node, factor=2)
    with pytest.raises(InputError, match="unknown task"):
        logic.process("segment", node)


@pytest.mark.parametrize("task, options, key", [
    ("fill", {"slices": [4], "axis": "k", "method": "linear"}, "time_budget"),
    ("upsample", {"factor": 2, "axis": "k", "method": "linear"}, "time_budget"),
    ("enhance", {"steps": "denoise:dct:1"}, "time_budget"),
])
def test_the_time_budget_of_process_reaches_the_tasks_report(medsynth, logic, task, options, key):
    """``process(..., time_budget=7.25)`` (what the panel's Time budget becomes) is the budget the task ran under."""
    _module, slicer = medsynth
    volume = make_phantom((10, 24, 28), dtype=np.int16)
    result = logic.process(task, _node(slicer, volume), time_budget=7.25, **options)
    assert result.report[key]["budget_s"] == 7.25
    history = json.loads(result.volume.GetAttribute("MedSynth.history"))
    assert history[-1]["parameters"]["time_budget"] == 7.25


def test_the_panels_settings_reach_the_tasks_report(medsynth, logic):
    """Apply with the panel's settings: the Time budget field reaches the task (it was dropped before)."""
    _module, slicer = medsynth
    volume = make_phantom((10, 24, 28), dtype=np.int16)
    node = _node(slicer, volume)
    p = SimpleNamespace(task="fill", inputVolume=node, fillUpsample=True, upsampleFactor=2, fillAxis="k",
                        fillMethod="linear", timeBudget=7.25, enhanceTimeBudget=0.0, device="cpu", seed=0,
                        model="auto", modelFile=None, outputMode="new volume", maskSegmentation=None,
                        lesionCentres=None, lesionSegmentation=None)
    job, context = logic.startFromParameters(p)
    assert job.wait(60)
    assert logic.finish(job.status(), context).report["time_budget"]["budget_s"] == 7.25


def test_output_names_are_the_ones_the_real_scene_gives(medsynth, logic):
    _module, slicer = medsynth
    node = _node(slicer, make_phantom((6, 20, 22)))
    names = [logic.process("upsample", node, factor=2, axis="k", method="linear").volume.GetName() for _ in range(3)]
    assert names == ["T1 upsample", "T1 upsample_1", "T1 upsample_2"]  # as Slicer names copies
    assert [n.GetName() for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")][1:] == names


def test_history_survives_a_scene_save_and_reload(medsynth, logic, tmp_path):
    _module, slicer = medsynth
    node = _node(slicer, make_phantom((6, 20, 22)))
    output = logic.process("upsample", node, factor=2, axis="k", method="linear", seed=9).volume
    written = output.GetAttribute("MedSynth.history")
    for volumeNode in (node, output):
        volumeNode.AddDefaultStorageNode()
        volumeNode.GetStorageNode().SetFileName(str(tmp_path / f"{volumeNode.GetID()}.nrrd"))
        assert volumeNode.GetStorageNode().WriteData(volumeNode)
    slicer.mrmlScene.SetURL(str(tmp_path / "scene.mrml"))
    assert slicer.mrmlScene.Commit()
    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.Connect()
    again = reloaded.GetNodeByID(output.GetID())
    assert again.GetName() == "T1 upsample" and again.GetAttribute("MedSynth.history") == written
    entry = json.loads(again.GetAttribute("MedSynth.history"))[-1]
    assert entry["task"] == "upsample" and entry["parameters"]["seed"] == 9 and entry["source"].startswith("T1 (")
    assert again.GetImageData().GetDimensions() == (22, 20, 11)


def test_an_input_edited_while_running_gets_a_new_volume_instead(medsynth, logic):
    _module, slicer = medsynth
    node = _node(slicer, make_phantom((10, 24, 28), dtype=np.int16))
    job, context = logic.start("fill", node, inPlace=True, slices=[4], axis="k", method="linear")
    assert job.wait(60)
    array = slicer.util.arrayFromVolume(node)
    array[:2] += 7  # painted meanwhile
    slicer.util.arrayFromVolumeModified(node)
    edited = array.copy()
    result = logic.finish(job.status(), context)
    assert result.volume is not node and "new volume" in result.summary
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), edited)
    assert not logic.canUndo(node)


def test_a_result_for_a_removed_input_is_discarded(medsynth, logic):
    _module, slicer = medsynth
    node = _node(slicer, make_phantom((6, 20, 22)))
    job, context = logic.start("fill", node, slices=[2], axis="k", method="linear")
    assert job.wait(60)
    slicer.mrmlScene.RemoveNode(node)
    with pytest.raises(InputError, match="removed"):
        logic.finish(job.status(), context)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_a_failed_run_raises_the_librarys_error_and_leaves_the_node(medsynth, logic):
    _module, slicer = medsynth
    volume = make_phantom((6, 20, 22), dtype=np.int16)
    node = _node(slicer, volume)
    with pytest.raises(InputError):
        logic.process("fill", node, inPlace=True, slices=[40], axis="k", method="linear")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), volume.array)
    assert node.GetAttribute("MedSynth.history") is None and not logic.canUndo(node)


def test_apply_starts_what_the_panel_settings_say(medsynth, logic):
    """The panel's path (startFromParameters) is process's path: same request, same result."""
    module, slicer = medsynth
    volume = make_phantom((10, 24, 28), dtype=np.int16)
    node = _node(slicer, volume)
    wrapper = module.MedSynthParameterNode  # the panel's own defaults
    defaults = {name: getattr(wrapper, name, None) for name in wrapper.__annotations__}
    settings = SimpleNamespace(**{**defaults, "inputVolume": node, "task": "fill", "fillSlices": "4", "fillAxis": "k",
                                  "fillMethod": "linear", "outputMode": "new volume"})
    job, context = logic.startFromParameters(settings)
    assert job.wait(60)
    panel = logic.finish(job.status(), context)
    script = logic.process("fill", node, slices=[4], axis="k", method="linear")
    assert context["request"] == logic.start("fill", node, slices=[4], axis="k", method="linear")[1]["request"]
    assert context["request"].options.slices == (4,) and context["request"].options.time_budget is None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(panel.volume), slicer.util.arrayFromVolume(script.volume))


# ---- the module's own classes with the stand-ins -----------------------------------------------------
def test_module_metadata_links_the_docs(medsynth):
    module, _slicer = medsynth
    parent = SimpleNamespace()
    module.MedSynth(parent)
    assert parent.title == "MedSynth" and parent.categories == ["Filtering"]
    assert "docs/slicer.md" in parent.helpText and parent.acknowledgementText and parent.contributors


def test_ctk_combobox_connector_keeps_values_it_does_not_list(medsynth):
    module, _slicer = medsynth

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


def test_points_still_being_placed_are_not_centres(medsynth, logic):
    _module, slicer = medsynth
    node = _node(slicer, make_phantom((6, 20, 22)))
    markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    markups.AddControlPoint(1.0, 2.0, 3.0)
    markups.AddControlPoint(7.0, 7.0, 7.0)
    markups.UnsetNthControlPointPosition(1)  # cleared, or still being placed
    assert logic.centresInVolumeFrame(node, markups) == [(1.0, 2.0, 3.0)]
    assert logic.centresInVolumeFrame(node, None) == []
    with pytest.raises(InputError, match="R, A, S"):
        logic.centresInVolumeFrame(node, [(1.0, 2.0)])


def test_the_console_example_of_the_docs_runs(medsynth, monkeypatch, capsys):
    """docs/slicer.md's lesion batch over every volume, run as written."""
    import re
    import sys
    from pathlib import Path

    module, slicer = medsynth
    monkeypatch.setitem(sys.modules, "MedSynth", module)
    text = (Path(__file__).resolve().parents[1] / "docs" / "slicer.md").read_text(encoding="utf-8")
    example = next(block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "for number, volume" in block)
    for number in range(2):
        _node(slicer, make_phantom((30, 128, 128), dtype=np.int16, seed=number), name=f"scan {number}")
    exec(compile(example, "docs/slicer.md", "exec"), {"slicer": slicer})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == ["scan 0", "scan 1"]
    assert all("(synthetic lesions)" in line and line.endswith(" mL") and line.count(",") == 2 for line in lines)
    names = [n.GetName() for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")]
    assert len([n for n in names if n.startswith(module.SYNTHETIC_MASK_NAME)]) == 2 and len(names) == 4


def test_process_and_the_cli_make_the_same_lesions_and_segments(medsynth, logic, tmp_path):
    _module, slicer = medsynth
    from MedSynthLib.cli import main
    from MedSynthLib.io import read_volume, write_volume

    volume = make_phantom((16, 40, 48), dtype=np.int16)
    centre = volume.ijk_points_to_ras([24.0, 20.0, 8.0])
    write_volume(volume, tmp_path / "t1.nrrd")
    assert main(["-q", "lesion", str(tmp_path / "t1.nrrd"), str(tmp_path / "out.nrrd"), "--labels",
                 str(tmp_path / "out.seg.nrrd"), "--preset", "mr-enhancing-tumour", "--size", "14", "--seed", "2",
                 "--at", ",".join(f"{x:.12g}" for x in centre)]) == 0
    result = logic.process("lesion", _node(slicer, volume), centres=[centre], preset="mr-enhancing-tumour",
                           size=14.0, seed=2)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.volume), read_volume(tmp_path / "out.nrrd").array)
    cli = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "out.seg.nrrd"))
    assert storage.ReadData(cli)
    ours, theirs = result.segmentation.GetSegmentation(), cli.GetSegmentation()
    assert ours.GetNumberOfSegments() == theirs.GetNumberOfSegments() >= 2  # lesion and necrotic core
    for index in range(ours.GetNumberOfSegments()):
        a, b = ours.GetNthSegment(index), theirs.GetNthSegment(index)
        assert a.GetName() == b.GetName() and a.GetName().endswith("(mr-enhancing-tumour)")
        np.testing.assert_allclose(a.GetColor(), b.GetColor(), atol=1e-5)
        np.testing.assert_array_equal(
            slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentation, ours.GetNthSegmentID(index), result.volume),
            slicer.util.arrayFromSegmentBinaryLabelmap(cli, theirs.GetNthSegmentID(index), result.volume))


# ---- which voxels are synthetic: the "MedSynth: synthesised" segmentation and the uncertainty overlay -----
def _segment_array(slicer, segmentation_node, name, volume_node):
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)


def test_fill_in_place_shows_the_synthesised_slices_and_undo_removes_them(medsynth, logic):
    module, slicer = medsynth
    volume = make_phantom((12, 30, 34))
    node = _node(slicer, volume)
    result = logic.process("fill", node, inPlace=True, slices=[4, 7], method="linear", uncertainty=True)
    mask_node = result.synthetic_mask
    assert mask_node is not None and mask_node.GetName() == module.SYNTHETIC_MASK_NAME
    synthesised = _segment_array(slicer, mask_node, "synthesised", node)
    assert synthesised.shape == volume.array.shape
    assert sorted(np.nonzero(synthesised.any(axis=(1, 2)))[0].tolist()) == [4, 7] and synthesised[[4, 7]].all()
    entry = json.loads(node.GetAttribute("MedSynth.history"))[-1]
    assert module.SYNTHETIC_MASK_NAME in entry["synthetic_mask"]
    sd = slicer.util.arrayFromVolume(result.uncertainty)
    assert (sd[[4, 7]] > 0).all() and not sd[[0, 5]].any()
    np.testing.assert_allclose(_matrix(slicer, result.uncertainty), _matrix(slicer, node), atol=1e-9)
    # a second in-place edit accumulates on the same segmentation
    second = logic.process("fill", node, inPlace=True, slices=[9], method="linear")
    assert second.synthetic_mask.GetID() == mask_node.GetID()
    assert sorted(np.nonzero(_segment_array(slicer, mask_node, "synthesised", node).any(axis=(1, 2)))[0]) == [4, 7, 9]
    logic.undo(node)
    assert sorted(np.nonzero(_segment_array(slicer, mask_node, "synthesised", node).any(axis=(1, 2)))[0]) == [4, 7]
    uncertainty_id = result.uncertainty.GetID()
    logic.undo(node)
    assert slicer.mrmlScene.GetNodeByID(mask_node.GetID()) is None
    assert slicer.mrmlScene.GetNodeByID(uncertainty_id) is None
    assert node.GetAttribute(module.SYNTHETIC_MASK_ATTRIBUTE) is None


def test_upsample_and_lesion_outputs_carry_their_masks(medsynth, logic):
    module, slicer = medsynth
    volume = make_phantom((6, 24, 28))
    node = _node(slicer, volume)
    up = logic.process("upsample", node, factor=2, method="linear")
    synthesised = _segment_array(slicer, up.synthetic_mask, "synthesised", up.volume)
    assert sorted(np.nonzero(synthesised.any(axis=(1, 2)))[0].tolist()) == [1, 3, 5, 7, 9]
    centre = [float(x) for x in np.ravel(volume.ijk_points_to_ras([14, 12, 3]))]
    lesion = logic.process("lesion", node, centres=[centre], preset="mr-metastasis", size=6, seed=3)
    rewritten = _segment_array(slicer, lesion.synthetic_mask, "rewritten", lesion.volume)
    labels = _segment_array(slicer, lesion.segmentation, lesion.segmentation.GetSegmentation().GetNthSegment(0)
                            .GetName(), lesion.volume)
    assert rewritten[labels > 0].all() and rewritten.sum() >= labels.sum() > 0


def test_closing_the_scene_forgets_its_undo_copies_and_masks(medsynth, logic):
    _module, slicer = medsynth
    node = _node(slicer, make_phantom((10, 24, 28)))
    logic.process("fill", node, inPlace=True, slices=[4], method="linear")
    assert logic.canUndo(node) and logic._syntheticMasks
    logic.forgetScene()  # what the panel does when the scene starts closing
    assert not logic.canUndo(node) and not logic._syntheticMasks
