"""File round trips and conversions: bit-identical voxels, geometry within 1e-6, clear errors."""

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_phantom, write_dicom_series
from MedSynthLib import InputError, read_volume, write_volume
from MedSynthLib.convert import from_sitk, from_vtk, to_sitk, to_vtk


@pytest.mark.parametrize("extension", [".nrrd", ".nii", ".nii.gz", ".mha", ".mhd"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_write_read_round_trip_oblique(tmp_path, extension, dtype):
    volume = make_phantom(dtype=dtype)
    path = write_volume(volume, tmp_path / f"volume{extension}")
    back = read_volume(path)
    assert back.array.dtype == volume.array.dtype
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-6)


def test_ras_lps_agrees_with_simpleitk_physical_points():
    volume = make_phantom()
    image = to_sitk(volume)
    for index in [(0, 0, 0), (5, 7, 3), (47, 39, 11)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = volume.ijk_points_to_ras(index)
        assert np.allclose(ras, lps * [-1, -1, 1], atol=1e-9)
    continuous = (2.5, 3.25, 1.75)
    lps = np.array(image.TransformContinuousIndexToPhysicalPoint(continuous))
    assert np.allclose(volume.ijk_points_to_ras(continuous), lps * [-1, -1, 1], atol=1e-9)
    # and sitk's own voxel order: GetArrayFromImage is KJI
    assert np.array_equal(sitk.GetArrayFromImage(image), volume.array)


def test_sitk_round_trip_keeps_everything():
    volume = make_phantom(dtype=np.int16)
    back = from_sitk(to_sitk(volume))
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-12)


def test_vtk_round_trip_matches_slicer_layout():
    volume = make_phantom(dtype=np.float32)
    image, matrix = to_vtk(volume)
    assert image.GetDimensions() == volume.shape_ijk
    assert image.GetSpacing() == (1.0, 1.0, 1.0) and image.GetOrigin() == (0.0, 0.0, 0.0)
    # voxel (i, j, k) in VTK is array[k, j, i]
    i, j, k = 5, 7, 3
    assert image.GetScalarComponentAsDouble(i, j, k, 0) == pytest.approx(float(volume.array[k, j, i]))
    point = [0.0, 0.0, 0.0, 0.0]
    matrix.MultiplyPoint([i, j, k, 1.0], point)
    assert np.allclose(point[:3], volume.ijk_points_to_ras([i, j, k]))
    back = from_vtk(image, matrix)
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.ijk_to_ras, volume.ijk_to_ras)


def test_read_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "absent.nrrd")


def test_read_unreadable_file(tmp_path):
    path = tmp_path / "garbage.nrrd"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(InputError, match="cannot read"):
        read_volume(path)


def test_read_2d_image(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(20, dtype=np.int16).reshape(4, 5)), str(path))
    with pytest.raises(InputError, match="2D image"):
        read_volume(path)


def test_read_4d_volume(tmp_path):
    path = tmp_path / "series.nii.gz"
    frames = [sitk.GetImageFromArray(np.full((4, 5, 6), t, np.float32)) for t in range(3)]
    four_d = sitk.JoinSeries(frames)
    assert four_d.GetDimension() == 4
    sitk.WriteImage(four_d, str(path))
    with pytest.raises(InputError, match="4D"):
        read_volume(path)


def test_read_rgb_volume(tmp_path):
    path = tmp_path / "colour.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(InputError, match="3 components"):
        read_volume(path)


def test_write_unknown_extension(tmp_path):
    with pytest.raises(InputError, match="extensions"):
        write_volume(make_phantom(), tmp_path / "volume.png")


def test_dicom_series_folder(tmp_path):
    volume = make_phantom(shape_kji=(6, 16, 20), dtype=np.int16)
    image = to_sitk(volume)
    # axis-aligned geometry for the DICOM writer (slice positions along the normal)
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_dicom_series(tmp_path, [image[:, :, k] for k in range(image.GetDepth())],
                       [image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(image.GetDepth())])
    back = read_volume(tmp_path)
    assert back.array.shape == volume.array.shape
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.spacing, volume.spacing, atol=1e-4)


def test_empty_folder_is_not_a_dicom_series(tmp_path):
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path)


def test_segmentation_file_has_slicer_fields_and_geometry(tmp_path):
    from MedSynthLib.io import write_segmentation

    image = make_phantom()
    labels = np.zeros(image.array.shape, np.uint8)
    labels[3:6, 10:20, 10:20] = 1
    labels[6:8, 20:25, 20:30] = 2
    segments = [
        {"value": 1, "name": "lesion 1", "color": (1.0, 0.0, 0.0)},
        {"value": 2, "name": "oedema", "color": (0.0, 0.5, 1.0)},
    ]
    path = write_segmentation(image.with_array(labels), tmp_path / "lesions.seg.nrrd", segments)
    back = read_volume(path)
    assert np.array_equal(back.array, labels)
    assert np.allclose(back.ijk_to_ras, image.ijk_to_ras, atol=1e-6)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert reader.GetMetaData("Segment1_Name") == "oedema"
    assert reader.GetMetaData("Segment1_LabelValue") == "2"
    assert reader.GetMetaData("Segment0_Color") == "1 0 0"
    assert reader.GetMetaData("Segmentation_MasterRepresentation") == "Binary labelmap"
    with pytest.raises(InputError, match="seg.nrrd"):
        write_segmentation(image.with_array(labels), tmp_path / "lesions.nrrd", segments)


def _non_finite_array():
    array = make_phantom(dtype=np.float32).array.copy()
    array[3, 10, 12] = np.nan
    array[5, 20, 30] = np.inf
    array[6, 1, 1] = -np.inf
    return array


@pytest.mark.parametrize("writer", ["nibabel", "SimpleITK"])
@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_nifti_non_finite_voxels_are_read_as_written(tmp_path, writer, extension):
    """ITK's NIfTI reader turns NaN/inf into 0; MedSynth must see them (and refuse them) as NRRD readers do."""
    array = _non_finite_array()
    path = tmp_path / f"nan{extension}"
    if writer == "nibabel":
        nibabel = pytest.importorskip("nibabel")
        nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), np.eye(4)), str(path))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    volume = read_volume(path)
    assert np.count_nonzero(np.isnan(volume.array)) == 1
    assert np.count_nonzero(np.isposinf(volume.array)) == 1 and np.count_nonzero(np.isneginf(volume.array)) == 1
    finite = np.isfinite(array)
    assert np.array_equal(volume.array[finite], array[finite])
    from MedSynthLib import validate_volume

    with pytest.raises(InputError, match="3 NaN or infinite voxel"):
        validate_volume(volume)


def test_writes_are_atomic_and_leave_no_partial_file(tmp_path, monkeypatch):
    volume = make_phantom()
    target = write_volume(volume, tmp_path / "out.nrrd")
    before = target.read_bytes()

    def interrupted(image, path, **kwargs):
        open(path, "wb").write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(sitk, "WriteImage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_volume(volume.with_array(volume.array + 1), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nrrd"]


@pytest.mark.parametrize("extension", [".mhd", ".nhdr"])
def test_two_file_formats_are_moved_into_place_together(tmp_path, extension):
    volume = make_phantom()
    path = write_volume(volume, tmp_path / f"out{extension}")
    assert np.array_equal(read_volume(path).array, volume.array)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
