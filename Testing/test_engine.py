"""Engine: device choice, batched slice and sliding-window inference, out-of-memory fallbacks."""

import numpy as np
import pytest
import torch

from MedSynthLib import DeviceError, ResourceError
from MedSynthLib.engine import (
    EngineReport,
    available_devices,
    is_out_of_memory,
    run_slices,
    run_sliding_window,
    run_with_fallback,
    select_device,
)
from MedSynthLib.progress import CancelToken
from MedSynthLib import Cancelled


def fake_oom() -> Exception:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_auto_picks_a_present_device_and_cpu_always_exists():
    assert "cpu" in available_devices()
    assert str(select_device("auto")) in available_devices()
    assert select_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_absent_device_names_what_exists():
    with pytest.raises(DeviceError, match="available: cpu"):
        select_device("cuda")


def test_oom_detection():
    assert is_out_of_memory(fake_oom())
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_fallback_halves_batch_then_moves_to_cpu():
    calls = []

    def attempt(device, batch):
        calls.append((device.type, batch))
        if device.type != "cpu":
            raise fake_oom()
        return "done"

    report = EngineReport()
    # start on the meta device to stand in for a GPU without needing one
    result = run_with_fallback(attempt, device=torch.device("meta"), batch_size=8, report_to=report)
    assert result == "done"
    assert calls == [("meta", 8), ("meta", 4), ("meta", 2), ("meta", 1), ("cpu", 8)]
    assert report.device_used == "cpu"
    assert len(report.fallbacks) == 4
    assert "fell back to CPU" in report.fallbacks[-1]


def test_fallback_stops_halving_once_the_batch_fits():
    def attempt(device, batch):
        if batch > 3:
            raise fake_oom()
        return batch

    report = EngineReport()
    assert run_with_fallback(attempt, device=torch.device("cpu"), batch_size=16, report_to=report) == 2
    assert report.batch_size == 2 and report.device_used == "cpu"


def test_fallback_gives_a_clear_error_when_nothing_fits():
    def attempt(device, batch):
        raise fake_oom()

    with pytest.raises(ResourceError, match="not enough memory"):
        run_with_fallback(attempt, device=torch.device("cpu"), batch_size=2)


def test_other_errors_are_not_swallowed():
    def attempt(device, batch):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        run_with_fallback(attempt, device=torch.device("cpu"), batch_size=2)


class OomAboveBatch(torch.nn.Module):
    """Doubles its input, but 'runs out of memory' on batches larger than ``limit``."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise fake_oom()
        return x * self.scale


def test_run_slices_injected_oom_gives_the_same_result():
    inputs = np.random.default_rng(0).normal(size=(10, 1, 8, 8)).astype(np.float32)
    report = EngineReport()
    out = run_slices(OomAboveBatch(limit=3), inputs, device="cpu", batch_size=8, report_to=report)
    assert np.allclose(out, 2 * inputs)
    assert report.batch_size == 2
    assert report.fallbacks and "batch 8" in report.fallbacks[0]


def test_run_slices_progress_and_cancel():
    inputs = np.zeros((6, 1, 4, 4), np.float32)
    seen = []
    run_slices(torch.nn.Identity(), inputs, device="cpu", batch_size=2, progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and len(seen) == 3
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_slices(torch.nn.Identity(), inputs, device="cpu", cancel=token)


def test_sliding_window_reconstructs_and_survives_oom():
    volume = np.random.default_rng(1).normal(size=(1, 20, 24, 28)).astype(np.float32)
    report = EngineReport()
    out = run_sliding_window(
        OomAboveBatch(limit=1), volume, roi_size=(8, 8, 8), sw_batch_size=4, device="cpu", report_to=report
    )
    assert out.shape == volume.shape
    assert np.allclose(out, 2 * volume, atol=1e-5)
    assert report.batch_size == 1 and len(report.fallbacks) == 2


@pytest.mark.gpu
def test_cuda_and_cpu_agree_with_amp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
    inputs = np.random.default_rng(0).normal(size=(4, 1, 32, 32)).astype(np.float32)
    cpu = run_slices(model, inputs, device="cpu")
    gpu = run_slices(model, inputs, device="cuda", amp=True)
    assert np.allclose(cpu, gpu, atol=2e-2)
