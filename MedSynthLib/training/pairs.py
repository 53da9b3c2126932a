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

from typing import Optional

import numpy as np

from ..errors import InputError, check_number
from ..intensity import robust_scale
from ..volume import Volume
from .lesion_pairs import LesionInpaintPairs, LesionShapePairs
from .pairs_base import PairMaker, _apply, _choose_axis, extract_field, extract_planes, pick_center

__all__ = ["PairMaker", "DenoisePairs", "FillPairs", "LesionInpaintPairs", "LesionShapePairs", "PAIR_MAKERS", "make_pair_maker"]



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
        check_number(self.options["alpha"], "task option alpha", low=0.0, low_open=True)
        if self.options["sigma"] is not None:
            check_number(self.options["sigma"], "task option sigma (null: estimate per volume)", low=0.0)

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
        check_number(self.options["regular_grid"], "fill task option regular_grid", low=0.0, high=1.0)

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


PAIR_MAKERS: dict[str, type[PairMaker]] = {
    cls.task: cls for cls in (FillPairs, DenoisePairs, LesionShapePairs, LesionInpaintPairs)
}


def make_pair_maker(task: str, options: Optional[dict] = None, *, crop: int = 64) -> PairMaker:
    """The pair maker of ``task``; unknown tasks and options raise :class:`InputError`."""
    if task not in PAIR_MAKERS:
        raise InputError(f"unknown task {task!r}; tasks: {', '.join(PAIR_MAKERS)}")
    return PAIR_MAKERS[task](options, crop=crop)
