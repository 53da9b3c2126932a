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
