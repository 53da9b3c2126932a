"""Training pairs of ``selfsup``: in-plane strips degraded the way the through-plane axis was.

Why: the in-plane axes are sampled finely, so removing rows of an in-plane strip with the job's own
missing-slice pattern, and learning to restore them, gives unlimited training pairs. Two kinds of
degradation are modelled:

* missing slices between sharp ones (zeroed slices, fills): the rows are removed and linearly
  interpolated, the rows kept stay as they are;
* thick slices (SMORE-style, ``profile`` given): every acquired slice is an average over a slice
  profile (a Gaussian of the estimated FWHM). The input strip is the in-plane image blurred by that
  profile, sampled at the kept rows and interpolated with a cubic B-spline (an untrained network is
  then B-spline resampling, a strong peer on blurred slices); the target is the sharp strip on every row,
  so the network learns to undo the profile and, with ``deblur``, to sharpen the acquired rows too.

Strips are taken at the output grid's step (``grid_ratio`` in-plane pixels per output row); an
in-plane axis much coarser than the output grid (a 5 mm CT axis when the slice axis is an in-plane
one) teaches nothing about it and is not used for training.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np

from ...volume import THICK_SLICE_RATIO

__all__ = ["SMORE_MIN_RATIO", "PatchSampler", "distance_map", "interp_rows", "spline_rows", "pad16"]

#: Above this ratio of the output grid's step to an in-plane pixel, training strips are resampled to
#: the grid step with a slice profile (thick slices); below it, in-plane rows are used as they are.
SMORE_MIN_RATIO = THICK_SLICE_RATIO
#: An in-plane axis whose pixels are more than this many times the output grid's step is not trained on.
MAX_COARSE_RATIO = 1.5


def pad16(inputs: np.ndarray) -> np.ndarray:
    """Pad (N, C, H, W) at the bottom/right by edge replication to multiples of 16 (the U-Net's 4 poolings)."""
    h, w = inputs.shape[-2:]
    pad_h, pad_w = (-h) % 16, (-w) % 16
    if pad_h == 0 and pad_w == 0:
        return np.ascontiguousarray(inputs)
    return np.pad(inputs, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")


def distance_map(keep: np.ndarray) -> np.ndarray:
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


def missing_runs(keep: np.ndarray) -> list[int]:
    """Lengths of the runs of missing rows in ``keep``, in order."""
    edges = np.diff(np.concatenate([[0], (~keep).astype(np.int8), [0]]))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


def training_pattern(keep: np.ndarray, *, sparse_share: float = 0.2, spacing: int = 5) -> np.ndarray:
    """The keep pattern to train with: the job's own, or for sparse gaps the same runs packed closer.

    A few isolated missing slices give one supervised row per patch; repeating the job's runs with
    ``spacing`` good rows between them keeps real rows around every gap (as at inference) while
    giving each patch several gaps to learn from.
    """
    if np.mean(~keep) >= sparse_share:
        return keep
    runs = missing_runs(keep)
    pattern: list[bool] = [True] * spacing
    while len(pattern) < max(len(keep), 256):
        for run in runs:
            pattern += [False] * run + [True] * spacing
    return np.asarray(pattern, bool)


def interp_rows(image: np.ndarray, kept_rows: np.ndarray) -> np.ndarray:
    """Rows of ``image`` (R, ...) linearly interpolated from ``kept_rows`` (first and last row must be kept)."""
    rows = np.arange(image.shape[0])
    upper = np.clip(np.searchsorted(kept_rows, rows, side="right"), 1, len(kept_rows) - 1)
    lo, hi = kept_rows[upper - 1], kept_rows[upper]
    t = ((rows - lo) / np.maximum(hi - lo, 1)).astype(np.float32).reshape((-1,) + (1,) * (image.ndim - 1))
    return (1 - t) * image[lo] + t * image[hi]


@lru_cache(maxsize=64)
def _spline_matrix(kept: tuple, length: int) -> np.ndarray:
    """(length, len(kept)) weights of cubic B-spline interpolation (prefiltered, mirrored ends) of rows on a
    regular grid of kept rows onto every row 0 .. length - 1; None-equivalent (empty) when not regular."""
    from scipy import ndimage

    kept_rows = np.asarray(kept, float)
    steps = np.diff(kept_rows)
    if len(kept_rows) < 4 or np.ptp(steps) > 1e-9:
        return np.zeros((0, 0), np.float32)
    coords = (np.arange(length) - kept_rows[0]) / steps[0]
    basis = np.eye(len(kept_rows))
    return np.stack([ndimage.map_coordinates(b, [coords], order=3, mode="mirror") for b in basis], axis=1).astype(np.float32)


def spline_rows(image: np.ndarray, kept_rows: np.ndarray) -> np.ndarray:
    """Like :func:`interp_rows` but cubic B-spline interpolation (the SimpleITK ``sitkBSpline`` kind) where the
    kept rows are regular and at least 4; linear otherwise. Used as the base on thick slices: a network
    that has not learned anything yet is then as good as B-spline resampling."""
    weights = _spline_matrix(tuple(int(r) for r in kept_rows), int(image.shape[0]))
    if weights.size == 0:
        return interp_rows(image, kept_rows)
    kept = image[kept_rows].reshape(len(kept_rows), -1)
    return (weights @ kept).reshape(image.shape).astype(np.float32)


def _blur(image: np.ndarray, fwhm: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter1d(image, fwhm / 2.355, axis=1, mode="nearest") if fwhm > 1.0 else image


class PatchSampler:
    """Random training patches from the good slices, degraded with the job's own missing-slice pattern.

    Each batch takes a window of the output grid's keep pattern that contains at least one missing
    row (x2, x4, isolated slices, slabs, upsampling: whatever this job has) and removes the same rows
    from in-plane strips of good slices (either in-plane orientation, flipped at random). Training
    inputs are therefore built exactly as the inference inputs are, real rows next to a gap included.

    ``profile``: the acquired slices' profile FWHM in pixels of H and of W (thick slices), or None.
    ``deblur``: the loss covers the kept rows too (they are blurred in the input, sharp in the target).
    """

    def __init__(self, good: np.ndarray, keep: np.ndarray, patch: int, foreground_share: float,
                 rng: np.random.Generator, *, grid_ratio: tuple[float, float] = (1.0, 1.0),
                 profile: Optional[tuple[float, float]] = None, deblur: bool = False):
        images = [good, np.ascontiguousarray(np.swapaxes(good, 1, 2))]
        usable = [i for i, r in enumerate(grid_ratio) if r >= 1.0 / MAX_COARSE_RATIO] or [0, 1]
        self.images = [images[i] for i in usable]
        # Thick output steps: rows of a strip are taken every ``ratio`` pixels from the image blurred by a
        # profile as wide as the step (a Gaussian of that FWHM): in-plane data then look like thin slices.
        self.ratios = [float(grid_ratio[i]) if grid_ratio[i] > SMORE_MIN_RATIO else 1.0 for i in usable]
        self.sources = [_blur(image, r) for image, r in zip(self.images, self.ratios)]
        if profile is None:
            self.inputs = self.sources
        else:  # what the acquired thick slices saw: the sharp data under the slice profile
            self.inputs = [_blur(image, float(profile[i])) for image, i in zip(self.images, usable)]
        self.deblur = bool(deblur and profile is not None)
        self.base = interp_rows if profile is None else spline_rows  # thick slices: B-spline base
        keep = training_pattern(keep)
        self.keep = keep
        self.distance = distance_map(keep)
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

    def _strip(self, source: np.ndarray, ratio: float, s: int, cy: int, cx: int, height: int, width: int) -> np.ndarray:
        n, h, w = source.shape
        x0 = int(np.clip(cx - width // 2, 0, max(w - width, 0)))
        if ratio == 1.0:
            y0 = int(np.clip(cy - height // 2, 0, max(h - height, 0)))
            return source[s, y0:y0 + height, x0:x0 + width]
        span = (height - 1) * ratio
        y0 = float(np.clip(cy - span / 2, 0, max(h - 1 - span, 0)))
        rows = y0 + ratio * np.arange(height)
        lower = np.minimum(np.floor(rows).astype(int), h - 1)
        upper = np.minimum(lower + 1, h - 1)
        frac = (rows - lower)[:, None].astype(np.float32)
        return (1 - frac) * source[s, lower, x0:x0 + width] + frac * source[s, upper, x0:x0 + width]

    def _window(self, rng: np.random.Generator) -> tuple[int, int]:
        """(start, stop) rows of the keep pattern around a random missing row, bounded by kept rows.

        Every missing row in the window has both bounding rows in view, as at inference (where blocks
        start and end on good rows or far from the rows kept).
        """
        row = int(self.missing[int(rng.integers(len(self.missing)))])
        above = self.kept[(self.kept < row) & (self.kept > row - self.rows)]
        start = int(above[int(rng.integers(len(above)))]) if len(above) else int(self.kept[self.kept < row].max())
        below = self.kept[(self.kept > row) & (self.kept < start + self.rows)]
        last = int(below.max()) if len(below) else int(self.kept[self.kept > row].min())
        return start, last + 1

    def sample(self, batch: int, rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs (B, 2, R, X), targets (B, 1, R, X), rows the loss covers (R,)); ``rng`` defaults to the sampler's."""
        rng = self.rng if rng is None else rng
        width = self.patch
        start, stop = self._window(rng)
        height = stop - start
        local_kept = self.kept[(self.kept >= start) & (self.kept < stop)] - start
        inputs = np.empty((batch, 2, height, width), np.float32)
        target = np.empty((batch, 1, height, width), np.float32)
        inputs[:, 1] = self.distance[start:stop, None]
        pad = ((0, 0), (0, 0))
        for b in range(batch):
            which = int(rng.integers(len(self.images)))
            n, h, w = self.images[which].shape
            if rng.random() < self.share and len(self.centres[which]):
                s, cy, cx = self.centres[which][int(rng.integers(len(self.centres[which])))]
            else:
                s, cy, cx = int(rng.integers(n)), int(rng.integers(h)), int(rng.integers(w))
            where = (self.ratios[which], int(s), int(cy), int(cx), height, width)
            strip = self._strip(self.sources[which], *where)
            seen = strip if self.inputs is self.sources else self._strip(self.inputs[which], *where)
            pad = ((0, height - strip.shape[0]), (0, width - strip.shape[1]))
            strip, seen = np.pad(strip, pad, mode="reflect"), np.pad(seen, pad, mode="reflect")
            if rng.random() < 0.5:
                strip, seen = strip[::-1], seen[::-1]
            if rng.random() < 0.5:
                strip, seen = strip[:, ::-1], seen[:, ::-1]
            inputs[b, 0] = self.base(seen, local_kept)
            target[b, 0] = strip
        rows = np.ones(height, bool) if self.deblur else ~self.keep[start:stop]
        if height % 16:  # short grids: pad as inference does; padded rows carry no loss
            inputs, target = pad16(inputs), pad16(target)
            rows = np.pad(rows, (0, inputs.shape[2] - height))
        return inputs, target, rows
