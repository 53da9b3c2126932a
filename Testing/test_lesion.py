"""Synthetic lesions: the guarantees of issue #5, each tested on oblique, anisotropic phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_phantom, oblique_matrix
from scipy import ndimage

from MedSynthLib.errors import Cancelled, InputError
from MedSynthLib.progress import CancelToken
from MedSynthLib.tasks.lesion import contrast_error, contrast_of, noise_ratio, shell_mask
from MedSynthLib.tasks.lesion import PRESETS, LesionSpec, insert_lesions, list_presets
from MedSynthLib.volume import Volume

SPACING = (0.9, 1.0, 1.6)  # i, j, k mm


def mr_head(shape=(36, 72, 72), *, seed=0, noise=20.0, dtype=np.float32) -> Volume:
    """An MR-like head on an oblique grid: air 0, 'grey' 600 shell, 'white' 900 core, Gaussian noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((i / 0.9) ** 2 + (j / 0.9) ** 2 + (k / 0.95) ** 2)
    image = np.where(r < 0.95, 600.0, 0.0) + np.where(r < 0.75, 300.0, 0.0)
    image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, noise, shape)
    image = np.clip(image, 0, None)
    if np.dtype(dtype).kind in "iu":
        image = np.rint(image)
    return Volume(image.astype(dtype), oblique_matrix(spacing=SPACING))


def ct_chest(shape=(40, 80, 80), *, seed=0) -> Volume:
    """A CT-like chest (int16 HU): air -1000 outside, soft tissue 50 HU body, two lungs at -850, noise 12 HU."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (i / 0.95) ** 2 + (j / 0.8) ** 2 < 1
    lungs = ((((i - 0.42) / 0.33) ** 2 + (j / 0.55) ** 2 < 1) | (((i + 0.42) / 0.33) ** 2 + (j / 0.55) ** 2 < 1))
    lungs &= k > -0.1  # the lower part of the body is a solid 'abdomen' (liver-like soft tissue)
    image = np.where(body, 50.0, -1000.0)
    image[lungs] = -850.0
    image = ndimage.gaussian_filter(image, 0.7) + rng.normal(0, 12, shape)
    return Volume(np.rint(image).astype(np.int16), oblique_matrix(spacing=(0.8, 0.8, 2.0)))


def _centre(volume: Volume, fraction=(0.5, 0.5, 0.5)) -> tuple:
    size = np.array(volume.shape_ijk) - 1
    return tuple(float(x) for x in volume.ijk_points_to_ras(size * np.asarray(fraction)))


def _lungs_mask(volume: Volume) -> np.ndarray:
    return ndimage.binary_erosion(volume.array < -500, iterations=1) & ndimage.binary_fill_holes(volume.array > -950)


@pytest.fixture(scope="module")
def head() -> Volume:
    return mr_head()


@pytest.fixture(scope="module")
def chest() -> Volume:
    return ct_chest()


# ---- reproducibility, locality, geometry ------------------------------------------------------------
def test_same_seed_is_bit_identical_and_seed_matters(head):
    region = Volume((head.array > 800).astype(np.uint8), head.ijk_to_ras)
    first = insert_lesions(head, count=2, preset="mr-metastasis", region=region, seed=5, size_mm=6.0)
    second = insert_lesions(head, count=2, preset="mr-metastasis", region=region, seed=5, size_mm=6.0)
    other = insert_lesions(head, count=2, preset="mr-metastasis", region=region, seed=6, size_mm=6.0)
    assert np.array_equal(first.volume.array, second.volume.array)
    assert np.array_equal(first.labels.array, second.labels.array)
    assert first.specs == second.specs
    assert not np.array_equal(first.volume.array, other.volume.array)
    # the resolved specs alone reproduce the run, bit for bit
    again = insert_lesions(head, specs=first.specs, region=region, seed=123)
    assert np.array_equal(again.volume.array, first.volume.array)
    assert np.array_equal(again.labels.array, first.labels.array)


def test_nothing_outside_the_region_of_influence_changes(head):
    spec = LesionSpec(centre_ras=_centre(head), diameter_mm=16, shape="lobulated", contrast=0.5, core_fraction=0.5,
                      core_contrast=-0.4, oedema_mm=4, oedema_contrast=-0.1, mass_effect_mm=2.5)
    result = insert_lesions(head, specs=[spec])
    roi = result.report["lesions"][0]["region_of_influence"]
    changed = result.volume.array != head.array
    assert changed.any()
    idx = np.argwhere(changed)[:, ::-1].astype(float)  # i, j, k
    distance = np.linalg.norm(head.ijk_points_to_ras(idx) - np.asarray(roi["centre_ras"]), axis=1)
    assert distance.max() <= roi["radius_mm"] + 1e-6
    (i0, i1), (j0, j1), (k0, k1) = roi["bbox_ijk"]
    outside = np.ones(head.array.shape, bool)
    outside[k0:k1, j0:j1, i0:i1] = False
    assert not changed[outside].any()
    assert not (result.labels.array[outside] > 0).any()


def test_geometry_dtype_and_input_kept():
    volume = mr_head(dtype=np.int16)
    before = volume.array.copy()
    result = insert_lesions(volume, specs=[LesionSpec(centre_ras=_centre(volume), diameter_mm=10, contrast=0.5)])
    assert result.volume.array.dtype == np.int16
    assert result.labels.array.dtype == np.uint8
    for out in (result.volume, result.labels):
        assert np.allclose(out.ijk_to_ras, volume.ijk_to_ras)
        assert out.array.shape == volume.array.shape
    assert np.array_equal(volume.array, before)


def test_cancel_raises_and_leaves_input(head):
    token = CancelToken()
    token.cancel()
    before = head.array.copy()
    with pytest.raises(Cancelled):
        insert_lesions(head, specs=[LesionSpec(centre_ras=_centre(head), diameter_mm=8)], cancel=token)
    assert np.array_equal(head.array, before)


def test_progress_is_reported(head):
    seen = []
    insert_lesions(head, specs=[LesionSpec(centre_ras=_centre(head), diameter_mm=8)], progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


# ---- the ground truth ---------------------------------------------------------------------------------
def test_label_marks_exactly_the_voxels_at_least_half_occupied():
    """A sphere (irregularity 0, hard edge) on an oblique grid against an independent 10^3 supersampling."""
    volume = mr_head(shape=(24, 48, 48))
    centre = np.asarray(_centre(volume)) + 0.3
    result = insert_lesions(volume, specs=[LesionSpec(centre_ras=tuple(centre), diameter_mm=11, irregularity=0.0,
                                                      edge_width_mm=0.0, contrast=0.5)])
    radius = result.report["lesions"][0]["shape_scale_mm"]
    n = 10
    offsets = (np.arange(n) + 0.5) / n - 0.5
    sub = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
    k, j, i = np.meshgrid(*[np.arange(s) for s in volume.array.shape], indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(float)
    near = np.abs(np.linalg.norm(volume.ijk_points_to_ras(ijk) - centre, axis=1) - radius) < 3.0
    occupancy = (np.linalg.norm(volume.ijk_points_to_ras(ijk) - centre, axis=1) < radius).astype(float)
    points = volume.ijk_points_to_ras((ijk[near][:, None, :] + sub[None]).reshape(-1, 3))
    occupancy[near] = (np.linalg.norm(points - centre, axis=1) < radius).reshape(-1, n**3).mean(axis=1)
    label = (result.labels.array > 0).ravel()
    decided = np.abs(occupancy - 0.5) > 0.06  # the two samplings may disagree only right at one half
    assert np.array_equal(label[decided], occupancy[decided] >= 0.5)
    assert label.sum() > 100


@pytest.mark.parametrize("shape", ["round", "lobulated", "irregular", "infiltrative"])
@pytest.mark.parametrize("diameter", [6.0, 14.0])
def test_volume_within_15_percent_and_centre_within_a_voxel(shape, diameter):
    volume = mr_head(shape=(30, 60, 60), dtype=np.int16)
    centre = _centre(volume, (0.45, 0.55, 0.5))
    result = insert_lesions(volume, specs=[LesionSpec(centre_ras=centre, diameter_mm=diameter, shape=shape,
                                                      contrast=0.4, seed=3)])
    lesion = result.report["lesions"][0]
    voxel_ml = np.prod(volume.spacing) / 1000
    measured = np.count_nonzero(result.labels.array) * voxel_ml
    requested = np.pi / 6 * diameter**3 / 1000
    assert abs(measured - requested) / requested < 0.15
    assert lesion["volume_ml"] == pytest.approx(measured, abs=1e-4)
    # the lesion's centroid is the requested centre, whatever the shape's asymmetry
    idx = np.argwhere(result.labels.array > 0)[:, ::-1].mean(axis=0)
    assert np.linalg.norm(volume.ijk_points_to_ras(idx) - np.asarray(centre)) <= max(volume.spacing)


def test_centres_within_one_voxel_on_an_oblique_volume(oblique_volume):
    big = make_phantom((24, 60, 64), seed=2)
    assert np.allclose(big.ijk_to_ras, oblique_volume.ijk_to_ras)  # the conftest oblique grid
    points = [_centre(big, (0.4, 0.5, 0.5)), _centre(big, (0.62, 0.45, 0.55))]
    result = insert_lesions(
        big, specs=[LesionSpec(centre_ras=p, diameter_mm=8.0, irregularity=0.0, contrast=0.5) for p in points],
        label_mode="instances")
    voxel = max(big.spacing)
    for number, point in enumerate(points, start=1):
        idx = np.argwhere(result.labels.array == number)[:, ::-1].mean(axis=0)
        assert np.linalg.norm(big.ijk_points_to_ras(idx) - np.asarray(point)) <= voxel


# ---- intensities ------------------------------------------------------------------------------------
def _independent_checks(before: Volume, result, number=1):
    """Contrast and noise measured from the output volumes and labels alone."""
    spacing_kji = tuple(before.spacing_along(a) for a in range(3))
    spec = result.specs[number - 1]
    labels = result.labels.array
    lesion = labels == 1 if spec.core_fraction == 0 else (labels == 1)
    shell = shell_mask((labels == 1) | (labels == 2) | (labels == 3), spacing_kji)
    background = float(before.array[shell].astype(float).mean())
    measured = contrast_of(spec.contrast_mode, float(result.volume.array[lesion].astype(float).mean()), background)
    error = contrast_error(spec.contrast_mode, spec.contrast, measured, background)
    _, _, ratio = noise_ratio(result.volume.array, [lesion], shell, before=before.array, spacing_kji=spacing_kji)
    return error, ratio


@pytest.mark.parametrize("contrast", [0.35, -0.3, 1.0])
def test_relative_contrast_within_10_percent_and_noise_matched(contrast):
    volume = mr_head(dtype=np.int16, noise=25.0)
    spec = LesionSpec(centre_ras=_centre(volume), diameter_mm=16, contrast=contrast, heterogeneity=0.1, edge_width_mm=1.0)
    result = insert_lesions(volume, specs=[spec], region=Volume((volume.array > 800).astype(np.uint8), volume.ijk_to_ras))
    entry = result.report["lesions"][0]
    assert entry["contrast_error"] < 0.10
    assert 0.75 <= entry["noise_ratio"] <= 1.25
    error, ratio = _independent_checks(volume, result)
    assert error < 0.10
    assert 0.75 <= ratio <= 1.25


def test_lesion_is_neither_smoother_nor_noisier_than_a_noisy_neighbourhood():
    """Noise 4x larger than the default phantom's: the lesion's own noise follows it."""
    for noise in (8.0, 60.0):
        volume = mr_head(noise=noise)
        result = insert_lesions(volume, specs=[LesionSpec(centre_ras=_centre(volume), diameter_mm=18, contrast=0.5)],
                                region=Volume((volume.array > 750).astype(np.uint8), volume.ijk_to_ras))
        _, ratio = _independent_checks(volume, result)
        assert 0.75 <= ratio <= 1.25, (noise, ratio)


def test_absolute_hu_nodule_in_lung(chest):
    lungs = Volume(_lungs_mask(chest).astype(np.uint8), chest.ijk_to_ras)
    result = insert_lesions(chest, count=1, preset="ct-nodule-solid", region=lungs, seed=4, size_mm=10, contrast=35)
    entry = result.report["lesions"][0]
    assert result.volume.array.dtype == np.int16
    lesion = result.labels.array == 1
    assert abs(float(result.volume.array[lesion].mean()) - 35.0) < 0.1 * abs(35.0 - entry["background_mean"])
    assert entry["contrast_error"] < 0.10 and 0.75 <= entry["noise_ratio"] <= 1.25
    assert np.all(lungs.array[lesion] > 0)  # the whole lesion inside the region


def test_values_clipped_to_the_valid_range():
    volume = mr_head(dtype=np.uint8, noise=3.0)  # uint8 saturates at 255
    volume = volume.with_array(np.clip(volume.array.astype(float) * 0.25, 0, 255).astype(np.uint8))
    result = insert_lesions(volume, specs=[LesionSpec(centre_ras=_centre(volume), diameter_mm=10, contrast=-0.9)])
    assert result.volume.array.dtype == np.uint8
    assert result.volume.array.min() >= 0


# ---- mass effect ------------------------------------------------------------------------------------
def test_mass_effect_is_fold_free_and_moves_labels(head):
    anatomy = Volume((head.array > 800).astype(np.uint8) + 2 * (np.arange(head.array.shape[2]) % 7 == 0), head.ijk_to_ras)
    spec = LesionSpec(centre_ras=_centre(head), diameter_mm=14, contrast=0.5, mass_effect_mm=3.0)
    result = insert_lesions(head, specs=[spec], labels=anatomy)
    entry = result.report["lesions"][0]
    assert entry["mass_effect"]["applied_mm"] > 0 and entry["mass_effect"]["min_jacobian"] > 0
    moved = result.moved_labels.array
    assert set(np.unique(moved)) <= set(np.unique(anatomy.array))  # nearest neighbour: no new values
    assert (moved != anatomy.array).any()
    # tissue was pushed outwards: the stripes of the anatomy label moved
    assert moved.dtype == anatomy.array.dtype
    no_push = insert_lesions(head, specs=[spec.__class__(**{**spec.as_dict(), "mass_effect_mm": 0.0})], labels=anatomy)
    assert np.array_equal(no_push.moved_labels.array, anatomy.array)


# ---- presets and placement ---------------------------------------------------------------------------
def test_list_presets_has_the_issue_families():
    names = {p["name"] for p in list_presets()}
    assert {"mr-wmh", "mr-enhancing-tumour", "mr-metastasis", "ct-nodule-solid", "ct-nodule-ground-glass",
            "ct-nodule-part-solid", "ct-liver-hypodense", "ct-haemorrhage"} <= names
    assert all(p["modality"] in ("CT", "MR") for p in list_presets())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_keeps_every_guarantee(name, head, chest):
    preset = PRESETS[name]
    if preset.modality == "MR":
        volume = head
        region = Volume((ndimage.binary_erosion(head.array > 500, iterations=2)).astype(np.uint8), head.ijk_to_ras)
    else:
        volume = chest
        mask = _lungs_mask(chest) if preset.region == "lung" else ndimage.binary_erosion(
            ndimage.gaussian_filter(chest.array.astype(float), 1.0) > -200, iterations=3)
        region = Volume(mask.astype(np.uint8), chest.ijk_to_ras)
    size = {"mr-enhancing-tumour": 12.0, "ct-haemorrhage": 10.0, "ct-liver-hypodense": 10.0}.get(name, 9.0)
    first = insert_lesions(volume, count=1, preset=name, region=region, seed=11, size_mm=size)
    second = insert_lesions(volume, count=1, preset=name, region=region, seed=11, size_mm=size)
    assert np.array_equal(first.volume.array, second.volume.array)
    entry = first.report["lesions"][0]
    assert abs(entry["volume_error"]) < 0.15
    assert entry["contrast_error"] < 0.10
    if entry["noise_ratio"] is not None:  # None (with a reason) when the lesion is too small to measure
        assert 0.75 <= entry["noise_ratio"] <= 1.25
    assert entry["centre_error_mm"] <= max(volume.spacing)
    assert first.volume.array.dtype == volume.array.dtype
    assert np.all(region.array[first.labels.array == 1] > 0)


def test_auto_regions_find_lungs_and_white_matter(head, chest):
    ct = insert_lesions(chest, count=2, preset="ct-nodule-solid", region="auto", seed=2, size_mm=6)
    lungs = _lungs_mask(chest)
    assert np.mean(lungs[ct.labels.array > 0]) > 0.95
    mr = insert_lesions(head, count=2, preset="mr-wmh", region="auto", seed=2, size_mm=5)
    assert np.mean(head.array[mr.labels.array == 0][:: 50] > 0) < 1  # sanity: labels exist
    assert np.all(ndimage.gaussian_filter(head.array.astype(float), 1)[mr.labels.array > 0] > 650)


def test_random_lesions_keep_their_spacing(head):
    region = Volume((head.array > 800).astype(np.uint8), head.ijk_to_ras)
    result = insert_lesions(head, count=3, preset="mr-wmh", region=region, seed=9, size_mm=5, min_spacing_mm=6,
                            label_mode="instances")
    centres = [np.asarray(s.centre_ras) for s in result.specs]
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.linalg.norm(centres[a] - centres[b]) >= 6
    assert set(np.unique(result.labels.array)) == {0, 1, 2, 3}


# ---- bad input -----------------------------------------------------------------------------------------
def test_bad_inputs_are_clear_errors(head, chest):
    region = Volume((head.array > 800).astype(np.uint8), head.ijk_to_ras)
    far = tuple(np.asarray(_centre(head)) + 500)
    cases = [
        (dict(specs=[LesionSpec(centre_ras=far, diameter_mm=8)]), "outside the volume"),
        (dict(specs=[LesionSpec(centre_ras=_centre(head, (0.15, 0.5, 0.5)), diameter_mm=4)], region=region),
         "outside the region"),
        (dict(count=1, region=region, size_mm=80), "widest inscribed"),
        (dict(count=1, preset="no-such-thing"), "preset must be one of auto, mr-wmh"),
        (dict(count=1, region=Volume(np.ones((5, 5, 5), np.uint8), np.eye(4))), "another grid"),
        (dict(count=40, region=region, size_mm=12, preset="mr-metastasis"), "cannot fit"),
        (dict(count=1, preset="ct-nodule-solid"), "Hounsfield"),
        (dict(specs=[LesionSpec(centre_ras=_centre(head), diameter_mm=-3)]), "diameter_mm"),
        (dict(specs=[{"centre_ras": _centre(head), "diameter": 5}]), "unknown lesion spec field"),
        (dict(specs=[LesionSpec(centre_ras=_centre(head, (0.02, 0.5, 0.5)), diameter_mm=20)]), "beyond the edge"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            insert_lesions(head, **kwargs)
    with pytest.raises(InputError, match="for MR"):
        insert_lesions(chest, count=1, preset="mr-wmh")
    with pytest.raises(InputError, match="exactly one"):
        insert_lesions(head, count=1, centres=[_centre(head)])


# ---- learned shapes (a lesion-shape VAE package) --------------------------------------------------------
class _BlobDecoder:
    """Stands in for a trained VAE: decodes a latent into an ellipsoid whose axes follow the latent."""

    def __init__(self):
        import torch

        self.torch = torch

    def decode(self, latents):
        torch = self.torch
        grid = torch.stack(torch.meshgrid(*[torch.arange(32.0) - 15.5] * 3, indexing="ij"))
        out = []
        for z in latents:
            a = 8 + 3 * torch.tanh(z[0].mean() * 8)
            b = 6 + 2 * torch.tanh(z[1].mean() * 8)
            r = torch.sqrt((grid[0] / a) ** 2 + (grid[1] / b) ** 2 + (grid[2] / 5) ** 2)
            out.append(10 * (1 - r)[None])
        return torch.stack(out)


class _FakePackage:
    network = _BlobDecoder()
    metadata = {"input": {"patch": 32, "voxel_mm": 1.0}, "builder_args": {"channels": [16, 32, 32], "latent_channels": 4}}


def test_learned_shapes_from_a_model_keep_the_guarantees(head):
    region = Volume((head.array > 800).astype(np.uint8), head.ijk_to_ras)
    result = insert_lesions(head, count=2, preset="mr-metastasis", region=region, seed=3, size_mm=8,
                            shape_model=_FakePackage())
    again = insert_lesions(head, count=2, preset="mr-metastasis", region=region, seed=3, size_mm=8,
                           shape_model=_FakePackage())
    assert np.array_equal(result.volume.array, again.volume.array)
    assert all(s.shape == "learned" for s in result.specs)
    for entry in result.report["lesions"]:
        assert abs(entry["volume_error"]) < 0.15 and entry["contrast_error"] < 0.10
    assert "learned" in result.report["method"]
    with pytest.raises(InputError, match="needs a lesion-shape model"):
        insert_lesions(head, specs=[LesionSpec(centre_ras=_centre(head), diameter_mm=8, shape="learned")])


def test_shape_model_package_is_loaded_and_checked(tmp_path, head):
    import torch

    from MedSynthLib.errors import ModelError
    from MedSynthLib.models import build_network, save_package

    args = {"channels": [8, 8], "latent_channels": 2, "norm_num_groups": 4}
    network = build_network("autoencoder_kl", **args)
    with torch.no_grad():  # an untrained decoder: bias its output so the decoded mask is a solid block
        last = [m for m in network.decoder.modules() if isinstance(m, torch.nn.Conv3d)][-1]
        last.weight.zero_()
        last.bias.fill_(5.0)
    path = save_package(network, tmp_path / "shape", task="lesion-shape", family="vae", builder="autoencoder_kl",
                        builder_args=args, input_spec={"patch": 16, "voxel_mm": 1.0})
    result = insert_lesions(head, specs=[LesionSpec(centre_ras=_centre(head), diameter_mm=9, shape="learned", contrast=0.5)],
                            shape_model=path)
    assert abs(result.report["lesions"][0]["volume_error"]) < 0.15
    other = save_package(network, tmp_path / "wrong", task="fill", family="vae", builder="autoencoder_kl",
                         builder_args=args, input_spec={"patch": 16, "voxel_mm": 1.0})
    with pytest.raises(ModelError, match="lesion-shape"):
        insert_lesions(head, count=1, preset="mr-wmh", shape_model=other)


@pytest.mark.parametrize("seed", range(6))
def test_random_lesions_in_a_region_that_fills_a_thin_slab_stay_inside_the_volume(seed):
    """The region's distance map counts to the next voxel centre, half a voxel past the volume's edge: on a slab
    of few thick slices random lesions were placed across the edge and the run failed ("extends beyond the edge
    of the volume"; a chest CT crop). Every centre now keeps its whole ball inside, by the rule the check applies."""
    matrix = oblique_matrix((0.9, 0.9, 3.0))
    noise = np.random.default_rng(seed).normal(0, 20, (10, 60, 60))
    volume = Volume((noise - 850).astype(np.int16), matrix)  # lung everywhere: the region is the whole box
    region = np.ones(volume.array.shape, bool)
    result = insert_lesions(volume, count=2, size_mm=9.0, region=region, seed=seed, min_spacing_mm=1.0)
    assert result.labels.array.any() and len(result.report["lesions"]) == 2
