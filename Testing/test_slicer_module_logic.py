"""The Slicer module's helpers, run without Slicer: node <-> Volume maths with the ``vtk`` wheel,
the worker thread (progress, cancel, failure), the undo stack, provenance, and the panel's
requests run through the real library on small oblique phantoms.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_phantom, oblique_matrix
from MedSynthLib.errors import InputError
from MedSynthLib.progress import check_cancel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSynth"))

from MedSynthSlicerLib import dependencies, devices, history, nodes, tasks  # noqa: E402
from MedSynthSlicerLib.undo import UndoStack, arrays_equal  # noqa: E402
from MedSynthSlicerLib.worker import BackgroundWorker, JobState  # noqa: E402

vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402


class FakeVolumeNode:
    """The part of vtkMRMLScalarVolumeNode the module uses: image data + IJK-to-RAS matrix."""

    def __init__(self, image=None, matrix=None, name="node"):
        self.image = image
        self.matrix = matrix if matrix is not None else vtk.vtkMatrix4x4()
        self.name = name
        self.modify_depth = 0
        self.events = []

    def GetName(self):
        return self.name

    def GetImageData(self):
        return self.image

    def GetIJKToRASMatrix(self, matrix):
        matrix.DeepCopy(self.matrix)

    def SetIJKToRASMatrix(self, matrix):
        self.matrix.DeepCopy(matrix)
        self.events.append(("matrix", self.modify_depth))

    def SetAndObserveImageData(self, image):
        self.image = image
        self.events.append(("image", self.modify_depth))

    def StorableModified(self):
        self.events.append(("storable", self.modify_depth))

    def StartModify(self):
        self.modify_depth += 1
        return self.modify_depth - 1

    def EndModify(self, previous):
        self.modify_depth = previous


class FakeMarkups:
    def __init__(self, points):
        self.points = points

    def GetNumberOfControlPoints(self):
        return len(self.points)

    def GetNthControlPointPositionWorld(self, index, position):
        position[:] = self.points[index]


def _slicer_array(node) -> np.ndarray:
    """What slicer.util.arrayFromVolume returns: the scalars as (K, J, I)."""
    i, j, k = node.GetImageData().GetDimensions()
    return numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(k, j, i)


# ---- node <-> Volume ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_node_round_trip_keeps_voxels_dtype_and_oblique_geometry(dtype):
    volume = make_phantom((7, 11, 13), dtype=dtype)
    node = FakeVolumeNode()
    nodes.update_node_from_volume(node, volume)
    # The node holds what Slicer expects: KJI voxels with i fastest, the matrix as geometry.
    np.testing.assert_array_equal(_slicer_array(node), volume.array)
    assert node.GetImageData().GetDimensions() == volume.shape_ijk
    np.testing.assert_allclose(nodes.matrix_to_array(node.matrix), volume.ijk_to_ras)
    back = nodes.volume_from_node(node)
    assert back.array.dtype == np.dtype(dtype)
    assert arrays_equal(back, volume)
    # Matrix and image were swapped inside one StartModify/EndModify.
    # and the node is marked as changed since it was loaded, so Save writes it.
    assert node.events == [("matrix", 1), ("image", 1), ("storable", 1)] and node.modify_depth == 0


def test_voxel_to_ras_through_the_vtk_matrix_matches_the_volume():
    volume = make_phantom((5, 6, 7))
    node = FakeVolumeNode()
    nodes.update_node_from_volume(node, volume)
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        ras = node.matrix.MultiplyPoint((*ijk, 1.0))[:3]
        np.testing.assert_allclose(ras, volume.ijk_points_to_ras(ijk), atol=1e-9)
        # and the voxel at ijk is array[k, j, i]
        assert _slicer_array(node)[ijk[2], ijk[1], ijk[0]] == volume.array[ijk[2], ijk[1], ijk[0]]


def test_image_data_origin_and_spacing_are_ignored_as_in_slicer():
    volume = make_phantom((4, 5, 6))
    from MedSynthLib.convert import to_vtk

    image, matrix = to_vtk(volume)
    image.SetSpacing(2.0, 3.0, 4.0)
    image.SetOrigin(10.0, 20.0, 30.0)
    back = nodes.volume_from_node(FakeVolumeNode(image, matrix))
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras)


def test_update_node_can_change_shape_and_geometry():
    node = FakeVolumeNode()
    nodes.update_node_from_volume(node, make_phantom((6, 8, 9)))
    bigger = make_phantom((11, 8, 9), matrix=oblique_matrix(spacing=(0.8, 0.9, 1.5)))
    nodes.update_node_from_volume(node, bigger)
    assert arrays_equal(nodes.volume_from_node(node), bigger)


def test_volume_from_node_refuses_missing_or_vector_data():
    with pytest.raises(InputError, match="no input volume"):
        nodes.volume_from_node(None)
    with pytest.raises(InputError, match="no voxel data"):
        nodes.volume_from_node(FakeVolumeNode(image=None))
    image = vtk.vtkImageData()
    image.SetDimensions(3, 3, 3)
    image.AllocateScalars(vtk.VTK_FLOAT, 3)
    with pytest.raises(InputError, match="components"):
        nodes.volume_from_node(FakeVolumeNode(image))


def test_matrix_helpers_round_trip():
    matrix = oblique_matrix()
    np.testing.assert_allclose(nodes.matrix_to_array(nodes.array_to_matrix(matrix)), matrix)


def test_markups_give_ras_centres_with_an_optional_world_to_local_map():
    markups = FakeMarkups([(1.0, 2.0, 3.0), (-4.5, 0.0, 9.0)])
    assert nodes.control_points_ras(markups) == [(1.0, 2.0, 3.0), (-4.5, 0.0, 9.0)]
    shifted = nodes.control_points_ras(markups, world_to_local=lambda p: (p[0] - 1, p[1], p[2] + 1))
    assert shifted == [(0.0, 2.0, 4.0), (-5.5, 0.0, 10.0)]
    assert nodes.control_points_ras(None) == []


def test_points_still_being_placed_are_not_centres():
    class PlacingMarkups(FakeMarkups):
        PositionDefined, PositionPreview = 2, 3

        def GetNthControlPointPositionStatus(self, index):
            return self.PositionPreview if index == 1 else self.PositionDefined

    markups = PlacingMarkups([(1.0, 2.0, 3.0), (7.0, 7.0, 7.0)])
    assert nodes.control_points_ras(markups) == [(1.0, 2.0, 3.0)]


def test_lesion_volumes_use_the_voxel_volume_of_the_oblique_grid():
    volume = make_phantom((4, 5, 6))  # spacing 0.8 x 0.9 x 3.0 mm = 2.16 mm^3
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[0, 0, :5] = 1
    labels[1, :2, :2] = 2
    ml = nodes.lesion_volumes_ml(labels, volume)
    assert ml == pytest.approx({1: 5 * 2.16e-3, 2: 4 * 2.16e-3})


# ---- worker thread --------------------------------------------------------------------------------
def test_worker_runs_jobs_on_one_persistent_thread_with_progress():
    worker = BackgroundWorker()
    threads = []

    def work(progress, cancel):
        threads.append(threading.get_ident())
        progress(0.5, "half way")
        return 42

    try:
        first = worker.submit(work)
        assert first.wait(10)
        second = worker.submit(work)
        assert second.wait(10)
        assert first.status().state == JobState.SUCCEEDED and first.status().result == 42
        assert second.status().fraction == 1.0
        assert len(set(threads)) == 1 and threads[0] != threading.get_ident()
    finally:
        assert worker.shutdown(timeout=5)


def test_worker_reports_progress_while_running_and_cancels_cooperatively():
    worker = BackgroundWorker()
    started = threading.Event()
    volume = make_phantom((4, 5, 6))
    before = volume.array.copy()

    def work(progress, cancel):
        started.set()
        for step in range(1000):
            check_cancel(cancel)
            progress(step / 1000, f"step {step}")
            time.sleep(0.005)
        volume.array[:] = 0  # never reached: a cancelled task must not touch its input
        return "finished"

    try:
        job = worker.submit(work, description="slow")
        assert started.wait(10)
        deadline = time.monotonic() + 10
        while not job.status().message.startswith("step") and time.monotonic() < deadline:
            time.sleep(0.01)  # the GUI's QTimer polls the same way
        running = job.status()
        assert running.state == JobState.RUNNING and running.message.startswith("step")
        job.cancel()
        assert job.wait(10)
        status = job.status()
        assert status.state == JobState.CANCELLED and "nothing was changed" in status.message
        np.testing.assert_array_equal(volume.array, before)
        assert not worker.busy
    finally:
        worker.shutdown()


def test_worker_hands_failures_to_the_gui_thread():
    worker = BackgroundWorker()

    def work(progress, cancel):
        raise InputError("the volume is constant")

    try:
        job = worker.submit(work)
        job.wait(10)
        status = job.status()
        assert status.state == JobState.FAILED
        assert isinstance(status.error, InputError) and "Traceback" in status.error_details
        # The thread survives a failure and runs the next job.
        assert worker.submit(lambda p, c: "ok").wait(10)
    finally:
        worker.shutdown()


def test_a_job_cancelled_before_it_starts_never_runs():
    worker = BackgroundWorker()
    gate = threading.Event()
    ran = []
    try:
        blocker = worker.submit(lambda p, c: gate.wait(10))
        queued = worker.submit(lambda p, c: ran.append(1))
        queued.cancel()
        gate.set()
        assert blocker.wait(10) and queued.wait(10)
        assert queued.status().state == JobState.CANCELLED and ran == []
    finally:
        worker.shutdown()


# ---- undo -------------------------------------------------------------------------------------------
def test_undo_restores_voxels_and_geometry_and_is_bounded_per_volume():
    stack = UndoStack(max_steps=2, max_bytes=10**9)
    volumes = [make_phantom((4, 5, 6), seed=s) for s in range(3)]
    for n, v in enumerate(volumes):
        assert stack.push("vol1", v, description=f"edit {n}")
    assert stack.depth("vol1") == 2
    volumes[2].array[:] = 0  # the stack holds copies
    entry = stack.pop("vol1")
    assert entry.description == "edit 2" and np.any(entry.volume.array)
    assert arrays_equal(stack.pop("vol1").volume, volumes[1])
    assert stack.pop("vol1") is None and not stack.can_undo("vol1")


def test_undo_memory_budget_drops_the_oldest_entries_first():
    volume = make_phantom((4, 5, 6))  # float32: 480 bytes
    stack = UndoStack(max_steps=5, max_bytes=3 * volume.array.nbytes)
    stack.push("a", volume, description="a1")
    stack.push("b", volume, description="b1")
    stack.push("a", volume, description="a2")
    stack.push("b", volume, description="b2")
    assert stack.nbytes <= stack.max_bytes
    assert stack.depth("a") == 1 and stack.peek("a").description == "a2"
    assert stack.depth("b") == 2
    assert not stack.push("c", make_phantom((40, 50, 60)), description="too big")
    stack.clear()
    assert stack.nbytes == 0


def test_undo_keeps_geometry_changes():
    stack = UndoStack()
    before = make_phantom((6, 8, 9))
    stack.push("v", before, description="upsample", history='[{"task": "x"}]', name="T1")
    entry = stack.pop("v")
    assert arrays_equal(entry.volume, before) and entry.history == '[{"task": "x"}]' and entry.name == "T1"


# ---- provenance -------------------------------------------------------------------------------------
def test_history_appends_json_entries_with_parameters_seed_model_device():
    first = history.history_entry(action="edited", task="fill",
                                  parameters={"slices": np.array([3, 4]), "seed": 7, "model": "auto", "device": "cpu",
                                              "path": Path("/tmp/x")},
                                  report={"method": "linear", "device": "cpu", "seconds": np.float32(1.5)})
    text = history.append_history(None, first)
    text = history.append_history(text, history.history_entry(action="created", task="lesion", parameters={},
                                                              source="T1 (vtkMRMLScalarVolumeNode1)",
                                                              output="new volume"))
    entries = json.loads(text)
    assert [e["task"] for e in entries] == ["fill", "lesion"]
    assert entries[0]["parameters"] == {"slices": [3, 4], "seed": 7, "model": "auto", "device": "cpu", "path": "/tmp/x"}
    assert entries[0]["report"]["seconds"] == 1.5 and entries[0]["medsynth_version"]
    assert entries[1]["source"].startswith("T1") and entries[1]["output"] == "new volume"


def test_history_survives_a_corrupted_attribute():
    text = history.append_history("not json", {"task": "enhance"})
    assert json.loads(text) == [{"raw": "not json"}, {"task": "enhance"}]


def test_lesion_volume_name_says_synthetic_once():
    name = history.lesion_volume_name("T1")
    assert name == "T1 (synthetic lesions)" and history.lesion_volume_name(name) == name


# ---- panel requests through the real library -------------------------------------------------------
def test_slice_field_parsing_and_formatting():
    assert tasks.parse_slice_list("") is None and tasks.parse_slice_list("   ") is None
    assert tasks.parse_slice_list("12, 15-17; 3") == [3, 12, 15, 16, 17]
    assert tasks.format_slice_list([3, 12, 15, 16, 17]) == "3, 12, 15-17"
    with pytest.raises(InputError, match=r"\[0, 9\]"):
        tasks.parse_slice_list("4, 10", size=10)
    with pytest.raises(InputError):
        tasks.parse_slice_list("4, x")
    with pytest.raises(InputError):
        tasks.TaskRequest("segment", {})


def test_available_tasks_names_the_library_modules():
    found = tasks.available_tasks()
    assert set(found) == {"fill", "upsample", "lesion", "enhance"}
    assert all(isinstance(v, bool) for v in found.values())


@pytest.fixture
def damaged_volume():
    volume = make_phantom((10, 24, 28), dtype=np.int16)
    array = volume.array.copy()
    array[4] = 0
    return volume.with_array(array)


def test_fill_request_fills_only_the_listed_slice_on_the_oblique_grid(damaged_volume):
    pytest.importorskip("MedSynthLib.tasks.fill")
    request = tasks.TaskRequest("fill", {"slices": [4], "axis": "k", "method": "linear", "device": "cpu", "seed": 0,
                                         "model": "auto"})
    messages = []
    outcome = tasks.run_request(damaged_volume, request, progress=lambda f, m: messages.append(f))
    assert outcome.volume.array.dtype == np.int16
    assert outcome.volume.same_grid(damaged_volume)
    np.testing.assert_array_equal(np.delete(outcome.volume.array, 4, 0), np.delete(damaged_volume.array, 4, 0))
    assert np.any(outcome.volume.array[4]) and outcome.details["slices"] == [4]
    assert messages and messages[-1] == 1.0
    line = tasks.summarize(outcome)
    assert line.startswith("Filled 1 slice(s) (4)") and "linear" in line


def test_upsample_request_changes_spacing_along_the_axis_only():
    pytest.importorskip("MedSynthLib.tasks.fill")
    volume = make_phantom((6, 20, 22))
    request = tasks.TaskRequest("upsample", {"factor": 2, "axis": "k", "method": "linear", "device": "cpu"})
    outcome = tasks.run_request(volume, request)
    assert outcome.volume.array.shape == (11, 20, 22)
    np.testing.assert_allclose(outcome.volume.spacing, (0.8, 0.9, 1.5), atol=1e-6)
    np.testing.assert_allclose(outcome.volume.origin, volume.origin, atol=1e-6)
    np.testing.assert_allclose(outcome.volume.direction, volume.direction, atol=1e-9)
    assert "Upsampled to 22x20x11" in tasks.summarize(outcome)


def test_lesion_request_at_a_clicked_centre_gives_named_segments_and_ml():
    pytest.importorskip("MedSynthLib.tasks.lesion")
    volume = make_phantom((16, 40, 48), dtype=np.int16)
    centre = volume.ijk_points_to_ras([24.0, 20.0, 8.0]).tolist()
    request = tasks.TaskRequest("lesion", {"centres": [centre], "size_mm": 8.0, "contrast": 0.5, "seed": 1,
                                           "label_mode": "instances", "preset": ""})
    outcome = tasks.run_request(volume, request)
    assert outcome.labels.shape == volume.array.shape and outcome.labels.max() >= 1
    assert outcome.volume.same_grid(volume) and outcome.volume.array.dtype == np.int16
    assert outcome.segments[0]["name"].startswith("Synthetic lesion 1")
    assert len(outcome.segments[0]["color"]) == 3
    assert outcome.details["lesion_ml"] and outcome.details["lesion_ml"][0] > 0
    assert "Inserted 1 lesion(s)" in tasks.summarize(outcome)
    # Same request, same seed: bit-identical (what the history promises).
    again = tasks.run_request(volume, request)
    np.testing.assert_array_equal(again.volume.array, outcome.volume.array)


def test_lesion_request_uses_the_chosen_package_by_its_task(tmp_path):
    pytest.importorskip("MedSynthLib.tasks.lesion")
    from MedSynthLib.errors import ModelError
    from MedSynthLib.models import build_network, save_package

    volume = make_phantom((16, 40, 48))
    centre = volume.ijk_points_to_ras([24.0, 20.0, 8.0]).tolist()
    parameters = {"centres": [centre], "size_mm": 8.0, "contrast": 0.5, "seed": 1, "preset": "", "device": "cpu"}
    spec = {"format": "lesion-inpaint-2.5d", "version": 1, "context": 1, "channels": 4,
            "normalisation": {"kind": "robust_percentile", "percentiles": [0.5, 99.5]}}
    args = {"spatial_dims": 2, "in_channels": 4, "out_channels": 1, "features": [4, 4, 8, 8, 16, 4]}
    network = build_network("basic_unet", **args)
    inpaint = save_package(network, tmp_path / "paint", task="lesion-inpaint", family="unet", builder="basic_unet",
                           builder_args=args, input_spec=spec)
    painted = tasks.run_request(volume, tasks.TaskRequest("lesion", {**parameters, "model": str(inpaint)}))
    plain = tasks.run_request(volume, tasks.TaskRequest("lesion", {**parameters, "model": "auto"}))
    assert painted.report["method"] == "procedural + learned appearance"
    assert plain.report["method"] == "procedural"
    np.testing.assert_array_equal(painted.labels, plain.labels)
    fill = save_package(network, tmp_path / "fill", task="fill", family="unet", builder="basic_unet",
                        builder_args=args, input_spec=spec)
    with pytest.raises(ModelError, match="synthetic lesions take a 'lesion-inpaint'"):
        tasks.run_request(volume, tasks.TaskRequest("lesion", {**parameters, "model": str(fill)}))


def test_segment_descriptions_for_classes():
    labels = np.array([[[0, 1, 2, 3]]], np.uint8)
    names = [s["name"] for s in tasks.segment_descriptions(labels, label_mode="classes", preset="mr-tumour")]
    assert names == ["Synthetic lesion (mr-tumour)", "Synthetic core (mr-tumour)", "Synthetic oedema (mr-tumour)"]


def test_enhance_request_runs_the_steps_and_keeps_geometry():
    pytest.importorskip("MedSynthLib.tasks.enhance")
    volume = make_phantom((6, 24, 28))
    request = tasks.TaskRequest("enhance", {"steps": ["denoise:aniso:1"], "device": "cpu"})
    outcome = tasks.run_request(volume, request)
    assert outcome.volume.same_grid(volume) and outcome.volume.array.dtype == np.float32
    line = tasks.summarize(outcome)
    assert line.startswith("Enhanced (1 step(s))") and "aniso" in line


def test_a_cancelled_request_raises_and_leaves_the_volume_untouched(damaged_volume):
    from MedSynthLib.errors import Cancelled
    from MedSynthLib.progress import CancelToken

    token = CancelToken()
    token.cancel()
    before = damaged_volume.array.copy()
    with pytest.raises(Cancelled):
        tasks.run_request(damaged_volume, tasks.TaskRequest("fill", {"slices": [4]}), cancel=token)
    np.testing.assert_array_equal(damaged_volume.array, before)


# ---- dependencies and devices -----------------------------------------------------------------------
def test_requirements_reader_drops_slicers_packages(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nnumpy>=1.2\nSimpleITK\nvtk\ntorch>=2\nmonai>=1.4  # MONAI\n\nscikit-image>=0.22\n")
    assert dependencies.read_requirements(path) == ["monai>=1.4", "scikit-image>=0.22"]
    assert dependencies.missing_requirements(["numpy>=1", "surely-not-installed-pkg>=1"]) == ["surely-not-installed-pkg>=1"]
    assert dependencies.missing_requirements(["scikit-image>=0.22", "PyYAML>=6"]) == []


def test_constraints_pin_the_installed_protected_packages():
    text = dependencies.constraints_text()
    import numpy

    assert f"numpy=={numpy.__version__}" in text.splitlines()


def test_torch_problems_are_said_plainly():
    class Cuda:
        def __init__(self, available):
            self._available = available

        def is_available(self):
            return self._available

    class Torch:
        def __init__(self, cuda_build, available):
            self.version = type("V", (), {"cuda": cuda_build})()
            self.cuda = Cuda(available)

    assert "PyTorch extension" in dependencies.torch_problem(None, nvidia_gpu_present=False)
    assert "CPU-only" in dependencies.torch_problem(Torch(None, False), nvidia_gpu_present=True)
    assert "driver" in dependencies.torch_problem(Torch("12.4", False), nvidia_gpu_present=True)
    assert dependencies.torch_problem(Torch("12.4", True), nvidia_gpu_present=True) is None
    assert dependencies.torch_problem(Torch(None, False), nvidia_gpu_present=False) is None


def test_device_choices_name_what_is_present():
    choices, summary = devices.device_choices(None)
    assert choices == [("auto", "auto")] and "not installed" in summary
    import torch

    choices, summary = devices.device_choices(torch)
    values = [value for _label, value in choices]
    assert values[:2] == ["auto", "cpu"]
    if not torch.cuda.is_available():
        assert summary.startswith("CPU only")
    else:
        assert summary.startswith("GPU:") and "cuda:0" in values


def test_model_choice_resolves_names_and_files(tmp_path):
    assert tasks.resolve_model("auto") is None and tasks.resolve_model("") is None
    with pytest.raises(InputError, match="not installed"):
        tasks.resolve_model("no-such-package")
    with pytest.raises(InputError, match="does not exist"):
        tasks.resolve_model(str(tmp_path / "missing.json"))
    package = tmp_path / "mine.json"
    package.write_text("{}")
    assert tasks.resolve_model(str(package)) == str(package)
    from MedSynthLib.models import list_packages

    for info in list_packages():
        assert tasks.resolve_model(info.name) == str(info.json_path)
