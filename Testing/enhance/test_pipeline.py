"""Tests of the pipeline: ``enhance`` (from step strings or ``EnhanceStep`` objects) and ``super_resolve``."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_phantom, oblique_matrix
from MedSynthLib.errors import InputError, ModelError
from MedSynthLib.tasks.enhance import EnhanceOptions, EnhanceStep, correct_bias, denoise, enhance, super_resolve
from MedSynthLib.volume import Volume

from .phantoms import clean_head, rician_noise


def test_enhance_runs_steps_in_order(noisy_head):
    _, volume = noisy_head
    result = enhance(volume, steps=["bias", "denoise:aniso"])
    assert [r["task"] for r in result.steps] == ["bias", "denoise"]
    assert result.field is not None and result.volume.array.dtype == volume.array.dtype
    direct = denoise(correct_bias(volume).volume, method="aniso").volume
    assert np.array_equal(result.volume.array, direct.array)


def test_enhance_is_atomic_when_a_step_fails(noisy_head):
    _, volume = noisy_head
    mask = (volume.array > 30).astype(np.uint8)
    with pytest.raises(InputError, match="upsample last"):
        enhance(volume, steps="upsample:2,denoise", mask=mask)
    from MedSynthLib.models import bundled_package

    with pytest.raises(ModelError, match="model package"):  # a package of another task: refused after bias ran
        enhance(volume, steps="bias,denoise:model", model=bundled_package("fill"))


def test_enhance_pipeline_hands_each_step_what_is_left_of_its_time_budget():
    clean = clean_head((14, 36, 40))
    volume = Volume(rician_noise(clean, 7.0, seed=6), oblique_matrix())
    result = enhance(volume, steps="denoise:fusion", time_budget=0.01)
    assert result.report["time_budget"]["budget_s"] == 0.01 and not result.report["time_budget"]["default"]
    denoised = result.steps[0]
    assert 0 < denoised["time_budget"]["budget_s"] <= 0.01 and denoised["time_budget"]["cut"]
    assert denoised["parameters"]["fusion"]["components"] == ["collaborative"]
    assert result.report["time_budget"]["cut"][0].startswith("denoise(method=fusion): fusion: the time budget ran out")


def test_enhance_without_a_budget_gets_the_sum_of_its_steps_defaults():
    from MedSynthLib.tasks.enhance._options import default_budget_seconds

    clean = clean_head((14, 36, 40))
    volume = Volume(rician_noise(clean, 7.0, seed=6), oblique_matrix())
    result = enhance(volume, steps="bias,denoise:dct")
    expected = default_budget_seconds("bias", clean.size) + default_budget_seconds("denoise", clean.size,
                                                                                   noise_model="rician")
    assert result.report["time_budget"]["budget_s"] == pytest.approx(expected) and result.report["time_budget"]["default"]
    bias, denoised = result.steps
    assert 0 < denoised["time_budget"]["budget_s"] < expected and not denoised["time_budget"]["default"]
    assert 0 < bias["time_budget"]["budget_s"] <= expected


def _has_upsample() -> bool:
    try:
        from MedSynthLib.tasks.fill import upsample_slices  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_upsample(), reason="MedSynthLib.tasks.fill.upsample_slices not available yet")
def test_super_resolve_uses_the_fill_machinery():
    volume = make_phantom((8, 24, 28), dtype=np.int16)
    result = super_resolve(volume, factor=2, method="linear")
    axis = volume.slice_axis()
    assert result.volume.array.shape[axis] == 2 * volume.array.shape[axis] - 1
    assert result.volume.spacing_along(axis) == pytest.approx(volume.spacing_along(axis) / 2)
    assert np.allclose(result.volume.origin, volume.origin)
    assert result.volume.array.dtype == np.int16
    staged = enhance(volume, steps="denoise:auto,upsample:2:linear")
    assert staged.volume.array.shape == result.volume.array.shape
    with pytest.raises(InputError):
        super_resolve(volume, factor=1)


def test_enhance_takes_enhance_step_objects_as_the_panel_hands_them(noisy_head):
    """The Slicer panel hands EnhanceStep objects, not a step string: the same pipeline, the same bits."""
    _, volume = noisy_head
    text = enhance(volume, steps="bias:4,denoise:dct:0.5", device="cpu")
    steps = [EnhanceStep("bias", {"shrink": 4}), EnhanceStep("denoise", {"method": "dct", "strength": 0.5})]
    objects = enhance(volume, steps=steps, device="cpu")
    assert np.array_equal(objects.volume.array, text.volume.array)
    assert objects.report["method"] == text.report["method"] == "bias(shrink=4)+denoise(method=dct,strength=0.5)"
    built = EnhanceOptions(steps=steps, device="cpu")
    assert np.array_equal(enhance(volume, built).volume.array, text.volume.array)  # one options object
    assert np.array_equal(enhance(volume, steps, device="cpu").volume.array, text.volume.array)  # steps in its place
    with pytest.raises(InputError, match="once"):
        enhance(volume, steps, steps="bias")
    with pytest.raises(InputError, match="unknown option 'speed'"):
        enhance(volume, steps="bias", speed=2)
