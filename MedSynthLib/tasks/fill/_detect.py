"""Finding blank and corrupted slices.

Two tests, each giving a reason a user can check:

* **blank**: every voxel of the slice has the same value, inside the imaged
  region (runs of constant slices that touch the first or last slice are the
  padding of the field of view, not damage, and are left alone).
* **corrupted**: the slice disagrees with the linear interpolation of its
  nearest good neighbours far more than (a) those neighbours differ from each
  other and (b) the volume's slices typically disagree with their
  interpolation. Healthy anatomy changes smoothly, so its interpolation error
  is a fraction of the change across the gap; a zeroed, noisy, darkened or
  shifted slice breaks both ratios. Measured twice: as the mean absolute
  difference, and as the mean over an 8 x 8 grid of blocks of the absolute mean
  signed difference (a dark band is a systematic local change).
* **shifted**: phase correlation between the slice and its neighbours'
  interpolation peaks at 6 voxels or more, and moving the slice back by that
  much cuts its difference from the interpolation by 25 % or more (thick slices change too much for the ratios to see a shift). The worst slice is flagged first and then
  excluded from its neighbours' interpolation, so a bad slice does not make
  its neighbours look bad.

Work is on a 2x in-plane subsample in float32: a few hundred milliseconds per volume.
"""

from __future__ import annotations

import numpy as np

__all__ = ["detect", "RATIO_THRESHOLD", "GLOBAL_THRESHOLD", "SHIFT_MIN"]

#: Smallest in-plane shift flagged, in voxels of the 2x subsample (so 6 voxels).
SHIFT_MIN = 3
#: Moving a shifted slice back must cut its difference from the interpolation below this fraction.
SHIFT_GAIN = 0.75
#: Interpolation error / change across the gap above which a slice is suspect.
RATIO_THRESHOLD = 2.5
#: Interpolation error / the volume's median interpolation error above which a slice is suspect.
GLOBAL_THRESHOLD = 4.0


def _block_bias(difference: np.ndarray, blocks: int = 8) -> float:
    """Mean over a blocks x blocks grid of |mean signed difference|: systematic, local intensity change."""
    h, w = difference.shape
    hb, wb = max(h // blocks, 1), max(w // blocks, 1)
    trimmed = difference[: hb * (h // hb), : wb * (w // wb)]
    means = trimmed.reshape(h // hb, hb, w // wb, wb).mean(axis=(1, 3))
    return float(np.mean(np.abs(means)))


def _shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """Integer translation (dy, dx) that best maps ``b`` onto ``a`` by phase correlation, and the peak height."""
    fa = np.fft.rfft2(a - a.mean())
    fb = np.fft.rfft2(b - b.mean())
    cross = fa * np.conj(fb)
    cross /= np.maximum(np.abs(cross), 1e-9)
    surface = np.fft.irfft2(cross, s=a.shape)
    peak = np.unravel_index(int(np.argmax(surface)), surface.shape)
    dy, dx = (int(p) if p <= n // 2 else int(p) - n for p, n in zip(peak, a.shape))
    return dy, dx, float(surface[peak])


def _interpolated(stack: np.ndarray, s: int, lo: int | None, hi: int | None) -> np.ndarray:
    """Slice s as its neighbours lo and hi predict it: linear between them, the one there is at an end."""
    if lo is not None and hi is not None:
        t = (s - lo) / (hi - lo)
        return (1 - t) * stack[lo] + t * stack[hi]
    return stack[lo if lo is not None else hi]


def _measures(stack: np.ndarray, s: int, lo: int | None, hi: int | None) -> np.ndarray:
    """(mean absolute, block bias) difference between slice s and the interpolation of lo and hi."""
    difference = stack[s] - _interpolated(stack, s, lo, hi)
    return np.array([np.mean(np.abs(difference)), _block_bias(difference)])


class _Good:
    """The good slices of a stack as detection goes: nearest good neighbours, and the change between them."""

    def __init__(self, small: np.ndarray, bad: set[int]) -> None:
        self.small, self.bad, self.n = small, bad, small.shape[0]

    def neighbours(self, s: int) -> tuple[int | None, int | None]:
        lo = next((x for x in range(s - 1, -1, -1) if x not in self.bad), None)
        hi = next((x for x in range(s + 1, self.n) if x not in self.bad), None)
        return lo, hi

    def step(self, a: int | None, b: int | None) -> np.ndarray | None:
        if a is None or b is None:
            return None
        return _measures(self.small, a, b, None)


def _blank(stack: np.ndarray, axis_name: str) -> tuple[dict[int, str], int, int]:
    """Constant slices between the first and last slice with content, and those two indices (-1 if none)."""
    count = stack.shape[0]
    flat = stack.reshape(count, -1)
    constant = np.all(flat == flat[:, :1], axis=1)
    content = np.flatnonzero(~constant)
    if content.size == 0:
        return {}, -1, -1
    first, last = int(content[0]), int(content[-1])
    flagged = {int(s): f"blank: every voxel along {axis_name}={s} is {flat[s, 0]}"
               for s in np.flatnonzero(constant) if first < s < last}
    return flagged, first, last


def _errors_and_steps(good: _Good) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: its difference from its neighbours' interpolation, and the change between consecutive good
    slices next to it (not involving it): what anatomy does there."""
    errors = np.full((good.n, 2), np.nan)
    steps = np.full((good.n, 2), np.nan)
    for s in range(good.n):
        if s in good.bad:
            continue
        lo, hi = good.neighbours(s)
        if lo is None and hi is None:
            continue
        errors[s] = _measures(good.small, s, lo, hi)
        around = [m for m in (good.step(lo, good.neighbours(lo)[0] if lo is not None else None),
                              good.step(hi, good.neighbours(hi)[1] if hi is not None else None)) if m is not None]
        if around:
            steps[s] = np.mean(around, axis=0)
    return errors, steps


def _corrupted(good: _Good, flagged: dict[int, str], offset: int, axis_name: str) -> None:
    """Flag the worst outlier slice, one at a time (its neighbours then change), until none is left."""
    names = ("mean absolute difference", "local intensity bias")
    for _ in range(max(1, good.n // 3)):
        errors, steps = _errors_and_steps(good)
        typical = np.nanmedian(errors, axis=0)
        if not np.all(typical > 0):
            break
        ratio = errors / np.maximum(steps, 0.05 * typical)
        global_ratio = errors / typical
        suspect = (ratio > RATIO_THRESHOLD) & (global_ratio > GLOBAL_THRESHOLD) & np.isfinite(ratio)
        if not np.any(suspect):
            break
        score = np.where(suspect, np.minimum(ratio / RATIO_THRESHOLD, global_ratio / GLOBAL_THRESHOLD), -np.inf)
        worst, which = np.unravel_index(int(np.argmax(score)), score.shape)
        worst = int(worst)
        good.bad.add(worst)
        flagged[worst + offset] = (
            f"corrupted: its {names[which]} from its neighbours' interpolation is {ratio[worst, which]:.1f}x "
            f"the change between neighbouring slices and {global_ratio[worst, which]:.1f}x a typical slice's "
            f"along {axis_name}"
        )


def _shifted(good: _Good, flagged: dict[int, str], offset: int, axis_name: str) -> None:
    """A slice moved in-plane: phase correlation with its neighbours' interpolation peaks away from zero, and
    moving the slice back by that much cuts its difference from the interpolation."""
    small = good.small
    for s in range(good.n):
        if s in good.bad:
            continue
        lo, hi = good.neighbours(s)
        if lo is None or hi is None:
            continue
        predicted = _interpolated(small, s, lo, hi)
        dy, dx, _ = _shift(predicted, small[s])
        if max(abs(dy), abs(dx)) < SHIFT_MIN:
            continue
        before = float(np.mean(np.abs(small[s] - predicted)))
        after = float(np.mean(np.abs(np.roll(small[s], (dy, dx), axis=(0, 1)) - predicted)))
        if after < SHIFT_GAIN * before:
            good.bad.add(s)
            flagged[s + offset] = (
                f"corrupted: shifted in-plane by about ({2 * dy}, {2 * dx}) voxels relative to its neighbours "
                f"along {axis_name}"
            )


def detect(stack: np.ndarray, *, axis_name: str = "k") -> list[tuple[int, str]]:
    """Blank and corrupted slices of ``stack`` (S, H, W), slice axis first; sorted (index, reason)."""
    flagged, first, last = _blank(stack, axis_name)
    if first < 0 or last - first < 2:
        return sorted(flagged.items())
    small = stack[first:last + 1, ::2, ::2].astype(np.float32)
    low, high = np.percentile(small[:, ::2, ::2], [1, 99])
    small = (small - low) / max(float(high - low), 1e-6)
    good = _Good(small, {s - first for s in flagged})
    _corrupted(good, flagged, first, axis_name)
    _shifted(good, flagged, first, axis_name)
    return sorted(flagged.items())
