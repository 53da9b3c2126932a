"""Tests of ``denoise``, the public function: its methods, options, mask, strength, model packages, bad input
and cancellation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import oblique_matrix
from MedSynthLib.errors import Cancelled, InputError, ModelError
from MedSynthLib.network_inputs import DENOISE_INPUT_SPEC, make_denoise_inputs
from MedSynthLib.progress import CancelToken
from MedSynthLib.tasks.enhance import DENOISE_METHODS, DenoiseOptions, correct_bias, denoise, enhance
from MedSynthLib.volume import Volume

from .phantoms import rician_noise, rmse


@pytest.mark.parametrize("method", ["nlm", "aniso"])
def test_classical_denoise_improves_and_keeps_geometry(noisy_head, method):
    clean, volume = noisy_head
    before = volume.array.copy()
    result = denoise(volume, method=method)
    mask = clean > 0
    assert rmse(result.volume.array, clean, mask) < 0.75 * rmse(volume.array, clean, mask)
    assert np.array_equal(result.volume.ijk_to_ras, volume.ijk_to_ras)
    assert result.volume.array.dtype == volume.array.dtype
    assert np.array_equal(volume.array, before)
    assert result.report["method"] == method and result.report["noise"]["model"] == "rician"


@pytest.mark.parametrize("method", ["dct", "nlm", "fusion"])
def test_every_method_returns_rician_data_debiased(method):
    """Dark tissue at SNR 3: the smoothed magnitude sits at sqrt(A^2 + sigma^2) (about 5 % high); every method
    returns the signal A itself, so choosing a method never changes the quantity estimated; CT is untouched."""
    sigma, dark = 10.0, 30.0
    clean = np.zeros((20, 48, 48), np.float32)
    clean[:, 6:42, 6:24], clean[:, 6:42, 24:42] = dark, 200.0
    volume = Volume(rician_noise(clean, sigma, seed=5), oblique_matrix(spacing=(1.0, 0.9, 0.9)))
    result = denoise(volume, method=method, modality="MR", device="cpu")
    inner = np.zeros(clean.shape, bool)
    inner[4:16, 12:36, 10:20] = True
    mean = float(result.volume.array[inner].mean())
    assert abs(mean - dark) < 0.4 * (np.sqrt(dark**2 + sigma**2) - dark), mean
    if method != "fusion":
        assert result.report["parameters"]["rician_debias"] is True


def test_integer_ct_stays_integer_hu():
    rng = np.random.default_rng(0)
    clean = np.full((10, 48, 48), -1000.0)
    clean[:, 8:40, 8:40] = 40.0
    clean[:, 20:28, 20:28] = 300.0
    volume = Volume((clean + rng.normal(0, 25, clean.shape)).astype(np.int16), oblique_matrix())
    result = denoise(volume, method="nlm")
    assert result.volume.array.dtype == np.int16
    assert result.noise.model == "gaussian"
    assert result.volume.array.min() >= volume.array.min() and result.volume.array.max() <= volume.array.max()
    soft = np.zeros(clean.shape, bool)
    soft[:, 10:18, 10:38] = True
    assert result.volume.array[soft].std() < 0.6 * volume.array[soft].std()


def test_mask_limits_the_change(noisy_head):
    _, volume = noisy_head
    mask = np.zeros(volume.array.shape, np.uint8)
    mask[4:12, 10:30, 10:40] = 1
    result = denoise(volume, method="aniso", mask=mask)
    outside = mask == 0
    assert np.array_equal(result.volume.array[outside], volume.array[outside])
    assert not np.array_equal(result.volume.array[~outside], volume.array[~outside])


def test_strength_zero_is_identity_and_strength_scales(noisy_head):
    _, volume = noisy_head
    assert np.array_equal(denoise(volume, method="nlm", strength=0).volume.array, volume.array)
    weak = denoise(volume, method="nlm", strength=0.5).volume.array
    strong = denoise(volume, method="nlm", strength=1.5).volume.array
    assert np.abs(strong - volume.array).mean() > np.abs(weak - volume.array).mean()


def _tiny_package(tmp_path, *, task="denoise", input_spec=None):
    from MedSynthLib.models import build_network, save_package

    args = {"spatial_dims": 2, "in_channels": 5, "out_channels": 1, "features": [4, 4, 4, 4, 4, 4]}
    torch.manual_seed(0)
    network = build_network("basic_unet", **args)
    return save_package(network, tmp_path / "tiny_denoise", task=task, family="unet", builder="basic_unet",
                        builder_args=args, input_spec=input_spec or DENOISE_INPUT_SPEC)


def test_model_method_with_a_tiny_package(tmp_path, noisy_head):
    _, volume = noisy_head
    path = _tiny_package(tmp_path)
    result = denoise(volume, model=path, device="cpu")  # auto picks the model ...
    # ... but an untrained network's output is not "noise removed": auto rejects it and falls back
    assert result.report["plausibility"]["rejected"][0]["method"] == "model"
    assert result.report["method"] == "fusion"
    assert result.volume.array.shape == volume.array.shape
    assert np.array_equal(result.volume.ijk_to_ras, volume.ijk_to_ras)
    with pytest.raises(InputError, match="implausible, nothing was written"):
        denoise(volume, method="model", model=path, device="cpu")
    accepted = denoise(volume, method="model", model=path, device="cpu", strength=0.05)  # a 5 % blend passes
    assert accepted.report["method"] == "model" and accepted.report["parameters"]["context"] == 2
    with pytest.raises(ModelError, match="'fill' model"):
        denoise(volume, method="model", model=_tiny_package(tmp_path / "f", task="fill"))
    with pytest.raises(ModelError, match="input format"):
        denoise(volume, method="model", model=_tiny_package(tmp_path / "s", input_spec={"context": 2}))


def test_model_method_without_a_package_runs_the_bundled_one(noisy_head):
    """As fill's model method does: no package named, the shipped denoise_default."""
    _, volume = noisy_head
    try:
        result = denoise(volume, method="model", device="cpu")
    except InputError as error:  # the plausibility check may refuse it on a phantom: it ran, and says so
        assert "implausible" in str(error)
        return
    assert "denoise_default" in json.dumps(result.report)


def test_denoise_inputs_layout():
    x = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    stacked = make_denoise_inputs(x, axis=0, context=1)
    assert stacked.shape == (4, 3, 3, 2)
    assert np.array_equal(stacked[0, 0], x[0]) and np.array_equal(stacked[2, 2], x[3])
    assert np.array_equal(stacked[:, 1], x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strength": 2.5}, "strength"),
        ({"strength": float("nan")}, "strength"),
        ({"method": "magic"}, "method"),
        ({"mask": np.zeros((16, 48, 56))}, "empty"),
        ({"mask": np.ones((3, 3, 3))}, "shape"),
        ({"method_options": {"selfsup": {"steps": 0}}}, "selfsup steps"),
        ({"method_options": {"nlm": {"h": 1}}}, "method_options"),
    ],
)
def test_denoise_bad_input(noisy_head, kwargs, message):
    _, volume = noisy_head
    with pytest.raises(InputError, match=message):
        denoise(volume, **kwargs)


def test_mask_on_another_grid_is_refused(noisy_head):
    _, volume = noisy_head
    mask = Volume(np.ones(volume.array.shape, np.uint8), oblique_matrix(spacing=(2.0, 1.0, 1.1)))
    with pytest.raises(InputError, match="another grid"):
        denoise(volume, method="aniso", mask=mask)
    with pytest.raises(InputError, match="another grid"):
        correct_bias(volume, mask=mask)


def test_cancel_leaves_input_untouched(noisy_head):
    _, volume = noisy_head
    before = volume.array.copy()
    token = CancelToken()

    def progress(fraction, message):
        if "training" in message:
            token.cancel()

    with pytest.raises(Cancelled):
        denoise(volume, method="selfsup", method_options={"selfsup": {"steps": 50}}, progress=progress, cancel=token, device="cpu")
    assert token.cancelled
    assert np.array_equal(volume.array, before)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        enhance(volume, steps="bias,denoise:aniso", cancel=token)
    assert np.array_equal(volume.array, before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_absent_device_is_an_error_for_classical_methods_too(noisy_head):
    from MedSynthLib.errors import DeviceError

    _, volume = noisy_head
    with pytest.raises(DeviceError):
        denoise(volume, method="aniso", device="cuda")
    with pytest.raises(DeviceError):
        enhance(volume, steps="bias", device="cuda")


def test_an_options_object_and_keywords_are_one_request(noisy_head):
    """``denoise(volume, DenoiseOptions(...))`` is ``denoise(volume, **knobs)``; keywords go on top of an object."""
    _, volume = noisy_head
    by_keywords = denoise(volume, method="dct", strength=0.5, device="cpu")
    options = DenoiseOptions(method="dct", device="cpu")
    assert np.array_equal(denoise(volume, options.replace(strength=0.5)).volume.array, by_keywords.volume.array)
    assert np.array_equal(denoise(volume, options, strength=0.5).volume.array, by_keywords.volume.array)
    with pytest.raises(InputError, match="unknown option 'sigma'"):
        denoise(volume, sigma=3)


def test_every_denoise_method_has_a_runner_and_no_name_falls_through():
    """The dispatcher is a table: a method without a runner is an error, never another method run silently."""
    from MedSynthLib.tasks.enhance import _runners

    assert set(_runners.RUNNERS) == set(DENOISE_METHODS) - {"auto"}
    with pytest.raises(InputError, match="no method 'magic'"):
        _runners.run_method("magic", DenoiseOptions(), None, None)
