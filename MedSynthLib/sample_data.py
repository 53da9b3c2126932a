"""The small real volumes shipped with MedSynth (``Resources/SampleData``), for the demo and examples.

Never downloaded: they live in the repository (and in the Slicer extension package).
Provenance and licences are in ``Resources/SampleData/README.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError
from .io import read_volume
from .volume import Volume

__all__ = ["SAMPLES", "sample_dir", "sample_path", "load_sample"]

#: name -> (file, modality)
SAMPLES = {
    "mr-t1": ("mr_t1_robex_crop.nii.gz", "MR"),
    "ct-chest": ("ct_chest_lung1_crop.nii.gz", "CT"),
}


def sample_dir() -> Path:
    """``$MEDSYNTH_SAMPLE_DIR`` if set, else ``Resources/SampleData`` beside the package."""
    override = os.environ.get("MEDSYNTH_SAMPLE_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "Resources" / "SampleData"


def sample_path(name: str) -> Path:
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    path = sample_dir() / SAMPLES[name][0]
    if not path.is_file():
        raise InputError(
            f"sample volume {path} is missing; MedSynth's Resources/SampleData folder was not installed "
            "(set MEDSYNTH_SAMPLE_DIR to its location)"
        )
    return path


def load_sample(name: str) -> Volume:
    """Read the embedded sample ``name`` ("mr-t1" or "ct-chest")."""
    return read_volume(sample_path(name))
