"""Every task's default on every real scan: exit codes, guarantees, time, memory, and quality against the baseline.

For each scan of ``../shared/data`` (the 17 real scans of its README; label and probability maps are skipped) and
any folder given, the ``medsynth`` command line runs each task with its defaults, as a new user would, in a child
process (wall and CPU seconds, peak memory from the child's rusage):

- ``check``, ``detect``;
- ``fill``: three slices of the scan zeroed (a single slice and a 2-slice slab, along its slice axis), filled with
  the default method; quality: PSNR on those slices against the scan, beside linear interpolation;
- ``upsample``: every other slice dropped, ``--factor 2``; PSNR on the dropped slices, beside the B-spline
  (the library's ``spline``: cubic B-spline through the slices);
- ``lesion``: ``--count 2 --seed 1`` with the default preset (``auto``);
- ``denoise``: the removed part's standard deviation against the report's noise sigma, and its structure
  (correlation of the removed part with the smoothed scan: near 0 for noise, high when anatomy was removed);
- ``bias``: the tissue coefficient of variation before and after (brightest multi-Otsu class, each image its own
  classes, inside the input's Otsu foreground);
- ``enhance``: ``--steps bias,denoise``;
- ``augment``: the whole corpus, one variant each.

Guarantees checked for every run: exit 0, or 2 with one line and no traceback (nothing else); an output exactly
when the exit is 0, never blank or part-blank (a constant slice where the input slice held tissue: above Otsu), geometry kept
where the grid does not change on purpose, the report strict JSON (no NaN/Infinity), the method that produced the
voxels named. A task past its reported budget by more than 10 % is flagged.

Usage::

    python benchmarks/robustness.py [--quick] [--scans NAME,...] [--tasks fill,denoise,...] [--folder DIR]

``--quick`` crops each scan to at most 96 x 96 in-plane x 32 slices around its centre and gives the fill and
upsample a 10 s budget (what the slow test runs); the default runs whole scans with every default. Prints a table
and writes ``benchmarks/results/robustness.json`` (``robustness_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
TASKS = ("check", "detect", "fill", "upsample", "lesion", "denoise", "bias", "enhance")
#: Files of the corpus that are not scans (label maps, probability maps, masks).
NOT_SCANS = ("_label", "prob_", "brainmask")
QUICK_CROP = (32, 96, 96)  # KJI: slices, rows, columns


def corpus(folder: Path) -> list[Path]:
    """The scans of ``folder`` (3D NIfTI/NRRD), labels and masks left out."""
    files = sorted(list(folder.glob("*.nii.gz")) + list(folder.glob("*.nrrd")))
    return [f for f in files if not any(word in f.name for word in NOT_SCANS)]


def strict_json(text: str):
    """``text`` parsed by a strict parser (NaN or Infinity raise)."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


#: The child: ``medsynth`` in-process, then its own CPU seconds and peak memory (this process's, not the sum of all
#: children's) written to the file named first.
_CHILD = ("import json, resource, sys\n"
          "from MedSynthLib.cli import main\n"
          "try:\n    code = main(sys.argv[2:])\n"
          "finally:\n    u = resource.getrusage(resource.RUSAGE_SELF)\n"
          "    open(sys.argv[1], 'w').write(json.dumps({'cpu_s': u.ru_utime + u.ru_stime, 'peak_mib': u.ru_maxrss / 1024}))\n"
          "sys.exit(code)\n")


def run_cli(args: list[str], timeout: float = 3600) -> dict:
    """One ``medsynth`` run in a child: exit code, stdout, stderr, wall and CPU seconds, peak memory (MiB)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        usage_file = Path(handle.name)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(usage_file), "-q", *args], capture_output=True,
                              text=True, env=env, timeout=timeout)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        code, out, err = "timeout", "", str(expired)
    wall = time.perf_counter() - start
    try:
        usage = json.loads(usage_file.read_text() or "{}")
    except (OSError, ValueError):
        usage = {}
    usage_file.unlink(missing_ok=True)
    return {"exit": code, "stdout": out, "stderr": err.strip(), "wall_s": wall,
            "cpu_s": round(usage["cpu_s"], 2) if "cpu_s" in usage else None,
            "peak_mib": round(usage["peak_mib"], 1) if "peak_mib" in usage else None}


def run_in_process(args: list[str], timeout: float = 0) -> dict:
    """One ``medsynth`` run in this process (what the slow test uses: no interpreter start per run); the same
    fields as :func:`run_cli`, CPU seconds of this process, no peak memory."""
    import contextlib
    import io

    from MedSynthLib.cli import main

    out, err = io.StringIO(), io.StringIO()
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["-q", *args])
        except SystemExit as stop:  # argparse's usage errors
            code = stop.code if isinstance(stop.code, int) else 2
    return {"exit": code, "stdout": out.getvalue(), "stderr": err.getvalue().strip(),
            "wall_s": time.perf_counter() - start, "cpu_s": round(time.process_time() - cpu, 2), "peak_mib": None}


#: How each run is made: a child process (the benchmark) or in this process (the slow test sets it).
RUNNER = {"run": run_cli}


def _crop(volume, quick: bool):
    if not quick:
        return volume
    shape = volume.array.shape
    return volume.crop(tuple(slice(max(0, (n - c) // 2), max(0, (n - c) // 2) + min(n, c))
                             for n, c in zip(shape, QUICK_CROP)))


def _psnr(truth: np.ndarray, test: np.ndarray) -> Optional[float]:
    truth, test = truth.astype(np.float64), test.astype(np.float64)
    span = float(np.percentile(truth, 99.5) - np.percentile(truth, 0.5)) or 1.0
    mse = float(np.mean((truth - test) ** 2))
    return None if mse == 0 else round(10 * np.log10(span**2 / mse), 2)


def _flat_between(flat_source: list, source, result) -> list:
    """For each output slice (array axis 0) on another grid: whether the input slices it lies between (by
    position, through the two grids' matrices) are constant too; a new slice between two blank slices of the
    input (the MNI template's empty top) is blank by right."""
    to_source = np.linalg.inv(source.ijk_to_ras) @ result.ijk_to_ras
    last = len(flat_source) - 1
    flat = []
    for k in range(result.array.shape[0]):
        position = float((to_source @ np.array([0.0, 0.0, k, 1.0]))[2])  # IJK: K is array axis 0
        below, above = (min(max(int(np.floor(position)), 0), last), min(max(int(np.ceil(position)), 0), last))
        flat.append(flat_source[below] and flat_source[above])
    return flat


def _guarantees(run: dict, output: Optional[Path], source, report: Optional[Path], *, same_grid: bool) -> list[str]:
    """What broke a guarantee in this run (empty: none)."""
    from MedSynthLib.io import read_volume

    problems = []
    if "Traceback" in run["stderr"]:
        problems.append("traceback")
    if run["exit"] not in (0, 2):
        problems.append(f"exit {run['exit']}")
    if run["exit"] == 2 and len(run["stderr"].splitlines()) != 1:
        problems.append("exit 2 without exactly one line")
    if output is not None and (output.exists() != (run["exit"] == 0)):
        problems.append("output written on failure" if output.exists() else "exit 0 without output")
    if output is not None and output.exists():
        result = read_volume(output)
        flat_out = [np.ptp(s) == 0 for s in result.array]
        # a slice of air alone has no content to lose: denoised and Rician-debiased, its noise floor is 0 (the
        # pydeface template's last 6 slices, values 0-4 against a noise sigma of 3.8)
        from skimage.filters import threshold_otsu

        tissue = float(threshold_otsu(source.array[::2, ::2, ::2]))
        flat_source = [np.ptp(s) == 0 or not np.any(s > tissue) for s in source.array]
        flat_in = flat_source if same_grid else _flat_between(flat_source, source, result)
        if np.ptp(result.array) == 0:
            problems.append("blank output")
        elif any(o and not i for o, i in zip(flat_out, flat_in)):
            problems.append("part-blank output")
        if same_grid and (result.array.shape != source.array.shape
                          or not np.allclose(result.ijk_to_ras, source.ijk_to_ras, atol=1e-4)):
            problems.append("geometry changed")
    if report is not None and report.exists():
        try:
            data = strict_json(report.read_text(encoding="utf-8"))
        except ValueError as error:
            problems.append(str(error))
        else:
            budget = data.get("time_budget") or data.get("budget") or {}
            if isinstance(budget, dict) and budget.get("budget_s") and budget.get("spent_s", 0) > 1.1 * budget["budget_s"]:
                problems.append(f"over budget ({budget['spent_s']:.0f} s of {budget['budget_s']:.0f})")
            if not data.get("method"):
                problems.append("report names no method")
    return problems


def _row(task: str, run: dict, problems: list, **extra) -> dict:
    report = extra.pop("report_data", None) or {}
    return {"task": task, "exit": run["exit"], "wall_s": round(run["wall_s"], 2), "cpu_s": run["cpu_s"],
            "peak_mib": run["peak_mib"], "method": report.get("method"), "problems": problems,
            "message": run["stderr"].splitlines()[-1] if run["exit"] else "", **extra}


def _read_report(path: Path) -> dict:
    try:
        return strict_json(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError:
        return {}


def task_fill(scan, work: Path, quick: bool) -> dict:
    from MedSynthLib.io import read_volume, write_volume
    from MedSynthLib.tasks.fill import fill_slices

    axis = scan.slice_axis()
    n = scan.array.shape[axis]
    chosen = sorted({max(1, n // 3), min(n - 3, n // 2), min(n - 2, n // 2 + 1)})
    damaged = scan.array.copy()
    np.moveaxis(damaged, axis, 0)[chosen] = 0
    source, out, report = work / "damaged.nii.gz", work / "filled.nii.gz", work / "fill.json"
    write_volume(scan.with_array(damaged), source)
    args = ["fill", str(source), str(out), "--slices", ",".join(map(str, chosen)), "--report", str(report)]
    run = RUNNER["run"](args + (["--time-budget", "10"] if quick else []))
    problems = _guarantees(run, out, scan.with_array(damaged), report, same_grid=True)
    truth = np.moveaxis(scan.array, axis, 0)[chosen]
    quality = {}
    if out.exists():
        filled = np.moveaxis(read_volume(out).array, axis, 0)[chosen]
        linear = fill_slices(scan.with_array(damaged), slices=chosen, axis=axis, method="linear").volume.array
        quality = {"psnr": _psnr(truth, filled), "psnr_linear": _psnr(truth, np.moveaxis(linear, axis, 0)[chosen])}
        if quality["psnr"] is not None and quality["psnr_linear"] is not None and quality["psnr"] < quality["psnr_linear"] - 0.05:
            problems.append("below linear")
    return _row("fill", run, problems, report_data=_read_report(report), **quality)


def task_upsample(scan, work: Path, quick: bool) -> dict:
    from MedSynthLib.io import read_volume, write_volume
    from MedSynthLib.tasks.fill import upsample_slices

    axis = scan.slice_axis()
    n = scan.array.shape[axis]
    keep = n if n % 2 else n - 1  # an odd count: the coarse grid ends on a kept slice
    index = [slice(None)] * 3
    index[axis] = slice(0, keep, 2)
    coarse = scan.crop(index)
    source, out, report = work / "coarse.nii.gz", work / "up.nii.gz", work / "up.json"
    write_volume(coarse, source)
    run = RUNNER["run"](["upsample", str(source), str(out), "--factor", "2", "--report", str(report)]
                  + (["--time-budget", "10"] if quick else []))
    problems = _guarantees(run, out, coarse, report, same_grid=False)
    quality = {}
    if out.exists():
        new = np.moveaxis(read_volume(out).array, axis, 0)[1::2]
        truth = np.moveaxis(scan.array, axis, 0)[1:keep:2]
        spline = upsample_slices(coarse, factor=2, axis=axis, method="spline").volume.array
        quality = {"psnr": _psnr(truth, new), "psnr_bspline": _psnr(truth, np.moveaxis(spline, axis, 0)[1::2])}
        if quality["psnr"] is not None and quality["psnr_bspline"] is not None and quality["psnr"] < quality["psnr_bspline"] - 0.05:
            problems.append("below B-spline")
    return _row("upsample", run, problems, report_data=_read_report(report), **quality)


def _tissue_cv(array: np.ndarray, foreground: np.ndarray) -> Optional[float]:
    """CV of the brightest of three multi-Otsu classes of ``array`` inside ``foreground``.

    The foreground is the input scan's (Otsu), shared by before and after: a correction changes intensities, not
    where the tissue is (each image's own Otsu foreground moved by 10 % on the sdcflows EPI and turned a lowered CV
    into a raised one). Each image gets its own classes, as a segmentation of each would."""
    from skimage.filters import threshold_multiotsu

    values = array[foreground].astype(np.float64)
    if values.size < 1000:
        return None
    bright = values[values > threshold_multiotsu(values, classes=3)[1]]
    return round(float(np.std(bright) / np.mean(bright)), 5)


def task_simple(task: str, scan, source: Path, work: Path) -> dict:
    """check, detect, lesion, denoise, bias, enhance: one run each, guarantees and the task's quality figure."""
    from MedSynthLib.io import read_volume

    out, report = work / f"{task}.nii.gz", work / f"{task}.json"
    args = {"check": ["check", str(source)], "detect": ["detect", str(source), "--json"],
            "lesion": ["lesion", str(source), str(out), "--labels", str(work / "labels.nii.gz"), "--count", "2",
                       "--seed", "1", "--report", str(report)],
            "denoise": ["denoise", str(source), str(out), "--report", str(report)],
            "bias": ["bias", str(source), str(out), "--report", str(report)],
            "enhance": ["enhance", str(source), str(out), "--steps", "bias,denoise", "--report", str(report)]}[task]
    run = RUNNER["run"](args)
    writes = task not in ("check", "detect")
    problems = _guarantees(run, out if writes else None, scan, report if writes else None, same_grid=True)
    data, quality = _read_report(report), {}
    if task == "detect" and run["exit"] == 0:
        quality["found"] = len(strict_json(run["stdout"]).get("slices", []))
    if task == "denoise" and out.exists():
        removed = scan.array.astype(np.float64) - read_volume(out).array.astype(np.float64)
        from scipy import ndimage

        smooth = ndimage.gaussian_filter(scan.array.astype(np.float64), 2.0)
        sigma = (data.get("noise") or {}).get("sigma")
        quality = {"removed_sd_over_sigma": round(float(np.std(removed) / sigma), 3) if sigma else None,
                   "removed_structure": round(float(abs(np.corrcoef(removed.ravel(), smooth.ravel())[0, 1])), 4)}
    if task == "bias" and out.exists():
        from skimage.filters import threshold_otsu

        foreground = scan.array > threshold_otsu(scan.array)
        quality = {"cv_before": _tissue_cv(scan.array, foreground),
                   "cv_after": _tissue_cv(read_volume(out).array, foreground)}
        if None not in quality.values() and quality["cv_after"] > quality["cv_before"] + 1e-4:
            problems.append("tissue CV raised")
    return _row(task, run, problems, report_data=data, **quality)


def scan_rows(path: Path, tasks: list[str], quick: bool) -> list[dict]:
    from MedSynthLib.errors import InputError
    from MedSynthLib.io import read_volume, write_volume

    rows = []
    with tempfile.TemporaryDirectory(prefix="robust_") as folder:
        work = Path(folder)
        try:
            scan = _crop(read_volume(path), quick)
        except InputError as error:
            return [{"scan": path.name, "task": "read", "exit": 2, "problems": [], "message": str(error)}]
        source = work / "scan.nii.gz"
        write_volume(scan, source)
        for task in tasks:
            if task == "fill":
                row = task_fill(scan, work, quick)
            elif task == "upsample":
                row = task_upsample(scan, work, quick)
            else:
                row = task_simple(task, scan, source, work)
            rows.append({"scan": path.name, **row})
            print(_line(rows[-1]), flush=True)
    return rows


def augment_row(scans: list[Path], quick: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="robust_aug_") as folder:
        inputs = Path(folder) / "in"
        inputs.mkdir()
        for path in scans:
            if quick:
                from MedSynthLib.io import read_volume, write_volume

                write_volume(_crop(read_volume(path), True), inputs / path.name)
            else:
                os.symlink(path, inputs / path.name)
        run = RUNNER["run"](["augment", str(inputs / "*.nii.gz"), str(Path(folder) / "out")])
        problems = [] if run["exit"] == 0 else [f"exit {run['exit']}"]
        return {"scan": f"{len(scans)} scans", **_row("augment", run, problems)}


def _line(row: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in row.items()
                      if k not in ("scan", "task", "exit", "wall_s", "cpu_s", "peak_mib", "method", "problems", "message"))
    wall = row.get("wall_s")
    return (f"{row['scan'][:44]:44s} {row['task']:9s} {row['exit']!s:>4s} {wall if wall is not None else '-':>7} "
            f"{str(row.get('method') or '')[:28]:28s} {'; '.join(row['problems']) or 'ok':24s} {extra}"
            + (f"  [{row['message'][:80]}]" if row.get("message") else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="crops and a 10 s fill/upsample budget")
    parser.add_argument("--scans", help="comma list of file names (default: every scan of the corpus)")
    parser.add_argument("--tasks", default=",".join(TASKS + ("augment",)))
    parser.add_argument("--folder", type=Path, default=DATA, help=f"scans to run on (default {DATA})")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    scans = corpus(args.folder)
    if args.scans:
        scans = [s for s in scans if s.name in args.scans.split(",")]
    tasks = args.tasks.split(",")
    print(f"{'scan':44s} {'task':9s} {'exit':>4s} {'wall s':>7s} {'method':28s} {'guarantees':24s} quality")
    rows = []
    for path in scans:
        rows += scan_rows(path, [t for t in tasks if t != "augment"], args.quick)
    if "augment" in tasks:
        rows.append(augment_row(scans, args.quick))
        print(_line(rows[-1]))
    broken = [r for r in rows if r["problems"]]
    print(f"\n{len(rows)} runs, {sum(r['exit'] == 0 for r in rows)} exit 0, {len(broken)} with a broken guarantee")
    out = args.out or RESULTS / ("robustness_quick.json" if args.quick else "robustness.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                               "rows": rows}, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
