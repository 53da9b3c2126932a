"""Non-central chi noise of multi-coil magnitudes (issue 30): the coil count from the air, chi's background sigma
and debiasing, the ``coils`` knob; one coil stays Rician, bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSynthLib.errors import InputError
from MedSynthLib.noise import estimate_noise_array, magnitude_debias, rician_debias
from MedSynthLib.reports import to_json
from MedSynthLib.tasks.enhance import DenoiseOptions, denoise
from MedSynthLib.volume import Volume

SIGMA, LEVEL = 5.0, 60.0


def _sum_of_squares(coils: int, seed: int = 0, shape=(24, 80, 80)):
    """A flat block (60) in air, root-sum-of-squares of ``coils`` coils of even sensitivity 1/sqrt(N) (so the
    signal is the truth), complex noise of sigma 5 per coil. Returns (clean, noisy, flat region)."""
    rng = np.random.default_rng(seed)
    clean = np.zeros(shape, np.float32)
    clean[4:20, 20:60, 20:60] = LEVEL
    total = np.zeros(shape)
    for _ in range(coils):
        total += (clean / np.sqrt(coils) + rng.normal(0, SIGMA, shape)) ** 2 + rng.normal(0, SIGMA, shape) ** 2
    flat = np.zeros(shape, bool)
    flat[6:18, 25:55, 25:55] = True
    return clean, np.sqrt(total).astype(np.float32), flat


@pytest.fixture(scope="module")
def chi8():
    return _sum_of_squares(8)


@pytest.fixture(scope="module")
def rician():
    return _sum_of_squares(1)


def test_eight_coils_are_read_from_the_air(chi8):
    _, noisy, _ = chi8
    volume = Volume(noisy, np.eye(4))
    estimate = estimate_noise_array(volume, coils=None)
    assert 5 <= estimate.coils <= 12, estimate.coils
    assert abs(estimate.sigma / SIGMA - 1) < 0.10, estimate.sigma
    assert estimate.noise_model.startswith("noncentral-chi,") and "estimated from the air" in estimate.noise_model
    assert estimate.agree  # the air now agrees with the in-tissue residual
    rayleigh = estimate_noise_array(volume)  # the default: one coil, Rayleigh's mode reads sigma far too high
    assert rayleigh.coils == 1 and rayleigh.sigma > 2 * SIGMA
    given = estimate_noise_array(volume, coils=8)
    assert "(given)" in given.noise_model and abs(given.sigma / SIGMA - 1) < 0.10
    json.loads(to_json(estimate.as_dict()))


def test_chi_debiasing_recovers_the_flat_mean(chi8):
    _, noisy, flat = chi8
    mean = np.array([noisy[flat].mean()], np.float32)  # what a smoother converges to on flat tissue
    chi = float(magnitude_debias(mean, SIGMA, 8)[0])
    rice = float(rician_debias(mean, SIGMA)[0])
    assert abs(chi / LEVEL - 1) < 0.02, chi
    assert abs(rice / LEVEL - 1) > 0.02, rice


def test_one_coil_is_rician_bit_for_bit(rician):
    _, noisy, flat = rician
    volume = Volume(noisy, np.eye(4))
    estimated, default = estimate_noise_array(volume, coils=None), estimate_noise_array(volume)
    assert estimated.coils == 1 and estimated.noise_model == "rician"
    assert estimated.sigma == default.sigma
    values = noisy[flat][:1000]
    np.testing.assert_array_equal(magnitude_debias(values, 4.3, 1), rician_debias(values, 4.3))
    np.testing.assert_array_equal(magnitude_debias(values, 4.3), np.sqrt(np.maximum(
        values * values - np.float32(4.3) ** 2, 0)))
    a = denoise(volume, method="aniso", local_noise="off")
    b = denoise(volume, method="aniso", local_noise="off", coils=1)
    np.testing.assert_array_equal(a.volume.array, b.volume.array)
    assert a.report["noise_model"] == "rician" and a.report["noise"]["coils"] == 1


def test_denoise_debiases_with_the_coils(chi8):
    clean, noisy, flat = chi8
    volume = Volume(noisy, np.eye(4))
    # the tissue as the mask: the air's larger debiasing (its chi level ~4 sigma) is not what is compared here
    chi = denoise(volume, method="dct", local_noise="off", mask=flat)
    assert chi.report["noise_model"].startswith("noncentral-chi,")
    assert chi.report["parameters"]["noise_model"] == chi.report["noise_model"]
    one = denoise(volume, method="dct", local_noise="off", coils=1, mask=flat)
    assert one.report["noise_model"] == "rician"
    inner = np.zeros(flat.shape, bool)
    inner[8:16, 30:50, 30:50] = True
    assert abs(chi.volume.array[inner].mean() / LEVEL - 1) < abs(one.volume.array[inner].mean() / LEVEL - 1)
    json.loads(to_json(chi.report))


def test_a_many_coil_magnitude_is_denoised_not_refused():
    """32 coils: the magnitude sits ~sqrt(63) sigma^2 / (2 x 60) = 2.6 sigma above the flat block. That bias is not
    noise: the plausibility check measures what was removed from the debiased input, so the method is accepted
    (before, 'it removed 2.6 sigma' refused every method and the volume came back unchanged)."""
    clean, noisy, flat = _sum_of_squares(32, seed=1)
    result = denoise(Volume(noisy, np.eye(4)), method="dct", local_noise="off")
    assert result.report["noise_model"].startswith("noncentral-chi,")
    inner = np.zeros(flat.shape, bool)
    inner[8:16, 30:50, 30:50] = True
    assert abs(result.volume.array[inner].mean() / LEVEL - 1) < 0.05, result.volume.array[inner].mean()
    assert noisy[inner].mean() / LEVEL - 1 > 0.15  # the input's bias, which the check no longer counts as removed
    assert result.report["plausibility"]["measures"]["removed_rms_over_sigma"] < 1.6
    # with a mask, the voxels outside it are the input itself: biased back they looked removed and the check
    # refused the method ('follows the edges', correlation 0.89)
    masked = denoise(Volume(noisy, np.eye(4)), method="dct", local_noise="off", mask=flat)
    assert abs(masked.volume.array[inner].mean() / LEVEL - 1) < 0.05, masked.volume.array[inner].mean()
    assert np.array_equal(masked.volume.array[~flat], noisy[~flat])


def test_the_coils_knob():
    assert DenoiseOptions().coils is None
    assert DenoiseOptions(coils=8).coils == 8
    with pytest.raises(InputError):
        DenoiseOptions(coils=0.5)
