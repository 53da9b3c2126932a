"""No silent damage from the command line: no output over another or over the input, writability checked before
any work, absent devices refused, one-line argument errors in the CLI's words, clean Ctrl-C, QC on every command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, make_phantom, one_line, run_cli
from MedSynthLib import write_volume
from MedSynthLib.cli import main


@pytest.fixture
def source(tmp_path):
    return write_volume(make_phantom((12, 40, 48)), tmp_path / "in.nii.gz")


def _no_work(monkeypatch):
    """Fail the test if the command gets as far as reading its input."""
    import MedSynthLib.io

    def refuse(*args, **kwargs):
        raise AssertionError("the command started work before refusing its arguments")

    for module in ("fill", "enhance", "lesion"):
        monkeypatch.setattr(f"MedSynthLib.cli.{module}.read_volume", refuse)
    return MedSynthLib.io


LESION = ["--preset", "mr-metastasis", "--count", "1", "--size", "3"]


@pytest.mark.parametrize("case", [
    "report=output", "labels=output", "output=input", "field=output", "qc=report", "report=input", "hardlink",
    "mask=output",
])
def test_outputs_that_are_the_same_file_are_refused_before_any_work(tmp_path, capsys, monkeypatch, source, case):
    out, labels = tmp_path / "out.nii.gz", tmp_path / "labels.nii.gz"
    original = source.read_bytes()
    argv = {
        "report=output": ["denoise", source, out, "--method", "aniso", "--report", out],
        "labels=output": ["lesion", source, labels, "--labels", labels, *LESION],
        "output=input": ["lesion", source, source, "--labels", labels, *LESION],
        "field=output": ["bias", source, out, "--field", out],
        "qc=report": ["fill", source, out, "--slices", "3", "--report", tmp_path / "x.png", "--qc", tmp_path / "x.png"],
        "report=input": ["fill", source, out, "--slices", "3", "--report", source],
        "hardlink": ["denoise", source, tmp_path / "link.nii.gz", "--method", "aniso"],
        "mask=output": ["denoise", source, out, "--method", "aniso", "--mask", out],
    }[case]
    if case == "hardlink":
        os.link(source, tmp_path / "link.nii.gz")
    if case == "mask=output":
        write_volume(make_phantom((12, 40, 48)), out)
    _no_work(monkeypatch)
    code, err = run_cli(capsys, *argv)
    assert code == 2
    assert "same file" in one_line(err) or "would overwrite" in err
    assert source.read_bytes() == original
    if case not in ("mask=output",):
        assert not out.exists() and not labels.exists()


def test_overwrite_lets_output_replace_the_input_and_nothing_else(tmp_path, capsys, source):
    code, err = run_cli(capsys, "denoise", source, source, "--method", "aniso")
    assert code == 2 and "--overwrite" in one_line(err)
    before = source.read_bytes()
    code, err = run_cli(capsys, "denoise", source, source, "--method", "aniso", "--overwrite")
    assert code == 0, err
    assert source.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]  # no staging leftovers


@pytest.mark.parametrize("option", ["OUTPUT", "--report", "--qc", "--labels"])
def test_unwritable_locations_are_found_before_the_work(tmp_path, capsys, monkeypatch, source, option):
    unwritable = "/proc/medsynth_test/x"  # not writable even for root
    out, labels = tmp_path / "out.nrrd", tmp_path / "labels.nrrd"
    names = {"OUTPUT": out, "--report": tmp_path / "r.json", "--qc": tmp_path / "q.png", "--labels": labels}
    suffix = {"OUTPUT": ".nrrd", "--report": ".json", "--qc": ".png", "--labels": ".nrrd"}[option]
    names[option] = unwritable + suffix
    _no_work(monkeypatch)
    code, err = run_cli(capsys, "lesion", source, names["OUTPUT"], "--labels", names["--labels"], *LESION,
                    "--report", names["--report"], "--qc", names["--qc"])
    assert code == 2
    assert f"cannot write {option}" in one_line(err)
    assert not out.exists() and not labels.exists()


def test_a_report_that_cannot_be_written_after_success_is_exit_2_and_the_output_stays(tmp_path, capsys, monkeypatch, source):
    import MedSynthLib.cli.common as common

    def disk_full(data, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(common, "write_json", disk_full)
    out = tmp_path / "out.nii.gz"
    code, err = run_cli(capsys, "fill", source, out, "--slices", "3", "--method", "linear", "--report", tmp_path / "r.json")
    assert code == 2
    assert "the result was written" in one_line(err) and "No space left on device" in err
    assert out.is_file() and not (tmp_path / "r.json").exists()


def _absent_device():
    import torch

    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count() + 5}"


@pytest.mark.parametrize("command", ["denoise-aniso", "denoise-nlm", "enhance", "lesion", "fill-linear", "upsample"])
def test_an_absent_device_is_an_error_for_every_command_and_method(tmp_path, capsys, source, command):
    out, device = tmp_path / "out.nii.gz", _absent_device()
    argv = {
        "denoise-aniso": ["denoise", source, out, "--method", "aniso"],
        "denoise-nlm": ["denoise", source, out, "--method", "nlm"],
        "enhance": ["enhance", source, out, "--steps", "denoise:aniso"],
        "lesion": ["lesion", source, out, "--labels", tmp_path / "l.nii.gz", *LESION],
        "fill-linear": ["fill", source, out, "--slices", "3", "--method", "linear"],
        "upsample": ["upsample", source, out, "--factor", "2", "--method", "linear"],
    }[command]
    code, err = run_cli(capsys, *argv, "--device", device)
    assert code == 2
    assert "not available on this machine" in one_line(err)
    assert not out.exists()


def test_argument_errors_are_one_line_in_the_cli_words(tmp_path, capsys, source):
    with pytest.raises(SystemExit) as caught:
        main(["fill", str(source), str(tmp_path / "o.nii.gz"), "--slices", "3-x"])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "medsynth fill: --slices: '3-x' is not an index or range like 3,7,10-12"
    with pytest.raises(SystemExit):
        main(["lesion", str(source), "o.nii.gz", "--count", "many"])
    assert capsys.readouterr().err.strip() == "medsynth lesion: --count: expected a positive number, not 'many'"
    with pytest.raises(SystemExit):
        main(["fill", str(source), "o.nii.gz", "--seed", "x"])
    assert capsys.readouterr().err.strip() == "medsynth fill: --seed: 'x' is not a whole number"


def test_library_keywords_read_as_cli_options(tmp_path, capsys, source):
    code, err = run_cli(capsys, "lesion", source, tmp_path / "o.nii.gz", "--labels", tmp_path / "l.nii.gz",
                    "--preset", "ct-nodule-solid", "--count", "1")
    assert code == 2
    assert "--modality CT" in one_line(err) and "modality=" not in err


def test_check_refuses_non_finite_nifti_written_by_nibabel(tmp_path, capsys):
    nibabel = pytest.importorskip("nibabel")
    array = np.ones((8, 9, 10), np.float32)
    array[1, 2, 3] = np.nan
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    code, err = run_cli(capsys, "check", tmp_path / "nan.nii.gz")
    assert code == 2 and "1 NaN or infinite voxel" in one_line(err)


def test_an_implausible_result_is_exit_2_and_nothing_is_written(tmp_path, capsys, monkeypatch, source):
    """The task refuses it (the check is in the library, for every front end); the CLI writes nothing."""
    from MedSynthLib.tasks.enhance import _bias

    monkeypatch.setattr(_bias, "cross_fitted_field",
                        lambda data, mask, **_: (np.full(data.shape, np.nan, np.float32),) * 2 + ({},))
    out = tmp_path / "out.nii.gz"
    code, err = run_cli(capsys, "bias", source, out, "--shrink", "2", "--qc", tmp_path / "q.png")
    assert code == 2 and "NaN or infinite" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


@pytest.mark.parametrize("command", ["fill", "upsample", "denoise", "bias", "enhance", "lesion"])
def test_every_task_command_writes_a_qc_picture(tmp_path, capsys, source, command):
    from PIL import Image

    out, qc = tmp_path / "out.nii.gz", tmp_path / "qc.png"
    argv = {
        "fill": ["fill", source, out, "--slices", "5", "--method", "linear"],
        "upsample": ["upsample", source, out, "--factor", "2", "--method", "linear"],
        "denoise": ["denoise", source, out, "--method", "aniso"],
        "bias": ["bias", source, out, "--shrink", "2"],
        "enhance": ["enhance", source, out, "--steps", "denoise:aniso"],
        "lesion": ["lesion", source, out, "--labels", tmp_path / "l.nii.gz", *LESION],
    }[command]
    code, err = run_cli(capsys, *argv, "--qc", qc)
    assert code == 0, err
    with Image.open(qc) as picture:
        assert picture.width >= 512 and picture.mode == "RGB"


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5, 6.0])
def test_ctrl_c_at_any_moment_exits_130_with_one_line_and_writes_nothing(tmp_path, source, delay):
    """Start-up (importing torch), reading, and training: SIGINT gives exit 130, one line, no file."""
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "MedSynthLib.cli", "-q", "denoise", str(source), str(out / "d.nii.gz"),
         "--method", "selfsup", "--training-steps", "5000", "--report", str(out / "r.json"), "--qc", str(out / "q.png")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # a shell's background job (CI started with `... &`) passes SIGINT on ignored, and Python then never
        # installs its handler: give the child the default disposition, as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip() == "medsynth: cancelled; nothing was written"
    assert list(out.iterdir()) == []


def test_insert_lesions_refuses_an_absent_device_without_a_network():
    from MedSynthLib.errors import DeviceError
    from MedSynthLib.tasks.lesion import insert_lesions

    with pytest.raises(DeviceError, match="not available"):
        insert_lesions(make_phantom((12, 40, 48)), count=1, preset="mr-metastasis", size_mm=3.0, device=_absent_device())


def test_fill_with_damaged_model_weights_is_exit_2_naming_the_file(tmp_path, capsys, source, damaged_fill_package):
    out = tmp_path / "out.nii.gz"
    code, err = run_cli(capsys, "fill", source, out, "--slices", "5", "--method", "model", "--model",
                    damaged_fill_package, "--device", "cpu")
    assert code == 2 and "fill_default.safetensors" in one_line(err) and "damaged" in err
    assert not out.exists()
