"""Self-supervised denoising: a blind-spot network trained on the volume it denoises.

Noise2Self's observation: if a predictor never sees the voxel it predicts (it is
"J-invariant"), and the noise is independent between voxels, then training it
to reproduce the *noisy* voxel from its neighbours has the clean image as its
optimum. No clean data and no other scan is needed.

How this one is built, and why:

* **Blindness by architecture**, not by masking: the first 3x3x3 convolution has
  its centre tap zeroed, every later layer uses even dilations (2, 4, 6, ...) or
  1x1 kernels, and the sum of the resulting offsets can never return to the
  centre. So every voxel of a crop is a training target (masking schemes such
  as Noise2Void train on about 1% of voxels per step), which is what makes a CPU
  budget enough. For thick-slice volumes the later layers are in-plane only
  (kernel 1x3x3): the network then sees one neighbouring slice each side
  (2.5D context) and otherwise works in-plane.
* **A fixed skip path**: the centre-excluded 3x3x3 Gaussian average of the input
  is added to the network's output; the network learns a correction to a
  sensible blind estimate, so few steps already give a useful result.
* **Rician magnitude** (MR): the network predicts the *squared* magnitude;
  ``E[M^2] = A^2 + 2 sigma^2`` exactly, so ``A^2`` is the prediction minus
  ``2 sigma^2``, an unbiased correction at every signal level.
* **Fusion with the observed voxel**: a blind prediction throws away the voxel
  itself. A local Wiener weight combines the two by their error variances:
  the noise variance (known from the estimate) and the prediction's own error
  variance, estimated as the local mean of (observed - predicted)^2 minus the
  noise variance. ``strength`` scales the noise variance used here.
* **SURE fusion** (:func:`._sure.sure_fusion`): the final output is ``sum_i w_i f_i`` over the blind
  prediction, its Wiener fusion and the training-free components of the ``fusion`` method (collaborative
  filtering, sliding DCT, non-local means; :class:`._sure.FusionSettings`), with the convex weights
  that minimise Stein's unbiased risk estimate, one set per class of local gradient. SURE needs only the
  noisy data and sigma, never a clean image; the blind prediction's divergence is exactly 0
  (J-invariance), the others' come from one random probe (Monte-Carlo SURE). Why: the small CPU network
  alone is weaker than the classical filters, but its errors are largely independent of theirs (it never
  sees the voxel, and it sees 15 voxels far), so it can add to them where SURE says it does.
* Deterministic for a seed on the CPU: fixed step count, seeded crops and
  initialisation, no time-based stopping.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ...budget import TimeBudget
from ...engine import EngineReport, run_with_fallback, select_device
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from ._sure import FusionSettings, NetworkEstimates, _bbox, sure_fusion

__all__ = ["SelfSupSettings", "BlindSpotNet", "denoise_selfsup", "TRAINING_SHARE"]

log = logging.getLogger(__name__)

#: Share of the remaining time budget that training may use (inference and the fusion take the rest).
TRAINING_SHARE = 0.5
#: Training never stops before this many steps (a few seconds), whatever the budget.
MIN_TRAINING_STEPS = 10


@dataclass(frozen=True)
class SelfSupSettings:
    """Knobs of the self-supervised denoiser.

    ``sure_fusion`` combines the network's two estimates with the training-free components of ``fusion``
    (:class:`._sure.FusionSettings`: sliding DCT, non-local means) by SURE-fitted weights; off, the output is
    the Wiener fusion only.
    """

    channels: int = 8
    dilations: tuple[int, ...] = (2, 4, 6, 2)
    steps: int = 200
    batch_size: int = 2
    crop: int = 40
    learning_rate: float = 3e-3
    fusion_radius: float = 2.0
    margin: int = 4
    slab: int = 48
    sure_fusion: bool = True
    fusion: FusionSettings = FusionSettings()


class _MaskedConv3d(nn.Conv3d):
    """A 3x3x3 (or 3xkxk) convolution whose centre tap is always zero: the blind spot."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)
        mask = torch.ones_like(self.weight)
        mask[:, :, 1, 1, 1] = 0
        self.register_buffer("blind_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.blind_mask, self.bias)


class BlindSpotNet(nn.Module):
    """J-invariant 3D network: output voxel v never depends on input voxel v.

    ``forward(x)`` maps (B, 1, D, H, W) to (B, outputs, D, H, W); ``skip`` (B, 1, D, H, W)
    is the blind estimate channel 0 corrects; a second output channel, when asked for,
    is the log of the prior variance (relative to a reference noise variance). ``planar=True`` keeps the
    layers after the first in-plane (D is the slice axis).
    """

    def __init__(self, *, channels: int = 24, dilations: tuple[int, ...] = (2, 4, 6, 2), planar: bool = False,
                 outputs: int = 1) -> None:
        super().__init__()
        if any(d % 2 for d in dilations):
            raise ValueError("blind-spot dilations must be even")
        self.first = _MaskedConv3d(1, channels)
        layers = []
        for d in dilations:
            if planar:
                layers.append(nn.Conv3d(channels, channels, (1, 3, 3), dilation=(1, d, d), padding=(0, d, d)))
            else:
                layers.append(nn.Conv3d(channels, channels, 3, dilation=d, padding=d))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(nn.Conv3d(channels, channels, 1), nn.LeakyReLU(0.1), nn.Conv3d(channels, outputs, 1))
        self.act = nn.LeakyReLU(0.1)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @property
    def radius(self) -> int:
        return 1 + sum(int(layer.dilation[-1]) for layer in self.layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = self.act(self.first(x))
        for layer in self.layers:
            h = h + self.act(layer(h))
        out = self.head(h)
        if out.shape[1] == 1:
            return skip + out
        return torch.cat([skip + out[:, :1], out[:, 1:]], dim=1)


class _TrainingClock:
    """Fits the training into its share of a :class:`TimeBudget` (see :func:`denoise_selfsup`).

    ``after_step`` returns the learning rate for the next step (the schedule's own while the plan fits),
    or None to stop; without a budget it never intervenes, so results stay reproducible for a seed.
    """

    def __init__(self, budget: Optional[TimeBudget], steps: int) -> None:
        self.budget, self.steps = budget, steps
        self.started = time.monotonic()
        self.deadline = None if budget is None or budget.seconds is None else \
            self.started + TRAINING_SHARE * budget.remaining()
        self.annealing, self.end, self.rate0, self.step0 = False, steps, 0.0, 0

    def after_step(self, step: int, rate: float) -> Optional[float]:
        if self.deadline is None:
            return rate
        done = step + 1
        now = time.monotonic()
        if not self.annealing:
            per_step = (now - self.started) / done
            affordable = int(max(0.0, self.deadline - now) / max(per_step, 1e-9))
            if done + affordable < self.steps:
                self.annealing, self.rate0, self.step0 = True, rate, done
                self.end = max(done + affordable, min(MIN_TRAINING_STEPS, self.steps))
                self.budget.cut(f"self-supervised training planned {self.steps} steps, the budget allows about "
                                f"{self.end} ({per_step:.2f} s a step): learning rate annealed to stop there")
        if self.annealing:
            if done >= self.end or (now > self.deadline and done >= MIN_TRAINING_STEPS):
                self.budget.cut(f"self-supervised training stopped at step {done} of {self.steps}")
                return None
            return self.rate0 * (self.end - done) / max(1, self.end - self.step0)
        return rate


def _blind_gaussian_kernel() -> torch.Tensor:
    """3x3x3 Gaussian (sigma 1 voxel) with the centre removed and renormalised."""
    grid = np.stack(np.meshgrid(*([np.arange(-1, 2)] * 3), indexing="ij"))
    weights = np.exp(-(grid**2).sum(0) / 2.0)
    weights[1, 1, 1] = 0
    weights /= weights.sum()
    return torch.from_numpy(weights.astype(np.float32))[None, None]


def _skip(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.conv3d(x, kernel, padding=1)


def denoise_selfsup(
    array: np.ndarray,
    *,
    sigma: float,
    rician: bool,
    foreground: np.ndarray,
    coils: float = 1.0,
    planar: bool = False,
    spacing: Optional[tuple[float, float, float]] = None,
    strength: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    settings: SelfSupSettings = SelfSupSettings(),
    budget: Optional[TimeBudget] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    engine_report: Optional[EngineReport] = None,
) -> tuple[np.ndarray, dict]:
    """Train a blind-spot network on ``array`` and return the fused, bias-corrected estimate.

    Parameters
    ----------
    array : ndarray, shape (D, H, W)
        Intensities in the volume's units; ``D`` must be the slice axis when ``planar``.
    sigma : float
        Gaussian noise standard deviation (per channel for Rician data).
    rician : bool
        Treat ``array`` as a magnitude image (non-negative, Rician noise).
    coils : float
        Effective coil count of a magnitude (1: Rician; N: non-central chi with 2N degrees of freedom: the
        squared target's bias ``2N s^2`` and variance ``4 A^2 s^2 + 4N s^4``).
    spacing : three floats, optional
        Voxel size (mm) in ``array``'s axis order: shapes the blocks of the fusion's block filters.
    foreground : ndarray of bool
        Where training crops are centred and where the network runs (plus its
        receptive field); elsewhere the output is the blind Gaussian estimate.
    budget : TimeBudget, optional
        Checked after every training step: training may use :data:`TRAINING_SHARE` of what is left when it
        starts (the rest is for inference and the fusion's non-local means, which take about as long); when
        the measured step time says the planned steps will not fit, the learning rate is annealed linearly to
        zero over the steps that do, and training stops there with the network so far (recorded as a cut).

    Returns
    -------
    (ndarray float32, dict)
        The denoised array in the input's units and a report (steps, losses, timings).
    """
    start = time.perf_counter()
    engine_report = engine_report if engine_report is not None else EngineReport()
    engine_report.device_requested = str(device)
    target_device = select_device(device)
    x, s, scale, offset = _normalised(array, sigma=sigma, rician=rician, foreground=foreground)
    target = x**2 if rician else x
    torch.manual_seed(seed)
    network = BlindSpotNet(channels=settings.channels, dilations=settings.dilations, planar=planar, outputs=1)
    crop = [min(settings.crop, n) for n in x.shape]
    if planar:
        crop[0] = min(x.shape[0], max(3, settings.crop // 4))
    details: dict = {"steps": settings.steps, "crop": crop, "receptive_radius": network.radius, "planar": planar,
                     "channels": settings.channels}
    positions = _training_crops(x.shape, foreground, crop, settings, np.random.default_rng(seed))
    inner = tuple(slice(min(settings.margin, n // 4), n - min(settings.margin, n // 4)) for n in crop)

    job = _Job(settings, seed, budget, progress, cancel, details, spacing)

    def train(dev: torch.device, batch: int) -> list[float]:
        return _train(network, x, target, positions, inner, dev=dev, job=job)

    losses = run_with_fallback(train, device=target_device, batch_size=settings.batch_size, report_to=engine_report)
    used = torch.device(engine_report.device_used)
    details["loss_first"] = round(float(np.mean(losses[:10])), 8)
    details["loss_last"] = round(float(np.mean(losses[-10:])), 8)
    details["train_seconds"] = round(time.perf_counter() - start, 2)
    prediction = _predict(network, x, target, foreground, device=used, planar=planar, slab=settings.slab,
                          progress=progress, cancel=cancel)
    details["inference_seconds"] = round(time.perf_counter() - start - details["train_seconds"], 2)
    estimate = _fuse(x, target, prediction, s=s, rician=rician, foreground=foreground, strength=strength, job=job,
                     coils=coils)
    details["seconds"] = round(time.perf_counter() - start, 2)
    engine_report.seconds += time.perf_counter() - start
    report(progress, 1.0, "self-supervised denoising done")
    return (estimate * scale + offset).astype(np.float32), details


@dataclass
class _Job:
    """What every step of one run shares: its knobs, seed, clock, callbacks and the report being written."""

    settings: SelfSupSettings
    seed: int
    budget: Optional[TimeBudget]
    progress: Optional[ProgressCallback]
    cancel: Optional[CancelToken]
    details: dict
    spacing: Optional[tuple[float, float, float]] = None  # mm, array order: shapes the fusion's blocks


def _normalised(array: np.ndarray, *, sigma: float, rician: bool,
                foreground: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """(x, s, scale, offset): intensities and sigma in network units. Rician maths needs zero to stay zero:
    scale only; Gaussian data: affine."""
    data = np.asarray(array, dtype=np.float32)
    if rician:
        offset = 0.0
        scale = float(np.percentile(data[foreground], 99.5)) if foreground.any() else float(data.max())
    else:
        offset = float(np.percentile(data, 0.5))
        scale = float(np.percentile(data, 99.5)) - offset
    scale = max(scale, 1e-6)
    return (data - offset) / scale, float(sigma) / scale, scale, offset


def _training_crops(shape, foreground: np.ndarray, crop: list[int], settings: SelfSupSettings,
                    rng: np.random.Generator) -> list[tuple[slice, ...]]:
    """Every training crop, drawn up front from the seed (85 % centred in the foreground): the same seed gives
    the same training run."""
    centres = np.argwhere(foreground[:: 2, :: 2, :: 2]) * 2 if foreground.any() else None

    def crop_at(centre: np.ndarray) -> tuple[slice, ...]:
        return tuple(
            slice(int(np.clip(c - n // 2, 0, size - n)), int(np.clip(c - n // 2, 0, size - n)) + n)
            for c, n, size in zip(centre, crop, shape)
        )

    positions = []
    for _ in range(settings.steps * settings.batch_size):
        if centres is not None and len(centres) and rng.random() < 0.85:
            centre = centres[rng.integers(len(centres))]
        else:
            centre = np.array([rng.integers(n) for n in shape])
        positions.append(crop_at(centre))
    return positions


def _train(network: "BlindSpotNet", x: np.ndarray, target: np.ndarray, positions: list, inner: tuple, *,
           dev: torch.device, job: _Job) -> list[float]:
    """The blind-spot training loop on ``dev`` (one-cycle schedule; the clock may anneal and stop it early)."""
    settings, seed, progress, cancel = job.settings, job.seed, job.progress, job.cancel
    torch.manual_seed(seed)
    network.to(dev)
    net = network.to(memory_format=torch.channels_last_3d) if dev.type == "cpu" else network
    k = _blind_gaussian_kernel().to(dev)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=settings.learning_rate,
                                                   total_steps=settings.steps, pct_start=0.1)
    losses = []
    net.train()
    clock = _TrainingClock(job.budget, settings.steps)
    window = (slice(None), slice(None)) + inner
    for step in range(settings.steps):
        check_cancel(cancel)
        picks = positions[step * settings.batch_size:(step + 1) * settings.batch_size]
        xb = torch.from_numpy(np.stack([x[p] for p in picks])[:, None]).to(dev)
        tb = torch.from_numpy(np.stack([target[p] for p in picks])[:, None]).to(dev)
        if dev.type == "cpu":
            xb = xb.contiguous(memory_format=torch.channels_last_3d)
        loss = torch.mean((net(xb, _skip(tb, k)) - tb)[window] ** 2)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            report(progress, 0.75 * (step + 1) / settings.steps, f"self-supervised training {step + 1}/{settings.steps}")
        rate = clock.after_step(step, optimiser.param_groups[0]["lr"])
        if rate is None:
            break
        if clock.annealing:
            for group in optimiser.param_groups:
                group["lr"] = rate
        else:
            schedule.step()
    job.details["steps_run"] = len(losses)
    return losses


def _predict(network: "BlindSpotNet", x: np.ndarray, target: np.ndarray, foreground: np.ndarray, *,
             device: torch.device, planar: bool, slab: int, progress: Optional[ProgressCallback],
             cancel: Optional[CancelToken]) -> np.ndarray:
    """The blind prediction: the network on the foreground's bounding box (plus its receptive field), slab by
    slab; the blind Gaussian estimate elsewhere."""
    network.eval()
    k = _blind_gaussian_kernel().to(device)
    radius = network.radius
    with torch.inference_mode():
        full_target = torch.from_numpy(target)[None, None]
        prediction = _skip(full_target.to(device), k)[0, 0].cpu().numpy()
    box = _bbox(foreground, margin=radius // 2)
    lo, hi = box[0].start, box[0].stop
    halo = radius if not planar else 1
    with torch.inference_mode():
        for first in range(lo, hi, slab):
            check_cancel(cancel)
            last = min(hi, first + slab)
            a, b = max(0, first - halo), min(x.shape[0], last + halo)
            region = (slice(a, b), box[1], box[2])
            xb = torch.from_numpy(np.ascontiguousarray(x[region]))[None, None].to(device)
            tb = torch.from_numpy(np.ascontiguousarray(target[region]))[None, None].to(device)
            out = network(xb, _skip(tb, k))[0].cpu().numpy()
            keep = slice(first - a, first - a + (last - first))
            prediction[first:last, box[1], box[2]] = out[0, keep]
            report(progress, 0.75 + 0.2 * (last - lo) / max(1, hi - lo), "self-supervised inference")
    return prediction


def _fuse(x: np.ndarray, target: np.ndarray, prediction: np.ndarray, *, s: float, rician: bool,
          foreground: np.ndarray, strength: float, job: _Job, coils: float = 1.0) -> np.ndarray:
    """Wiener fusion of the blind prediction with the observed voxel (target domain), then, with
    ``settings.sure_fusion``, the SURE-weighted combination with non-local means (magnitude domain)."""
    settings, details = job.settings, job.details
    n = float(coils)  # 1: Rician, the forms below exactly as before (x 1.0)
    noise_var = (4 * np.maximum(prediction - 2 * n * s * s, 0) * s * s + 4 * n * s**4) if rician else np.full_like(prediction, s * s)
    noise_var = noise_var * float(strength) ** 2

    def wiener(observed_target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        residual = ndimage.gaussian_filter((observed_target - prediction) ** 2, settings.fusion_radius)
        error_var = np.maximum(residual - noise_var, 0)
        weight = error_var / np.maximum(error_var + noise_var, 1e-12)
        return prediction + weight * (observed_target - prediction), weight

    fused, weight = wiener(target)
    details["fusion_weight_on_observed"] = round(float(np.mean(weight[foreground])) if foreground.any() else float(np.mean(weight)), 4)
    del weight
    to_magnitude = (lambda t: np.sqrt(np.maximum(t - 2 * n * s * s, 0))) if rician else (lambda t: t)
    if not settings.sure_fusion:
        return to_magnitude(fused)
    report(job.progress, 0.8, "DCT and non-local means for the fusion")
    network = NetworkEstimates(blind=to_magnitude(prediction), wiener_now=to_magnitude(fused),
                               wiener=lambda observed: to_magnitude(wiener(observed**2 if rician else observed)[0]))
    estimate, fusion = sure_fusion(x, s, rician=rician, coils=coils, foreground=foreground, strength=strength, seed=job.seed,
                                   settings=settings.fusion, network=network, spacing=job.spacing, budget=job.budget,
                                   cancel=job.cancel)
    details["fusion"] = fusion
    return estimate
