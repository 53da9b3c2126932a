"""``medsynth augment``: layouts frameworks read, exact labels, resumable and order-free outputs, bad rows."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_lesion import ct_chest, mr_head

from MedSynthLib.augment import augment, derive_seed, read_cases
from MedSynthLib.augment._inputs import file_sha256
from MedSynthLib.cli import build_parser, main
from MedSynthLib.errors import Cancelled, InputError
from MedSynthLib.io import read_volume, write_volume
from MedSynthLib.progress import CancelToken
from MedSynthLib.tasks.lesion import insert_lesions

SHAPE = (32, 40, 40)
OPTIONS = {"size_mm": 6.0}
SEED = 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three small MR scans; the second has an annotation (id 1) that must survive."""
    root = tmp_path_factory.mktemp("cohort")
    lines = ["image,label"]
    for number in range(3):
        volume = mr_head(SHAPE, seed=number, dtype=np.int16)
        write_volume(volume, root / "scans" / f"scan{number}.nii.gz")
        label = ""
        if number == 1:
            annotation = np.zeros(SHAPE, np.uint8)
            annotation[12:20, 8:14, 8:14] = 1
            write_volume(volume.with_array(annotation), root / "labels" / "scan1.nii.gz")
            label = "labels/scan1.nii.gz"
        lines.append(f"scans/scan{number}.nii.gz,{label}")
    (root / "cohort.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def serial(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "dataset"
    result = augment(cohort / "cohort.csv", out, variants=2, seed=SEED, lesion=OPTIONS)
    assert not result.failed, [r["error"] for r in result.failed]
    assert result.written == 6
    return out


def _outputs(root: Path) -> dict[str, bytes]:
    files = [f for folder in ("imagesTr", "labelsTr", "synthesisedTr") for f in sorted((root / folder).glob("*"))]
    return {f.relative_to(root).as_posix(): f.read_bytes() for f in files} | {
        name: (root / name).read_bytes() for name in ("dataset.json", "datalist.json")}


def test_nnunet_and_monai_layouts(serial, cohort):
    dataset = json.loads((serial / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "MR"}
    assert dataset["file_ending"] == ".nii.gz"
    assert dataset["numTraining"] == 6
    assert dataset["labels"] == {"background": 0, "label_1": 1, "synthetic_lesion": 2}  # after the existing id
    assert sorted(dataset["labels"].values()) == list(range(len(dataset["labels"])))  # nnU-Net: consecutive ids
    # nnU-Net v2 pairs files by case id: imagesTr/CASE_0000<ending>, labelsTr/CASE<ending>
    ending = dataset["file_ending"]
    cases = sorted(p.name[: -len(ending)] for p in (serial / "labelsTr").iterdir())
    assert len(cases) == 6
    assert sorted(p.name for p in (serial / "imagesTr").iterdir()) == [f"{c}_0000{ending}" for c in cases]
    declared = set(dataset["labels"].values())
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(str(serial / "datalist.json"), True, "training")
    assert len(items) == 6
    for item in items:
        image, label = read_volume(item["image"]), read_volume(item["label"])
        assert image.same_grid(label)
        assert set(np.unique(label.array).tolist()) <= declared
        notes = sitk.ReadImage(item["image"]).GetMetaData("descrip")
        assert notes.startswith("SYNTHETIC LESIONS (MedSynth)")
    assert not (serial / ".partial").exists()


def test_manifest_rows_record_provenance(serial, cohort):
    import csv

    rows = list(csv.DictReader(open(serial / "manifest.csv")))
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    for row in rows:
        source_sha = file_sha256(row["source"])
        assert row["source_sha256"] == source_sha
        assert int(row["seed"]) == derive_seed(SEED, source_sha, int(row["variant"]))
        assert file_sha256(serial / row["image"]) == row["image_sha256"]
        specs, volumes = json.loads(row["specs"]), json.loads(row["lesion_ml"])
        assert len(specs) == len(volumes) == 1 and volumes[0] > 0 and specs[0]["diameter_mm"] == 6.0
        assert float(row["seconds"]) > 0
    assert len({r["seed"] for r in rows}) == 6


def test_labels_are_exact_and_annotations_kept(serial, cohort):
    import csv

    for row in csv.DictReader(open(serial / "manifest.csv")):
        source = read_volume(row["source"])
        existing = read_volume(row["source_label"]) if row["source_label"] else None
        again = insert_lesions(source, count=1, preset=row["preset"], region="auto", seed=int(row["seed"]),
                               size_mm=6.0, labels=existing)
        image, label = read_volume(serial / row["image"]), read_volume(serial / row["label"])
        assert image.same_grid(source) and image.array.dtype == source.array.dtype
        assert np.array_equal(image.array, again.volume.array)
        lesion = np.isin(again.labels.array, (1, 2))
        assert lesion.any()
        assert np.array_equal(label.array == 2, lesion)  # the synthetic id exactly on the lesion
        changed = image.array != source.array
        synthetic = read_volume(serial / row["synthetic_mask"])  # what the lesions changed, for annotators
        assert synthetic.same_grid(source) and file_sha256(serial / row["synthetic_mask"]) == row["synthetic_mask_sha256"]
        assert (synthetic.array[changed | lesion] == 2).all() and set(np.unique(synthetic.array)) <= {0, 2}
        assert changed[lesion].mean() > 0.9  # the lesion changed the voxels it labels ...
        box = again.report["lesions"][0]["region_of_influence"]["bbox_ijk"]
        (i0, i1), (j0, j1), (k0, k1) = box
        outside = np.ones(changed.shape, bool)
        outside[k0:k1, j0:j1, i0:i1] = False
        assert not changed[outside].any()  # ... and nothing outside its region of influence
        if existing is not None:
            kept = again.moved_labels.array
            assert np.array_equal(label.array[~lesion], kept[~lesion])
            assert (label.array == 1).sum() > 0.8 * (existing.array == 1).sum()
        else:
            assert set(np.unique(label.array[~lesion]).tolist()) == {0}


def test_rerun_rewrites_nothing(serial, cohort):
    def stamps():
        return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in serial.rglob("*") if p.is_file()}

    before = stamps()
    result = augment(cohort / "cohort.csv", serial, variants=2, seed=SEED, lesion=OPTIONS)
    assert (result.written, result.skipped, result.failed) == (0, 6, [])
    assert stamps() == before


def test_interrupted_then_resumed_gives_the_same_bytes(serial, cohort, tmp_path):
    out = tmp_path / "dataset"
    token = CancelToken()

    def progress(fraction, message):
        if message.startswith("2 of"):
            token.cancel()

    with pytest.raises(Cancelled):
        augment(cohort / "cohort.csv", out, variants=2, seed=SEED, lesion=OPTIONS, progress=progress, cancel=token)
    assert len(list((out / "imagesTr").iterdir())) == len(list((out / "labelsTr").iterdir())) == 2
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2  # only complete outputs listed
    # what a kill -9 in the middle of a write would leave: a temporary file and a torn output without a row
    (out / ".partial").mkdir()
    (out / ".partial" / "scan2_v002_0000.1234.nii.gz").write_bytes(b"torn")
    (out / "imagesTr" / "scan2_v002_0000.nii.gz").write_bytes(b"torn")
    result = augment(cohort / "cohort.csv", out, variants=2, seed=SEED, lesion=OPTIONS)
    assert (result.written, result.skipped) == (4, 2)
    assert _outputs(out) == _outputs(serial)
    assert not (out / ".partial").exists()


def test_jobs_2_cancelled_keeps_a_row_for_every_file_then_resumes(serial, cohort, tmp_path):
    out, token = tmp_path / "dataset", CancelToken()
    with pytest.raises(Cancelled):
        augment(cohort / "cohort.csv", out, variants=2, seed=SEED, lesion=OPTIONS, jobs=2, cancel=token,
                progress=lambda fraction, message: token.cancel())
    rows = json.loads((out / "dataset.json").read_text())["numTraining"]
    assert rows >= 1  # how many finished depends on timing: outputs in flight finish, and are listed
    assert len(list((out / "imagesTr").iterdir())) == len(list((out / "labelsTr").iterdir())) == rows
    augment(cohort / "cohort.csv", out, variants=2, seed=SEED, lesion=OPTIONS, jobs=2)
    assert _outputs(out) == _outputs(serial)


def test_jobs_2_gives_the_same_bytes_as_serial(serial, cohort, tmp_path):
    result = augment(cohort / "cohort.csv", tmp_path / "dataset", variants=2, seed=SEED, lesion=OPTIONS, jobs=2)
    assert result.written == 6 and not result.failed
    assert _outputs(tmp_path / "dataset") == _outputs(serial)


def test_local_dask_cluster_gives_the_same_bytes_as_serial(serial, cohort, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = augment(cohort / "cohort.csv", tmp_path / "dataset", variants=2, seed=SEED, lesion=OPTIONS,
                         scheduler=cluster.scheduler_address)
        again = augment(cohort / "cohort.csv", tmp_path / "again" / "dataset", variants=1, seed=SEED, lesion=OPTIONS,
                        scheduler=cluster)  # a cluster object, as dask-jobqueue's SLURMCluster in the README
    assert result.written == 6 and not result.failed
    assert _outputs(tmp_path / "dataset") == _outputs(serial)
    assert again.written == 3
    for name, data in _outputs(tmp_path / "again" / "dataset").items():
        if name.endswith(".nii.gz"):
            assert data == _outputs(serial)[name]


def test_scheduler_without_dask_says_how_to_install(cohort, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as when not installed
    code = main(["-q", "augment", str(cohort / "cohort.csv"), str(tmp_path / "d"), "--scheduler", "tcp://x:8786"])
    message = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'medsynth[distributed]'" in message and "\n" not in message
    assert not (tmp_path / "d").exists()  # refused before anything was written


@pytest.fixture
def bad_manifest(cohort, tmp_path) -> Path:
    ct = tmp_path / "chest.nii.gz"
    write_volume(ct_chest((24, 48, 48)), ct)
    mr = read_volume(cohort / "scans" / "scan0.nii.gz")
    small = tmp_path / "small_label.nii.gz"
    write_volume(Volume_like(mr, (16, 20, 20)), small)
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(flat))
    rows = ["image,label,region,preset",
            f"{cohort / 'scans' / 'scan0.nii.gz'},,,",
            f"{tmp_path / 'missing.nii.gz'},,,",
            f"{cohort / 'scans' / 'scan1.nii.gz'},{small},,",
            f"{cohort / 'scans' / 'scan2.nii.gz'},,,ct-nodule-solid",
            f"{flat},,,"]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def Volume_like(volume, shape):
    from MedSynthLib.volume import Volume

    return Volume(np.zeros(shape, np.uint8), volume.ijk_to_ras)


def test_bad_rows_are_reported_per_case_and_the_rest_goes_on(bad_manifest, tmp_path, capsys):
    out = tmp_path / "d"
    code = main(["-q", "augment", str(bad_manifest), str(out), "--size", "6", "--seed", str(SEED)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 4
    assert "file not found" in lines[0] or any("file not found" in line for line in lines)
    text = "\n".join(lines)
    assert "another grid" in text and "for CT" in text and "2D image" in text
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["numTraining"] == 1
    assert [p.name for p in (out / "imagesTr").iterdir()] == ["scan0_v001_0000.nii.gz"]
    assert len(list((out / "labelsTr").iterdir())) == 1
    import csv

    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert sorted(r["status"] for r in rows) == ["failed"] * 4 + ["ok"]
    assert all(r["error"] for r in rows if r["status"] == "failed")


def test_strict_stops_at_the_first_bad_case(bad_manifest, tmp_path):
    with pytest.raises(InputError, match="file not found.*--strict"):
        augment(bad_manifest, tmp_path / "d", seed=SEED, lesion=OPTIONS, strict=True)


def test_a_folder_holding_another_dataset_is_refused_before_starting(serial, cohort, tmp_path, capsys):
    other = tmp_path / "Dataset001_Other"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                                    "numTraining": 0, "file_ending": ".nii.gz"}))
    code = main(["-q", "augment", str(cohort / "cohort.csv"), str(other)])
    assert code == 2 and "holds another dataset" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["dataset.json"]
    before = {p: p.stat().st_mtime_ns for p in serial.rglob("*")}
    with pytest.raises(InputError, match="other options \\(seed\\)"):
        augment(cohort / "cohort.csv", serial, variants=2, seed=SEED + 1, lesion=OPTIONS)
    assert {p: p.stat().st_mtime_ns for p in serial.rglob("*")} == before


def test_inputs_folder_glob_manifest_and_seeds(cohort, tmp_path):
    folder = read_cases(cohort / "scans")
    assert [c.name for c in folder] == ["scan0", "scan1", "scan2"]
    assert read_cases(str(cohort / "scans" / "*.nii.gz")) == folder
    manifest = read_cases(cohort / "cohort.csv")
    assert [c.label for c in manifest][1].endswith("labels/scan1.nii.gz") and manifest[0].label is None
    plain = tmp_path / "plain.csv"
    plain.write_text(f"{cohort / 'scans' / 'scan0.nii.gz'}\n{tmp_path / 'b' / 'scan0.nii.gz'}\n")
    names = [c.name for c in read_cases(plain)]
    assert len(set(names)) == 2 and all(n.startswith("scan0-") for n in names)  # same stem: made unique
    copy = tmp_path / "renamed.nii.gz"
    shutil.copy(cohort / "scans" / "scan0.nii.gz", copy)
    assert derive_seed(1, file_sha256(copy), 1) == derive_seed(1, file_sha256(cohort / "scans" / "scan0.nii.gz"), 1)
    assert derive_seed(1, file_sha256(copy), 1) != derive_seed(1, file_sha256(copy), 2)
    with pytest.raises(InputError, match="not a folder, a glob pattern or a .csv"):
        read_cases(tmp_path / "nothing")


def test_cli_writes_a_dataset_and_shares_the_lesion_options(cohort, tmp_path):
    code = main(["-q", "augment", str(cohort / "scans"), str(tmp_path / "d"), "--variants", "1", "--size", "6",
                 "--preset", "mr-metastasis", "--lesion-label", "5", "--oedema-label", "6"])
    assert code == 0
    labels = json.loads((tmp_path / "d" / "dataset.json").read_text())["labels"]
    assert labels["synthetic_lesion"] == 5 and labels["synthetic_oedema"] == 6
    found = set()
    for path in (tmp_path / "d" / "labelsTr").iterdir():
        found |= set(np.unique(read_volume(path).array).tolist())
    assert found == {0, 5, 6}  # the metastasis preset draws oedema
    subcommands = build_parser()._subparsers._group_actions[0].choices
    options = {name: {o for a in subcommands[name]._actions for o in a.option_strings} for name in ("lesion", "augment")}
    shared = {"--preset", "--count", "--region", "--size", "--contrast", "--seed", "--min-spacing", "--modality",
              "--shape-model", "--appearance-model", "--appearance-steps", "--device"}
    assert shared <= options["lesion"] and shared <= options["augment"]


# ---- the options: the library's LesionOptions inside one AugmentOptions --------------------------------
def test_default_fingerprint_is_unchanged_so_existing_datasets_resume():
    """The fingerprint that dataset.json records (and a rerun compares) is what it was before AugmentOptions."""
    from MedSynthLib.augment import AugmentOptions

    options = AugmentOptions.build(seed=SEED, lesion=OPTIONS, lesion_label=1)
    expected = {"format": "medsynth-augment-1", "seed": 3, "preset": "auto", "count": 1, "size_mm": 6.0,
                "contrast": None, "region": "auto", "min_spacing_mm": 5.0, "modality": None, "shape_model": None,
                "appearance_model": None, "appearance_steps": 20, "lesion_label": 1, "oedema_label": None}
    fingerprint = options.fingerprint()
    assert fingerprint == expected and list(fingerprint) == list(expected)  # dataset.json keeps its bytes
    from MedSynthLib.tasks.lesion import LesionOptions

    given = AugmentOptions.build(seed=SEED, lesion=LesionOptions(count=1, preset="auto", size_mm=6), lesion_label=1)
    assert given.fingerprint() == expected  # an object without a region: the automatic one, said so


def test_every_lesion_option_is_in_the_fingerprint_or_fixed_for_a_cohort():
    """A new LesionOptions field must decide whether it changes the bytes (fingerprint) or is refused/fixed."""
    from dataclasses import fields

    from MedSynthLib.augment._options import _FINGERPRINT_LESION
    from MedSynthLib.tasks.lesion import LesionOptions

    fixed = {"device", "seed", "label_mode", "specs", "centres", "region_mask", "labels"}
    assert {f.name for f in fields(LesionOptions)} == set(_FINGERPRINT_LESION) | fixed


@pytest.mark.parametrize("knobs, message", [
    ({"lesion": {"size_m": 6}}, "unknown option 'size_m'; the options are preset"),
    ({"lesion": {"size_mm": 1000}}, "size mm must be a number in [0.5, 300], got 1000"),
    ({"lesion": {"oedema_label": 7}}, "oedema_label is an option of augment itself"),
    ({"lesion": {"specs": [{"diameter_mm": 5}]}}, "give count, not specs or centres"),
    ({"lesion": {"label_mode": "instances"}}, "label_mode must be classes"),
    ({"lesion": {"seed": 4}}, "give seed to augment"),
    ({"variants": 0}, "variants must be a number in [1, 10000], got 0"),
    ({"lesion_label": 4, "oedema_label": 4}, "the oedema label must differ"),
    ({"jobs": 2, "job": 3}, "unknown option 'job'"),
])
def test_bad_options_are_refused_before_anything_is_written(cohort, tmp_path, knobs, message):
    with pytest.raises(InputError) as caught:
        augment(cohort / "cohort.csv", tmp_path / "d", **knobs)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "d").exists()


def test_options_object_and_keywords_are_one_run(cohort, serial, tmp_path):
    from MedSynthLib.augment import AugmentOptions

    options = AugmentOptions.build(variants=2, seed=SEED, lesion=OPTIONS)
    result = augment(cohort / "cohort.csv", tmp_path / "dataset", options)
    assert result.written == 6 and _outputs(tmp_path / "dataset") == _outputs(serial)
