"""Lesion shapes in physical millimetres: smooth random star shapes and their partial-volume occupancy.

A shape is an implicit surface around a centre. In the lesion's own frame (a
random rotation, then a volume-preserving stretch by ``elongation``), a point
``q`` at distance ``d = |q|`` in direction ``u = q / d`` is inside when
``d < R(u)``, where ``R(u) = scale * (1 + f(u))`` and ``f`` is a zero-mean sum
of smooth von Mises-Fisher bumps on the unit sphere (few, broad bumps: round;
a few strong positive lobes: lobulated; many sharper bumps of both signs:
irregular). The ``infiltrative`` family adds a smooth 3D random field (a sum of
random plane waves) to the signed function, so its surface is not star-shaped.

``d - R(u)`` approximates a signed distance in mm. A voxel's *occupancy* is the
mean over the voxel of the soft indicator ``clip(0.5 - s / edge_width, 0, 1)``
(a hard step for ``edge_width = 0``), estimated by supersampling the voxels near
the surface. Everything is a function of the shape's parameters and the grid,
never of global state, so a shape renders the same on every call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Shape", "make_shape", "shape_from_mask", "FAMILIES", "fibonacci_sphere", "occupancy", "calibrate_scale"]

FAMILIES = ("round", "lobulated", "irregular", "infiltrative", "learned")

#: Default surface roughness of each family (amplitude of the radius modulation, fraction of the radius).
DEFAULT_IRREGULARITY = {"round": 0.06, "lobulated": 0.25, "irregular": 0.3, "infiltrative": 0.3}

_SUPERSAMPLE = 4  # sub-samples per voxel axis near the surface (64 per voxel)


def fibonacci_sphere(count: int = 1024) -> np.ndarray:
    """``count`` nearly uniform unit vectors, shape (count, 3); used to integrate over directions."""
    index = np.arange(count) + 0.5
    phi = np.arccos(1 - 2 * index / count)
    theta = np.pi * (1 + 5**0.5) * index
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@dataclass(frozen=True, eq=False)
class Shape:
    """A resolved lesion shape; build one with :func:`make_shape`.

    Attributes
    ----------
    centre : ndarray, shape (3,)
        RAS mm.
    scale : float
        Mean radius (mm) of the unmodulated sphere; calibrated so the volume is right.
    rotation : ndarray, shape (3, 3)
        Columns are the lesion frame's axes in RAS.
    axes : ndarray, shape (3,)
        Stretch of each frame axis (product 1, so volume is preserved).
    bump_dirs, bump_amps, bump_kappa : ndarray
        The von Mises-Fisher bumps of ``f(u)``.
    wave_k, wave_phase, wave_amp : ndarray
        Plane waves of the infiltrative field (empty for star shapes); ``wave_amp`` is a fraction of ``scale``.
    """

    centre: np.ndarray
    scale: float
    rotation: np.ndarray
    axes: np.ndarray
    bump_dirs: np.ndarray
    bump_amps: np.ndarray
    bump_kappa: np.ndarray
    wave_k: np.ndarray
    wave_phase: np.ndarray
    wave_amp: float
    radius_table: Optional[np.ndarray] = None

    def with_scale(self, scale: float) -> "Shape":
        return dataclasses.replace(self, scale=float(scale))

    # ---- the implicit function --------------------------------------------------------------
    def modulation(self, directions: np.ndarray) -> np.ndarray:
        """``f(u)`` for unit vectors ``u`` (N, 3) in the lesion frame; zero mean over the sphere."""
        if self.radius_table is not None:
            return _table_lookup(self.radius_table, directions) - 1.0
        if self.bump_dirs.size == 0:
            return np.zeros(len(directions))
        bumps = directions @ self.bump_dirs.T  # (N, K) cosines, turned into the bumps in place (the hot loop)
        kappa = self.bump_kappa
        mean = (1 - np.exp(-2 * kappa)) / (2 * kappa)
        bumps -= 1.0
        bumps *= kappa
        np.exp(bumps, out=bumps)
        values = bumps @ self.bump_amps - float(mean @ self.bump_amps)
        return np.maximum(values, -0.6, out=values)

    def radius(self, directions: np.ndarray) -> np.ndarray:
        """Surface radius (mm, lesion frame) along unit vectors ``directions`` (N, 3)."""
        return self.scale * (1 + self.modulation(directions))

    def frame_points(self, points_ras: np.ndarray) -> np.ndarray:
        """RAS points (N, 3) to the stretched lesion frame (N, 3)."""
        local = (points_ras - self.centre) @ self.rotation
        return local / self.axes

    def field(self, q: np.ndarray) -> np.ndarray:
        """The infiltrative field at frame points ``q`` (N, 3), in mm; zero for star shapes."""
        if self.wave_k.size == 0:
            return np.zeros(len(q))
        waves = np.cos(q @ self.wave_k.T + self.wave_phase)  # (N, M)
        return waves.sum(axis=1) * (self.wave_amp * self.scale * np.sqrt(2.0 / len(self.wave_k)))

    def radial_profile(self, points_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(d, g)`` with ``signed = d - shrink * scale * g - grow``: ``g`` does not depend on the scale."""
        q = self.frame_points(points_ras)
        d = np.linalg.norm(q, axis=1)
        u = q / np.maximum(d, 1e-9)[:, None]
        g = 1 + self.modulation(u)
        if self.wave_k.size:
            g = g + self.field(q) / self.scale
        return d, g

    def signed(self, points_ras: np.ndarray, *, grow: float = 0.0, shrink: float = 1.0) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) of RAS points (N, 3) to the surface.

        ``shrink`` scales the surface radially (a core of the same shape), ``grow``
        moves it outwards by that many mm (an oedema rim).
        """
        q = self.frame_points(points_ras)
        d = np.linalg.norm(q, axis=1)
        u = q / np.maximum(d, 1e-9)[:, None]
        return d - (shrink * self.radius(u) + grow) - shrink * self.field(q)

    def radius_bounds(self) -> tuple[float, float]:
        """(smallest, largest) surface radius over directions (frame mm), with a 5 % margin."""
        radii = self.radius(fibonacci_sphere(2000))
        return float(radii.min()) * 0.95, float(radii.max()) * 1.05

    def wave_bound(self) -> float:
        """Largest possible magnitude of the infiltrative field (mm)."""
        return 0.0 if self.wave_k.size == 0 else self.wave_amp * self.scale * np.sqrt(2.0 * len(self.wave_k))

    def extent(self, *, grow: float = 0.0) -> float:
        """Radius (mm, RAS) of a ball around the centre that holds the whole shape grown by ``grow``."""
        directions = fibonacci_sphere(2000)
        largest = float(np.max(self.radius(directions)))
        wave = 0.0 if self.wave_k.size == 0 else self.wave_amp * self.scale * np.sqrt(2.0 * len(self.wave_k))
        return (largest + wave) * float(np.max(self.axes)) * 1.05 + grow

    def analytic_volume(self) -> float:
        """Volume (mm^3) of the star shape, ``(4 pi / 3) * mean(R(u)^3)`` (ignores the infiltrative field)."""
        return 4.0 * np.pi / 3.0 * float(np.mean(self.radius(fibonacci_sphere(4096)) ** 3))


def _table_lookup(table: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a (polar, azimuth) table at unit vectors; azimuth wraps around."""
    n_polar, n_azimuth = table.shape
    polar = np.arccos(np.clip(directions[:, 2], -1, 1)) / np.pi * (n_polar - 1)
    azimuth = (np.arctan2(directions[:, 1], directions[:, 0]) % (2 * np.pi)) / (2 * np.pi) * n_azimuth
    p0 = np.clip(np.floor(polar).astype(int), 0, n_polar - 2)
    a0 = np.floor(azimuth).astype(int) % n_azimuth
    a1 = (a0 + 1) % n_azimuth
    fp, fa = polar - p0, azimuth - np.floor(azimuth)
    return ((1 - fp) * ((1 - fa) * table[p0, a0] + fa * table[p0, a1])
            + fp * ((1 - fa) * table[p0 + 1, a0] + fa * table[p0 + 1, a1]))


def shape_from_mask(
    mask: np.ndarray,
    voxel_mm: float,
    rng: np.random.Generator,
    *,
    centre: np.ndarray,
    diameter_mm: float,
    elongation: float = 1.0,
) -> Shape:
    """A shape from a binary mask (e.g. decoded by a lesion-shape VAE), as a star shape around its centroid.

    The radius along each direction of a (64 polar x 128 azimuth) grid is the
    outermost crossing of the mask's smoothed occupancy with 0.5, found by
    marching out from the centroid; the table is normalised to mean 1, so the
    shape is then scaled, rotated and calibrated like the procedural ones.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3 or not mask.any():
        raise ValueError("the shape model produced an empty mask")
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 0.7)
    centroid = np.argwhere(mask).mean(axis=0)
    polar = np.linspace(0, np.pi, 64)
    azimuth = np.arange(128) / 128 * 2 * np.pi
    pp, aa = np.meshgrid(polar, azimuth, indexing="ij")
    dirs = np.stack([np.sin(pp) * np.cos(aa), np.sin(pp) * np.sin(aa), np.cos(pp)], -1).reshape(-1, 3)
    steps = np.arange(0.0, float(np.linalg.norm(mask.shape)) / 2, 0.25)
    points = centroid[None, None, :] + steps[None, :, None] * dirs[:, None, ::-1]  # (D, S, 3) array order
    inside = ndimage.map_coordinates(soft, points.reshape(-1, 3).T, order=1, mode="constant").reshape(len(dirs), -1) >= 0.5
    last = np.where(inside.any(axis=1), inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1), 0)
    radius = np.maximum(steps[last], 0.5) * voxel_mm
    table = radius.reshape(64, 128)
    table = table / float(np.mean(_table_lookup(table, fibonacci_sphere(4096))))
    rotation = _rotation(rng)
    e = max(float(elongation), 1.0)
    axes = np.array([e ** (2.0 / 3.0), e ** (-1.0 / 3.0), e ** (-1.0 / 3.0)])
    empty = np.zeros((0, 3))
    shape = Shape(np.asarray(centre, dtype=np.float64), 1.0, rotation, axes, empty, np.zeros(0), np.zeros(0),
                  empty, np.zeros(0), 0.0, radius_table=table)
    target = np.pi / 6.0 * diameter_mm**3
    return shape.with_scale((target / shape.analytic_volume()) ** (1.0 / 3.0))


def make_shape(
    rng: np.random.Generator,
    *,
    centre: np.ndarray,
    diameter_mm: float,
    family: str,
    elongation: float = 1.0,
    irregularity: Optional[float] = None,
) -> Shape:
    """Draw a shape of ``family`` from ``rng``; its volume is that of a ``diameter_mm`` sphere (analytically)."""
    amplitude = DEFAULT_IRREGULARITY[family] if irregularity is None else float(irregularity)
    if family == "round":
        count, kappa_range, signed = 3, (1.0, 2.5), True
    elif family == "lobulated":
        count, kappa_range, signed = int(rng.integers(4, 8)), (4.0, 9.0), False
    else:  # irregular, infiltrative
        count, kappa_range, signed = int(rng.integers(8, 15)), (6.0, 15.0), True
    dirs = rng.normal(size=(count, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    kappa = rng.uniform(*kappa_range, size=count)
    amps = rng.uniform(0.5, 1.0, size=count) * amplitude
    if signed:
        amps = amps * rng.choice([-1.0, 1.0], size=count)
    if family == "round":
        amps = amps / np.sqrt(count)
    rotation = _rotation(rng)
    e = max(float(elongation), 1.0)
    axes = np.array([e ** (2.0 / 3.0), e ** (-1.0 / 3.0), e ** (-1.0 / 3.0)])
    if family == "infiltrative":
        waves = 12
        wavelength = diameter_mm * rng.uniform(0.5, 0.8)
        k = rng.normal(size=(waves, 3))
        k *= (2 * np.pi / wavelength) / np.linalg.norm(k, axis=1, keepdims=True)
        phase = rng.uniform(0, 2 * np.pi, size=waves)
        wave_amp = 0.12 * max(amplitude, 0.0) / 0.3
    else:
        k, phase, wave_amp = np.zeros((0, 3)), np.zeros(0), 0.0
    shape = Shape(np.asarray(centre, dtype=np.float64), 1.0, rotation, axes, dirs, amps, kappa, k, phase, wave_amp)
    target = np.pi / 6.0 * diameter_mm**3
    return shape.with_scale((target / shape.analytic_volume()) ** (1.0 / 3.0))


# ---- occupancy on a voxel grid --------------------------------------------------------------------
def _soft(s: np.ndarray, width: float) -> np.ndarray:
    if width <= 0:
        return (s < 0).astype(np.float64)
    return np.clip(0.5 - s / width, 0.0, 1.0)


def occupancy(
    shape: Shape,
    grid_ras: np.ndarray,
    ijk_to_ras: np.ndarray,
    *,
    edge_width: float,
    grow: float = 0.0,
    shrink: float = 1.0,
    signed_centres: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Occupancy fraction in [0, 1] of each voxel whose centre is a row of ``grid_ras`` (N, 3).

    Voxels whose centre lies farther from the surface than the voxel's corners
    (plus the soft edge, with 25 % slack for the bumps' slope) are entirely in
    or out; the others are supersampled ``2 x 2 x 2``, and those the surface
    crosses (the eight samples disagree) ``4 x 4 x 4``, unless the soft edge is
    at least the voxel's diagonal: then the indicator is linear across a
    voxel and its mean is the value at the centre.
    """
    linear = ijk_to_ras[:3, :3]
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=np.float64)
    corner = 0.5 * float(np.max(np.linalg.norm(signs @ linear.T, axis=1)))  # voxel centre to its farthest corner
    band = 1.25 * (corner + 0.5 * edge_width) + 1e-6  # 25 % slack: d - R(u) is only nearly a distance
    if signed_centres is None:
        # only points between the shape's inner and outer bounding balls need the implicit function
        low, high = shape.radius_bounds()
        wave = shape.wave_bound()
        dist = np.linalg.norm(grid_ras - shape.centre, axis=1)
        sure_in = dist < (shrink * (low - wave) + grow - band) * float(np.min(shape.axes))
        sure_out = dist > (shrink * (high + wave) + grow + band) * float(np.max(shape.axes))
        s = np.where(sure_in, -2.0 * band, 2.0 * band)
        between = np.flatnonzero(~sure_in & ~sure_out)
        s[between] = shape.signed(grid_ras[between], grow=grow, shrink=shrink)
    else:
        s = signed_centres
    occ = _soft(s, edge_width)
    if edge_width >= 2.0 * corner:
        # the soft indicator is linear across a voxel here: its voxel mean is its centre value
        return occ
    near = np.flatnonzero(np.abs(s) < band)

    def supersample(indices: np.ndarray, n: int) -> np.ndarray:
        offsets_1d = (np.arange(n) + 0.5) / n - 0.5
        offsets = np.stack(np.meshgrid(offsets_1d, offsets_1d, offsets_1d, indexing="ij"), -1).reshape(-1, 3)
        offsets_ras = offsets @ linear.T  # (n^3, 3) in (i, j, k) order -> RAS
        values = np.empty(indices.size)
        step = max(1, 500_000 // n**3)
        for start in range(0, indices.size, step):
            chunk = indices[start:start + step]
            pts = (grid_ras[chunk][:, None, :] + offsets_ras[None]).reshape(-1, 3)
            values[start:start + step] = _soft(shape.signed(pts, grow=grow, shrink=shrink), edge_width).reshape(
                len(chunk), -1).mean(axis=1)
        return values

    if near.size:
        # 2x2x2 first: where all eight agree the surface at most clips a corner (< 1/48 of the voxel);
        # the voxels it really crosses get the full 4x4x4
        coarse = supersample(near, 2)
        occ[near] = coarse
        crossed = near[(coarse > 0) & (coarse < 1)]
        if crossed.size:
            occ[crossed] = supersample(crossed, _SUPERSAMPLE)
    return occ


def calibrate_scale(
    shape: Shape,
    grid_ras: np.ndarray,
    ijk_to_ras: np.ndarray,
    *,
    edge_width: float,
    target_mm3: float,
    voxel_mm3: float,
    iterations: int = 6,
    tolerance: float = 0.02,
) -> tuple[Shape, np.ndarray]:
    """Rescale ``shape`` so that the labelled voxels (occupancy >= 0.5) hold ``target_mm3``.

    The analytic volume ignores the grid; on coarse or thick-slice grids the
    labelled volume differs, so a few steps ``scale *= (target / measured) ** (1/3)``
    (bisecting once the voxel count, a step function, has been bracketed) bring
    it within ``tolerance`` where the grid allows; the best scale tried is kept.
    The search starts from the scale that labels the right number of voxel
    centres (an order statistic, no iteration), then refines with the true
    occupancy. Returns the shape and its occupancy on the grid.
    """
    # start (exact and cheap): a voxel is labelled about when its centre is inside (the soft edge is
    # symmetric about the surface), and a centre is inside when scale > d / g, so the scale that
    # labels the wanted number of centres is an order statistic. Then refine on the true occupancy.
    wanted = int(round(target_mm3 / voxel_mm3))
    d, g = shape.radial_profile(grid_ras)
    threshold = np.sort(np.where(g > 0, d / np.maximum(g, 1e-12), np.inf))
    if 0 < wanted < len(threshold) and np.isfinite(threshold[wanted]):
        shape = shape.with_scale(0.5 * (threshold[wanted - 1] + threshold[wanted]))
    best: Optional[tuple[float, Shape, np.ndarray]] = None
    low: Optional[float] = None  # largest scale known to give too little volume
    high: Optional[float] = None  # smallest scale known to give too much
    for _ in range(iterations):
        occ = occupancy(shape, grid_ras, ijk_to_ras, edge_width=edge_width)
        measured = float(np.count_nonzero(occ >= 0.5)) * voxel_mm3
        error = abs(measured - target_mm3) / target_mm3
        if best is None or error < best[0]:
            best = (error, shape, occ)
        if error <= tolerance:
            break
        if measured < target_mm3:
            low = shape.scale if low is None else max(low, shape.scale)
        else:
            high = shape.scale if high is None else min(high, shape.scale)
        guess = shape.scale * (1.5 if measured <= 0 else (target_mm3 / measured) ** (1.0 / 3.0))
        if low is not None and high is not None and not (low < guess < high):
            guess = 0.5 * (low + high)  # the voxel count is a step function: bisect the bracket
        shape = shape.with_scale(guess)
    assert best is not None
    return best[1], best[2]
