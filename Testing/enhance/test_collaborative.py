"""Tests of the block-matching collaborative filter (``_collaborative``)."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage


from .phantoms import clean_head, rmse


def test_collaborative_filter_denoises_is_local_and_slab_independent(monkeypatch):
    from scipy import ndimage

    from MedSynthLib.tasks.enhance import _collaborative as C

    clean = ndimage.gaussian_filter(clean_head((16, 36, 40)).astype(np.float32), 1.0)
    noisy = clean + np.random.default_rng(5).normal(0, 8.0, clean.shape).astype(np.float32)
    mask = clean > 10
    out, params = C.denoise_collaborative(noisy, sigma=8.0)
    assert params["group"] == 16 and out.shape == noisy.shape and out.dtype == np.float32
    assert rmse(out, clean, mask) < 0.6 * rmse(noisy, clean, mask)
    poked = noisy.copy()
    poked[8, 18, 20] += 500.0
    k, j, i = np.nonzero(np.abs(C.denoise_collaborative(poked, sigma=8.0)[0] - out) > 1e-3)
    assert len(k) and max(abs(k - 8).max(), abs(j - 18).max(), abs(i - 20).max()) <= C.collaborative_influence()
    # blocks shaped by the voxel size (2 x 6 x 6, stride 1 x 4 x 4, search 1 x 4 x 4): as good, and as local
    shaped = {"patch": (2, 6, 6), "step": (1, 4, 4), "search": (1, 4, 4)}
    flat, params = C.denoise_collaborative(noisy, sigma=8.0, **shaped)
    assert params["patch"] == [2, 6, 6] and params["search"] == [1, 4, 4]
    assert rmse(flat, clean, mask) < 0.6 * rmse(noisy, clean, mask)
    k, j, i = np.nonzero(np.abs(C.denoise_collaborative(poked, sigma=8.0, **shaped)[0] - flat) > 1e-3)
    reach = (abs(k - 8).max(), abs(j - 18).max(), abs(i - 20).max())
    assert len(k) and all(d <= C.collaborative_influence((2, 6, 6), (1, 4, 4), axis=a) for a, d in enumerate(reach))
    monkeypatch.setattr(C, "CHUNK_VALUES", 1)  # one row of reference blocks at a time
    assert np.allclose(C.denoise_collaborative(noisy, sigma=8.0)[0], out, atol=1e-3)
    assert np.allclose(C.denoise_collaborative(noisy, sigma=8.0, **shaped)[0], flat, atol=1e-3)
    with pytest.raises(ValueError, match="collaborative"):
        C.denoise_collaborative(noisy, sigma=8.0, group=800)  # more than the 9^3 candidates
    with pytest.raises(ValueError, match="collaborative"):
        C.denoise_collaborative(noisy, sigma=8.0, patch=(4, 1, 4))


@pytest.mark.parametrize("patch,step,search", [((2, 6, 6), (1, 5, 5), (1, 4, 4)), (4, 3, 3)])
def test_collaborative_wiener_guide_is_aligned_at_the_volume_ends(patch, step, search):
    """The Wiener stage's guide is the first estimate mirrored exactly as the data are: an end slice next to a
    very different one (fat at -100 HU beside 2000 HU bone, as at lung1's last slice) keeps its value. The guide
    was once mirrored from the estimate's own margin, a slice off, and put 280 HU into that end slice."""
    from MedSynthLib.tasks.enhance import _collaborative as C

    rng = np.random.default_rng(8)
    clean = np.full((12, 40, 40), -100.0, np.float32)
    clean[:, 10:30, 10:30] = 40.0
    clean[-2, 12:28, 12:28] = 2000.0  # bright structure in the second-last slice only
    clean[1, 12:28, 12:28] = 2000.0  # and in the second slice
    noisy = (clean + rng.normal(0, 15.0, clean.shape)).astype(np.float32)
    out, _ = C.denoise_collaborative(noisy, sigma=15.0, patch=patch, step=step, search=search)
    for end in (0, -1):
        assert np.abs(out[end] - clean[end]).max() < 6 * 15.0, (end, np.abs(out[end] - clean[end]).max())
