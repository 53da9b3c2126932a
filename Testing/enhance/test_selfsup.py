"""Tests of the self-supervised denoiser (``_selfsup``): the blind-spot network, its training on the volume, its
fusion and its time budget."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from conftest import oblique_matrix
from MedSynthLib.errors import InputError
from MedSynthLib.tasks.enhance import denoise
from MedSynthLib.volume import Volume

from .phantoms import clean_head, rician_noise, rmse


def test_selfsup_improves_and_is_deterministic():
    clean = clean_head((10, 36, 40))
    volume = Volume(rician_noise(clean, 6.0), oblique_matrix(spacing=(0.9, 1.0, 1.1)))
    first = denoise(volume, method="selfsup", method_options={"selfsup": {"steps": 6}}, seed=3, device="cpu")
    second = denoise(volume, method="selfsup", method_options={"selfsup": {"steps": 6}}, seed=3, device="cpu")
    assert np.array_equal(first.volume.array, second.volume.array)
    mask = clean > 0
    assert rmse(first.volume.array, clean, mask) < 0.92 * rmse(volume.array, clean, mask)
    assert first.report["parameters"]["steps"] == 6
    assert first.report["device"] == "cpu"
    assert np.array_equal(first.volume.ijk_to_ras, volume.ijk_to_ras)
    other = denoise(volume, method="selfsup", method_options={"selfsup": {"steps": 6}}, seed=4, device="cpu")
    # the seed sets the training crops (6 steps train a network SURE may not use: compare the training itself)
    assert other.report["parameters"]["loss_first"] != first.report["parameters"]["loss_first"]


@pytest.mark.parametrize("thick_ijk", [0, 1])
def test_selfsup_on_a_scan_thick_along_i_or_j(thick_ijk):
    """A planar scan whose thick axis is not the array's first: selfsup works with that axis moved first, and its
    fusion's blocks follow the spacing moved the same way (the spacing was once moved with a 3D array call
    on a 1D tuple, which raised for any slice axis but k)."""
    spacing = [0.9, 0.9, 0.9]
    spacing[thick_ijk] = 4.0
    clean = clean_head((24, 40, 44))
    volume = Volume(rician_noise(clean, 6.0), oblique_matrix(spacing=tuple(spacing)))
    result = denoise(volume, method="selfsup", method_options={"selfsup": {"steps": 4}}, seed=1, device="cpu")
    parameters = result.report["parameters"]
    assert parameters["slice_axis"] == 2 - thick_ijk  # the array axis of the thick one (arrays are k, j, i)
    assert parameters["fusion"]["blocks"]["collaborative"]["patch"] == [2, 6, 6]  # thick axis first
    mask = clean > 0
    assert rmse(result.volume.array, clean, mask) < 0.9 * rmse(volume.array, clean, mask)
    assert np.array_equal(result.volume.ijk_to_ras, volume.ijk_to_ras)


def test_selfsup_sure_fusion_uses_no_clean_image_and_beats_its_parts():
    """SURE weights come from the noisy volume alone; the fused result beats NLM and the Wiener-only output."""
    from MedSynthLib.tasks.enhance._selfsup import SelfSupSettings, denoise_selfsup

    clean = clean_head((14, 40, 44))
    noisy = rician_noise(clean, 8.0, seed=5)
    volume = Volume(noisy, oblique_matrix())
    fused = denoise(volume, method="selfsup", method_options={"selfsup": {"steps": 20}}, seed=0, device="cpu")
    fusion = fused.report["parameters"]["fusion"]
    assert fusion["components"] == ["blind", "wiener", "collaborative", "dct_p8", "nlm_h0.5"]
    assert fusion["fit_voxels"] > 1000
    assert all(len(w) == 5 and np.all(np.isfinite(w)) and abs(sum(w) - 1) < 1e-6 and min(w) >= 0
               for w in fusion["weights_by_gradient_class"])
    nlm = denoise(volume, method="nlm").volume.array
    wiener_only, _ = denoise_selfsup(noisy, sigma=8.0, rician=True, foreground=noisy > 30, seed=0, device="cpu",
                                     settings=SelfSupSettings(steps=20, sure_fusion=False))
    mask = clean > 0
    assert rmse(fused.volume.array, clean, mask) < rmse(nlm, clean, mask)
    assert rmse(fused.volume.array, clean, mask) < rmse(wiener_only, clean, mask)


def test_blind_spot_network_never_sees_the_centre_voxel():
    from MedSynthLib.tasks.enhance._selfsup import BlindSpotNet

    for planar, outputs in ((False, 1), (True, 1), (False, 2)):
        torch.manual_seed(0)
        net = BlindSpotNet(channels=4, dilations=(2, 4), planar=planar, outputs=outputs)
        torch.nn.init.normal_(net.head[-1].weight)  # the zero-initialised head would hide any leak
        for channel in range(outputs):
            x = torch.rand(1, 1, 9, 21, 21, requires_grad=True)
            out = net(x, torch.zeros_like(x))
            assert out.shape == (1, outputs, 9, 21, 21)
            out[0, channel, 4, 10, 10].backward()
            assert x.grad[0, 0, 4, 10, 10] == 0
            assert x.grad.abs().sum() > 0


def test_time_budget_stops_selfsup_training_early_and_reports_it(noisy_head):
    _, volume = noisy_head
    result = denoise(volume, method="selfsup", device="cpu", method_options={"selfsup": {"steps": 5000}}, time_budget=2.0, threads=1)
    budget = result.report["time_budget"]
    assert budget["budget_s"] == 2.0 and any("stopped at step" in cut for cut in budget["cut"])
    assert 10 <= result.report["parameters"]["steps_run"] < 5000
    assert result.report["parameters"]["cpu_threads"] == 1
    assert torch.get_num_threads() >= 1
    with pytest.raises(InputError, match="time budget"):
        denoise(volume, method="nlm", time_budget=-1)
