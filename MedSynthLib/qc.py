"""Quality-control pictures a person can read: what a task changed, at a glance, as a PNG.

One picture, two rows of titled panels drawn with Pillow (a dependency of
scikit-image, so nothing new to install; no plotting library):

- top row, the edited slice: *before*, *after* and *after - before*; for slice
  filling the nearest good slice comes first, so the restored slice can be
  compared with real anatomy rather than with the corrupted one;
- bottom row, the same three through the perpendicular plane, where restored
  slices show as lines and a lesion as its cross-section.

Each title names the view (axial, coronal, sagittal), the axis and the index.
The grey window comes from the good data (voxels outside the edited region),
never from a corrupted slice; the difference uses a diverging blue-white-red
scale with a colour bar; the edited region (restored slices, lesion labels) is
outlined in yellow. Given a synthesised-voxel mask (:mod:`~MedSynthLib.provenance`), the *after* panels
outline its synthesised voxels in magenta and its rewritten ones in amber; given an uncertainty (fill and
upsample), a fourth panel shows its standard deviation (black to white, scale in the title); given a local noise
map (denoise), one more panel shows it on a sequential scale (dark purple to yellow) with its own colour bar in the
volume's units, its title saying whether the denoiser used it. Panels are scaled to square millimetres, about
256 px each, oriented as a radiologist reads them (:func:`_radiological`).

Synthetic lesions get their own picture, :func:`lesion_qc_picture`: one tile per lesion (the first
:data:`MAX_LESION_TILES`), axial, coronal and sagittal through its centre, before and after with the labels
outlined, its kind, tissue and volume in the tile's caption. The drawing kernel (window, panels, outlines,
layout) is the private :mod:`~MedSynthLib._qc_draw`, shared by both pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ._qc_draw import _compose, _diverging, _grey, _panel, _provenance_outlines, _sequential, _window
from .errors import InputError, check_whole_number
from .volume import AXIS_NAMES, Volume

__all__ = ["qc_picture", "save_qc_png", "lesion_qc_picture", "LesionQC", "most_changed_slice", "display_plane"]

_VIEWS = ("sagittal", "coronal", "axial")  # the plane whose normal is R, A, S


def most_changed_slice(before: np.ndarray, after: np.ndarray, *, axis: int) -> int:
    """Index along ``axis`` of the slice with the largest summed absolute change (the middle if none)."""
    change = np.abs(after.astype(np.float64) - before.astype(np.float64))
    other = tuple(a for a in range(3) if a != axis)
    totals = change.sum(axis=other)
    return int(np.argmax(totals)) if totals.max() > 0 else before.shape[axis] // 2


def _radiological(planes: list, volume: Volume, in_plane: list) -> tuple[list, tuple[int, int]]:
    """Orient 2D planes as a radiologist reads them, whatever the volume's direction matrix.

    Up is superior (or anterior on an axial plane); left on screen is the patient's right
    (anterior on a sagittal plane). ``in_plane`` are the two array axes of the plane, in
    the planes' row, column order; returns the planes and the (row, column) array axes.
    """
    # RAS direction of each array axis (array axis a is IJK axis 2 - a)
    directions = {ax: volume.direction[:, 2 - ax] for ax in in_plane}
    dominant = {ax: int(np.argmax(np.abs(directions[ax]))) for ax in in_plane}
    # vertical: the axis closest to S, else to A
    vertical_letter = 2 if 2 in dominant.values() else 1
    rows_axis = next((ax for ax in in_plane if dominant[ax] == vertical_letter), in_plane[0])
    cols_axis = next(ax for ax in in_plane if ax != rows_axis)
    out = [p.T if rows_axis != in_plane[0] else p for p in planes]
    if directions[rows_axis][vertical_letter] > 0:  # row index grows upwards in the patient
        out = [np.flipud(p) for p in out]
    horizontal = dominant[cols_axis]
    # screen-left is the patient's right (R: x > 0) or, on a sagittal plane, anterior (A: y > 0):
    # flip when the column index grows towards that side
    if directions[cols_axis][horizontal] > 0:
        out = [np.fliplr(p) for p in out]
    return out, (rows_axis, cols_axis)


def display_plane(volume: Volume, arrays: Sequence[np.ndarray], *, axis: int, index: int) -> tuple[list, tuple[int, int]]:
    """The planes ``index`` along ``axis`` of ``arrays`` (on ``volume``'s grid), oriented radiologically."""
    in_plane = [a for a in range(3) if a != axis]
    planes = [np.take(a, index, axis=axis) for a in arrays]
    return _radiological(planes, volume, in_plane)


def _view_name(volume: Volume, axis: int) -> str:
    return _VIEWS[int(np.argmax(np.abs(volume.direction[:, 2 - axis])))]


def _on_grid(before: Volume, after: Volume) -> np.ndarray:
    """``before`` resampled (nearest voxel) onto ``after``'s grid, e.g. to compare with an upsampled result."""
    mapping = before.ras_to_ijk() @ after.ijk_to_ras  # after IJK -> before IJK
    index = []
    for array_axis in range(3):
        ijk = 2 - array_axis
        steps = np.arange(after.array.shape[array_axis])
        position = mapping[ijk, ijk] * steps + mapping[ijk, 3]
        index.append(np.clip(np.rint(position), 0, before.array.shape[array_axis] - 1).astype(int))
    return before.array[np.ix_(*index)]


def _row(volume: Volume, planes: dict, *, axis: int, index: int, window, limit: float, titles: list, neighbour=None):
    """PIL panels and titles for one view: [neighbour,] before, after, difference."""
    keys = ["before", "after", "edited"] + [k for k in ("provenance", "uncertainty", "noise_map") if k in planes]
    arrays = [planes[k] for k in keys]
    oriented, (rows_axis, cols_axis) = display_plane(volume, arrays, axis=axis, index=index)
    shown = dict(zip(keys, oriented))
    if neighbour is not None:
        shown["neighbour"] = _radiological([np.take(planes["neighbour"], neighbour, axis=axis)], volume,
                                           [a for a in range(3) if a != axis])[0][0]
    spacing = (volume.spacing_along(rows_axis), volume.spacing_along(cols_axis))

    def grey(plane):
        return _grey(plane, window)

    panels = []
    if neighbour is not None:
        panels.append(_panel(grey(shown["neighbour"]), spacing, None))
    panels.append(_panel(grey(shown["before"]), spacing, shown["edited"]))
    marks = _provenance_outlines(shown["provenance"]) if "provenance" in shown else shown["edited"]
    panels.append(_panel(grey(shown["after"]), spacing, marks))
    panels.append(_panel(_diverging(shown["after"] - shown["before"], limit), spacing, None))
    if "uncertainty" in shown:
        top = planes["uncertainty_limit"]
        panels.append(_panel(np.repeat(np.clip(shown["uncertainty"] / top, 0, 1)[..., None], 3, axis=2), spacing,
                             marks))
        titles = titles + [f"uncertainty: sd 0 (black) to {top:.3g} (white)"]
    if "noise_map" in shown:
        low, high, _ = planes["noise_map_scale"]
        panels.append(_panel(_sequential((shown["noise_map"] - low) / (high - low)), spacing, None))
        titles = titles + [planes["noise_map_title"]]
    return list(zip(panels, titles))


def _edited_mask(before: np.ndarray, after: np.ndarray, *, axis: int, slices, region) -> np.ndarray:
    if region is not None:
        return np.asarray(region, dtype=bool)
    if slices is not None:
        mask = np.zeros(before.shape, dtype=bool)
        np.moveaxis(mask, axis, 0)[list(slices)] = True
        return mask
    return after != before


def _pick(edited: np.ndarray, before, after, *, axis: int, slices, region) -> int:
    if slices:
        return int(list(slices)[len(slices) // 2])
    if region is not None and edited.any():
        return int(np.argmax(edited.sum(axis=tuple(a for a in range(3) if a != axis))))
    return most_changed_slice(before, after, axis=axis)


def qc_picture(
    before: Volume,
    after: Volume,
    *,
    axis: Optional[int] = None,
    index: Optional[int] = None,
    slices: Optional[Sequence[int]] = None,
    region: Optional[np.ndarray] = None,
    title: str = "",
    provenance: Optional[Volume] = None,
    uncertainty: Optional[Volume] = None,
    noise_map: Optional[Volume] = None,
    noise_map_used: Optional[bool] = None,
) -> np.ndarray:
    """RGB uint8 picture (rows, cols, 3) of what changed from ``before`` to ``after``; see the module docstring.

    Parameters
    ----------
    before, after : Volume
        Input and result. When the grids differ (upsampling) ``before`` is shown
        as its nearest voxel on ``after``'s grid.
    axis, index : int, optional
        The slice shown in the top row (default: the volume's slice axis, and
        the restored slice, the slice with most of ``region``, or the most changed).
    slices : sequence of int, optional
        Slices restored along ``axis`` (slice filling): outlined, excluded from
        the grey window, and shown beside their nearest good slice.
    region : bool array, optional
        The edited voxels on ``after``'s grid (e.g. a lesion label map), outlined.
    title : str
        What was done, written above the panels.
    provenance : Volume, optional
        The synthesised-voxel mask on ``after``'s grid: outlined on the *after* panels by value.
    uncertainty : Volume, optional
        Standard deviation on ``after``'s grid (fill, upsample): a fourth panel in each row.
    noise_map : Volume, optional
        The local noise sigma on ``after``'s grid (denoise, :mod:`~MedSynthLib.noise_map`): one more panel in each
        row, on a sequential scale with its own colour bar in the volume's units, so that a reader sees where the
        noise is high and whether the denoiser followed it. ``noise_map_used``: what the report's ``noise_map``
        says (``used``), shown in the panel's title.
    """
    volume = after
    axis = after.slice_axis() if axis is None else axis
    b = (before.array if before.array.shape == after.array.shape else _on_grid(before, after)).astype(np.float64)
    a = after.array.astype(np.float64)
    edited = _edited_mask(b, a, axis=axis, slices=slices, region=region)
    index = _pick(edited, b, a, axis=axis, slices=slices, region=region) if index is None else int(index)
    explicit = bool(slices) or region is not None
    window = _window(b, edited if explicit else None)
    if not explicit and (edited.mean() > 0.5 or before.array.shape != after.array.shape):
        # a whole-volume edit (denoising, resampling): outlining it would hide the image
        edited = np.zeros_like(edited)
    change = np.abs(a - b)
    limit = float(np.percentile(change[change > 0], 99)) if np.any(change > 0) else 1.0
    planes = {"before": b, "after": a, "edited": edited, "neighbour": b}
    if provenance is not None:
        planes["provenance"] = np.asarray(provenance.array)
    if uncertainty is not None:
        spread = np.asarray(uncertainty.array, np.float64)
        planes["uncertainty"] = spread
        planes["uncertainty_limit"] = float(np.percentile(spread[spread > 0], 99)) if np.any(spread > 0) else 1.0
    scale = _noise_map_planes(planes, noise_map, noise_map_used, after) if noise_map is not None else None
    name = AXIS_NAMES[axis]
    neighbour = None
    if slices:
        good = [s for s in range(b.shape[axis]) if s not in set(slices)]
        neighbour = min(good, key=lambda s: abs(s - index)) if good else None
    view = _view_name(volume, axis)
    top_titles = ([f"good neighbour {name}={neighbour}"] if neighbour is not None else []) + [
        f"before  {view} {name}={index}", f"after  {view} {name}={index}", "difference (after - before)"]
    rows = [_row(volume, planes, axis=axis, index=index, window=window, limit=limit, titles=top_titles,
                 neighbour=neighbour)]
    cut = [ax for ax in range(3) if ax != axis][0]
    centre = _centre(np.take(edited, index, axis=axis), cut if cut < axis else cut - 1)
    cut_view, cut_name = _view_name(volume, cut), AXIS_NAMES[cut]
    rows.append(_row(volume, planes, axis=cut, index=centre, window=window, limit=limit,
                     titles=[f"before  {cut_view} {cut_name}={centre}", f"after  {cut_view} {cut_name}={centre}",
                             "difference"]))
    header = (f"{title}  |  " if title else "") + f"grey window {window[0]:.4g} to {window[1]:.4g} from the " + (
        "unedited voxels" if explicit else "input") + (
        "; synthesised voxels outlined magenta, rewritten amber" if provenance is not None
        else "; edited region outlined" if edited.any() else "")
    return np.asarray(_compose(rows, header, limit, scale=scale))


def _noise_map_planes(planes: dict, noise_map: Volume, used: Optional[bool], after: Volume) -> tuple:
    """Add the noise map, its scale and its panel title to ``planes``; return the scale (low, high, label).

    The scale is the map's 1st to 99th percentile (the map is smooth; its extrapolated corners would stretch a
    min-max scale), widened to +-5 % of the level when the map is flat, so that even noise shows as one colour."""
    values = np.asarray(noise_map.array, np.float64)
    if values.shape != after.array.shape:
        raise InputError(f"the noise map's shape {values.shape} is not the result's {after.array.shape}")
    finite = values[np.isfinite(values)]
    low, high = (float(v) for v in np.percentile(finite, [1, 99])) if finite.size else (0.0, 1.0)
    if high - low <= 0.1 * max(abs(high), 1e-12):
        middle = 0.5 * (low + high)
        low, high = middle - max(0.05 * abs(middle), 1e-6), middle + max(0.05 * abs(middle), 1e-6)
    planes["noise_map"] = values
    planes["noise_map_scale"] = (low, high, "noise sigma")
    state = "" if used is None else ", used" if used else ", not used"
    planes["noise_map_title"] = f"noise map (sigma{state})"
    return planes["noise_map_scale"]


def _centre(plane: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the 2D ``plane`` through most of its edited pixels (the middle if none or all)."""
    totals = plane.sum(axis=1 - axis)
    if not totals.any() or totals.min() == totals.max():
        return plane.shape[axis] // 2
    return int(np.argmax(totals))


#: Lesion tiles drawn at most: a picture a person takes in at once; the header says how many were left out.
MAX_LESION_TILES = 12
_TILE_PANEL = 150  # longest side of a lesion tile's panel, px
_TILE_MIN_HALF_MM = 15.0  # a tile shows at least 30 mm around the lesion's centre: enough tissue to judge it in


@dataclass(frozen=True)
class LesionQC:
    """What :func:`lesion_qc_picture` drew.

    Attributes
    ----------
    picture : ndarray, shape (rows, cols, 3), uint8
        The RGB picture.
    tiles : tuple of dict
        One per lesion shown, in the report's order: ``id``, ``title`` (the tile's caption: kind, tissue,
        volume), ``centre_kji`` (the voxel the three views pass through), ``half_mm`` (the field of view
        each side of it) and ``panels``, six dicts with ``view`` (axial, coronal, sagittal), ``stage``
        (before, after), ``axis`` and ``index`` of the plane and ``box``, its (x, y, width, height) in
        ``picture``.
    left_out : tuple of int
        Ids of the lesions beyond ``max_tiles``, not drawn.
    """

    picture: np.ndarray
    tiles: tuple
    left_out: tuple


def _view_axes(volume: Volume) -> tuple[int, int, int]:
    """Array axes of the axial, coronal and sagittal planes (normals closest to S, A, R).

    The one-to-one assignment with the largest summed |cosine|, so that a strongly oblique volume still
    gets one plane of each kind rather than two "axial" ones.
    """
    cosines = np.abs(volume.direction)  # [R/A/S, i/j/k]
    return max(permutations(range(3)),
               key=lambda axes: sum(cosines[letter, 2 - axis] for letter, axis in zip((2, 1, 0), axes)))


def _lesion_centre(volume: Volume, lesion: dict) -> np.ndarray:
    """The voxel (k, j, i) nearest the lesion's ``centre_ras`` (else its bounding box's centre), inside the grid."""
    if lesion.get("centre_ras") is not None:
        kji = volume.ras_points_to_ijk(np.asarray(lesion["centre_ras"], np.float64))[::-1]
    elif lesion.get("bbox_ijk"):
        kji = np.array([(low + high - 1) / 2.0 for low, high in lesion["bbox_ijk"]])[::-1]
    else:
        raise InputError(f"lesion {lesion.get('id', '?')} has neither 'centre_ras' nor 'bbox_ijk' in its report")
    return np.clip(np.rint(kji), 0, np.array(volume.array.shape) - 1).astype(int)


def _lesion_half_mm(volume: Volume, lesion: dict) -> float:
    """Field of view each side of the centre: the lesion's widest extent (so it fills about half the panel),
    its region of influence and a quarter more (oedema, mass effect), and at least 15 mm."""
    sizes = [_TILE_MIN_HALF_MM]
    roi = lesion.get("region_of_influence") or {}
    if roi.get("radius_mm"):
        sizes.append(1.25 * float(roi["radius_mm"]))
    if lesion.get("bbox_ijk"):
        sizes.append(max((high - low) * volume.spacing[n] for n, (low, high) in enumerate(lesion["bbox_ijk"])))
    return float(max(sizes))


def _lesion_caption(lesion: dict) -> str:
    kind = (lesion.get("spec") or {}).get("kind")
    tissue = lesion.get("tissue") or "tissue not reported"
    volume = f"{lesion['volume_ml']:.3g} mL" if lesion.get("volume_ml") is not None else "volume not reported"
    requested = (f" (requested {lesion['requested_volume_ml']:.3g})"
                 if lesion.get("requested_volume_ml") is not None else "")
    return f"lesion {lesion.get('id', '?')}" + (f" ({kind})" if kind else "") + f": {tissue}, {volume}{requested}"


def _lesion_row(volume: Volume, arrays: tuple, lesion: dict, *, views: tuple, window) -> tuple[list, dict]:
    """(panel, title) pairs of one lesion - before and after through its centre, per view - and its tile's
    description (without the panels' boxes)."""
    centre = _lesion_centre(volume, lesion)
    half_mm = _lesion_half_mm(volume, lesion)
    box = []
    for axis in range(3):
        half = int(np.ceil(half_mm / volume.spacing_along(axis)))
        box.append(slice(max(0, centre[axis] - half), min(volume.array.shape[axis], centre[axis] + half + 1)))
    cropped = [a[tuple(box)] for a in arrays]
    row, panels = [], []
    for view, axis in zip(("axial", "coronal", "sagittal"), views):
        index = int(centre[axis])
        (before, after, labels), (rows_axis, cols_axis) = display_plane(volume, cropped, axis=axis,
                                                                       index=index - box[axis].start)
        spacing = (volume.spacing_along(rows_axis), volume.spacing_along(cols_axis))
        for stage, plane, outline in (("before", before, None), ("after", after, labels)):
            row.append((_panel(_grey(plane, window), spacing, outline, size=_TILE_PANEL),
                        f"{view} {stage} {AXIS_NAMES[axis]}={index}"))
            panels.append({"view": view, "stage": stage, "axis": axis, "index": index})
    tile = {"id": lesion.get("id"), "title": _lesion_caption(lesion), "centre_kji": tuple(int(c) for c in centre),
            "half_mm": round(half_mm, 2), "panels": panels}
    return row, tile


def lesion_qc_picture(
    before: Volume,
    after: Volume,
    labels,
    lesions: Sequence[dict],
    *,
    title: str = "",
    max_tiles: int = MAX_LESION_TILES,
) -> LesionQC:
    """One tile per lesion: axial, coronal and sagittal through its centre, before and after, labels outlined.

    Each tile is a row of six panels (axial before, axial after, coronal..., sagittal...) cropped to the
    lesion's surroundings (its widest extent or 1.25 x its region of influence each side of its centre, at
    least 15 mm), scaled to square millimetres and oriented radiologically (:func:`display_plane`); the
    label map is outlined in yellow on the *after* panels, the *before* panels are left clean. The tile's
    caption names the lesion, its kind, the tissue it landed in and its labelled volume in mL (and the
    requested one). One grey window for every tile: the 1st-99.5th percentiles of the tissue (outside the
    labels, before) widened to those of the lesions (after), so a bright lesion in bright tissue still shows.

    Parameters
    ----------
    before, after : Volume
        The scan and the scan with lesions (``before`` is shown as its nearest voxel on ``after``'s grid
        when the grids differ).
    labels : Volume or ndarray, shape (k, j, i)
        The lesions' label map on ``after``'s grid; every non-zero voxel is outlined.
    lesions : sequence of dict
        The lesion report's entries (``result.report["lesions"]``): ``centre_ras`` (or ``bbox_ijk``),
        ``volume_ml``, ``tissue``, ``region_of_influence``, ``spec``.
    title : str
        What was done, written first in the header.
    max_tiles : int
        Tiles drawn at most (the first ones in the report); the header says how many were left out.

    Returns
    -------
    LesionQC
        The picture and, per tile, what it shows and where its panels are.

    Raises
    ------
    InputError
        No lesions, labels on another grid, ``max_tiles`` below 1, or a lesion without a centre.

    Examples
    --------
    >>> import numpy as np
    >>> from MedSynthLib import Volume
    >>> before = Volume(np.zeros((20, 20, 20), np.float32), np.eye(4))
    >>> labels = np.zeros((20, 20, 20), np.uint8); labels[8:12, 8:12, 8:12] = 1
    >>> after = before.with_array(before.array + 50 * labels)
    >>> lesion = {"id": 1, "centre_ras": [10, 10, 10], "volume_ml": 0.064, "tissue": "white matter"}
    >>> qc = lesion_qc_picture(before, after, labels, [lesion], title="one cube")
    >>> len(qc.tiles), qc.tiles[0]["title"]
    (1, 'lesion 1: white matter, 0.064 mL')
    """
    from .volume import mask_on_grid

    max_tiles = check_whole_number(max_tiles, "max_tiles", low=1, high=10_000)
    lesions = list(lesions)
    if not lesions:
        raise InputError("no lesions to show: the lesion report's list is empty")
    if labels is None:
        raise InputError("give the lesions' label map: its outline is what the tiles show")
    outlined = mask_on_grid(after, labels, name="lesion label map")
    b = (before.array if before.array.shape == after.array.shape else _on_grid(before, after)).astype(np.float64)
    a = after.array.astype(np.float64)
    # the tissue's window (outside the labels), widened to the lesions' own values so that a bright lesion in
    # bright tissue does not saturate to the same white
    tissue_low, tissue_high = _window(b, outlined)
    lesion_low, lesion_high = np.percentile(a[outlined], [1, 99.5])
    window = (min(tissue_low, float(lesion_low)), max(tissue_high, float(lesion_high)))
    views = _view_axes(after)
    rows, tiles = [], []
    for lesion in lesions[:max_tiles]:
        row, tile = _lesion_row(after, (b, a, outlined), lesion, views=views, window=window)
        rows.append(row)
        tiles.append(tile)
    left_out = tuple(lesion.get("id") for lesion in lesions[max_tiles:])
    shown = f"{len(lesions)} lesion(s)" if not left_out else (
        f"first {len(tiles)} of {len(lesions)} lesions shown, {len(left_out)} left out (ids "
        + ", ".join(str(i) for i in left_out[:6]) + (", ..." if len(left_out) > 6 else "") + ")")
    header = (f"{title}  |  " if title else "") + f"{shown}  |  grey window {window[0]:.4g} to {window[1]:.4g} " \
        "(tissue and lesions); labels outlined on after"
    boxes: list = []
    picture = np.asarray(_compose(rows, header, None, captions=[t["title"] for t in tiles], boxes=boxes))
    for tile, placed in zip(tiles, boxes):
        for panel, box in zip(tile["panels"], placed):
            panel["box"] = tuple(int(v) for v in box)
    return LesionQC(picture=picture, tiles=tuple(tiles), left_out=left_out)


def save_qc_png(before: Volume, after: Volume, path: str | Path, *, lesions: Optional[Sequence[dict]] = None,
                **kwargs) -> Path:
    """Write :func:`qc_picture` to ``path`` (PNG, atomically); keyword arguments as for :func:`qc_picture`.

    Given ``lesions`` (a lesion report's entries), writes :func:`lesion_qc_picture` instead, one tile per
    lesion: ``region`` is then the label map, ``title`` and ``max_tiles`` as for that function (``axis``
    may only be None: every tile shows its three views).
    """
    from PIL import Image

    from .io import staged_file

    if lesions is not None:
        if kwargs.pop("axis", None) is not None:
            raise TypeError("save_qc_png: 'axis' does not apply with 'lesions' (each tile shows all three views)")
        picture = lesion_qc_picture(before, after, kwargs.pop("region", None), lesions, **kwargs).picture
    else:
        picture = qc_picture(before, after, **kwargs)
    path = Path(path)
    with staged_file(path) as temporary:
        Image.fromarray(picture).save(temporary, format="PNG")
    return path
