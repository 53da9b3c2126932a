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

import time
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["make_scheduler", "ddim_sample", "ddim_sample_batches", "sample_lesion_shapes", "to_diffusion_range",
           "from_diffusion_range", "size_multiple", "package_schedule"]


def to_diffusion_range(image: torch.Tensor) -> torch.Tensor:
    """Normalised units ([0, 1] for most tissue) to the [-1, 1] range the noise schedule assumes."""
    return image * 2.0 - 1.0


def from_diffusion_range(sample: torch.Tensor) -> torch.Tensor:
    return (sample + 1.0) / 2.0


def size_multiple(channels) -> int:
    """The spatial multiple a DiffusionModelUNet with these per-level ``channels`` needs (its downsamplings).

    Pass a package's ``builder_args["channels"]`` (the builder's default is 3 levels when absent).
    """
    return max(8, 2 ** (len(channels) - 1))


def package_schedule(loaded) -> dict:
    """A diffusion package's noise schedule (``training.scheduler``); :class:`ModelError` if it has none."""
    scheduler = loaded.metadata.get("training", {}).get("scheduler")
    if not scheduler:
        from ..errors import ModelError

        raise ModelError(f"model package {loaded.info.name} is a diffusion model without its noise schedule "
                         "(training.scheduler); retrain it with medsynth-train")
    return scheduler


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
                             known_mask=known_mask, generator=generator, multiple=multiple, shared_noise=shared_noise)
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


def ddim_sample_batches(
    network: torch.nn.Module,
    condition: np.ndarray,
    *,
    scheduler_settings: dict,
    steps: int,
    seed: int,
    device: Union[str, torch.device] = "auto",
    batch_size: int = 8,
    known: Optional[np.ndarray] = None,
    known_mask: Optional[np.ndarray] = None,
    multiple: int = 8,
    cancel=None,
    report_to=None,
) -> np.ndarray:
    """:func:`ddim_sample` over many items (arrays in, array out) on a device, with the engine's OOM policy.

    Every batch is sampled from the same noise (``shared_noise``, the generator reseeded with ``seed``
    for each batch), so a result does not depend on the batch size, on an out-of-memory retry with a
    smaller batch or on the device, and neighbouring slices of one volume get coherent samples.
    Mixed precision on CUDA, as the rest of the engine.

    Parameters
    ----------
    condition : ndarray, shape (N, C, H, W) or (N, C, D, H, W)
    known, known_mask : ndarray, shape (N, 1, ...), optional
        Data consistency, as in :func:`ddim_sample` (1 = known).
    report_to : EngineReport, optional
        Collects the device used, batch size, seconds and fallbacks.

    Returns
    -------
    ndarray, shape (N, 1, ...), float32, normalised units
    """
    from ..engine import EngineReport, autocast, run_with_fallback, select_device
    from ..progress import check_cancel

    engine = report_to if report_to is not None else EngineReport()
    engine.device_requested = str(device)
    arrays = [None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
              for a in (condition, known, known_mask)]
    condition_t, known_t, mask_t = arrays
    network.eval()

    def attempt(dev: torch.device, batch: int) -> np.ndarray:
        network.to(dev)
        engine.amp = dev.type == "cuda"
        outputs = []
        with torch.inference_mode(), autocast(dev, True):
            for first in range(0, len(condition_t), batch):
                check_cancel(cancel)
                part = slice(first, first + batch)
                sample = ddim_sample(
                    network, condition_t[part].to(dev), scheduler_settings=scheduler_settings, steps=int(steps),
                    known=None if known_t is None else known_t[part].to(dev),
                    known_mask=None if mask_t is None else mask_t[part].to(dev),
                    generator=torch.Generator().manual_seed(int(seed)), multiple=multiple, shared_noise=True)
                outputs.append(sample.float().cpu().numpy())
        return np.concatenate(outputs, axis=0)

    start = time.perf_counter()
    result = run_with_fallback(attempt, device=select_device(device), batch_size=batch_size, report_to=engine)
    engine.seconds += time.perf_counter() - start
    return result


@torch.no_grad()
def sample_lesion_shapes(network: torch.nn.Module, *, metadata: dict, count: int = 1, seed: int = 0) -> np.ndarray:
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
    patch = int(metadata["input"]["patch"])
    args = metadata["builder_args"]
    factor = 2 ** (len(args["channels"]) - 1)
    shape = (int(count), int(args["latent_channels"]), *([patch // factor] * int(args.get("spatial_dims", 3))))
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))
    logits = network.decode(latents)
    return (torch.sigmoid(logits)[:, 0] > 0.5).numpy().astype(bool)
