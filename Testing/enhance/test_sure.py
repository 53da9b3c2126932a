"""Tests of the convex SURE fusion (``_sure``), the ``fusion`` method."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage

from conftest import oblique_matrix
from MedSynthLib.tasks.enhance import denoise
from MedSynthLib.volume import Volume

from .phantoms import clean_head, rician_noise, rmse


def test_sure_weights_are_convex_and_never_worse_than_a_single_component():
    from MedSynthLib.tasks.enhance._sure import convex_sure_weights

    rng = np.random.default_rng(3)
    design = rng.normal(size=(500, 4))
    design[:, 1] = design[:, 0] + 0.01 * rng.normal(size=500)  # nearly collinear: unconstrained weights explode
    target = 1.8 * design[:, 0] - 0.8 * design[:, 1] + 0.1 * rng.normal(size=500)
    gram, linear = design.T @ design, design.T @ target
    free = np.linalg.solve(gram, linear)
    assert free.min() < -0.5  # the failure the constraint exists for
    w = convex_sure_weights(gram, linear)
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    risk = lambda v: float(v @ gram @ v - 2 * linear @ v)  # noqa: E731
    assert all(risk(w) <= risk(np.eye(4)[i]) + 1e-9 for i in range(4))


def test_fusion_falls_back_to_its_best_single_component_when_not_better():
    from MedSynthLib.tasks.enhance._sure import _fallback_choice

    names = ["blind", "wiener", "nlm_h0.5", "observed"]
    same = [{"n": 100, "fused": 99.5, "single": [120.0, 100.0, 110.0, 400.0]}]
    choice = _fallback_choice(same, names)
    assert choice["fallback"] == "wiener" and "not 1% better" in choice["why"]
    better = [{"n": 100, "fused": 80.0, "single": [120.0, 100.0, 110.0, 400.0]}]
    assert _fallback_choice(better, names)["fallback"] is None


def test_fusion_choice_with_a_risk_at_or_below_zero():
    from MedSynthLib.tasks.enhance._sure import _fallback_choice

    names = ["blind", "wiener", "observed"]
    below = _fallback_choice([{"n": 10, "fused": -1.0, "single": [5.0, 3.0, 9.0]}], names)
    assert below["fallback"] is None and "resolution" in below["why"]
    negative = _fallback_choice([{"n": 10, "fused": -9.95, "single": [-10.0, 3.0, 9.0]}], names)
    assert negative["fallback"] == "blind"  # not better than its best single component: that one is used


def test_fusion_is_auto_on_cpu_convex_and_never_worse_than_its_parts():
    clean = clean_head((20, 44, 48))
    volume = Volume(rician_noise(clean, 7.0, seed=4), oblique_matrix(spacing=(0.9, 1.0, 1.1)))
    result = denoise(volume, device="cpu")
    assert result.report["method"] == "fusion"
    fusion = result.report["parameters"]["fusion"]
    assert fusion["components"] == ["collaborative", "dct_p8", "nlm_h0.5"]
    assert all(min(w) >= 0 and abs(sum(w) - 1) < 1e-6 for w in fusion["weights_by_gradient_class"])
    assert fusion["fallback"] is None or fusion["fallback"] in fusion["components"]
    assert fusion["sole_component"] is None  # a true mixture here: the method is plain "fusion"
    mask = clean > 0
    fused = rmse(result.volume.array, clean, mask)
    for method in ("dct", "nlm"):
        assert fused <= 1.01 * rmse(denoise(volume, method=method).volume.array, clean, mask)
    assert np.array_equal(result.volume.ijk_to_ras, volume.ijk_to_ras)


def test_thick_slice_scans_get_blocks_shaped_by_the_voxel_size():
    """6 mm slices, 1 mm in-plane: a cube of voxels would span 24 mm through-plane, mixing slices that share
    little; blocks of about equal millimetres denoise better, and denoise() takes the shape from the geometry."""
    from MedSynthLib.tasks.enhance._sure import denoise_fusion

    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.normal(0, 1, (120, 48, 56)), (4, 2.0, 2.0))
    clean = (100 + 40 * field / field.std()).reshape(20, 6, 48, 56).mean(axis=1).astype(np.float32)
    noisy = (clean + rng.normal(0, 8, clean.shape)).astype(np.float32)
    everywhere = np.ones(clean.shape, bool)
    cubes, _ = denoise_fusion(noisy, sigma=8.0, rician=False, foreground=everywhere)
    shaped, info = denoise_fusion(noisy, sigma=8.0, rician=False, foreground=everywhere, spacing=(6.0, 1.0, 1.0))
    assert info["fusion"]["blocks"]["collaborative"]["patch"] == [2, 6, 6]
    assert rmse(shaped, clean, everywhere) < 0.97 * rmse(cubes, clean, everywhere)
    # through denoise(): the spacing of an oblique volume, in array order, whichever axis is thick
    for spacing_ijk, expected in (((1.0, 1.0, 6.0), [2, 6, 6]), ((1.0, 6.0, 1.0), [6, 2, 6])):
        volume = Volume(noisy if spacing_ijk[2] > 1 else np.ascontiguousarray(noisy.transpose(1, 0, 2)),
                        oblique_matrix(spacing=spacing_ijk))
        report = denoise(volume, method="fusion", modality="CT", device="cpu").report
        assert report["parameters"]["fusion"]["blocks"]["collaborative"]["patch"] == expected


def test_fusion_skips_its_later_components_when_the_time_budget_runs_out():
    clean = clean_head((14, 36, 40))
    volume = Volume(rician_noise(clean, 7.0, seed=6), oblique_matrix())
    result = denoise(volume, method="fusion", time_budget=0.01)
    fusion = result.report["parameters"]["fusion"]
    assert fusion["components"] == ["collaborative"]
    assert any("dct_p8, nlm_h0.5 skipped" in cut for cut in result.report["budget"]["cut"])
    mask = clean > 0
    assert rmse(result.volume.array, clean, mask) < rmse(volume.array, clean, mask)
    assert denoise(volume, method="fusion").report["budget"]["cut"] == []


def test_the_one_component_that_produced_every_voxel_is_named():
    from MedSynthLib.tasks.enhance._denoise import produced_by
    from MedSynthLib.tasks.enhance._sure import OUTSIDE_THE_BOX, sole_component

    names = ["collaborative", "dct_p8", "nlm_h0.5"]
    classes = np.array([0, 0, 2, 2])  # class 1 has no voxel: its weights produced nothing
    one_hot = {0: [0.0, 1.0, 0.0], 1: [0.5, 0.5, 0.0], 2: [0.0, 1.0, 0.0]}
    assert sole_component(names, one_hot, classes, None, whole=True) == {"sole_component": "dct_p8",
                                                                          "sole_component_where": "every voxel"}
    mixed = {**one_hot, 2: [0.1, 0.9, 0.0]}
    assert sole_component(names, mixed, classes, None, whole=True) == {"sole_component": None}
    split = {**one_hot, 2: [1.0, 0.0, 0.0]}  # each class one component, but not the same one
    assert sole_component(names, split, classes, None, whole=True) == {"sole_component": None}
    fallback = sole_component(names, mixed, classes, "collaborative", whole=False)
    assert fallback == {"sole_component": "collaborative", "sole_component_where": OUTSIDE_THE_BOX}
    assert produced_by("fusion", {"fusion": {"sole_component": "dct_p8", "sole_component_where": "every voxel"}}) \
        == "fusion (dct_p8 alone)"
    assert produced_by("selfsup", {"fusion": fallback}) == f"selfsup (collaborative alone {OUTSIDE_THE_BOX})"
    assert produced_by("fusion", {"fusion": {"sole_component": None}}) == "fusion"
    assert produced_by("nlm", {}) == "nlm" and produced_by("fusion", {}, unchanged=True) == "none"


def test_a_fusion_that_ran_one_component_says_so_in_its_method_and_qc_title(tmp_path, noisy_head, monkeypatch):
    """A time budget that runs out before the second component leaves the collaborative filter alone: the
    report's method, the enhance pipeline's and the QC titles say so; method_requested keeps what was asked."""
    import MedSynthLib.qc
    from MedSynthLib.cli import main
    from MedSynthLib.io import write_volume
    from MedSynthLib.tasks.enhance import enhance

    _, volume = noisy_head
    alone = denoise(volume, method="fusion", time_budget=0.001, device="cpu")
    assert alone.report["method"] == "fusion (collaborative alone)" and alone.report["method_requested"] == "fusion"
    assert alone.report["parameters"]["fusion"]["components"] == ["collaborative"]
    piped = enhance(volume, steps="denoise:fusion", time_budget=0.001, device="cpu")
    assert piped.report["method"] == "denoise(method=fusion)[fusion (collaborative alone)]"
    assert piped.report["method_requested"] == "denoise(method=fusion)"
    assert denoise(volume, method="nlm", strength=0).report["method"] == "none"  # the input came back unchanged

    titles = []
    real = MedSynthLib.qc.save_qc_png
    monkeypatch.setattr(MedSynthLib.qc, "save_qc_png", lambda *a, **k: titles.append(k.get("title")) or real(*a, **k))
    source = write_volume(volume, tmp_path / "in.nii.gz")
    for command in (["denoise", "--method", "fusion"], ["enhance", "--steps", "denoise:fusion"]):
        out = tmp_path / f"{command[0]}.nii.gz"
        assert main(["-q", command[0], str(source), str(out), *command[1:], "--time-budget", "0.001",
                     "--device", "cpu", "--qc", str(tmp_path / f"{command[0]}.png")]) == 0
    assert titles == ["denoise (fusion (collaborative alone))",
                      "enhance (denoise(method=fusion)[fusion (collaborative alone)])"]


def test_fusion_progress_moves_through_its_components():
    """The progress a user sees steps through every component of the fusion (a 12-minute run on a whole CT once
    sat at its first 5 % until it jumped to 100 %), in order, never backwards."""
    clean = clean_head((16, 40, 40))
    noisy = rician_noise(clean, 0.05 * float(clean.max()), seed=2)
    seen = []
    denoise(Volume(noisy, np.eye(4)), method="fusion", device="cpu", progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    messages = " | ".join(m for _, m in seen)
    for name in ("collaborative (1 of 3)", "dct_p8 (2 of 3)", "nlm_h0.5 (3 of 3)", "SURE weights"):
        assert name in messages, messages
