"""ECLARE (Remedios et al.) as a through-plane super-resolution peer, on the thick-slice suite of ``fill.py``.

ECLARE pins numpy 1.26 / scipy 1.11 and trains a network per volume (its default, 1,000,000 patches of
batch 128 = 7813 steps, takes about 20 hours on a 2-core CPU), so it runs in its own virtual environment
and is driven through its command line::

    python3 -m venv /path/eclare-venv && /path/eclare-venv/bin/pip install eclare==1.0.1
    python benchmarks/eclare_peer.py --eclare /path/eclare-venv/bin/run-eclare \
        --volume mni --scenario thick4 --n-patches 6144      # 48 steps of batch 128

The thick input is exactly ``fill.py --suite thick --quick``'s (same crop, Gaussian slice profile, every
``factor``-th slice kept), written as NIfTI; ECLARE is told the true relative slice thickness
(``--relative-slice-thickness``: the profile FWHM in in-plane pixels, which the crop has isotropic). Its
output covers the whole field of view at ``factor`` x the slices, centred in each thick slice, so its grid is
offset by half a thin slice from the truth's: it is resampled (cubic spline, through-plane) at each truth slice's
physical position (through both affines), and PSNR/SSIM are taken on the unacquired truth slices, with the same
mask and data range as ``fill.py``. ``--score-only`` scores an output already in ``--work``. Prints a row and writes JSON
(``benchmarks/results/eclare_peer.json``) with the exact command, steps, wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from fill import THICK, load, make_thick, thick_case  # noqa: E402  (the thick suite's own degradation)

from MedSynthLib.io import read_volume, write_volume  # noqa: E402
from MedSynthLib.metrics import psnr, ssim  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def at_truth_slices(output: np.ndarray, output_affine: np.ndarray, truth_affine: np.ndarray, n_truth: int,
                    axis: int) -> tuple[np.ndarray, list[int]]:
    """ECLARE's output resampled (cubic spline, through-plane only) at the truth slices inside its extent.

    ECLARE puts ``factor`` thin slices inside each thick one, centred in it, so its grid is offset by half a thin
    slice from the acquired slices' centres and no output slice lies on a truth slice: each truth slice is
    interpolated from its neighbours along the slice axis. Returns (K, H, W) and the truth indices.
    """
    from scipy import ndimage

    axis_ijk = 2 - axis
    truth_to_out = np.linalg.inv(output_affine) @ truth_affine
    moved = np.moveaxis(output.astype(np.float64), axis, 0)
    positions = []
    for index in range(n_truth):
        point = np.zeros(4)
        point[axis_ijk], point[3] = index, 1.0
        positions.append((truth_to_out @ point)[axis_ijk])
    inside = [i for i, z in enumerate(positions) if 0 <= z <= moved.shape[0] - 1]
    z = np.array([positions[i] for i in inside])
    rows, cols = np.meshgrid(np.arange(moved.shape[1]), np.arange(moved.shape[2]), indexing="ij")
    planes = [ndimage.map_coordinates(moved, [np.full(rows.shape, v), rows, cols], order=3, mode="nearest") for v in z]
    return np.stack(planes), inside


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eclare", required=True, help="path of run-eclare in ECLARE's own environment")
    parser.add_argument("--volume", default="mni")
    parser.add_argument("--scenario", default="thick4", choices=sorted(THICK))
    parser.add_argument("--n-patches", type=int, default=6144, help="ECLARE training patches (batch 128)")
    parser.add_argument("--work", default=None, help="folder for ECLARE's input and output (default: temporary)")
    parser.add_argument("--score-only", action="store_true", help="score the ECLARE output already in --work")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "eclare_peer.json"))
    args = parser.parse_args(argv)

    name, full, full_mask = load(args.volume)
    truth, mask, axis = thick_case(name, full, full_mask, quick=True)
    factor, fwhm = THICK[args.scenario]
    thick = make_thick(truth, axis, factor, fwhm)
    work = Path(args.work or tempfile.mkdtemp(prefix="eclare_"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"{name}_{args.scenario}.nii.gz"
    write_volume(thick, source)
    command = [args.eclare, "--in-fpath", str(source), "--out-dir", str(work / "out"),
               "--relative-slice-thickness", str(fwhm), "--n-patches", str(args.n_patches),
               "--gpu-id", "-1"]
    seconds = cpu_seconds = None
    if not args.score_only:
        start, cpu_start = time.perf_counter(), _children_cpu()
        finished = subprocess.run(command, capture_output=True, text=True)
        seconds, cpu_seconds = time.perf_counter() - start, _children_cpu() - cpu_start
        if finished.returncode != 0:
            print(finished.stdout[-2000:], finished.stderr[-2000:], sep="\n")
            return 1
    result = read_volume(next((work / "out").glob("*_eclare.nii*")))
    resampled, inside = at_truth_slices(result.array, result.ijk_to_ras, truth.ijk_to_ras, truth.array.shape[axis],
                                        axis)
    unacquired = [j for j in inside if j % factor]
    reference = np.moveaxis(truth.array, axis, 0).astype(np.float64)[unacquired]
    got = resampled[[inside.index(j) for j in unacquired]]
    if got.shape[1:] != reference.shape[1:]:
        print(f"ECLARE output in-plane shape {got.shape[1:]} differs from the truth's {reference.shape[1:]}")
        return 1
    fg = np.moveaxis(mask, axis, 0)[unacquired]
    data_range = float(full.array.max() - full.array.min())
    row = {"suite": "thick", "volume": name, "scenario": args.scenario, "method": "eclare",
           "method_ran": f"ECLARE 1.0.1, {args.n_patches} patches ({args.n_patches // 128} steps of 128), CPU",
           "command": " ".join(command[1:]), "slices_scored": len(unacquired),
           "unacquired_slices_total": sum(1 for j in range(truth.array.shape[axis]) if j % factor),
           "psnr_db": round(psnr(reference, got, mask=fg, data_range=data_range), 3),
           "ssim": round(ssim(reference, got, mask=fg, data_range=data_range, axis=0), 4),
           "seconds": None if seconds is None else round(seconds, 1),
           "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1)}
    print(to_json(row, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(to_json({"rows": [row]}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
