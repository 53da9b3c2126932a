"""Automatic regions on contrasts and body parts the brain-T1 rules missed (issue 26): a T2-like head, whose
brightest tissue is CSF inside the brain, and a breast MR."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import oblique_matrix
from scipy import ndimage

from MedSynthLib.errors import InputError
from MedSynthLib.tasks.lesion import PRESETS, default_preset, insert_lesions
from MedSynthLib.tasks.lesion._anatomy import find_brain
from MedSynthLib.volume import Volume


def t2_head(seed=0) -> tuple[Volume, np.ndarray]:
    """A DWI-b0-like head on a 2 mm oblique grid (170 x 150 x 130 mm): scalp at 0.7 of the brain, a dark 6 mm
    skull, a bright CSF layer under it, brain (grey 1.0, white 0.75) cut by a bright CSF shell (sulci) around
    bright ventricles (CSF 2.5 times grey), Rician-like noise, two saturated voxels. Returns it and the
    intracranial mask (the truth)."""
    rng = np.random.default_rng(seed)
    shape = (65, 75, 85)
    k, j, i = np.meshgrid(*[(np.arange(n) - n / 2) * 2.0 for n in shape], indexing="ij")
    r = np.sqrt((i / 80.0) ** 2 + (j / 70.0) ** 2 + (k / 62.0) ** 2)  # 1.0 at the skin
    image = np.zeros(shape)
    image[r < 1.0] = 0.7  # scalp
    image[r < 0.93] = 0.08  # skull
    inside = r < 0.85
    image[inside] = 2.5  # CSF under the skull
    image[r < 0.81] = 1.0  # grey matter
    image[r < 0.6] = 0.75  # white matter
    image[(r > 0.5) & (r < 0.55)] = 2.5  # a CSF shell through the brain (sulci, fissures)
    image[r < 0.2] = 2.5  # ventricles
    image = ndimage.gaussian_filter(image * 1000.0, 0.8)
    image = np.hypot(image + rng.normal(0, 40, shape), rng.normal(0, 40, shape))
    image.flat[[1000, 2000]] = 65535
    return Volume(image.astype(np.float32), oblique_matrix(spacing=(2.0, 2.0, 2.0))), inside


@pytest.fixture(scope="module")
def t2() -> tuple[Volume, np.ndarray]:
    return t2_head()


def test_t2_like_head_gets_its_brain(t2):
    """Failed on the old skull strip (tissue capped at 1.6 times the core's median dropped the CSF and broke the
    brain apart: 'no brain in view')."""
    volume, inside = t2
    masks = find_brain(volume.array, volume.spacing_kji)
    overlap = np.count_nonzero(masks.brain & inside) / np.count_nonzero(inside)
    leak = np.count_nonzero(masks.brain & ~inside) / np.count_nonzero(inside)
    assert overlap > 0.8 and leak < 0.1, (overlap, leak)
    result = insert_lesions(volume, count=2, preset=default_preset("MR"), region="auto", seed=1)
    assert np.all(inside[result.labels.array > 0])


def breast_mr(seed=0) -> tuple[Volume, np.ndarray]:
    """A breast-MR-like crop (0.7 x 0.7 x 2.1 mm): air around a half-ellipsoid breast of fat (40) with a patchy
    fibroglandular cone (65), on a chest-wall side that fills the volume's back; Rician-like noise. Returns it and
    the body mask (the truth)."""
    rng = np.random.default_rng(seed)
    shape = (20, 90, 100)
    k, j, i = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, (2.1, 0.7, 0.7))], indexing="ij")
    body = ((i - 35) / 35.0) ** 2 + ((j - 63) / 60.0) ** 2 + ((k - 20) / 30.0) ** 2 < 1  # the breast
    body |= i < 6  # the chest-wall side, cut by the field of view
    image = np.where(body, 40.0, 0.0)
    glands = body & (ndimage.gaussian_filter(rng.normal(size=shape), 3.0) > 0) & (((i - 25) / 25.0) ** 2 + ((j - 63) / 30.0) ** 2 < 1)
    image[glands] = 65.0
    image = ndimage.gaussian_filter(image, 0.7)
    image = np.hypot(image + rng.normal(0, 3, shape), rng.normal(0, 3, shape))
    return Volume(np.rint(image).astype(np.int16), oblique_matrix(spacing=(0.7, 0.7, 2.1))), body


def test_default_preset_on_breast_mr():
    assert default_preset("MR", "breast") == default_preset("mr", "BREAST") == "mr-breast-mass"
    assert PRESETS["mr-breast-mass"].region == "breast" and PRESETS["mr-breast-mass"].modality == "MR"
    with pytest.raises(InputError, match="no CT preset for the breast"):
        default_preset("CT", "breast")


def test_breast_mass_lands_in_the_breast():
    volume, body = breast_mr()
    result = insert_lesions(volume, count=2, preset="mr-breast-mass", region="auto", seed=1, label_mode="instances")
    assert set(np.unique(result.labels.array)) == {0, 1, 2}
    depth = ndimage.distance_transform_edt(body, sampling=volume.spacing_kji)
    assert depth[result.labels.array > 0].min() > 2.0  # inside the body, below the skin
    diameters = [s.diameter_mm for s in result.specs]
    assert all(5.0 <= d <= 50.0 for d in diameters)
    lesion = result.labels.array > 0
    assert result.volume.array[lesion].mean() > 1.2 * volume.array[lesion].mean()  # enhancing
    assert result.report["tissue"]["tissue"] == "breast"
