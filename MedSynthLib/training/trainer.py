"""The training loop: validation, checkpoints, exact resume, DDP, AMP, logs, and the final package.

Run folder layout (``config.out``)::

    run.json              task, family, config (checked by --resume)
    checkpoint_last.pt    model(s), optimiser(s), scheduler, scaler, RNG states, epoch/step
    checkpoint_best.pt    the same at the best validation score
    metrics.jsonl         one JSON object per step and per epoch
    tensorboard/          TensorBoard event files (when tensorboard is installed)
    NAME.json + NAME.safetensors   the model package (best weights), written at the end

Exactness: the training samples are a pure function of (seed, epoch, index)
(:mod:`.data`) and the global torch RNG is re-seeded from (seed, epoch, step,
rank) before every step (diffusion noise, VAE sampling, dropout), so a run
interrupted anywhere and resumed from its checkpoint produces the same losses
as an uninterrupted run. RNG states are still saved and restored (plain
tensors, loaded with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .._version import __version__
from ..engine import native_bfloat16
from ..engine import describe_device, select_device
from ..errors import Cancelled, InputError, ModelError
from .config import TrainConfig
from .data import PairDataset, find_volumes, load_volumes, sample_seed, split_volumes
from .families import Family, make_family
from .pairs import PairMaker, make_pair_maker

__all__ = ["TrainResult", "train", "CHECKPOINT_FORMAT"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
StepCallback = Callable[[dict], None]


@dataclass
class TrainResult:
    """What a run produced: the package, the per-epoch history, and where everything lies."""

    package: Optional[Path]
    out_dir: Path
    history: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    samples_per_second: float = 0.0
    device: str = "cpu"


# --------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_name: str) -> _Dist:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    initialised_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        initialised_here = True
    return _Dist(rank=rank, local_rank=local_rank, world=world, initialised_here=initialised_here)


# --------------------------------------------------------------------------- helpers


class _ListSampler(torch.utils.data.Sampler):
    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_pos": int(numpy_state[2]),
        "numpy_gauss": [int(numpy_state[3]), float(numpy_state[4])],
        "python": _python_state_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [int(version), torch.tensor(internal, dtype=torch.int64), gauss]


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
         int(state["numpy_gauss"][0]), float(state["numpy_gauss"][1]))
    )
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal.tolist()), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def _atomic_save(payload: dict, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict:
    """Load a training checkpoint safely (``weights_only=True``: tensors and plain types only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise ModelError(f"checkpoint {path} cannot be loaded safely: {error}") from None


class _Logger:
    """metrics.jsonl + TensorBoard (optional), on rank 0 only."""

    def __init__(self, out: Path, *, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.file = open(out / "metrics.jsonl", "a", encoding="utf-8") if enabled else None
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard); metrics.jsonl is written")

    def write(self, record: dict, *, step: int, prefix: str) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step", "global_step"):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


# --------------------------------------------------------------------------- validation


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
def _validate(family: Family, network: torch.nn.Module, batches: list[dict], device: torch.device, seed: int) -> dict:
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


# --------------------------------------------------------------------------- the run


def _prepare(config: TrainConfig, *, resume: bool) -> tuple[PairMaker, Family, list, list]:
    """Everything that can fail because of the user's input, before any training starts."""
    config.validate()
    pair_maker = make_pair_maker(config.task, config.task_options, crop=config.crop)
    family_name = config.family or pair_maker.families[0]
    family = make_family(family_name, pair_maker, network=config.network, loss=config.loss, lr=config.lr)
    if config.val_field is not None and (not pair_maker.supports_field or family.val_field is None):
        raise InputError(
            f"val_field: {config.task!r} with family {family.name!r} validates on its crops only "
            "(val_field is for the diffusion family on fill); remove val_field"
        )
    out = Path(config.out)
    if resume:
        run_file = out / "run.json"
        if not (out / "checkpoint_last.pt").is_file() or not run_file.is_file():
            raise InputError(f"--resume: {out} holds no checkpoint_last.pt/run.json to resume from")
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        if previous.get("task") != config.task:
            raise InputError(
                f"--resume: {out} is a {previous.get('task')!r} run; this is a {config.task!r} run: "
                "use another --out folder"
            )
        if previous.get("family") != family.name:
            raise InputError(f"--resume: {out} trained family {previous.get('family')!r}, not {family.name!r}")
    elif (out / "checkpoint_last.pt").is_file():
        raise InputError(f"{out} already holds a training run: pass --resume to continue it, or choose another --out")
    paths = find_volumes(config.data, what="data")
    label_paths = find_volumes(config.labels, what="labels") if config.labels else None
    volumes = load_volumes(paths, label_paths=label_paths, pair_maker=pair_maker, spacing=config.spacing)
    return pair_maker, family, volumes, paths


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_step: Optional[StepCallback] = None,
    quiet: bool = False,
    command: Optional[str] = None,
) -> TrainResult:
    """Train ``config.family`` for ``config.task`` and write the model package.

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue the run in ``config.out`` from ``checkpoint_last.pt`` (same task
        and family required); ``config.epochs`` may be raised to train longer.
    on_step : callable, optional
        Called with each step's record (losses, epoch, step) after the step; an
        exception it raises (e.g. KeyboardInterrupt) interrupts the run like Ctrl-C.
    quiet : bool
        No tqdm progress bar.
    command : str, optional
        The command line, recorded in the package's provenance.

    Returns
    -------
    TrainResult

    Raises
    ------
    InputError
        Bad configuration or data, unsupported task/family pair, a ``--resume``
        folder from another task (all before training starts).
    Cancelled
        Interrupted (Ctrl-C); ``checkpoint_last.pt`` holds the state to resume.
    """
    if config.threads:
        torch.set_num_threads(int(config.threads))
    dist_info = _setup_distributed(config.device)
    try:
        return _train(config, dist_info, resume=resume, on_step=on_step, quiet=quiet, command=command)
    finally:
        if dist_info.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _amp_dtype(requested: bool, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp``: float16 (with gradient scaling) on CUDA, bfloat16 on a CPU that
    computes it natively (AVX512-BF16/AMX; it pays for larger networks: selfsup's step 32.5 against 52.7 ms,
    a 16-feature fill U-Net's step as cheap as an 8-feature float32 one), else float32 with a warning."""
    if not requested:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and native_bfloat16(device):
        return torch.bfloat16
    log.warning("--amp needs a CUDA device or a CPU with native bfloat16; training in float32 on %s", device)
    return None


def _train(config, dist_info: _Dist, *, resume, on_step, quiet, command) -> TrainResult:
    pair_maker, family, volumes, paths = _prepare(config, resume=resume)
    out = Path(config.out)
    device = select_device(config.device)
    if dist_info.world > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{dist_info.local_rank}")
        torch.cuda.set_device(device)
    amp_dtype = _amp_dtype(bool(config.amp), device)

    train_volumes, val_volumes = split_volumes(volumes, val_fraction=config.val_fraction, seed=config.seed)
    train_set = PairDataset(train_volumes, pair_maker, length=config.samples_per_epoch, seed=config.seed,
                            augment=config.augment, resample_each_epoch=config.resample_each_epoch)
    field = _validation_field(config, family, pair_maker)
    val_set = PairDataset(val_volumes, pair_maker, length=config.val_samples, seed=config.seed, augment=0.0, stream=1,
                          field=field)
    per_batch = 1 if field is not None else config.batch_size  # field samples differ in size at plane edges
    val_batches = [
        torch.utils.data.default_collate([val_set[i] for i in range(start, min(start + per_batch, len(val_set)))])
        for start in range(0, len(val_set), per_batch)
    ]

    torch.manual_seed(config.seed)
    modules = {name: module.to(device) for name, module in family.build().items()}
    optimisers = family.optimisers(modules)
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        modules = {
            name: DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
            for name, module in modules.items()
        }
    schedulers = {
        name: torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs, eta_min=config.lr * 0.05)
        for name, optimiser in optimisers.items()
    }
    # gradient scaling for float16 only (bfloat16 has float32's range)
    scaler = torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=amp_dtype == torch.float16)

    start_epoch, start_step, global_step = 0, 0, 0
    best: dict = {}
    history: list[dict] = []
    if resume:
        state = load_checkpoint(out / "checkpoint_last.pt")
        if state.get("format") != CHECKPOINT_FORMAT or state.get("task") != config.task:
            raise InputError(f"--resume: checkpoint in {out} is not a {config.task!r} checkpoint of this MedSynth")
        for name, module in modules.items():
            _unwrap(module).load_state_dict(state["modules"][name])
        for name, optimiser in optimisers.items():
            optimiser.load_state_dict(state["optimisers"][name])
        for name, scheduler in schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
            scheduler.T_max = config.epochs
        scaler.load_state_dict(state["scaler"])
        _restore_rng(state["rng"])
        start_epoch, start_step, global_step = int(state["epoch"]), int(state["step"]), int(state["global_step"])
        best = dict(state.get("best", {}))
        history = list(json.loads(state.get("history", "[]")))
        log.info("resuming %s at epoch %d step %d", out, start_epoch, start_step)

    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(
            json.dumps({"task": config.task, "family": family.name, "config": config.as_dict(), "medsynth": __version__}, indent=2) + "\n",
            encoding="utf-8",
        )
    logger = _Logger(out, enabled=dist_info.main, tensorboard=config.tensorboard)

    def checkpoint(epoch: int, step: int, path_name: str) -> None:
        if not dist_info.main:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "task": config.task,
            "family": family.name,
            "epoch": epoch,
            "step": step,
            "global_step": global_step,
            "modules": {name: _unwrap(m).state_dict() for name, m in modules.items()},
            "optimisers": {name: o.state_dict() for name, o in optimisers.items()},
            "schedulers": {name: s.state_dict() for name, s in schedulers.items()},
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
            "best": best,
            "history": json.dumps(history),
        }
        _atomic_save(payload, out / path_name)

    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(train_set, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=True, seed=config.seed, drop_last=True)
    steps_per_epoch = len(sampler) // config.batch_size
    if steps_per_epoch < 1:
        raise InputError(
            f"samples_per_epoch {config.samples_per_epoch} over {dist_info.world} process(es) gives no full batch of {config.batch_size}"
        )
    step_losses: list[float] = []
    samples_seen, train_seconds = 0, 0.0
    epoch, step = start_epoch, start_step
    try:
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            skip = start_step if epoch == start_epoch else 0
            indices = list(sampler)[skip * config.batch_size : steps_per_epoch * config.batch_size]
            loader = torch.utils.data.DataLoader(
                train_set,
                batch_size=config.batch_size,
                sampler=_ListSampler(indices),
                num_workers=config.num_workers,
                drop_last=True,
                generator=torch.Generator().manual_seed(config.seed),
                persistent_workers=False,
                pin_memory=device.type == "cuda",
            )
            for module in modules.values():
                module.train()
            bar = None
            if dist_info.main and not quiet:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, file=sys.stderr)
            epoch_losses: list[float] = []
            started = time.perf_counter()
            step = skip
            for batch in loader:
                torch.manual_seed(sample_seed(config.seed, epoch, step, stream=2 + dist_info.rank))
                batch = _to_device(batch, device)
                losses = family.train_step(
                    modules, optimisers, batch, scaler=scaler,
                    autocast=lambda: torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None),
                )
                step += 1
                global_step += 1
                samples_seen += batch["input"].shape[0] * dist_info.world
                epoch_losses.append(losses["loss"])
                step_losses.append(losses["loss"])
                record = {"event": "step", "epoch": epoch, "step": step, "global_step": global_step,
                          "lr": optimisers["network"].param_groups[0]["lr"], **losses}
                logger.write(record, step=global_step, prefix="train")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}")
                if on_step is not None:
                    on_step(record)
            train_seconds += time.perf_counter() - started
            if bar is not None:
                bar.close()
            metrics = {}
            if dist_info.main:
                metrics = _validate(family, _unwrap(modules["network"]), val_batches, device, config.seed)
            record = {"event": "epoch", "epoch": epoch + 1, "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                      **{f"val_{k}": v for k, v in metrics.items()}, "seconds": round(time.perf_counter() - started, 3)}
            with warnings.catch_warnings():  # a resumed epoch whose steps were all done before the interrupt
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step.*")
                for scheduler in schedulers.values():
                    scheduler.step()
            # from here on an interrupt saves the finished epoch (scheduler stepped, record kept)
            history.append(record)
            epoch, step = epoch + 1, 0
            logger.write(record, step=epoch, prefix="epoch")
            if dist_info.main:
                log.info("epoch %d/%d: %s", epoch, config.epochs, {k: v for k, v in record.items() if k != "event"})
                improved = not best or metrics["score"] > best.get("val_score", -np.inf)
                if improved:
                    best = {k: v for k, v in record.items() if k.startswith("val_")}
                    best["epoch"] = epoch
                checkpoint(epoch, 0, "checkpoint_last.pt")
                if improved:
                    checkpoint(epoch, 0, "checkpoint_best.pt")
            if dist_info.world > 1:
                import torch.distributed as dist

                dist.barrier()
    except KeyboardInterrupt:
        checkpoint(epoch, step, "checkpoint_last.pt")
        logger.close()
        raise Cancelled(
            f"training interrupted at epoch {epoch + 1} step {step}; state saved in {out / 'checkpoint_last.pt'}: "
            "rerun the same command with --resume to continue"
        ) from None
    logger.close()

    result = TrainResult(
        package=None,
        out_dir=out,
        history=history,
        step_losses=step_losses,
        best=best,
        samples_per_second=samples_seen / train_seconds if train_seconds > 0 else 0.0,
        device=describe_device(device),
    )
    if dist_info.main:
        result.package = _write_package(config, family, pair_maker, modules, paths, best, command, device)
    return result


def _write_package(config, family, pair_maker, modules, paths, best, command, device) -> Path:
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
