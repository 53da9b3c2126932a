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

import math

import logging
import time
from typing import Callable, Optional

import numpy as np
import torch

from ...engine import EngineReport, describe_device, native_bfloat16, run_slices, select_device
from ...errors import InputError
from ...progress import CancelToken, ProgressCallback, check_cancel, subrange
from ._interp import FillPlan
from ._selfsup_data import MAX_COARSE_RATIO, SMORE_MIN_RATIO, PatchSampler, distance_map, interp_rows, pad16, spline_rows
from ._selfsup_train import train

# the names the tests and older callers use
_PatchSampler, _distance_map, _interp_rows, _pad16 = PatchSampler, distance_map, interp_rows, pad16

__all__ = ["SELFSUP_DEFAULTS", "can_train", "cost_estimate", "estimate_seconds", "selfsup_fill"]

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
    "deblur": True,  # thick slices (a slice profile given): rewrite the acquired slices sharpened too
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

    ``auto``: on a CPU training in float32, one per torch thread granted to the task (at most 4, a
    divisor of the batch): 42.5 against 52.7 ms a step with two intra-op threads on a 2-core CPU.
    In bfloat16 the intra-op threads scale well (32.5 ms) and splitting the batch did not (51.9 ms),
    so 1; and 1 on a GPU (one stream is enough).
    """
    if setting == "auto":
        if device.type != "cpu" or low_precision:
            return 1
        cores = torch.get_num_threads()  # the task sets it from the cores idle now (budget.cpu_threads)
        setting = max(n for n in range(1, min(cores, 4) + 1) if batch % n == 0)
    if not isinstance(setting, (int, np.integer)) or isinstance(setting, bool) or setting < 1 or batch % int(setting):
        raise InputError(f"selfsup workers must be 'auto' or a whole number that divides the batch ({batch}), "
                         f"got {setting!r}")
    return int(setting)


def _still_acceptable(accept: Callable[[dict], bool], cfg: dict, profile_px) -> Callable[[int, int, float], bool]:
    """``accept`` asked mid-training about the end of it: the steps that fit, and the best held-out gain so far
    extrapolated in proportion to the steps (an upper bound while the gain grows ever more slowly). Upsampling a
    thin scan x2 trained 77-150 s to the budget's end for +0.0-0.2 dB over the spline, then handed over."""
    def keep_going(step: int, total: int, gain_db: float) -> bool:
        projected = gain_db * total / step if gain_db > 0 else gain_db
        return accept({"steps": total, "steps_planned": int(cfg["steps"]), "stopped_early": total < int(cfg["steps"]),
                       "held_out_gain_db": projected, "slice_profile_px": profile_px})

    return keep_going


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


def cost_estimate(good: np.ndarray, plan: FillPlan, *, device: torch.device, settings: Optional[dict] = None,
                  idle_cores: float = 2.0, deblur: bool = False) -> tuple[float, float, int]:
    """(seconds per training step, seconds of one inference pass, steps planned) at the load given.

    The CPU constants are for 2 idle cores; with none idle one thread ran a step 2.2x slower (73 against
    33 ms), so fewer idle cores stretch both; a GPU divides them by :data:`_GPU_SPEEDUP`. ``deblur`` (thick
    slices, the acquired slices rewritten): the inference covers the whole grid, not the gaps alone.
    """
    cfg = training_plan(device, settings)
    slowdown = 1.0 / _GPU_SPEEDUP if device.type != "cpu" else max(1.0, 2.0 / max(idle_cores, 1.0))
    per_step = _CPU_STEP_S[cfg["precision"]] * slowdown
    if deblur and bool(cfg.get("deblur", True)):
        voxels = 2 * (int(round(plan.positions[-1])) + 1) * good.shape[1] * good.shape[2]
    else:
        voxels = _inference_voxels(good, plan, cfg["margin"])
    inference = voxels * _CPU_VOXEL_S * slowdown
    return per_step, inference, int(cfg["steps"])


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


def _output_grid(good: np.ndarray, plan: FillPlan, *, spline: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The output grid (good slices at their positions, linear interpolation in the gaps; ``spline``: cubic
    B-spline through the good slices on every row, as the thick-slice training inputs) and its keep mask."""
    length = int(round(plan.positions[-1])) + 1
    grid = np.empty((length,) + good.shape[1:], np.float32)
    keep = np.zeros(length, bool)
    keep[np.round(plan.positions).astype(int)] = True
    grid[keep] = good
    t = plan.t[:, None, None].astype(np.float32)
    grid[np.round(plan.targets).astype(int)] = (1 - t) * good[plan.lower] + t * good[plan.lower + 1]
    if spline:
        grid = spline_rows(grid, np.flatnonzero(keep))
    return grid, keep


def _inference_seconds_once(network, grid: np.ndarray, device: torch.device) -> float:
    """Measured seconds per voxel of one inference pass (a forward of 8 planes of the grid, timed)."""
    rows = min(grid.shape[0], 64)
    planes = np.moveaxis(grid[:rows], 2, 0)[:8]
    inputs = pad16(np.stack([planes, np.zeros_like(planes)], axis=1))
    run_slices(network, inputs[:1], device=device, batch_size=1, amp=False)  # first calls pay one-time set-up
    start = time.perf_counter()
    run_slices(network, inputs, device=device, batch_size=8, amp=False)
    return (time.perf_counter() - start) / inputs[:, 0].size


def _fit_budget(cfg: dict, network, grid: np.ndarray, good: np.ndarray, plan: FillPlan, *, device: torch.device,
                budget) -> Optional[float]:
    """Flips and the training deadline (``time.monotonic()``) that leave time for inference; None: no limit.

    With a limited budget the inference time is measured (not estimated from constants), and ``flips``
    ``auto`` keeps its rule (extra variants cost at most :data:`FLIP_SHARE` of the training) against the
    training time that is left.
    """
    if budget is None or budget.seconds is None:
        cfg["flips"] = _flips(cfg, good, plan)
        return None
    once = _inference_voxels(good, plan, cfg["margin"]) * _inference_seconds_once(network, grid, device)
    left = budget.remaining()
    if cfg["flips"] == "auto":  # extra variants only where the planned steps likely fit (steps gain more)
        roomy = left - once > 2.0 * cfg["steps"] * _CPU_STEP_S[cfg["precision"]]
        cfg["flips"] = max(n for n in FLIP_VARIANTS
                           if n == 1 or (roomy and (n - 1) * once <= FLIP_SHARE * (left - n * once)))
    reserve = 1.0 + 0.05 * left + int(cfg["flips"]) * once * 1.5  # inference, and 50 % slack for it
    return time.monotonic() + max(0.0, left - reserve)


def _most_steps(cfg: dict, deadline: Optional[float], device: torch.device) -> Optional[int]:
    """The most training steps that fit before ``deadline`` at an idle machine's measured pace (None: no
    deadline): an upper bound, so a training is skipped only when it surely cannot be long enough."""
    if deadline is None:
        return None
    per_step = _CPU_STEP_S[cfg["precision"]] / (_GPU_SPEEDUP if device.type != "cpu" else 1.0)
    return max(0, int((deadline - time.monotonic()) / per_step))


def _infer(network, grid: np.ndarray, keep: np.ndarray, plan: FillPlan, *, cfg: dict, device: torch.device,
           deblur: bool, progress, cancel, engine: EngineReport) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Predictions of the target rows (Q, H, W) and, with ``deblur``, of the kept rows (G, H, W)."""
    target_rows = np.round(plan.targets).astype(int)
    kept_rows = np.flatnonzero(keep) if deblur else np.zeros(0, int)
    wanted = np.concatenate([target_rows, kept_rows])
    position_of = {int(r): q for q, r in enumerate(wanted)}
    total = np.zeros((len(wanted),) + grid.shape[1:], np.float64)
    distance = distance_map(keep)
    length = grid.shape[0]
    segments = [(0, length - 1)] if deblur else _segments(plan, int(cfg["margin"]), length)
    # orientation 0 sees planes (S, H), 1 planes (S, W); each matches in-plane training images whose other
    # axis is H (resp. W): an in-plane axis too coarse to train on leaves only the orientation it trained
    usable = [i for i, r in enumerate(cfg["grid_ratio"]) if r >= 1.0 / MAX_COARSE_RATIO] or [0, 1]
    orientations = sorted(1 - i for i in usable)
    work, done = len(orientations) * len(segments), 0
    for a, b in segments:
        block = grid[a:b + 1]
        rows_here = [r for r in range(a, b + 1) if r in position_of]
        for orientation in orientations:
            check_cancel(cancel)
            # orientation 0: planes (S, H) for every column; 1: planes (S, W) for every row.
            planes = np.moveaxis(block, 2 - orientation, 0)  # (P, S, X)
            dist_map = np.broadcast_to(distance[a:b + 1, None], planes.shape[1:])
            residual = _predict_residual(
                network, planes, dist_map, flips=int(cfg["flips"]), device=device, batch_size=8, amp=False,
                cancel=cancel, report_to=engine,
                progress=subrange(progress, done / work, (done + 1) / work),
            )
            filled = np.moveaxis(planes + residual, 0, 2 - orientation)  # back to (S, H, W)
            for r in rows_here:
                total[position_of[r]] += filled[r - a]
            done += 1
    result = (total / len(orientations)).astype(np.float32)
    return result[: len(target_rows)], (result[len(target_rows):] if deblur else None)


def selfsup_fill(
    good: np.ndarray,
    plan: FillPlan,
    *,
    device: str = "auto",
    seed: int = 0,
    settings: Optional[dict] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    grid_ratio: tuple[float, float] = (1.0, 1.0),
    budget=None,
    profile: Optional[tuple[float, float]] = None,
    deblur_acquired: bool = False,
    accept: Optional[Callable[[dict], bool]] = None,
) -> tuple[Optional[np.ndarray], dict, Optional[np.ndarray]]:
    """Train on ``good`` (G, H, W, normalised) and answer ``plan``.

    Returns ((Q, H, W) float32, report details: the device used, settings, training summary and timings,
    the acquired slices deblurred (G, H, W) or None).

    Parameters
    ----------
    settings : dict, optional
        Overrides of :data:`SELFSUP_DEFAULTS` (e.g. fewer ``steps`` in tests).
    grid_ratio : (float, float)
        The output grid's step along the slice axis in pixels of H and of W. Above
        :data:`SMORE_MIN_RATIO` the training strips are resampled to that step with a slice profile.
    budget : TimeBudget, optional
        Checked while training runs: the schedule is shortened to the steps that fit, training stops at
        the deadline (leaving the measured inference time) and the best network so far is used.
    profile : (float, float), optional
        Thick slices: the acquired slices' profile FWHM in pixels of H and of W; training inputs are
        blurred by it (SMORE-style).
    deblur_acquired : bool
        With a ``profile``, also return the acquired slices deblurred, when ``settings["deblur"]`` is true.
    accept : callable, optional
        Called with the training summary (``steps``, ``steps_planned``, ``stopped_early``,
        ``held_out_gain_db``, ``slice_profile_px``) before the inference: False skips the inference (the slices
        returned are None), because the caller will drop the result (``auto``'s hand-over): inference on a
        whole CT costs minutes, and it was run only to be thrown away.
    """
    if not can_train(good, plan):
        raise InputError(
            "selfsup needs integer slice positions and at least 2 good slices of 24 x 24 voxels or more; "
            "use flow or linear for this volume"
        )
    details: dict = {}
    target_device = select_device(device)
    cfg = training_plan(target_device, settings)
    deblur = bool(cfg.get("deblur", True)) and profile is not None and deblur_acquired
    cfg["grid_ratio"] = tuple(float(r) for r in grid_ratio)
    grid, keep = _output_grid(good, plan, spline=profile is not None)
    start = time.perf_counter()
    torch.manual_seed(seed)
    # Channels-last activations: about 25 % faster convolutions on a CPU (oneDNN), same results up to rounding.
    network = _network(cfg["features"]).to(target_device, memory_format=torch.channels_last)
    deadline = _fit_budget(cfg, network, grid, good, plan, device=target_device, budget=budget)
    profile_px = None if profile is None else [round(float(p), 3) for p in profile]
    possible = _most_steps(cfg, deadline, target_device)
    if accept is not None and possible is not None and not accept(
            {"steps": possible, "steps_planned": int(cfg["steps"]), "stopped_early": possible < int(cfg["steps"]),
             "held_out_gain_db": math.inf, "slice_profile_px": profile_px}):
        # even at an idle machine's pace and with any gain, the steps left after the measured inference would be
        # thrown away: do not start (on a whole CT the training pairs and the deterministic mode's imports took
        # 20 s, for nothing)
        summary = {"steps_planned": int(cfg["steps"]), "steps": 0, "best_step": 0, "losses": [],
                   "stopped_early": True, "workers": int(cfg["workers"]), "held_out_mse_base": None,
                   "held_out_mse": None, "held_out_gain_db": 0.0,
                   "training_skipped": f"at most {possible} steps fit the budget left after the measured "
                                       "inference, fewer than are worth keeping"}
    else:
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            sampler = PatchSampler(good, keep, cfg["patch"], cfg["foreground_share"], np.random.default_rng(seed),
                                   grid_ratio=grid_ratio, profile=profile, deblur=deblur)
            network, summary = train(sampler, network, device=target_device, seed=seed, cfg=cfg, deadline=deadline,
                                     progress=subrange(progress, 0.0, 0.8), cancel=cancel,
                                     keep_going=None if accept is None else _still_acceptable(accept, cfg, profile_px))
        finally:
            torch.use_deterministic_algorithms(deterministic)
    train_seconds = time.perf_counter() - start
    engine = EngineReport()
    if summary["stopped_early"] and budget is not None:
        budget.cut(f"selfsup training: {summary['steps']} of {summary['steps_planned']} steps "
                   f"(best on held-out pairs at step {summary['best_step']})")
    inferred = accept is None or accept({**summary, "slice_profile_px": profile_px})
    result = sharpened = None
    if inferred:
        result, sharpened = _infer(network, grid, keep, plan, cfg=cfg, device=target_device, deblur=deblur,
                                   progress=subrange(progress, 0.8, 1.0), cancel=cancel, engine=engine)
    losses = summary.pop("losses")
    details["device"] = describe_device(target_device)
    details["selfsup"] = {
        "seed": int(seed), "gap_lengths": _gap_lengths(plan), **summary, "batch": int(cfg["batch"]),
        "patch": int(cfg["patch"]), "features": list(cfg["features"]), "flips": int(cfg["flips"]),
        "grid_ratio": [round(float(r), 3) for r in grid_ratio],
        "thick_slice_training": profile is not None or any(r > SMORE_MIN_RATIO for r in grid_ratio),
        "slice_profile_px": profile_px, "inference_skipped": not inferred,
        "deblurred_acquired": deblur, "training_precision": cfg["precision"],
        "final_loss": round(float(np.mean(losses[-20:])), 6) if losses else None,
        "train_seconds": round(train_seconds, 2), "inference_seconds": round(engine.seconds, 2),
        "engine": engine.as_dict(),
    }
    if engine.fallbacks:
        details["warnings"] = list(engine.fallbacks)
    return result, details, sharpened
