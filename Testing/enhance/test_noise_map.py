"""The local noise map (:mod:`MedSynthLib.noise_map`) and ``denoise`` driven by it (issue 30, items 1-2)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from MedSynthLib.io import read_volume, write_volume
from MedSynthLib.noise_map import VARIATION_FACTOR, estimate_noise_map
from MedSynthLib.reports import to_json
from MedSynthLib.tasks.enhance import denoise
from MedSynthLib.volume import Volume


def _ramp_phantom(rician: bool, seed: int = 0):
    """A 24 x 128 x 128 volume: a bright disk (200) with a darker one (120) inside, on 0; noise sigma ramps 4 -> 12
    (3x) along the columns. Returns (clean, noisy, true sigma, tissue)."""
    rng = np.random.default_rng(seed)
    _, y, x = np.mgrid[:24, :128, :128].astype(np.float32)
    tissue = (y - 64) ** 2 + (x - 64) ** 2 < 58**2
    clean = np.where(tissue, 200.0, 0.0).astype(np.float32)
    clean[(y - 64) ** 2 + (x - 44) ** 2 < 16**2] = 120.0
    sigma = (4.0 + 8.0 * x / 127.0).astype(np.float32)
    if rician:
        noisy = np.hypot(clean + sigma * rng.normal(size=clean.shape), sigma * rng.normal(size=clean.shape))
    else:
        noisy = clean + sigma * rng.normal(size=clean.shape)
    return clean, noisy.astype(np.float32), sigma, tissue


@pytest.mark.parametrize("rician", [False, True], ids=["gaussian", "rician"])
def test_the_map_recovers_a_known_smooth_sigma_field(rician):
    """Within 8 % (median) and 20 % (95th percentile) of the true sigma inside the tissue, 3 mm from its edge."""
    from scipy import ndimage

    _, noisy, sigma, tissue = _ramp_phantom(rician)
    found = estimate_noise_map(Volume(noisy, np.eye(4)), modality="MR" if rician else "CT",
                               mask=tissue if not rician else None)
    inner = ndimage.binary_erosion(tissue, iterations=3)
    error = np.abs(found.sigma[inner] / sigma[inner] - 1)
    assert np.median(error) < 0.08 and np.percentile(error, 95) < 0.20, (np.median(error), np.percentile(error, 95))
    assert found.varies and found.summary["p95_over_p5"] > VARIATION_FACTOR
    assert found.summary["max_kji"][2] > 96  # the noisiest corner is where sigma is highest: the last columns
    assert found.sigma.dtype == np.float32 and found.sigma.shape == noisy.shape
    json.loads(to_json(found.summary))  # strict JSON


def test_homogeneous_noise_gives_a_flat_map_and_an_unchanged_denoise(noisy_head):
    _, volume = noisy_head
    found = estimate_noise_map(volume)
    assert not found.varies and found.summary["p95_over_p5"] < 1.15, found.summary
    assert abs(found.summary["median"] / 6.0 - 1) < 0.15
    auto = denoise(volume, method="dct", seed=0)
    off = denoise(volume, method="dct", seed=0, local_noise="off")
    assert np.array_equal(auto.volume.array, off.volume.array)  # bit for bit what one sigma gives
    assert auto.report["noise_map"]["used"] is False and "even" in auto.report["noise_map"]["why"]
    assert auto.noise_map is not None and auto.noise_map.array.shape == volume.array.shape


def test_denoise_follows_a_varying_map_and_gains_from_it():
    clean, noisy, _, tissue = _ramp_phantom(rician=True)
    volume = Volume(noisy, np.eye(4))
    used = denoise(volume, method="dct", modality="MR")
    plain = denoise(volume, method="dct", modality="MR", local_noise="off")
    summary = used.report["noise_map"]
    assert summary["used"] and summary["divided_noise"]["sigma"] > 0 and summary["highest"] in ("centre", "periphery", "even")
    rmse = [float(np.sqrt(np.mean((r.volume.array[tissue] - clean[tissue]) ** 2))) for r in (used, plain)]
    assert rmse[0] < rmse[1], rmse
    json.loads(to_json(used.report))


def test_the_written_map_has_the_input_geometry(tmp_path, noisy_head):
    from MedSynthLib.cli import main

    _, volume = noisy_head  # oblique direction, anisotropic spacing, non-zero origin
    source, out, written = tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", tmp_path / "sigma.nrrd"
    write_volume(volume, source)
    assert main(["-q", "denoise", str(source), str(out), "--method", "aniso", "--noise-map", str(written),
                 "--report", str(tmp_path / "r.json")]) == 0
    read, given = read_volume(written), read_volume(source)
    assert read.array.shape == given.array.shape and read.array.dtype == np.float32
    assert np.allclose(read.ijk_to_ras, given.ijk_to_ras, atol=1e-4)
    np.testing.assert_allclose(read.spacing, given.spacing, atol=1e-5)
    np.testing.assert_allclose(read.origin, given.origin, atol=1e-4)
    np.testing.assert_allclose(read.direction, given.direction, atol=1e-5)
    assert "noise_map" in json.loads((tmp_path / "r.json").read_text())


def test_the_cli_refuses_a_noise_map_on_the_output_path(tmp_path, noisy_head, capsys):
    from MedSynthLib.cli import main

    _, volume = noisy_head
    source, out = tmp_path / "in.nii.gz", tmp_path / "out.nii.gz"
    write_volume(volume, source)
    capsys.readouterr()
    assert main(["-q", "denoise", str(source), str(out), "--noise-map", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--noise-map" in err[0] and "same file" in err[0], err
    assert not out.exists()


def test_the_divided_volume_is_set_from_the_maps_tissue_level_only_where_the_air_agrees():
    """Dividing by the map's shape leaves the tissue's noise at the map's median: that level is used when the divided
    volume's own estimate meets it within x1.25; otherwise the divided volume's estimate is kept as it was."""
    from MedSynthLib.noise import NoiseEstimate
    from MedSynthLib.noise_map import NoiseMap
    from MedSynthLib.tasks.enhance._noise import divided_noise

    shape_only = NoiseMap(volume=Volume(np.ones((4, 4, 4), np.float32), np.eye(4)), model="rician", modality="MR",
                          summary={"median": 11.7})
    air = NoiseEstimate(sigma=10.26, model="rician", method="background", modality="MR", signal=200.0)
    near = divided_noise(air, shape_only)
    assert near.sigma == pytest.approx(11.7) and near.method == "noise map" and near.agree
    assert near.details["map_level"]["used"] and near.details["cross_check"]["second_sigma"] == pytest.approx(10.26)
    textured = divided_noise(dataclasses.replace(air, sigma=2.0), shape_only)  # x5.9 apart: the map is not trusted
    assert textured.sigma == 2.0 and textured.method == "background" and not textured.details["map_level"]["used"]

    clean, noisy, _, tissue = _ramp_phantom(rician=True)
    used = denoise(Volume(noisy, np.eye(4)), method="dct", modality="MR")
    divided = used.report["noise_map"]["divided_noise"]
    level = divided["details"]["map_level"]
    assert level["used"] == level["agree"]
    if level["used"]:
        assert used.report["sigma_used"] == pytest.approx(used.report["noise_map"]["median"], rel=1e-4)
