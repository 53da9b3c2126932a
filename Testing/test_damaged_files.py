"""Damaged input is refused before any work: a file shorter than its header says, compressed data that ends early
or fails its checksum, a DICOM series with a slice missing, duplicated or out of step, model weights that differ
from their recorded checksum. Each is one line naming the problem (exit 2 from the CLI) and nothing is written."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, make_phantom, one_line, run_cli, write_dicom_series
from MedSynthLib import InputError, read_volume, write_volume
from MedSynthLib.cli import main

SHAPE = (12, 40, 48)


def _written(tmp_path, name, *, compress=True):
    return write_volume(make_phantom(SHAPE, dtype=np.int16), tmp_path / name, compress=compress)


def _cut(path, keep):
    """Keep the first ``keep`` bytes of ``path`` (an int, or a fraction of its size)."""
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    return path


# ---- files shorter than their header says ------------------------------------------------------

CUT_FILES = {
    # name: (file name, compress, bytes or fraction kept, the words the refusal must hold)
    "nii.gz cut at 2 KB": ("scan.nii.gz", True, 2048, "truncated.*stops after"),
    "nii.gz cut at half": ("scan.nii.gz", True, 0.5, "truncated.*stops after"),
    "nii.gz without its gzip trailer": ("scan.nii.gz", True, -4, "truncated.*end-of-stream marker"),
    "nii cut": ("scan.nii", False, 0.5, "truncated.*header promises 46,080 bytes"),
    "nrrd raw cut": ("scan.nrrd", False, 0.5, "truncated.*header promises 46,080 bytes"),
    "nrrd gzip cut": ("scan.nrrd", True, 0.5, "truncated.*stops after"),
    "mha raw cut": ("scan.mha", False, 0.5, "truncated.*header promises 46,080 bytes"),
    "mha compressed cut": ("scan.mha", True, 0.5, "truncated.*stops after"),
    "nii cut in its header": ("scan.nii", False, 100, "truncated.*ends inside its header"),
    "nrrd cut in its header": ("scan.nrrd", False, 100, "truncated.*ends inside its header"),
    "mha cut in its header": ("scan.mha", False, 100, "truncated.*ends inside its header"),
}


@pytest.fixture(params=list(CUT_FILES), ids=list(CUT_FILES))
def cut_file(request, tmp_path):
    name, compress, keep, words = CUT_FILES[request.param]
    path = _written(tmp_path, name, compress=compress)
    if isinstance(keep, int) and keep < 0:
        keep = path.stat().st_size + keep
    return _cut(path, keep), words


def test_a_file_shorter_than_its_header_says_is_refused_naming_the_problem(cut_file):
    path, words = cut_file
    with pytest.raises(InputError, match=words) as caught:
        read_volume(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("command", ["check", "fill"])
def test_check_and_fill_refuse_a_cut_file_with_exit_2_and_write_nothing(tmp_path, capsys, cut_file, command):
    path, _ = cut_file
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    extra = [out_dir / "filled.nii.gz", "--slices", "5", "--method", "linear", "--report", out_dir / "r.json",
             "--qc", out_dir / "qc.png"] if command == "fill" else []
    code, err = run_cli(capsys, command, path, *extra)
    assert code == 2 and "truncated" in one_line(err)
    assert list(out_dir.iterdir()) == []


def test_compressed_data_that_fails_its_checksum_is_refused(tmp_path):
    for name in ("scan.nii.gz", "scan.nrrd", "scan.mha"):
        path = _written(tmp_path, name)
        data = bytearray(path.read_bytes())
        data[-20] ^= 0xFF  # in the deflate stream's last block or its checksum
        path.write_bytes(bytes(data))
        with pytest.raises(InputError, match="damaged"):
            read_volume(path)


@pytest.mark.parametrize("extension", [".nhdr", ".mhd"])
def test_a_cut_or_missing_data_file_of_a_two_file_format_is_named(tmp_path, extension):
    header = _written(tmp_path, f"scan{extension}", compress=False)
    data = next(p for p in tmp_path.iterdir() if p != header)
    _cut(data, 0.5)
    with pytest.raises(InputError, match=f"data file {data.name}: its header promises 46,080 bytes"):
        read_volume(header)
    data.unlink()
    with pytest.raises(InputError, match=f"data file {data.name} is missing"):
        read_volume(header)


def test_whole_files_of_every_kind_read_as_written(tmp_path):
    """No false alarm: every format and encoding MedSynth writes, a multi-member gzip and a nibabel NIfTI."""
    volume = make_phantom(SHAPE, dtype=np.int16)
    for name in ("a.nii.gz", "a.nii", "a.nrrd", "a.nhdr", "a.mha", "a.mhd"):
        for compress in (True, False):
            path = write_volume(volume, tmp_path / f"{int(compress)}{name}", compress=compress)
            assert np.array_equal(read_volume(path).array, volume.array), path
    raw = gzip.decompress((tmp_path / "1a.nii.gz").read_bytes())
    members = tmp_path / "members.nii.gz"  # what concatenating gzip files or pigz/bgzip may give
    members.write_bytes(gzip.compress(raw[:10000]) + gzip.compress(raw[10000:]) + bytes(16))
    plain = tmp_path / "plain.nii.gz"  # a browser that undid the transfer's gzip but kept the name: ITK reads it
    plain.write_bytes(raw)
    odd_bitpix = tmp_path / "odd_bitpix.nii"  # nifticlib sizes voxels by the datatype code, not by bitpix
    odd_bitpix.write_bytes(raw[:72] + np.int16(64).tobytes() + raw[74:])
    for path in (members, plain, odd_bitpix):
        assert np.array_equal(read_volume(path).array, volume.array), path
    nibabel = pytest.importorskip("nibabel")
    path = tmp_path / "nibabel.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(volume.array.transpose(2, 1, 0)), np.eye(4)), str(path))
    assert np.array_equal(read_volume(path).array, volume.array)


# ---- DICOM series -------------------------------------------------------------------------------


def _dicom_series(folder, positions_mm):
    """One CT slice file per position along z (axis-aligned), as a scanner would write them."""
    folder.mkdir()
    array = make_phantom((len(positions_mm), 16, 20), dtype=np.int16).array
    planes = []
    for plane_array in array:
        plane = sitk.GetImageFromArray(plane_array)
        plane.SetSpacing((0.8, 0.8))
        planes.append(plane)
    return write_dicom_series(folder, planes, [(-10, -20, z) for z in positions_mm])


def _without_position(path):
    """Rename the ImagePositionPatient tag (0020,0032) of a slice file into (0020,0030): the file lacks a position."""
    data = path.read_bytes()
    at = data.index(b"\x20\x00\x32\x00")
    path.write_bytes(data[:at] + b"\x20\x00\x30\x00" + data[at + 4:])


def _damaged_series(tmp_path, case):
    if case == "missing slice":
        folder = _dicom_series(tmp_path / "series", [0, 2, 4, 6, 8, 10])
        (folder / "slice003.dcm").unlink()
    elif case == "duplicated slice":
        folder = _dicom_series(tmp_path / "series", [0, 2, 4, 6, 8, 10])
        shutil.copy(folder / "slice002.dcm", folder / "slice002_copy.dcm")
    elif case == "unequal spacing":
        folder = _dicom_series(tmp_path / "series", [0, 2, 4, 6.5, 8.5, 10.5])
    else:  # "no position"
        folder = _dicom_series(tmp_path / "series", [0, 2, 4, 6, 8, 10])
        _without_position(folder / "slice004.dcm")
    return folder


SERIES_PROBLEMS = {
    "missing slice": r"gap between slice002\.dcm and slice004\.dcm is 4\.000 mm.*2\.000 mm apart: 1 slice is missing",
    "duplicated slice": r"slice002(_copy)?\.dcm and slice002(_copy)?\.dcm are at the same slice position",
    "unequal spacing": r"gap between slice002\.dcm and slice003\.dcm is 2\.500 mm.*spacing is unequal",
    "no position": r"1 of its 6 slice files lack a position.*slice004\.dcm",
}


def test_a_whole_dicom_series_reads_with_its_spacing(tmp_path):
    volume = read_volume(_dicom_series(tmp_path / "series", [0, 2, 4, 6, 8, 10]))
    assert volume.shape_ijk == (20, 16, 6)
    assert np.allclose(volume.spacing, (0.8, 0.8, 2.0), atol=1e-4)


@pytest.mark.parametrize("case", list(SERIES_PROBLEMS))
def test_a_dicom_series_with_a_slice_missing_duplicated_or_out_of_step_is_refused(tmp_path, case):
    with pytest.raises(InputError, match=SERIES_PROBLEMS[case]):
        read_volume(_damaged_series(tmp_path, case))


@pytest.mark.parametrize("command", ["check", "fill"])
def test_check_and_fill_refuse_a_damaged_series_with_exit_2_one_line_and_write_nothing(tmp_path, capsys, command):
    folder = _damaged_series(tmp_path, "missing slice")
    out = tmp_path / "out.nii.gz"
    extra = [out, "--slices", "2", "--method", "linear"] if command == "fill" else []
    code, err = run_cli(capsys, command, folder, *extra)
    assert code == 2 and "1 slice is missing" in one_line(err)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_slice_positions_within_a_hundredth_of_a_millimetre_are_even(tmp_path):
    """Positions written with rounding (real scanners) are not an uneven series."""
    volume = read_volume(_dicom_series(tmp_path / "series", [0, 1.251, 2.5, 3.749, 5.0, 6.252]))
    assert volume.shape_ijk[2] == 6


# ---- model packages -----------------------------------------------------------------------------


def test_models_lists_a_package_with_damaged_weights_as_damaged_and_exits_2(capsys, damaged_fill_package):
    code = main(["models", "--dir", str(damaged_fill_package.parent)])
    captured = capsys.readouterr()
    line = next(row for row in captured.out.splitlines() if str(damaged_fill_package) in row)
    assert "DAMAGED" in line and "SHA-256" in line
    assert code == 2 and "1 of the 3 model packages listed is damaged (fill_default)" in one_line(captured.err.strip())
    bundled = [row for row in captured.out.splitlines() if " bundled " in row]
    assert len(bundled) == 2 and not any("DAMAGED" in row for row in bundled)


def test_models_names_truncated_weights_by_their_own_header_without_hashing_and_missing_ones(tmp_path, capsys, monkeypatch):
    import json

    from MedSynthLib.models import build_network, save_package
    from MedSynthLib.models import package

    args = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "features": [4, 4, 8, 8, 16, 4]}
    for name in ("whole", "cut", "absent"):
        save_package(build_network("basic_unet", **args), tmp_path / name, task="denoise", family="unet",
                     builder="basic_unet", builder_args=args, input_spec={"format": "test"}, description=name)
    _cut(tmp_path / "cut.safetensors", 0.5)
    (tmp_path / "absent.safetensors").unlink()
    (tmp_path / "notes.json").write_text('{"not": "a package"}')
    hashed = []
    real = package.weights_sha256
    monkeypatch.setattr(package, "weights_sha256", lambda path: hashed.append(path.name) or real(path))
    code = main(["models", "--dir", str(tmp_path), "--task", "denoise", "--json"])
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert code == 2 and set(rows) == {"denoise_default", "whole", "cut", "absent"}
    assert rows["whole"]["damaged"] is None and rows["denoise_default"]["damaged"] is None
    assert "truncated" in rows["cut"]["damaged"] and "absent.safetensors is missing" in rows["absent"]["damaged"]
    assert "cut.safetensors" not in hashed
    with pytest.raises(package.ModelError, match="truncated"):
        package.load_package(tmp_path / "cut.json")


# ---- the real scans -----------------------------------------------------------------------------


@pytest.mark.slow
def test_every_real_scan_reads_and_its_half_is_refused(tmp_path):
    scans = sorted(SHARED_DATA.glob("*.nii.gz"))
    if not scans:
        pytest.skip(f"no scans in {SHARED_DATA}")
    for scan in scans:
        read_volume(scan)  # no false alarm
        half = tmp_path / scan.name
        half.write_bytes(scan.read_bytes()[: scan.stat().st_size // 2])
        with pytest.raises(InputError, match="truncated"):
            read_volume(half)
        half.unlink()
