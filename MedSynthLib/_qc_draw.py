"""The drawing kernel of :mod:`MedSynthLib.qc`: grey windows, colour scales, scaled and outlined panels, and
the layout of titled panels on a dark canvas (Pillow only). Private: the pictures are :mod:`~MedSynthLib.qc`'s."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

_PANEL = 256  # longest side of a panel, px
_GAP, _TITLE, _HEADER, _BAR = 8, 22, 28, 14
_OUTLINE = (255, 215, 0)
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)


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


#: Anchors of the sequential scale (dark purple -> red -> yellow, as "inferno"): brightness grows with the value,
#: so it reads in grey print too, and it cannot be mistaken for the grey anatomy or the blue-red difference.
_SEQUENTIAL = np.array([[0.0, 0.0, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04],
                        [0.99, 1.0, 0.64]])


def _sequential(fraction: np.ndarray) -> np.ndarray:
    """RGB floats in [0, 1] of ``fraction`` (clipped to [0, 1]) on the sequential scale :data:`_SEQUENTIAL`."""
    t = np.clip(np.nan_to_num(np.asarray(fraction, np.float64)), 0, 1) * (len(_SEQUENTIAL) - 1)
    low = np.minimum(np.floor(t).astype(int), len(_SEQUENTIAL) - 2)
    weight = (t - low)[..., None]
    return _SEQUENTIAL[low] * (1 - weight) + _SEQUENTIAL[low + 1] * weight


def _grey(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """RGB floats of ``plane`` through the grey ``window`` (low, high); values outside it clip in :func:`_panel`."""
    low, high = window
    return np.repeat(((plane - low) / (high - low))[..., None], 3, axis=2)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _panel(rgb: np.ndarray, spacing: tuple[float, float], outline, colour=_OUTLINE, *, size: int = _PANEL):
    """A PIL image of ``rgb`` (rows, cols, 3 in [0, 1]) scaled to square mm and about ``size`` px, outlined.

    ``outline``: a boolean plane outlined in ``colour``, or a list of (plane, colour) pairs, or None.
    """
    from PIL import Image

    height_mm, width_mm = rgb.shape[0] * spacing[0], rgb.shape[1] * spacing[1]
    scale = size / max(height_mm, width_mm)
    extent = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).resize(extent, Image.BILINEAR)
    outlines = outline if isinstance(outline, list) else [] if outline is None else [(outline, colour)]
    pixels = None
    for plane, tint in outlines:
        if plane is None or not plane.any():
            continue
        mask = np.asarray(Image.fromarray(plane.astype(np.uint8) * 255).resize(extent, Image.NEAREST)) > 0
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


def _compose(rows: list, header: str, limit: Optional[float], *, captions: Optional[Sequence[str]] = None,
             boxes: Optional[list] = None, scale: Optional[tuple[float, float, str]] = None):
    """Lay the rows of (panel, title) out on a dark canvas with a header and the difference's colour bar.

    ``limit`` None: no colour bar (no difference panel). ``captions``: a line above each row (a lesion's
    tile title). ``boxes``: a list that receives, per row, each panel's (x, y, width, height) on the canvas.
    ``scale``: (low, high, label) of a sequential panel (the noise map): a second bar, labelled, in its units.
    """
    from PIL import Image, ImageDraw

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str, size: int) -> int:
        return int(np.ceil(measure.textlength(text, font=_font(size))))

    columns = max(len(r) for r in rows)
    # a column is as wide as its widest panel or title, so that narrow panels' titles do not run together
    widths = [max(max(r[c - (columns - len(r))][0].width, text_width(r[c - (columns - len(r))][1], 13))
                  for r in rows if c >= columns - len(r)) for c in range(columns)]
    heights = [max(p.height for p, _ in r) for r in rows]
    bar_space = (_GAP + _BAR + 70 if limit is not None else 0) + (_GAP + _BAR + 70 if scale is not None else 0)
    caption = _TITLE if captions is not None else 0
    width = max(512, _GAP + sum(w + _GAP for w in widths) + bar_space, 2 * _GAP + text_width(header, 15),
                *(2 * _GAP + text_width(c, 14) for c in captions or ()))
    height = _HEADER + sum(h + caption + _TITLE + _GAP for h in heights) + _GAP
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((_GAP, 6), header, fill=_TEXT, font=_font(15))
    y = _HEADER
    for number, (row, row_height) in enumerate(zip(rows, heights)):
        if captions is not None:
            draw.text((_GAP, y + 3), captions[number], fill=_OUTLINE, font=_font(14))
            y += caption
        x = _GAP + sum(w + _GAP for w in widths[: columns - len(row)])
        placed = []
        for (panel, title), column_width in zip(row, widths[columns - len(row):]):
            draw.text((x, y + 3), title, fill=_TEXT, font=_font(13))
            canvas.paste(panel, (x, y + _TITLE))
            placed.append((x, y + _TITLE, panel.width, panel.height))
            x += column_width + _GAP
        if boxes is not None:
            boxes.append(placed)
        if limit is not None:
            _colour_bar(canvas, draw, x, y + _TITLE, row_height, limit)
            if scale is not None:  # two bars: say which is the difference's
                draw.text((x, y + _TITLE - 15), "difference", fill=_TEXT, font=_font(12))
            x += _BAR + 70 + _GAP
        if scale is not None:
            _scale_bar(canvas, draw, (x, y + _TITLE, row_height), scale)
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


def _scale_bar(canvas, draw, place: tuple[int, int, int], scale: tuple[float, float, str]) -> None:
    """The sequential bar at ``place`` (x, y, height): ``scale``'s high at the top, low at the bottom, its label
    above, the values in the panel's own units (a noise map: the volume's intensity units)."""
    from PIL import Image

    x, y, height = place
    low, high, label = scale
    values = np.linspace(1.0, 0.0, height)[:, None] * np.ones((1, _BAR))
    canvas.paste(Image.fromarray((_sequential(values) * 255).round().astype(np.uint8)), (x, y))
    font = _font(12)
    draw.text((x, y - 15), label, fill=_TEXT, font=font)
    for fraction, value in ((0.0, high), (0.5, 0.5 * (low + high)), (1.0, low)):
        draw.text((x + _BAR + 4, y + fraction * (height - 12)), f"{value:.3g}", fill=_TEXT, font=font)
