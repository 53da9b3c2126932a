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
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .._version import __version__
from ..engine import describe_device, native_bfloat16, select_device
from ..errors import Cancelled, InputError
from ..reports import to_json
from .checkpoints import CHECKPOINT_FORMAT, _atomic_save, _Logger, _restore_rng, _rng_state, _unwrap, load_checkpoint
from .config import TrainConfig
from .data import PairDataset, find_volumes, load_volumes, sample_seed, split_volumes
from .export import write_package
from .families import Family, make_family
from .pairs import PairMaker, make_pair_maker
from .validation import _to_device, _validation_field
from .validation import validate as _validate  # a module-level name: tests replace it to simulate failures

__all__ = ["TrainResult", "train", "CHECKPOINT_FORMAT"]

log = logging.getLogger(__name__)

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




@dataclass
class _Run:
    """The state a run carries from step to step, and what a checkpoint saves of it."""

    config: TrainConfig
    family: Family
    out: Path
    dist: _Dist
    modules: dict
    optimisers: dict
    schedulers: dict
    scaler: torch.amp.GradScaler
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    step_losses: list = field(default_factory=list)
    samples_seen: int = 0
    train_seconds: float = 0.0

    def checkpoint(self, epoch: int, step: int, path_name: str) -> None:
        if not self.dist.main:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "task": self.config.task,
            "family": self.family.name,
            "epoch": epoch,
            "step": step,
            "global_step": self.global_step,
            "modules": {name: _unwrap(m).state_dict() for name, m in self.modules.items()},
            "optimisers": {name: o.state_dict() for name, o in self.optimisers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "best": self.best,
            "history": json.dumps(self.history),
        }
        _atomic_save(payload, self.out / path_name)

    def resume(self) -> None:
        """Load ``checkpoint_last.pt``: weights, optimisers, schedulers, scaler, RNG, counters, history."""
        state = load_checkpoint(self.out / "checkpoint_last.pt")
        if state.get("format") != CHECKPOINT_FORMAT or state.get("task") != self.config.task:
            raise InputError(f"--resume: checkpoint in {self.out} is not a {self.config.task!r} checkpoint of this MedSynth")
        for name, module in self.modules.items():
            _unwrap(module).load_state_dict(state["modules"][name])
        for name, optimiser in self.optimisers.items():
            optimiser.load_state_dict(state["optimisers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
            scheduler.T_max = self.config.epochs
        self.scaler.load_state_dict(state["scaler"])
        _restore_rng(state["rng"])
        self.epoch, self.step, self.global_step = int(state["epoch"]), int(state["step"]), int(state["global_step"])
        self.best = dict(state.get("best", {}))
        self.history = list(json.loads(state.get("history", "[]")))
        log.info("resuming %s at epoch %d step %d", self.out, self.epoch, self.step)


def _device_for(config: TrainConfig, dist_info: _Dist) -> torch.device:
    device = select_device(config.device)
    if dist_info.world > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{dist_info.local_rank}")
        torch.cuda.set_device(device)
    return device


def _validation_batches(config: TrainConfig, family: Family, pair_maker: PairMaker, val_volumes: list) -> list:
    field_size = _validation_field(config, family, pair_maker)
    val_set = PairDataset(val_volumes, pair_maker, length=config.val_samples, seed=config.seed, augment=0.0, stream=1,
                          field=field_size)
    per_batch = 1 if field_size is not None else config.batch_size  # field samples differ in size at plane edges
    return [
        torch.utils.data.default_collate([val_set[i] for i in range(start, min(start + per_batch, len(val_set)))])
        for start in range(0, len(val_set), per_batch)
    ]


def _build_run(config: TrainConfig, family: Family, dist_info: _Dist, device: torch.device,
               amp_dtype: Optional[torch.dtype]) -> _Run:
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
    return _Run(config, family, Path(config.out), dist_info, modules, optimisers, schedulers, scaler)


def _epoch_loader(run: _Run, train_set: PairDataset, sampler, steps_per_epoch: int, skip: int, device: torch.device):
    config = run.config
    indices = list(sampler)[skip * config.batch_size : steps_per_epoch * config.batch_size]
    return torch.utils.data.DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=_ListSampler(indices),
        num_workers=config.num_workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )


def _train_epoch(run: _Run, loader, *, device, amp_dtype, logger: _Logger, on_step, bar) -> list[float]:
    """One epoch's steps from ``run.step``; returns the epoch's losses (``run`` counts steps and samples)."""
    config, epoch = run.config, run.epoch
    for module in run.modules.values():
        module.train()
    epoch_losses: list[float] = []
    for batch in loader:
        torch.manual_seed(sample_seed(config.seed, epoch, run.step, stream=2 + run.dist.rank))
        batch = _to_device(batch, device)
        losses = run.family.train_step(
            run.modules, run.optimisers, batch, scaler=run.scaler,
            autocast=lambda: torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None),
        )
        run.step += 1
        run.global_step += 1
        run.samples_seen += batch["input"].shape[0] * run.dist.world
        epoch_losses.append(losses["loss"])
        run.step_losses.append(losses["loss"])
        record = {"event": "step", "epoch": epoch, "step": run.step, "global_step": run.global_step,
                  "lr": run.optimisers["network"].param_groups[0]["lr"], **losses}
        logger.write(record, step=run.global_step, prefix="train")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss']:.4f}")
        if on_step is not None:
            on_step(record)
    return epoch_losses


def _end_epoch(run: _Run, epoch_losses: list[float], started: float, *, val_batches, device, logger: _Logger) -> None:
    """Validate, step the schedulers, log, keep the best, checkpoint; ``run.epoch`` moves on."""
    config = run.config
    metrics = {}
    if run.dist.main:
        metrics = _validate(run.family, _unwrap(run.modules["network"]), val_batches, device, config.seed)
    record = {"event": "epoch", "epoch": run.epoch + 1, "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
              **{f"val_{k}": v for k, v in metrics.items()}, "seconds": round(time.perf_counter() - started, 3)}
    with warnings.catch_warnings():  # a resumed epoch whose steps were all done before the interrupt
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step.*")
        for scheduler in run.schedulers.values():
            scheduler.step()
    # from here on an interrupt saves the finished epoch (scheduler stepped, record kept)
    run.history.append(record)
    run.epoch, run.step = run.epoch + 1, 0
    logger.write(record, step=run.epoch, prefix="epoch")
    if run.dist.main:
        log.info("epoch %d/%d: %s", run.epoch, config.epochs, {k: v for k, v in record.items() if k != "event"})
        improved = not run.best or metrics["score"] > run.best.get("val_score", -np.inf)
        if improved:
            run.best = {k: v for k, v in record.items() if k.startswith("val_")}
            run.best["epoch"] = run.epoch
        run.checkpoint(run.epoch, 0, "checkpoint_last.pt")
        if improved:
            run.checkpoint(run.epoch, 0, "checkpoint_best.pt")
    if run.dist.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _write_run_file(run: _Run) -> None:
    if run.dist.main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "run.json").write_text(
            to_json({"task": run.config.task, "family": run.family.name, "config": run.config.as_dict(),
                     "medsynth": __version__}, indent=2) + "\n",
            encoding="utf-8",
        )


def _loop(run: _Run, train_set: PairDataset, *, val_batches, device, amp_dtype, logger: _Logger, on_step,
          quiet: bool) -> None:
    """The epochs from ``run.epoch`` (``run.step`` into it) to ``config.epochs``; Ctrl-C saves and cancels."""
    from torch.utils.data import DistributedSampler

    config, dist_info = run.config, run.dist
    sampler = DistributedSampler(train_set, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    steps_per_epoch = len(sampler) // config.batch_size
    if steps_per_epoch < 1:
        raise InputError(f"samples_per_epoch {config.samples_per_epoch} over {dist_info.world} process(es) gives "
                         f"no full batch of {config.batch_size}")
    start_epoch, start_step = run.epoch, run.step
    try:
        for epoch in range(start_epoch, config.epochs):
            run.epoch = epoch
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            skip = start_step if epoch == start_epoch else 0
            loader = _epoch_loader(run, train_set, sampler, steps_per_epoch, skip, device)
            bar = None
            if dist_info.main and not quiet:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                           file=sys.stderr)
            started = time.perf_counter()
            run.step = skip
            epoch_losses = _train_epoch(run, loader, device=device, amp_dtype=amp_dtype, logger=logger,
                                        on_step=on_step, bar=bar)
            run.train_seconds += time.perf_counter() - started
            if bar is not None:
                bar.close()
            _end_epoch(run, epoch_losses, started, val_batches=val_batches, device=device, logger=logger)
    except KeyboardInterrupt:
        run.checkpoint(run.epoch, run.step, "checkpoint_last.pt")
        logger.close()
        raise Cancelled(
            f"training interrupted at epoch {run.epoch + 1} step {run.step}; state saved in "
            f"{run.out / 'checkpoint_last.pt'}: rerun the same command with --resume to continue"
        ) from None


def _train(config, dist_info: _Dist, *, resume, on_step, quiet, command) -> TrainResult:
    pair_maker, family, volumes, paths = _prepare(config, resume=resume)
    device = _device_for(config, dist_info)
    amp_dtype = _amp_dtype(bool(config.amp), device)
    train_volumes, val_volumes = split_volumes(volumes, val_fraction=config.val_fraction, seed=config.seed)
    train_set = PairDataset(train_volumes, pair_maker, length=config.samples_per_epoch, seed=config.seed,
                            augment=config.augment, resample_each_epoch=config.resample_each_epoch)
    val_batches = _validation_batches(config, family, pair_maker, val_volumes)
    run = _build_run(config, family, dist_info, device, amp_dtype)
    if resume:
        run.resume()
    _write_run_file(run)
    logger = _Logger(run.out, enabled=dist_info.main, tensorboard=config.tensorboard)
    _loop(run, train_set, val_batches=val_batches, device=device, amp_dtype=amp_dtype, logger=logger,
          on_step=on_step, quiet=quiet)
    logger.close()
    result = TrainResult(
        package=None,
        out_dir=run.out,
        history=run.history,
        step_losses=run.step_losses,
        best=run.best,
        samples_per_second=run.samples_seen / run.train_seconds if run.train_seconds > 0 else 0.0,
        device=describe_device(device),
    )
    if dist_info.main:
        result.package = write_package(config, family, pair_maker, run.modules, paths, run.best, command, device)
    return result
