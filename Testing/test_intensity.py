"""``guess_modality``: raw CT (air), windowed or skull-stripped CT (a constant background, soft tissue in a
narrow HU band, a bone tail) and MR of every kind, on small synthetic volumes and on the corpus."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import oblique_matrix
from scipy import ndimage

from MedSynthLib import Volume
from MedSynthLib.intensity import guess_modality
from MedSynthLib.io import read_volume

SHAPE = (24, 40, 40)


def _head(inside: dict, *, background: float = 0.0, noise: float = 3.0, dtype=np.int16, seed=0) -> Volume:
    """A head-like volume: ``background`` outside an ellipsoid whose shells hold ``inside``'s values
    ("white" core, "grey" rim, "csf" centre, "fat" and "bone" outside; any may be missing), smoothed a little,
    Gaussian noise, rounded for integer dtypes."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    r = np.sqrt(i ** 2 + j ** 2 + (k / 0.9) ** 2)
    image = np.full(SHAPE, np.nan)
    shells = {"bone": (0.78, 0.8), "fat": (0.75, 0.78), "white": (0.0, 0.75), "grey": (0.55, 0.75),
              "csf": (0.0, 0.2)}
    for name, (low, high) in shells.items():
        if name in inside:
            image[(r >= low) & (r < high)] = inside[name]
    body = np.isfinite(image)
    image = np.where(body, ndimage.gaussian_filter(np.nan_to_num(image), 0.5) + rng.normal(0, noise, SHAPE),
                     background)
    if np.dtype(dtype).kind in "iu":
        image = np.rint(image)
    return Volume(image.astype(dtype), oblique_matrix(spacing=(1.0, 1.0, 1.0)))


CT_BRAIN = {"white": 28.0, "grey": 40.0, "csf": 8.0, "bone": 300.0}  # HU


@pytest.mark.parametrize("floor", [0.0, -30.0, -1024.0])
def test_windowed_skull_stripped_ct_is_ct(floor):
    """White matter 28 HU, grey matter 40 HU, CSF 8 HU, a thin rim of bone at 300 HU, a constant background at
    the window's floor or zero (the TotalSegmentator CT brain atlas: -30..385 HU, 81 % zero)."""
    assert guess_modality(_head(CT_BRAIN, background=floor)) == "CT"


def test_raw_ct_with_air_is_ct():
    head = _head({**CT_BRAIN, "bone": 1200.0}, background=-1000.0, noise=10.0)
    assert guess_modality(head) == "CT"


@pytest.mark.parametrize("case, inside, background, dtype", [
    # an 8-bit T1 head: white matter 110, grey 70, CSF 40, fat 220 (bulk above soft tissue and 40 units wide)
    ("8-bit T1", {"white": 110.0, "grey": 70.0, "csf": 40.0, "fat": 220.0}, 0.0, np.uint8),
    # a dark T1 inside -100..100 but with MR's contrast: white 90, grey 45 (bulk about 40 units wide, not 10-15 HU)
    ("dark T1", {"white": 90.0, "grey": 45.0, "csf": 15.0, "fat": 180.0}, 0.0, np.int16),
    # the windowed CT's voxels times 4: not HU (bulk 112-160, outside soft tissue)
    ("CT scaled", {k: 4 * v for k, v in CT_BRAIN.items()}, 0.0, np.int16),
    # MR magnitude with a narrow bulk in the soft-tissue range but no constant background (a breast crop)
    ("no background", {"white": 60.0, "fat": 200.0}, 45.0, np.int16),
    # the CT's values as floats with noise (not whole numbers: not stored HU)
    ("float", CT_BRAIN, 0.0, np.float32),
])
def test_mr_is_mr(case, inside, background, dtype):
    head = _head(inside, background=background, dtype=dtype)
    if case == "no background":  # a noisy background: no constant value
        noisy = background + np.random.default_rng(1).integers(-10, 10, SHAPE)
        head = head.with_array(np.where(head.array == background, noisy, head.array).astype(dtype))
    assert guess_modality(head) == "MR", case


@pytest.mark.slow
def test_every_scan_of_the_corpus(shared_data):
    """CT: the three with air and the windowed brain atlas; every MR (T1, post-contrast T1, DWI, EPI, ASL M0,
    breast, abdomen, templates) stays MR."""
    scans = sorted(p for p in shared_data.glob("*.nii.gz")
                   if not any(word in p.name.lower() for word in ("_label", "prob", "mask")))
    assert len(scans) >= 17
    wrong = []
    for path in scans:
        expected = "CT" if path.name.startswith(("ct_", "lung1_CT")) else "MR"
        found = guess_modality(read_volume(path))
        if found != expected:
            wrong.append(f"{path.name}: {found}, expected {expected}")
    assert not wrong, wrong
