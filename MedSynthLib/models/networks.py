"""Network builders by name, so a model package can name its architecture in JSON.

A package stores ``{"builder": NAME, "builder_args": {...}}``; loading calls
``build_network(NAME, **args)`` and then fills in the weights. Only builders
registered here can be named, so a package can never make MedSynth run code
of its own.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import ModelError

__all__ = ["BUILDERS", "build_network", "register_builder"]

BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}


def register_builder(name: str) -> Callable[[Callable[..., torch.nn.Module]], Callable[..., torch.nn.Module]]:
    """Decorator adding a builder under ``name`` (names are unique)."""

    def decorate(function: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if name in BUILDERS:
            raise ValueError(f"network builder {name!r} is registered twice")
        BUILDERS[name] = function
        return function

    return decorate


@register_builder("basic_unet")
def _basic_unet(
    *,
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 1,
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16),
    act: Any = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
    norm: Any = ("instance", {"affine": True}),
    dropout: float = 0.0,
) -> torch.nn.Module:
    """MONAI BasicUNet: a compact, fully convolutional U-Net (any input size divisible by 16)."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=tuple(features),
        act=_tupleize(act),
        norm=_tupleize(norm),
        dropout=dropout,
    )


class _SkipUNet(torch.nn.Module):
    """BasicUNet whose output is added to one of its input channels: ``y = x[:, skip] + unet(x)``."""

    def __init__(self, unet: torch.nn.Module, skip_channel: int) -> None:
        super().__init__()
        self.unet = unet
        self.skip_channel = int(skip_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, out, H, W): input channel ``skip_channel`` plus the U-Net's correction."""
        return x[:, self.skip_channel : self.skip_channel + 1] + self.unet(x)


@register_builder("residual_unet")
def _residual_unet(*, skip_channel: int = 0, **unet_args: Any) -> torch.nn.Module:
    """A :func:`basic_unet <_basic_unet>` that predicts a correction to one input channel.

    For denoising the skip channel is the noisy centre slice: the output is still
    the clean slice (the denoise contract), but an untrained network is the
    identity and training only has to learn the noise, which converges much faster.
    """
    in_channels = int(unet_args.get("in_channels", 1))
    if not 0 <= int(skip_channel) < in_channels:
        raise ValueError(f"skip_channel must be an input channel in [0, {in_channels - 1}], got {skip_channel}")
    return _SkipUNet(_basic_unet(**unet_args), skip_channel)


@register_builder("autoencoder_kl")
def _autoencoder_kl(
    *,
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 1,
    channels: tuple[int, ...] = (16, 32, 32),
    latent_channels: int = 4,
    num_res_blocks: int = 1,
    norm_num_groups: int = 8,
    attention_levels: tuple[bool, ...] | None = None,
) -> torch.nn.Module:
    """MONAI AutoencoderKL: the VAE of the ``vae`` family (lesion shapes); channels divisible by the groups.

    Attention is off by default: lesion masks are small and the attention blocks
    cost more memory than they add at this size.
    """
    from monai.networks.nets import AutoencoderKL

    levels = tuple(attention_levels) if attention_levels is not None else (False,) * len(channels)
    return AutoencoderKL(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        latent_channels=latent_channels,
        num_res_blocks=num_res_blocks,
        norm_num_groups=norm_num_groups,
        attention_levels=levels,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


@register_builder("diffusion_unet")
def _diffusion_unet(
    *,
    spatial_dims: int = 2,
    in_channels: int = 2,
    out_channels: int = 1,
    channels: tuple[int, ...] = (32, 64, 64),
    attention_levels: tuple[bool, ...] = (False, False, True),
    num_res_blocks: int = 1,
    norm_num_groups: int = 8,
    num_head_channels: int = 16,
) -> torch.nn.Module:
    """MONAI DiffusionModelUNet: the noise predictor of the ``diffusion`` family.

    Conditioning is by concatenation: ``in_channels`` = 1 noisy channel + the
    task's context channels, so no cross-attention is needed.
    """
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        attention_levels=tuple(attention_levels),
        num_res_blocks=num_res_blocks,
        norm_num_groups=norm_num_groups,
        num_head_channels=num_head_channels,
    )


@register_builder("patch_discriminator")
def _patch_discriminator(
    *,
    spatial_dims: int = 2,
    in_channels: int = 1,
    channels: int = 32,
    num_layers_d: int = 3,
) -> torch.nn.Module:
    """MONAI PatchDiscriminator: the critic of the ``gan`` family (instance norm: small batches)."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        channels=channels,
        num_layers_d=num_layers_d,
        norm="INSTANCE",
    )


def _tupleize(value: Any) -> Any:
    """JSON turns tuples into lists; MONAI's layer factories want (name, args) tuples."""
    if isinstance(value, list):
        return tuple(value)
    return value


def build_network(name: str, **builder_args: Any) -> torch.nn.Module:
    """Build the registered network ``name`` with ``builder_args``.

    Raises
    ------
    ModelError
        Unknown builder, or arguments it does not accept.
    """
    if name not in BUILDERS:
        raise ModelError(f"unknown network builder {name!r}; known: {', '.join(sorted(BUILDERS))}")
    try:
        return BUILDERS[name](**builder_args)
    except (TypeError, ValueError) as error:
        raise ModelError(f"network builder {name!r} refused its arguments {builder_args}: {error}") from None
