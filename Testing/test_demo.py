"""`medsynth demo` on the embedded samples: every installed task runs and leaves outputs, report and QC."""

import json

import numpy as np
import SimpleITK as sitk

from MedSynthLib.cli import main
from MedSynthLib.cli.demo import demo_steps
from MedSynthLib.io import read_volume
from MedSynthLib.sample_data import SAMPLES, load_sample


def test_samples_are_real_and_small():
    for name, (filename, modality) in SAMPLES.items():
        volume = load_sample(name)
        assert volume.array.dtype == np.int16
        assert volume.array.std() > 10
        assert min(volume.array.shape) >= 16


def _refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")


def test_demo_writes_report_outputs_and_qc(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--quiet", "demo", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text(), parse_constant=_refuse)  # strict JSON: no NaN
    assert set(report["samples"]) == set(SAMPLES)
    steps = demo_steps()
    assert len(report["steps"]) == len(steps)
    for step in report["steps"]:
        picture = sitk.ReadImage(step["qc_picture"])
        assert picture.GetDimension() == 2 and picture.GetSize()[0] > 50
        assert step["outputs"], f"{step['task']} wrote no output"
        for output in step["outputs"]:
            if output.endswith((".nii.gz", ".nrrd", ".mha")):
                read_volume(output)  # every output is a readable volume
    enhance = next(step for step in report["steps"] if step["task"] == "enhance")
    method = enhance["report"]["denoise"]["method"]  # what produced the voxels, e.g. selfsup (collaborative alone)
    assert enhance["qc_title"].endswith(f"denoise ({method})")
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert all(line.startswith("medsynth: warning: ") for line in lines), lines  # the steps' warnings, one line each
