"""Tests of ``correct_bias`` (N4)."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import oblique_matrix
from MedSynthLib.errors import InputError
from MedSynthLib.io import read_volume
from MedSynthLib.tasks.enhance import correct_bias, estimate_noise
from MedSynthLib.volume import Volume

from .phantoms import biased, rician_noise


def test_n4_recovers_a_smooth_field():
    clean, field = biased()
    wm = clean >= 150
    volume = Volume((clean * field).astype(np.float32), oblique_matrix(spacing=(1.0, 1.0, 1.2)))
    before = volume.array.copy()
    corrected, estimated = correct_bias(volume, shrink=2)
    cv = lambda a: float(a[wm].std() / a[wm].mean())  # noqa: E731
    assert cv(corrected.array) < 0.4 * cv(volume.array)
    brain = clean > 0
    assert np.corrcoef(estimated.array[brain], field[brain])[0, 1] > 0.95
    assert np.array_equal(volume.array, before)
    assert np.array_equal(corrected.ijk_to_ras, volume.ijk_to_ras) and estimated.array.dtype == np.float32


def test_n4_handles_non_positive_intensities_and_keeps_dtype():
    clean, field = biased((16, 48, 48))
    shifted = np.round(clean * field - 80).astype(np.int16)  # background -80, darkest tissue below zero
    volume = Volume(shifted, oblique_matrix())
    mask = clean > 0
    result = correct_bias(volume, mask=mask, shrink=2)
    assert result.volume.array.dtype == np.int16
    assert result.report["shift"] > 0 and any("shifted" in w for w in result.report["warnings"])
    # an offset breaks N4's multiplicative model, so only sanity is asked: no blow-up near zero
    assert np.abs(result.volume.array.astype(float)).max() < 3 * np.abs(volume.array.astype(float)).max()
    field = result.field.array[mask]
    assert np.all(np.isfinite(field)) and field.min() > 0


@pytest.mark.parametrize("kwargs", [{"shrink": 0}, {"shrink": 2.5}, {"iterations": []}, {"mask": np.zeros((16, 48, 56))}])
def test_bias_bad_input(noisy_head, kwargs):
    _, volume = noisy_head
    with pytest.raises(InputError):
        correct_bias(volume, **kwargs)


@pytest.mark.slow
def test_real_mni_crop_noise_and_n4(shared_data):
    """MNI crop (nilearn's template, see /work/shared/data/README.md): sigma estimate and N4 on a known field."""
    mni = read_volume(shared_data / "MNI152_2009a_T1_template_nilearn.nii.gz")
    crop = (slice(60, 100), slice(40, 190), slice(30, 170))
    clean = mni.array[crop].astype(np.float32)
    volume = Volume(rician_noise(clean, 0.05 * 255), mni.ijk_to_ras)
    assert estimate_noise(volume).sigma == pytest.approx(0.05 * 255, rel=0.1)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in clean.shape], indexing="ij")
    field = np.exp(0.3 * i + 0.2 * j - 0.1 * k)
    brain = clean > 20
    corrected, estimated = correct_bias(Volume((clean * field).astype(np.float32), mni.ijk_to_ras), mask=brain)
    assert np.corrcoef(estimated.array[brain], field[brain])[0, 1] > 0.95
