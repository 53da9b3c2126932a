"""What every pair maker shares: crops of planes and fields around a centre, augmentation, the base class.

A pair maker draws a sample with a NumPy generator it is handed, so a sample is reproducible from its seed
(see :mod:`.data`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import InputError, check_whole_number
from ..intensity import robust_scale
from ..volume import THICK_SLICE_RATIO, Volume

__all__ = ["CachedVolume", "PairMaker", "pick_center", "extract_planes", "extract_field"]


@dataclass
class CachedVolume:
    """One training volume in memory: normalised float32 array (KJI), optional label map, provenance."""

    path: Path
    array: np.ndarray
    spacing_kji: tuple[float, float, float]
    label: Optional[np.ndarray] = None
    label_path: Optional[Path] = None
    info: dict = field(default_factory=dict)
    foreground: Optional[np.ndarray] = None  # (N, 3) KJI indices of a subsample of foreground voxels
    lesion: Optional[np.ndarray] = None  # (N, 3) KJI indices of label voxels


# --------------------------------------------------------------------------- helpers


def pick_center(volume: CachedVolume, rng: np.random.Generator, *, prefer: str = "foreground", probability: float = 0.9) -> np.ndarray:
    """A KJI voxel to centre a crop on: usually inside the foreground (or a lesion), sometimes anywhere."""
    points = volume.lesion if prefer == "lesion" else volume.foreground
    if points is not None and len(points) and rng.random() < probability:
        return np.asarray(points[rng.integers(len(points))], dtype=np.int64)
    return np.array([rng.integers(n) for n in volume.array.shape], dtype=np.int64)


def extract_planes(
    array: np.ndarray, *, axis: int, indices: np.ndarray, center: np.ndarray, crop: int
) -> np.ndarray:
    """Planes ``indices`` across array ``axis``, cropped to ``crop`` x ``crop`` around ``center``.

    Indices past the ends repeat the edge slice (the convention of the task-side
    input builders); in-plane, crops that leave the volume are zero-padded.

    Returns
    -------
    ndarray, shape (len(indices), crop, crop), float32
    """
    moved = np.moveaxis(array, axis, 0)
    indices = np.clip(np.asarray(indices), 0, moved.shape[0] - 1)
    in_plane = [c for a, c in enumerate(center) if a != axis]
    out = np.zeros((len(indices), crop, crop), dtype=np.float32)
    starts = [int(c) - crop // 2 for c in in_plane]
    src = []
    dst = []
    for start, size in zip(starts, moved.shape[1:]):
        lo, hi = max(start, 0), min(start + crop, size)
        if hi <= lo:  # centre far outside: take the first crop of the volume
            lo, hi = 0, min(crop, size)
            start = 0
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[:, dst[0], dst[1]] = moved[indices][:, src[0], src[1]]
    return out


def extract_field(
    array: np.ndarray, *, axis: int, indices: np.ndarray, center: np.ndarray, crop: int, field: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Planes ``indices`` across ``axis`` over a ``field`` x ``field`` region holding the crop, inside the plane.

    Validation of models whose output depends on how much of the plane they
    see (a diffusion sampler) predicts this region and scores only the crop of
    :func:`extract_planes` at the same ``center``. The field is centred like
    the crop, shifted to stay inside the plane and clipped to it, so the model
    sees anatomy where the task would, never zero padding; ``field`` 0 (or one
    at least the plane's size) takes the whole plane, as the tasks do.

    Returns
    -------
    planes : ndarray, shape (len(indices), H, W), float32
        H, W are ``max(field, crop)``, or the plane's size where that is smaller
        (always for ``field`` 0).
    box : tuple of 4 int
        (row start, row stop, column start, column stop) of the crop, clipped to
        the plane, inside ``planes``.
    """
    moved = np.moveaxis(array, axis, 0)
    indices = np.clip(np.asarray(indices), 0, moved.shape[0] - 1)
    in_plane = [c for a, c in enumerate(center) if a != axis]
    region, box = [], []
    for c, size in zip(in_plane, moved.shape[1:]):
        lo, hi = max(int(c) - crop // 2, 0), min(int(c) - crop // 2 + crop, size)
        width = size if field <= 0 else min(max(int(field), crop), size)
        start = int(np.clip(int(c) - width // 2, 0, size - width))  # holds [lo, hi) as width >= crop
        region.append(slice(start, start + width))
        box += [lo - start, hi - start]
    planes = np.ascontiguousarray(moved[indices][:, region[0], region[1]], dtype=np.float32)
    return planes, tuple(box)


def _apply(transform: Optional[Callable], planes: np.ndarray, seed: int) -> np.ndarray:
    if transform is None:
        return planes
    import warnings

    transform.set_random_state(seed=int(seed) % (2**32))
    with warnings.catch_warnings():  # MONAI warns on constant crops (background), which are fine
        warnings.filterwarnings("ignore", message=".*intensity is a single value.*")
        return np.asarray(transform(planes), dtype=np.float32)


def _choose_axis(volume: CachedVolume, rng: np.random.Generator, axes: str) -> int:
    if axes == "slice":
        return int(np.argmax(volume.spacing_kji))
    if axes == "thin":  # axes that are not thick-slice (sharp ground truth)
        finest = min(volume.spacing_kji)
        choices = [a for a, s in enumerate(volume.spacing_kji)
                   if s <= THICK_SLICE_RATIO * finest and volume.array.shape[a] > 1]
        return int(rng.choice(choices or [0, 1, 2]))
    choices = [a for a in range(3) if volume.array.shape[a] > 1]
    return int(rng.choice(choices))


class PairMaker:
    """Base class: the task's normalisation, sample drawing and package input spec.

    Subclasses set the class attributes and implement :meth:`sample`.
    """

    task: str = ""
    families: tuple[str, ...] = ()
    needs_labels: bool = False
    spatial_dims: int = 2
    intensity_augment: bool = True
    #: "image": a regression target in normalised units; "mask": an occupancy in [0, 1].
    target_kind: str = "image"
    #: True when samples carry ``base`` and the network predicts a residual over it.
    residual: bool = False
    #: An input channel the output corrects (unet/gan families build a ``residual_unet`` on it).
    skip_channel: Optional[int] = None
    #: True when :meth:`sample` accepts ``field`` (validation on a wider region than the scored crop).
    supports_field: bool = False
    defaults: dict[str, Any] = {}

    def __init__(self, options: Optional[dict] = None, *, crop: int = 64) -> None:
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise InputError(
                f"task {self.task!r} has no option(s) {', '.join(unknown)}; "
                f"its options are {', '.join(sorted(self.defaults)) or 'none'}"
            )
        self.options = {**self.defaults, **options}
        if "axes" in self.options and self.options["axes"] not in ("all", "thin", "slice"):
            raise InputError(f"task option axes must be 'all', 'thin' or 'slice', got {self.options['axes']!r}")
        check_whole_number(crop, "crop (voxels)", low=8, high=4096)
        self.crop = int(crop)

    @property
    def in_channels(self) -> int:
        raise NotImplementedError

    def normalise(self, volume: Volume) -> tuple[np.ndarray, dict]:
        """The task's normalisation: robust percentiles (0.5, 99.5) to [0, 1] by default."""
        scale = robust_scale(volume.array, percentiles=(0.5, 99.5))
        return scale.forward(volume.array), {"low": scale.low, "high": scale.high}

    def sample(
        self,
        volume: CachedVolume,
        rng: np.random.Generator,
        *,
        intensity: Optional[Callable] = None,
        spatial: Optional[Callable] = None,
        transform_seed: int = 0,
    ) -> dict[str, np.ndarray]:
        """One (input, target, weight, ...) sample drawn with ``rng``.

        Pair makers with :attr:`supports_field` also take ``field`` (int,
        keyword): the sample then covers :func:`extract_field`'s region
        (0 = the whole plane) and carries ``scored``, the crop's box in it.
        """
        raise NotImplementedError

    def input_spec(self) -> dict:
        raise NotImplementedError

    def known(self, batch: dict) -> Optional[tuple[Any, Any]]:
        """(known values, known mask) of the target for diffusion data consistency, or None."""
        return None
