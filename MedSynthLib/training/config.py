"""Training configuration: a YAML file, overridden by command-line options.

Every key of :class:`TrainConfig` may appear in the YAML file; an unknown key
is an error (a typo must not silently train with defaults).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError, check_number, check_whole_number

__all__ = ["TrainConfig", "load_config"]


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in the run folder and in the package).

    Parameters
    ----------
    task : {"fill", "denoise", "lesion-shape", "lesion-inpaint"}
    data, labels : list of str
        Folders or glob patterns of volumes (labels paired with images in sorted order).
    out : str
        Run folder: checkpoints, logs, and the package ``NAME.json`` + ``NAME.safetensors``.
    family : str, optional
        ``unet``, ``gan``, ``vae`` or ``diffusion``; default: the task's first family.
    samples_per_epoch : int
        Random crops drawn per epoch (an "epoch" is this many samples, not a pass over the data).
    augment : float
        Strength of the intensity/contrast randomisation (0 = off, 1 = default, 2 = very heavy).
    spacing : list of 3 float, optional
        Resample every volume (bilinear) and label map (nearest) to this spacing
        in mm, (i, j, k) order, at load (MONAI ``Spacing``). None keeps each scan's grid.
    resample_each_epoch : bool
        True (default): every epoch draws new crops. False: the same
        ``samples_per_epoch`` crops every epoch (a fixed dataset, e.g. to check
        that a configuration can overfit).
    task_options, network, loss : dict
        Options of the task's pair maker, the family's network size, and the loss weights.
    amp : bool
        Mixed precision: float16 autocast with gradient scaling on CUDA,
        bfloat16 autocast on a CPU that computes it natively (AVX512-BF16 or
        AMX); elsewhere float32 with a warning (emulated bfloat16 is slower).
    threads : int, optional
        CPU threads for torch (``torch.set_num_threads``); None leaves torch's default.
    val_field : int, optional
        In-plane side (voxels) of the region validation predicts around each
        validation crop, inside the plane; only the crop's voxels inside the
        plane are scored. 0 takes the whole plane (how the fill task runs a
        package). None: the family's choice: 128 for ``diffusion`` on fill (a
        DDIM sample depends on how much of the plane the sampler sees), the
        crop itself for every other pair, which refuse a value.
    """

    task: str = ""
    data: list = field(default_factory=list)
    out: str = ""
    labels: Optional[list] = None
    family: Optional[str] = None
    epochs: int = 10
    batch_size: int = 8
    lr: float = 2e-4
    crop: int = 64
    samples_per_epoch: int = 512
    val_fraction: float = 0.2
    val_samples: int = 32
    val_field: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    num_workers: int = 0
    augment: float = 1.0
    spacing: Optional[list] = None
    resample_each_epoch: bool = True
    task_options: dict = field(default_factory=dict)
    network: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    name: Optional[str] = None
    description: str = ""
    threads: Optional[int] = None
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.labels, str):
            self.labels = [self.labels]

    def validate(self) -> None:
        """Raise :class:`InputError` for values no run can use (before anything is loaded)."""
        if not self.task:
            raise InputError("no task given")
        if not self.data:
            raise InputError("no training data given: pass --data DIR_OR_GLOB (or `data:` in the config)")
        if not self.out:
            raise InputError("no output folder given: pass --out DIR")
        for name in ("epochs", "batch_size", "samples_per_epoch", "val_samples", "crop"):
            check_whole_number(getattr(self, name), name, low=1, high=10**9)
        if self.samples_per_epoch < self.batch_size:
            raise InputError(f"samples_per_epoch ({self.samples_per_epoch}) must be at least batch_size ({self.batch_size})")
        if self.val_field is not None:
            check_whole_number(self.val_field, "val_field", low=0, high=10**6)  # 0: whole planes; null: the crop
        check_number(self.val_fraction, "val_fraction", low=0.0, high=1.0, high_open=True)
        check_number(self.lr, "lr", low=0.0, low_open=True)
        check_number(self.augment, "augment", low=0.0)
        if self.spacing is not None and (
            not isinstance(self.spacing, (list, tuple)) or len(self.spacing) != 3 or any(float(v) <= 0 for v in self.spacing)
        ):
            raise InputError(f"spacing must be three positive numbers (mm, i j k), got {self.spacing!r}")
        check_whole_number(self.num_workers, "num_workers", low=0, high=1024)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**mapping)


def load_config(path: str | Path, *, overrides: Optional[dict[str, Any]] = None) -> TrainConfig:
    """Read a YAML config and apply ``overrides`` (keys whose value is None are ignored)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        mapping = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise InputError(f"config file {path.name} is not valid YAML: {error}") from None
    if not isinstance(mapping, dict):
        raise InputError(f"config file {path.name} must hold a mapping of keys to values")
    mapping = {key.replace("-", "_"): value for key, value in mapping.items()}
    for key, value in (overrides or {}).items():
        if value is not None:
            mapping[key] = value
    return TrainConfig.from_mapping(mapping, source=path.name)
