"""The lesion QC picture (issue 26 item 6): one tile per lesion, three views through its centre, before and
after with the labels outlined, its tissue and volume in the tile's title; capped, the rest named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_phantom, oblique_matrix
from PIL import Image

from MedSynthLib import Volume
from MedSynthLib.cli import main
from MedSynthLib.errors import InputError
from MedSynthLib.io import write_volume
from MedSynthLib.qc import lesion_qc_picture, save_qc_png

YELLOW = np.array([255, 215, 0])


def _cubes(volume: Volume, centres_kji, half=2, step=60.0):
    """``volume`` with bright cubes at ``centres_kji``, their label map (one id each) and report-like entries."""
    labels = np.zeros(volume.array.shape, np.uint8)
    lesions = []
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    for number, (k, j, i) in enumerate(centres_kji, start=1):
        labels[k - half:k + half + 1, j - half:j + half + 1, i - half:i + half + 1] = number
        lesions.append({"id": number, "centre_ras": [float(x) for x in volume.ijk_points_to_ras([i, j, k])],
                        "volume_ml": round(np.count_nonzero(labels == number) * voxel_ml, 4),
                        "tissue": ["white matter", "grey matter", "lung"][number % 3],
                        "spec": {"kind": "metastasis"}})
    return volume.with_array(volume.array + step * (labels > 0)), labels, lesions


@pytest.fixture
def oblique():
    """The oblique, anisotropic phantom (0.8 x 0.9 x 3.0 mm, rotated about all three axes)."""
    return make_phantom((16, 60, 64), matrix=oblique_matrix())


def _yellow(picture, box):
    x, y, width, height = box
    return np.all(picture[y:y + height, x:x + width] == YELLOW, axis=-1)


def test_every_lesion_gets_a_tile_with_its_tissue_and_volume(oblique):
    after, labels, lesions = _cubes(oblique, [(5, 20, 20), (8, 40, 44), (10, 30, 32)])
    qc = lesion_qc_picture(oblique, after, labels, lesions, title="three")
    assert [t["id"] for t in qc.tiles] == [1, 2, 3] and qc.left_out == ()
    for tile, lesion in zip(qc.tiles, lesions):
        assert lesion["tissue"] in tile["title"] and f"{lesion['volume_ml']:.3g} mL" in tile["title"]
        assert [(p["view"], p["stage"]) for p in tile["panels"]] == [
            (v, s) for v in ("axial", "coronal", "sagittal") for s in ("before", "after")]
    # the layout: one row of six panels per tile, rows stacked, every panel inside the picture
    tops = [{p["box"][1] for p in t["panels"]} for t in qc.tiles]
    assert all(len(top) == 1 for top in tops)
    rows = [top.pop() for top in tops]
    assert rows == sorted(rows) and len(set(rows)) == 3
    height, width = qc.picture.shape[:2]
    assert all(x + w <= width and y + h <= height for t in qc.tiles for x, y, w, h in (p["box"] for p in t["panels"]))


def test_tiles_pass_through_each_lesion_centre_on_an_oblique_anisotropic_grid(oblique):
    """Each view is the plane through the lesion's centre voxel, the label outlined at the panel's centre on
    the *after* panel only, and the panels are square in millimetres although the slices are 3 mm."""
    after, labels, lesions = _cubes(oblique, [(6, 22, 24), (9, 38, 40)])
    qc = lesion_qc_picture(oblique, after, labels, lesions)
    assert {p["view"]: p["axis"] for p in qc.tiles[0]["panels"]} == {"axial": 0, "coronal": 1, "sagittal": 2}
    for tile, centre in zip(qc.tiles, [(6, 22, 24), (9, 38, 40)]):
        assert tile["centre_kji"] == centre
        for panel in tile["panels"]:
            assert panel["index"] == centre[panel["axis"]]
            marks = _yellow(qc.picture, panel["box"])
            if panel["stage"] == "before":
                assert not marks.any()
                continue
            rows, cols = np.nonzero(marks)
            _, _, w, h = panel["box"]
            # the crop is centred on the lesion unless the grid's edge cuts it: within a fifth of the panel
            assert abs(rows.mean() - h / 2) < h / 5 and abs(cols.mean() - w / 2) < w / 5
    # 3 mm slices: the coronal/sagittal crop has few rows, yet the panel is about square (scaled to mm)
    _, _, w, h = qc.tiles[1]["panels"][2]["box"]
    assert 0.6 < h / w < 1.6


def test_tiles_are_capped_and_the_header_counts_the_rest(oblique):
    centres = [(8, j, i) for j in (15, 30, 45) for i in (14, 26, 38, 50)] + [(4, 30, 32), (12, 30, 32)]
    after, labels, lesions = _cubes(oblique, centres, half=1)
    qc = lesion_qc_picture(oblique, after, labels, lesions, max_tiles=12)
    assert len(qc.tiles) == 12 and qc.left_out == (13, 14)
    three = lesion_qc_picture(oblique, after, labels, lesions, max_tiles=3)
    assert len(three.tiles) == 3 and len(three.left_out) == 11
    assert three.picture.shape[0] < qc.picture.shape[0] / 3  # rows, not a shrunk grid
    with pytest.raises(InputError, match="max_tiles"):
        lesion_qc_picture(oblique, after, labels, lesions, max_tiles=0)
    with pytest.raises(InputError, match="no lesions"):
        lesion_qc_picture(oblique, after, labels, [])
    with pytest.raises(InputError, match="shape"):
        lesion_qc_picture(oblique, after, labels[:-1], lesions)


def test_a_bright_lesion_in_bright_tissue_does_not_saturate(oblique):
    after, labels, lesions = _cubes(oblique, [(8, 30, 32)], step=400.0)  # far above the tissue's window
    qc = lesion_qc_picture(oblique, after, labels, lesions)
    x, y, w, h = qc.tiles[0]["panels"][1]["box"]
    centre = qc.picture[y + h // 2 - 2:y + h // 2 + 3, x + w // 2 - 2:x + w // 2 + 3, 0].astype(int)
    x, y, w, h = qc.tiles[0]["panels"][0]["box"]
    tissue = qc.picture[y + h // 2 - 2:y + h // 2 + 3, x + w // 2 - 2:x + w // 2 + 3, 0].astype(int)
    assert centre.mean() > tissue.mean() + 60  # the lesion is visibly brighter than the tissue it sits in


def test_save_and_the_cli_draw_every_lesion(tmp_path, oblique):
    after, labels, lesions = _cubes(oblique, [(6, 22, 24), (9, 38, 40)])
    path = save_qc_png(oblique, after, tmp_path / "qc.png", lesions=lesions, region=labels, title="two")
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.width >= 512
    with pytest.raises(TypeError, match="axis"):
        save_qc_png(oblique, after, tmp_path / "no.png", lesions=lesions, region=labels, axis=0)

    from test_lesion import _centre, mr_head

    volume = mr_head(dtype=np.int16)
    source = tmp_path / "t1.nii.gz"
    write_volume(volume, source)
    points = [",".join(f"{x:.3f}" for x in _centre(volume, f)) for f in ((0.35, 0.4, 0.5), (0.65, 0.55, 0.45),
                                                                           (0.5, 0.6, 0.65))]
    out, qc, report = tmp_path / "o.nii.gz", tmp_path / "lesions.png", tmp_path / "r.json"
    args = ["-q", "lesion", str(source), str(out), "--labels", str(tmp_path / "l.nii.gz"), "--preset", "mr-metastasis",
            "--size", "7", "--qc", str(qc), "--report", str(report)]
    for point in points:
        args += ["--at", point]
    assert main(args) == 0
    assert len(json.loads(report.read_text())["lesions"]) == 3
    with Image.open(qc) as image:
        picture = np.asarray(image.convert("RGB"))
    # three captions in the outline's yellow, one per tile: yellow text rows over the first (unoutlined) panel
    caption = np.all(picture[:, 8:140] == YELLOW, axis=-1).any(axis=1)
    starts = np.flatnonzero(caption & ~np.roll(caption, 1))
    bands = np.split(starts, np.flatnonzero(np.diff(starts) > 30) + 1)
    assert len(bands) == 3
