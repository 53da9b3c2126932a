"""``selfsup``: a small network trained on the volume alone to fill slices through-plane.

Why it works: the in-plane axes of a scan are sampled finely. Removing rows of
an in-plane slice at the same gap as the missing through-plane slices, and
learning to restore them from the rows that remain, gives unlimited training
pairs with exactly the degradation the through-plane axis suffered (for
isotropic voxels; an approximation for thick slices). The network then fills
the missing rows of the through-plane planes.

Details:

* Images the network sees are 2D with the degraded axis vertical. Training:
  good slices, once as (H, W) and once transposed (W, H), flipped at random;
  random patches (mostly centred on tissue) with every ``L + 1``-th row kept
  for each gap length ``L`` present in the job, the others linearly
  interpolated. Inference: the planes of the output grid that contain the slice
  axis, both orientations ((S, H) for every column and (S, W) for every row);
  the two predictions are averaged.
* Input channels: the linearly interpolated image, and a map of each row's
  distance to the nearest kept row (0 on kept rows, 1 mid-gap). Output: a
  residual over linear interpolation (in normalised units), used on the
  missing rows only; the L1 loss is taken there too.
* Network: MONAI BasicUNet (2D, few features, no normalisation layers so that
  patches and whole planes behave alike), last layer initialised to zero so
  training starts from linear interpolation and only adds detail (without it
  the first few hundred steps are spent unlearning a random residual); Adam
  with a one-cycle schedule and gradient clipping (higher learning rates
  diverged on MNI).
* Deterministic on a CPU for a given seed: seeded torch and numpy generators,
  deterministic algorithms, fixed batch order.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import torch

from ..engine import EngineReport, describe_device, run_slices, select_device
from ..errors import InputError
from ..progress import CancelToken, ProgressCallback, check_cancel, report, subrange
from ._fill_interp import FillPlan

__all__ = ["SELFSUP_DEFAULTS", "can_train", "estimate_seconds", "selfsup_fill"]

log = logging.getLogger(__name__)

#: Training settings (the report records the ones used).
SELFSUP_DEFAULTS = {
    "features": (16, 16, 32, 32, 64, 16),
    "steps": 700,
    "batch": 16,
    "patch": 64,
    "learning_rate": 2e-3,
    "foreground_share": 0.9,
    "margin": 24,
}

# Seconds per training step and per inference voxel on one 2-core laptop-class CPU,
# measured with the defaults above; used only by ``auto`` to decide whether selfsup fits a budget.
_CPU_STEP_S = 0.12
_CPU_VOXEL_S = 1.6e-6
_GPU_SPEEDUP = 20.0


def _integral(plan: FillPlan) -> bool:
    return bool(
        np.all(np.abs(plan.positions - np.round(plan.positions)) < 1e-6)
        and np.all(np.abs(plan.targets - np.round(plan.targets)) < 1e-6)
    )


def can_train(good: np.ndarray, plan: FillPlan) -> bool:
    """Whether selfsup can run: integer positions, at least 2 good slices of at least 24 x 24 voxels."""
    return _integral(plan) and len(good) >= 2 and min(good.shape[1:]) >= 24


def _gap_lengths(plan: FillPlan) -> list[int]:
    return sorted({int(round(g)) - 1 for g in plan.gaps})


def _inference_voxels(good: np.ndarray, plan: FillPlan, margin: int) -> int:
    rows = sum(b - a + 1 for a, b in _segments(plan, margin, int(round(plan.positions[-1])) + 1))
    return 2 * rows * good.shape[1] * good.shape[2]


def estimate_seconds(good: np.ndarray, plan: FillPlan, *, device: torch.device) -> float:
    """Rough run time of :func:`selfsup_fill` with the defaults (for ``auto``)."""
    cfg = SELFSUP_DEFAULTS
    seconds = cfg["steps"] * _CPU_STEP_S + _inference_voxels(good, plan, cfg["margin"]) * _CPU_VOXEL_S
    return seconds / (_GPU_SPEEDUP if device.type != "cpu" else 1.0)


def _segments(plan: FillPlan, margin: int, length: int) -> list[tuple[int, int]]:
    """Row ranges of the output grid to run inference on: each gap with ``margin`` rows around it."""
    spans = []
    for target in np.round(plan.targets).astype(int):
        spans.append((max(0, target - margin), min(length - 1, target + margin)))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _pad16(inputs: np.ndarray) -> np.ndarray:
    """Pad (N, C, H, W) at the bottom/right by edge replication to multiples of 16 (the U-Net's 4 poolings)."""
    h, w = inputs.shape[-2:]
    pad_h, pad_w = (-h) % 16, (-w) % 16
    if pad_h == 0 and pad_w == 0:
        return np.ascontiguousarray(inputs)
    return np.pad(inputs, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")


def _subplan(plan: FillPlan, members: list[int]) -> FillPlan:
    """The plan restricted to the targets ``members`` (for inference segments)."""
    index = np.asarray(members)
    return FillPlan(positions=plan.positions, targets=plan.targets[index], lower=plan.lower[index], t=plan.t[index])


def _network(features) -> torch.nn.Module:
    from ..models.networks import build_network

    network = build_network(
        "basic_unet", spatial_dims=2, in_channels=2, out_channels=1, features=tuple(features), norm=None
    )
    # Start as exactly linear interpolation (zero residual): training then only has to add detail.
    last = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    torch.nn.init.zeros_(last.weight)
    if last.bias is not None:
        torch.nn.init.zeros_(last.bias)
    return network


def _distance_map(keep: np.ndarray) -> np.ndarray:
    """Per row: 0 on kept rows, 2 * min(t, 1 - t) inside a gap (1 at its middle)."""
    rows = np.arange(len(keep))
    kept = rows[keep]
    out = np.zeros(len(keep), np.float32)
    for r in rows[~keep]:
        lo = kept[kept < r].max() if np.any(kept < r) else r
        hi = kept[kept > r].min() if np.any(kept > r) else r
        t = (r - lo) / max(hi - lo, 1)
        out[r] = 2 * min(t, 1 - t)
    return out


class _PatchSampler:
    """Random degraded training patches from the good slices (both orientations, flips)."""

    def __init__(self, good: np.ndarray, gaps: list[int], patch: int, foreground_share: float, rng: np.random.Generator):
        self.images = [good, np.ascontiguousarray(np.swapaxes(good, 1, 2))]
        self.gaps = gaps
        self.patch = patch
        self.rng = rng
        self.share = foreground_share
        self.centres = []
        for image in self.images:
            threshold = np.percentile(image, 60)
            self.centres.append(np.argwhere(image > threshold))

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gap = int(self.rng.choice(self.gaps))
        step = gap + 1
        height = (self.patch // step) * step + 1
        width = self.patch
        inputs = np.empty((batch, 2, height, width), np.float32)
        target = np.empty((batch, 1, height, width), np.float32)
        keep = (np.arange(height) % step) == 0
        dist = _distance_map(keep)
        kept_rows = np.flatnonzero(keep)
        for b in range(batch):
            which = int(self.rng.integers(2))
            image = self.images[which]
            n, h, w = image.shape
            if self.rng.random() < self.share and len(self.centres[which]):
                s, cy, cx = self.centres[which][int(self.rng.integers(len(self.centres[which])))]
            else:
                s, cy, cx = int(self.rng.integers(n)), int(self.rng.integers(h)), int(self.rng.integers(w))
            y0 = int(np.clip(cy - height // 2, 0, max(h - height, 0)))
            x0 = int(np.clip(cx - width // 2, 0, max(w - width, 0)))
            crop = image[s, y0:y0 + height, x0:x0 + width]
            crop = np.pad(crop, ((0, height - crop.shape[0]), (0, width - crop.shape[1])), mode="reflect")
            if self.rng.random() < 0.5:
                crop = crop[::-1]
            if self.rng.random() < 0.5:
                crop = crop[:, ::-1]
            lin = _interp_rows(crop, kept_rows)
            inputs[b, 0] = lin
            inputs[b, 1] = dist[:, None]
            target[b, 0] = crop
        return inputs, target, ~keep


def _interp_rows(image: np.ndarray, kept_rows: np.ndarray) -> np.ndarray:
    """Rows of ``image`` (R, ...) linearly interpolated from ``kept_rows`` (first and last row must be kept)."""
    rows = np.arange(image.shape[0])
    upper = np.clip(np.searchsorted(kept_rows, rows, side="right"), 1, len(kept_rows) - 1)
    lo, hi = kept_rows[upper - 1], kept_rows[upper]
    t = ((rows - lo) / np.maximum(hi - lo, 1)).astype(np.float32).reshape((-1,) + (1,) * (image.ndim - 1))
    return (1 - t) * image[lo] + t * image[hi]


def _train(
    good: np.ndarray,
    gaps: list[int],
    *,
    device: torch.device,
    seed: int,
    cfg: dict,
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelToken],
) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = _network(cfg["features"]).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=cfg["learning_rate"])
    steps = int(cfg["steps"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg["learning_rate"], total_steps=steps, pct_start=0.1)
    sampler = _PatchSampler(good, gaps, cfg["patch"], cfg["foreground_share"], rng)
    losses: list[float] = []
    network.train()
    for step in range(steps):
        if step % 10 == 0:
            check_cancel(cancel)
        inputs, target, missing = sampler.sample(cfg["batch"])
        x = torch.from_numpy(inputs).to(device)
        y = torch.from_numpy(target).to(device)
        rows = torch.from_numpy(missing).to(device)
        prediction = x[:, :1] + network(x)
        loss = (prediction - y)[:, :, rows, :].abs().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            report(progress, step / steps, f"training selfsup on {device} ({step}/{steps})")
    network.eval()
    return network, losses


def selfsup_fill(
    good: np.ndarray,
    plan: FillPlan,
    *,
    device: str = "auto",
    seed: int = 0,
    settings: Optional[dict] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    details: Optional[dict] = None,
) -> np.ndarray:
    """Train on ``good`` (G, H, W, normalised) and answer ``plan``; returns (Q, H, W) float32.

    Parameters
    ----------
    settings : dict, optional
        Overrides of :data:`SELFSUP_DEFAULTS` (e.g. fewer ``steps`` in tests).
    details : dict, optional
        Filled with the device used, settings, final training loss and timings.
    """
    if not can_train(good, plan):
        raise InputError(
            "selfsup needs integer slice positions and at least 2 good slices of 24 x 24 voxels or more; "
            "use flow or linear for this volume"
        )
    cfg = dict(SELFSUP_DEFAULTS)
    cfg.update(settings or {})
    details = details if details is not None else {}
    target_device = select_device(device)
    gaps = _gap_lengths(plan)
    start = time.perf_counter()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        network, losses = _train(
            good, gaps, device=target_device, seed=seed, cfg=cfg, progress=subrange(progress, 0.0, 0.8), cancel=cancel
        )
    finally:
        torch.use_deterministic_algorithms(deterministic)
    train_seconds = time.perf_counter() - start

    # The output grid: good slices at their positions, linear interpolation in the gaps.
    length = int(round(plan.positions[-1])) + 1
    grid = np.empty((length,) + good.shape[1:], np.float32)
    keep = np.zeros(length, bool)
    good_rows = np.round(plan.positions).astype(int)
    keep[good_rows] = True
    grid[good_rows] = good
    target_rows = np.round(plan.targets).astype(int)
    t = plan.t[:, None, None].astype(np.float32)
    grid[target_rows] = (1 - t) * good[plan.lower] + t * good[plan.lower + 1]
    good_keep = keep

    engine = EngineReport()
    total = np.zeros((len(target_rows),) + good.shape[1:], np.float64)
    # Each gap is filled from an input built exactly like the training inputs: the rows of its own
    # regular pattern (every L + 1-th row, in phase with the gap) kept, all others interpolated. For
    # x2/x4 that is the grid itself; an isolated gap would otherwise sit among real rows, which the
    # network never saw in training.
    lengths = np.round(plan.gaps).astype(int) - 1
    phases = np.round(plan.positions[plan.lower]).astype(int) % (lengths + 1)
    groups: dict[tuple[int, int], list[int]] = {}
    for q, key in enumerate(zip(lengths.tolist(), phases.tolist())):
        groups.setdefault(key, []).append(q)
    work = 2 * sum(len(_segments(_subplan(plan, qs), int(cfg["margin"]), length)) for qs in groups.values())
    done = 0
    for (gap, phase), members in groups.items():
        rows = np.arange(length)
        keep = ((rows - phase) % (gap + 1)) == 0
        kept = np.flatnonzero(keep)
        keep[: kept[0]] = True
        keep[kept[-1]:] = True
        pattern_grid = grid if np.array_equal(keep, good_keep) else _interp_rows(grid, np.flatnonzero(keep))
        distance = _distance_map(keep)
        position_of = {int(target_rows[q]): q for q in members}
        for a, b in _segments(_subplan(plan, members), int(cfg["margin"]), length):
            block = pattern_grid[a:b + 1]
            rows_here = [r for r in range(a, b + 1) if r in position_of]
            for orientation in (0, 1):
                check_cancel(cancel)
                # orientation 0: planes (S, H) for every column; 1: planes (S, W) for every row.
                planes = np.moveaxis(block, 2 - orientation, 0)  # (P, S, X)
                dist_map = np.broadcast_to(distance[a:b + 1, None], planes.shape[1:])
                inputs = _pad16(np.stack([planes, np.broadcast_to(dist_map, planes.shape)], axis=1))
                residual = run_slices(
                    network, inputs, device=target_device, batch_size=8, amp=False, cancel=cancel, report_to=engine,
                    progress=subrange(progress, 0.8 + 0.2 * done / work, 0.8 + 0.2 * (done + 1) / work),
                )[:, 0, : planes.shape[1], : planes.shape[2]]
                filled = np.moveaxis(planes + residual, 0, 2 - orientation)  # back to (S, H, W)
                for r in rows_here:
                    total[position_of[r]] += filled[r - a]
                done += 1
    result = (total / 2).astype(np.float32)
    details["device"] = describe_device(target_device)
    details["selfsup"] = {
        "seed": int(seed),
        "gap_lengths": gaps,
        "steps": int(cfg["steps"]),
        "batch": int(cfg["batch"]),
        "patch": int(cfg["patch"]),
        "features": list(cfg["features"]),
        "final_loss": round(float(np.mean(losses[-20:])), 6) if losses else None,
        "train_seconds": round(train_seconds, 2),
        "inference_seconds": round(engine.seconds, 2),
        "engine": engine.as_dict(),
    }
    if engine.fallbacks:
        details.setdefault("warnings", []).extend(engine.fallbacks)
    return result
