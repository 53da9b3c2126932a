"""The medsynth command line: exit codes, one-line errors, info output, the demo."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_phantom
from MedSynthLib import Volume, __version__, write_volume
from MedSynthLib.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version_console_script():
    result = subprocess.run([sys.executable, "-m", "MedSynthLib.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert __version__ in result.stdout


def _bad_files(tmp_path):
    files = {}
    files["missing"] = tmp_path / "absent.nii.gz"
    garbage = tmp_path / "garbage.nrrd"
    garbage.write_bytes(b"\x00\x01 not an image")
    files["unreadable"] = garbage
    two_d = tmp_path / "two_d.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 8), np.int16)), str(two_d))
    files["2D"] = two_d
    four_d = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.full((3, 4, 5), t, np.float32)) for t in range(2)]), str(four_d))
    files["4D"] = four_d
    rgb = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True), str(rgb))
    files["components"] = rgb
    phantom = make_phantom()
    nan = phantom.array.copy()
    nan[0, 0, 0] = np.inf
    files["NaN"] = write_volume(phantom.with_array(nan), tmp_path / "nan.nrrd")
    files["constant"] = write_volume(phantom.with_array(np.zeros_like(phantom.array)), tmp_path / "constant.nrrd")
    files["slice"] = write_volume(Volume(phantom.array[:1], phantom.ijk_to_ras), tmp_path / "one_slice.nrrd")
    return files


EXPECTED = {
    "missing": "file not found",
    "unreadable": "cannot read",
    "2D": "2D image",
    "4D": "4D volume",
    "components": "components",
    "NaN": "NaN or infinite",
    "constant": "constant",
    "slice": "1 slice",
}


@pytest.mark.parametrize("problem", list(EXPECTED))
def test_bad_input_exit_2_one_line(tmp_path, capsys, problem):
    path = _bad_files(tmp_path)[problem]
    code, out, err = run_cli(capsys, "check", str(path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("medsynth: error:")
    assert EXPECTED[problem] in lines[0]
    assert "Traceback" not in err


def test_bad_input_through_the_console_script_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "MedSynthLib.cli", "info", str(tmp_path / "absent.nrrd")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"medsynth: error: file not found: {tmp_path / 'absent.nrrd'}"


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info"])
    assert exit_info.value.code == 2


def test_info_json_matches_volume(tmp_path, capsys):
    volume = make_phantom(dtype=np.int16)
    path = write_volume(volume, tmp_path / "v.nrrd")
    code, out, _ = run_cli(capsys, "info", str(path), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["shape_ijk"] == list(volume.shape_ijk)
    assert info["dtype"] == "int16"
    assert np.allclose(info["spacing_mm"], volume.spacing, atol=1e-6)
    assert np.allclose(info["origin_ras_mm"], volume.origin, atol=1e-6)
    assert np.allclose(info["direction_ras"], volume.direction, atol=1e-6)
    assert info["slice_axis"] == "k"
    assert info["intensity_range"] == [int(volume.array.min()), int(volume.array.max())]


def test_info_text(tmp_path, capsys):
    path = write_volume(make_phantom(), tmp_path / "v.nii.gz")
    code, out, _ = run_cli(capsys, "info", str(path))
    assert code == 0 and "orientation" in out and "spacing mm" in out


@pytest.mark.slow
def test_info_on_every_shared_volume_matches_simpleitk(shared_data, capsys):
    files = sorted(shared_data.glob("*.nii.gz"))
    assert files
    for path in files:
        code, out, _ = run_cli(capsys, "info", str(path), "--json")
        assert code == 0
        info = json.loads(out)
        image = sitk.ReadImage(str(path))
        assert info["shape_ijk"] == list(image.GetSize())
        assert np.allclose(info["spacing_mm"], image.GetSpacing(), atol=1e-6)
        lps_origin = np.array(image.GetOrigin())
        assert np.allclose(info["origin_ras_mm"], lps_origin * [-1, -1, 1], atol=1e-5)
        lps_direction = np.array(image.GetDirection()).reshape(3, 3)
        assert np.allclose(info["direction_ras"], np.diag([-1, -1, 1]) @ lps_direction, atol=1e-6)
        known = {"MNI152_2009a_T1": "RAS", "ROBEX_T1w": "LAS", "lung1_CT": "LPS"}
        for prefix, code_expected in known.items():
            if path.name.startswith(prefix):
                assert info["orientation"] == code_expected
        array = sitk.GetArrayViewFromImage(image)
        assert info["intensity_range"] == pytest.approx([float(array.min()), float(array.max())])


def test_version_and_info_answer_without_importing_torch(tmp_path):
    """Building the parser loads no task's heavy libraries: ``--version`` and ``info`` never import torch."""
    import subprocess
    import sys

    import numpy as np

    from MedSynthLib.io import write_volume
    from MedSynthLib.volume import Volume

    path = tmp_path / "v.nii.gz"
    write_volume(Volume(np.zeros((4, 5, 6), np.int16), np.eye(4)), path)
    code = ("import sys; from MedSynthLib.cli import main; "
            f"codes = [main(['--version']), main(['info', {str(path)!r}])]; "
            "print(codes, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[0, 0] False"
