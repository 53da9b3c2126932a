"""How much of the ASL series' volume-to-reference difference a spatial denoiser can remove (issue 30, bar (a)).

``benchmarks/real_noise.py`` scores a denoised ASL volume against the mean of the other volumes of its type. This
script measures the headroom of that score, on the same volumes, registration, reference and head mask (it imports
that benchmark's functions):

``noisy``        PSNR of the volume as acquired against the reference.
``white@bg``     PSNR of the *reference* plus white Rician noise of the volume's background sigma (MedSynth's
                 estimate, the noise in the air): what the score would read if the volume differed from the
                 reference by white acquisition noise alone. Far above ``noisy``: most of the real difference is
                 something else (motion and registration residuals, physiological fluctuation: spatially
                 correlated, in-plane lag-1 correlation reported).
``white gain``   The default denoise on that synthetic white-noise volume, gain over it: whether white noise of that
                 level is removable at all on this anatomy and grid (4 x 3.9 x 6 mm).
``sweep best``   The best gain over the noisy volume of the block-matching collaborative filter (MedSynth's, the BM4D
                 scheme) at sigma x 1, 1.5, 2, 3, 4, 6 of the background's, and of a Gaussian blur of 0.2-0.5 voxel:
                 an oracle that picks its strength by looking at the reference. A blur gains where the reference,
                 a mean of moved and resampled volumes, is itself blurred; that gain is no noise removed.

Run: ``python benchmarks/asl_headroom.py [--m0 0,4,8] [--control 0,24,49]`` (one thread, ~3-6 min).
Writes ``benchmarks/results/asl_headroom.json`` and ``.txt``.
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

import enhance as bench  # noqa: E402
import real_noise  # noqa: E402  the series, its registration and reference

from MedSynthLib.convert import from_sitk  # noqa: E402
from MedSynthLib.metrics import psnr  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402
from MedSynthLib.tasks.enhance import denoise, denoise_collaborative, estimate_noise  # noqa: E402
from MedSynthLib.volume import Volume  # noqa: E402

SIGMA_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
BLURS = (0.2, 0.3, 0.4, 0.5)
RESULTS = REPO / "benchmarks" / "results"


def volume_row(frames: list, reg: dict, index: np.ndarray, t: int, mask: np.ndarray, seed: int) -> dict:
    transforms = {int(k): v for k, v in reg["transforms"].items()}
    reference = np.stack([real_noise.to_space_of(frames, transforms, int(j), t) for j in index if j != t]).mean(0)
    volume = from_sitk(frames[t])
    noisy = volume.array.astype(np.float32)
    data_range = float(reference[mask].max() - reference[mask].min())
    score = lambda a: float(psnr(reference, a, mask=mask, data_range=data_range))  # noqa: E731
    sigma = float(estimate_noise(volume, modality="MR").details.get("background_sigma", 0.0))
    rng = np.random.default_rng(seed)
    white = np.hypot(reference + sigma * rng.normal(size=reference.shape),
                     sigma * rng.normal(size=reference.shape)).astype(np.float32)
    white_out = denoise(Volume(white, volume.ijk_to_ras), modality="MR", device="cpu", seed=0, threads=1).volume.array
    difference = noisy - reference
    inside = mask[:, :, :-1] & mask[:, :, 1:]
    lag1 = float(np.corrcoef(difference[:, :, :-1][inside], difference[:, :, 1:][inside])[0, 1])
    base = score(noisy)
    sweep = {f"x{f:g}": score(denoise_collaborative(noisy, sigma=sigma * f)[0]) - base for f in SIGMA_FACTORS}
    blurs = {f"{b:g}": score(ndimage.gaussian_filter(noisy, b)) - base for b in BLURS}
    return {"background_sigma": round(sigma, 3), "noisy": round(base, 3), "white_at_bg": round(score(white), 3),
            "white_gain": round(score(white_out) - score(white), 3),
            "difference_rms": round(float(difference[mask].std()), 3), "in_plane_lag1": round(lag1, 3),
            "collaborative_sweep_gain": {k: round(v, 3) for k, v in sweep.items()},
            "collaborative_best_gain": round(max(sweep.values()), 3),
            "blur_gain": {k: round(v, 3) for k, v in blurs.items()}, "blur_best_gain": round(max(blurs.values()), 3)}


def table(results: dict) -> str:
    lines = [f"{'type':<8}{'vol':>5}{'bg sig':>8}{'noisy':>8}{'white@bg':>10}{'white gain':>11}{'diff rms':>9}"
             f"{'lag1':>6}{'sweep best':>11}{'blur best':>10}"]
    for kind, rows in results["types"].items():
        for t, r in rows.items():
            lines.append(f"{kind:<8}{t:>5}{r['background_sigma']:>8.2f}{r['noisy']:>8.2f}{r['white_at_bg']:>10.2f}"
                         f"{r['white_gain']:>+11.2f}{r['difference_rms']:>9.2f}{r['in_plane_lag1']:>6.2f}"
                         f"{r['collaborative_best_gain']:>+11.2f}{r['blur_best_gain']:>+10.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m0", default="0,4,8")
    parser.add_argument("--control", default="0,24,49")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "asl_headroom.json"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    series = real_noise.load_series()
    frames, types = series["frames"], series["types"]
    results = {"platform": platform.platform(), "python": platform.python_version(),
               "sigma_factors": list(SIGMA_FACTORS), "blurs_voxels": list(BLURS), "types": {}}
    regs = {kind: real_noise.register_type(frames, np.flatnonzero(types == kind)) for kind in ("m0scan", "control")}
    mask = bench.head_mask(regs["m0scan"]["registered"].mean(0))
    for kind, picks in (("m0scan", args.m0), ("control", args.control)):
        index = np.flatnonzero(types == kind)
        results["types"][kind] = {}
        for pick in (int(p) for p in picks.split(",") if p):
            t = int(index[pick])
            results["types"][kind][str(t)] = volume_row(frames, regs[kind], index, t, mask, args.seed)
            print(f"{kind} {t}: {results['types'][kind][str(t)]}", flush=True)
    text = table(results)
    print(text)
    Path(args.out).write_text(to_json(results, indent=1))
    Path(args.out).with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
