"""Tests of the sliding-window DCT filter (``_dct``) and the block shapes it shares with the fusion."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage

from MedSynthLib.io import read_volume

from .phantoms import clean_head, rmse


def test_dct_denoising_is_local_and_removes_gaussian_noise():
    """The sliding DCT filter: a strong denoiser of white noise, and local (the divergence probes rely on it)."""
    from MedSynthLib.tasks.enhance._dct import dct_influence, denoise_dct

    from scipy import ndimage

    clean = ndimage.gaussian_filter(clean_head((18, 40, 44)).astype(np.float32), 1.0)  # anatomy, not texture
    noisy = clean + np.random.default_rng(2).normal(0, 8.0, clean.shape).astype(np.float32)
    mask = clean > 10
    for patch, step in ((4, 1), (8, 3), (5, 2), ((2, 6, 6), (1, 4, 4)), ((6, 2, 3), 1)):
        out, params = denoise_dct(noisy, sigma=8.0, patch=patch, step=step)
        sides = [patch] * 3 if isinstance(patch, int) else list(patch)
        assert out.shape == noisy.shape and out.dtype == np.float32 and params["patch"] == sides
        assert rmse(out, clean, mask) < 0.6 * rmse(noisy, clean, mask)
        # a change at one voxel moves nothing beyond the filter's reach, axis by axis
        poked = noisy.copy()
        poked[9, 20, 22] += 500.0
        moved = np.abs(denoise_dct(poked, sigma=8.0, patch=patch, step=step)[0] - out) > 1e-3
        k, j, i = np.nonzero(moved)
        reach = (abs(k - 9).max(), abs(j - 20).max(), abs(i - 22).max())
        assert moved.any() and all(d <= dct_influence(patch, axis=a) for a, d in enumerate(reach)), (patch, reach)
        assert dct_influence(patch, axis=None) == 2 * (max(sides) - 1)
    assert np.array_equal(denoise_dct(noisy, sigma=0.0)[0], noisy)
    # the windowed aggregation folds its coverage block by block; a flat window must give the box-sum result
    for patch, step in ((4, 1), ((2, 6, 5), (1, 4, 3))):
        flat = denoise_dct(noisy, sigma=8.0, patch=patch, step=step, window=0.0)[0]
        nearly_flat = denoise_dct(noisy, sigma=8.0, patch=patch, step=step, window=1e-6)[0]
        assert np.allclose(flat, nearly_flat, atol=1e-3)
        assert np.abs(denoise_dct(noisy, sigma=8.0, patch=patch, step=step)[0] - flat).max() > 0.01
    with pytest.raises(ValueError, match="patch"):
        denoise_dct(noisy, sigma=8.0, patch=4, step=5)


def test_dct_denoising_in_slabs_matches_the_whole_volume(monkeypatch):
    """Memory is bounded by processing block rows a slab at a time; the result does not depend on it."""
    from MedSynthLib.tasks.enhance import _dct

    noisy = np.random.default_rng(3).normal(100, 10, (12, 20, 22)).astype(np.float32)
    whole, _ = _dct.denoise_dct(noisy, sigma=10.0, patch=4, step=1)
    monkeypatch.setattr(_dct, "DCT_CHUNK_VALUES", 64 * 26 * 28)  # about one block row at a time
    sliced, _ = _dct.denoise_dct(noisy, sigma=10.0, patch=4, step=1)
    assert np.allclose(whole, sliced, atol=1e-4)


def test_block_shape_follows_the_voxel_size():
    """Blocks as equal in millimetres as the grid allows, at about the same voxel count; cubes on isotropic grids."""
    from MedSynthLib.tasks.enhance._dct import block_shape, block_strides, search_box

    assert block_shape(None, edge=4) == block_shape((1.5, 1.5, 1.5), edge=4) == (4, 4, 4)
    assert block_shape((1.0, 1.0, 1.0), edge=8) == (8, 8, 8)
    assert block_shape((6.5, 0.78, 0.78), edge=4) == (2, 6, 6)  # brain1: 13 x 4.7 x 4.7 mm, not 26 x 3.1 x 3.1
    assert block_shape((0.78, 6.5, 0.78), edge=4) == (6, 2, 6)  # the thick axis wherever it lies
    assert block_shape((2.0, 1.0, 1.0), edge=4) == (3, 5, 5)
    for spacing in ((6.5, 0.78, 0.78), (2.0, 1.0, 1.0), (1.2, 0.9, 0.7), (0.5, 3.0, 3.0)):
        shape = block_shape(spacing, edge=4)
        assert min(shape) >= 2 and 0.6 * 64 <= np.prod(shape) <= 1.5 * 64, (spacing, shape)
        extent = np.array(shape) * spacing  # closer to a cube in mm than a cube of voxels is
        assert extent.max() / extent.min() <= max(spacing) / min(spacing), (spacing, shape)
    assert block_strides(3, (4, 4, 4), edge=4) == search_box(3, (4, 4, 4), edge=4) == (3, 3, 3)
    assert block_strides(3, (2, 6, 6), edge=4) == (1, 5, 5)  # blocks still overlap through-plane
    assert block_strides(3, (2, 16, 16), edge=8) == (1, 6, 6)
    assert block_strides(1, (2, 6, 6), edge=4) == (1, 1, 1)  # every block stays every block
    assert search_box(3, (2, 6, 6), edge=4) == (1, 4, 4)


@pytest.mark.slow
def test_real_thick_slice_scan_denoises_better_with_blocks_shaped_by_the_voxel_size(shared_data):
    """brain1 (pyradiomics' T1 post-contrast, 6.5 x 0.78 x 0.78 mm; ../shared/data/README.md) + 5 % Rician noise:
    the sliding DCT with blocks of about equal millimetres (2 x 6 x 6) beats the cube of voxels (4^3, 26 mm
    through-plane) in the head: 31.62 against 31.20 dB on this crop."""
    from MedSynthLib.metrics import psnr
    from MedSynthLib.noise import rician_debias
    from MedSynthLib.tasks.enhance._dct import block_shape, denoise_dct

    brain1 = read_volume(shared_data / "brain1_MR_T1post_pyradiomics.nii.gz")
    full = brain1.array.astype(np.float32)
    shape = block_shape(brain1.spacing_kji, edge=4)
    assert shape == (2, 6, 6)
    k, j, i = full.shape
    clean = np.ascontiguousarray(full[:, j // 2 - 56:j // 2 + 56, i // 2 - 56:i // 2 + 56])
    sigma = 0.05 * float(full.max())
    rng = np.random.default_rng(15)
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape)).astype(np.float32)
    head = ndimage.binary_fill_holes(clean > 0.1 * float(full.max()))
    data_range = float(clean.max() - clean.min())
    score = {}
    for name, patch in (("cube", 4), ("shaped", shape)):
        out = rician_debias(denoise_dct(noisy, sigma=sigma, patch=patch)[0], sigma)
        score[name] = psnr(clean, out, mask=head, data_range=data_range)
    assert score["shaped"] > score["cube"] + 0.2, score
