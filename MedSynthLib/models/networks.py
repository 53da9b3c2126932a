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
