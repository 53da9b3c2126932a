"""Deterministic rendering of one resolved lesion into a working copy of the volume.

Everything happens on a local crop: the bounding box of the lesion's *region of
influence*, a ball around its centre that holds the lesion, its soft edge, its
oedema rim and the reach of its mass effect. Voxels outside that ball are never
written (occupancies and displacements are forced to zero there), which is the
"nothing outside the region of influence changes" guarantee.

Intensity model, per compartment c (enhancing/solid lesion, core, oedema) with
occupancy ``o_c``::

    out = x + o_lesion * (t_lesion + a T + n - x) + o_core * (t_core + a T + n - x) + o_oedema * d_oedema + sum_c k_c o_c

so a lesion voxel becomes ``(1 - o) x + o (t + a T + n)``: the lesion replaces
the tissue's anatomy by its own mean ``t``, a smooth texture ``a T`` and noise
``n`` matched to the surrounding tissue (Gaussian noise coloured to the shell's
lag-1 correlation along each axis, scaled so that noise plus texture vary from
voxel to voxel exactly as much as the shell does): the lesion is neither
smoother nor noisier than its neighbourhood, and anatomy (vessels, sulci) does
not show through it. Oedema adds an offset and keeps the anatomy beneath
(swollen tissue). The constants ``k_c`` (a 3x3 solve) make each labelled
compartment's mean exactly the requested one despite partial-volume voxels.

Mass effect is applied first: a radial push ``u(r)`` (linear inside the lesion,
``(R / r)^2`` outside, cosine-tapered to zero at the edge of its reach) whose
pull-back map ``x - u(x)`` must have a Jacobian determinant > 0 everywhere
(checked; the push is halved until it is). Image: cubic spline; labels: nearest.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy import ndimage

from ._measure import interior_masks, neighbour_differences, pooled_differences, robust_std, shell_mask
from ._shape import Shape, calibrate_scale, occupancy

__all__ = ["RenderedLesion", "render_lesion", "roi_radius", "crop_for", "texture_field", "MIN_JACOBIAN"]

logger = logging.getLogger(__name__)

#: Smallest Jacobian determinant allowed for the mass-effect map.
MIN_JACOBIAN = 0.2

_SMOOTH_VOXELS = 2.0  # sigma of G, voxels


@dataclass
class RenderedLesion:
    """Where one lesion landed: crop slices, its masks on the crop, region of influence and facts for the report."""

    crop: tuple[slice, slice, slice]
    lesion: np.ndarray
    core: np.ndarray
    oedema: np.ndarray
    roi_mask: np.ndarray
    roi_radius_mm: float
    shape: Shape
    background: float
    noise_sigma: float
    pure: Optional[np.ndarray] = None
    mass_effect: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def texture_field(points_ras: np.ndarray, rng: np.random.Generator, *, wavelength_mm: float, waves: int = 24) -> np.ndarray:
    """A smooth zero-mean, unit-variance random field (sum of random plane waves) at RAS points (N, 3).

    Analytic, so it is the same on any grid and has no edge effects on a crop.
    """
    k = rng.normal(size=(waves, 3))
    k *= (2 * np.pi / wavelength_mm) * rng.uniform(0.7, 1.3, size=(waves, 1)) / np.linalg.norm(k, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, size=waves)
    return np.cos(points_ras @ k.T + phase).sum(axis=1) * np.sqrt(2.0 / waves)


def _matched_noise(before: np.ndarray, shell: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise on the crop with the surrounding tissue's lag-1 correlation along each axis.

    The lag-1 correlation ``rho = 1 - (sd_diff / sigma)^2`` per axis (``sd_diff``
    from neighbour differences in the shell) sets the width of the Gaussian that
    colours white noise (``rho = exp(-1 / (4 s^2))``); the caller sets the amplitude.
    """
    widths = []
    for axis in range(3):
        diff = robust_std(neighbour_differences(before, shell, axes=(axis,)))
        rho = 1.0 - (diff / sigma) ** 2 if sigma > 0 and np.isfinite(diff) else 0.0
        rho = float(np.clip(rho, 0.0, 0.9))
        widths.append(float(np.sqrt(-1.0 / (4.0 * np.log(rho)))) if rho > 0.02 else 0.0)
    white = rng.normal(size=before.shape)
    return ndimage.gaussian_filter(white, widths, mode="wrap") if any(widths) else white


def _mass_reach(spec, shape: Shape) -> tuple[float, float]:
    """(lesion radius R used by the push, radius where the push reaches zero), mm."""
    radius = 0.5 * spec.diameter_mm + spec.oedema_mm
    return radius, radius + max(4.0 * spec.mass_effect_mm, 0.6 * radius)


def roi_radius(spec, shape: Shape, ijk_to_ras: np.ndarray) -> float:
    """Radius (mm) of the ball around the centre outside which this lesion changes nothing."""
    linear = ijk_to_ras[:3, :3]
    half_diagonal = 0.5 * float(np.sum(np.linalg.norm(linear, axis=0)))
    radius = shape.extent(grow=spec.oedema_mm) * 1.15 + 0.5 * spec.edge_width_mm + 2 * half_diagonal
    if spec.mass_effect_mm > 0:
        radius = max(radius, _mass_reach(spec, shape)[1] + half_diagonal)
    return float(radius)


def crop_for(centre_ijk: np.ndarray, radius: float, ijk_to_ras: np.ndarray, shape_kji, margin: int = 0):
    """KJI slices of the box holding the ball (radius mm) around ``centre_ijk``, clipped to the volume."""
    inverse = np.linalg.inv(ijk_to_ras[:3, :3])
    half = radius * np.linalg.norm(inverse, axis=1)  # extent along i, j, k (voxels)
    lo = np.floor(centre_ijk - half).astype(int) - margin
    hi = np.ceil(centre_ijk + half).astype(int) + 1 + margin
    size_ijk = np.array(shape_kji[::-1])
    lo = np.clip(lo, 0, size_ijk)
    hi = np.clip(hi, 0, size_ijk)
    return tuple(slice(int(lo[a]), int(hi[a])) for a in (2, 1, 0))


def _grid_ras(crop, ijk_to_ras: np.ndarray) -> np.ndarray:
    """RAS of the voxel centres of ``crop`` (KJI slices), shape (N, 3) in C order of the crop."""
    k, j, i = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float64) for s in crop], indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    return ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]


def _inner(outer, inner):
    """Slices of ``inner`` (absolute KJI) relative to ``outer``."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for o, i in zip(outer, inner))


def _apply_mass_effect(spec, shape, work, label_layers, crop, grid, dist, roi, ijk_to_ras, rendered):
    """Push the tissue (and every label layer) away from the centre inside the region of influence."""
    radius, reach = _mass_reach(spec, shape)
    push = float(spec.mass_effect_mm)
    inverse = np.linalg.inv(ijk_to_ras[:3, :3])
    shape_crop = tuple(s.stop - s.start for s in crop)

    def profile_of(r: np.ndarray) -> np.ndarray:
        taper = 0.5 * (1 + np.cos(np.pi * np.clip((r - radius) / (reach - radius), 0, 1)))
        return np.where(r < radius, r / radius, (radius / np.maximum(r, 1e-9)) ** 2 * taper)

    # the pull-back x -> x - m p(r) e_r has Jacobian determinant (1 - m p'(r)) (1 - m p(r) / r)^2
    # (radial stretch times the two tangential ones): checked exactly on a fine radial profile
    radii = np.linspace(1e-3, reach, 4000)
    values = profile_of(radii)
    slope = np.gradient(values, radii)
    for _attempt in range(6):
        det = (1 - push * slope) * (1 - push * values / radii) ** 2
        min_det = float(det.min())
        if min_det > MIN_JACOBIAN:
            break
        push *= 0.5
        rendered.warnings.append(
            f"mass effect reduced to {push:.2f} mm to keep the deformation fold-free (Jacobian {min_det:.2f})")
    else:
        push, min_det = 0.0, 1.0
    if push <= 0:
        rendered.mass_effect = {"requested_mm": spec.mass_effect_mm, "applied_mm": 0.0, "min_jacobian": 1.0}
        return
    # the push is zero beyond its reach (the taper) and outside the region of influence: work on the rest
    near = np.flatnonzero(roi & (dist < reach))
    r = np.maximum(dist[near], 1e-6)
    disp_ras = (grid[near] - shape.centre) / r[:, None] * (push * profile_of(r))[:, None]
    disp_ijk = disp_ras @ inverse.T  # (n, 3) i, j, k
    keep = np.abs(disp_ijk).max(axis=1) > 1e-9
    index, disp_ijk = near[keep], disp_ijk[keep]  # the voxels where the tissue moves
    moved = np.zeros(len(grid), bool)
    moved[index] = True
    # sample the crop (with a margin so splines see real neighbours) at x - u(x)
    margin = 3
    outer = tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(crop, work.shape))
    k, j, i = np.unravel_index(index, shape_crop)
    coords = np.stack([k + (crop[0].start - outer[0].start) - disp_ijk[:, 2],
                       j + (crop[1].start - outer[1].start) - disp_ijk[:, 1],
                       i + (crop[2].start - outer[2].start) - disp_ijk[:, 0]])
    source = work[outer]
    values = ndimage.map_coordinates(source, coords, order=3, mode="nearest")
    values = np.clip(values, source.min(), source.max())  # no spline overshoot beyond the tissue's range
    flat = work[crop].reshape(-1).copy()
    flat[moved] = values
    work[crop] = flat.reshape(shape_crop)
    for layer in label_layers:
        src = layer[outer]
        if not src.any():  # nothing to move (e.g. no earlier lesion here): zeros stay zeros
            continue
        lab = ndimage.map_coordinates(src, coords, order=0, mode="nearest")
        lflat = layer[crop].reshape(-1).copy()
        lflat[moved] = lab
        layer[crop] = lflat.reshape(shape_crop)
    rendered.mass_effect = {"requested_mm": spec.mass_effect_mm, "applied_mm": round(push, 3),
                            "reach_mm": round(reach, 2), "min_jacobian": round(min_det, 3)}


@dataclass
class _Occupancy:
    """Each compartment's occupancy (flat over the crop) and its label mask (occupancy >= 0.5)."""

    shape: Shape
    total: np.ndarray
    core: np.ndarray
    oedema: np.ndarray
    lesion_mask: np.ndarray
    core_mask: np.ndarray
    oedema_mask: np.ndarray


@dataclass
class _Surroundings:
    """The tissue around the lesion: the reference its mean, contrast and noise are matched to."""

    tissue: np.ndarray  # flat crop of the tissue before the mass effect
    before: np.ndarray  # flat crop after the mass effect: what the lesion is blended into
    shell: np.ndarray  # 3D boolean shell on the crop
    background: float
    sigma: float
    noise: np.ndarray  # 3D unit-amplitude noise coloured like the tissue's


def _occupancies(spec, shape: Shape, grid: np.ndarray, roi: np.ndarray, dist: np.ndarray,
                 ijk_to_ras: np.ndarray) -> _Occupancy:
    """Occupancies of lesion, core and oedema; the shape's scale calibrated to ``pi/6 d^3`` on this grid.

    The shape is evaluated only inside its own bounding ball (the crop may be much larger: mass effect).
    """
    voxel_mm3 = float(abs(np.linalg.det(ijk_to_ras[:3, :3])))
    corner = 0.5 * float(np.sum(np.linalg.norm(ijk_to_ras[:3, :3], axis=0)))
    reach = shape.extent(grow=spec.oedema_mm) * 1.15 + 0.5 * max(spec.edge_width_mm, 2.0) + 2 * corner
    near = np.flatnonzero(roi & (dist <= reach))
    sub = grid[near]

    def scatter(values: np.ndarray) -> np.ndarray:
        full = np.zeros(len(grid))
        full[near] = values
        return full

    target = np.pi / 6.0 * spec.diameter_mm**3
    shape, o_near = calibrate_scale(shape, sub, ijk_to_ras, edge_width=spec.edge_width_mm,
                                    target_mm3=target, voxel_mm3=voxel_mm3)
    # an asymmetric shape's centroid is off its construction centre: move the shape so that the
    # lesion's centroid is the requested centre (one translation, same scale)
    weight = float(o_near.sum())
    if weight > 0:
        shift = shape.centre - (o_near[:, None] * sub).sum(axis=0) / weight
        if np.linalg.norm(shift) > 0.1 * min(float(np.linalg.norm(ijk_to_ras[:3, a])) for a in range(3)):
            shape = dataclasses.replace(shape, centre=shape.centre + shift)
            o_near = occupancy(shape, sub, ijk_to_ras, edge_width=spec.edge_width_mm)
            if abs(np.count_nonzero(o_near >= 0.5) * voxel_mm3 - target) > 0.03 * target:  # the grid moved
                shape, o_near = calibrate_scale(shape, sub, ijk_to_ras, edge_width=spec.edge_width_mm,
                                                target_mm3=target, voxel_mm3=voxel_mm3)
    o_total = scatter(o_near)
    o_core = np.zeros_like(o_total)
    if spec.core_fraction > 0:
        o_core = scatter(occupancy(shape, sub, ijk_to_ras, edge_width=spec.edge_width_mm, shrink=spec.core_fraction))
        o_core = np.minimum(o_core, o_total)
    o_oedema = np.zeros_like(o_total)
    lesion = o_total >= 0.5
    oedema = np.zeros_like(lesion)
    if spec.oedema_mm > 0:
        o_outer = scatter(occupancy(shape, sub, ijk_to_ras, edge_width=max(spec.edge_width_mm, 2.0),
                                    grow=spec.oedema_mm))
        o_oedema = np.clip(o_outer - o_total, 0.0, 1.0)
        oedema = (o_outer >= 0.5) & ~lesion
    if not lesion.any():
        raise ValueError("lesion has no voxel with occupancy >= 0.5")  # caller turns this into InputError
    return _Occupancy(shape, o_total, o_core, o_oedema, lesion, lesion & (o_core >= 0.5), oedema)


def _surroundings(work: np.ndarray, pristine: np.ndarray, outer, crop, occ: _Occupancy, roi: np.ndarray, *,
                  region: Optional[np.ndarray], spacing_kji, rng_noise: np.random.Generator) -> _Surroundings:
    """Mean and noise of the tissue in a shell around the lesion (inside the region where it has enough of it)."""
    shape_crop = tuple(s.stop - s.start for s in crop)
    smooth = ndimage.gaussian_filter(pristine, _SMOOTH_VOXELS, mode="nearest")[_inner(outer, crop)].reshape(-1)
    tissue = pristine[_inner(outer, crop)].reshape(-1)
    residual = tissue - smooth
    before = work[crop].reshape(-1).copy()
    lesion3 = occ.lesion_mask.reshape(shape_crop)
    exclude = None if region is None else ~region[crop]
    shell = shell_mask(lesion3 | occ.oedema_mask.reshape(shape_crop), spacing_kji).reshape(-1) & roi
    if exclude is not None and np.count_nonzero(shell & ~exclude.reshape(-1)) >= 16:
        shell &= ~exclude.reshape(-1)  # the surrounding tissue is the region's tissue
    background = float(tissue[shell].mean()) if shell.any() else float(tissue[occ.lesion_mask].mean())
    shell3 = shell.reshape(shape_crop)
    sigma = robust_std(residual[shell]) if shell.any() else 0.0
    noise = _matched_noise(tissue.reshape(shape_crop), shell3, sigma, rng_noise)
    return _Surroundings(tissue, before, shell3, background, sigma, noise)


def _target_of(spec, contrast: float, background: float) -> float:
    if spec.contrast_mode == "relative":
        return background * (1.0 + contrast)
    if spec.contrast_mode == "offset":
        return background + contrast
    return float(contrast)


def _noise_gain(noise_diffs: np.ndarray, fixed: np.ndarray, target_sd: float) -> float:
    """Gain on the noise so that noise + ``fixed`` differences spread like the tissue's (robust spreads do not
    add like variances: bisect)."""
    low, high = 0.0, 4.0 * target_sd / robust_std(noise_diffs)
    for _ in range(40):
        gain = 0.5 * (low + high)
        if robust_std(fixed + gain * noise_diffs) < target_sd:
            low = gain
        else:
            high = gain
    return 0.5 * (low + high)


def _texture_and_noise(spec, occ: _Occupancy, sur: _Surroundings, grid: np.ndarray, crop, work: np.ndarray, *,
                       painter: Any, spacing_kji, rng_texture: np.random.Generator, rendered: "RenderedLesion"):
    """(texture or learned painting, kept anatomy, scaled noise, texture gain, pure-voxel mask).

    Noise + texture together must vary voxel to voxel as much as the surrounding tissue does: the noise is
    scaled so its in-plane neighbour differences make up what the texture leaves.
    """
    shape_crop = tuple(s.stop - s.start for s in crop)
    background, before, noise = sur.background, sur.before, sur.noise
    o_total, o_core, o_oedema = occ.total, occ.core, occ.oedema
    ring, core = occ.lesion_mask & ~occ.core_mask, occ.core_mask
    wavelength = max(0.6 * spec.diameter_mm, 6.0 * max(spacing_kji[1:]), 2.0)
    texture = np.zeros(len(grid))
    filled = o_total > 0  # the texture only matters where the lesion is
    texture[filled] = texture_field(grid[filled], rng_texture, wavelength_mm=wavelength)
    t_lesion, t_core = _target_of(spec, spec.contrast, background), _target_of(spec, spec.core_contrast, background)
    amplitude = spec.heterogeneity * np.where(o_core > 0.5, abs(t_core - background), abs(t_lesion - background))
    pure = ((o_total == 0) | (o_total == 1)) & ((o_core == 0) | (o_core == 1)) & ((o_oedema == 0) | (o_oedema == 1))
    pure3 = pure.reshape(shape_crop)
    inside = interior_masks([m.reshape(shape_crop) for m in (ring, core) if m.any()], spacing_kji, pure=pure3)
    if pooled_differences(noise, inside).size < 16:
        inside = [occ.lesion_mask.reshape(shape_crop)]
    shell3 = sur.shell
    wanted = robust_std(neighbour_differences(sur.tissue.reshape(shape_crop), shell3)) ** 2 if shell3.any() else 0.0
    # a translucent lesion (ground glass) keeps a share of the anatomy beneath it; a solid core keeps none
    anatomy = np.where(o_core > 0.5, 0.0, spec.anatomy)
    if painter is None:
        kept = anatomy * (before - background)
        texture_diffs = pooled_differences((amplitude * texture).reshape(shape_crop), inside)
    else:
        # the learned painting's structure replaces the random field; its finest scale (a 1-voxel in-plane
        # Gaussian) is left to the matched noise below, so the scanner's own noise is what the lesion shows
        # (the noise guarantee holds as for procedural lesions) and the model contributes what it knows:
        # the lesion's internal structure at the scales above the noise
        painted = painter.paint(work, crop, filled.reshape(shape_crop), seed=int(spec.seed))
        in_plane = [0.0 if a == painter.axis else 1.0 for a in range(3)]
        texture = ndimage.gaussian_filter(painted, in_plane, mode="nearest").reshape(-1)
        texture -= texture[filled].mean()
        kept = np.zeros_like(before)
        texture_diffs = pooled_differences(texture.reshape(shape_crop), inside)
    kept_diffs = pooled_differences(kept.reshape(shape_crop), inside)
    noise_diffs = pooled_differences(noise, inside)
    texture_gain = 1.0
    if np.isfinite(wanted) and wanted > 0 and noise_diffs.size and robust_std(noise_diffs) > 0:
        target_sd = float(np.sqrt(wanted))
        texture_sd = robust_std(texture_diffs) if texture_diffs.size else 0.0
        if texture_sd > 0.6 * target_sd:  # texture alone would be noisier than the tissue: soften it
            texture_gain = 0.6 * target_sd / texture_sd
            texture_diffs = texture_diffs * texture_gain
            rendered.notes.append(
                (f"heterogeneity reduced from {spec.heterogeneity:.3g} to {spec.heterogeneity * texture_gain:.3g}"
                 if painter is None else f"learned texture scaled by {texture_gain:.3g}")
                + " so that the lesion is not noisier than the surrounding tissue")
        noise = noise * _noise_gain(noise_diffs, texture_diffs + kept_diffs, target_sd)
    else:
        noise = np.zeros_like(noise)
    return texture, kept, noise, texture_gain, pure3


def _blend(spec, occ: _Occupancy, sur: _Surroundings, texture, kept, noise, texture_gain: float, *,
           learned: bool) -> np.ndarray:
    """The crop's new values (flat): lesion and core replace the tissue, oedema offsets it, and a 3x3 solve
    makes each labelled compartment's mean exactly the requested one despite partial-volume voxels."""
    background, before = sur.background, sur.before
    o_ring = occ.total - occ.core
    ring, core, oedema = occ.lesion_mask & ~occ.core_mask, occ.core_mask, occ.oedema_mask
    t_lesion, t_core = _target_of(spec, spec.contrast, background), _target_of(spec, spec.core_contrast, background)
    replace = kept + noise.reshape(-1) - before  # x + this = matched noise (+ kept anatomy): the tissue is replaced
    base = before.copy()
    if not learned:
        hetero = spec.heterogeneity * texture_gain
        base += o_ring * (t_lesion + hetero * abs(t_lesion - background) * texture + replace)
        base += occ.core * (t_core + hetero * abs(t_core - background) * texture + replace)
    else:
        base += o_ring * (t_lesion + texture_gain * texture + replace)
        base += occ.core * (t_core + texture_gain * texture + replace)
    oedema_offset = 0.0
    if spec.oedema_mm > 0:
        oedema_offset = background * spec.oedema_contrast if spec.contrast_mode == "relative" else spec.oedema_contrast
        base += occ.oedema * oedema_offset
    compartments = [(ring, o_ring, t_lesion), (core, occ.core, t_core)]
    if spec.oedema_mm > 0:
        compartments.append((oedema, occ.oedema, float(before[oedema].mean()) + oedema_offset if oedema.any() else 0.0))
    used = [(m, o, g) for m, o, g in compartments if m.any()]
    matrix = np.array([[o[m].mean() for _, o, _ in used] for m, _, _ in used])
    goal = np.array([g - base[m].mean() for m, _, g in used])
    try:
        k = np.linalg.solve(matrix, goal)
    except np.linalg.LinAlgError:
        k = np.zeros(len(used))
    for (m, o, _), kc in zip(used, k):
        base += kc * o
    return base


def render_lesion(
    spec,
    shape: Shape,
    work: np.ndarray,
    label_layers: list[np.ndarray],
    ijk_to_ras: np.ndarray,
    *,
    region: Optional[np.ndarray] = None,
    painter: Any = None,
) -> RenderedLesion:
    """Insert one lesion into ``work`` (float64, KJI, modified in place); return where and how.

    ``label_layers`` are label arrays on the same grid that the mass effect moves
    (nearest neighbour); the caller writes this lesion's own labels afterwards.
    ``painter`` (a :class:`~._inpaint.LesionPainter`) replaces the procedural
    texture (mean + smooth random field + kept anatomy) by a learned painting of the
    lesion's interior; occupancies, exact compartment means, matched noise and the
    region of influence are the same in both cases.
    """
    rng = np.random.default_rng(spec.seed)
    rng_texture, rng_noise = (np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, size=2))
    radius = roi_radius(spec, shape, ijk_to_ras)
    centre_ijk = np.asarray(shape.centre @ np.linalg.inv(ijk_to_ras)[:3, :3].T + np.linalg.inv(ijk_to_ras)[:3, 3])
    crop = crop_for(centre_ijk, radius, ijk_to_ras, work.shape)
    shape_crop = tuple(s.stop - s.start for s in crop)
    grid = _grid_ras(crop, ijk_to_ras)
    dist = np.linalg.norm(grid - shape.centre, axis=1)
    roi = dist <= radius
    spacing_kji = tuple(float(np.linalg.norm(ijk_to_ras[:3, a])) for a in (2, 1, 0))
    rendered = RenderedLesion(crop, None, None, None, roi.reshape(shape_crop), radius, shape, 0.0, 0.0)  # type: ignore[arg-type]

    margin = int(np.ceil(3 * _SMOOTH_VOXELS))
    outer = tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(crop, work.shape))
    pristine = work[outer].copy()  # the tissue before the mass effect: its mean and noise are the reference
    if spec.mass_effect_mm > 0:
        _apply_mass_effect(spec, shape, work, label_layers, crop, grid, dist, roi, ijk_to_ras, rendered)
    occ = _occupancies(spec, shape, grid, roi, dist, ijk_to_ras)
    rendered.shape = occ.shape
    sur = _surroundings(work, pristine, outer, crop, occ, roi, region=region, spacing_kji=spacing_kji,
                        rng_noise=rng_noise)
    texture, kept, noise, gain, pure3 = _texture_and_noise(spec, occ, sur, grid, crop, work, painter=painter,
                                                           spacing_kji=spacing_kji, rng_texture=rng_texture,
                                                           rendered=rendered)
    base = _blend(spec, occ, sur, texture, kept, noise, gain, learned=painter is not None)
    changed = roi & ((occ.total > 0) | (occ.oedema > 0))
    flat = work[crop].reshape(-1).copy()
    flat[changed] = base[changed]
    work[crop] = flat.reshape(shape_crop)
    rendered.lesion = occ.lesion_mask.reshape(shape_crop)
    rendered.core = occ.core_mask.reshape(shape_crop)
    rendered.oedema = occ.oedema_mask.reshape(shape_crop)
    rendered.background = sur.background
    rendered.noise_sigma = sur.sigma
    rendered.pure = pure3
    return rendered
