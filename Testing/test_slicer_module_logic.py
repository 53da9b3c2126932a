"""The Slicer module's helpers that need no scene, tested with plain objects: node maths, the worker
thread (progress, cancel, failure), the undo stack and provenance. Requests, choices and installs are
in ``test_slicer_module_requests.py``; what touches MRML in ``test_slicer_module_mrml.py``, on real nodes.
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

from MedSynthSlicerLib import (dependencies, devices, history, model_choice, nodes, panel_settings,  # noqa: E402
                               result_line, task_request, task_runs)
from MedSynthSlicerLib.undo import UndoStack, arrays_equal  # noqa: E402
from MedSynthSlicerLib.worker import BackgroundWorker, JobState  # noqa: E402



# ---- node helpers that need no node ---------------------------------------------------------------
def test_matrix_helpers_round_trip():
    matrix = oblique_matrix()
    np.testing.assert_allclose(nodes.matrix_to_array(nodes.array_to_matrix(matrix)), matrix)


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
    assert model_choice.resolve_model("auto") is None and model_choice.resolve_model("") is None
    with pytest.raises(InputError, match="not installed"):
        model_choice.resolve_model("no-such-package")
    with pytest.raises(InputError, match="does not exist"):
        model_choice.resolve_model(str(tmp_path / "missing.json"))
    package = tmp_path / "mine.json"
    package.write_text("{}")
    assert model_choice.resolve_model(str(package)) == str(package)
    from MedSynthLib.models import list_packages

    for info in list_packages():
        assert model_choice.resolve_model(info.name) == str(info.json_path)


