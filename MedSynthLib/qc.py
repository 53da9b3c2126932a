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
upsample), a fourth panel shows its standard deviation (black to white, scale in the title). Panels are scaled to square millimetres, about 256 px each,
oriented as a radiologist reads them (:func:`_radiological`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .volume import AXIS_NAMES, Volume

__all__ = ["qc_picture", "save_qc_png", "most_changed_slice", "display_plane"]

_PANEL = 256  # longest side of a panel, px
_GAP, _TITLE, _HEADER, _BAR = 8, 22, 28, 14
_OUTLINE = (255, 215, 0)
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)
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


def _window(array: np.ndarray, edited: Optional[np.ndarray]) -> tuple[float, float]:
    """1st-99.5th percentile grey window of the voxels outside ``edited`` (all voxels when that leaves too few)."""
    values = array if edited is None or edited.mean() > 0.9 else array[~edited]
    values = values.ravel()[:: max(1, values.size // 2_000_000)].astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1, 99.5])
    return float(low), float(high) if high > low else float(low) + 1.0


def _diverging(difference: np.ndarray, limit: float) -> np.ndarray:
    """RGB floats in [0, 1]: blue for negative, white for zero, red for positive, saturating at ``limit``."""
    t = np.clip(difference / max(limit, 1e-12), -1, 1)[..., None]
    white = np.ones(3)
    red, blue = np.array([0.75, 0.05, 0.1]), np.array([0.1, 0.25, 0.8])
    return np.where(t >= 0, white + t * (red - white), white - t * (blue - white))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _panel(rgb: np.ndarray, spacing: tuple[float, float], outline, colour=_OUTLINE):
    """A PIL image of ``rgb`` (rows, cols, 3 in [0, 1]) scaled to square mm and about ``_PANEL`` px, outlined.

    ``outline``: a boolean plane outlined in ``colour``, or a list of (plane, colour) pairs, or None.
    """
    from PIL import Image

    height_mm, width_mm = rgb.shape[0] * spacing[0], rgb.shape[1] * spacing[1]
    scale = _PANEL / max(height_mm, width_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).resize(size, Image.BILINEAR)
    outlines = outline if isinstance(outline, list) else [] if outline is None else [(outline, colour)]
    pixels = None
    for plane, tint in outlines:
        if plane is None or not plane.any():
            continue
        mask = np.asarray(Image.fromarray(plane.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        pixels = np.asarray(image).copy() if pixels is None else pixels
        pixels[_outline_pixels(mask)] = tint
    return image if pixels is None else Image.fromarray(pixels)


def _provenance_outlines(plane: np.ndarray) -> list:
    """(mask, colour) pairs of a synthesised-voxel mask's plane: synthesised in magenta, rewritten in amber."""
    from .provenance import PROVENANCE_COLOURS

    return [(plane == value, tuple(int(round(255 * c)) for c in colour))
            for value, colour in PROVENANCE_COLOURS.items()]


def _outline_pixels(mask: np.ndarray, tick: int = 12) -> np.ndarray:
    """Pixels that mark ``mask``: a frame when it is everything, ticks at both ends of fully edited rows and
    columns (restored slices seen edge-on stay visible), and a two-pixel outline around any other region."""
    marks = np.zeros_like(mask)
    if mask.all():
        marks[:2], marks[-2:], marks[:, :2], marks[:, -2:] = True, True, True, True
        return marks
    rows, cols = mask.all(axis=1), mask.all(axis=0)
    marks[rows, :tick], marks[rows, -tick:] = True, True
    marks[:tick, cols], marks[-tick:, cols] = True, True
    partial = mask & ~rows[:, None] & ~cols[None, :]
    padded = np.pad(partial, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = partial & ~inner
    return marks | edge | (np.roll(edge, 1, 0) & partial) | (np.roll(edge, 1, 1) & partial)


def _row(volume: Volume, planes: dict, *, axis: int, index: int, window, limit: float, titles: list, neighbour=None):
    """PIL panels and titles for one view: [neighbour,] before, after, difference."""
    keys = ["before", "after", "edited"] + [k for k in ("provenance", "uncertainty") if k in planes]
    arrays = [planes[k] for k in keys]
    oriented, (rows_axis, cols_axis) = display_plane(volume, arrays, axis=axis, index=index)
    shown = dict(zip(keys, oriented))
    if neighbour is not None:
        shown["neighbour"] = _radiological([np.take(planes["neighbour"], neighbour, axis=axis)], volume,
                                           [a for a in range(3) if a != axis])[0][0]
    spacing = (volume.spacing_along(rows_axis), volume.spacing_along(cols_axis))
    low, high = window

    def grey(plane):
        return np.repeat(((plane - low) / (high - low))[..., None], 3, axis=2)

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
    return list(zip(panels, titles))


def _compose(rows: list, header: str, limit: float):
    """Lay the rows of (panel, title) out on a dark canvas with a header and the difference's colour bar."""
    from PIL import Image, ImageDraw

    columns = max(len(r) for r in rows)
    widths = [max(r[c - (columns - len(r))][0].width for r in rows if c >= columns - len(r)) for c in range(columns)]
    heights = [max(p.height for p, _ in r) for r in rows]
    bar_space = _GAP + _BAR + 70
    width = max(512, _GAP + sum(w + _GAP for w in widths) + bar_space)
    height = _HEADER + sum(h + _TITLE + _GAP for h in heights) + _GAP
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((_GAP, 6), header, fill=_TEXT, font=_font(15))
    y = _HEADER
    for row, row_height in zip(rows, heights):
        x = _GAP + sum(w + _GAP for w in widths[: columns - len(row)])
        for (panel, title), column_width in zip(row, widths[columns - len(row):]):
            draw.text((x, y + 3), title, fill=_TEXT, font=_font(13))
            canvas.paste(panel, (x, y + _TITLE))
            x += column_width + _GAP
        _colour_bar(canvas, draw, x, y + _TITLE, row_height, limit)
        y += row_height + _TITLE + _GAP
    return canvas


def _colour_bar(canvas, draw, x: int, y: int, height: int, limit: float) -> None:
    from PIL import Image

    values = np.linspace(limit, -limit, height)[:, None] * np.ones((1, _BAR))
    bar = Image.fromarray((_diverging(values, limit) * 255).round().astype(np.uint8))
    canvas.paste(bar, (x, y))
    font = _font(12)
    for fraction, value in ((0.0, limit), (0.5, 0.0), (1.0, -limit)):
        draw.text((x + _BAR + 4, y + fraction * (height - 12)), f"{value:+.3g}" if value else "0", fill=_TEXT, font=font)


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
    return np.asarray(_compose(rows, header, limit))


def _centre(plane: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the 2D ``plane`` through most of its edited pixels (the middle if none or all)."""
    totals = plane.sum(axis=1 - axis)
    if not totals.any() or totals.min() == totals.max():
        return plane.shape[axis] // 2
    return int(np.argmax(totals))


def save_qc_png(before: Volume, after: Volume, path: str | Path, **kwargs) -> Path:
    """Write :func:`qc_picture` to ``path`` (PNG, atomically); keyword arguments as for :func:`qc_picture`."""
    from PIL import Image

    from .io import staged_file

    picture = qc_picture(before, after, **kwargs)
    path = Path(path)
    with staged_file(path) as temporary:
        Image.fromarray(picture).save(temporary, format="PNG")
    return path
