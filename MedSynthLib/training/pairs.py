"""Self-supervised pair making per task: what a network sees (input) and must produce (target).

One :class:`PairMaker` per task. Fill and denoise build their network inputs
with the task side's own input builders (``MedSynthLib.network_inputs.fill`` and
``MedSynthLib.network_inputs.denoise``), so a trained package and the task that
loads it can never disagree about channels, context or normalisation; the
package's ``input`` spec is the task side's ``*_INPUT_SPEC`` (with the context
this run used).

Every pair maker draws a sample with a NumPy generator it is handed, so a
sample is reproducible from its seed (see :mod:`.data`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from ..errors import InputError
from ..intensity import robust_scale
from ..volume import Volume
from .data import CachedVolume

__all__ = ["PairMaker", "DenoisePairs", "FillPairs", "LesionInpaintPairs", "LesionShapePairs", "PAIR_MAKERS", "make_pair_maker"]



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
    if axes == "thin":  # axes whose spacing is at most 1.5x the finest (sharp ground truth)
        finest = min(volume.spacing_kji)
        choices = [a for a, s in enumerate(volume.spacing_kji) if s <= 1.5 * finest and volume.array.shape[a] > 1]
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
        if int(crop) < 8:
            raise InputError(f"crop must be at least 8 voxels, got {crop}")
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


# --------------------------------------------------------------------------- denoise


class DenoisePairs(PairMaker):
    """Training scans plus simulated noise (Rician for MR magnitude, Gaussian for CT) at random levels.

    The input is :func:`~MedSynthLib.network_inputs.make_denoise_inputs`
    of the noisy stack (centre row). Noise levels are drawn in normalised units
    (1 = the 99.5th percentile), so the model covers the range from nearly
    clean to very noisy scans.

    Options
    -------
    target : {"clean", "recorrupted"}
        ``"clean"`` (default): the target is the training scan's centre slice
        as it is. Real scans carry their own noise, so the network learns to
        give back that noise level; on a cleaner scan it then under-denoises.
        ``"recorrupted"``: Recorrupted-to-Recorrupted (Pang et al., CVPR 2021).
        With the scan's own noise sigma_y, ``z ~ N(0, sigma_y^2)`` is drawn per
        voxel, the input is built from ``y + alpha z`` (plus the simulated noise
        on top), the target is ``y - z / alpha``. Input and target noise are
        then uncorrelated (independent for Gaussian noise), so the L1/MSE to
        the target trains, in expectation, as if the target were clean, with no
        clean data. The price is a noisier target (noise variance
        ``(1 + 1/alpha^2) sigma_y^2``): more steps for the same precision, and
        SSIM against such a target rewards keeping noise (use ``ssim_weight: 0``).
        Validation samples are recorrupted too: their L1/PSNR read against a
        noisy target, lower than against a clean one, but they still rank
        checkpoints as if the target were clean.
    alpha : float
        Recorruption strength (> 0). The input's own noise becomes
        ``sqrt(1 + alpha^2) sigma_y``; 1 (default) keeps the target noise
        (``sqrt(2) sigma_y``) low while the simulated noise covers higher levels.
    sigma : float or None
        The scans' own noise sigma in normalised units, one value for every
        volume; None (default) estimates it once per volume with
        :func:`~MedSynthLib.noise.estimate_noise_array` (Rician-aware
        background estimate for MR, tissue residual for CT), as the Gaussian
        sigma of the noise in tissue, where Rician noise is nearly Gaussian at
        the SNR of clinical scans.
    """

    task = "denoise"
    families = ("unet", "gan")
    defaults = {"context": 2, "axes": "all", "noise": [0.005, 0.12], "rician_probability": 0.8,
                "target": "clean", "alpha": 1.0, "sigma": None}

    def __init__(self, options: Optional[dict] = None, *, crop: int = 64) -> None:
        super().__init__(options, crop=crop)
        target = self.options["target"]
        if target not in ("clean", "recorrupted"):
            raise InputError(f"task option target must be 'clean' or 'recorrupted', got {target!r}")
        alpha = self.options["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha <= 0:
            raise InputError(f"task option alpha must be a positive number, got {alpha!r}")
        sigma = self.options["sigma"]
        if sigma is not None and (
            isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not np.isfinite(sigma) or sigma < 0
        ):
            raise InputError(f"task option sigma must be null (estimate per volume) or a number >= 0, got {sigma!r}")

    @property
    def context(self) -> int:
        return int(self.options["context"])

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1

    @property
    def skip_channel(self) -> int:  # the noisy centre slice: an untrained model is the identity
        return self.context

    @property
    def recorrupted(self) -> bool:
        return self.options["target"] == "recorrupted"

    def normalise(self, volume: Volume) -> tuple[np.ndarray, dict]:
        """The denoise normalisation; with recorrupted targets also the scan's own noise (``noise_sigma``)."""
        from ..network_inputs.denoise import normalise_for_denoise

        array, scale = normalise_for_denoise(volume.array)
        info: dict = {"low": scale.low, "high": scale.high}
        if self.recorrupted:
            info["noise_sigma"] = self.native_sigma(volume, scale_range=float(scale.high - scale.low))
        return array, info

    def native_sigma(self, volume: Volume, *, scale_range: float) -> float:
        """The scan's own noise sigma in normalised units: the ``sigma`` option, else estimated.

        Parameters
        ----------
        volume : Volume
            The raw (not normalised) scan: the estimator needs its background
            and intensity units (HU tell CT from MR).
        scale_range : float
            ``high - low`` of the denoise normalisation, to convert the estimate.
        """
        if self.options["sigma"] is not None:
            return float(self.options["sigma"])
        from ..noise import estimate_noise_array

        estimate = estimate_noise_array(volume)
        return float(estimate.sigma) / scale_range if scale_range > 0 else 0.0

    def sample(self, volume, rng, *, intensity=None, spatial=None, transform_seed=0):
        from ..network_inputs.denoise import make_denoise_inputs

        c = self.context
        axis = _choose_axis(volume, rng, self.options["axes"])
        center = pick_center(volume, rng)
        indices = center[axis] + np.arange(-c, c + 1)
        clean = extract_planes(volume.array, axis=axis, indices=indices, center=center, crop=self.crop)
        if self.recorrupted:
            clean, target = self._recorrupt(volume, clean, rng, intensity=intensity, spatial=spatial,
                                            transform_seed=transform_seed)
        else:
            clean = _apply(intensity, clean, transform_seed)
            clean = _apply(spatial, clean, transform_seed + 1)
            target = None
        low, high = self.options["noise"]
        sigma = float(rng.uniform(low, high))
        if rng.random() < float(self.options["rician_probability"]):
            clean = np.clip(clean, 0, None)
            real = clean + rng.normal(0, sigma, clean.shape)
            imaginary = rng.normal(0, sigma, clean.shape)
            noisy = np.sqrt(real**2 + imaginary**2)
        else:
            noisy = clean + rng.normal(0, sigma, clean.shape)
        if target is None:  # clean targets: the (possibly clipped) centre slice the noise was added to
            target = clean[c : c + 1]
        inputs = make_denoise_inputs(noisy.astype(np.float32), axis=0, context=c)[c]
        baseline = inputs[c : c + 1]  # the noisy slice: what validation compares the model with
        return {"input": inputs, "target": target, "weight": np.ones_like(target), "baseline": baseline}

    def _recorrupt(self, volume, planes, rng, *, intensity, spatial, transform_seed) -> tuple[np.ndarray, np.ndarray]:
        """(input stack ``y + alpha z``, target slice ``y - z / alpha``), augmented alike.

        Both go through one call of each augmentation (the target as an extra
        channel), so they share the random contrast and orientation: flips,
        rotations, scaling and shifts are linear and keep the target unbiased
        and its noise uncorrelated with the input's; the gamma and histogram
        changes do so to first order in the noise.
        """
        c = self.context
        sigma = volume.info.get("noise_sigma")
        if sigma is None:
            raise InputError(f"{volume.path.name}: no noise estimate for recorrupted targets (normalise it with this pair maker)")
        alpha = float(self.options["alpha"])
        z = rng.normal(0, float(sigma), planes.shape).astype(np.float32)
        stack = np.concatenate([planes + alpha * z, planes[c : c + 1] - z[c : c + 1] / alpha], axis=0)
        stack = _apply(intensity, stack, transform_seed)
        stack = _apply(spatial, stack, transform_seed + 1)
        return stack[: 2 * c + 1], np.ascontiguousarray(stack[2 * c + 1 :])

    def input_spec(self) -> dict:
        from ..network_inputs.denoise import DENOISE_INPUT_SPEC

        return {**DENOISE_INPUT_SPEC, "context": self.context, "channels": self.in_channels}


# --------------------------------------------------------------------------- fill


class FillPairs(PairMaker):
    """Slices between neighbouring slices at fractional positions, from the volume's own data.

    A sample picks a gap ``g`` (2..``max_gap``) and a slice ``s`` strictly inside
    it: the ``context`` slices at and beyond each end of the gap are the input
    (built by :func:`~MedSynthLib.network_inputs.make_fill_inputs`, the
    task side's own builder), ``s / g`` the fraction, the slice at ``s`` the
    target. The network predicts a residual over linear interpolation (the
    fill convention), so each sample carries ``base``, the linear estimate, that
    the family adds to the network output. Thin axes (in-plane, or isotropic
    scans) teach what sharp anatomy looks like between slices; the model learns
    from every axis by default (option ``axes``: ``all``, ``thin`` = axes at most
    1.5x the finest spacing, or ``slice`` = the thickest axis only). The slices
    beyond each end of the gap are 1 slice apart (an isolated gap or slab) or a
    whole gap apart (a regular grid: x2, x4, upsampling), with probability
    ``regular_grid`` (default 0.5) for the latter; the input's offset channels say
    which, as at inference. Option ``noise: [low, high]`` adds Gaussian noise of
    a random standard deviation in that range (normalised units) to every
    slice, so a model trained on clean data does not learn to sharpen the noise
    of real scans (off by default).
    """

    task = "fill"
    families = ("unet", "gan", "diffusion")
    residual = True
    supports_field = True  # the fill task runs packages on whole slices
    defaults = {"max_gap": 4, "axes": "all", "noise": [0.0, 0.0], "regular_grid": 0.5}

    def __init__(self, options: Optional[dict] = None, *, crop: int = 64) -> None:
        super().__init__(options, crop=crop)
        share = self.options["regular_grid"]
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise InputError(f"fill task option regular_grid must be a number in [0, 1], got {share!r}")

    @property
    def context(self) -> int:
        from ..network_inputs.fill import FILL_CONTEXT

        return FILL_CONTEXT

    @property
    def in_channels(self) -> int:
        from ..network_inputs.fill import FILL_INPUT_SPEC

        return int(FILL_INPUT_SPEC["channels"])

    def normalise(self, volume: Volume) -> tuple[np.ndarray, dict]:
        from ..network_inputs.fill import FILL_PERCENTILES

        scale = robust_scale(volume.array, percentiles=FILL_PERCENTILES)
        return scale.forward(volume.array), {"low": scale.low, "high": scale.high}

    def sample(self, volume, rng, *, intensity=None, spatial=None, transform_seed=0, field=None):
        from ..network_inputs.fill import linear_estimate, make_fill_inputs

        if field is not None and spatial is not None:
            raise ValueError("field samples are validation samples: no spatial augmentation (it would move the scored box)")

        c = self.context
        axis = _choose_axis(volume, rng, self.options["axes"])
        length = volume.array.shape[axis]
        if length < 3:
            raise InputError(f"{volume.path.name}: fill training needs at least 3 slices along every axis used")
        gap = int(rng.integers(2, min(int(self.options["max_gap"]), length - 1) + 1))
        inner = int(rng.integers(1, gap))
        center = pick_center(volume, rng)
        position = int(np.clip(center[axis], inner, length - 1 - (gap - inner)))
        below, above = position - inner, position - inner + gap
        spacing = gap if rng.random() < float(self.options["regular_grid"]) else 1
        steps = spacing * np.arange(c)
        # past the ends of the volume the edge slice repeats (offset 0), as in the task's gather_context
        before_idx, after_idx = np.maximum(below - steps, 0), np.minimum(above + steps, length - 1)
        offsets = np.concatenate([below - before_idx[1:], after_idx[1:] - above]) / gap
        indices = np.concatenate([before_idx, after_idx, [position]])
        box = None
        if field is None:
            planes = extract_planes(volume.array, axis=axis, indices=indices, center=center, crop=self.crop)
        else:  # the same draws as a crop sample, so the scored voxels are those of the crop
            planes, box = extract_field(volume.array, axis=axis, indices=indices, center=center, crop=self.crop, field=field)
        planes = _apply(intensity, planes, transform_seed)
        planes = _apply(spatial, planes, transform_seed + 1)
        low, high = self.options["noise"]
        if high > 0:  # scanner noise on every slice (target included): learn the anatomy, not to sharpen noise
            planes = planes + rng.normal(0, float(rng.uniform(low, high)), planes.shape).astype(np.float32)
        before, after, target = planes[None, :c], planes[None, c : 2 * c], planes[2 * c :]
        fraction = inner / gap
        inputs = make_fill_inputs(before, after, fraction, offsets=offsets[None], context=c)[0]
        base = linear_estimate(before, after, fraction)
        pair = {"input": inputs, "target": target, "weight": np.ones_like(target), "base": base}
        if box is not None:
            pair["scored"] = np.asarray(box, dtype=np.int64)
        return pair

    def input_spec(self) -> dict:
        from ..network_inputs.fill import FILL_INPUT_SPEC

        return dict(FILL_INPUT_SPEC)


# --------------------------------------------------------------------------- lesion inpainting


class LesionInpaintPairs(PairMaker):
    """Lesion appearance from a mask and the surrounding tissue (2.5D).

    A sample is centred on a labelled lesion voxel; the lesion (slightly dilated
    or eroded at random, so the model does not learn the exact outline) is
    blanked in the centre slice and its ``context`` neighbours. Input channels:
    the blanked planes, then the centre mask; target: the centre slice. The loss
    weights the mask 1 and the rest ``outside_weight``.
    """

    task = "lesion-inpaint"
    families = ("unet", "gan", "diffusion")
    needs_labels = True
    defaults = {"context": 1, "outside_weight": 0.1, "lesion_probability": 0.95}

    @property
    def context(self) -> int:
        return int(self.options["context"])

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 2

    def sample(self, volume, rng, *, intensity=None, spatial=None, transform_seed=0):
        from scipy import ndimage

        c = self.context
        axis = int(np.argmax(volume.spacing_kji)) if rng.random() < 0.5 else int(rng.integers(3))
        center = pick_center(volume, rng, prefer="lesion", probability=float(self.options["lesion_probability"]))
        indices = center[axis] + np.arange(-c, c + 1)
        planes = extract_planes(volume.array, axis=axis, indices=indices, center=center, crop=self.crop)
        masks = extract_planes(volume.label.astype(np.float32), axis=axis, indices=indices, center=center, crop=self.crop)
        masks = masks > 0.5
        change = int(rng.integers(-1, 3))
        if change > 0:
            masks = np.stack([ndimage.binary_dilation(m, iterations=change) for m in masks])
        elif change < 0:
            eroded = np.stack([ndimage.binary_erosion(m) for m in masks])
            masks = eroded if eroded[c].any() else masks
        planes = _apply(intensity, planes, transform_seed)
        both = _apply(spatial, np.concatenate([planes, masks.astype(np.float32)]), transform_seed + 1)
        planes, masks = both[: 2 * c + 1], both[2 * c + 1 :] > 0.5
        blanked = np.where(masks, 0.0, planes).astype(np.float32)
        mask = masks[c : c + 1].astype(np.float32)
        inputs = np.concatenate([blanked, mask], axis=0)
        weight = np.where(mask > 0, 1.0, float(self.options["outside_weight"])).astype(np.float32)
        return {"input": inputs, "target": planes[c : c + 1], "weight": weight}

    def input_spec(self) -> dict:
        return {
            "format": "lesion-inpaint-2.5d",
            "version": 1,
            "context": self.context,
            "channels": self.in_channels,
            "layout": "N, C, H, W: 2*context+1 slices with the lesion mask region set to 0, then the centre mask (0/1)",
            "normalisation": {"kind": "robust_percentile", "percentiles": [0.5, 99.5]},
            "crop": self.crop,
            "output": "centre slice with the lesion painted in, normalised units",
        }

    def known(self, batch: dict):
        mask = batch["input"][:, -1:]
        centre = batch["input"][:, self.context : self.context + 1]
        return centre, 1.0 - mask


# --------------------------------------------------------------------------- lesion shapes


class LesionShapePairs(PairMaker):
    """3D lesion masks resampled to an isotropic patch, randomly rotated and scaled (VAE input = target).

    Lesions come from the label maps; each patch is resampled from the label's
    physical grid (so thick-slice scans give correctly proportioned shapes) at
    ``voxel_mm`` with a random rotation and scale, centred near the lesion's
    centre of mass plus a small jitter.
    """

    task = "lesion-shape"
    families = ("vae",)
    needs_labels = True
    spatial_dims = 3
    intensity_augment = False
    target_kind = "mask"
    defaults = {"voxel_mm": 1.0, "scale": [0.7, 1.4], "jitter_mm": 2.0}

    @property
    def in_channels(self) -> int:
        return 1

    def normalise(self, volume: Volume) -> tuple[np.ndarray, dict]:
        # shapes only: the image is not used; keep a tiny placeholder to save memory
        return np.zeros((1, 1, 1), dtype=np.float32), {}

    def sample(self, volume, rng, *, intensity=None, spatial=None, transform_seed=0):
        from scipy import ndimage

        lesions = volume.info.get("lesions")
        if lesions is None:  # once per volume (and worker): each lesion's bounding block and centre
            components, count = ndimage.label(volume.label)
            lesions = []
            for which, box in enumerate(ndimage.find_objects(components), start=1):
                mask = (components[box] == which).astype(np.float32)
                lesions.append((mask, np.array(ndimage.center_of_mass(mask))))
            volume.info["lesions"] = lesions
        mask, centre = lesions[int(rng.integers(len(lesions)))]
        spacing = np.asarray(volume.spacing_kji)
        rotation = _rotation(rng.uniform(-np.pi, np.pi, 3))
        scale = float(np.exp(rng.uniform(*np.log(self.options["scale"]))))
        n = self.crop
        grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2] * 3, indexing="ij"), -1).reshape(-1, 3)
        millimetres = grid * float(self.options["voxel_mm"]) / scale
        jitter = rng.normal(0, float(self.options["jitter_mm"]), 3)
        voxels = (millimetres @ rotation.T + jitter) / spacing + centre  # in the lesion's block
        patch = ndimage.map_coordinates(mask, voxels.T, order=1, mode="constant")
        patch = (patch.reshape(n, n, n) > 0.5).astype(np.float32)[None]
        patch = _apply(spatial, patch, transform_seed + 1)
        return {"input": patch, "target": patch.copy(), "weight": np.ones_like(patch)}

    def input_spec(self) -> dict:
        return {
            "format": "lesion-shape-3d",
            "version": 1,
            "channels": 1,
            "patch": self.crop,
            "voxel_mm": float(self.options["voxel_mm"]),
            "layout": "N, 1, D, H, W binary lesion mask, isotropic voxel_mm, lesion centred",
            "output": "reconstruction logits (sigmoid > 0.5 is the mask); decode N(0, I) latents to sample new shapes",
        }


def _rotation(angles: np.ndarray) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


PAIR_MAKERS: dict[str, type[PairMaker]] = {
    cls.task: cls for cls in (FillPairs, DenoisePairs, LesionShapePairs, LesionInpaintPairs)
}


def make_pair_maker(task: str, options: Optional[dict] = None, *, crop: int = 64) -> PairMaker:
    """The pair maker of ``task``; unknown tasks and options raise :class:`InputError`."""
    if task not in PAIR_MAKERS:
        raise InputError(f"unknown task {task!r}; tasks: {', '.join(PAIR_MAKERS)}")
    return PAIR_MAKERS[task](options, crop=crop)
