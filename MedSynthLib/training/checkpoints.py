"""Checkpoints of a training run: weights, optimisers, RNG states and logs, saved and loaded safely.

Checkpoints hold tensors and plain types only, loaded with ``torch.load(weights_only=True)``; writes are
atomic (temporary file, then rename), so an interrupt never leaves half a checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from ..reports import to_json

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


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
        self.file.write(to_json(record) + "\n")  # a diverged loss is null with a reason, not NaN
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
