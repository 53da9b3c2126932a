"""Tests of the fill task's time budgets, threads, slice-profile estimation and thick-slice selfsup."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from test_fill import FAST_SELFSUP, moving_disc
from conftest import oblique_matrix

from MedSynthLib.errors import InputError
from MedSynthLib.metrics import psnr
from MedSynthLib.tasks.fill import fill_slices, upsample_slices
from MedSynthLib.volume import Volume


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest



def textured_volume(shape=(64, 48, 48), seed=0) -> np.ndarray:
    """Isotropic smooth texture (filtered noise): spectra alike in every direction, as the profile test assumes."""
    from scipy import ndimage

    noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return 100.0 + 20.0 * ndimage.gaussian_filter(noise, 1.2)


def test_one_cycle_schedule_is_torchs_one_cycle():
    from MedSynthLib.tasks.fill._selfsup_train import one_cycle

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.Adam([parameter], lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=60, pct_start=0.1)
    for step in range(60):
        lr, beta1 = one_cycle(step, 60, 2e-3)
        assert lr == pytest.approx(optimiser.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        assert beta1 == pytest.approx(optimiser.param_groups[0]["betas"][0], rel=1e-9)
        optimiser.step()
        schedule.step()


def test_selfsup_with_a_tiny_budget_stops_early_says_so_and_stays_at_least_linear():
    volume = moving_disc(count=13, size=48)
    truth = volume.array.astype(np.float64)
    options = {"selfsup": {**FAST_SELFSUP["selfsup"], "steps": 100000}}
    fill_slices(volume, slices=[4], method="selfsup", device="cpu", method_options={"selfsup": {
        **FAST_SELFSUP["selfsup"], "steps": 1}})  # one-time set-up (imports, first convolutions) outside the clock
    start = time.monotonic()
    result = fill_slices(volume, slices=[4, 8], method="selfsup", device="cpu", time_budget=3.0,
                         method_options=options)
    wall = time.monotonic() - start
    report = result.report
    assert report["selfsup"]["stopped_early"] and report["selfsup"]["steps"] < 100000
    assert report["selfsup"]["steps_planned"] == 100000
    assert report["time_budget"]["budget_s"] == 3.0 and any("selfsup training" in c for c in report["time_budget"]["cut"])
    assert wall < 3.0 + 3.0  # the clock was checked: stopped near the budget, not after 100000 steps
    linear = fill_slices(volume, slices=[4, 8], method="linear").volume.array.astype(np.float64)
    got = result.volume.array.astype(np.float64)
    assert psnr(truth[[4, 8]], got[[4, 8]], data_range=100) >= psnr(truth[[4, 8]], linear[[4, 8]], data_range=100) - 0.1
    assert report["threads"]["torch"] == 1  # never more than the caller allowed torch (the fixture: 1)


def test_auto_hands_over_when_selfsup_is_cut_without_gain(monkeypatch):
    from MedSynthLib.tasks.fill import _auto

    monkeypatch.setattr(_auto, "MIN_USEFUL_STEPS", {"linear": 1, "spline": 1})
    monkeypatch.setattr(_auto, "MIN_HELD_OUT_GAIN_DB", {"linear": 1e9, "spline": 1e9})  # no cut-short gain counts
    monkeypatch.setattr(_auto, "_affordable_steps", lambda job, target, settings: (10, 100000))
    volume = moving_disc(count=13, size=48)
    options = {"selfsup": {**FAST_SELFSUP["selfsup"], "steps": 100000}}
    result = fill_slices(volume, slices=[6], method="auto", device="cpu", time_budget=2.0, method_options=options)
    report = result.report
    assert report["method"] in ("model", "flow") and report["method_requested"] == "auto"
    # cut short, or (on a machine so loaded that set-up ate the budget) not started at all: either way handed over
    assert ("selfsup was cut at step" in report["method_reason"] or "selfsup was not started" in report["method_reason"])
    assert report["selfsup"]["stopped_early"]
    assert any("handed over to" in c for c in report["time_budget"]["cut"])
    np.testing.assert_array_equal(np.delete(result.volume.array, 6, axis=0), np.delete(volume.array, 6, axis=0))
    # the dropped training was never inferred (on a whole CT that inference cost minutes, past the budget)
    assert report["selfsup"]["inference_skipped"] and report["selfsup"]["inference_seconds"] == 0


def test_auto_abandons_a_training_whose_gain_cannot_make_it_worth_keeping(monkeypatch):
    """From half the steps that fit the budget, a training whose held-out gain, extrapolated in proportion to the
    steps, stays below what auto keeps is stopped there, not run to the budget's end and then dropped."""
    import re

    from MedSynthLib.tasks.fill import _auto, _selfsup_train

    monkeypatch.setattr(_auto, "MIN_USEFUL_STEPS", {"linear": 1, "spline": 1})
    monkeypatch.setattr(_auto, "MIN_HELD_OUT_GAIN_DB", {"linear": 1e9, "spline": 1e9})  # no gain is enough
    monkeypatch.setattr(_auto, "_affordable_steps", lambda job, target, settings: (100000, 100000))
    monkeypatch.setattr(_selfsup_train, "VALIDATE_EVERY", 5)
    volume = moving_disc(count=13, size=48)
    options = {"selfsup": {**FAST_SELFSUP["selfsup"], "steps": 100000}}
    result = fill_slices(volume, slices=[6], method="auto", device="cpu", time_budget=20.0, method_options=options)
    report = result.report
    summary = report["selfsup"]
    if summary.get("training_skipped"):  # a machine so loaded that set-up ate the budget: nothing to abandon
        pytest.skip(summary["training_skipped"])
    step, fits = map(int, re.search(r"abandoned at step (\d+) of (\d+)", summary["abandoned"]).groups())
    assert 2 * step >= fits > step and summary["steps"] == step and summary["stopped_early"]
    assert report["method"] in ("model", "flow", "linear") and "selfsup was abandoned at step" in report["method_reason"]
    assert summary["inference_skipped"]
    np.testing.assert_array_equal(np.delete(result.volume.array, 6, axis=0), np.delete(volume.array, 6, axis=0))


def test_auto_does_not_start_a_training_the_measured_inference_leaves_no_room_for(monkeypatch):
    """The plan's constants said selfsup fits; the inference measured on this machine leaves fewer steps than
    are worth keeping even at an idle machine's pace: training is not started (not merely cut) and auto hands
    over at once."""
    from MedSynthLib.tasks.fill import _auto, _selfsup

    monkeypatch.setattr(_auto, "_affordable_steps", lambda job, target, settings: (100000, 100000))

    def never(*args, **kwargs):
        raise AssertionError("training started although it could not be kept")

    monkeypatch.setattr(_selfsup, "train", never)
    volume = moving_disc(count=13, size=48)
    result = fill_slices(volume, slices=[6], method="auto", device="cpu", time_budget=1.0)
    summary = result.report["selfsup"]
    assert result.report["method"] in ("model", "flow") and summary["steps"] == 0
    assert "fewer than are worth keeping" in summary["training_skipped"] and summary["inference_skipped"]
    assert "selfsup was not started" in result.report["method_reason"]
    json.dumps(result.report, allow_nan=False)


def test_auto_default_budget_grows_with_the_work_and_is_reported():
    from MedSynthLib.tasks.fill._auto import default_budget_seconds

    assert default_budget_seconds(3, "cpu") < 40 and default_budget_seconds(10, "cpu") <= 45
    assert default_budget_seconds(10000, "cpu") == 180.0 and default_budget_seconds(3, "cuda") == 600.0
    result = fill_slices(moving_disc(), slices=[4], method="auto", device="cpu", time_budget=0.0)
    assert result.report["time_budget"]["spent_s"] < 60 and result.report["method"] in ("model", "flow")
    with pytest.raises(InputError, match="time budget"):
        fill_slices(moving_disc(), slices=[4], method="auto", time_budget=-1)


def test_slice_profile_is_estimated_from_the_data():
    from scipy import ndimage

    from MedSynthLib.tasks.fill._profile import estimate_slice_profile

    fine = textured_volume((96, 48, 48))
    for factor in (2, 4):
        thick = ndimage.gaussian_filter1d(fine, factor / 2.355, axis=0)[::factor]
        found = estimate_slice_profile(thick, slice_spacing=float(factor), pixel_spacings=(1.0, 1.0))
        assert found["thick"] and 0.6 <= found["relative"] <= 1.3, found
        sharp = estimate_slice_profile(fine[::factor], slice_spacing=float(factor), pixel_spacings=(1.0, 1.0))
        assert not sharp["thick"] and sharp["relative"] <= 0.375, sharp
    # in-plane pixels as coarse as the slices: nothing to compare with
    assert estimate_slice_profile(fine[::2], slice_spacing=2.0, pixel_spacings=(2.0, 2.0)) is None


def test_upsample_thick_slices_trains_on_the_profile_and_deblurs_the_acquired_slices():
    from scipy import ndimage

    fine = textured_volume((65, 40, 40))
    thick = ndimage.gaussian_filter1d(fine, 2 / 2.355, axis=0)[::2]
    volume = Volume(thick, np.diag([1.0, 1.0, 2.0, 1.0]))
    options = {"selfsup": {**FAST_SELFSUP["selfsup"], "steps": 60}}
    result = upsample_slices(volume, factor=2, method="selfsup", device="cpu", method_options=options)
    report = result.report
    assert report["slice_profile"]["thick"] and report["slice_profile"]["source"] == "estimated"
    assert report["selfsup"]["thick_slice_training"] and report["selfsup"]["deblurred_acquired"]
    assert any("deblurred" in w for w in report["warnings"])
    out = result.volume.array
    # the acquired slices were rewritten closer to the sharp truth, the new ones beat cubic interpolation
    assert psnr(fine[::2], out[::2], data_range=100) > psnr(fine[::2], thick, data_range=100) + 0.5
    cubic = upsample_slices(volume, factor=2, method="cubic").volume.array
    assert psnr(fine[1::2], out[1::2], data_range=100) > psnr(fine[1::2], cubic[1::2], data_range=100) + 1.0
    kept = upsample_slices(volume, factor=2, method="selfsup", device="cpu", method_options=FAST_SELFSUP,
                           slice_thickness=None)
    np.testing.assert_array_equal(kept.volume.array[::2], thick)  # no profile modelled: copied bit for bit
    assert "slice_profile" not in kept.report and not kept.report["selfsup"]["deblurred_acquired"]
    given = upsample_slices(volume, factor=2, method="selfsup", device="cpu", method_options=FAST_SELFSUP,
                            slice_thickness=2.0)
    assert given.report["slice_profile"]["source"] == "given" and given.report["slice_profile"]["px"] == [2.0, 2.0]


def test_cli_time_budget_reaches_the_task_and_the_report(tmp_path):
    from MedSynthLib.cli import main
    from MedSynthLib.io import write_volume

    source = tmp_path / "disc.nii.gz"
    write_volume(moving_disc(count=13, size=48), source)
    report = tmp_path / "report.json"
    assert main(["-q", "fill", str(source), str(tmp_path / "out.nii.gz"), "--slices", "6", "--method", "selfsup",
                 "--time-budget", "2", "--report", str(report)]) == 0
    written = json.loads(report.read_text())
    assert written["time_budget"]["budget_s"] == 2.0 and written["selfsup"]["stopped_early"]
    assert written["selfsup"]["steps"] < written["selfsup"]["steps_planned"]
    assert main(["-q", "upsample", str(source), str(tmp_path / "up.nii.gz"), "--factor", "2", "--method", "linear",
                 "--time-budget", "5", "--report", str(report)]) == 0
    assert json.loads(report.read_text())["time_budget"]["budget_s"] == 5.0


def test_spline_method_is_b_spline_resampling_and_keeps_geometry():
    """``spline``: on a regular grid exactly B-spline resampling (SimpleITK's kind: scipy order 3, mirrored
    ends), geometry kept; on an irregular grid it passes through the good slices and follows a smooth profile."""
    from scipy import ndimage

    from MedSynthLib.tasks.fill._interp import make_plan, spline_fill

    fine = textured_volume((49, 20, 20))
    volume = Volume(fine[::4], oblique_matrix())
    result = upsample_slices(volume, factor=4, method="spline", axis="k")
    assert result.report["method"] == "spline"
    np.testing.assert_allclose(result.volume.origin, volume.origin, atol=1e-9)
    assert result.volume.spacing_along(0) == pytest.approx(volume.spacing_along(0) / 4)
    grid = np.meshgrid(np.arange(49) / 4, np.arange(20), np.arange(20), indexing="ij")
    reference = ndimage.map_coordinates(fine[::4].astype(np.float64), grid, order=3, mode="mirror")
    np.testing.assert_allclose(result.volume.array, reference, rtol=1e-3)  # float32 against float64
    z = np.arange(24, dtype=np.float64)
    smooth = np.cos(np.pi * z / 23)[:, None, None] * np.ones((1, 5, 6))
    keep = np.array([0, 1, 3, 4, 8, 9, 10, 14, 15, 19, 20, 23])
    targets = np.setdiff1d(z.astype(int), keep)
    plan = make_plan(keep.astype(float), targets.astype(float))
    np.testing.assert_allclose(spline_fill(smooth[keep].astype(np.float32), plan), smooth[targets], atol=5e-3)


def test_auto_upsampling_hands_over_to_the_spline_even_where_the_profile_looks_sharp():
    """brain1 at 4x: the estimated profile called the thick slices sharp and ``auto`` handed over to the
    bundled model, 1.3 dB below the spline. Upsampling now falls back to the spline whatever the profile says;
    filling missing slices (no profile) still takes the model."""
    fine = textured_volume((49, 32, 32))
    sharp = Volume(fine[::2], np.diag([1.0, 1.0, 2.0, 1.0]))  # sharp slices: the profile says so
    result = upsample_slices(sharp, factor=2, method="auto", device="cpu", time_budget=0.0)
    assert not result.report["slice_profile"]["thick"]
    assert result.report["method"] == "spline" and "may be thick" in result.report["method_reason"]
    filled = fill_slices(Volume(fine, np.eye(4)), slices=[20], method="auto", device="cpu", time_budget=0.0)
    assert filled.report["method"] == "model"
