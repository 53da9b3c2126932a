"""Annotators know what is synthetic: the synthesised-voxel mask of every edit and the calibrated uncertainty.

Behaviour a user relies on: the mask marks exactly the made slices (1) and the rewritten ones (2), on the
output's grid with its geometry; the uncertainty is 0 on acquired voxels, in the volume's units, larger where
the fill errs more, and its calibration figures are reported; the CLI writes both and refuses a mask or an
uncertainty named like another file before any work.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSynthLib.io import read_volume, write_volume
from MedSynthLib.provenance import REWRITTEN, SYNTHESISED, changed_provenance, provenance_summary, slice_provenance
from MedSynthLib.tasks.fill import fill_slices, upsample_slices
from MedSynthLib.volume import Volume

from conftest import make_phantom, oblique_matrix, one_line, run_cli


def _slices_marked(mask: np.ndarray, axis: int, value: int) -> list[int]:
    stack = np.moveaxis(mask, axis, 0)
    return [int(i) for i in np.nonzero((stack == value).reshape(len(stack), -1).all(axis=1))[0]]


def _textured(shape=(24, 48, 56), seed=0, scale=1.0) -> Volume:
    """A phantom with edges through-plane (so a fill errs somewhere) on an oblique, anisotropic grid."""
    base = make_phantom(shape, seed=seed)
    k = np.arange(shape[0])[:, None, None]
    stripes = 40.0 * (np.sin(k * 0.9 + np.arange(shape[2])[None, None, :] * 0.25) > 0)
    return Volume(((base.array + stripes) * scale).astype(np.float32), oblique_matrix(spacing=(0.9, 1.0, 1.2)))


def test_slice_and_changed_provenance_values_and_geometry():
    volume = make_phantom((6, 8, 10))
    mask = slice_provenance(volume, axis=0, synthesised=[2, 3], rewritten=[0])
    assert mask.array.dtype == np.uint8 and np.allclose(mask.ijk_to_ras, volume.ijk_to_ras)
    assert _slices_marked(mask.array, 0, SYNTHESISED) == [2, 3] and _slices_marked(mask.array, 0, REWRITTEN) == [0]
    assert not mask.array[[1, 4, 5]].any()
    after = volume.with_array(volume.array.copy())
    after.array[1, 2, 3] += 5
    changed = changed_provenance(volume, after)
    assert changed.array.sum() == REWRITTEN and changed.array[1, 2, 3] == REWRITTEN
    summary = provenance_summary(mask)
    assert summary["synthesised"]["voxels"] == 2 * 80 and summary["rewritten"]["voxels"] == 80


def test_fill_mask_marks_exactly_the_filled_slices_on_every_axis():
    volume = _textured()
    for axis, slices in ((0, [5, 6, 12]), (1, [20]), (2, [9, 30])):
        result = fill_slices(volume, slices=slices, axis=axis, method="linear")
        mask = result.synthetic_mask
        assert mask.array.shape == volume.array.shape and np.allclose(mask.ijk_to_ras, volume.ijk_to_ras)
        assert _slices_marked(mask.array, axis, SYNTHESISED) == slices
        assert int((mask.array > 0).sum()) == len(slices) * volume.array.size // volume.array.shape[axis]


def test_upsample_mask_marks_new_slices_and_keeps_the_new_geometry():
    volume = make_phantom((7, 20, 24))
    result = upsample_slices(volume, factor=3, method="linear")
    mask = result.synthetic_mask
    assert np.allclose(mask.ijk_to_ras, result.volume.ijk_to_ras)
    new = [i for i in range(result.volume.array.shape[0]) if i % 3]
    assert _slices_marked(mask.array, 0, SYNTHESISED) == new
    assert not np.moveaxis(mask.array, 0, 0)[::3].any() and result.rewritten == ()


def test_deblurred_acquired_slices_are_marked_rewritten():
    volume = make_phantom((6, 20, 24))
    from MedSynthLib.tasks.fill._fill import FillResult

    result = upsample_slices(volume, factor=2, method="linear")
    deblurred = FillResult(result.volume, result.slices, result.axis, result.report, rewritten=(0, 2, 4, 6, 8, 10))
    mask = deblurred.synthetic_mask.array
    assert _slices_marked(mask, 0, REWRITTEN) == [0, 2, 4, 6, 8, 10]
    assert _slices_marked(mask, 0, SYNTHESISED) == [1, 3, 5, 7, 9]


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_uncertainty_is_zero_on_acquired_voxels_calibrated_and_ranks_the_error(method):
    volume = _textured()
    truth = volume.array.copy()
    slices = [4, 9, 15, 19]
    result = fill_slices(volume, slices=slices, axis=0, method=method, uncertainty=True)
    sd = result.uncertainty
    assert sd.array.dtype == np.float32 and np.allclose(sd.ijk_to_ras, volume.ijk_to_ras)
    others = [i for i in range(volume.array.shape[0]) if i not in slices]
    assert not sd.array[others].any() and (sd.array[slices] > 0).all()
    figures = result.report["uncertainty"]
    assert figures["calibrated"] and figures["calibrated_with"] == method
    assert 0.8 <= figures["held_out"]["within_2sd"] <= 1.0
    json.dumps(result.report, allow_nan=False)
    error = np.abs(result.volume.array[slices] - truth[slices])
    big = sd.array[slices] > np.median(sd.array[slices])
    assert error[big].mean() > 1.5 * error[~big].mean()  # larger sd where the fill errs more


def test_uncertainty_is_in_the_volumes_units():
    slices = [6, 13]
    small = fill_slices(_textured(scale=1.0), slices=slices, axis=0, method="linear", uncertainty=True)
    large = fill_slices(_textured(scale=10.0), slices=slices, axis=0, method="linear", uncertainty=True)
    ratio = np.median(large.uncertainty.array[slices]) / np.median(small.uncertainty.array[slices])
    assert 8.0 < ratio < 12.5


def test_no_uncertainty_unless_asked():
    result = fill_slices(_textured(), slices=[5], axis=0, method="linear")
    assert result.uncertainty is None and "uncertainty" not in result.report


def test_upsample_uncertainty_covers_the_new_slices_only():
    volume = _textured((13, 40, 44))
    result = upsample_slices(volume, factor=2, method="cubic", uncertainty=True)
    sd = result.uncertainty.array
    assert sd.shape == result.volume.array.shape
    assert not sd[::2].any() and (sd[1::2] > 0).all()


def test_cli_writes_mask_uncertainty_and_qc(tmp_path, capsys):
    volume = _textured()
    damaged = volume.array.copy()
    damaged[[7, 16]] = 0
    source = tmp_path / "in.nrrd"
    write_volume(Volume(damaged, volume.ijk_to_ras), source)
    code, err = run_cli(capsys, "fill", source, tmp_path / "out.nrrd", "--method", "linear", "--synthetic-mask",
                        tmp_path / "mask.nrrd", "--uncertainty", tmp_path / "sd.nrrd", "--qc", tmp_path / "qc.png",
                        "--report", tmp_path / "r.json")
    assert code == 0, err
    mask, sd = read_volume(tmp_path / "mask.nrrd"), read_volume(tmp_path / "sd.nrrd")
    assert _slices_marked(mask.array, 0, SYNTHESISED) == [7, 16] and int((mask.array > 0).sum()) == 2 * 48 * 56
    assert np.allclose(mask.ijk_to_ras, volume.ijk_to_ras, atol=1e-5)
    assert (sd.array[[7, 16]] > 0).all() and not sd.array[[0, 8]].any()
    assert json.loads((tmp_path / "r.json").read_text())["uncertainty"]["calibrated"]
    assert (tmp_path / "qc.png").stat().st_size > 0


def test_cli_lesion_writes_its_region_of_influence_as_rewritten(tmp_path, capsys):
    volume = make_phantom((20, 48, 48))
    source = tmp_path / "in.nrrd"
    write_volume(volume, source)
    code, err = run_cli(capsys, "lesion", source, tmp_path / "out.nrrd", "--labels", tmp_path / "labels.nrrd",
                        "--at", ",".join(str(round(x, 2)) for x in np.ravel(volume.ijk_points_to_ras([24, 24, 10]))),
                        "--size", "8", "--preset", "mr-metastasis", "--synthetic-mask", tmp_path / "mask.nrrd")
    assert code == 0, err
    mask = read_volume(tmp_path / "mask.nrrd").array
    labels = read_volume(tmp_path / "labels.nrrd").array
    changed = read_volume(tmp_path / "out.nrrd").array != volume.array
    assert set(np.unique(mask)) <= {0, REWRITTEN}
    assert (mask[labels > 0] == REWRITTEN).all() and (mask[changed] == REWRITTEN).all()
    assert not mask[(labels == 0) & ~changed].any()


@pytest.mark.parametrize("flag", ["--synthetic-mask", "--uncertainty"])
def test_cli_refuses_a_mask_named_like_another_file_before_any_work(tmp_path, capsys, flag):
    source = tmp_path / "in.nrrd"
    write_volume(make_phantom((8, 16, 16)), source)
    out = tmp_path / "out.nrrd"
    for other in (source, out):
        code, err = run_cli(capsys, "fill", source, out, "--slices", "3", flag, other)
        assert code == 2 and ("would overwrite" in one_line(err) or "same file" in err)
        assert not out.exists()


def test_calibration_holds_out_acquired_slices_like_the_gaps_and_away_from_them():
    from MedSynthLib.tasks.fill._interp import make_plan
    from MedSynthLib.tasks.fill._uncertainty import held_out_slices

    missing = [30, 31, 60]  # a slab of two and a single slice in 100
    good = np.array([i for i in range(100) if i not in missing], float)
    plan = make_plan(good, np.array(missing, float))
    kept, held = held_out_slices(plan)
    positions = good[held]
    assert len(held) >= 8 and np.setdiff1d(np.arange(len(good)), kept).tolist() == held.tolist()
    assert all(min(abs(p - m) for m in missing) >= 3 for p in positions)  # away from the real gaps
    runs = np.split(positions, np.nonzero(np.diff(positions) > 1)[0] + 1)
    assert {len(r) for r in runs} == {1, 2}  # the gaps' widths, repeated
    regular = make_plan(np.arange(0, 40, 2.0), np.arange(1, 39, 2.0))
    assert held_out_slices(regular) is None  # an upsampling has no acquired slice to spare


def test_enhance_pipeline_mask_carries_earlier_steps_through_an_upsampling(tmp_path, capsys):
    from MedSynthLib.tasks.enhance import enhance

    volume = make_phantom((9, 32, 36))
    result = enhance(volume, steps="denoise:dct,upsample:2", device="cpu")
    mask = result.synthetic_mask.array
    assert mask.shape == result.volume.array.shape and np.allclose(result.synthetic_mask.ijk_to_ras,
                                                                   result.volume.ijk_to_ras)
    assert _slices_marked(mask, 0, SYNTHESISED) == list(range(1, 17, 2))  # the new slices
    acquired = mask[::2]
    assert set(np.unique(acquired)) <= {0, REWRITTEN} and (acquired == REWRITTEN).mean() > 0.5  # denoised voxels
    source = tmp_path / "in.nrrd"
    write_volume(volume, source)
    code, err = run_cli(capsys, "denoise", source, tmp_path / "out.nrrd", "--method", "dct", "--synthetic-mask",
                        tmp_path / "mask.nrrd")
    assert code == 0, err
    written = read_volume(tmp_path / "mask.nrrd").array
    changed = read_volume(tmp_path / "out.nrrd").array != volume.array
    assert np.array_equal(written == REWRITTEN, changed) and set(np.unique(written)) <= {0, REWRITTEN}
