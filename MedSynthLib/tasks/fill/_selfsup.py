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
  random patches (mostly centred on tissue) whose rows are removed with a
  window of the job's own missing-slice pattern (x2, x4, slabs, isolated
  slices: real rows next to a gap stay real, as at inference) and linearly
  interpolated. Sparse patterns (a few missing slices) are packed closer for
  training so each patch holds several gaps (+1.3 dB on isolated MNI slices at
  equal steps). Inference: the planes of the output grid that contain the
  slice axis, both orientations ((S, H) for every column and (S, W) for every
  row); the two predictions are averaged.
* Input channels: the linearly interpolated image, and a map of each row's
  distance to the nearest kept row (0 on kept rows, 1 mid-gap). Output: a
  residual over linear interpolation (in normalised units), used on the
  missing rows only; the squared error is taken there too (PSNR is what users
  compare; L1 measured 0.1 dB lower at equal steps).
* Network: MONAI BasicUNet (2D, few features, no normalisation layers so that
  patches and whole planes behave alike), last layer initialised to zero so
  training starts from linear interpolation and only adds detail (without it
  the first few hundred steps are spent unlearning a random residual); Adam
  with a one-cycle schedule and gradient clipping (higher learning rates
  diverged on MNI).
* Budget: quality rises with training steps (MNI x2: +3.5 dB at 700, +4.6 dB at
  2400); channels-last activations make a step about 25 % cheaper on a CPU.
* Deterministic on a CPU for a given seed: seeded torch and numpy generators,
  deterministic algorithms, fixed batch order.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import torch

from ...engine import EngineReport, ThreadedDataParallel, describe_device, native_bfloat16, run_slices, select_device
from ...errors import InputError
from ...progress import CancelToken, ProgressCallback, check_cancel, report, subrange
from ._interp import FillPlan

__all__ = ["SELFSUP_DEFAULTS", "can_train", "estimate_seconds", "selfsup_fill"]

log = logging.getLogger(__name__)

#: Training settings (the report records the ones used). ``steps``, ``mixed_precision`` and ``workers``
#: "auto" are resolved per device by :func:`training_plan`.
SELFSUP_DEFAULTS = {
    "features": (16, 16, 32, 32, 64, 16),
    "steps": "auto",
    "batch": 16,
    "patch": 64,
    "learning_rate": 2e-3,
    "foreground_share": 0.9,
    "margin": 24,
    "mixed_precision": "auto",
    "workers": "auto",
    "flips": "auto",
}

#: Test-time flip variants per plane: 1 = none, 2 = also mirrored left-right in the plane, 4 = also
#: upside down along the slice axis. The predictions are averaged (ROBEX, 4 variants: x2 +1.20 against
#: +1.15 dB, single slices +1.53 against +1.48; MNI x2 about +0.1 dB). ``auto``: the most variants whose
#: extra inference stays within :data:`FLIP_SHARE` of the training time (estimated from the voxel count,
#: never measured, so a seed reproduces a run).
FLIP_VARIANTS = {1: ((False, False),), 2: ((False, False), (False, True)),
                 4: ((False, False), (False, True), (True, False), (True, True))}

#: Steps of ``steps="auto"``: what fits about 150 s of training on a 2-core CPU with this arithmetic
#: (quality rises with steps: MNI x2 +4.64 dB at 2400 float32 steps, +5.16 at 4800), and on a GPU.
AUTO_STEPS = {"bfloat16": 4800, "float32": 2400}

# Seconds per training step (by training precision) and per inference voxel on an idle 2-core CPU
# (torch on 2 threads; float32 with 2 data-parallel workers), measured on MNI; used only by ``auto``
# to decide whether selfsup fits a budget.
_CPU_STEP_S = {"bfloat16": 0.033, "float32": 0.043}
_CPU_VOXEL_S = 0.5e-6
#: Above this ratio of the output grid's step to an in-plane pixel, training strips are resampled to
#: the grid step with a slice profile (thick slices); below it, in-plane rows are used as they are.
SMORE_MIN_RATIO = 1.5
#: ``flips="auto"`` spends at most this share of the estimated training time on extra flip variants.
FLIP_SHARE = 0.1
_GPU_SPEEDUP = 20.0


def training_autocast_dtype(device: torch.device, mode: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype selfsup trains in on ``device``, or None for float32.

    ``auto``: bfloat16 where the hardware does it natively: a CUDA GPU that supports it (tensor
    cores), a CPU with AVX512-BF16 or AMX (on a 2-core AVX512-BF16 CPU with 2 threads: 32.5 against
    52.7 ms a step, so twice the steps fit the same time; at equal steps it costs about 0.1 dB on MNI
    x2, +4.53 against +4.64). Elsewhere float32: emulated bfloat16 is slower. No gradient scaling is
    needed for bfloat16. ``bf16`` forces it, ``off`` never. Inference stays float32.
    """
    if mode not in ("auto", "off", "bf16"):
        raise InputError(f"selfsup mixed_precision must be 'auto', 'off' or 'bf16', got {mode!r}")
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if native_bfloat16(device) else None


def training_workers(device: torch.device, setting, batch: int, *, low_precision: bool = False) -> int:
    """Threads that split each training batch (``ThreadedDataParallel``).

    ``auto``: on a CPU training in float32, one per core available to this process (at most 4, a
    divisor of the batch): 42.5 against 52.7 ms a step with two intra-op threads on a 2-core CPU.
    In bfloat16 the intra-op threads scale well (32.5 ms) and splitting the batch did not (51.9 ms),
    so 1; and 1 on a GPU (one stream is enough).
    """
    if setting == "auto":
        if device.type != "cpu" or low_precision:
            return 1
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        setting = max(n for n in range(1, min(cores, 4) + 1) if batch % n == 0)
    if not isinstance(setting, (int, np.integer)) or isinstance(setting, bool) or setting < 1 or batch % int(setting):
        raise InputError(f"selfsup workers must be 'auto' or a whole number that divides the batch ({batch}), "
                         f"got {setting!r}")
    return int(setting)


def can_train(good: np.ndarray, plan: FillPlan) -> bool:
    """Whether selfsup can run: integer positions, at least 2 good slices of at least 24 x 24 voxels."""
    return plan.integral and len(good) >= 2 and min(good.shape[1:]) >= 24


def _gap_lengths(plan: FillPlan) -> list[int]:
    return sorted({int(round(g)) - 1 for g in plan.gaps})


def _inference_voxels(good: np.ndarray, plan: FillPlan, margin: int) -> int:
    rows = sum(b - a + 1 for a, b in _segments(plan, margin, int(round(plan.positions[-1])) + 1))
    return 2 * rows * good.shape[1] * good.shape[2]


def _predict_residual(network, planes, dist_map, *, flips: int, **run_options) -> np.ndarray:
    """The network's residual on (P, S, X) planes, averaged over the flip variants (mirrored back)."""
    total = np.zeros(planes.shape, np.float32)
    variants = FLIP_VARIANTS[flips]
    for flip_s, flip_x in variants:
        axes = tuple(axis for axis, on in ((1, flip_s), (2, flip_x)) if on)  # () flips nothing
        seen = np.flip(planes, axis=axes)
        dist = np.flip(dist_map, axis=tuple(a - 1 for a in axes))
        inputs = _pad16(np.stack([seen, np.broadcast_to(dist, seen.shape)], axis=1))
        residual = run_slices(network, inputs, **run_options)[:, 0, : planes.shape[1], : planes.shape[2]]
        total += np.flip(residual, axis=axes)
    return total / len(variants)


def training_plan(device: torch.device, settings: Optional[dict] = None) -> dict:
    """The defaults updated by ``settings``, with ``steps``, ``mixed_precision`` and ``workers`` resolved.

    Deterministic for a machine: the same hardware gets the same plan (no timing is involved), so a
    seed reproduces a run; the report records the plan.
    """
    cfg = {**SELFSUP_DEFAULTS, **(settings or {})}
    dtype = training_autocast_dtype(device, cfg["mixed_precision"])
    precision = "bfloat16" if dtype == torch.bfloat16 else "float32"
    if cfg["steps"] == "auto":
        cfg["steps"] = AUTO_STEPS[precision]
    steps = cfg["steps"]
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"selfsup steps must be 'auto' or a whole number >= 1, got {steps!r}")
    cfg["workers"] = training_workers(device, cfg["workers"], int(cfg["batch"]), low_precision=dtype is not None)
    if cfg["flips"] != "auto" and (cfg["flips"] not in FLIP_VARIANTS or isinstance(cfg["flips"], bool)):
        raise InputError(f"selfsup flips must be 'auto', 1, 2 or 4, got {cfg['flips']!r}")
    cfg["precision"] = precision
    return cfg


def _flips(cfg: dict, good: np.ndarray, plan: FillPlan) -> int:
    """``cfg["flips"]`` resolved: ``auto`` takes the most variants whose extra inference is at most
    :data:`FLIP_SHARE` of the training (both estimated with the CPU constants)."""
    if cfg["flips"] != "auto":
        return int(cfg["flips"])
    train = cfg["steps"] * _CPU_STEP_S[cfg["precision"]]
    once = _inference_voxels(good, plan, cfg["margin"]) * _CPU_VOXEL_S
    return max(n for n in FLIP_VARIANTS if (n - 1) * once <= FLIP_SHARE * train)


def estimate_seconds(good: np.ndarray, plan: FillPlan, *, device: torch.device, settings: Optional[dict] = None) -> float:
    """Rough run time of :func:`selfsup_fill` with the defaults updated by ``settings`` (for ``auto``)."""
    cfg = training_plan(device, settings)
    inference = _inference_voxels(good, plan, cfg["margin"]) * _CPU_VOXEL_S * _flips(cfg, good, plan)
    seconds = cfg["steps"] * _CPU_STEP_S[cfg["precision"]] + inference
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


def _network(features) -> torch.nn.Module:
    from ...models.networks import build_network

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


def _missing_runs(keep: np.ndarray) -> list[int]:
    """Lengths of the runs of missing rows in ``keep``, in order."""
    edges = np.diff(np.concatenate([[0], (~keep).astype(np.int8), [0]]))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


def _training_pattern(keep: np.ndarray, *, sparse_share: float = 0.2, spacing: int = 5) -> np.ndarray:
    """The keep pattern to train with: the job's own, or for sparse gaps the same runs packed closer.

    A few isolated missing slices give one supervised row per patch; repeating the job's runs with
    ``spacing`` good rows between them keeps real rows around every gap (as at inference) while
    giving each patch several gaps to learn from.
    """
    if np.mean(~keep) >= sparse_share:
        return keep
    runs = _missing_runs(keep)
    pattern: list[bool] = [True] * spacing
    while len(pattern) < max(len(keep), 256):
        for run in runs:
            pattern += [False] * run + [True] * spacing
    return np.asarray(pattern, bool)


class _PatchSampler:
    """Random training patches from the good slices, degraded with the job's own missing-slice pattern.

    Each batch takes a window of the output grid's keep pattern that contains at least one missing
    row (x2, x4, isolated slices, slabs, upsampling: whatever this job has) and removes the same rows
    from in-plane strips of good slices (either in-plane orientation, flipped at random). Training
    inputs are therefore built exactly as the inference inputs are, real rows next to a gap included.
    """

    def __init__(self, good: np.ndarray, keep: np.ndarray, patch: int, foreground_share: float,
                 rng: np.random.Generator, *, grid_ratio: tuple[float, float] = (1.0, 1.0)):
        from scipy import ndimage

        self.images = [good, np.ascontiguousarray(np.swapaxes(good, 1, 2))]
        # Thick slices (SMORE-style): the output grid's step is ``ratio`` in-plane pixels, so the rows of a
        # training strip are taken every ``ratio`` pixels from the image blurred by a slice profile as wide
        # as the step (a Gaussian of that FWHM): in-plane data then look like the through-plane planes.
        self.ratios = [float(r) if r > SMORE_MIN_RATIO else 1.0 for r in grid_ratio]
        self.sources = [ndimage.gaussian_filter1d(image, r / 2.355, axis=1, mode="nearest") if r > 1 else image
                        for image, r in zip(self.images, self.ratios)]
        keep = _training_pattern(keep)
        self.keep = keep
        self.distance = _distance_map(keep)
        self.kept = np.flatnonzero(keep)
        self.missing = np.flatnonzero(~keep)
        self.patch = patch
        # strips must fit the images' rows at the grid step
        self.rows = min([patch] + [int((image.shape[1] - 1) / r) + 1 for image, r in zip(self.images, self.ratios) if r > 1])
        self.rng = rng
        self.share = foreground_share
        self.centres = []
        for image in self.images:
            threshold = np.percentile(image, 60)
            self.centres.append(np.argwhere(image > threshold))

    def _strip(self, which: int, s: int, cy: int, cx: int, height: int, width: int) -> np.ndarray:
        image, ratio = self.sources[which], self.ratios[which]
        n, h, w = image.shape
        x0 = int(np.clip(cx - width // 2, 0, max(w - width, 0)))
        if ratio == 1.0:
            y0 = int(np.clip(cy - height // 2, 0, max(h - height, 0)))
            return image[s, y0:y0 + height, x0:x0 + width]
        span = (height - 1) * ratio
        y0 = float(np.clip(cy - span / 2, 0, max(h - 1 - span, 0)))
        rows = y0 + ratio * np.arange(height)
        lower = np.minimum(np.floor(rows).astype(int), h - 1)
        upper = np.minimum(lower + 1, h - 1)
        frac = (rows - lower)[:, None].astype(np.float32)
        return (1 - frac) * image[s, lower, x0:x0 + width] + frac * image[s, upper, x0:x0 + width]

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        width = self.patch
        row = int(self.missing[int(self.rng.integers(len(self.missing)))])
        # A window from a good row above the chosen missing row to the farthest good row below it that
        # keeps the window within ``patch`` rows: every missing row in it has both bounding rows in view,
        # as at inference (where blocks start and end on good rows or far from the rows kept).
        above = self.kept[(self.kept < row) & (self.kept > row - self.rows)]
        start = int(above[int(self.rng.integers(len(above)))]) if len(above) else int(self.kept[self.kept < row].max())
        below = self.kept[(self.kept > row) & (self.kept < start + self.rows)]
        last = int(below.max()) if len(below) else int(self.kept[self.kept > row].min())
        stop = last + 1
        height = stop - start
        local_kept = self.kept[(self.kept >= start) & (self.kept <= last)] - start
        inputs = np.empty((batch, 2, height, width), np.float32)
        target = np.empty((batch, 1, height, width), np.float32)
        inputs[:, 1] = self.distance[start:stop, None]
        for b in range(batch):
            which = int(self.rng.integers(2))
            image = self.images[which]
            n, h, w = image.shape
            if self.rng.random() < self.share and len(self.centres[which]):
                s, cy, cx = self.centres[which][int(self.rng.integers(len(self.centres[which])))]
            else:
                s, cy, cx = int(self.rng.integers(n)), int(self.rng.integers(h)), int(self.rng.integers(w))
            strip = self._strip(which, int(s), int(cy), int(cx), height, width)
            strip = np.pad(strip, ((0, height - strip.shape[0]), (0, width - strip.shape[1])), mode="reflect")
            if self.rng.random() < 0.5:
                strip = strip[::-1]
            if self.rng.random() < 0.5:
                strip = strip[:, ::-1]
            inputs[b, 0] = _interp_rows(strip, local_kept)
            target[b, 0] = strip
        missing = ~self.keep[start:stop]
        if height % 16:  # short grids: pad as inference does; padded rows carry no loss
            inputs, target = _pad16(inputs), _pad16(target)
            missing = np.pad(missing, (0, inputs.shape[2] - height))
        return inputs, target, missing


def _interp_rows(image: np.ndarray, kept_rows: np.ndarray) -> np.ndarray:
    """Rows of ``image`` (R, ...) linearly interpolated from ``kept_rows`` (first and last row must be kept)."""
    rows = np.arange(image.shape[0])
    upper = np.clip(np.searchsorted(kept_rows, rows, side="right"), 1, len(kept_rows) - 1)
    lo, hi = kept_rows[upper - 1], kept_rows[upper]
    t = ((rows - lo) / np.maximum(hi - lo, 1)).astype(np.float32).reshape((-1,) + (1,) * (image.ndim - 1))
    return (1 - t) * image[lo] + t * image[hi]


def _train(
    good: np.ndarray,
    keep: np.ndarray,
    *,
    device: torch.device,
    seed: int,
    cfg: dict,
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelToken],
    grid_ratio: tuple[float, float] = (1.0, 1.0),
) -> tuple[torch.nn.Module, list[float], int]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # Channels-last activations: about 25 % faster convolutions on a CPU (oneDNN), same results up to rounding.
    network = _network(cfg["features"]).to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(network.parameters(), lr=cfg["learning_rate"])
    steps = int(cfg["steps"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg["learning_rate"], total_steps=steps, pct_start=0.1)
    sampler = _PatchSampler(good, keep, cfg["patch"], cfg["foreground_share"], rng, grid_ratio=grid_ratio)
    amp_dtype = torch.bfloat16 if cfg["precision"] == "bfloat16" else None  # resolved by training_plan
    workers = int(cfg["workers"])
    part_size = int(cfg["batch"]) // workers
    losses: list[float] = []
    network.train()
    with ThreadedDataParallel(network, workers=workers) as parallel:
        for step in range(steps):
            if step % 10 == 0:
                check_cancel(cancel)
            inputs, target, missing = sampler.sample(cfg["batch"])
            x = torch.from_numpy(inputs).to(device).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(target).to(device)
            rows = torch.from_numpy(missing).to(device)

            def loss_of(replica: torch.nn.Module, part: int) -> torch.Tensor:
                part_rows = slice(part * part_size, (part + 1) * part_size)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    residual = replica(x[part_rows])
                prediction = x[part_rows, :1] + residual.float()  # the residual in low precision, the rest float32
                return (prediction - y[part_rows])[:, :, rows, :].square().mean()

            optimiser.zero_grad(set_to_none=True)
            loss = parallel.step(loss_of)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            parallel.sync()
            losses.append(loss)
            if step % 20 == 0:
                report(progress, step / steps, f"training selfsup on {device} ({step}/{steps})")
    network.eval()
    return network, losses, workers


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
    grid_ratio: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Train on ``good`` (G, H, W, normalised) and answer ``plan``; returns (Q, H, W) float32.

    Parameters
    ----------
    settings : dict, optional
        Overrides of :data:`SELFSUP_DEFAULTS` (e.g. fewer ``steps`` in tests).
    grid_ratio : (float, float)
        The output grid's step along the slice axis in pixels of H and of W. Above
        :data:`SMORE_MIN_RATIO` the training strips are resampled to that step with a slice profile.
    details : dict, optional
        Filled with the device used, settings, final training loss and timings.
    """
    if not can_train(good, plan):
        raise InputError(
            "selfsup needs integer slice positions and at least 2 good slices of 24 x 24 voxels or more; "
            "use flow or linear for this volume"
        )
    details = details if details is not None else {}
    target_device = select_device(device)
    cfg = training_plan(target_device, settings)
    cfg["flips"] = _flips(cfg, good, plan)
    gaps = _gap_lengths(plan)
    # The output grid: good slices at their positions, linear interpolation in the gaps.
    length = int(round(plan.positions[-1])) + 1
    grid = np.empty((length,) + good.shape[1:], np.float32)
    keep = np.zeros(length, bool)
    keep[np.round(plan.positions).astype(int)] = True
    grid[keep] = good
    target_rows = np.round(plan.targets).astype(int)
    t = plan.t[:, None, None].astype(np.float32)
    grid[target_rows] = (1 - t) * good[plan.lower] + t * good[plan.lower + 1]

    start = time.perf_counter()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        network, losses, workers = _train(
            good, keep, device=target_device, seed=seed, cfg=cfg, progress=subrange(progress, 0.0, 0.8), cancel=cancel,
            grid_ratio=grid_ratio,
        )
    finally:
        torch.use_deterministic_algorithms(deterministic)
    train_seconds = time.perf_counter() - start

    engine = EngineReport()
    total = np.zeros((len(target_rows),) + good.shape[1:], np.float64)
    distance = _distance_map(keep)
    position_of = {int(r): q for q, r in enumerate(target_rows)}
    segments = _segments(plan, int(cfg["margin"]), length)
    work = 2 * len(segments)
    done = 0
    for a, b in segments:
        block = grid[a:b + 1]
        rows_here = [r for r in range(a, b + 1) if r in position_of]
        for orientation in (0, 1):
            check_cancel(cancel)
            # orientation 0: planes (S, H) for every column; 1: planes (S, W) for every row.
            planes = np.moveaxis(block, 2 - orientation, 0)  # (P, S, X)
            dist_map = np.broadcast_to(distance[a:b + 1, None], planes.shape[1:])
            residual = _predict_residual(
                network, planes, dist_map, flips=int(cfg["flips"]), device=target_device, batch_size=8, amp=False,
                cancel=cancel, report_to=engine,
                progress=subrange(progress, 0.8 + 0.2 * done / work, 0.8 + 0.2 * (done + 1) / work),
            )
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
        "workers": workers,
        "flips": int(cfg["flips"]),
        "grid_ratio": [round(float(r), 3) for r in grid_ratio],
        "thick_slice_training": any(r > SMORE_MIN_RATIO for r in grid_ratio),
        "training_precision": cfg["precision"],
        "final_loss": round(float(np.mean(losses[-20:])), 6) if losses else None,
        "train_seconds": round(train_seconds, 2),
        "inference_seconds": round(engine.seconds, 2),
        "engine": engine.as_dict(),
    }
    if engine.fallbacks:
        details.setdefault("warnings", []).extend(engine.fallbacks)
    return result
