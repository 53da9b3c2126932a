"""Headless training of MedSynth's models: ``medsynth-train`` (and ``torchrun -m MedSynthLib.training``).

One entry point for every task (fill, denoise, lesion-shape, lesion-inpaint) and
model family (unet, gan, vae, diffusion); a run ends by writing a model package
that the tasks load. See ``docs/training.md``.

Examples
--------
>>> from MedSynthLib.training import TrainConfig, train          # doctest: +SKIP
>>> result = train(TrainConfig(task="denoise", data=["scans/"], out="runs/dn", epochs=2))  # doctest: +SKIP
>>> result.package                                                 # doctest: +SKIP
PosixPath('runs/dn/denoise_unet.json')
"""

from .config import TrainConfig, load_config
from .families import FAMILIES, valid_pairs
from .pairs import PAIR_MAKERS
from ..models.sampling import ddim_sample, sample_lesion_shapes
from .trainer import TrainResult, load_checkpoint, train

TASKS = tuple(PAIR_MAKERS)

__all__ = [
    "TASKS",
    "FAMILIES",
    "TrainConfig",
    "TrainResult",
    "ddim_sample",
    "load_checkpoint",
    "load_config",
    "sample_lesion_shapes",
    "train",
    "valid_pairs",
]
