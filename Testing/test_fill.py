"""Tests of the fill task: detection, filling, upsampling geometry, methods, bad input, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_phantom, oblique_matrix

from MedSynthLib.errors import Cancelled, InputError, ModelError
from MedSynthLib.metrics import psnr
from MedSynthLib.progress import CancelToken
from MedSynthLib.network_inputs import FILL_INPUT_SPEC, make_fill_inputs
from MedSynthLib.tasks.fill import fill_slices, find_missing_slices, parse_slice_list, upsample_slices
from MedSynthLib.volume import Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest


FAST_SELFSUP = {"selfsup": {"steps": 15, "batch": 4, "patch": 32, "features": (4, 4, 8, 8, 8, 4)}}


def ramp_volume(shape=(9, 20, 24), dtype=np.float32, matrix=None) -> Volume:
    """Intensity linear in the slice index: linear interpolation restores it exactly."""
    k = np.arange(shape[0], dtype=np.float64)[:, None, None]
    base = np.linspace(10, 50, shape[1] * shape[2]).reshape(1, shape[1], shape[2])
    return Volume((3.0 * k + base).astype(dtype), oblique_matrix() if matrix is None else matrix)


def moving_disc(count=9, size=48, step=1.5) -> Volume:
    """A bright disc whose centre moves by ``step`` voxels per slice: motion that linear blending smears."""
    y, x = np.mgrid[:size, :size]
    slices = [100.0 * (((x - 14 - step * s) ** 2 + (y - 24) ** 2) < 64) for s in range(count)]
    return Volume(np.stack(slices).astype(np.float32), oblique_matrix(spacing=(1.0, 1.0, 1.0)))


# ---- slice lists and bad input ---------------------------------------------------------------


def test_parse_slice_list():
    assert parse_slice_list("3,7,10-12") == [3, 7, 10, 11, 12]
    assert parse_slice_list(" 5 ") == [5]
    with pytest.raises(InputError, match="runs backwards"):
        parse_slice_list("9-3")
    with pytest.raises(InputError, match="indices or ranges"):
        parse_slice_list("a,b")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"slices": [40]}, r"indices in \[0, 8\]"),
        ({"slices": [-1]}, r"indices in \[0, 8\]"),
        ({"slices": list(range(9))}, "every slice"),
        ({"slices": list(range(8))}, "good slice"),
        ({"slices": [0]}, "no good slice on one side"),
        ({"slices": [8]}, "no good slice on one side"),
        ({"slices": [3], "axis": "x"}, "axis must be"),
        ({"slices": [3], "method": "magic"}, "method must be"),
    ],
)
def test_fill_bad_input(kwargs, message):
    volume = ramp_volume()
    before = volume.array.copy()
    with pytest.raises(InputError, match=message):
        fill_slices(volume, **kwargs)
    np.testing.assert_array_equal(volume.array, before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"factor": 2, "spacing": 1.0}, "either a factor or a target spacing"),
        ({"factor": 1}, r"factor must be a number in \[2, 16\], got 1"),
        ({"factor": 2.5}, "factor must be a whole number, got 2.5"),
        ({"factor": 17}, r"factor must be a number in \[2, 16\]"),
        ({"spacing": 5.0}, "not smaller"),
        ({"spacing": -1.0}, "spacing must be a number > 0"),
        ({"factor": 2, "axis": 7}, "axis must be"),
    ],
)
def test_upsample_bad_input(kwargs, message):
    with pytest.raises(InputError, match=message):
        upsample_slices(ramp_volume(), **kwargs)


def test_upsample_default_factor_is_two_and_options_object_equals_keywords():
    """Neither factor nor spacing: the options' default factor 2; an UpsampleOptions gives the same voxels."""
    from MedSynthLib.tasks.fill import UpsampleOptions

    by_default = upsample_slices(ramp_volume(), method="linear")
    by_object = upsample_slices(ramp_volume(), UpsampleOptions(factor=2, method="linear"))
    assert by_default.report["factor"] == 2.0
    np.testing.assert_array_equal(by_default.volume.array, by_object.volume.array)
    with pytest.raises(InputError, match="unknown option 'speed'"):
        upsample_slices(ramp_volume(), speed=2)


# ---- filling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_fill_linear_keeps_everything_else(dtype):
    volume = ramp_volume(dtype=dtype)
    damaged = volume.array.copy()
    damaged[3] = 0
    damaged[5:8] = 0  # a 3-slice slab
    source = Volume(damaged, volume.ijk_to_ras)
    result = fill_slices(source, slices=[3, 5, 6, 7], method="linear")
    out = result.volume.array
    assert out.dtype == np.dtype(dtype)
    assert result.volume.same_grid(volume, atol=0)
    untouched = [0, 1, 2, 4, 8]
    np.testing.assert_array_equal(out[untouched], damaged[untouched])  # bit-identical
    np.testing.assert_array_equal(source.array, damaged)  # input not mutated
    # The ramp is linear in k, so slab slices at fractional positions 1/4, 2/4, 3/4 come back exactly.
    tolerance = 0.51 if np.dtype(dtype).kind in "iu" else 1e-3
    np.testing.assert_allclose(out[[3, 5, 6, 7]], volume.array[[3, 5, 6, 7]], atol=tolerance)
    assert result.slices == (3, 5, 6, 7)
    assert result.report["method"] == "linear" and result.report["runs"] == [[3, 3], [5, 7]]
    assert out.min() >= damaged[untouched].min() and out.max() <= damaged[untouched].max()


def test_fill_along_other_axes_and_cubic():
    volume = ramp_volume()
    array = np.ascontiguousarray(np.transpose(volume.array, (2, 1, 0)))  # slices now along array axis 2 (i)
    rotated = Volume(array, volume.ijk_to_ras)
    for method in ("linear", "cubic"):
        result = fill_slices(rotated, slices=[4], axis="i", method=method)
        assert result.axis == 2 and result.report["axis"] == "i"
        np.testing.assert_allclose(result.volume.array[:, :, 4], array[:, :, 4], atol=1e-3)
        np.testing.assert_array_equal(np.delete(result.volume.array, 4, axis=2), np.delete(array, 4, axis=2))


def test_fill_cancel_leaves_input_untouched():
    volume = moving_disc()
    before = volume.array.copy()
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        fill_slices(volume, slices=[4], method="flow", device="cpu", cancel=token)
    np.testing.assert_array_equal(volume.array, before)


def test_flow_beats_linear_on_motion():
    volume = moving_disc(step=2.0)
    missing = [2, 4, 6]
    truth = volume.array[missing].astype(np.float64)
    linear = fill_slices(volume, slices=missing, method="linear").volume.array[missing]
    result = fill_slices(volume, slices=missing, method="flow", device="cpu")
    flow = result.volume.array[missing]
    assert result.report["method"] == "flow" and result.report["flow"]["pairs"] == 3
    assert psnr(truth, flow, data_range=100) > psnr(truth, linear, data_range=100) + 3


def test_selfsup_is_deterministic_and_fills_only_the_gaps():
    volume = make_phantom((10, 40, 40), dtype=np.float32)  # float: seed effects of a short training stay visible
    runs = [
        fill_slices(volume, slices=[3, 6, 7], method="selfsup", device="cpu", seed=3, method_options=FAST_SELFSUP)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].volume.array, runs[1].volume.array)
    out = runs[0].volume.array
    assert out.dtype == np.float32
    keep = [0, 1, 2, 4, 5, 8, 9]
    np.testing.assert_array_equal(out[keep], volume.array[keep])
    report = runs[0].report
    assert report["method"] == "selfsup" and report["selfsup"]["gap_lengths"] == [1, 2]
    assert report["selfsup"]["steps"] == 15 and report["device"] == "CPU"
    other = fill_slices(volume, slices=[3, 6, 7], method="selfsup", device="cpu", seed=4, method_options=FAST_SELFSUP)
    assert not np.array_equal(other.volume.array, out)


@pytest.mark.parametrize(("flips", "flip_axes"), [(2, (2,)), (4, (2,)), (4, (1,)), (4, (1, 2))])
def test_selfsup_flip_averaging_is_equivariant_to_the_flips_it_averages(flips, flip_axes):
    """With ``flips`` variants the averaged prediction of mirrored planes is the mirrored prediction:
    however the planes are stored, both halves of the network's view count equally."""
    import torch

    from MedSynthLib.tasks.fill._selfsup import _network, _predict_residual

    torch.manual_seed(0)
    network = _network((4, 4, 8, 8, 8, 4))
    for module in network.modules():  # the zero-initialised last layer would make every prediction 0
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.3)
    network.eval()
    rng = np.random.default_rng(0)
    planes = rng.random((3, 20, 24), dtype=np.float32)
    dist = np.broadcast_to(rng.random(20, dtype=np.float32)[:, None], (20, 24))
    options = dict(flips=flips, device="cpu", batch_size=8, amp=False)
    plain = _predict_residual(network, planes, dist, **options)
    mirrored = _predict_residual(network, np.flip(planes, flip_axes).copy(),
                                 np.flip(dist, tuple(a - 1 for a in flip_axes)).copy(), **options)
    np.testing.assert_allclose(np.flip(mirrored, flip_axes), plain, atol=1e-5)
    single = _predict_residual(network, planes, dist, **{**options, "flips": 1})
    assert np.abs(single - plain).max() > 1e-3  # the network itself is not symmetric: the test can fail


def test_selfsup_flips_are_reported_and_checked():
    volume = make_phantom((10, 40, 40), dtype=np.float32)
    options = {"selfsup": {**FAST_SELFSUP["selfsup"], "flips": 4}}
    result = fill_slices(volume, slices=[3, 6], method="selfsup", device="cpu", seed=3, method_options=options)
    assert result.report["selfsup"]["flips"] == 4
    keep = [0, 1, 2, 4, 5, 7, 8, 9]
    np.testing.assert_array_equal(result.volume.array[keep], volume.array[keep])
    with pytest.raises(InputError, match="flips must be 'auto', 1, 2 or 4"):
        fill_slices(volume, slices=[3], method="selfsup", device="cpu",
                    method_options={"selfsup": {**FAST_SELFSUP["selfsup"], "flips": 3}})


def test_selfsup_auto_flips_stay_within_a_tenth_of_the_training_time():
    from MedSynthLib.tasks.fill._interp import make_plan
    from MedSynthLib.tasks.fill._selfsup import FLIP_SHARE, _CPU_VOXEL_S, _flips, _inference_voxels, training_plan

    cfg = training_plan(torch.device("cpu"))
    train = cfg["steps"] * {"bfloat16": 0.033, "float32": 0.043}[cfg["precision"]]
    for shape, step in (((95, 233, 197), 2), ((20, 64, 64), 2), ((78, 150, 116), 2), ((95, 512, 512), 2)):
        positions = np.arange(shape[0]) * step
        plan = make_plan(positions.astype(float), (positions[:-1] + 1).astype(float))
        good = np.zeros(shape, np.float32)
        flips = _flips(cfg, good, plan)
        once = _inference_voxels(good, plan, cfg["margin"]) * _CPU_VOXEL_S
        assert (flips - 1) * once <= FLIP_SHARE * train
        bigger = {1: 2, 2: 4, 4: None}[flips]
        assert bigger is None or (bigger - 1) * once > FLIP_SHARE * train
    assert _flips({**cfg, "flips": 2}, good, plan) == 2


def test_selfsup_training_precision_is_chosen_and_reported():
    import torch

    from MedSynthLib.tasks.fill._selfsup import AUTO_STEPS, training_autocast_dtype, training_plan

    cpu = torch.device("cpu")
    assert training_autocast_dtype(cpu, "off") is None
    assert training_autocast_dtype(cpu, "bf16") == torch.bfloat16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert training_autocast_dtype(cpu, "auto") == (torch.bfloat16 if native else None)
    # the automatic step count follows the precision; the plan is the same for the same machine
    assert training_plan(cpu, {"mixed_precision": "bf16"})["steps"] == AUTO_STEPS["bfloat16"]
    assert training_plan(cpu, {"mixed_precision": "off"})["steps"] == AUTO_STEPS["float32"]
    assert training_plan(cpu, {"mixed_precision": "bf16"})["workers"] == 1
    assert training_plan(cpu, {"steps": 7})["steps"] == 7
    with pytest.raises(InputError, match="steps"):
        training_plan(cpu, {"steps": 0})
    with pytest.raises(InputError, match="mixed_precision"):
        training_autocast_dtype(cpu, "fp8")
    volume = make_phantom((10, 40, 40), dtype=np.float32)
    options = {"selfsup": {**FAST_SELFSUP["selfsup"], "mixed_precision": "off"}}
    full = fill_slices(volume, slices=[3, 6], method="selfsup", device="cpu", seed=3, method_options=options)
    assert full.report["selfsup"]["training_precision"] == "float32"
    options["selfsup"]["mixed_precision"] = "bf16"
    half = fill_slices(volume, slices=[3, 6], method="selfsup", device="cpu", seed=3, method_options=options)
    assert half.report["selfsup"]["training_precision"] == "bfloat16"
    # a different arithmetic, the same method: the fills agree closely, the kept slices exactly
    filled = full.volume.array[[3, 6]].astype(np.float64)
    assert np.abs(half.volume.array[[3, 6]] - filled).max() < 0.05 * np.ptp(volume.array)
    np.testing.assert_array_equal(half.volume.array[[0, 1, 2, 4, 5, 7, 8, 9]], volume.array[[0, 1, 2, 4, 5, 7, 8, 9]])


def test_selfsup_threaded_data_parallel_training_is_the_same_computation():
    from MedSynthLib.tasks.fill._selfsup import training_workers

    assert training_workers(torch.device("cuda"), "auto", 16) == 1
    assert 16 % training_workers(torch.device("cpu"), "auto", 16) == 0
    with pytest.raises(InputError, match="divides the batch"):
        training_workers(torch.device("cpu"), 3, 16)
    volume = make_phantom((10, 40, 40), dtype=np.float32)
    threads = torch.get_num_threads()
    runs = {}
    for workers in (1, 2, 2):
        options = {"selfsup": {**FAST_SELFSUP["selfsup"], "workers": workers, "mixed_precision": "off"}}
        result = fill_slices(volume, slices=[3, 6], method="selfsup", device="cpu", seed=3, method_options=options)
        assert result.report["selfsup"]["workers"] == workers
        runs.setdefault(workers, []).append(result.volume.array)
    assert torch.get_num_threads() == threads  # restored after training
    np.testing.assert_array_equal(runs[2][0], runs[2][1])  # deterministic whatever the thread timing
    # two halves of the batch, gradients averaged: the same step as the whole batch, up to rounding
    assert np.abs(runs[2][0] - runs[1][0]).max() < 1e-3 * np.ptp(volume.array)


def test_selfsup_thick_slice_training_strips_step_like_the_slices():
    from MedSynthLib.tasks.fill._selfsup import _PatchSampler

    # rows hold their own index: a strip sampled every `ratio` pixels steps by `ratio` from row to row
    y = np.arange(200, dtype=np.float32)
    good = np.broadcast_to(y[None, :, None], (4, 200, 200)).copy()
    good = good + np.swapaxes(good, 1, 2)  # the second orientation sees the same ramp
    keep = np.ones(40, bool)
    keep[1::2] = False  # x2
    for ratio, rows_allowed in ((1.0, 64), (4.0, 50)):
        sampler = _PatchSampler(good, keep, 64, 0.0, np.random.default_rng(0), grid_ratio=(ratio, ratio))
        assert sampler.rows == min(64, rows_allowed)
        _, target, _ = sampler.sample(8)
        steps = np.abs(np.diff(target[:, 0], axis=1))  # flips reverse some strips
        assert np.allclose(np.median(steps), ratio, atol=0.05)
    # below the threshold the strips are the in-plane rows as they are (near-isotropic grids)
    sampler = _PatchSampler(good, keep, 64, 0.0, np.random.default_rng(0), grid_ratio=(1.4, 1.4))
    assert sampler.ratios == [1.0, 1.0]


def test_auto_reports_what_ran(monkeypatch):
    """Over the budget on thin slices auto runs the bundled model (it beats flow there); without one, flow."""
    import MedSynthLib.models as models

    volume = moving_disc()
    result = fill_slices(volume, slices=[4], method="auto", device="cpu", time_budget=0.0)
    assert result.report["method"] == "model" and result.report["method_requested"] == "auto"
    assert "budget" in result.report["method_reason"] and "bundled fill model" in result.report["method_reason"]
    assert result.report["model"]["name"] == "fill_default"
    np.testing.assert_array_equal(np.delete(result.volume.array, 4, axis=0), np.delete(volume.array, 4, axis=0))
    wide = fill_slices(volume, slices=[2, 3, 4, 5], method="auto", device="cpu", time_budget=0.0)
    assert wide.report["method"] == "flow"  # a 5-slice gap: wider than the bundled model was trained on (4)
    monkeypatch.setattr(models, "bundled_package", lambda task: None)
    result = fill_slices(volume, slices=[4], method="auto", device="cpu", time_budget=0.0)
    assert result.report["method"] == "flow" and "flow needs no training" in result.report["method_reason"]


# ---- the model path --------------------------------------------------------------------------


def _tiny_package(tmp_path, *, zero=False, spec=None):
    from MedSynthLib.models.networks import build_network
    from MedSynthLib.models.package import save_package

    args = {"spatial_dims": 2, "in_channels": FILL_INPUT_SPEC["channels"], "out_channels": 1,
            "features": [4, 4, 8, 8, 8, 4]}
    torch.manual_seed(0)
    network = build_network("basic_unet", **args)
    if zero:
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.zero_()
    return save_package(network, tmp_path / "tiny_fill", task="fill", family="unet", builder="basic_unet",
                        builder_args=args, input_spec=spec or dict(FILL_INPUT_SPEC), description="test")


def test_model_method_with_tiny_package(tmp_path):
    volume = ramp_volume(shape=(9, 32, 32))
    zero = _tiny_package(tmp_path, zero=True)
    result = fill_slices(volume, slices=[4, 5], method="model", model=zero, device="cpu")
    # A network that predicts a zero residual is exactly linear interpolation.
    np.testing.assert_allclose(result.volume.array[[4, 5]], volume.array[[4, 5]], atol=1e-3)
    assert result.report["method"] == "model" and result.report["model"]["name"] == "tiny_fill"
    random = _tiny_package(tmp_path)
    auto = fill_slices(volume, slices=[4], model=random, device="cpu")
    assert auto.report["method"] == "model"
    assert np.all(np.isfinite(auto.volume.array))


def test_model_method_runs_a_diffusion_package_from_the_trainer(tiny_data, tmp_path):
    from MedSynthLib.training import TrainConfig, train

    config = TrainConfig(
        task="fill", family="diffusion", data=[str(tiny_data / "images")], out=str(tmp_path / "run"), epochs=1,
        batch_size=4, samples_per_epoch=8, crop=16, val_samples=2, augment=0.0, resample_each_epoch=False,
        tensorboard=False, network={"channels": [8, 8, 16], "num_head_channels": 8, "norm_num_groups": 4},
        loss={"num_train_timesteps": 100, "val_ddim_steps": 2},
    )
    package = train(config).package
    volume = make_phantom((10, 40, 48), matrix=oblique_matrix())
    options = {"model": {"ddim_steps": 3}}
    runs = [fill_slices(volume, slices=[3, 6, 7], method="model", model=package, device="cpu", seed=1,
                        method_options=options) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].volume.array, runs[1].volume.array)
    keep = [0, 1, 2, 4, 5, 8, 9]
    np.testing.assert_array_equal(runs[0].volume.array[keep], volume.array[keep])
    assert np.all(np.isfinite(runs[0].volume.array)) and runs[0].volume.same_grid(volume)
    assert runs[0].report["model"]["family"] == "diffusion" and runs[0].report["model"]["ddim_steps"] == 3
    other = fill_slices(volume, slices=[3, 6, 7], method="model", model=package, device="cpu", seed=2,
                        method_options=options)
    assert not np.array_equal(other.volume.array, runs[0].volume.array)
    with pytest.raises(InputError, match="ddim_steps"):
        fill_slices(volume, slices=[3], method="model", model=package, method_options={"model": {"ddim_steps": 0}})
    with pytest.raises(InputError, match="unknown model option"):
        fill_slices(volume, slices=[3], method="model", model=package, method_options={"model": {"steps": 3}})


def test_model_spec_mismatch_is_refused(tmp_path):
    bad = _tiny_package(tmp_path, spec=dict(FILL_INPUT_SPEC, context=3))
    with pytest.raises(ModelError, match="context"):
        fill_slices(ramp_volume(shape=(9, 32, 32)), slices=[4], method="model", model=bad)
    # a version-1 package (no offset channels: it extrapolated wrongly on x2 grids) is refused by name
    old = _tiny_package(tmp_path / "v1", spec=dict(FILL_INPUT_SPEC, version=1))
    with pytest.raises(ModelError, match="'version' is 1, this MedSynth's fill models use 2"):
        fill_slices(ramp_volume(shape=(9, 32, 32)), slices=[4], method="model", model=old)


def test_make_fill_inputs_layout():
    before = np.stack([np.full((2, 4, 4), 1.0), np.full((2, 4, 4), 2.0)], axis=1)  # nearest first
    after = np.full((2, 1, 4, 4), 5.0)  # one slice only: repeated
    x = make_fill_inputs(before, after, np.array([0.25, 0.5]), offsets=np.array([[1.0, 0.0], [0.5, 0.0]]))
    assert x.shape == (2, FILL_INPUT_SPEC["channels"], 4, 4) == (2, 7, 4, 4) and x.dtype == np.float32
    assert x[0, :, 0, 0].tolist() == [1.0, 2.0, 5.0, 5.0, 0.25, 1.0, 0.0]
    assert x[1, :, 0, 0].tolist() == [1.0, 2.0, 5.0, 5.0, 0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="strictly between"):
        make_fill_inputs(before, after, 1.0, offsets=1.0)
    with pytest.raises(ValueError, match="offsets"):
        make_fill_inputs(before, after, 0.5, offsets=-1.0)


def test_context_offsets_tell_a_regular_grid_from_isolated_gaps():
    """x2 puts the farther context slices a whole gap away, an isolated slice or slab one slice away."""
    from MedSynthLib.tasks.fill._interp import context_offsets, make_plan

    every_second = make_plan(np.arange(0, 20, 2).astype(float), np.arange(1, 19, 2).astype(float))
    offsets = context_offsets(every_second, 2)
    assert offsets.shape == (9, 2)
    np.testing.assert_array_equal(offsets[1:-1], 1.0)
    assert offsets[0].tolist() == [0.0, 1.0] and offsets[-1].tolist() == [1.0, 0.0]  # edges repeat a slice
    good = np.array([0, 1, 2, 3, 7, 8, 9], float)  # a 3-slice slab: 4, 5, 6
    slab = context_offsets(make_plan(good, np.array([4.0, 5.0, 6.0])), 2)
    np.testing.assert_allclose(slab, 0.25)
    isolated = context_offsets(make_plan(np.array([0, 1, 2, 4, 5, 6], float), np.array([3.0])), 2)
    np.testing.assert_allclose(isolated, 0.5)


# ---- upsampling geometry ---------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["k", "i"])
def test_upsample_factor_keeps_physical_positions(axis):
    volume = make_phantom((7, 20, 24))
    result = upsample_slices(volume, factor=3, axis=axis, method="linear")
    a = {"k": 0, "i": 2}[axis]
    old_n = volume.array.shape[a]
    new = result.volume
    assert new.array.shape[a] == (old_n - 1) * 3 + 1
    assert new.spacing_along(a) == pytest.approx(volume.spacing_along(a) / 3, rel=1e-12)
    np.testing.assert_allclose(new.direction, volume.direction, atol=1e-12)
    np.testing.assert_allclose(new.origin, volume.origin, atol=1e-12)
    for index in range(old_n):  # original slice `index` is new slice 3 * index, same voxels, same place
        np.testing.assert_array_equal(np.take(new.array, 3 * index, axis=a), np.take(volume.array, index, axis=a))
        ijk_old = [3, 5, 2]
        ijk_old[2 - a] = index
        ijk_new = list(ijk_old)
        ijk_new[2 - a] = 3 * index
        np.testing.assert_allclose(new.ijk_points_to_ras(ijk_new), volume.ijk_points_to_ras(ijk_old), atol=1e-9)
    assert len(result.slices) == new.array.shape[a] - old_n


def test_upsample_to_spacing_ends_at_last_slice():
    volume = ramp_volume(shape=(6, 16, 16), matrix=oblique_matrix(spacing=(0.8, 0.9, 5.0)))
    result = upsample_slices(volume, spacing=2.0, method="linear")
    new = result.volume
    assert new.spacing_along(0) == pytest.approx(2.0, rel=1e-12)
    # 5 gaps of 5 mm = 25 mm; the new grid stops at 24 mm (13 slices), never past the last slice.
    assert new.array.shape[0] == 13
    last_old = volume.ijk_points_to_ras([0, 0, 5])
    last_new = new.ijk_points_to_ras([0, 0, 12])
    first_axis = volume.direction[:, 2]
    assert np.dot(last_old - last_new, first_axis) == pytest.approx(1.0)
    for j in (0, 5, 10):  # 0, 10, 20 mm fall on original slices 0, 2, 4: copied bit for bit
        np.testing.assert_array_equal(new.array[j], volume.array[j * 2 // 5])
    # The ramp is linear along k, so every new slice matches it at its physical position.
    positions = np.arange(13) * 2.0 / 5.0
    expected = 3.0 * positions[:, None, None] + (volume.array[0] - 0)[None]
    np.testing.assert_allclose(new.array, expected, atol=1e-3)


def test_upsample_int16_ct_keeps_dtype_and_range():
    volume = make_phantom((5, 24, 24), dtype=np.int16)
    result = upsample_slices(volume, factor=2, method="cubic")
    assert result.volume.array.dtype == np.int16
    assert result.volume.array.min() >= volume.array.min() and result.volume.array.max() <= volume.array.max()


# ---- detection -------------------------------------------------------------------------------


def _defect_phantom():
    volume = make_phantom((24, 64, 64), dtype=np.int16, seed=1)
    array = volume.array.copy()
    rng = np.random.default_rng(0)
    array[5] = 0
    array[9] = rng.integers(0, 200, array[9].shape)
    array[13, :32] = (array[13, :32] * 0.3).astype(np.int16)
    array[17] = np.roll(array[17], 10, axis=1)
    return volume, Volume(array, volume.ijk_to_ras)


def test_detection_finds_planted_defects_only():
    clean, damaged = _defect_phantom()
    assert find_missing_slices(clean) == []
    found = find_missing_slices(damaged)
    assert [index for index, _ in found] == [5, 9, 13, 17]
    reasons = dict(found)
    assert reasons[5].startswith("blank") and all(reasons[i].startswith("corrupted") for i in (9, 13, 17))


def test_fill_auto_detects_and_fills():
    clean, damaged = _defect_phantom()
    result = fill_slices(damaged, method="linear")
    assert result.slices == (5, 9, 13, 17)
    error = np.abs(result.volume.array.astype(float) - clean.array.astype(float))[[5, 9, 13, 17]].mean()
    assert error < 10


def test_nothing_to_fill_returns_copy():
    clean, _ = _defect_phantom()
    result = fill_slices(clean, method="linear")
    assert result.slices == () and result.report["warnings"]
    np.testing.assert_array_equal(result.volume.array, clean.array)


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_detect_fill_upsample(tmp_path, capsys):
    from MedSynthLib.cli import main
    from MedSynthLib.io import read_volume, write_volume

    _, damaged = _defect_phantom()
    source = tmp_path / "damaged.nrrd"
    write_volume(damaged, source)
    assert main(["detect", str(source), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["index"] for s in listed["slices"]] == [5, 9, 13, 17]
    out, report = tmp_path / "filled.nii.gz", tmp_path / "report.json"
    assert main(["-q", "fill", str(source), str(out), "--slices", "5,9,13-13,17", "--method", "cubic",
                 "--report", str(report)]) == 0
    assert read_volume(out).array.dtype == np.int16
    assert json.loads(report.read_text())["slices"] == [5, 9, 13, 17]
    up = tmp_path / "up.mha"
    assert main(["-q", "upsample", str(source), str(up), "--factor", "2", "--method", "linear"]) == 0
    assert read_volume(up).array.shape[0] == 47


def test_cli_bad_input_writes_nothing(tmp_path, capsys):
    from MedSynthLib.cli import main
    from MedSynthLib.io import write_volume

    source = tmp_path / "v.nrrd"
    write_volume(ramp_volume(), source)
    out = tmp_path / "out.nrrd"
    assert main(["fill", str(source), str(out), "--slices", "3,99"]) == 2
    assert "indices in [0, 8]" in capsys.readouterr().err
    assert main(["upsample", str(source), str(out), "--spacing", "9"]) == 2
    assert main(["fill", str(source), str(tmp_path / "out.png"), "--slices", "3"]) == 2
    assert not out.exists()


def test_upsample_selfsup_non_integer_ratio_goes_through_next_integer_factor():
    volume = make_phantom((5, 32, 32), matrix=oblique_matrix(spacing=(1.0, 1.0, 3.0)))
    result = upsample_slices(volume, spacing=1.2, method="selfsup", device="cpu", method_options=FAST_SELFSUP)
    new = result.volume
    assert new.spacing_along(0) == pytest.approx(1.2, rel=1e-12)
    assert new.array.shape[0] == 11  # 12 mm of slices at 1.2 mm: 0 .. 12.0
    np.testing.assert_array_equal(new.array[0], volume.array[0])  # 0 mm and 6 mm and 12 mm are originals
    np.testing.assert_array_equal(new.array[5], volume.array[2])
    np.testing.assert_array_equal(new.array[10], volume.array[4])
    assert result.report["method"] == "selfsup" and any("non-integer" in w for w in result.report["warnings"])
    assert result.slices == (1, 2, 3, 4, 6, 7, 8, 9)


def test_auto_uses_flow_on_thick_slices():
    volume = make_phantom((30, 32, 32))
    thick = Volume(volume.array, np.diag([0.9, 0.9, 2.7, 1.0]))  # 2.7 mm slices, 0.9 mm pixels
    result = fill_slices(thick, slices=[10, 20], method="auto", device="cpu", time_budget=600,
                         method_options=FAST_SELFSUP)
    assert result.report["method"] == "flow" and "coarser than the in-plane" in result.report["method_reason"]
    upsampled = upsample_slices(thick, factor=3, method="auto", device="cpu", time_budget=600,
                                method_options=FAST_SELFSUP)
    assert upsampled.report["method"] == "selfsup"  # a 0.9 mm grid: in-plane pairs match the missing slices


def test_auto_falls_back_to_linear_where_it_wins_on_held_out_acquired_slices():
    """Where linear interpolation is exact through-plane (each voxel linear in the slice index), no method can beat
    it on acquired slices held out with the fill's gaps: ``auto`` fills with linear and says why; the filled slices
    are the truth."""
    pattern = make_phantom((1, 32, 32)).array[0].astype(np.float32)
    ramp = np.linspace(0.5, 1.5, 30, dtype=np.float32)[:, None, None]
    truth = Volume(ramp * pattern + 10 * ramp, oblique_matrix(spacing=(0.9, 0.9, 2.7)))
    damaged = truth.array.copy()
    damaged[[10, 20, 21]] = 0
    result = fill_slices(truth.with_array(damaged), slices=[10, 20, 21], method="auto", device="cpu",
                         time_budget=600, method_options=FAST_SELFSUP)
    assert result.report["method"] == "linear", result.report["method_reason"]
    assert "held out with the fill's gaps, so linear" in result.report["method_reason"]
    np.testing.assert_allclose(result.volume.array[[10, 20, 21]], truth.array[[10, 20, 21]], rtol=1e-4, atol=1e-4)


def test_auto_uses_selfsup_on_isolated_gaps_when_it_fits_the_budget():
    volume = Volume(make_phantom((30, 32, 32)).array, np.eye(4))  # isotropic: in-plane pairs match
    result = fill_slices(volume, slices=[10, 20], method="auto", device="cpu", time_budget=600,
                         method_options=FAST_SELFSUP)
    assert result.report["method"] == "selfsup" and "within" in result.report["method_reason"]
    assert result.report["selfsup"]["steps"] == FAST_SELFSUP["selfsup"]["steps"]


def test_model_method_without_a_package_uses_the_bundled_default():
    from MedSynthLib.models import bundled_package

    if bundled_package("fill") is None:
        pytest.skip("no bundled fill package installed")
    from MedSynthLib.sample_data import load_sample

    volume = load_sample("mr-t1")
    result = fill_slices(volume, slices=[20], method="model", device="cpu")
    assert result.report["method"] == "model"
    assert result.report["model"]["name"] == "fill_default"
    others = np.delete(np.arange(volume.array.shape[0]), [20])
    assert np.array_equal(result.volume.array[others], volume.array[others])


def test_model_method_without_any_package_is_a_clear_error(monkeypatch):
    import MedSynthLib.models

    monkeypatch.setattr(MedSynthLib.models, "bundled_package", lambda task: None)
    volume = ramp_volume()
    before = volume.array.copy()
    with pytest.raises(InputError, match="needs a model package"):
        fill_slices(volume, slices=[3], method="model")
    np.testing.assert_array_equal(volume.array, before)
