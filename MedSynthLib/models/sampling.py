"""DDIM sampling for ``diffusion`` packages, with data consistency; decoding of lesion-shape VAE packages.

Shared by validation during training and by tasks that load a diffusion
package: the network predicts the noise of its first input channel given the
conditioning channels concatenated after it; sampling runs a
:class:`monai.networks.schedulers.DDIMScheduler` on the training schedule.
Data consistency: where ``known_mask`` is 1, the sample is replaced at every
step by the known values noised to that step's level, so known voxels (the
tissue around a lesion being inpainted) come out as given and the generated
region blends into them.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["make_scheduler", "ddim_sample", "sample_lesion_shapes", "to_diffusion_range", "from_diffusion_range"]


def to_diffusion_range(image: torch.Tensor) -> torch.Tensor:
    """Normalised units ([0, 1] for most tissue) to the [-1, 1] range the noise schedule assumes."""
    return image * 2.0 - 1.0


def from_diffusion_range(sample: torch.Tensor) -> torch.Tensor:
    return (sample + 1.0) / 2.0


def make_scheduler(kind: str, settings: dict):
    """A MONAI DDPM (training) or DDIM (sampling) scheduler from a package's scheduler settings."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    common = {
        "num_train_timesteps": int(settings.get("num_train_timesteps", 1000)),
        "schedule": settings.get("schedule", "linear_beta"),
        "clip_sample": False,
        "prediction_type": settings.get("prediction_type", "epsilon"),
    }
    if kind == "ddpm":
        return DDPMScheduler(**common)
    return DDIMScheduler(**common)


@torch.no_grad()
def ddim_sample(
    network: torch.nn.Module,
    condition: torch.Tensor,
    *,
    scheduler_settings: dict,
    steps: int = 20,
    known: Optional[torch.Tensor] = None,
    known_mask: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    multiple: int = 8,
    shared_noise: bool = False,
) -> torch.Tensor:
    """Sample the target channel given ``condition`` (N, C, ...); returns (N, 1, ...) in normalised units.

    Parameters
    ----------
    condition : Tensor, shape (N, C, H, W) or (N, C, D, H, W)
        The task's input channels (what the unet family would see).
    steps : int
        DDIM steps (10-50 is the useful range: fewer is faster, more is sharper).
    known, known_mask : Tensor, shape (N, 1, ...), optional
        Target values that are known (normalised units) and where (1 = known).
    generator : torch.Generator, optional
        Makes the sample reproducible.
    multiple : int
        Spatial sizes are padded (edge values) to a multiple of this for the
        U-Net's down/up-sampling, and the result cropped back.
    shared_noise : bool
        Draw one noise image and use it for every item of the batch (initial
        sample and data-consistency noise alike). Neighbouring slices of one
        volume then start from the same noise, and DDIM (deterministic from its
        start) turns similar conditions into similar samples: a 2.5D model
        paints a lesion that is coherent from slice to slice.
    """
    spatial = tuple(condition.shape[2:])
    pads = [(-size) % int(multiple) for size in spatial]
    if any(pads):
        import torch.nn.functional as F

        padding = [amount for pad in reversed(pads) for amount in (0, pad)]
        mode = "replicate"
        condition = F.pad(condition, padding, mode=mode)
        if known is not None:
            known = F.pad(known, padding, mode=mode)
        if known_mask is not None:
            known_mask = F.pad(known_mask, padding, mode="constant", value=0.0)
        sample = ddim_sample(network, condition, scheduler_settings=scheduler_settings, steps=steps, known=known,
                             known_mask=known_mask, generator=generator, multiple=multiple)
        return sample[(slice(None), slice(None), *[slice(0, size) for size in spatial])]
    scheduler = make_scheduler("ddim", scheduler_settings)
    scheduler.set_timesteps(num_inference_steps=int(steps), device=condition.device)
    shape = (condition.shape[0], 1, *condition.shape[2:])
    drawn = (1, *shape[1:]) if shared_noise else shape

    def draw() -> torch.Tensor:  # on the CPU, so a seed gives the same noise on every device
        return torch.randn(drawn, generator=generator, device="cpu").expand(shape).contiguous().to(condition.device, condition.dtype)

    sample = draw()
    known_scaled = to_diffusion_range(known) if known is not None else None
    timesteps = list(scheduler.timesteps)
    for index, t in enumerate(timesteps):
        if known_scaled is not None and known_mask is not None:
            noise = draw()
            level = torch.full((shape[0],), int(t), device=condition.device, dtype=torch.long)
            noised = scheduler.add_noise(known_scaled, noise, level)
            sample = known_mask * noised + (1 - known_mask) * sample
        batch_t = torch.full((shape[0],), int(t), device=condition.device, dtype=torch.long)
        predicted = network(torch.cat([sample, condition], dim=1), batch_t)
        sample, _ = scheduler.step(predicted, int(t), sample)
    if known_scaled is not None and known_mask is not None:
        sample = known_mask * known_scaled + (1 - known_mask) * sample
    return from_diffusion_range(sample)


@torch.no_grad()
def sample_lesion_shapes(network: torch.nn.Module, *, metadata: dict, count: int = 1, seed: int = 0) -> "np.ndarray":
    """New lesion masks from a ``lesion-shape`` VAE package: decode latents drawn from N(0, I).

    Parameters
    ----------
    network : torch.nn.Module
        The package's AutoencoderKL (``load_package(path, task="lesion-shape").network``).
    metadata : dict
        The package metadata (its ``input`` spec gives the patch size and voxel size).
    count, seed : int
        How many shapes, and the seed that makes them reproducible.

    Returns
    -------
    ndarray of bool, shape (count, P, P, P)
        Masks on an isotropic grid of ``metadata["input"]["voxel_mm"]`` mm, lesion centred.
    """
    import numpy as np

    patch = int(metadata["input"]["patch"])
    args = metadata["builder_args"]
    factor = 2 ** (len(args["channels"]) - 1)
    shape = (int(count), int(args["latent_channels"]), *([patch // factor] * int(args.get("spatial_dims", 3))))
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))
    logits = network.decode(latents)
    return (torch.sigmoid(logits)[:, 0] > 0.5).numpy().astype(bool)
