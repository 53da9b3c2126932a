"""``selfsup`` training: a one-cycle schedule that can be shortened, a clock, and the best network so far.

Why: the number of steps that fit a time budget is not known before training starts on a shared
machine (the same code ran 45 s or 70 s an epoch on different days, and several times slower while
another job held the cores). So with a deadline the loop measures its own step time and, when the
steps planned will not fit, shortens the schedule (the learning rate anneals over the steps that do
fit instead of stopping at a high rate) and stops at the deadline. Every ``VALIDATE_EVERY`` steps the
network is scored on a fixed held-out set of training pairs; the best state is what is returned, and
the held-out score of the base interpolation (linear, or cubic B-spline on thick slices: the network's
starting point) is reported beside it,
so a caller can see whether training gained anything and hand over to another method when it did not.

Without a deadline the loop is the deterministic, fixed-step schedule it always was.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable, Optional

import numpy as np
import torch

from ...engine import ThreadedDataParallel
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from ._selfsup_data import PatchSampler

__all__ = ["VALIDATE_EVERY", "one_cycle", "train"]

#: Steps between held-out scores (each costs about one forward of a batch).
VALIDATE_EVERY = 100
#: Held-out training pairs (batches of ``cfg["batch"]``) the network is scored on.
VALIDATION_BATCHES = 2
#: Steps timed before the schedule is fitted to the deadline; the plan is re-fitted every this many steps.
REPLAN_EVERY = 25


def one_cycle(step: int, total: int, max_lr: float, pct_start: float = 0.1) -> tuple[float, float]:
    """(learning rate, Adam beta1) at ``step`` of ``total``: torch's ``OneCycleLR`` (cosine, default factors).

    A function of (step, total) so that a schedule can be shortened while it runs.
    """
    initial, final = max_lr / 25.0, max_lr / 25.0 / 1e4
    up_end = float(pct_start * total) - 1.0
    down_end = float(total) - 1.0

    def cos(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * min(max(pct, 0.0), 1.0)) + 1.0)

    if step <= up_end or up_end <= 0:
        pct = step / up_end if up_end > 0 else 1.0
        return cos(initial, max_lr, pct), cos(0.95, 0.85, pct)
    pct = (step - up_end) / max(down_end - up_end, 1e-9)
    return cos(max_lr, final, pct), cos(0.85, 0.95, pct)


def _held_out(sampler: PatchSampler, cfg: dict, seed: int) -> list[tuple[torch.Tensor, ...]]:
    rng = np.random.default_rng(seed + 7919)  # its own generator: the training batches do not change
    out = []
    for _ in range(VALIDATION_BATCHES):
        inputs, target, rows = sampler.sample(int(cfg["batch"]), rng=rng)
        out.append((torch.from_numpy(inputs), torch.from_numpy(target), torch.from_numpy(rows)))
    return out


def _score(network: Optional[torch.nn.Module], held_out, device: torch.device) -> float:
    """Mean squared error on the held-out rows (``network`` None: the base interpolation alone)."""
    total = 0.0
    with torch.no_grad():
        for x, y, rows in held_out:
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            prediction = x[:, :1] if network is None else x[:, :1] + network(x).float()
            total += float((prediction - y.to(device))[:, :, rows.to(device), :].square().mean())
    return total / len(held_out)


class _Clock:
    """Fits the number of steps to a deadline from the measured step time (``deadline`` None: never)."""

    def __init__(self, steps: int, deadline: Optional[float]):
        self.planned = steps
        self.total = steps
        self.deadline = deadline
        self.start = time.monotonic()

    def replan(self, done: int) -> None:
        if self.deadline is None or done == 0:
            return
        per_step = (time.monotonic() - self.start) / done
        fits = done + int(max(0.0, self.deadline - time.monotonic()) / max(per_step, 1e-6))
        self.total = max(done + 1, min(self.total, fits))

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def train(sampler: PatchSampler, network: torch.nn.Module, *, device: torch.device, seed: int, cfg: dict,
          deadline: Optional[float], progress: Optional[ProgressCallback],
          cancel: Optional[CancelToken],
          keep_going: Optional[Callable[[int, int, float], bool]] = None) -> tuple[torch.nn.Module, dict]:
    """Train ``network`` on ``sampler``'s pairs until the (possibly shortened) schedule ends or ``deadline``.

    ``deadline`` is a ``time.monotonic()`` value or None. Returns the best network on the held-out
    pairs and a summary: steps planned and run, losses, held-out scores (linear and best), stopped early.
    ``keep_going(step, steps that fit, best held-out gain in dB)`` is asked at each held-out score from half
    the steps that fit on; False stops the training there (the summary's ``abandoned``): ``auto`` asks whether
    the gain, extrapolated in proportion to the steps, could still make the result worth keeping.
    """
    held_out = _held_out(sampler, cfg, seed)
    linear_score = _score(None, held_out, device)
    optimiser = torch.optim.Adam(network.parameters(), lr=cfg["learning_rate"])
    amp_dtype = torch.bfloat16 if cfg["precision"] == "bfloat16" else None  # resolved by training_plan
    workers = int(cfg["workers"])
    part_size = int(cfg["batch"]) // workers
    clock = _Clock(int(cfg["steps"]), deadline)
    losses: list[float] = []
    best_score, best_state, best_step = linear_score, copy.deepcopy(network.state_dict()), 0
    step, abandoned = 0, None
    network.train()
    with ThreadedDataParallel(network, workers=workers) as parallel:
        while step < clock.total and not clock.out_of_time():
            if step % 10 == 0:
                check_cancel(cancel)
            if step % REPLAN_EVERY == 0:
                clock.replan(step)
            lr, beta1 = one_cycle(step, clock.total, float(cfg["learning_rate"]))
            for group in optimiser.param_groups:
                group["lr"], group["betas"] = lr, (beta1, group["betas"][1])
            inputs, target, rows = sampler.sample(cfg["batch"])
            x = torch.from_numpy(inputs).to(device).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(target).to(device)
            loss_rows = torch.from_numpy(rows).to(device)

            def loss_of(replica: torch.nn.Module, part: int) -> torch.Tensor:
                part_rows = slice(part * part_size, (part + 1) * part_size)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    residual = replica(x[part_rows])
                prediction = x[part_rows, :1] + residual.float()  # the residual in low precision, the rest float32
                return (prediction - y[part_rows])[:, :, loss_rows, :].square().mean()

            optimiser.zero_grad(set_to_none=True)
            losses.append(parallel.step(loss_of))
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimiser.step()
            parallel.sync()
            step += 1
            if step % VALIDATE_EVERY == 0 or step == clock.total:
                network.eval()
                score = _score(network, held_out, device)
                network.train()
                if score < best_score:
                    best_score, best_state, best_step = score, copy.deepcopy(network.state_dict()), step
                if keep_going is not None and 2 * step >= clock.total and step < clock.total and \
                        not keep_going(step, clock.total, _gain_db(linear_score, best_score)):
                    abandoned = (f"abandoned at step {step} of {clock.total}: {_gain_db(linear_score, best_score):+.2f} "
                                 "dB on held-out pairs, too little to be kept even if it kept growing in proportion")
                    break
            if step % 20 == 0:
                report(progress, step / clock.total, f"training selfsup on {device} ({step}/{clock.total})")
    if step and step % VALIDATE_EVERY and step != clock.total and abandoned is None:  # the clock, between scores
        network.eval()
        score = _score(network, held_out, device)
        if score < best_score:
            best_score, best_state, best_step = score, copy.deepcopy(network.state_dict()), step
    network.load_state_dict(best_state)
    network.eval()
    gain = _gain_db(linear_score, best_score)
    return network, {
        "steps_planned": clock.planned, "steps": step, "best_step": best_step, "losses": losses,
        "stopped_early": step < clock.planned, "workers": workers,
        "held_out_mse_base": round(linear_score, 8), "held_out_mse": round(best_score, 8),
        "held_out_gain_db": round(gain, 3), **({"abandoned": abandoned} if abandoned else {}),
    }


def _gain_db(base_score: float, score: float) -> float:
    return 10.0 * math.log10(base_score / score) if score > 0 and base_score > 0 else 0.0
