"""Volume geometry: derived properties, point mapping, orientation codes, validation."""

import numpy as np
import pytest

from conftest import make_phantom, oblique_matrix
from MedSynthLib import InputError, Volume, array_axis, validate_volume


def test_derived_geometry_matches_matrix():
    matrix = oblique_matrix(spacing=(0.8, 0.9, 3.0), origin=(-12.5, 30.25, 4.0))
    volume = Volume(np.zeros((5, 6, 7), np.int16), matrix)
    assert volume.spacing == pytest.approx((0.8, 0.9, 3.0))
    assert volume.origin == pytest.approx((-12.5, 30.25, 4.0))
    direction = volume.direction
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    assert np.allclose(direction * np.array(volume.spacing), matrix[:3, :3])
    assert volume.shape_ijk == (7, 6, 5)


def test_point_mapping_round_trip_and_voxel_centres():
    volume = make_phantom()
    rng = np.random.default_rng(1)
    ijk = rng.uniform(0, 10, size=(20, 3))
    ras = volume.ijk_points_to_ras(ijk)
    assert np.allclose(volume.ras_points_to_ijk(ras), ijk, atol=1e-10)
    # voxel (i, j, k) = (2, 3, 4) maps through the matrix applied by hand
    by_hand = volume.ijk_to_ras @ np.array([2, 3, 4, 1.0])
    assert np.allclose(volume.ijk_points_to_ras([2, 3, 4]), by_hand[:3])
    assert np.allclose(volume.ras_to_ijk() @ volume.ijk_to_ras, np.eye(4), atol=1e-12)


def test_slice_axis_is_thickest_array_axis():
    thick_k = Volume(np.zeros((4, 5, 6)), np.diag([0.5, 0.5, 5.0, 1]))
    thick_i = Volume(np.zeros((4, 5, 6)), np.diag([4.0, 1.0, 1.0, 1]))
    iso = Volume(np.zeros((4, 5, 6)), np.diag([1.0, 1.0, 1.0, 1]))
    assert thick_k.slice_axis() == 0
    assert thick_i.slice_axis() == 2
    assert iso.slice_axis() == 0
    assert array_axis("i") == 2 and array_axis("k") == 0 and array_axis("auto", thick_i) == 2
    with pytest.raises(InputError, match="axis must be one of"):
        array_axis("x")


@pytest.mark.parametrize(
    "diagonal, code",
    [((1, 1, 1), "RAS"), ((-1, -1, 1), "LPS"), ((-1, 1, 1), "LAS")],
)
def test_orientation_code_axis_aligned(diagonal, code):
    assert Volume(np.zeros((2, 2, 2)), np.diag([*diagonal, 1.0])).orientation_code() == code


def test_orientation_code_permuted():
    # i -> towards Left, j -> towards Inferior, k -> towards Anterior: "LIA"
    matrix = np.zeros((4, 4))
    matrix[0, 0] = -1
    matrix[2, 1] = -1
    matrix[1, 2] = 1
    matrix[3, 3] = 1
    assert Volume(np.zeros((2, 2, 2)), matrix).orientation_code() == "LIA"


@pytest.mark.parametrize(
    "array, matrix, message",
    [
        (np.zeros((4, 4)), np.eye(4), "3D volume"),
        (np.zeros((2, 3, 4, 5)), np.eye(4), "3D volume"),
        (np.zeros((2, 3, 4), np.complex64), np.eye(4), "not supported"),
        (np.zeros((2, 3, 4)), np.eye(3), "4x4"),
        (np.zeros((2, 3, 4)), np.diag([1, 1, 0, 1.0]), "singular"),
        (np.zeros((2, 3, 4)), np.full((4, 4), np.nan), "NaN"),
    ],
)
def test_constructor_rejects_bad_input(array, matrix, message):
    with pytest.raises(InputError, match=message):
        Volume(array, matrix)


def test_validate_volume_messages():
    good = make_phantom()
    validate_volume(good)
    nan = good.array.copy()
    nan[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="1 NaN or infinite"):
        validate_volume(good.with_array(nan))
    with pytest.raises(InputError, match="constant"):
        validate_volume(good.with_array(np.full_like(good.array, 7)))
    one_slice = Volume(good.array[:1], good.ijk_to_ras)
    with pytest.raises(InputError, match="1 slice"):
        validate_volume(one_slice)
    with pytest.raises(InputError, match="limit"):
        validate_volume(good, max_voxels=100)


def test_with_array_keeps_geometry_and_checks_shape():
    volume = make_phantom()
    other = volume.with_array(volume.array * 2)
    assert other.same_grid(volume)
    with pytest.raises(InputError, match="does not match"):
        volume.with_array(volume.array[1:])
