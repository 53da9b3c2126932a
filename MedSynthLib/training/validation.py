"""Validation of a training run: PSNR/SSIM (or Dice for masks) on fixed validation crops, every epoch."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .config import TrainConfig
from .families import Family
from .pairs import PairMaker

__all__ = ["validate"]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _scored_crop(prediction: torch.Tensor, batch: dict, scored: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The crop of a field sample (a batch of one; ``scored`` is its box) that validation scores."""
    r0, r1, c0, c1 = (int(v) for v in scored.reshape(-1, 4)[0].tolist())
    window = (Ellipsis, slice(r0, r1), slice(c0, c1))
    return prediction[window], {key: value[window] for key, value in batch.items()}


def _validation_field(config: TrainConfig, family: Family, pair_maker: PairMaker) -> Optional[int]:
    """In-plane side of the region validation predicts around each crop (None: the crop itself)."""
    if not pair_maker.supports_field or family.val_field is None:
        return None
    return int(family.val_field if config.val_field is None else config.val_field)


@torch.no_grad()
def validate(family: Family, network: torch.nn.Module, batches: list[dict], device: torch.device, seed: int) -> dict:
    """PSNR (dB, data range 1, pooled MSE over the weighted voxels of all crops) and SSIM, or Dice for masks.

    Field samples (``config.val_field``) are predicted on their whole region and
    scored on their crop's voxels inside the plane only.
    """
    from monai.losses import SSIMLoss

    was_training = network.training
    network.eval()
    generator = torch.Generator().manual_seed(int(seed))
    psnrs, ssims, dices, l1s, baselines = [], [], [], [], []  # psnrs/baselines hold per-crop MSEs
    for batch in batches:
        batch = _to_device(batch, device)
        scored = batch.pop("scored", None)
        prediction = family.predict(network, batch, generator=generator).float()
        if scored is not None:
            prediction, batch = _scored_crop(prediction, batch, scored)
        target, weight = batch["target"], batch["weight"]
        region = weight >= 1
        if family.pair_maker.target_kind == "mask":
            binary = prediction > 0.5
            truth = target > 0.5
            dims = tuple(range(1, target.dim()))
            intersection = (binary & truth).sum(dims).float()
            total = binary.sum(dims).float() + truth.sum(dims).float()
            dices += (2 * intersection / total.clamp_min(1)).tolist()
            continue
        for index in range(target.shape[0]):
            voxels = region[index]
            error = (prediction[index] - target[index])[voxels]
            mse = float((error**2).mean()) if error.numel() else 0.0
            psnrs.append(mse)
            reference = batch.get("baseline", batch.get("base"))  # linear interpolation (fill), noisy input (denoise)
            if reference is not None:
                base_error = (reference[index] - target[index])[voxels]
                baselines.append(float((base_error**2).mean()))
            l1s.append(float(error.abs().mean()) if error.numel() else 0.0)
        size = min(target.shape[2:])
        ssim_loss = SSIMLoss(spatial_dims=family.pair_maker.spatial_dims, data_range=1.0, win_size=min(7, size - (1 - size % 2)))
        ssims.append(1.0 - float(ssim_loss(prediction.clamp(-0.5, 1.5), target)))
    if was_training:
        network.train()
    if dices:
        return {"dice": float(np.mean(dices)), "score": float(np.mean(dices))}
    # PSNR of the pooled mean squared error: a mean of per-crop PSNRs would be ruled by the easy crops
    # (flat background, 60 dB) and punish tiny offsets there more than real errors in anatomy
    psnr = float(10 * np.log10(1.0 / max(float(np.mean(psnrs)), 1e-10)))
    metrics = {"psnr": psnr, "ssim": float(np.mean(ssims)), "l1": float(np.mean(l1s)), "score": psnr}
    if baselines:
        metrics["psnr_baseline"] = float(10 * np.log10(1.0 / max(float(np.mean(baselines)), 1e-10)))
    return metrics
