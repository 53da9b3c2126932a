"""Training data: find volumes (+ label maps), read and cache them, and draw reproducible samples.

Every training sample is a pure function of ``(seed, epoch, index)``: the
dataset seeds its own generator and the MONAI random transforms from those three
numbers. That is what makes ``--resume`` exact (a resumed run draws the very
samples the uninterrupted run would have drawn) and makes results independent of
the number of DataLoader workers and of the number of DDP processes' ordering.

Volumes are read once through :func:`MedSynthLib.io.read_volume` (NRRD, NIfTI,
MHA; geometry checked), normalised by the task's pair maker and held in memory
(a cache in the sense of MONAI's ``CacheDataset``: the expensive load and
normalise happen once, the cheap random crops and augmentations every step).
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError, check_number
from ..io import read_volume
from ..volume import Volume

from .pairs_base import CachedVolume, PairMaker

__all__ = [
    "VOLUME_SUFFIXES",
    "CachedVolume",
    "find_volumes",
    "load_volumes",
    "split_volumes",
    "PairDataset",
    "intensity_augmentation",
    "spatial_augmentation",
    "sample_seed",
]

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _has_volume_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in VOLUME_SUFFIXES)


def find_volumes(specs: Sequence[str] | str, *, what: str = "data") -> list[Path]:
    """Files named by folders and/or glob patterns, sorted, duplicates removed.

    A folder contributes every NRRD/NIfTI/MHA file directly inside it.

    Raises
    ------
    InputError
        A folder that does not exist, or nothing found at all (the message names
        what was searched and the suffixes looked for).
    """
    if isinstance(specs, (str, Path)):
        specs = [str(specs)]
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found += [p for p in sorted(path.iterdir()) if p.is_file() and _has_volume_suffix(p)]
        elif any(ch in str(spec) for ch in "*?["):
            found += [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if _has_volume_suffix(Path(p))]
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"--{what} {spec!r}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise InputError(
            f"--{what} {', '.join(map(str, specs))}: no volumes found "
            f"(looked for {', '.join(VOLUME_SUFFIXES)})"
        )
    return unique


def _foreground_points(array: np.ndarray, threshold: float, rng: np.random.Generator, limit: int = 20000) -> np.ndarray:
    points = np.argwhere(array > threshold)
    if len(points) > limit:
        points = points[rng.choice(len(points), size=limit, replace=False)]
    return points.astype(np.int32)


def resample(volume: Volume, spacing_ijk: Sequence[float], *, mode: str = "bilinear") -> Volume:
    """``volume`` on a grid of ``spacing_ijk`` mm (same direction and extent) with MONAI's ``Spacing``.

    ``mode`` is ``"bilinear"`` for images and ``"nearest"`` for label maps.
    """
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    affine_kji = volume.ijk_to_ras[:, [2, 1, 0, 3]]  # MONAI's spatial axes are the array axes (k, j, i)
    image = MetaTensor(torch.from_numpy(np.asarray(volume.array, dtype=np.float32)[None]), affine=torch.from_numpy(affine_kji))
    spacing_kji = tuple(float(s) for s in reversed(tuple(spacing_ijk)))
    out = Spacing(pixdim=spacing_kji, mode=mode, padding_mode="border" if mode != "nearest" else "zeros")(image)
    matrix = out.affine.numpy().astype(np.float64)[:, [2, 1, 0, 3]]
    return Volume(out.array[0].astype(volume.array.dtype if mode == "nearest" else np.float32), matrix)


def load_volumes(
    paths: Sequence[Path],
    *,
    label_paths: Optional[Sequence[Path]] = None,
    pair_maker: PairMaker,
    spacing: Optional[Sequence[float]] = None,
) -> list[CachedVolume]:
    """Read, check and normalise the training volumes (unreadable ones skipped with a warning).

    Label maps are paired with images in sorted order and must have the same
    grid (shape and IJK-to-RAS) as their image. With ``spacing`` (mm, i j k),
    images (bilinear) and labels (nearest) are resampled to it first.

    Raises
    ------
    InputError
        No readable volume left; label count or grid not matching its image;
        a task that needs labels given none; an image without any labelled voxel
        for a task that trains on lesions.
    """
    if pair_maker.needs_labels and not label_paths:
        raise InputError(f"task {pair_maker.task!r} needs label maps: pass --labels DIR_OR_GLOB")
    if label_paths is not None and len(label_paths) != len(paths):
        raise InputError(
            f"found {len(paths)} images but {len(label_paths)} label maps; "
            "--labels must hold one label map per image (paired in sorted order)"
        )
    rng = np.random.default_rng(0)
    cached: list[CachedVolume] = []
    skipped: list[str] = []
    for index, path in enumerate(paths):
        try:
            volume = read_volume(path)
        except InputError as error:
            log.warning("skipping %s: %s", path.name, error)
            skipped.append(path.name)
            continue
        if min(volume.array.shape) < 1 or volume.array.size < 8:
            log.warning("skipping %s: too small (%s)", path.name, volume.array.shape)
            skipped.append(path.name)
            continue
        original = volume
        if spacing is not None:
            volume = resample(volume, spacing)
        label = None
        label_path = None
        if label_paths is not None:
            label_path = Path(label_paths[index])
            label_volume = read_volume(label_path)
            _check_label(original, label_volume, path, label_path)
            if spacing is not None:
                label_volume = resample(label_volume, spacing, mode="nearest")
            label = (np.asarray(label_volume.array) > 0).astype(np.uint8)
            if pair_maker.needs_labels and not label.any():
                raise InputError(f"label map {label_path.name} of {path.name} has no labelled voxel")
        array, info = pair_maker.normalise(volume)
        spacing = volume.spacing  # (i, j, k)
        item = CachedVolume(
            path=Path(path),
            array=array,
            spacing_kji=(float(spacing[2]), float(spacing[1]), float(spacing[0])),
            label=label,
            label_path=label_path,
            info=info,
        )
        item.foreground = _foreground_points(array, 0.1, rng)
        if label is not None:
            item.lesion = _foreground_points(label, 0, rng)
        cached.append(item)
    if not cached:
        raise InputError(f"none of the {len(paths)} volumes could be read (skipped: {', '.join(skipped)})")
    if skipped:
        log.warning("skipped %d unreadable volume(s): %s", len(skipped), ", ".join(skipped))
    return cached


def _check_label(volume: Volume, label: Volume, path: Path, label_path: Path) -> None:
    if label.array.shape != volume.array.shape:
        raise InputError(
            f"label map {label_path.name} has shape {label.array.shape[::-1]} (i,j,k) but its image "
            f"{path.name} has {volume.array.shape[::-1]}: labels must be on the image's grid"
        )
    if not np.allclose(label.ijk_to_ras, volume.ijk_to_ras, atol=1e-3, rtol=1e-4):
        raise InputError(
            f"label map {label_path.name} does not lie on the grid of {path.name} "
            "(different origin, spacing or direction): resample it to the image first"
        )


def split_volumes(
    volumes: list[CachedVolume], *, val_fraction: float, seed: int
) -> tuple[list[CachedVolume], list[CachedVolume]]:
    """Split by volume (never slices of one scan on both sides) into training and validation.

    With a single volume, validation draws from the same volume with other seeds
    and no augmentation, and a warning says the numbers are optimistic.
    """
    check_number(val_fraction, "--val-fraction", low=0.0, high=1.0, high_open=True)
    count = int(round(len(volumes) * val_fraction))
    if val_fraction > 0 and count == 0 and len(volumes) > 1:
        count = 1
    count = min(count, len(volumes) - 1)
    if count <= 0:
        if val_fraction > 0:
            log.warning("one volume only: validation samples come from the training volume (optimistic numbers)")
        return volumes, volumes
    order = np.random.default_rng(seed).permutation(len(volumes))
    val = [volumes[i] for i in sorted(order[:count])]
    train = [volumes[i] for i in sorted(order[count:])]
    return train, val


def sample_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """A 32-bit seed for sample ``index`` of ``epoch`` (``stream`` separates training and validation)."""
    sequence = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) + 1, int(index), int(stream)])
    return int(sequence.generate_state(1)[0])


def intensity_augmentation(strength: float):
    """Heavy intensity/contrast randomisation (MONAI) so one model serves many scanners and contrasts.

    Applied to a (C, H, W) stack of image planes at once, so every plane of a
    sample (context and target) sees the same contrast change. ``strength`` 0
    returns None (no augmentation); 1 is the default.
    """
    if strength <= 0:
        return None
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandBiasField,
        RandHistogramShift,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    s = float(strength)
    return Compose(
        [
            RandAdjustContrast(prob=min(1.0, 0.5 * s), gamma=(max(0.2, 1 - 0.5 * s), 1 + 0.8 * s)),
            RandHistogramShift(prob=min(1.0, 0.2 * s), num_control_points=(5, 10)),
            RandBiasField(prob=min(1.0, 0.3 * s), degree=3, coeff_range=(0.0, 0.2 * s)),
            RandScaleIntensity(prob=min(1.0, 0.5 * s), factors=0.2 * s),
            RandShiftIntensity(prob=min(1.0, 0.5 * s), offsets=0.1 * s),
        ]
    )


def spatial_augmentation(spatial_dims: int = 2):
    """Random flips and 90-degree rotations (MONAI): orientation-agnostic models, no interpolation blur."""
    from monai.transforms import Compose, RandFlip, RandRotate90

    axes = list(range(spatial_dims))
    return Compose(
        [RandFlip(prob=0.5, spatial_axis=axis) for axis in axes]
        + [RandRotate90(prob=0.5, max_k=3, spatial_axes=(axes[-2], axes[-1]))]
    )


class PairDataset(torch.utils.data.Dataset):
    """``length`` reproducible training (or validation) pairs drawn from cached volumes.

    Item ``index`` of epoch ``e`` is ``pair_maker.sample(volume, rng, ...)`` with
    ``rng`` seeded by :func:`sample_seed`; :meth:`set_epoch` changes ``e``.
    Items are dicts of float32 tensors: ``input`` (C, ...), ``target`` (1, ...)
    and ``weight`` (1, ...), the voxels the loss and metrics count.

    ``field`` (validation only, pair makers with ``supports_field``): items cover
    a wider in-plane region around each crop (0 = the whole plane) and carry
    ``scored``, the crop's box; their sizes then differ from item to item.
    """

    def __init__(
        self,
        volumes: list[CachedVolume],
        pair_maker: PairMaker,
        *,
        length: int,
        seed: int,
        augment: float,
        stream: int = 0,
        resample_each_epoch: bool = True,
        field: Optional[int] = None,
    ) -> None:
        if not volumes:
            raise InputError("no volumes to draw training samples from")
        if field is not None and not pair_maker.supports_field:
            raise InputError(f"task {pair_maker.task!r} validates on its crops only (no validation field)")
        self.field = None if field is None else int(field)
        self.volumes = volumes
        self.pair_maker = pair_maker
        self.length = int(length)
        self.seed = int(seed)
        self.stream = int(stream)
        self.epoch = 0
        self.resample_each_epoch = bool(resample_each_epoch) and stream == 0
        self.intensity = intensity_augmentation(augment) if pair_maker.intensity_augment else None
        self.spatial = spatial_augmentation(pair_maker.spatial_dims) if augment > 0 else None
        sizes = np.array([v.array.size for v in volumes], dtype=np.float64)
        self.weights = np.sqrt(sizes) / np.sqrt(sizes).sum()  # big scans count more, not overwhelmingly

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        seed = sample_seed(self.seed, self.epoch if self.resample_each_epoch else 0, index, self.stream)
        rng = np.random.default_rng(seed)
        volume = self.volumes[int(rng.choice(len(self.volumes), p=self.weights))]
        extra = {} if self.field is None else {"field": self.field}
        pair = self.pair_maker.sample(
            volume, rng, intensity=self.intensity, spatial=self.spatial, transform_seed=seed, **extra
        )
        return {key: torch.as_tensor(np.ascontiguousarray(value), dtype=torch.float32) for key, value in pair.items()}
