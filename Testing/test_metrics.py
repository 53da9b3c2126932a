"""Metrics against hand-computed values."""

import numpy as np
import pytest

from MedSynthLib.metrics import brats_metrics, psnr, ssim


def test_psnr_by_hand():
    reference = np.zeros((4, 4, 4))
    reference[0, 0, 0] = 10.0  # data range 10
    test = reference + 1.0  # mse 1
    assert psnr(reference, test) == pytest.approx(20.0)
    assert psnr(reference, reference) == float("inf")
    mask = np.zeros_like(reference, bool)
    mask[1] = True
    test2 = reference.copy()
    test2[1] += 2.0
    test2[2] += 100.0  # outside the mask: ignored
    assert psnr(reference, test2, mask=mask) == pytest.approx(10 * np.log10(100 / 4))


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 1, size=(8, 32, 32))
    assert ssim(reference, reference) == pytest.approx(1.0)
    assert ssim(reference, reference, axis=0) == pytest.approx(1.0)
    noisy = reference + rng.normal(0, 0.3, reference.shape)
    assert ssim(reference, noisy, axis=0) < 0.8
    only = ssim(reference, noisy, axis=0, slices=[2], data_range=1.0)
    assert only == pytest.approx(ssim(reference[2:3], noisy[2:3], axis=0, data_range=1.0))


def test_ssim_mask_averages_only_inside():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 1, size=(4, 32, 32))
    test = reference.copy()
    test[:, :, 16:] = rng.uniform(0, 1, size=(4, 32, 16))
    left = np.zeros_like(reference, bool)
    left[:, :, :8] = True
    assert ssim(reference, test, axis=0, mask=left) > 0.99
    assert ssim(reference, test, axis=0) < 0.8


def test_brats_metrics_in_unit_range():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 100, size=(8, 24, 24))
    mask = np.zeros_like(reference, bool)
    mask[3:5, 8:16, 8:16] = True
    perfect = brats_metrics(reference, reference, mask)
    assert perfect["mse"] == 0 and perfect["psnr"] == float("inf") and perfect["ssim"] == pytest.approx(1.0)
    worse = brats_metrics(reference, reference + rng.normal(0, 10, reference.shape), mask)
    assert 0 < worse["mse"] < 0.1 and worse["ssim"] < 1


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
