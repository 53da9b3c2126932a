"""Synthesised-voxel masks and calibrated uncertainty on every real scan (issue: annotators know what is made).

For every 3D scan of ``../shared/data`` (label, probability and mask maps skipped):

* **fill**: 3 slices zeroed at 30, 50 and 70 % along the slice axis (the axis of largest spacing), filled by
  default (``fill_slices`` with ``uncertainty=True``, slices detected): the mask must mark as 1 exactly the
  zeroed slices plus any slice the detector already finds on the untouched scan (reported), nothing else; the
  uncertainty is compared with the absolute error over the synthesised *foreground* voxels (above the Otsu
  threshold of the untouched scan): Spearman rank correlation, and the share within 2 (and 1) predicted sd.
* **upsample x2** by default: the mask must mark exactly the new slices as 1 and, where the acquired slices
  were rewritten (deblurred thick slices), those as 2.

Bars (issue 29): Spearman >= 0.5; 90-98 % within two sd; masks exact. Thin scans are the bar's rows (slice
spacing at most 1.5x the finest in-plane pixel); thick scans are reported too.

Run: ``python benchmarks/provenance.py [--data DIR] [--out benchmarks/results/provenance.json] [--scans a,b]``.
The scans come from PyPI/Debian packages (see ``../shared/data/README.md`` for how to obtain each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from MedSynthLib.io import read_volume  # noqa: E402
from MedSynthLib.provenance import REWRITTEN, SYNTHESISED  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402
from MedSynthLib.tasks.fill import fill_slices, find_missing_slices, upsample_slices  # noqa: E402
from MedSynthLib.volume import Volume  # noqa: E402

SKIP = ("label", "prob", "brainmask", "mask")
FRACTIONS = (0.3, 0.5, 0.7)
THIN_RATIO = 1.5


def scans(folder: Path, names=None) -> list[Path]:
    found = sorted(p for p in folder.glob("*.nii*") if not any(s in p.name.lower() for s in SKIP))
    return [p for p in found if names is None or p.name in names]


def marked(mask: np.ndarray, axis: int, value: int) -> list[int]:
    stack = np.moveaxis(mask, axis, 0)
    return [int(i) for i in np.nonzero((stack == value).reshape(len(stack), -1).any(axis=1))[0]]


def whole(mask: np.ndarray, axis: int, slices: list[int], value: int) -> bool:
    stack = np.moveaxis(mask, axis, 0)
    return all(bool(np.all(stack[s] == value)) for s in slices)


def fill_row(volume: Volume) -> dict:
    from scipy.stats import spearmanr
    from skimage.filters import threshold_otsu

    axis = volume.slice_axis()
    count = volume.array.shape[axis]
    zeroed = sorted({int(round(f * (count - 1))) for f in FRACTIONS})
    already = [i for i, _ in find_missing_slices(volume, axis=axis)]
    damaged = volume.array.copy()
    np.moveaxis(damaged, axis, 0)[zeroed] = 0
    start = time.perf_counter()
    result = fill_slices(Volume(damaged, volume.ijk_to_ras), axis=axis, uncertainty=True)
    seconds = time.perf_counter() - start
    mask = result.synthetic_mask.array
    expected = sorted(set(zeroed) | set(already))
    ones = marked(mask, axis, SYNTHESISED)
    exact = ones == expected and whole(mask, axis, expected, SYNTHESISED) and not (mask == REWRITTEN).any()
    truth = np.moveaxis(volume.array, axis, 0)[zeroed].astype(np.float64)
    filled = np.moveaxis(result.volume.array, axis, 0)[zeroed].astype(np.float64)
    sd = np.moveaxis(result.uncertainty.array, axis, 0)[zeroed].astype(np.float64)
    sample = volume.array[:: max(1, volume.array.shape[0] // 32)]
    tissue = truth > threshold_otsu(sample)
    error = np.abs(filled - truth)[tissue]
    sd = sd[tissue]
    calibration = result.report.get("uncertainty", {})
    return {
        "method": result.report["method"], "seconds": round(seconds, 2), "zeroed": zeroed,
        "detected_before": already, "mask_ones": ones, "mask_exact": bool(exact),
        "voxels": int(tissue.sum()),
        "spearman": round(float(spearmanr(sd, error).statistic), 4) if tissue.sum() > 2 else None,
        "within_2sd": round(float(np.mean(error <= 2 * sd)), 4) if tissue.any() else None,
        "within_1sd": round(float(np.mean(error <= sd)), 4) if tissue.any() else None,
        "calibration_held_out": calibration.get("held_out"), "calibrated_with": calibration.get("calibrated_with"),
    }


def upsample_row(volume: Volume) -> dict:
    axis = volume.slice_axis()
    start = time.perf_counter()
    result = upsample_slices(volume, axis=axis)
    seconds = time.perf_counter() - start
    mask = result.synthetic_mask.array
    count = result.volume.array.shape[axis]
    new = [i for i in range(count) if i % 2 == 1]
    acquired = [i for i in range(count) if i % 2 == 0]
    rewritten = list(result.rewritten)
    exact = (marked(mask, axis, SYNTHESISED) == new and whole(mask, axis, new, SYNTHESISED)
             and marked(mask, axis, REWRITTEN) == rewritten
             and all(not np.moveaxis(mask, axis, 0)[i].any() for i in acquired if i not in set(rewritten)))
    return {"method": result.report["method"], "seconds": round(seconds, 2), "new_slices": len(new),
            "rewritten_slices": len(rewritten), "mask_exact": bool(exact)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "provenance.json"))
    parser.add_argument("--scans", help="comma-separated file names (default: all)")
    args = parser.parse_args(argv)
    folder = Path(args.data)
    if not folder.is_dir():
        print(f"no data folder at {folder}; nothing to measure")
        return 0
    names = set(args.scans.split(",")) if args.scans else None
    rows = []
    header = (f"{'scan':44} {'thin':4} {'fill method':12} {'mask':5} {'spearman':>8} {'in 2sd':>7} {'in 1sd':>7} "
              f"{'cal rho':>7} {'s':>6} | {'upsample':10} {'mask':5} {'s':>6}")
    print(header)
    for path in scans(folder, names):
        volume = read_volume(path)
        spacing = [volume.spacing_along(a) for a in range(3)]
        axis = volume.slice_axis()
        thin = spacing[axis] <= THIN_RATIO * min(s for a, s in enumerate(spacing) if a != axis)
        row = {"scan": path.name, "thin": bool(thin), "shape": list(volume.array.shape),
               "spacing": [round(s, 4) for s in spacing]}
        try:
            row["fill"] = fill_row(volume)
            row["upsample"] = upsample_row(volume)
        except Exception as error:  # a benchmark reports the failure and goes on
            row["error"] = f"{type(error).__name__}: {error}"
        rows.append(row)
        f, u = row.get("fill", {}), row.get("upsample", {})
        cal = (f.get("calibration_held_out") or {}).get("spearman")
        print(f"{path.name[:44]:44} {'yes' if thin else 'no':4} {f.get('method', '-'):12} "
              f"{str(f.get('mask_exact', '-')):5} {f.get('spearman', float('nan')):8.3f} "
              f"{f.get('within_2sd', float('nan')):7.3f} {f.get('within_1sd', float('nan')):7.3f} "
              f"{cal if cal is not None else float('nan'):7.3f} {f.get('seconds', 0):6.1f} | "
              f"{u.get('method', '-'):10} {str(u.get('mask_exact', '-')):5} {u.get('seconds', 0):6.1f}"
              + (f"  ERROR {row['error']}" if "error" in row else ""), flush=True)
    thin_rows = [r for r in rows if r["thin"] and "fill" in r]
    summary = {
        "thin_scans": len(thin_rows),
        "spearman_min_thin": min((r["fill"]["spearman"] for r in thin_rows), default=None),
        "within_2sd_range_thin": [min((r["fill"]["within_2sd"] for r in thin_rows), default=None),
                                  max((r["fill"]["within_2sd"] for r in thin_rows), default=None)],
        "spearman_at_least_0.5": sum(r["fill"]["spearman"] >= 0.5 for r in thin_rows),
        "within_2sd_in_90_98": sum(0.90 <= r["fill"]["within_2sd"] <= 0.98 for r in thin_rows),
        "masks_exact": sum(r["fill"]["mask_exact"] and r["upsample"]["mask_exact"] for r in rows if "fill" in r),
        "rows": len(rows),
    }
    print(to_json(summary))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(to_json({"what": __doc__.splitlines()[0], "summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
