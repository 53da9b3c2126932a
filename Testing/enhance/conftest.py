"""Fixtures of the enhance tests."""

from __future__ import annotations

import pytest

from conftest import oblique_matrix
from MedSynthLib.volume import Volume

from .phantoms import clean_head, rician_noise


@pytest.fixture(scope="module")
def noisy_head():
    """A clean head and its Rician-noisy volume (sigma 6) on an oblique grid."""
    clean = clean_head()
    matrix = oblique_matrix(spacing=(0.9, 1.0, 1.1))
    return clean, Volume(rician_noise(clean, 6.0), matrix)
