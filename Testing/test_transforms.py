"""``RandSyntheticLesiond``: deterministic through a DataLoader with workers, exact labels, geometry from the meta."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_lesion import mr_head

from MedSynthLib.tasks.lesion import insert_lesions
from MedSynthLib.transforms import META_KEY, RandSyntheticLesiond
from MedSynthLib.volume import Volume

monai = pytest.importorskip("monai")
from monai.data import DataLoader, Dataset, MetaTensor  # noqa: E402
from monai.utils import set_determinism  # noqa: E402

SHAPE = (32, 40, 40)  # k, j, i


def _sample(seed: int, *, lps: bool = False) -> dict:
    volume = mr_head(SHAPE, seed=seed)
    annotation = np.zeros(SHAPE, np.float32)
    annotation[4:8, 6:12, 6:12] = 1  # an existing label in a corner, to be kept
    affine = volume.ijk_to_ras.copy()
    meta = {"space": "RAS"}
    if lps:
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        meta = {"space": "LPS"}

    def tensor(kji):
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(kji.transpose(2, 1, 0))[None]),
                          affine=torch.from_numpy(affine), meta=dict(meta))

    return {"image": tensor(volume.array), "label": tensor(annotation)}


def _kji(tensor) -> np.ndarray:
    """The tensor's (x, y, z) channel in MedSynth's (k, j, i) order."""
    return np.asarray(tensor)[0].transpose(2, 1, 0)


def _as_volume(tensor) -> Volume:
    """The volume the transform works on: the same voxels and RAS geometry, MedSynth's array order."""
    return Volume(_kji(tensor), np.asarray(tensor.affine))


def _transform(**kwargs) -> RandSyntheticLesiond:
    return RandSyntheticLesiond(keys=("image", "label"), **{"preset": "mr-metastasis", "prob": 1.0, "count": 1,
                                                             "size_mm": 6.0, **kwargs})


def test_labels_exact_and_meta_records_what_was_done():
    sample = _sample(0)
    transform = _transform()
    transform.set_random_state(seed=4)
    out = transform(sample)
    record = json.loads(out["image"].meta[META_KEY])
    assert record["applied"] and len(record["specs"]) == 1 and record["volumes_ml"][0] > 0
    assert json.loads(out["label"].meta[META_KEY]) == record
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)  # (x, y, z) read as (k, j, i)
    source = Volume(np.asarray(sample["image"])[0], np.asarray(sample["image"].affine) @ swap)
    existing = Volume(np.asarray(sample["label"])[0], source.ijk_to_ras)
    from MedSynthLib.transforms import _coarse_auto_region  # "auto": found at half resolution, then placed

    region = _coarse_auto_region(source, transform.options)
    assert region is not None and region.shape == source.array.shape
    again = insert_lesions(source, count=1, preset="mr-metastasis", seed=record["seed"], size_mm=6.0,
                           region=region, min_spacing_mm=2.0, labels=existing)
    assert np.array_equal(np.asarray(out["image"])[0], again.volume.array)
    lesion = np.isin(again.labels.array, (1, 2))
    label = np.asarray(out["label"])[0]
    assert np.array_equal(label[lesion], np.ones(lesion.sum()))
    assert np.array_equal(label[~lesion], again.moved_labels.array[~lesion])  # existing label kept
    assert _kji(out["label"])[4:8, 6:12, 6:12].mean() > 0.9
    # the same lesion in MedSynth's own array order: same place and size (RAS), within a voxel
    centre = np.asarray(record["specs"][0]["centre_ras"])
    assert _as_volume(out["label"]).array[tuple(np.rint(_as_volume(out["label"]).ras_points_to_ijk(centre)[::-1]).astype(int))] == 1
    assert out["image"].dtype == sample["image"].dtype and torch.equal(out["image"].affine, sample["image"].affine)
    assert record["specs"][0]["centre_ras"] == [float(x) for x in again.specs[0].centre_ras]


def test_mm_and_ras_come_from_the_meta_affine():
    ras, lps = _sample(1), _sample(1, lps=True)
    results = []
    for sample in (ras, lps):
        transform = _transform()
        transform.set_random_state(seed=9)
        results.append(transform(sample))
    assert torch.equal(results[0]["image"], results[1]["image"])  # LPS meta converted, same lesion in the same place
    record = json.loads(results[0]["image"].meta[META_KEY])
    requested = np.pi / 6 * 6.0**3 / 1000
    assert abs(record["volumes_ml"][0] - requested) < 0.15 * requested  # mm on the anisotropic oblique grid
    # the centre is in RAS: the affine maps it onto a voxel labelled as lesion
    centre = np.asarray(record["specs"][0]["centre_ras"])
    ijk = np.rint(np.linalg.solve(np.asarray(ras["image"].affine), np.append(centre, 1.0))[:3]).astype(int)
    assert float(results[0]["label"][0, ijk[0], ijk[1], ijk[2]]) == 1.0
    plain = {"image": ras["image"].as_tensor(), "label": ras["label"].as_tensor()}  # no meta: 1 mm voxels
    transform = _transform()
    transform.set_random_state(seed=9)
    assert not torch.equal(transform(plain)["image"], results[0]["image"].as_tensor())


def test_prob_zero_and_mask_key():
    sample = _sample(2)
    out = _transform(prob=0.0)(sample)
    assert torch.equal(out["image"], sample["image"]) and torch.equal(out["label"], sample["label"])
    assert json.loads(out["image"].meta[META_KEY])["applied"] is False
    transform = _transform(mask_key="synthetic")
    transform.set_random_state(seed=1)
    out = transform(sample)
    assert set(np.unique(_kji(out["label"])).tolist()) == {0.0, 1.0}
    assert out["synthetic"].dtype == torch.uint8 and int(out["synthetic"].sum()) > 0
    assert torch.equal(out["synthetic"].affine, sample["image"].affine)
    assert not (_kji(out["synthetic"]).astype(bool) & (_kji(sample["label"]) > 0)).any()


def _batches(seed: int) -> list:
    set_determinism(seed=seed)
    data = [_sample(i) for i in range(4)]
    loader = DataLoader(Dataset(data, transform=_transform(prob=0.75)), batch_size=2, num_workers=2)
    return [(b["image"].as_tensor().clone(), b["label"].as_tensor().clone(), list(b["image"].meta[META_KEY]))
            for b in loader]


def test_same_batches_for_the_same_seed_through_a_dataloader_with_workers():
    first, second, other = _batches(0), _batches(0), _batches(1)
    set_determinism(seed=None)
    assert len(first) == 2
    for a, b in zip(first, second):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert any(not torch.equal(a[0], c[0]) for a, c in zip(first, other))
    assert any(json.loads(text)["applied"] for batch in first for text in batch[2])


def test_cost_bounded_by_a_window_nothing_outside_it_changes():
    volume = mr_head((96, 96, 96), seed=3)
    affine = torch.from_numpy(volume.ijk_to_ras)
    xyz = torch.from_numpy(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))[None]
    wm = (volume.array > 800)
    sample = {"image": MetaTensor(xyz, affine=affine), "label": MetaTensor(torch.zeros_like(xyz), affine=affine),
              "wm": MetaTensor(torch.from_numpy(np.ascontiguousarray(wm.transpose(2, 1, 0)))[None], affine=affine)}
    transform = _transform(region="wm")
    transform.set_random_state(seed=2)
    out = transform(sample)
    record = json.loads(out["image"].meta[META_KEY])
    (x0, x1), (y0, y1), (z0, z1) = record["window_xyz"]
    assert [x1 - x0, y1 - y0, z1 - z0] == [48, 48, 48]
    window = (slice(x0, x1), slice(y0, y1), slice(z0, z1))
    source, wm_xyz = np.asarray(xyz)[0], wm.transpose(2, 1, 0)
    changed = np.asarray(out["image"])[0] != source
    outside = np.ones(changed.shape, bool)
    outside[window] = False
    assert changed.any() and not changed[outside].any()
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    matrix = volume.ijk_to_ras @ swap
    matrix[:3, 3] = volume.ijk_points_to_ras([x0, y0, z0])
    crop = Volume(source[window], matrix)
    again = insert_lesions(crop, count=1, preset="mr-metastasis", seed=record["seed"], size_mm=6.0,
                           region=wm_xyz[window], min_spacing_mm=2.0,
                           labels=Volume(np.zeros(crop.array.shape, np.float32), matrix))
    label = np.asarray(out["label"])[0]
    assert np.array_equal(label[window] == 1, np.isin(again.labels.array, (1, 2)))
    assert not label[outside].any()
    assert wm[tuple(np.rint(volume.ras_points_to_ijk(again.specs[0].centre_ras)[::-1]).astype(int))]


@pytest.mark.parametrize("knobs", [{"size_mm": 1000.0}, {"preset": "mr-nothing"}, {"count": 0}, {"sizemm": 3.0},
                                   {"modality": "PET"}])
def test_bad_options_raise_at_construction_with_augments_refusal(tmp_path, knobs):
    """The transform builds the same LesionOptions as insert_lesions and augment: the same value, the same words."""
    from MedSynthLib.augment import augment
    from MedSynthLib.errors import InputError

    with pytest.raises(InputError) as transform_error:
        RandSyntheticLesiond(keys=("image", "label"), prob=1.0, **knobs)
    with pytest.raises(InputError) as augment_error:
        augment(tmp_path / "nothing", tmp_path / "d", lesion=knobs)
    assert str(transform_error.value) == str(augment_error.value)
    with pytest.raises(InputError, match="give count, not specs or centres"):
        RandSyntheticLesiond(keys=("image", "label"), centres=[(0, 0, 0)])


def test_options_object_is_carried_as_given():
    from MedSynthLib.tasks.lesion import LesionOptions

    options = LesionOptions(count=2, preset="mr-wmh", min_spacing_mm=3.0)
    assert RandSyntheticLesiond(keys=("image", "label"), options=options).options is options
    assert RandSyntheticLesiond(keys=("image", "label"), options=options, size_mm=6.0).options == options.replace(size_mm=6.0)
    defaults = RandSyntheticLesiond(keys=("image", "label")).options
    assert (defaults.count, defaults.min_spacing_mm, defaults.preset) == (1, 2.0, None)
