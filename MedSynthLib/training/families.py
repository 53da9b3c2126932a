"""Model families: which networks a run trains, its losses, one optimisation step, and prediction.

* ``unet``: MONAI BasicUNet regression, loss = weighted L1 + ``ssim_weight`` x (1 - SSIM) (MONAI SSIMLoss).
* ``gan``: the same U-Net as generator plus a MONAI PatchDiscriminator that sees
  (input, output) pairs; generator loss = the unet loss + ``adv_weight`` x
  MONAI's least-squares PatchAdversarialLoss. Only the generator is packaged.
* ``vae``: MONAI AutoencoderKL, loss = reconstruction (BCE for masks, L1 for
  images) + ``kl_weight`` x KL divergence.
* ``diffusion``: MONAI DiffusionModelUNet conditioned by concatenating the
  task's input channels, trained with a DDPM noise schedule (noise prediction,
  MSE); predictions sample with DDIM and data consistency (:mod:`MedSynthLib.models.sampling`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..errors import InputError
from .pairs import PairMaker
from ..models.sampling import ddim_sample, make_scheduler, size_multiple, to_diffusion_range

__all__ = ["FAMILIES", "Family", "make_family", "valid_pairs"]

DEFAULT_NETWORKS: dict[str, dict[str, Any]] = {
    "unet": {"features": [16, 16, 32, 64, 128, 16]},
    "gan": {"features": [16, 16, 32, 64, 128, 16], "discriminator_channels": 32, "discriminator_layers": 3},
    "vae": {"channels": [16, 32, 32], "latent_channels": 4, "norm_num_groups": 8, "num_res_blocks": 1},
    "diffusion": {
        "channels": [32, 64, 64],
        "attention_levels": [False, False, True],
        "norm_num_groups": 8,
        "num_head_channels": 16,
        "num_res_blocks": 1,
    },
}

DEFAULT_LOSS: dict[str, Any] = {
    "ssim_weight": 0.2,
    "adv_weight": 0.01,
    "kl_weight": 1e-4,
    "num_train_timesteps": 1000,
    "schedule": "linear_beta",
    "val_ddim_steps": 10,
}


def _with_base(output: torch.Tensor, batch: dict) -> torch.Tensor:
    """Network output plus the sample's ``base`` (the linear estimate fill residuals are added to)."""
    base = batch.get("base")
    return output if base is None else output + base


def _zero_last_conv(network: torch.nn.Module) -> None:
    """Start a residual model at exactly its baseline (zero residual: fill starts as linear interpolation)."""
    last = None
    for module in network.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            last = module
    if last is not None:
        torch.nn.init.zeros_(last.weight)
        if last.bias is not None:
            torch.nn.init.zeros_(last.bias)


def _weighted_l1(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return ((prediction - target).abs() * weight).sum() / weight.sum().clamp_min(1e-6)


class Family:
    """Base class: build the networks, the optimisers, one training step and a prediction."""

    name = ""
    #: In-plane side of the region validation predicts around each crop (the crop alone is scored)
    #: when the config leaves ``val_field`` unset; None: the crop itself.
    val_field: Optional[int] = None

    def __init__(self, pair_maker: PairMaker, *, network: Optional[dict] = None, loss: Optional[dict] = None, lr: float = 2e-4) -> None:
        self.pair_maker = pair_maker
        self.network_options = {**DEFAULT_NETWORKS[self.name], **(network or {})}
        unknown = sorted(set(loss or {}) - set(DEFAULT_LOSS))
        if unknown:
            raise InputError(f"unknown loss option(s) {', '.join(unknown)}; known: {', '.join(sorted(DEFAULT_LOSS))}")
        self.loss_options = {**DEFAULT_LOSS, **(loss or {})}
        self.lr = float(lr)
        self._ssim = None

    # the package's network
    def builder(self) -> tuple[str, dict]:
        raise NotImplementedError

    def build(self) -> dict[str, torch.nn.Module]:
        from ..models import build_network

        name, args = self.builder()
        network = build_network(name, **args)
        if self.pair_maker.residual or self.pair_maker.skip_channel is not None:
            _zero_last_conv(network)
        return {"network": network}

    def optimisers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"network": torch.optim.AdamW(modules["network"].parameters(), lr=self.lr, weight_decay=1e-4)}

    def package_extra(self) -> dict:
        """Extra provenance written to the package's ``training`` dict (e.g. the noise schedule)."""
        return {}

    def _ssim_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._ssim is None:
            from monai.losses import SSIMLoss

            size = min(prediction.shape[2:])
            self._ssim = SSIMLoss(spatial_dims=self.pair_maker.spatial_dims, data_range=1.0, win_size=min(7, size - (1 - size % 2)))
        return self._ssim(prediction.float(), target.float())

    def regression_loss(self, prediction, target, weight) -> tuple[torch.Tensor, dict]:
        l1 = _weighted_l1(prediction.float(), target, weight)
        ssim = self._ssim_loss(prediction, target) if self.loss_options["ssim_weight"] > 0 else torch.zeros(())
        return l1 + self.loss_options["ssim_weight"] * ssim, {"l1": float(l1.detach()), "ssim_loss": float(ssim.detach())}

    def train_step(self, modules, optimisers, batch, *, scaler, autocast) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, network: torch.nn.Module, batch: dict, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The family's output for ``batch["input"]``, in the target's units ([0, 1] for masks)."""
        return _with_base(network(batch["input"]), batch)


def _step(loss: torch.Tensor, optimiser: torch.optim.Optimizer, scaler, parameters) -> None:
    optimiser.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimiser)
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    scaler.step(optimiser)
    scaler.update()


class UNetFamily(Family):
    name = "unet"

    def __init__(self, pair_maker: PairMaker, **options: Any) -> None:
        super().__init__(pair_maker, **options)
        if pair_maker.crop < 32 or pair_maker.crop % 16:
            raise InputError(
                f"the {self.name} family (BasicUNet, 4 poolings) needs crops that are a multiple of 16 "
                f"and at least 32 voxels; got crop {pair_maker.crop}"
            )

    def builder(self) -> tuple[str, dict]:
        args = {
            "spatial_dims": self.pair_maker.spatial_dims,
            "in_channels": self.pair_maker.in_channels,
            "out_channels": 1,
            "features": list(self.network_options["features"]),
        }
        if "norm" in self.network_options:  # e.g. None: no normalisation, so crops and whole planes behave alike
            args["norm"] = self.network_options["norm"]
        if self.pair_maker.skip_channel is not None:
            return "residual_unet", {**args, "skip_channel": int(self.pair_maker.skip_channel)}
        return "basic_unet", args

    def train_step(self, modules, optimisers, batch, *, scaler, autocast):
        network = modules["network"]
        with autocast():
            prediction = _with_base(network(batch["input"]), batch)
        loss, parts = self.regression_loss(prediction, batch["target"], batch["weight"])
        _step(loss, optimisers["network"], scaler, network.parameters())
        return {"loss": float(loss.detach()), **parts}


class GanFamily(UNetFamily):
    name = "gan"

    def build(self):
        from ..models import build_network

        modules = super().build()
        modules["discriminator"] = build_network(
            "patch_discriminator",
            spatial_dims=self.pair_maker.spatial_dims,
            in_channels=self.pair_maker.in_channels + 1,
            channels=int(self.network_options["discriminator_channels"]),
            num_layers_d=int(self.network_options["discriminator_layers"]),
        )
        return modules

    def optimisers(self, modules):
        return {
            "network": torch.optim.AdamW(modules["network"].parameters(), lr=self.lr, betas=(0.5, 0.999)),
            "discriminator": torch.optim.AdamW(modules["discriminator"].parameters(), lr=self.lr, betas=(0.5, 0.999)),
        }

    def train_step(self, modules, optimisers, batch, *, scaler, autocast):
        from monai.losses import PatchAdversarialLoss

        adversarial = PatchAdversarialLoss(criterion="least_squares")
        generator, critic = modules["network"], modules["discriminator"]
        inputs = batch["input"]
        with autocast():
            fake = _with_base(generator(inputs), batch)
            fake_score = critic(torch.cat([inputs, fake], 1))[-1]
        regression, parts = self.regression_loss(fake, batch["target"], batch["weight"])
        gen_adv = adversarial(fake_score.float(), target_is_real=True, for_discriminator=False)
        loss = regression + self.loss_options["adv_weight"] * gen_adv
        _step(loss, optimisers["network"], scaler, generator.parameters())
        with autocast():
            real_score = critic(torch.cat([inputs, batch["target"]], 1))[-1]
            fake_score = critic(torch.cat([inputs, fake.detach()], 1))[-1]
        critic_loss = 0.5 * (
            adversarial(real_score.float(), target_is_real=True, for_discriminator=True)
            + adversarial(fake_score.float(), target_is_real=False, for_discriminator=True)
        )
        _step(critic_loss, optimisers["discriminator"], scaler, critic.parameters())
        return {"loss": regression.item(), "generator_adv": gen_adv.item(), "discriminator": critic_loss.item(), **parts}


class VaeFamily(Family):
    name = "vae"

    def builder(self):
        return "autoencoder_kl", {
            "spatial_dims": self.pair_maker.spatial_dims,
            "in_channels": self.pair_maker.in_channels,
            "out_channels": 1,
            "channels": list(self.network_options["channels"]),
            "latent_channels": int(self.network_options["latent_channels"]),
            "norm_num_groups": int(self.network_options["norm_num_groups"]),
            "num_res_blocks": int(self.network_options["num_res_blocks"]),
        }

    def train_step(self, modules, optimisers, batch, *, scaler, autocast):
        network = modules["network"]
        with autocast():
            reconstruction, mu, sigma = network(batch["input"])
        reconstruction = reconstruction.float()
        if self.pair_maker.target_kind == "mask":
            recon = F.binary_cross_entropy_with_logits(reconstruction, batch["target"], weight=batch["weight"])
        else:
            recon = _weighted_l1(reconstruction, batch["target"], batch["weight"])
        dims = list(range(1, mu.dim()))
        kl = 0.5 * torch.sum(mu.float() ** 2 + sigma.float() ** 2 - torch.log(sigma.float() ** 2 + 1e-8) - 1, dim=dims).mean()
        loss = recon + self.loss_options["kl_weight"] * kl
        _step(loss, optimisers["network"], scaler, network.parameters())
        return {"loss": recon.item(), "total": loss.item(), "kl": kl.item()}

    @torch.no_grad()
    def predict(self, network, batch, *, generator=None):
        core = getattr(network, "module", network)
        mu, _ = core.encode(batch["input"])
        out = core.decode(mu)
        return torch.sigmoid(out) if self.pair_maker.target_kind == "mask" else out


class DiffusionFamily(Family):
    name = "diffusion"
    # A DDIM sample depends on how much of the plane the sampler sees, not only on the voxels scored:
    # GroupNorm and self-attention work on the whole input, the noise estimate is worst at the image's own
    # scale (only ~44 % of a constant noise offset comes through), and DDIM's first step divides that error
    # by sqrt(alpha_bar) ~ 0.006. The same 16 validation crops (32x32) of fill_diffusion_small, seeds 0/1/2:
    # -4.7/-5.6/-3.2 dB sampled as crops, 7.9/6.2/7.2 from 64x64 fields, 17.2/15.7/16.3 from 128x128 and
    # 16.4/15.3/16.0 from whole planes (how fill runs a package; 7x slower than 128). So fill validation
    # samples 128x128 fields around its crops and scores the crops.
    val_field = 128

    def scheduler_settings(self) -> dict:
        return {
            "num_train_timesteps": int(self.loss_options["num_train_timesteps"]),
            "schedule": self.loss_options["schedule"],
            "prediction_type": "epsilon",
        }

    def builder(self):
        options = self.network_options
        return "diffusion_unet", {
            "spatial_dims": self.pair_maker.spatial_dims,
            "in_channels": 1 + self.pair_maker.in_channels,
            "out_channels": 1,
            "channels": list(options["channels"]),
            "attention_levels": list(options["attention_levels"]),
            "norm_num_groups": int(options["norm_num_groups"]),
            "num_head_channels": int(options["num_head_channels"]),
            "num_res_blocks": int(options["num_res_blocks"]),
        }

    def package_extra(self) -> dict:
        return {"scheduler": self.scheduler_settings(), "sampling": "DDIM, data consistency on known voxels (MedSynthLib.models.sampling.ddim_sample)"}

    def train_step(self, modules, optimisers, batch, *, scaler, autocast):
        network = modules["network"]
        scheduler = getattr(self, "_ddpm", None)
        if scheduler is None:
            scheduler = self._ddpm = make_scheduler("ddpm", self.scheduler_settings())
        base = batch.get("base")
        target = to_diffusion_range(batch["target"] if base is None else batch["target"] - base + 0.5)
        noise = torch.randn_like(target)
        steps = torch.randint(0, scheduler.num_train_timesteps, (target.shape[0],), device=target.device)
        noisy = scheduler.add_noise(original_samples=target, noise=noise, timesteps=steps)
        with autocast():
            predicted = network(torch.cat([noisy, batch["input"]], 1), steps)
        loss = F.mse_loss(predicted.float(), noise)
        _step(loss, optimisers["network"], scaler, network.parameters())
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, network, batch, *, generator=None):
        known = self.pair_maker.known(batch)
        base = batch.get("base")
        sample = ddim_sample(
            network,
            batch["input"],
            scheduler_settings=self.scheduler_settings(),
            steps=int(self.loss_options["val_ddim_steps"]),
            known=None if known is None else known[0],
            known_mask=None if known is None else known[1],
            generator=generator,
            # validation fields (whole planes) have any size: pad to what the U-Net's downsamplings need
            multiple=size_multiple(self.network_options["channels"]),
        )
        return sample if base is None else sample - 0.5 + base


FAMILIES: dict[str, type[Family]] = {cls.name: cls for cls in (UNetFamily, GanFamily, VaeFamily, DiffusionFamily)}


def valid_pairs() -> dict[str, tuple[str, ...]]:
    """Task -> the families it can be trained with."""
    from .pairs import PAIR_MAKERS

    return {task: maker.families for task, maker in PAIR_MAKERS.items()}


def make_family(name: str, pair_maker: PairMaker, **options: Any) -> Family:
    """The family ``name`` for ``pair_maker``'s task; refuses pairs the task does not support."""
    if name not in FAMILIES:
        raise InputError(f"unknown family {name!r}; families: {', '.join(FAMILIES)}")
    if name not in pair_maker.families:
        raise InputError(
            f"task {pair_maker.task!r} cannot be trained with family {name!r}; "
            f"it supports: {', '.join(pair_maker.families)}"
        )
    return FAMILIES[name](pair_maker, **options)
