"""Learned lesion appearance (issue #5): a lesion-inpaint package paints the lesion; every guarantee still holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_lesion import _centre, mr_head

from MedSynthLib.errors import InputError, ModelError
from MedSynthLib.io import read_volume, write_volume
from MedSynthLib.models import PackageInfo, LoadedModel, build_network, save_package
from MedSynthLib.tasks.lesion import LesionSpec, insert_lesions
from MedSynthLib.training import TrainConfig, train
from MedSynthLib.volume import Volume

INPAINT_INPUT = {"format": "lesion-inpaint-2.5d", "version": 1, "context": 1, "channels": 4,
                 "normalisation": {"kind": "robust_percentile", "percentiles": [0.5, 99.5]}}


@pytest.fixture(scope="module")
def head() -> Volume:
    return mr_head()


@pytest.fixture(scope="module")
def diffusion_package(tiny_data, tmp_path_factory) -> Path:
    """A lesion-inpaint diffusion package written by the training entry point itself (a few steps)."""
    config = TrainConfig(
        task="lesion-inpaint", family="diffusion", data=[str(tiny_data / "images")], labels=[str(tiny_data / "labels")],
        out=str(tmp_path_factory.mktemp("inpaint_run")), epochs=2, batch_size=4, samples_per_epoch=8, crop=16, val_samples=4, lr=3e-3,
        augment=0.0, resample_each_epoch=False, tensorboard=False,
        network={"channels": [8, 8, 16], "num_head_channels": 8, "norm_num_groups": 4},
        loss={"num_train_timesteps": 100, "val_ddim_steps": 2},
    )
    return train(config).package


class _Stripes(torch.nn.Module):
    """Stands in for a unet package: paints bands of 4 rows, alternately 0.3 above and below 0.5 (normalised)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = (torch.arange(x.shape[2], dtype=x.dtype) // 4) % 2
        return (0.5 + 0.6 * (rows - 0.5)).view(1, 1, -1, 1).expand(x.shape[0], 1, x.shape[2], x.shape[3]).clone()


def _stripes_package(tmp_path: Path) -> LoadedModel:
    path = tmp_path / "stripes.json"
    metadata = {"format_version": 1, "name": "stripes", "task": "lesion-inpaint", "family": "unet",
                "builder": "basic_unet", "builder_args": {}, "input": dict(INPAINT_INPUT)}
    path.write_text(json.dumps(metadata))
    return LoadedModel(network=_Stripes(), info=PackageInfo(path, metadata))


def _spec(head, **changes) -> LesionSpec:
    values = dict(centre_ras=_centre(head), diameter_mm=12.0, contrast=0.4, core_fraction=0.5, core_contrast=-0.3,
                  shape="lobulated", seed=11)
    values.update(changes)
    return LesionSpec(**values)


def test_learned_appearance_keeps_labels_means_and_locality(head, diffusion_package):
    spec = _spec(head)
    procedural = insert_lesions(head, specs=[spec])
    learned = insert_lesions(head, specs=[spec], appearance_model=diffusion_package, appearance_steps=4)
    again = insert_lesions(head, specs=[spec], appearance_model=diffusion_package, appearance_steps=4)
    # the geometry is the procedural one: identical labels, a different interior
    assert np.array_equal(learned.labels.array, procedural.labels.array)
    assert np.array_equal(learned.volume.array, again.volume.array)
    assert not np.array_equal(learned.volume.array, procedural.volume.array)
    entry = learned.report["lesions"][0]
    assert abs(entry["volume_error"]) < 0.15 and entry["contrast_error"] < 0.10
    assert 0.75 <= entry["noise_ratio"] <= 1.25  # the scanner's noise, not the model's
    assert abs(entry["core_contrast_measured"] - spec.core_contrast) < 0.1 * abs(spec.core_contrast) + 1e-3
    # nothing outside the reported region of influence changes
    changed = np.argwhere(learned.volume.array != head.array)
    box = entry["region_of_influence"]["bbox_ijk"]
    for axis_kji, (lo, hi) in zip(range(3), reversed(box)):
        assert changed[:, axis_kji].min() >= lo and changed[:, axis_kji].max() < hi
    assert learned.volume.array.dtype == head.array.dtype
    assert np.allclose(learned.volume.ijk_to_ras, head.ijk_to_ras)
    assert learned.report["method"] == "procedural + learned appearance"
    described = learned.report["appearance_model"]
    assert described["family"] == "diffusion" and described["ddim_steps"] == 4 and described["slice_axis"] == "k"


def test_the_painting_lands_in_the_lesion_along_the_slice_planes(head, tmp_path):
    # bands of rows (j) in every painted k-slice: inside the lesion the mean over each j (mod 8) follows the
    # bands, the mean over each i (mod 8) does not
    spec = _spec(head, core_fraction=0.0, diameter_mm=16.0, shape="round", edge_width_mm=0.0)
    procedural = insert_lesions(head, specs=[spec])
    result = insert_lesions(head, specs=[spec], appearance_model=_stripes_package(tmp_path))
    lesion = result.labels.array == 1
    k, j, i = np.nonzero(lesion)

    def band_range(volume, index):
        values = volume.array[lesion].astype(np.float64)
        profile = [values[index % 8 == r].mean() for r in range(8)]
        return max(profile) - min(profile)

    sigma = result.report["lesions"][0]["noise_sigma_background"]
    assert band_range(result.volume, j) > 3 * sigma
    assert band_range(result.volume, i) < 1.5 * sigma and band_range(procedural.volume, j) < 1.5 * sigma
    # means and noise are the requested ones whatever the painting
    entry = result.report["lesions"][0]
    assert entry["contrast_error"] < 0.10 and 0.75 <= entry["noise_ratio"] <= 1.25
    assert any("learned texture scaled" in note for note in result.report["notes"])


def test_wrong_packages_are_refused_with_a_clear_message(head, tmp_path):
    args = {"spatial_dims": 2, "in_channels": 4, "out_channels": 1, "features": [4, 4, 8, 8, 16, 4]}
    network = build_network("basic_unet", **args)
    fill = save_package(network, tmp_path / "fill", task="fill", family="unet", builder="basic_unet",
                        builder_args=args, input_spec=dict(INPAINT_INPUT))
    with pytest.raises(ModelError, match="lesion-inpaint"):
        insert_lesions(head, specs=[_spec(head)], appearance_model=fill)
    other = save_package(network, tmp_path / "other", task="lesion-inpaint", family="unet", builder="basic_unet",
                         builder_args=args, input_spec={**INPAINT_INPUT, "format": "lesion-inpaint-3d"})
    with pytest.raises(ModelError, match="input format"):
        insert_lesions(head, specs=[_spec(head)], appearance_model=other)
    with pytest.raises(InputError, match="appearance steps must be a number in \\[1, 1000\\], got 0"):
        insert_lesions(head, specs=[_spec(head)], appearance_model=fill, appearance_steps=0)


def test_cli_paints_with_an_appearance_model(head, diffusion_package, tmp_path):
    from MedSynthLib.cli import main

    source = tmp_path / "head.nrrd"
    write_volume(head, source)
    code = main(["--quiet", "lesion", str(source), str(tmp_path / "out.nrrd"), "--labels", str(tmp_path / "labels.nrrd"),
                 "--preset", "mr-metastasis", "--at", ",".join(f"{x:g}" for x in _centre(head)), "--size", "10",
                 "--appearance-model", str(diffusion_package), "--appearance-steps", "3", "--device", "cpu",
                 "--report", str(tmp_path / "r.json")])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["appearance_model"]["ddim_steps"] == 3
    assert read_volume(tmp_path / "out.nrrd").array.shape == head.array.shape
