"""Honest reports: strict JSON everywhere (no NaN or Infinity: null with a reason), the warnings on stderr too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from MedSynthLib.reports import NULL_REASON_SUFFIX, to_json, to_jsonable


def strict_loads(text: str):
    """A parser as strict as JavaScript's JSON.parse: NaN, Infinity and -Infinity are errors."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


NASTY = {
    "nan": float("nan"),
    "inf": float("inf"),
    "minus_inf": -math.inf,
    "numpy": np.float32("nan"),
    "numpy_inf": np.float64("-inf"),
    "fine": np.float64(1.5),
    "nested": {"deeper": {"ratio": np.nan, "ok": 2}},
    "list": [1.0, float("nan"), [np.inf, 3]],
    "array": np.array([[1.0, np.nan], [np.inf, -np.inf]], dtype=np.float32),
    "lesions": [{"id": 1, "noise_ratio": float("nan")}, {"id": 2, "noise_ratio": 1.02}],
    "explained": float("nan"),
    "explained" + NULL_REASON_SUFFIX: "too few voxels to measure",
    "path": Path("/tmp/x.json"),
    "tuple": (np.int64(3), np.bool_(True)),
}


def test_every_non_finite_number_becomes_null_with_a_reason_at_every_depth():
    data = strict_loads(to_json(NASTY, indent=2))
    assert data["nan"] is None and data["nan_null_reason"] == "not finite (NaN)"
    assert data["inf"] is None and data["inf_null_reason"] == "not finite (inf)"
    assert data["minus_inf"] is None and data["minus_inf_null_reason"] == "not finite (-inf)"
    assert data["numpy"] is None and data["numpy_inf"] is None and "numpy_inf_null_reason" in data
    assert data["fine"] == 1.5 and "fine_null_reason" not in data
    assert data["nested"]["deeper"] == {"ratio": None, "ratio_null_reason": "not finite (NaN)", "ok": 2}
    assert data["list"] == [1.0, None, [None, 3]]
    assert data["list_null_reason"] == "not finite (NaN, inf) at [1], [2][0]"
    assert data["array"] == [[1.0, None], [None, None]]
    assert "[0][1], [1][0], [1][1]" in data["array_null_reason"]
    assert data["lesions"][0] == {"id": 1, "noise_ratio": None, "noise_ratio_null_reason": "not finite (NaN)"}
    assert data["lesions"][1] == {"id": 2, "noise_ratio": 1.02}
    assert data["explained_null_reason"] == "too few voxels to measure"  # the source's reason is kept
    assert data["path"] == "/tmp/x.json" and data["tuple"] == [3, True]
    assert to_jsonable(float("nan")) is None and to_jsonable(np.float32(2.0)) == 2.0


def test_a_nan_that_skips_the_conversion_is_refused_not_written():
    class Sneaky:
        def __repr__(self):
            return "sneaky"

    with pytest.raises(ValueError):
        to_json({"x": Sneaky()}, default=lambda _: float("nan"))


def test_the_cli_report_writer_and_the_slicer_history_are_strict(tmp_path):
    import sys

    from MedSynthLib.cli.common import write_json

    write_json({"report": NASTY}, tmp_path / "r.json")
    assert strict_loads((tmp_path / "r.json").read_text())["report"]["nan"] is None

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSynth"))
    try:
        from MedSynthSlicerLib.history import append_history, history_entry
    finally:
        sys.path.pop(0)
    old = '[{"task": "lesion", "report": {"noise_ratio": NaN}}]'  # an attribute saved before reports were strict
    text = append_history(old, history_entry(action="edited", task="denoise", parameters={"strength": np.inf},
                                             report=NASTY))
    entries = strict_loads(text)
    assert entries[0]["report"]["noise_ratio"] is None
    assert entries[1]["parameters"]["strength"] is None and entries[1]["report"]["list"] == [1.0, None, [None, 3]]


def test_a_small_lesion_on_thick_slices_reports_null_noise_with_the_reason_not_nan(tmp_path, capsys):
    """The issue's case: a 5 mm lesion on a 5 mm-slice scan has no voxel clear of partial volume, so its noise is
    not measured; the report says so (null and why) where it used to write NaN, which strict parsers refuse."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import make_phantom, oblique_matrix
    from MedSynthLib import write_volume
    from MedSynthLib.cli import main

    volume = make_phantom((14, 60, 64), matrix=oblique_matrix(spacing=(0.9, 0.9, 5.0)))
    source = write_volume(volume, tmp_path / "thick.nii.gz")
    region = write_volume(volume.with_array((volume.array > 50).astype(np.uint8)), tmp_path / "region.nii.gz")
    code = main(["-q", "lesion", str(source), str(tmp_path / "out.nii.gz"), "--labels", str(tmp_path / "l.nii.gz"),
                 "--preset", "mr-metastasis", "--count", "2", "--size", "5", "--seed", "3", "--region", str(region),
                 "--report", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    report = strict_loads((tmp_path / "r.json").read_text())
    for lesion in report["lesions"]:
        assert lesion["noise_inside"] is None and "too few voxel pairs inside the lesion" in lesion["noise_inside_null_reason"]
        assert lesion["noise_ratio"] is None and "noise_inside" in lesion["noise_ratio_null_reason"]
        assert lesion["noise_surrounding"] > 0  # the surrounding tissue is still measured
        assert lesion["contrast_error"] is not None


def test_lesion_measurements_without_a_background_or_a_voxel_are_null_with_their_reason():
    from MedSynthLib.tasks.lesion._measure import noise_measurement
    from MedSynthLib.tasks.lesion._report import _contrasts, _put

    empty = np.zeros((4, 8, 8), bool)
    noise = noise_measurement(np.zeros((4, 8, 8)), [empty], empty, before=np.zeros((4, 8, 8)))
    assert noise["noise_inside"] is None and noise["noise_surrounding"] is None and noise["noise_ratio"] is None
    assert "noise_inside and noise_surrounding could not be measured" in noise["noise_ratio_null_reason"]

    class Spec:
        contrast_mode, contrast = "relative", 0.3

    ring = np.ones((2, 2, 2), bool)
    entry: dict = {}
    _contrasts(entry, Spec, np.full((2, 2, 2), 5.0), ring, np.zeros_like(ring), None)
    assert entry["contrast_measured"] is None and "surrounding tissue" in entry["contrast_measured_null_reason"]
    zero: dict = {}
    _contrasts(zero, Spec, np.full((2, 2, 2), 5.0), ring, np.zeros_like(ring), 0.0)
    assert zero["contrast_measured"] is None and "background of 0" in zero["contrast_measured_null_reason"]
    assert zero["contrast_error"] is None
    _put(zero, "x", float("nan"), 3, "why")
    assert zero["x"] is None and zero["x_null_reason"] == "why"
    strict_loads(to_json(zero))


def test_report_warnings_reads_every_report_shape_once():
    from MedSynthLib.cli.common import report_warnings

    assert report_warnings({"task": "fill", "warnings": ["a", "a", "b\nc"]}) == ["a", "b c"]  # one line each
    pipeline = {"warnings": ["denoise: x"], "steps": [{"step": "denoise", "warnings": ["x"]}]}
    assert report_warnings(pipeline) == ["denoise: x"]  # a pipeline's own list already holds its steps'
    demo = {"samples": {}, "steps": [
        {"task": "fill", "report": {"fill": {"warnings": ["f"]}, "upsample": {"warnings": ["u"]}}},
        {"task": "lesion", "report": {"ct-chest": {"warnings": ["l"]}, "mr-t1": {"warnings": []}}},
        {"task": "enhance", "report": {"bias": {"warnings": []}, "denoise": {"warnings": ["noise estimates disagree"]}}}]}
    assert report_warnings(demo) == ["fill: f", "fill/upsample: u", "lesion/ct-chest: l",
                                     "enhance/denoise: noise estimates disagree"]


def _cli(capsys, *argv):
    from MedSynthLib.cli import main

    code = main(["-q", *map(str, argv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return [line for line in captured.err.splitlines() if line]


def test_every_task_command_prints_its_report_warnings_on_stderr_even_when_quiet(tmp_path, capsys):
    """fill, upsample, lesion, denoise and enhance (denoise's noise-estimate disagreement included: it used to be
    in the JSON only) print each warning of their report as one 'medsynth: warning:' line on stderr."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import make_phantom
    from enhance.phantoms import head_with_loud_background
    from MedSynthLib import write_volume

    phantom = make_phantom((12, 40, 48))
    source = write_volume(phantom, tmp_path / "in.nii.gz")
    middle = ",".join(f"{x:.2f}" for x in phantom.ijk_points_to_ras(np.array([24.0, 20.0, 6.0])))
    err = _cli(capsys, "fill", source, tmp_path / "f.nii.gz", "--method", "linear", "--report", tmp_path / "f.json")
    assert err == ["medsynth: warning: no missing or corrupted slice was found; the volume is returned unchanged"]
    assert strict_loads((tmp_path / "f.json").read_text())["warnings"] == [err[0].split("warning: ", 1)[1]]
    err = _cli(capsys, "upsample", source, tmp_path / "u.nii.gz", "--spacing", "1.3", "--method", "cubic",
               "--report", tmp_path / "u.json")
    assert err == [f"medsynth: warning: {w}" for w in strict_loads((tmp_path / "u.json").read_text())["warnings"]]
    err = _cli(capsys, "lesion", source, tmp_path / "l.nii.gz", "--labels", tmp_path / "ll.nii.gz", "--preset",
               "mr-metastasis", "--size", "6", "--at", middle, "--at", middle, "--report", tmp_path / "l.json")
    assert "medsynth: warning: lesion 2 overlaps an earlier lesion; the later one wins" in err
    assert err == [f"medsynth: warning: {w}" for w in strict_loads((tmp_path / "l.json").read_text())["warnings"]]

    _, loud = head_with_loud_background()
    noisy = write_volume(loud, tmp_path / "loud.nii.gz")
    err = _cli(capsys, "denoise", noisy, tmp_path / "d.nii.gz", "--device", "cpu", "--report", tmp_path / "d.json")
    assert any(line.startswith("medsynth: warning: noise estimates disagree") for line in err), err
    assert [f"medsynth: warning: {w}" for w in strict_loads((tmp_path / "d.json").read_text())["warnings"]] == err
    err = _cli(capsys, "enhance", noisy, tmp_path / "e.nii.gz", "--steps", "denoise:dct", "--device", "cpu")
    assert any(line.startswith("medsynth: warning: denoise(method=dct): noise estimates disagree") for line in err), err


def test_augment_prints_the_warnings_of_the_outputs_it_made(tmp_path, capsys, monkeypatch):
    import sys

    import MedSynthLib.tasks.lesion as lesion_task

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import make_phantom
    from MedSynthLib import write_volume

    real = lesion_task.insert_lesions

    def warned(*args, **kwargs):  # a lesion warning, as a thick-slice or crowded scan gives
        result = real(*args, **kwargs)
        result.report["warnings"].append("lesion 1 overlaps an earlier lesion; the later one wins")
        return result

    monkeypatch.setattr(lesion_task, "insert_lesions", warned)
    phantom = make_phantom((12, 40, 48))
    write_volume(phantom, tmp_path / "scan0.nii.gz")
    write_volume(phantom.with_array((phantom.array > 50).astype(np.uint8)), tmp_path / "region0.nii.gz")
    (tmp_path / "cohort.csv").write_text("image,region\nscan0.nii.gz,region0.nii.gz\n")
    argv = ["augment", tmp_path / "cohort.csv", tmp_path / "out", "--variants", "1", "--preset", "mr-metastasis",
            "--count", "1", "--size", "6"]
    err = _cli(capsys, *argv)
    assert len(err) == 1 and err[0].startswith("medsynth: warning: scan0 variant ") and "overlaps" in err[0], err
    assert _cli(capsys, *argv) == []  # a rerun makes nothing, so it has nothing new to say


#: The json.dumps calls that write no JSON file (a hash, a normalisation, a string inside a torch checkpoint),
#: by (file, function); every other one must pass allow_nan=False, which MedSynthLib.reports.to_json does.
NOT_WRITERS = {
    ("MedSynthLib/augment/__init__.py", "_inputs_sha256"): "hashes the inputs",
    ("MedSynthLib/augment/__init__.py", "augment"): "normalises the fingerprint (written later through to_json)",
    ("MedSynthLib/augment/_layout.py", "check_output_dir"): "normalises the fingerprint to compare it",
    ("MedSynthLib/models/package.py", "save_package"): "checks the metadata is JSON before anything is written",
    ("MedSynthLib/training/trainer.py", "checkpoint"): "the history as a string inside the .pt checkpoint",
}


def test_every_json_writer_refuses_nan():
    """A json.dumps without allow_nan=False can write NaN again: every writer goes through reports.to_json."""
    import ast

    root = Path(__file__).resolve().parents[1]
    found = set()
    for folder in ("MedSynthLib", "MedSynth", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            name = path.relative_to(root).as_posix()

            def visit(node, function):
                for child in ast.iter_child_nodes(node):
                    inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
                    if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                            and child.func.attr in ("dump", "dumps") and isinstance(child.func.value, ast.Name)
                            and child.func.value.id == "json"
                            and not any(k.arg == "allow_nan" and getattr(k.value, "value", None) is False
                                        for k in child.keywords)):
                        found.add((name, inner))
                    visit(child, inner)

            visit(ast.parse(path.read_text(encoding="utf-8")), "<module>")
    assert found <= set(NOT_WRITERS), sorted(found - set(NOT_WRITERS))


def test_every_stored_json_file_is_strict():
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("benchmarks/results/*.json"), *(root / "MedSynthLib").rglob("*.json"),
             *(root / "Resources").rglob("*.json"), root / "MedSynth.json"]
    assert len(files) > 10
    for path in files:
        strict_loads(path.read_text(encoding="utf-8"))
