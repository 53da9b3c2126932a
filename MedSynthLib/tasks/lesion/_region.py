"""Where random lesions may go: automatic tissue masks (:func:`find_tissue`) and spaced random placement.

A given label map always comes first. The automatic tissues, each refused in one line when it is not in view
(a liver preset on a head CT is an error naming what was looked for, never a placement elsewhere):

- ``brain`` (MR): the skull strip of :mod:`._anatomy`, at least 16 mm below the head's surface;
- ``white-matter`` (MR): white matter inside it, by contrast (brightest class on T1, darkest on T2-like);
- ``lung`` (CT): components of voxels below -400 HU, except those that touch
  the in-plane edges of the volume and are as dark as air (median below
  -960 HU: outside air; a crop through a lung keeps the lung), the two largest
  kept, holes (vessels) filled slice by slice; at least 5 mL (sinuses and bowel gas are not lungs);
- ``liver`` (CT): the largest thick (8 mm eroded) 40-200 HU organ on the patient's right, in a trunk at least
  22 cm wide, grown back inside soft tissue (plain and contrast-enhanced livers); (MR, any contrast): the largest
  thick (8 mm eroded) homogeneous organ (local coefficient of variation below 0.25) on the patient's right, in a
  body at least 26 cm wide, at least 50 mL, more
  than 30 mm deep, whose median is more than 30 % from the subcutaneous fat's (fat is the layer under the skin on
  every sequence, fat-suppressed or not), grown back within 30 % of its median. TotalSegmentator's example MR:
  331 mL of its 499 mL liver label, 96 % of it inside the label (Dice 0.77);
- ``brain-ct`` (CT): 0-80 HU tissue inside the cavity that bone (> 250 HU) closes slice by slice, refused
  where the cavity holds air or lung (a rib cage) or is wider than a skull; on a skull-stripped head CT (under
  10 mL of bone, one constant background around a 0.8-2.2 L soft-tissue body at most 21 cm wide, such as
  TotalSegmentator's CT brain atlas) the stripped brain, at least 3 mm inside its edge;
- ``breast`` (MR): the body: voxels above 15 % of the volume's 95th percentile (air, lung and signal voids carry
  noise only; fat, fat-suppressed or not, and fibroglandular tissue are above), the largest component, holes filled
  slice by slice, at least 3 mm below the skin (1.5-3 mm thick); the edges of the field of view are not skin (a
  crop). The chest wall (pectoral muscle, ribs, heart) is not excluded: on a full bilateral scan give a mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from ...errors import InputError
from ...volume import Volume
from ._anatomy import fill_slices, find_brain, largest_components as _largest, white_matter
from ._presets import REGIONS

__all__ = ["Tissue", "auto_region", "find_tissue", "guess_body_part", "place_centres"]

logger = logging.getLogger(__name__)

#: A body wider than this (mm) is a trunk; a head (at most about 20 cm wide, 24 cm long) or a breast MR's field of
#: view (one breast, or a crop) is narrower.
TRUNK_MIN_MM = 260.0



def _lung(array: np.ndarray, slice_axis: int = 0) -> np.ndarray:
    smooth = ndimage.gaussian_filter(array.astype(np.float32), 0.7)
    air = smooth < -400
    labels, count = ndimage.label(air)
    if count == 0:
        return air
    # outside air touches the in-plane edges; the trachea may leave through the first/last slice
    border = np.zeros_like(air)
    for axis in range(3):
        if axis == slice_axis:
            continue
        index = [slice(None)] * 3
        index[axis] = [0, -1]
        border[tuple(index)] = True
    # a border-touching component is outside air when it is as dark as air (lung parenchyma is about
    # -950 to -700 HU): so a crop that cuts through a lung keeps that lung
    touching = np.unique(labels[border & air])
    touching = touching[touching > 0]
    medians = ndimage.median(smooth, labels, touching) if touching.size else []
    outside = [t for t, m in zip(touching, np.atleast_1d(medians)) if m < -960]
    inner = air & ~np.isin(labels, outside)
    lungs = _largest(inner, keep=2, min_fraction=0.2)
    return fill_slices(lungs, slice_axis)  # vessels inside, slice by slice


def _body(smooth: np.ndarray, slice_axis: int) -> np.ndarray:
    return fill_slices(_largest(smooth > -500), slice_axis)


def _width_mm(mask: np.ndarray, spacing_kji, slice_axis: int) -> float:
    """The mask's largest in-plane extent (mm), of its bounding box."""
    if not mask.any():
        return 0.0
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return max((b.stop - b.start) * s for a, (b, s) in enumerate(zip(box, spacing_kji)) if a != slice_axis)


def _liver(volume: Volume) -> np.ndarray:
    """The largest thick soft-tissue organ (40-200 HU: plain or contrast-enhanced) on the patient's right, in a trunk."""
    spacing, axis = volume.spacing_kji, volume.slice_axis()
    smooth = ndimage.gaussian_filter(volume.array.astype(np.float32), [2.0 / s for s in spacing])
    body = _body(smooth, axis)
    if _width_mm(body, spacing, axis) < 220.0:  # a head or a limb: no liver in view
        return np.zeros_like(body)
    tissue = body & (smooth > 40) & (smooth < 200)
    thick = ndimage.distance_transform_edt(tissue, sampling=spacing) >= 8.0  # organs apart, muscle and vessels gone
    labels, count = ndimage.label(thick)
    if count == 0:
        return thick
    sizes = np.bincount(labels.ravel())[1:]
    centres = np.array(ndimage.center_of_mass(thick, labels, range(1, count + 1)))
    right_x = volume.ijk_points_to_ras(centres[:, ::-1])[:, 0]
    body_x = volume.ijk_points_to_ras(np.argwhere(body)[:: 97].mean(axis=0)[::-1])[0]
    on_right = [i for i in np.argsort(sizes)[::-1] if right_x[i] > body_x]
    if not on_right:
        return np.zeros_like(body)
    seed = labels == on_right[0] + 1
    grown = ndimage.distance_transform_edt(~seed, sampling=spacing) <= 8.0 + max(spacing)
    return ndimage.binary_fill_holes(grown & tissue & body)


def _mr_body(smooth: np.ndarray, axis: int, *, stride: int) -> tuple[np.ndarray, float]:
    """(the body on a smoothed MR, its bright level): the largest region above 15 % of the 95th percentile (of
    every ``stride``-th voxel), holes filled slice by slice; empty where nothing is bright."""
    top = float(np.percentile(smooth[::stride, ::stride, ::stride], 95))
    if top <= 0:
        return np.zeros(smooth.shape, dtype=bool), top
    return fill_slices(_largest(smooth > 0.15 * top), axis), top


def _liver_mr(volume: Volume) -> np.ndarray:
    """The liver on an MR of the trunk, any contrast: the largest thick homogeneous organ on the patient's right,
    deep in the body and unlike fat, grown back inside tissue of its own intensity (see the module notes)."""
    spacing, axis = volume.spacing_kji, volume.slice_axis()
    data = volume.array.astype(np.float32)
    smooth = ndimage.gaussian_filter(data, [1.5 / s for s in spacing])
    body, top = _mr_body(smooth, axis, stride=2)
    if _width_mm(body, spacing, axis) < TRUNK_MIN_MM:  # a head, a breast or a limb: no liver in view
        return np.zeros_like(body)
    size = [max(1, int(round(6.0 / s))) | 1 for s in spacing]  # about 6 mm
    mean = ndimage.uniform_filter(data, size)
    std = np.sqrt(np.maximum(ndimage.uniform_filter(data * data, size) - mean * mean, 0.0))
    homogeneous = body & (std < LIVER_MR_CV * np.maximum(mean, 1e-6)) & (mean > 0.1 * top)
    thick = ndimage.distance_transform_edt(homogeneous, sampling=spacing) >= 8.0
    labels, count = ndimage.label(thick)
    if count == 0:
        return thick
    index = np.arange(1, count + 1)
    sizes = np.bincount(labels.ravel())[1:]
    centres = np.array(ndimage.center_of_mass(thick, labels, index))
    right_x = volume.ijk_points_to_ras(centres[:, ::-1])[:, 0]
    body_x = volume.ijk_points_to_ras(np.argwhere(body)[:: 97].mean(axis=0)[::-1])[0]
    skin = ndimage.distance_transform_edt(body, sampling=spacing)
    depth = np.atleast_1d(ndimage.mean(skin, labels, index))
    medians = np.atleast_1d(ndimage.median(smooth, labels, index))
    fat = float(np.median(smooth[body & (skin < 8.0)]))  # the subcutaneous layer is fat on every sequence
    organs = [i for i in np.argsort(sizes)[::-1]
              if right_x[i] > body_x and depth[i] > 30.0 and abs(medians[i] - fat) > 0.3 * fat]
    if not organs:
        return np.zeros_like(body)
    seed = labels == organs[0] + 1
    level = float(np.median(smooth[seed]))
    similar = body & (np.abs(smooth - level) < 0.3 * level)
    grown = ndimage.distance_transform_edt(~seed, sampling=spacing) <= 8.0 + max(spacing)
    liver = _largest(ndimage.binary_fill_holes(grown & similar))
    if np.count_nonzero(liver) * float(np.prod(spacing)) / 1000.0 < 50.0:  # a piece of an organ: not a liver
        return np.zeros_like(body)
    return liver


#: Local coefficient of variation (6 mm) below which MR tissue counts as a homogeneous organ (the liver's, noise
#: and vessels included, is 0.1-0.2 on the corpus's abdominal MR; fat-organ borders and bowel are above).
LIVER_MR_CV = 0.25


def _stripped_brain_ct(volume: Volume, smooth: np.ndarray) -> np.ndarray:
    """A skull-stripped head CT (a brain template or a stripped scan): one constant background value (at least a
    fifth of the voxels) around a single 0-80 HU body of a brain's size (0.8-2.2 L, at most 21 cm wide)."""
    array, spacing, axis = volume.array, volume.spacing_kji, volume.slice_axis()
    values, counts = np.unique(array[::3, ::3, ::3], return_counts=True)
    outside = array == values[int(np.argmax(counts))]  # the most frequent value: what stripping left outside
    if np.mean(outside) < 0.2:
        return np.zeros(array.shape, dtype=bool)
    body = fill_slices(_largest(~outside), axis)
    body_ml = np.count_nonzero(body) * float(np.prod(spacing)) / 1000.0
    soft = np.mean((smooth[body] > -20) & (smooth[body] < 100)) if body.any() else 0.0
    if not 800.0 <= body_ml <= 2200.0 or soft < 0.8 or _width_mm(body, spacing, axis) > 210.0:
        return np.zeros(array.shape, dtype=bool)
    depth = ndimage.distance_transform_edt(np.pad(body, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return body & (depth >= STRIPPED_MARGIN_MM) & (smooth > 0) & (smooth < 80)


#: On a skull-stripped CT, haemorrhages stay this deep inside the stripped brain (its edge is the skull's inside).
STRIPPED_MARGIN_MM = 3.0


def _brain_ct(volume: Volume) -> np.ndarray:
    """Soft tissue (0-80 HU) inside the skull: the cavity that bone closes slice by slice, mostly brain-dense;
    on a skull-stripped head CT (no bone), the stripped brain."""
    spacing, axis = volume.spacing_kji, volume.slice_axis()
    smooth = ndimage.gaussian_filter(volume.array.astype(np.float32), [1.0 / s for s in spacing])
    bone = smooth > 250
    if np.count_nonzero(bone) * float(np.prod(spacing)) < 10_000.0:  # under 10 mL of bone: no skull in view
        return _stripped_brain_ct(volume, smooth)
    cavity = fill_slices(bone, axis) & ~bone
    cavity = ndimage.binary_opening(cavity, iterations=2)
    brain = _largest(cavity & (smooth > 0) & (smooth < 80))
    inside = _largest(cavity)
    if not brain.any() or np.count_nonzero(brain) < 0.6 * np.count_nonzero(inside) \
            or np.mean(smooth[inside] < -200) > 0.05 or _width_mm(inside, spacing, axis) > 210.0:
        return np.zeros_like(brain)  # a chest's rib cage, or no closed skull: no brain in view
    return ndimage.binary_fill_holes(brain)


#: Breast lesions stay at least this deep below the skin (1.5-3 mm thick).
BREAST_SKIN_MM = 3.0


def _breast(volume: Volume) -> np.ndarray:
    """The body of a breast MR above the air level, at least ``BREAST_SKIN_MM`` below its skin (see the notes)."""
    spacing, axis = volume.spacing_kji, volume.slice_axis()
    smooth = ndimage.gaussian_filter(volume.array.astype(np.float32), [0.7 / s for s in spacing])
    body, _ = _mr_body(smooth, axis, stride=3)
    depth = ndimage.distance_transform_edt(body, sampling=spacing)  # no padding: the volume's edge is not skin
    return body & (depth >= BREAST_SKIN_MM)


@dataclass
class Tissue:
    """An automatic region: its ``mask`` (volume grid), the tissue's ``name``, the ``method`` that found it
    and the ``brain_ml`` where a brain was extracted first."""

    name: str
    mask: np.ndarray
    method: str
    extra: dict

    def describe(self, volume: Volume) -> dict:
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        return {"tissue": self.name, "method": self.method,
                "volume_ml": round(float(np.count_nonzero(self.mask)) * voxel_ml, 2), **self.extra}


_LOOKED_FOR = {
    "white-matter": "white matter inside a skull-stripped brain (an MR head)",
    "brain": "a brain inside a dark skull (an MR head)",
    "lung": "air-filled lungs (< -400 HU, at least 5 mL, not the outside air)",
    "liver": "a liver (CT: a thick 40-200 HU organ; MR: a thick homogeneous organ unlike fat; on the patient's "
             "right in a trunk at least 22 cm wide on CT, 26 cm on MR)",
    "brain-ct": "a brain (0-80 HU) inside a skull that bone closes, or a skull-stripped brain",
    "breast": "breast tissue (a body above the air level, at least 1 mL, 3 mm below the skin)",
}

_LIVER_MR_METHOD = ("MR: largest thick (8 mm) homogeneous (local CV < 0.25) organ on the patient's right, > 30 mm "
                    "deep, unlike the subcutaneous fat, regrown within 30 % of its median")

_METHODS = {
    "white-matter": "skull strip (morphological, grown into the cortex) + 3-class multi-Otsu of the deep brain, "
                    "by contrast (T1: brightest class; T2-like: darkest)",
    "brain": "skull strip (morphological, grown into the cortex), >= 16 mm below the head's surface",
    "lung": "air components inside the body (< -400 HU), two largest, vessels filled",
    "liver": "thick 40-200 HU soft tissue on the patient's right (8 mm erosion, largest, regrown)",
    "brain-ct": "0-80 HU inside the bone-closed skull cavity",
    "breast": "body above 15 % of the 95th percentile, largest, filled, >= 3 mm below the skin (chest wall kept)",
}


def find_tissue(volume: Volume, kind: str) -> Tissue:
    """The tissue ``kind`` (see the module notes) with how it was found; InputError when it is not in view."""
    extra: dict = {}
    method = _METHODS.get(kind, "")
    if kind in ("white-matter", "brain"):
        masks = find_brain(volume.array, volume.spacing_kji)
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        if np.count_nonzero(masks.brain) * voxel_ml < 10.0:
            masks.region[:] = False
        mask = masks.region if kind == "brain" else white_matter(volume.array, volume.spacing_kji, masks)
        extra = {"brain_ml": round(np.count_nonzero(masks.brain) * voxel_ml, 1)}
        if masks.contrast:
            extra["contrast"] = masks.contrast
    elif kind == "lung":
        mask = _lung(volume.array, volume.slice_axis())
        if np.count_nonzero(mask) * float(np.prod(volume.spacing)) / 1000.0 < 5.0:
            mask = np.zeros_like(mask)  # sinuses, mastoids, bowel gas: not lungs
    elif kind == "liver":
        from ...intensity import guess_modality

        if guess_modality(volume) == "CT":
            mask = _liver(volume)
        else:
            mask, method = _liver_mr(volume), _LIVER_MR_METHOD
    elif kind == "brain-ct":
        mask = _brain_ct(volume)
        if mask.any() and np.count_nonzero(volume.array > 250) * float(np.prod(volume.spacing)) < 10_000.0:
            method = "skull-stripped brain (constant background), 0-80 HU, >= 3 mm inside its edge"
    elif kind == "breast":
        mask = _breast(volume)
        if np.count_nonzero(mask) * float(np.prod(volume.spacing)) / 1000.0 < 1.0:
            mask = np.zeros_like(mask)
    else:
        raise InputError(f"no automatic region {kind!r} (the tissues are {', '.join(REGIONS)}); pass a label map "
                         "as the region")
    if not mask.any():
        raise InputError(f"no {kind} in view: looked for {_LOOKED_FOR[kind]} and found none; use a preset for "
                         "what this scan shows, or pass a label map as the region")
    return Tissue(kind, mask, method, extra)


def guess_body_part(volume: Volume, modality: str) -> Optional[str]:
    """``"head"``, ``"chest"``, ``"abdomen"`` or ``"breast"`` from the voxels, or None when no rule fits.

    CT: a brain inside a skull (or a skull-stripped brain) is a head; else air-filled lungs make a chest; else a
    liver an abdomen. MR: a brain found by the skull strip (at least 300 mL) is a head; else a body wider than
    :data:`TRUNK_MIN_MM` is an abdomen (its preset looks for the liver, and refuses where none is in view); else a
    breast (a one-breast field of view or a crop - the weakest rule: a limb would be taken for one).
    """
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    if modality == "CT":
        for part, kind in (("head", "brain-ct"), ("chest", "lung"), ("abdomen", "liver")):
            try:
                find_tissue(volume, kind)
            except InputError:
                continue
            return part
        return None
    masks = find_brain(volume.array, volume.spacing_kji)
    if np.count_nonzero(masks.brain) * voxel_ml >= 300.0 and masks.region.any():
        return "head"
    smooth = ndimage.gaussian_filter(volume.array.astype(np.float32), [1.0 / s for s in volume.spacing_kji])
    top = float(np.percentile(smooth[::3, ::3, ::3], 95))
    body = _largest(smooth > 0.15 * top) if top > 0 else np.zeros(smooth.shape, dtype=bool)
    if not body.any():
        return None
    box = ndimage.find_objects(body.astype(np.uint8))[0]
    width = max((b.stop - b.start) * s for b, s in zip(box, volume.spacing_kji))
    return "abdomen" if width > TRUNK_MIN_MM else "breast"


def auto_region(volume: Volume, kind: str) -> np.ndarray:
    """Boolean KJI mask of the tissue ``kind`` (see the module notes); InputError when it is not in view."""
    return find_tissue(volume, kind).mask


def _depth_map(region: np.ndarray, spacing_kji) -> tuple[np.ndarray, np.ndarray]:
    box = ndimage.find_objects(region.astype(np.uint8))[0]  # the distance map only where the region is
    padded = np.pad(region[box], 1, constant_values=False)  # the volume's edge is the region's edge
    depth = ndimage.distance_transform_edt(padded, sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
    return depth, np.array([s.start for s in box])


def _within_edges(candidates: np.ndarray, volume: Volume, extent: float) -> np.ndarray:
    """The candidates (KJI indices) whose ball of ``extent`` mm stays inside the volume, by the rule
    ``_specs.check_inside`` applies (the edge is half a voxel beyond the last voxel centre; the distance map
    counts to the next voxel centre, half a voxel too far: thick slices put lesions past the edge)."""
    half = extent * np.linalg.norm(volume.ras_to_ijk()[:3, :3], axis=1)[::-1]  # per array axis (k, j, i)
    size = np.array(volume.array.shape)
    return candidates[np.all((candidates - half >= -0.5) & (candidates + half <= size - 0.5), axis=1)]


def _try_place(depth, offset, volume, extent, rng, placed, tries, min_spacing_mm) -> Optional[np.ndarray]:
    candidates = _within_edges(np.argwhere(depth >= extent) + offset, volume, extent) - offset
    if candidates.size == 0:
        return None
    for _ in range(tries):
        index = int(rng.integers(len(candidates)))
        point = volume.ijk_points_to_ras((candidates[index] + offset)[::-1].astype(np.float64))
        if all(np.linalg.norm(point - c) >= extent + other + min_spacing_mm for c, other in placed):
            return point
    return None


def place_centres(
    region: np.ndarray,
    volume: Volume,
    extents_mm: list[float],
    rng: np.random.Generator,
    *,
    min_spacing_mm: float,
    tries: int = 200,
    shrink: Optional[Callable[[int, float], Optional[float]]] = None,
    name: str = "region",
) -> list[np.ndarray]:
    """RAS centres, one per extent, each with its whole ball inside ``region`` and ``min_spacing_mm`` apart.

    A centre qualifies when the region's distance map (mm) there is at least the
    lesion's extent; lesions keep ``min_spacing_mm`` between their balls. A lesion
    that does not fit is drawn again smaller: ``shrink(index, deepest_mm)`` returns
    its new extent (``extents_mm`` is updated), or None when it cannot shrink (its
    size was given, or it is the preset's smallest).

    Raises
    ------
    InputError
        The smallest lesion is larger than the region allows, or the lesions cannot all fit.
    """
    depth, offset = _depth_map(region, volume.spacing_kji)
    deepest = float(depth.max())
    placed: list[tuple[np.ndarray, float]] = []
    for number in range(len(extents_mm)):
        while True:
            point = _try_place(depth, offset, volume, extents_mm[number], rng, placed, tries, min_spacing_mm)
            if point is not None:
                placed.append((point, extents_mm[number]))
                break
            smaller = None if shrink is None else shrink(number, deepest)
            if smaller is not None:
                extents_mm[number] = smaller
                continue
            if 2 * extents_mm[number] > 2 * deepest:
                raise InputError(
                    f"lesion {number + 1} needs a region {2 * extents_mm[number]:.1f} mm across, but the {name} "
                    f"region's widest inscribed ball is {2 * deepest:.1f} mm; choose a smaller size or a larger region")
            raise InputError(
                f"cannot fit {len(extents_mm)} lesions {min_spacing_mm:g} mm apart inside the {name} region "
                f"(placed {len(placed)}); ask for fewer or smaller lesions, or a smaller --min-spacing")
    return [p for p, _ in placed]
