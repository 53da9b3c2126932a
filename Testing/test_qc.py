"""QC pictures a person can read: radiological orientation, titled panels, the grey window from the good data,
a diverging difference with its colour bar, the edited region outlined, at least 512 px wide."""

import numpy as np
import pytest

from conftest import make_phantom
from MedSynthLib import Volume
from MedSynthLib.qc import display_plane, qc_picture, save_qc_png

YELLOW = np.array([255, 215, 0])


def _marked(diagonal):
    """Axial volume with a bright voxel block at the patient's anterior-right, in any axis sign."""
    array = np.zeros((3, 20, 30), np.float32)
    array[:] = 10
    volume = Volume(array, np.diag([*diagonal, 1.0]))
    ijk = np.rint(volume.ras_points_to_ijk([[1e3, 1e3, 0]]).clip(0, None))[0]  # nearest corner to R, A
    i = 0 if ijk[0] == 0 else 29
    j = 0 if ijk[1] == 0 else 19
    marked = array.copy()
    marked[1, max(j - 2, 0):j + 3, max(i - 2, 0):i + 3] = 100
    return volume.with_array(marked)


@pytest.mark.parametrize("diagonal", [(1, 1, 1), (-1, -1, 1), (-1, 1, 1), (1, -1, 1)])
def test_anterior_right_is_top_left(diagonal):
    volume = _marked(diagonal)
    (plane,), _ = display_plane(volume, [volume.array], axis=0, index=1)
    rows, cols = np.nonzero(plane > 50)
    assert rows.max() < 5 and cols.max() < 5


def _yellow(picture):
    return np.all(picture == YELLOW, axis=-1)


def test_picture_is_wide_rgb_with_a_diverging_difference():
    before = make_phantom()
    array = before.array.copy()
    array[6, 5:15, 5:15] += 80   # brighter: red in the difference
    array[6, 25:35, 30:40] -= 80  # darker: blue
    picture = qc_picture(before, before.with_array(array), axis=0, index=6, title="test")
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.shape[1] >= 512
    red = (picture[..., 0] > 150) & (picture[..., 1] < 60) & (picture[..., 2] < 80)
    blue = (picture[..., 2] > 150) & (picture[..., 0] < 60)
    assert red.sum() > 200 and blue.sum() > 200  # the edits, plus the colour bar's two ends


def test_grey_window_comes_from_the_good_slices_not_the_corrupted_one():
    """A corrupted slice of huge values must not dim the restored slice to black."""
    before = make_phantom((12, 40, 48))
    corrupted = before.array.copy()
    corrupted[6] = np.random.default_rng(0).uniform(0, 1e5, corrupted[6].shape)
    picture = qc_picture(before.with_array(corrupted), before, axis=0, slices=[6])
    top = picture[40:290]
    # the 'after' panel of the restored slice shows the phantom's grey levels, not black
    grey = (np.abs(top[..., 0].astype(int) - top[..., 2]) < 3) & (top[..., 0] > 60) & (top[..., 0] < 250)
    assert grey.sum() > 20_000


def test_edited_region_is_outlined_and_a_whole_volume_edit_is_not():
    before = make_phantom((12, 40, 48))
    region = np.zeros(before.array.shape, bool)
    region[5:8, 15:25, 20:30] = True
    after = before.with_array(np.where(region, before.array + 50, before.array))
    assert _yellow(qc_picture(before, after, axis=0, region=region)).sum() > 100
    denoised = before.with_array(before.array * 0.9 + 1)
    assert _yellow(qc_picture(before, denoised, axis=0)).sum() == 0


def test_fill_picture_shows_the_good_neighbour_and_upsampled_grids_work(tmp_path):
    from MedSynthLib.tasks.fill import upsample_slices

    before = make_phantom((12, 40, 48))
    damaged = before.array.copy()
    damaged[6] = 0
    three = qc_picture(before, before.with_array(before.array + 1), axis=0, index=6)
    four = qc_picture(before.with_array(damaged), before, axis=0, slices=[6])
    assert four.shape[1] > three.shape[1] + 150  # one more panel: the neighbouring good slice
    result = upsample_slices(before, factor=2, method="linear")
    path = save_qc_png(before, result.volume, tmp_path / "up.png", axis=result.axis, slices=result.slices)
    assert path.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_denoise_picture_shows_a_varying_noise_map_with_its_scale(tmp_path, capsys):
    """``medsynth denoise --qc`` adds the local noise map (estimated on every call) as one more panel per row, on
    its sequential scale with a second colour bar; the report says the map varied and was used."""
    import json

    from PIL import Image

    from conftest import run_cli
    from MedSynthLib import write_volume
    from MedSynthLib.io import read_volume
    from MedSynthLib.tasks.enhance import denoise

    rng = np.random.default_rng(0)
    _, y, x = np.mgrid[:12, :96, :96].astype(np.float32)
    clean = np.where((y - 48) ** 2 + (x - 48) ** 2 < 42**2, 200.0, 0.0)
    sigma = 4.0 + 8.0 * x / 95.0  # x3 across the columns
    noisy = np.hypot(clean + sigma * rng.normal(size=clean.shape), sigma * rng.normal(size=clean.shape))
    source = write_volume(Volume(noisy.astype(np.float32), np.eye(4)), tmp_path / "in.nii.gz")
    code, err = run_cli(capsys, "denoise", source, tmp_path / "out.nii.gz", "--method", "aniso", "--modality", "MR",
                        "--qc", tmp_path / "qc.png", "--report", tmp_path / "r.json")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["noise_map"]["used"] is True
    before, after = read_volume(source), read_volume(tmp_path / "out.nii.gz")
    plain = qc_picture(before, after, title="denoise (aniso)")
    with Image.open(tmp_path / "qc.png") as image:
        picture = np.asarray(image.convert("RGB"))
    assert picture.shape[0] == plain.shape[0]
    assert picture.shape[1] >= plain.shape[1] + 256 + 14  # one more panel and its colour bar
    mapped = qc_picture(before, after, noise_map=denoise(before, method="aniso", modality="MR").noise_map)
    assert mapped.shape == picture.shape
    yellow = (picture[..., 0] > 230) & (picture[..., 1] > 200) & (picture[..., 2] < 200)  # the scale's top
    purple = (picture[..., 0] > 60) & (picture[..., 2] > 80) & (picture[..., 1] < 40)  # its lower part
    assert yellow.sum() > 200 and purple.sum() > 200
