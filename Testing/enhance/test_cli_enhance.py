"""Tests of ``medsynth denoise``, ``medsynth bias`` and ``medsynth enhance``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSynthLib.io import read_volume, write_volume


def test_cli_denoise_bias_enhance(tmp_path, noisy_head):
    from MedSynthLib.cli import main

    _, volume = noisy_head
    source = tmp_path / "in.nii.gz"
    write_volume(volume, source)
    out = tmp_path / "den.nii.gz"
    assert main(["-q", "denoise", str(source), str(out), "--method", "aniso", "--report", str(tmp_path / "r.json")]) == 0
    assert read_volume(out).array.shape == volume.array.shape
    assert json.loads((tmp_path / "r.json").read_text())["method"] == "aniso"
    field = tmp_path / "field.nrrd"
    assert main(["-q", "bias", str(source), str(tmp_path / "b.nrrd"), "--field", str(field), "--shrink", "2",
                 "--time-budget", "0.001", "--report", str(tmp_path / "b.json")]) == 0
    assert read_volume(field).array.dtype == np.float32
    timed = json.loads((tmp_path / "b.json").read_text())["time_budget"]  # the flag reaches BiasOptions
    assert timed["budget_s"] == 0.001 and not timed["default"] and "fitted at shrink 4" in timed["cut"][0]
    assert main(["-q", "enhance", str(source), str(tmp_path / "e.nii.gz"), "--steps", "bias,denoise:aniso"]) == 0


def test_cli_bad_input_writes_nothing(tmp_path, noisy_head, capsys):
    from MedSynthLib.cli import main

    _, volume = noisy_head
    source = tmp_path / "in.nii.gz"
    write_volume(volume, source)
    out = tmp_path / "out.nii.gz"
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "denoise", str(source), str(out), "--strength", "3"])
    assert exit_info.value.code == 2
    empty = tmp_path / "mask.nii.gz"
    write_volume(volume.with_array(np.zeros(volume.array.shape, np.uint8)), empty)
    assert main(["-q", "denoise", str(source), str(out), "--mask", str(empty)]) == 2
    assert main(["-q", "enhance", str(source), str(out), "--steps", "bias,sharpen"]) == 2
    assert "unknown step" in capsys.readouterr().err
    assert not out.exists()
