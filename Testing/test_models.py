"""Model packages are safe: round trip, and refusal of a wrong task, tampered shapes, pickle payloads, bad metadata."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from MedSynthLib.errors import ModelError
from MedSynthLib.models import build_network, list_packages, load_package, read_package_info, save_package

torch.set_num_threads(1)

TINY_UNET = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "features": [4, 4, 8, 8, 16, 4]}


def _rehash(path):
    """Record the tampered weights' checksum, so the checks behind the checksum are what a test reaches."""
    from MedSynthLib.models.package import weights_sha256

    metadata = json.loads(path.read_text())
    metadata["weights_sha256"] = weights_sha256(path.with_suffix(".safetensors"))
    path.write_text(json.dumps(metadata))


def _save(tmp_path, name="tiny", builder="basic_unet", args=TINY_UNET, task="denoise", family="unet"):
    torch.manual_seed(0)
    network = build_network(builder, **args)
    path = save_package(network, tmp_path / name, task=task, family=family, builder=builder,
                        builder_args=args, input_spec={"format": "test"}, description="test package")
    return network, path


def test_round_trip_gives_the_same_outputs(tmp_path):
    network, path = _save(tmp_path)
    loaded = load_package(path, task="denoise")
    x = torch.rand(2, 3, 32, 32)
    network.eval()
    with torch.no_grad():
        assert torch.equal(network(x), loaded.network(x))
    assert loaded.info.family == "unet" and not loaded.network.training


@pytest.mark.parametrize(
    ("builder", "args", "shape"),
    [
        ("autoencoder_kl", {"spatial_dims": 3, "channels": [8, 8], "latent_channels": 2, "norm_num_groups": 4}, (1, 1, 16, 16, 16)),
        ("diffusion_unet", {"in_channels": 2, "channels": [8, 8, 16], "norm_num_groups": 4, "num_head_channels": 8}, (2, 2, 16, 16)),
        ("patch_discriminator", {"in_channels": 2, "channels": 4, "num_layers_d": 2}, (2, 2, 32, 32)),
        ("residual_unet", {**TINY_UNET, "skip_channel": 1}, (2, 3, 32, 32)),
    ],
)
def test_new_builders_round_trip(tmp_path, builder, args, shape):
    network, path = _save(tmp_path, builder=builder, args=args, task="lesion-shape", family="vae")
    loaded = load_package(path)
    x = torch.rand(*shape)
    network.eval()
    with torch.no_grad():
        if builder == "diffusion_unet":
            steps = torch.tensor([3, 7])
            assert torch.equal(network(x, steps), loaded.network(x, steps))
        elif builder == "autoencoder_kl":
            assert torch.equal(network.encode(x)[0], loaded.network.encode(x)[0])
        elif builder == "residual_unet":
            assert torch.equal(network(x), loaded.network(x))
        else:
            assert torch.equal(network(x)[-1], loaded.network(x)[-1])


def test_wrong_task_is_refused(tmp_path):
    _, path = _save(tmp_path)
    with pytest.raises(ModelError, match="is a 'denoise' model; this needs a 'fill' model"):
        load_package(path, task="fill")


def test_tampered_tensor_shape_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = _save(tmp_path)
    weights = path.with_suffix(".safetensors")
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.dim() == 4)
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    save_file(state, str(weights))
    _rehash(path)
    with pytest.raises(ModelError, match=f"tensor {key} has shape"):
        load_package(path)


def test_missing_or_extra_tensors_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = _save(tmp_path)
    weights = path.with_suffix(".safetensors")
    state = load_file(str(weights))
    state.pop(next(iter(state)))
    state["injected.weight"] = torch.zeros(1)
    save_file(state, str(weights))
    _rehash(path)
    with pytest.raises(ModelError, match="weights do not match the network"):
        load_package(path)


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_executed(tmp_path):
    _, path = _save(tmp_path)
    marker = tmp_path / "pwned"
    weights = path.with_suffix(".safetensors")
    weights.write_bytes(pickle.dumps({"conv.weight": _Payload(str(marker))}))
    _rehash(path)
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        load_package(path)
    assert not marker.exists()
    torch.save({"conv.weight": _Payload(str(marker))}, weights)  # a torch pickle checkpoint in disguise
    _rehash(path)
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        load_package(path)
    assert not marker.exists()


def test_training_checkpoints_are_loaded_without_unpickling_code(tmp_path):
    from MedSynthLib.training import load_checkpoint

    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "checkpoint_last.pt"
    torch.save({"modules": _Payload(str(marker))}, checkpoint)
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_checkpoint(checkpoint)
    assert not marker.exists()


def test_unknown_builder_and_bad_metadata_are_refused(tmp_path):
    _, path = _save(tmp_path)
    metadata = json.loads(path.read_text())
    for change, message in [
        ({"builder": "os_system"}, "unknown network builder"),
        ({"format_version": 99}, "format version 99"),
        ({"builder_args": {**TINY_UNET, "evil": 1}}, "refused its arguments"),
    ]:
        path.write_text(json.dumps({**metadata, **change}))
        with pytest.raises(ModelError, match=message):
            load_package(path)
    path.write_text(json.dumps({k: v for k, v in metadata.items() if k != "task"}))
    with pytest.raises(ModelError, match="lacks task"):
        read_package_info(path)
    path.write_text("{not json")
    with pytest.raises(ModelError, match="unreadable metadata"):
        read_package_info(path)


def test_user_folder_packages_are_listed(tmp_path):
    _save(tmp_path, name="mine")
    names = [info.name for info in list_packages([tmp_path], task="denoise")]
    assert "mine" in names
    assert all(info.task == "fill" for info in list_packages([tmp_path], task="fill"))


def test_residual_unet_starts_as_identity_of_its_skip_channel():
    from MedSynthLib.training.families import _zero_last_conv

    network = build_network("residual_unet", **TINY_UNET, skip_channel=1)
    _zero_last_conv(network)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(network.eval()(x), x[:, 1:2])
    with pytest.raises(ModelError, match="skip_channel"):
        build_network("residual_unet", **TINY_UNET, skip_channel=3)


def test_bundled_package_lookup_names_a_complete_package_or_none():
    from MedSynthLib.models import BUNDLED_DIR, bundled_package

    for task in ("fill", "denoise", "lesion-shape"):
        path = bundled_package(task)
        if path is not None:
            assert path.parent == BUNDLED_DIR and path.with_suffix(".safetensors").is_file()
            assert load_package(path, task=task).info.bundled
    assert bundled_package("no-such-task") is None


def test_batched_ddim_samples_do_not_depend_on_the_batch_size_and_keep_known_voxels():
    import numpy as np

    from MedSynthLib.engine import EngineReport
    from MedSynthLib.models.sampling import ddim_sample_batches

    torch.manual_seed(0)
    network = build_network("diffusion_unet", spatial_dims=2, in_channels=3, out_channels=1, channels=(8, 8, 16),
                            attention_levels=(False, False, False), norm_num_groups=4, num_head_channels=8)
    rng = np.random.default_rng(0)
    condition = rng.random((5, 2, 20, 24)).astype(np.float32)  # sizes that need padding to a multiple of 8
    known = rng.random((5, 1, 20, 24)).astype(np.float32)
    mask = np.zeros_like(known)
    mask[:, :, :10] = 1.0  # the top half is known
    settings = {"num_train_timesteps": 50, "schedule": "linear_beta", "prediction_type": "epsilon"}
    engine = EngineReport()
    one = ddim_sample_batches(network, condition, scheduler_settings=settings, steps=3, seed=4, device="cpu",
                              batch_size=1, known=known, known_mask=mask, report_to=engine)
    four = ddim_sample_batches(network, condition, scheduler_settings=settings, steps=3, seed=4, device="cpu",
                               batch_size=4, known=known, known_mask=mask)
    assert one.shape == (5, 1, 20, 24) and np.all(np.isfinite(one))
    np.testing.assert_allclose(one, four, atol=1e-5)
    np.testing.assert_allclose(one[:, :, :10], known[:, :, :10], atol=1e-5)  # data consistency
    assert not np.allclose(one[:, :, 10:], known[:, :, 10:], atol=1e-2)
    assert engine.device_used == "cpu" and engine.batch_size == 1
    other = ddim_sample_batches(network, condition, scheduler_settings=settings, steps=3, seed=5, device="cpu")
    assert not np.allclose(other[:, :, 10:], one[:, :, 10:])


def test_packages_record_the_sha256_of_their_weights(tmp_path):
    import hashlib

    from MedSynthLib.models import BUNDLED_DIR

    _, path = _save(tmp_path)
    for json_path in [path, *sorted(BUNDLED_DIR.glob("*.json"))]:
        recorded = json.loads(json_path.read_text())["weights_sha256"]
        assert recorded == hashlib.sha256(json_path.with_suffix(".safetensors").read_bytes()).hexdigest(), json_path


def test_damaged_weights_of_the_same_size_are_refused_naming_the_file(damaged_fill_package):
    """4,000 bytes after the safetensors header overwritten: the file still parses, the checksum does not match."""
    from MedSynthLib.models import BUNDLED_DIR

    weights = damaged_fill_package.with_suffix(".safetensors")
    assert weights.stat().st_size == (BUNDLED_DIR / "fill_default.safetensors").stat().st_size
    with pytest.raises(ModelError, match=r"fill_default\.safetensors.*damaged"):
        load_package(damaged_fill_package, task="fill")


def test_medsynth_train_writes_the_weights_checksum(tiny_data, tmp_path):
    import hashlib

    from test_training import tiny_config

    from MedSynthLib.training import train

    result = train(tiny_config(tiny_data, tmp_path / "run", "denoise", "unet"), quiet=True)
    recorded = json.loads(result.package.read_text())["weights_sha256"]
    assert recorded == hashlib.sha256(result.package.with_suffix(".safetensors").read_bytes()).hexdigest()
