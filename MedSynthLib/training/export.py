"""The end of a training run: the best weights written as a model package with their provenance."""

from __future__ import annotations

from pathlib import Path

import torch

from .._version import __version__
from ..engine import describe_device
from .checkpoints import _unwrap, load_checkpoint

__all__ = ["write_package"]


def write_package(config, family, pair_maker, modules, paths, best, command, device) -> Path:
    from ..models import save_package

    out = Path(config.out)
    network = family.build()["network"]
    best_file = out / "checkpoint_best.pt"
    if best_file.is_file():
        network.load_state_dict(load_checkpoint(best_file)["modules"]["network"])
    else:
        network.load_state_dict(_unwrap(modules["network"]).state_dict())
    builder, builder_args = family.builder()
    name = config.name or f"{config.task.replace('-', '_')}_{family.name}"
    training = {
        "command": command or "",
        "config": config.as_dict(),
        "data": [Path(p).name for p in paths],
        "seed": config.seed,
        "epochs": config.epochs,
        "best_epoch": best.get("epoch"),
        "device": describe_device(device),
        "medsynth": __version__,
        "torch": torch.__version__,
        **family.package_extra(),
    }
    try:
        import monai

        training["monai"] = monai.__version__
    except ImportError:  # pragma: no cover - monai is a dependency
        pass
    metrics = {k: round(float(v), 4) for k, v in best.items() if isinstance(v, (int, float))}
    description = config.description or f"{config.task} ({family.name}) trained on {len(paths)} volume(s) by medsynth-train"
    return save_package(
        network.cpu(),
        out / name,
        task=config.task,
        family=family.name,
        builder=builder,
        builder_args=builder_args,
        input_spec=pair_maker.input_spec(),
        training=training,
        metrics=metrics,
        description=description,
    )
