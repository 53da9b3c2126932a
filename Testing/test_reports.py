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
