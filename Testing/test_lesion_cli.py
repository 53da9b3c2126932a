"""``medsynth lesion``: arguments as users type them, files and headers written, nothing written on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from test_lesion import _centre, ct_chest, mr_head

from MedSynthLib.cli import main
from MedSynthLib.io import read_volume, write_volume


@pytest.fixture
def mr_file(tmp_path):
    volume = mr_head(dtype=np.int16)
    path = tmp_path / "t1.nii.gz"
    write_volume(volume, path)
    return path, volume


def _at(point) -> str:
    return ",".join(f"{x:.3f}" for x in point)


def test_negative_coordinates_work_as_typed(tmp_path, mr_file):
    path, volume = mr_file
    point = _centre(volume)
    assert min(point) < 0  # the phantom's centre has a negative coordinate: the case argparse trips on
    text = _at(point)
    assert text.startswith("-") or ",-" in text
    for number, at in enumerate((["--at", text], [f"--at={text}"])):
        out, labels, report = tmp_path / f"o{number}.nrrd", tmp_path / f"l{number}.nrrd", tmp_path / f"r{number}.json"
        code = main(["-q", "lesion", str(path), str(out), "--labels", str(labels), "--preset", "mr-metastasis",
                     *at, "--size", "8", "--report", str(report)])
        assert code == 0
        data = json.loads(report.read_text())
        assert np.allclose(data["lesions"][0]["centre_ras"], point, atol=1e-3)
    assert np.array_equal(read_volume(tmp_path / "o0.nrrd").array, read_volume(tmp_path / "o1.nrrd").array)


def test_leading_negative_first_coordinate(tmp_path):
    volume = mr_head(dtype=np.int16)
    shifted = volume.ijk_to_ras.copy()
    shifted[:3, 3] -= 200  # every coordinate negative
    path = tmp_path / "neg.nrrd"
    write_volume(volume.__class__(volume.array, shifted), path)
    point = _centre(volume.__class__(volume.array, shifted))
    assert all(x < 0 for x in point)
    code = main(["-q", "lesion", str(path), str(tmp_path / "o.nrrd"), "--labels", str(tmp_path / "l.nrrd"),
                 "--at", _at(point), "--size", "7", "--contrast", "0.4"])
    assert code == 0


def test_outputs_are_marked_synthetic_and_reproducible(tmp_path, mr_file):
    path, volume = mr_file
    region = tmp_path / "wm.nrrd"
    write_volume(volume.with_array((volume.array > 800).astype(np.uint8)), region)
    out, labels, report = tmp_path / "out.nii.gz", tmp_path / "labels.nrrd", tmp_path / "report.json"
    code = main(["-q", "lesion", str(path), str(out), "--labels", str(labels), "--preset", "mr-wmh", "--count", "2",
                 "--region", str(region), "--seed", "4", "--report", str(report)])
    assert code == 0
    data = json.loads(report.read_text())
    assert data["seed"] == 4 and len(data["lesions"]) == 2
    for lesion in data["lesions"]:
        assert {"spec", "centre_ras", "volume_ml", "bbox_ijk", "region_of_influence"} <= set(lesion)
    nifti = sitk.ReadImage(str(out))
    assert "SYNTHETIC LESIONS" in nifti.GetMetaData("descrip") and "seed=4" in nifti.GetMetaData("descrip")
    nrrd = sitk.ReadImage(str(labels))
    assert nrrd.GetMetaData("MedSynth_synthetic_lesions") == "true"
    assert len(json.loads(nrrd.GetMetaData("MedSynth_lesion_specs"))) == 2
    written = read_volume(labels)
    assert written.same_grid(volume) and written.array.dtype == np.uint8
    # the report alone reproduces the run
    again = tmp_path / "again.nii.gz"
    assert main(["-q", "lesion", str(path), str(again), "--labels", str(tmp_path / "again_l.nrrd"),
                 "--spec", str(report)]) == 0
    assert np.array_equal(read_volume(again).array, read_volume(out).array)


def test_segmentation_output(tmp_path, mr_file):
    path, volume = mr_file
    seg = tmp_path / "lesion.seg.nrrd"
    code = main(["-q", "lesion", str(path), str(tmp_path / "o.nrrd"), "--labels", str(seg), "--preset", "mr-enhancing-tumour",
                 "--at", _at(_centre(volume)), "--size", "14", "--seed", "2"])  # seed 2 draws a necrotic core
    assert code == 0
    image = sitk.ReadImage(str(seg))
    names = [image.GetMetaData(k) for k in image.GetMetaDataKeys() if k.endswith("_Name")]
    assert any("lesion" in n for n in names) and any("core" in n for n in names)


def test_list_presets(capsys):
    assert main(["lesion", "--list-presets"]) == 0
    text = capsys.readouterr().out
    assert "ct-nodule-ground-glass" in text and "mr-wmh" in text and "HU" in text
    assert main(["lesion", "--list-presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {p["modality"] for p in data} == {"CT", "MR"}


@pytest.mark.parametrize("extra, message", [
    (["--at", "9999,0,0"], "outside the volume"),
    (["--count", "1", "--at", "0,0,0"], "exactly one"),
    (["--preset", "ct-nodule-solid", "--count", "1"], "Hounsfield"),
    (["--count", "1", "--size", "200"], "inscribed"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, mr_file, capsys, extra, message):
    path, _ = mr_file
    out, labels, report = tmp_path / "o.nrrd", tmp_path / "l.nrrd", tmp_path / "r.json"
    code = main(["lesion", str(path), str(out), "--labels", str(labels), "--report", str(report), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not labels.exists() and not report.exists()


def test_region_on_another_grid_and_missing_labels(tmp_path, mr_file, capsys):
    path, volume = mr_file
    other = tmp_path / "other.nrrd"
    write_volume(ct_chest(), other)
    assert main(["lesion", str(path), str(tmp_path / "o.nrrd"), "--labels", str(tmp_path / "l.nrrd"),
                 "--count", "1", "--region", str(other)]) == 2
    assert "another grid" in capsys.readouterr().err
    assert main(["lesion", str(path), str(tmp_path / "o.nrrd"), "--count", "1"]) == 2
    assert "--labels" in capsys.readouterr().err
    assert not (tmp_path / "o.nrrd").exists()


@pytest.mark.parametrize("extra, message", [
    (["--preset", "nope", "--count", "1"], "--preset: invalid choice: 'nope' (choose from 'auto', 'mr-wmh'"),
    (["--count", "1", "--label-mode", "pixels"], "--label-mode: invalid choice: 'pixels'"),
    (["--count", "1", "--size", "400"], "size mm must be a number in [0.5, 300], got 400.0"),
    (["--count", "0"], "count must be a number in [1, 1000], got 0"),
    (["--count", "1", "--region", "nowhere.nrrd"], "nowhere.nrrd"),
])
def test_option_values_are_refused_in_the_options_words(tmp_path, mr_file, capsys, extra, message):
    """The flags take their choices and ranges from LesionOptions: refused in one line, exit 2, nothing written."""
    path, _ = mr_file
    out, labels = tmp_path / "o.nrrd", tmp_path / "l.nrrd"
    try:
        code = main(["lesion", str(path), str(out), "--labels", str(labels), *extra])
    except SystemExit as stop:  # argparse's own refusal (a choice)
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and not labels.exists()


def test_the_flags_come_from_the_options():
    from MedSynthLib.cli import build_parser
    from MedSynthLib.cli.common import options_from_args
    from MedSynthLib.tasks.lesion import LesionOptions

    parser = build_parser()
    lesion = parser._subparsers._group_actions[0].choices["lesion"]
    actions = {a.dest: a for a in lesion._actions}
    for name in ("preset", "label_mode"):
        assert tuple(actions[name].choices) == LesionOptions.knob(name).choices
    assert LesionOptions.knob("label_mode").help in actions["label_mode"].help
    args = parser.parse_args(["lesion", "in.nrrd", "out.nrrd", "--count", "2"])
    from MedSynthLib.cli.lesion import lesion_knobs

    built = options_from_args(LesionOptions, args, ("seed", "label_mode"), **lesion_knobs(args))
    assert built == LesionOptions(count=2)  # absent flags: the options' own defaults


def test_bad_coordinate_is_a_usage_error(tmp_path, mr_file, capsys):
    path, _ = mr_file
    with pytest.raises(SystemExit) as stop:
        main(["lesion", str(path), str(tmp_path / "o.nrrd"), "--labels", str(tmp_path / "l.nrrd"), "--at", "1,2"])
    assert stop.value.code == 2
    assert "R,A,S" in capsys.readouterr().err
