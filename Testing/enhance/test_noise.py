"""Tests of the noise the denoiser is set from: ``estimate_noise`` (MR background, CT and in-tissue residual) and
the cross-check of two estimators."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage

from conftest import make_phantom, oblique_matrix
from MedSynthLib.tasks.enhance import denoise, estimate_noise
from MedSynthLib.volume import Volume

from .phantoms import head_with_loud_background, rician_noise, rmse


def test_estimate_noise_rician_background(noisy_head):
    _, volume = noisy_head
    estimate = estimate_noise(volume)
    assert estimate.model == "rician" and estimate.method == "background"
    assert estimate.sigma == pytest.approx(6.0, rel=0.1)


def test_estimate_noise_ct_gaussian():
    rng = np.random.default_rng(0)
    clean = np.full((12, 64, 64), -1000.0)
    clean[:, 8:56, 8:56] = 40.0
    noisy = (clean + rng.normal(0, 20, clean.shape)).astype(np.int16)
    estimate = estimate_noise(Volume(noisy, oblique_matrix()))
    assert estimate.modality == "CT" and estimate.model == "gaussian"
    assert estimate.sigma == pytest.approx(20.0, rel=0.15)


def test_estimate_noise_residual_without_background():
    # tissue fills the field of view: no air, so the in-tissue high-pass estimate must be used
    clean = 200 + 20 * np.sin(np.linspace(0, 3, 64))[None, None, :] * np.ones((10, 64, 64))
    volume = Volume(rician_noise(clean, 8.0, seed=3), np.diag([1.0, 1.0, 3.0, 1.0]))
    estimate = estimate_noise(volume, mask=np.ones(clean.shape, bool))
    assert estimate.method == "residual"
    assert estimate.sigma == pytest.approx(8.0, rel=0.15)


@pytest.mark.parametrize("sigma", [150.0, 250.0])
def test_noise_estimate_of_a_thick_slice_crop_inside_the_tissue_is_not_zero(sigma):
    """A crop inside the head (no air), 6.5 mm slices, two tissues finely mixed, heavy Rician noise: the
    Otsu mask is fragmented by the noise and a 3D erosion emptied it, so sigma came out 0 and ``auto`` gave
    the noisy volume back unchanged (the brain1 benchmark crop). The residual is now measured where enough
    tissue is left (the smoothed volume's mask, eroded in-plane)."""
    rng = np.random.default_rng(3)
    tissue = np.where(ndimage.gaussian_filter(rng.normal(size=(12, 72, 72)), (0.5, 2, 2)) > 0, 1000.0, 600.0)
    noisy = np.hypot(tissue + rng.normal(0, sigma, tissue.shape), rng.normal(0, sigma, tissue.shape))
    volume = Volume(noisy.astype(np.float32), np.diag([0.8, 0.8, 6.5, 1.0]))
    estimate = estimate_noise(volume, modality="MR")
    assert 0.9 * sigma < estimate.sigma < 1.15 * sigma
    assert estimate.details["residual_voxels"] >= 2000
    result = denoise(volume, method="dct", modality="MR")
    assert result.report["sigma_used"] > 0.9 * sigma
    assert np.mean((result.volume.array - tissue) ** 2) < 0.5 * np.mean((noisy - tissue) ** 2)


def test_a_clipped_background_is_not_read_as_rayleigh_air():
    """Half the air exactly 0 (a Gaussian clipped at 0): the background says nothing of sigma; the residual does."""
    from MedSynthLib.noise import estimate_noise_array

    volume = make_phantom((12, 40, 48))  # noise sigma 2.0, clipped at 0 outside the head
    estimate = estimate_noise_array(volume)
    assert estimate.method == "residual" and estimate.details["background_zero_fraction"] > 0.45
    assert estimate.sigma == pytest.approx(2.0, rel=0.2)


def test_noise_cross_check_disagreement_takes_the_conservative_branch():
    clean, volume = head_with_loud_background()
    estimate = estimate_noise(volume)
    check = estimate.details["cross_check"]
    assert estimate.sigma > 20 and not check["agree"] and check["factor"] == 1.25
    assert estimate.conservative_sigma < 10
    result = denoise(volume, method="auto", device="cpu", method_options={"selfsup": {"steps": 20}})
    assert result.report["noise_check"]["branch"] == "conservative"
    assert result.report["sigma_used"] == pytest.approx(estimate.conservative_sigma, rel=1e-4)
    assert any("disagree" in w for w in result.report["warnings"])
    brain = clean > 0
    assert rmse(result.volume.array, clean, brain) < rmse(volume.array, clean, brain)
