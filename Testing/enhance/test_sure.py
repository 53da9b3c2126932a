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
    assert any("dct_p8, nlm_h0.5 skipped" in cut for cut in result.report["time_budget"]["cut"])
    mask = clean > 0
    assert rmse(result.volume.array, clean, mask) < rmse(volume.array, clean, mask)
    assert denoise(volume, method="fusion").report["time_budget"]["cut"] == []


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


def _smooth_volume(shape=(20, 64, 64), sigma=8.0, seed=0):
    """A smooth random texture with Gaussian noise: (clean, noisy)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(0, 1, shape), (1.5, 3.0, 3.0))
    clean = (100 + 40 * field / field.std()).astype(np.float32)
    return clean, (clean + rng.normal(0, sigma, shape)).astype(np.float32)


def test_probe_fitted_fusion_runs_only_its_chosen_components_and_matches_the_full_computation(monkeypatch):
    """Fitted on probe boxes, the fusion computes on the whole volume only the components its SURE fit chose
    (every other component ran on the boxes alone), and its result is within 2 % RMSE of the fusion that
    computes every component on the whole volume."""
    from MedSynthLib.tasks.enhance import _classical, _collaborative, _dct
    from MedSynthLib.tasks.enhance._sure import FusionSettings, denoise_fusion

    clean, noisy = _smooth_volume()
    everywhere = np.ones(clean.shape, bool)
    whole, whole_info = denoise_fusion(noisy, sigma=8.0, rician=False, foreground=everywhere,
                                       settings=FusionSettings(probe="whole"))
    shapes: dict = {}
    for module, name, short in ((_collaborative, "denoise_collaborative", "collaborative"),
                                (_dct, "denoise_dct", "dct_p8"), (_classical, "denoise_nlm", "nlm_h0.5")):
        original = getattr(module, name)

        def recording(array, *args, _original=original, _short=short, **kwargs):
            shapes.setdefault(_short, []).append(np.shape(array))
            return _original(array, *args, **kwargs)

        monkeypatch.setattr(module, name, recording)
    boxes, info = denoise_fusion(noisy, sigma=8.0, rician=False, foreground=everywhere,
                                 settings=FusionSettings(probe="boxes", probe_boxes=4, probe_edge=12))
    fusion = info["fusion"]
    assert fusion["probe"]["mode"] == "boxes" and whole_info["fusion"]["probe"]["mode"] == "whole"
    assert fusion["components"] == ["collaborative", "dct_p8", "nlm_h0.5"]
    chosen = fusion["whole_volume_components"]
    assert chosen and set(chosen) < set(fusion["components"])  # at least one left to the boxes
    for name, seen in shapes.items():
        assert (clean.shape in seen) == (name in chosen), (name, seen)
        assert sum(shape != clean.shape for shape in seen) == 2 * fusion["probe"]["boxes"]  # each box, and its probe
    assert len(fusion["weights_by_gradient_class"][0]) == len(chosen)
    assert abs(rmse(boxes, clean, everywhere) / rmse(whole, clean, everywhere) - 1) < 0.02
    assert rmse(boxes, clean, everywhere) < 0.5 * rmse(noisy, clean, everywhere)


def test_a_budget_too_small_for_a_component_makes_denoise_leave_it_out_and_report_it(monkeypatch):
    """The whole-volume cost of each component is projected from what it cost on the probes; a budget that the
    collaborative filter would overrun makes the fusion compute the best of what fits instead, and say so. The
    measured costs are replaced by fixed ones here, so nothing depends on this machine's speed."""
    from MedSynthLib.tasks.enhance import _sure, _sure_boxes

    monkeypatch.setattr(_sure, "DEFAULT_SETTINGS", _sure.FusionSettings(probe="boxes", probe_boxes=4, probe_edge=12))
    measured = _sure_boxes._probe_on_boxes

    def fixed_costs(*args, **kwargs):
        probe = measured(*args, **kwargs)
        probe.seconds_per_voxel = [3600.0 / 81920 if name == "collaborative" else 1e-9 for name in probe.names]
        return probe  # the collaborative filter: an hour on the whole volume, the others nothing

    monkeypatch.setattr(_sure_boxes, "_probe_on_boxes", fixed_costs)
    clean, noisy = _smooth_volume()
    volume = Volume(noisy, oblique_matrix())
    unhurried = denoise(volume, method="fusion", modality="CT")  # no budget: the fit alone decides
    assert unhurried.report["time_budget"]["cut"] == [] and unhurried.report["time_budget"]["budget_s"] is None
    assert "collaborative" in unhurried.report["parameters"]["fusion"]["whole_volume_components"]
    result = denoise(volume, method="fusion", modality="CT", time_budget=600)
    fusion = result.report["parameters"]["fusion"]
    assert "collaborative" not in fusion["whole_volume_components"]
    assert fusion["probe"]["projected_whole_volume_s"]["collaborative"] == pytest.approx(3600, rel=0.01)
    cut = result.report["time_budget"]["cut"]
    assert len(cut) == 1 and "would not fit" in cut[0]
    assert any(w.startswith("time budget: fusion:") for w in result.report["warnings"])
    mask = np.ones(clean.shape, bool)
    assert rmse(result.volume.array, clean, mask) < 0.6 * rmse(noisy, clean, mask)


def test_the_fusion_stops_on_the_clock_when_its_components_overrun_their_projection(monkeypatch):
    """The costs projected from the probes can be wrong (a machine that got busier after them): before each
    component after the first, the clock is checked at the pace measured so far, and what no longer fits is
    skipped; the subset computed is combined with its own weights. Projected costs are fixed here: the first
    component nothing, the others a little, so the first always runs far past its projection."""
    from MedSynthLib.tasks.enhance import _sure, _sure_boxes

    monkeypatch.setattr(_sure, "DEFAULT_SETTINGS", _sure.FusionSettings(probe="boxes", probe_boxes=4, probe_edge=12))
    measured = _sure_boxes._probe_on_boxes

    def underestimated(*args, **kwargs):
        probe = measured(*args, **kwargs)
        probe.seconds_per_voxel = [1e-15 if k == 0 else 1e-6 for k in range(len(probe.names))]
        return probe

    monkeypatch.setattr(_sure_boxes, "_probe_on_boxes", underestimated)
    monkeypatch.setattr(_sure_boxes, "choose_components",
                        lambda risks, costs, seconds_left: (max(risks, key=len), "every component", False))
    clean, noisy = _smooth_volume()
    result = denoise(Volume(noisy, oblique_matrix()), method="fusion", modality="CT", time_budget=600)
    fusion = result.report["parameters"]["fusion"]
    assert len(fusion["whole_volume_components"]) == 1 and "the clock stopped it after" in fusion["why"]
    assert any("skipped" in cut and "at the pace measured so far" in cut for cut in result.report["time_budget"]["cut"])
    mask = np.ones(clean.shape, bool)
    assert rmse(result.volume.array, clean, mask) < 0.8 * rmse(noisy, clean, mask)


def test_choose_components_takes_the_cheapest_set_within_sures_resolution():
    from MedSynthLib.tasks.enhance._sure import choose_components

    risks = {("c",): 50.5, ("d",): 54.7, ("n",): 152.3, ("c", "d"): 49.0, ("c", "n"): 50.5, ("d", "n"): 54.6,
             ("c", "d", "n"): 49.0}
    costs = {"c": 233.0, "d": 30.0, "n": 60.0}
    assert choose_components(risks, costs)[:3:2] == (("c", "d"), False)  # c + d: 3 % below c alone
    assert choose_components(risks, costs, seconds_left=100.0)[::2] == (("d",), True)  # d + n only 0.2 % better
    assert choose_components(risks, costs, seconds_left=10.0)[0] == ("d",)  # nothing fits: the cheapest
    flat = {("c",): 10.0, ("d",): 10.05, ("c", "d"): 9.99}
    assert choose_components(flat, costs)[0] == ("d",)  # within 1 % of the best: the cheap one alone


def test_auto_gets_a_default_budget_that_grows_with_the_volume_and_a_named_method_none(noisy_head):
    from MedSynthLib.tasks.enhance._options import default_budget_seconds

    _, volume = noisy_head
    for model in ("gaussian", "rician"):
        assert (default_budget_seconds("denoise", 2_000_000, noise_model=model)
                > default_budget_seconds("denoise", 1_000_000, noise_model=model))
    auto = denoise(volume, method="auto", device="cpu").report["time_budget"]  # Rician: MR's default
    assert auto["default"] and auto["budget_s"] == default_budget_seconds("denoise", volume.array.size,
                                                                          noise_model="rician")
    named = denoise(volume, method="dct").report["time_budget"]
    assert not named["default"] and named["budget_s"] is None
