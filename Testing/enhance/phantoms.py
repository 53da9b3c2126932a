"""Phantoms and measures the enhance tests share: a clean MR-like head, Rician noise, a bias field."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import oblique_matrix
from MedSynthLib.volume import Volume

#: The demo MR sample (in the checkout's Resources).
SAMPLE_MR = Path(__file__).resolve().parents[2] / "Resources" / "SampleData" / "mr_t1_robex_crop.nii.gz"


def clean_head(shape=(16, 48, 56), *, seed=0) -> np.ndarray:
    """Clean MR-like head: background 0, brain 100 with a bright 'white matter' core and smooth texture."""
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((i / 0.8) ** 2 + (j / 0.75) ** 2 + (k / 0.9) ** 2)
    image = 100.0 * (r < 0.85) + 50.0 * (r < 0.45) + 15 * np.sin(4 * i) * np.cos(3 * j) * (r < 0.85)
    return image.astype(np.float32)


def rician_noise(clean: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    """``clean`` as a magnitude image with Rician noise of ``sigma``."""
    rng = np.random.default_rng(seed)
    return np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape)).astype(np.float32)


def rmse(a, b, mask):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64)[mask] - np.asarray(b, np.float64)[mask]) ** 2)))


def head_with_loud_background():
    """Tissue noise sigma 6, but the 'background' carries sigma 30 (ghosting / tissue there): they disagree."""
    clean = clean_head()
    noisy = rician_noise(clean, 6.0)
    outside = clean == 0
    loud = rician_noise(np.zeros_like(clean), 30.0, seed=5)
    noisy[outside] = loud[outside]
    return clean, Volume(noisy, oblique_matrix(spacing=(0.9, 1.0, 1.1)))


def biased(shape=(24, 56, 56)):
    """A clean head and a smooth multiplicative field over it."""
    clean = clean_head(shape)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    field = np.exp(0.35 * i - 0.2 * j + 0.15 * k).astype(np.float32)
    return clean, field
