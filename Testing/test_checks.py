"""Results are checked before they are written: finite, within the input's plausible range, no blank restored slice."""

import numpy as np
import pytest

from conftest import make_phantom
from MedSynthLib.checks import check_result
from MedSynthLib.errors import InputError, ResultError


def test_a_plausible_result_passes():
    volume = make_phantom()
    check_result(volume, volume.with_array(volume.array * 1.1 + 3), task="test")


def test_non_finite_voxels_are_refused():
    volume = make_phantom()
    bad = volume.array.copy()
    bad[2, 3, 4] = np.nan
    with pytest.raises(ResultError, match="test produced 1 NaN or infinite voxel"):
        check_result(volume, volume.with_array(bad), task="test")


def test_values_far_outside_the_input_range_are_refused():
    volume = make_phantom()
    bad = volume.array.copy()
    bad[2, 3, 4] = 10 * volume.array.max()
    with pytest.raises(ResultError, match="outside the plausible range") as caught:
        check_result(volume, volume.with_array(bad), task="fill (model)")
    assert isinstance(caught.value, InputError) and "\n" not in str(caught.value)


def test_a_constant_restored_slice_between_image_slices_is_refused():
    volume = make_phantom((12, 40, 48))
    filled = volume.array.copy()
    filled[6] = 0
    with pytest.raises(ResultError, match="restored slice k=6 as a constant 0"):
        check_result(volume, volume.with_array(filled), task="fill", axis=0, slices=[6])
    # the range is taken from the good slices: a corrupted slice of huge values does not widen it
    corrupted = volume.array.copy()
    corrupted[6] = 1e6
    restored = volume.array.copy()
    restored[6] = 5e5
    with pytest.raises(ResultError, match="outside the plausible range"):
        check_result(volume.with_array(corrupted), volume.with_array(restored), task="fill", axis=0, slices=[6])


def test_fill_and_upsample_results_pass_their_check():
    from MedSynthLib.tasks.fill import fill_slices, upsample_slices

    volume = make_phantom((12, 40, 48))
    damaged = volume.array.copy()
    damaged[6] = 0
    fill_slices(volume.with_array(damaged), slices=[6], axis=0, method="cubic")
    upsample_slices(volume, factor=2, method="cubic")
