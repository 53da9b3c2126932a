"""Why the two noise estimators disagree (:mod:`MedSynthLib.noise_reasons`) and the denoise report that says so
(issue 30: "the estimators agree within 25 %, or the report names the reason")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from conftest import oblique_matrix
from MedSynthLib.noise import estimate_noise_array
from MedSynthLib.noise_reasons import NO_MEASURED_REASON, disagreement_reasons, explain_noise
from MedSynthLib.reports import to_json
from MedSynthLib.tasks.enhance import denoise
from MedSynthLib.tasks.enhance._noise import working_noise
from MedSynthLib.volume import Volume

from .phantoms import clean_head, rician_noise

SHAPE, SIGMA = (20, 64, 64), 6.0


def _phantom(kind: str) -> Volume:
    """The clean head in real air with Rician noise of sigma 6: ``white``; ``correlated`` (each channel
    Gaussian-filtered, 0.7 voxel, then scaled back to sigma 6 per voxel, as a k-space filter does); ``zeroed`` (the
    air set to exactly 0, as a masked scan)."""
    clean = clean_head(SHAPE)
    if kind == "correlated":
        rng = np.random.default_rng(1)
        channels = [ndimage.gaussian_filter(rng.normal(0, 1, SHAPE), 0.7) for _ in range(2)]
        channels = [SIGMA * c / c.std() for c in channels]
        noisy = np.hypot(clean + channels[0], channels[1])
    else:
        noisy = rician_noise(clean, SIGMA)
        if kind == "zeroed":
            noisy = np.where(clean > 0, noisy, 0)
    return Volume(noisy.astype(np.float32), oblique_matrix(spacing=(0.9, 1.0, 1.1)))


def _explained(kind: str):
    volume = _phantom(kind)
    estimate = estimate_noise_array(volume)
    return volume, estimate, explain_noise(volume, estimate)


def test_white_rician_noise_in_real_air_agrees_and_needs_no_reason():
    volume, estimate, found = _explained("white")
    assert estimate.method == "background" and estimate.agree
    assert found.reasons == [] and found.main is None
    assert found.indicators["whiteness"] > 0.8 and found.indicators["background_equivalent_coils"] == 1.0
    report = denoise(volume, method="aniso").report
    assert report["noise_check"]["reasons"] == [] and report["noise_check"]["branch"] == "estimate"
    assert not any("disagree" in w for w in report["warnings"])
    json.loads(to_json(report))


def test_correlated_noise_makes_them_disagree_and_the_report_says_why():
    volume, estimate, found = _explained("correlated")
    assert not estimate.agree and estimate.details["cross_check"]["ratio"] > 1.5
    assert found.measured and found.main.startswith("correlated noise or texture in the tissue (whiteness 0.")
    assert found.indicators["whiteness"] < 0.5
    report = denoise(volume, method="aniso").report
    check = report["noise_check"]
    assert check["reasons"][0].startswith("correlated noise") and check["indicators"]["whiteness"] < 0.5
    (line,) = [w for w in report["warnings"] if w.startswith("noise estimates disagree")]
    assert line.endswith("; likely because " + check["reasons"][0])
    text = to_json(report)
    assert "NaN" not in text and json.loads(text)["noise_check"]["reasons"] == check["reasons"]
    # auto: the smaller sigma, and the warning still ends with the main reason
    used, auto_check, warnings = working_noise(estimate, "auto", explanation=found)
    assert used.sigma == pytest.approx(estimate.conservative_sigma) and auto_check["branch"] == "conservative"
    assert warnings == [auto_check["why"]] and warnings[0].endswith("; likely because " + found.main)


def test_a_zeroed_background_is_named():
    volume, estimate, found = _explained("zeroed")
    assert "cross_check" not in estimate.details and estimate.method == "residual"
    assert found.main.startswith("zeroed/clipped background: 100 % of the air is exactly 0")
    check = denoise(volume, method="aniso").report["noise_check"]
    assert check["branch"] == "single estimate" and check["reasons"] == found.reasons
    assert check["why"].endswith(found.main)
    indicators = json.loads(to_json(check))["indicators"]
    assert indicators["background_q75_over_q25"] is None and indicators["background_q75_over_q25_null_reason"]


def test_a_disagreement_no_indicator_explains_says_so():
    """Residual above background with white noise, real air, moderate SNR, even slices: nothing measured explains
    it; the list says so first and keeps the direction as a guess, and the warning ends with it."""
    _, estimate, found = _explained("correlated")
    quiet = {**found.indicators, "whiteness": 0.95, "snr": 20.0, "background_sigma": 3.0, "residual_sigma": 6.0,
             "background_sigma_slices_p90_over_p10": 1.05, "background_zero_fraction": 0.0}
    reasons = disagreement_reasons(quiet)
    assert reasons[0] == NO_MEASURED_REASON and reasons[1].startswith("residual above background")
    unexplained = type(found)(indicators=quiet, reasons=reasons)
    _, check, warnings = working_noise(estimate, "dct", explanation=unexplained)
    assert not unexplained.measured and warnings[0].endswith("; no measured reason") and check["reasons"] == reasons
