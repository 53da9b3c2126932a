"""Every task's default keeps its guarantees on every real scan of ``../shared/data`` (issue 27's robustness matrix,
on crops: the guarantees, not the timings, which ``benchmarks/robustness.py`` measures on whole scans).

A guarantee is what a user relies on whatever the scan: exit 0, or exit 2 with one line naming the problem (never a
traceback), an output exactly when the run succeeded, never blank or part-blank, the grid kept where it is not
changed on purpose, a strict-JSON report naming the method that produced the voxels. Quality against the simple
baselines (fill against linear, upsample against the B-spline, N4 against the input's tissue CV) is the
benchmark's to report, not asserted here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The benchmark's own judgements of quality (reported there), not guarantees.
QUALITY = ("below linear", "below B-spline", "tissue CV raised", "over budget")
TASKS = ["check", "detect", "fill", "upsample", "lesion", "denoise", "bias"]


def _robustness():
    spec = importlib.util.spec_from_file_location("robustness", REPO / "benchmarks" / "robustness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.RUNNER["run"] = module.run_in_process
    return module


@pytest.mark.slow
def test_every_task_keeps_its_guarantees_on_every_scan(shared_data):
    robustness = _robustness()
    scans = robustness.corpus(shared_data)
    assert len(scans) >= 17, [s.name for s in scans]
    rows = []
    for scan in scans:
        rows += robustness.scan_rows(scan, TASKS, quick=True)
    broken = [(row["scan"], row["task"], problem) for row in rows for problem in row["problems"]
              if not problem.startswith(QUALITY)]
    assert not broken, broken
    assert all(row["exit"] in (0, 2) for row in rows)
    assert sum(row["exit"] == 0 for row in rows) >= 0.9 * len(rows)  # refusals are the exception, each one line
