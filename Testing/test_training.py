"""medsynth-train on tiny configs: every task x family pair learns, resume is exact, DDP runs, bad input is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_phantom

from MedSynthLib.errors import Cancelled, InputError
from MedSynthLib.io import write_volume
from MedSynthLib.models import load_package
from MedSynthLib.training import TrainConfig, load_checkpoint, train, valid_pairs
from MedSynthLib.training.cli import main as train_main

torch.set_num_threads(1)

TINY_NETWORKS = {
    "unet": {"features": [4, 4, 8, 8, 16, 4]},
    "gan": {"features": [4, 4, 8, 8, 16, 4], "discriminator_channels": 4, "discriminator_layers": 2},
    "diffusion": {"channels": [8, 8, 16], "num_head_channels": 8, "norm_num_groups": 4},
    "vae": {"channels": [8, 8], "norm_num_groups": 4, "latent_channels": 2},
}


def tiny_config(root: Path, out: Path, task: str, family: str, **changes) -> TrainConfig:
    settings = dict(
        task=task,
        family=family,
        data=[str(root / "images")],
        labels=[str(root / "labels")] if task.startswith("lesion") else None,
        out=str(out),
        epochs=4,
        batch_size=4,
        samples_per_epoch=8,
        crop=32 if family in ("unet", "gan") else 16,
        val_samples=4,
        lr=3e-3,
        augment=0.0,
        resample_each_epoch=False,
        network=TINY_NETWORKS[family],
        loss={"num_train_timesteps": 100, "val_ddim_steps": 4} if family == "diffusion" else {},
        tensorboard=False,
    )
    settings.update(changes)
    return TrainConfig(**settings)


PAIRS = [(task, family) for task, families in valid_pairs().items() for family in families]


def test_every_task_has_a_family_and_the_issue_pairs_exist():
    pairs = valid_pairs()
    assert set(pairs) == {"fill", "denoise", "lesion-shape", "lesion-inpaint"}
    assert pairs["lesion-shape"] == ("vae",)
    assert {"unet", "gan", "diffusion"} <= set(pairs["fill"])


@pytest.mark.parametrize(("task", "family"), PAIRS)
def test_tiny_run_learns_and_writes_a_valid_package(tiny_data, tmp_path, task, family):
    config = tiny_config(tiny_data, tmp_path / "run", task, family)
    result = train(config, quiet=True)
    losses = result.step_losses
    assert len(losses) == config.epochs * 2
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    package = load_package(result.package, task=task)
    assert package.info.family == family
    assert package.metadata["metrics"], "validation metrics are recorded in the package"
    spec = package.metadata["input"]
    if task == "fill":
        from MedSynthLib.network_inputs import check_fill_input_spec

        check_fill_input_spec(spec)
    elif task == "denoise":
        from MedSynthLib.network_inputs import check_denoise_input_spec

        assert check_denoise_input_spec(spec) == spec["context"]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(line["event"] == "epoch" for line in lines) == config.epochs
    assert (tmp_path / "run" / "checkpoint_best.pt").is_file()
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")  # weights_only=True
    assert checkpoint["epoch"] == config.epochs and checkpoint["task"] == task


@pytest.mark.parametrize("family", ["unet", "gan", "diffusion"])
def test_resume_after_interrupt_gives_the_same_losses(tiny_data, tmp_path, family):
    settings = dict(epochs=2, resample_each_epoch=True, augment=1.0)
    reference = train(tiny_config(tiny_data, tmp_path / "full", "fill", family, **settings), quiet=True)

    def interrupt(record):
        if record["global_step"] == 3:  # in the middle of epoch 2
            raise KeyboardInterrupt

    config = tiny_config(tiny_data, tmp_path / "cut", "fill", family, **settings)
    with pytest.raises(Cancelled, match="--resume"):
        train(config, on_step=interrupt, quiet=True)
    first = [json.loads(line)["loss"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "step"]
    resumed = train(config, resume=True, quiet=True)
    assert first + resumed.step_losses == pytest.approx(reference.step_losses, rel=1e-5, abs=1e-7)
    assert resumed.history[-1]["val_psnr"] == pytest.approx(reference.history[-1]["val_psnr"], rel=1e-5)


def test_ddp_two_cpu_processes_with_gloo(tiny_data, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "task: denoise\nfamily: unet\nnetwork: {features: [4, 4, 8, 8, 16, 4]}\ncrop: 32\n"
        "samples_per_epoch: 8\nval_samples: 2\naugment: 0.5\ntensorboard: false\nthreads: 1\n"
    )
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "MedSynthLib.training", "denoise", "--config", str(config), "--data", str(tiny_data / "images"),
        "--out", str(out), "--epochs", "2", "--batch-size", "2", "--device", "cpu", "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert len(steps) == 2 * 2  # 8 samples / (2 processes x batch 2) = 2 steps per epoch, rank 0 writes once
    load_package(out / "denoise_unet.json", task="denoise")


def test_cli_trains_and_lists_the_valid_pairs(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    assert "lesion-shape" in capsys.readouterr().out
    config = tmp_path / "tiny.yaml"
    config.write_text("network: {channels: [8, 8], norm_num_groups: 4, latent_channels: 2}\nval_samples: 2\ntensorboard: false\n")
    code = train_main([
        "lesion-shape", "--data", str(tiny_data / "images"), "--labels", str(tiny_data / "labels"),
        "--out", str(tmp_path / "run"), "--config", str(config), "--epochs", "1", "--batch-size", "2",
        "--samples-per-epoch", "2", "--crop", "16", "--quiet",
    ])
    assert code == 0
    package = load_package(tmp_path / "run" / "lesion_shape_vae.json", task="lesion-shape")
    assert package.info.family == "vae"
    from MedSynthLib.training import sample_lesion_shapes

    shapes = sample_lesion_shapes(package.network, metadata=package.metadata, count=3, seed=4)
    assert shapes.shape == (3, 16, 16, 16) and shapes.dtype == bool
    assert np.array_equal(shapes, sample_lesion_shapes(package.network, metadata=package.metadata, count=3, seed=4))


# --------------------------------------------------------------------------- bad input


def test_empty_data_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no volumes found"):
        train(tiny_config(tmp_path, tmp_path / "run", "denoise", "unet", data=[str(tmp_path / "empty")]))


def test_unreadable_volumes_are_skipped_then_refused_when_none_is_left(tiny_data, tmp_path, caplog):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "garbage.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="none of the 1 volumes could be read"):
        train(tiny_config(tmp_path, tmp_path / "run", "denoise", "unet", data=[str(broken)]))
    mixed = [str(broken / "*.nii.gz"), str(tiny_data / "images" / "*.nii.gz")]
    result = train(tiny_config(tiny_data, tmp_path / "run2", "denoise", "unet", data=mixed, epochs=1), quiet=True)
    assert result.package.is_file()
    assert "garbage.nii.gz" in caplog.text


def test_labels_that_do_not_match_their_images_are_refused(tiny_data, tmp_path):
    wrong = tmp_path / "wrong_labels"
    for seed in range(2):
        write_volume(make_phantom((12, 40, 40), seed=seed, dtype=np.uint8), wrong / f"case{seed}.nii.gz")
    with pytest.raises(InputError, match="labels must be on the image's grid"):
        train(tiny_config(tiny_data, tmp_path / "run", "lesion-inpaint", "unet", labels=[str(wrong)]))
    with pytest.raises(InputError, match="2 images but 1 label maps"):
        train(tiny_config(tiny_data, tmp_path / "run", "lesion-inpaint", "unet", labels=[str(wrong / "case0.nii.gz")]))
    with pytest.raises(InputError, match="needs label maps"):
        train(tiny_config(tiny_data, tmp_path / "run", "lesion-inpaint", "unet", labels=None))


def test_unsupported_family_is_refused_before_loading(tmp_path, capsys):
    with pytest.raises(InputError, match="cannot be trained with family 'vae'"):
        train(tiny_config(tmp_path, tmp_path / "run", "fill", "vae"))
    code = train_main(["lesion-shape", "--family", "unet", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "supports: vae" in capsys.readouterr().err


def test_resume_from_another_task_is_refused(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, "denoise", "unet", epochs=1), quiet=True)
    with pytest.raises(InputError, match="is a 'denoise' run"):
        train(tiny_config(tiny_data, out, "fill", "unet"), resume=True)
    with pytest.raises(InputError, match="pass --resume"):
        train(tiny_config(tiny_data, out, "denoise", "unet"))
    with pytest.raises(InputError, match="no checkpoint"):
        train(tiny_config(tiny_data, tmp_path / "fresh", "denoise", "unet"), resume=True)


def test_bad_config_values_are_refused(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("task: denoise\nepochz: 3\n")
    code = train_main(["denoise", "--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    with pytest.raises(InputError, match="unet family .* multiple of 16"):
        train(tiny_config(tmp_path, tmp_path / "run", "fill", "unet", crop=20))
    with pytest.raises(InputError, match="no option"):
        train(tiny_config(tmp_path, tmp_path / "run", "fill", "unet", task_options={"gap": 3}))
    with pytest.raises(InputError, match="axes must be"):
        train(tiny_config(tmp_path, tmp_path / "run", "denoise", "unet", task_options={"axes": "k"}))


def test_ddim_sampling_keeps_known_voxels():
    from MedSynthLib.models import build_network
    from MedSynthLib.training import ddim_sample

    torch.manual_seed(0)
    network = build_network("diffusion_unet", in_channels=3, channels=[8, 8, 16], norm_num_groups=4, num_head_channels=8)
    condition = torch.rand(2, 2, 16, 16)
    known = torch.rand(2, 1, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., :8] = 1
    settings = {"num_train_timesteps": 100}
    sample = ddim_sample(network, condition, scheduler_settings=settings, steps=5, known=known, known_mask=mask,
                         generator=torch.Generator().manual_seed(1))
    assert sample.shape == (2, 1, 16, 16)
    assert torch.allclose(sample[..., :8], known[..., :8], atol=1e-5)
    again = ddim_sample(network, condition, scheduler_settings=settings, steps=5, known=known, known_mask=mask,
                        generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample, again)


def test_committed_configs_are_valid():
    from MedSynthLib.training import load_config
    from MedSynthLib.training.families import make_family
    from MedSynthLib.training.pairs import make_pair_maker

    folder = Path(__file__).resolve().parents[1] / "Resources" / "training"
    configs = sorted(folder.glob("*.yaml"))
    assert any(c.name == "fill_default.yaml" for c in configs) and any(c.name == "denoise_default.yaml" for c in configs)
    for path in configs:
        config = load_config(path, overrides={"out": "unused", "data": config_data(path)})
        config.validate()
        maker = make_pair_maker(config.task, config.task_options, crop=config.crop)
        make_family(config.family, maker, network=config.network, loss=config.loss, lr=config.lr).build()


def config_data(path: Path):
    import yaml

    return yaml.safe_load(path.read_text()).get("data") or ["unused"]


def test_absent_device_is_refused_with_exit_code_2(tiny_data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code = train_main(["denoise", "--data", str(tiny_data / "images"), "--out", str(tmp_path / "o"),
                       "--device", "cuda", "--crop", "32", "--quiet"])
    assert code == 2
    assert "not available" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["unet", "diffusion"])
def test_amp_on_cuda_trains(tiny_data, tmp_path, family):
    config = tiny_config(tiny_data, tmp_path / "run", "fill", family, device="cuda", amp=True, epochs=2)
    result = train(config, quiet=True)
    assert np.all(np.isfinite(result.step_losses))
    assert "cuda" in result.device or "NVIDIA" in result.device


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_a_cpu_trains_in_bfloat16_only_where_it_is_native(tiny_data, tmp_path, monkeypatch, caplog, native):
    """--amp on a CPU: bfloat16 autocast where the CPU computes it natively (faster), else float32 and a warning."""
    import torch

    from MedSynthLib.training import trainer

    monkeypatch.setattr(trainer, "native_bfloat16", lambda device: native)
    seen: list = []
    original = torch.nn.Conv2d.forward

    def spy(self, x):
        out = original(self, x)
        seen.append(out.dtype)
        return out

    settings = dict(epochs=1, device="cpu")
    reference = train(tiny_config(tiny_data, tmp_path / "fp32", "fill", "unet", **settings), quiet=True)
    monkeypatch.setattr(torch.nn.Conv2d, "forward", spy)
    with caplog.at_level("WARNING"):
        result = train(tiny_config(tiny_data, tmp_path / "amp", "fill", "unet", amp=True, **settings), quiet=True)
    assert np.all(np.isfinite(result.step_losses))
    if native:
        assert torch.bfloat16 in seen
        assert result.step_losses == pytest.approx(reference.step_losses, rel=0.05)
        assert not any("--amp" in r.message for r in caplog.records)
    else:
        assert torch.bfloat16 not in seen
        assert result.step_losses == reference.step_losses
        assert any("native bfloat16" in r.message for r in caplog.records)


def test_dataloader_workers_do_not_change_the_samples(tiny_data, tmp_path):
    settings = dict(epochs=1, augment=1.0, resample_each_epoch=True)
    serial = train(tiny_config(tiny_data, tmp_path / "serial", "denoise", "unet", num_workers=0, **settings), quiet=True)
    parallel = train(tiny_config(tiny_data, tmp_path / "workers", "denoise", "unet", num_workers=2, **settings), quiet=True)
    assert parallel.step_losses == pytest.approx(serial.step_losses, rel=1e-6)


def test_interrupt_during_validation_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    import MedSynthLib.training.trainer as trainer

    settings = dict(epochs=2, resample_each_epoch=True, augment=1.0)
    reference = train(tiny_config(tiny_data, tmp_path / "full", "denoise", "unet", **settings), quiet=True)
    original = trainer._validate
    calls = {"count": 0}

    def flaky(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "_validate", flaky)
    config = tiny_config(tiny_data, tmp_path / "cut", "denoise", "unet", **settings)
    with pytest.raises(Cancelled):
        train(config, quiet=True)
    resumed = train(config, resume=True, quiet=True)
    assert resumed.step_losses == pytest.approx(reference.step_losses[2:], rel=1e-5)
    assert [h["val_psnr"] for h in resumed.history] == pytest.approx([h["val_psnr"] for h in reference.history], rel=1e-5)


def test_resampling_at_load_keeps_the_physical_extent_and_labels(tiny_data):
    from MedSynthLib.io import read_volume
    from MedSynthLib.training.data import load_volumes, resample
    from MedSynthLib.training.pairs import make_pair_maker

    volume = read_volume(tiny_data / "images" / "case0.nii.gz")
    out = resample(volume, (1.5, 1.5, 1.5))
    assert np.allclose(out.spacing, 1.5)
    assert np.allclose(out.direction, volume.direction, atol=1e-6)
    def centre(v):
        return v.ijk_points_to_ras(np.array([[(n - 1) / 2 for n in v.array.shape[::-1]]]))[0]

    assert np.linalg.norm(centre(out) - centre(volume)) < 1.5  # same place in the patient
    extent = np.array(volume.array.shape[::-1]) * volume.spacing
    assert np.all(np.abs(np.array(out.array.shape[::-1]) * 1.5 - extent) <= 1.5 + 1e-6)
    maker = make_pair_maker("lesion-inpaint", crop=32)
    cached = load_volumes(sorted((tiny_data / "images").iterdir()), label_paths=sorted((tiny_data / "labels").iterdir()),
                          pair_maker=maker, spacing=[1.5, 1.5, 1.5])
    assert cached[0].array.shape == cached[0].label.shape == out.array.shape
    assert set(np.unique(cached[0].label)) <= {0, 1} and cached[0].label.any()


def test_ddim_sampling_pads_sizes_the_unet_cannot_take():
    from MedSynthLib.models import build_network
    from MedSynthLib.training import ddim_sample

    network = build_network("diffusion_unet", in_channels=3, channels=[8, 8, 16], norm_num_groups=4, num_head_channels=8)
    condition = torch.rand(1, 2, 30, 21)
    known = torch.rand(1, 1, 30, 21)
    mask = torch.zeros(1, 1, 30, 21)
    mask[..., 10:] = 1
    sample = ddim_sample(network, condition, scheduler_settings={"num_train_timesteps": 50}, steps=3, known=known, known_mask=mask)
    assert sample.shape == (1, 1, 30, 21)
    assert torch.allclose(sample[..., 10:], known[..., 10:], atol=1e-5)


def test_tensorboard_logs_or_a_warning_when_it_is_missing(tiny_data, tmp_path, caplog):
    train(tiny_config(tiny_data, tmp_path / "run", "denoise", "unet", epochs=1, tensorboard=True), quiet=True)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard is not installed" in caplog.text
    else:
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_fill_noise_option_adds_noise_to_every_slice(tiny_data):
    from MedSynthLib.training.data import PairDataset, load_volumes
    from MedSynthLib.training.pairs import make_pair_maker

    clean_maker = make_pair_maker("fill", crop=32)
    noisy_maker = make_pair_maker("fill", {"noise": [0.05, 0.05]}, crop=32)
    paths = sorted((tiny_data / "images").iterdir())
    clean = PairDataset(load_volumes(paths, pair_maker=clean_maker), clean_maker, length=4, seed=1, augment=0.0)[0]
    noisy = PairDataset(load_volumes(paths, pair_maker=noisy_maker), noisy_maker, length=4, seed=1, augment=0.0)[0]
    difference = (noisy["target"] - clean["target"]).std()
    assert 0.03 < float(difference) < 0.07
    assert float((noisy["input"][:4] - clean["input"][:4]).std()) > 0.03
    assert torch.equal(noisy["input"][4], clean["input"][4])  # the fraction channel is untouched


def _record_plane_extraction(monkeypatch) -> list:
    """From now on, every ``extract_planes`` call of the pair makers appends (array, axis, indices, center)."""
    from MedSynthLib.training import pairs

    calls = []
    original = pairs.extract_planes

    def record(array, *, axis, indices, center, crop):
        calls.append((array, axis, np.asarray(indices), np.asarray(center)))
        return original(array, axis=axis, indices=indices, center=center, crop=crop)

    monkeypatch.setattr(pairs, "extract_planes", record)
    return calls


@pytest.mark.parametrize("regular_grid", [0.0, 1.0])
def test_fill_pairs_space_the_context_as_the_task_does_and_say_so(tiny_data, monkeypatch, regular_grid):
    """Context slices a gap apart (x2, x4) or one apart (isolated gaps), with the offsets the task builds."""
    from MedSynthLib.network_inputs import FILL_CONTEXT
    from MedSynthLib.training import pairs
    from MedSynthLib.training.data import PairDataset, load_volumes

    maker = pairs.make_pair_maker("fill", {"regular_grid": regular_grid}, crop=32)
    calls = _record_plane_extraction(monkeypatch)
    dataset = PairDataset(load_volumes(sorted((tiny_data / "images").iterdir()), pair_maker=maker), maker,
                          length=24, seed=2, augment=0.0)
    checked = 0
    for index in range(len(dataset)):
        item = dataset[index]
        array, axis, indices, _ = calls[-1]
        length = array.shape[axis]
        c = FILL_CONTEXT
        below, above, position = int(indices[0]), int(indices[c]), int(indices[-1])
        gap = above - below
        assert float(item["input"][2 * c, 0, 0]) == pytest.approx((position - below) / gap)
        offsets = item["input"][2 * c + 1 :, 0, 0].numpy()
        step = gap if regular_grid == 1.0 else 1
        expected = [min(step, below) / gap, min(step, length - 1 - above) / gap]
        np.testing.assert_allclose(offsets, expected, rtol=1e-6)
        assert indices[1] == max(below - step, 0) and indices[c + 1] == min(above + step, length - 1)
        checked += 1
    assert checked == 24
    with pytest.raises(InputError, match="regular_grid"):
        pairs.make_pair_maker("fill", {"regular_grid": 2})


# --------------------------------------------------------------------------- diffusion validation (issue #6)


def _recorded_val_crops(config: TrainConfig, monkeypatch) -> tuple[list, list]:
    """The validation items of ``config`` (crop samples) and the geometry each was cut with."""
    from MedSynthLib.training import pairs
    from MedSynthLib.training.data import PairDataset, find_volumes, load_volumes, split_volumes

    maker = pairs.make_pair_maker(config.task, config.task_options, crop=config.crop)
    volumes = load_volumes(find_volumes(config.data), pair_maker=maker)
    _, val_volumes = split_volumes(volumes, val_fraction=config.val_fraction, seed=config.seed)
    calls = _record_plane_extraction(monkeypatch)
    dataset = PairDataset(val_volumes, maker, length=config.val_samples, seed=config.seed, augment=0.0, stream=1)
    items = [dataset[i] for i in range(len(dataset))]
    monkeypatch.undo()
    return items, calls


def test_diffusion_fill_validation_psnr_is_what_the_package_gives_on_whole_planes(tiny_data, tmp_path, monkeypatch):
    """The logged PSNR must be the package's, sampled as fill runs it (whole planes), scored on the crops.

    It used to sample each 16x16 (or 32x32) crop on its own: a DDIM sample depends on how much of the plane
    the sampler sees, so the log read -4.7 dB where the package gives 16-19 dB on whole planes.
    """
    from MedSynthLib.models.sampling import ddim_sample
    from MedSynthLib.network_inputs import FILL_CONTEXT, linear_estimate, make_fill_inputs

    config = tiny_config(tiny_data, tmp_path / "run", "fill", "diffusion")
    result = train(config, quiet=True)
    package = load_package(result.package, task="fill")
    items, geometry = _recorded_val_crops(config, monkeypatch)
    assert len(items) == len(geometry) == config.val_samples
    generator = torch.Generator().manual_seed(config.seed)  # validation's noise, drawn in the same order
    errors = []
    for item, (array, axis, indices, center) in zip(items, geometry):
        planes = np.moveaxis(array, axis, 0)[np.clip(indices, 0, array.shape[axis] - 1)].astype(np.float32)
        before, after, target = planes[None, :FILL_CONTEXT], planes[None, FILL_CONTEXT : 2 * FILL_CONTEXT], planes[-1]
        t = float(item["input"][2 * FILL_CONTEXT, 0, 0])
        offsets = item["input"][2 * FILL_CONTEXT + 1 :, 0, 0][None]
        inputs = torch.from_numpy(make_fill_inputs(before, after, t, offsets=offsets))
        sample = ddim_sample(package.network, inputs, scheduler_settings=package.metadata["training"]["scheduler"],
                             steps=config.loss["val_ddim_steps"], generator=generator).numpy()[0, 0]
        filled = sample - 0.5 + linear_estimate(before, after, t)[0]
        crop = tuple(slice(max(int(c) - config.crop // 2, 0), int(c) - config.crop // 2 + config.crop)
                     for a, c in enumerate(center) if a != axis)
        errors.append(float(np.mean((filled[crop] - target[crop]) ** 2)))
    independent = 10 * np.log10(1 / np.mean(errors))
    assert result.best["val_psnr"] == pytest.approx(independent, abs=1e-3)
    assert package.metadata["metrics"]["val_psnr"] == pytest.approx(independent, abs=1e-3)


def test_fill_field_samples_hold_the_crop_they_score(tiny_data):
    from MedSynthLib.training.data import PairDataset, load_volumes
    from MedSynthLib.training.pairs import make_pair_maker

    maker = make_pair_maker("fill", crop=16)
    volumes = load_volumes(sorted((tiny_data / "images").iterdir()), pair_maker=maker)
    crops = PairDataset(volumes, maker, length=12, seed=3, augment=0.0, stream=1)
    for field in (0, 24):
        fields = PairDataset(volumes, maker, length=12, seed=3, augment=0.0, stream=1, field=field)
        for index in range(len(crops)):
            crop, wide = crops[index], fields[index]
            r0, r1, c0, c1 = (int(v) for v in wide["scored"])
            assert wide["target"].shape[-2] >= r1 - r0 and (field == 0 or max(wide["target"].shape[-2:]) <= 24)
            for key in ("input", "target", "base"):
                inside = wide[key][..., r0:r1, c0:c1]
                # the crop's voxels inside the plane (the crop zero-pads the rest)
                matches = [
                    torch.equal(crop[key][..., a : a + r1 - r0, b : b + c1 - c0], inside)
                    for a in range(17 - (r1 - r0)) for b in range(17 - (c1 - c0))
                ]
                assert any(matches), (field, index, key)


def test_val_field_is_refused_where_validation_uses_crops(tiny_data, tmp_path):
    with pytest.raises(InputError, match="val_field"):
        train(tiny_config(tiny_data, tmp_path / "run", "fill", "unet", val_field=64))
    with pytest.raises(InputError, match="val_field must be"):
        train(tiny_config(tiny_data, tmp_path / "run", "fill", "diffusion", val_field=-1))


# --------------------------------------------------------------------------- denoise: recorrupted targets (R2R)


def _smooth_head(shape_kji=(24, 64, 64)) -> np.ndarray:
    """A noise-free head-like image (0 outside an ellipsoid, smooth 100-190 inside)."""
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_kji], indexing="ij")
    r = np.sqrt((i / 0.85) ** 2 + (j / 0.8) ** 2 + (k / 0.95) ** 2)
    return ((r < 1) * (130.0 + 30 * np.sin(3 * i) + 30 * np.cos(2 * j))).astype(np.float64)


def _recorrupt_volumes(modality: str, sigma: float, seed: int = 0):
    """(clean, noisy) raw volumes: MR with Rician magnitude noise, CT (air -1000 HU) with Gaussian noise."""
    from MedSynthLib.volume import Volume

    rng = np.random.default_rng(seed)
    clean = _smooth_head()
    if modality == "CT":
        clean = np.where(clean > 0, clean - 100.0, -1000.0)  # soft tissue 0-90 HU in air
        noisy = clean + rng.normal(0, sigma, clean.shape)
    else:
        noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    matrix = np.diag([1.0, 1.0, 1.0, 1.0])
    return Volume(clean.astype(np.float32), matrix), Volume(noisy.astype(np.float32), matrix)


def test_denoise_recorrupted_options_validate():
    from MedSynthLib.training.pairs import make_pair_maker

    assert make_pair_maker("denoise").options["target"] == "clean"  # existing configs keep clean targets
    make_pair_maker("denoise", {"target": "recorrupted", "alpha": 0.5, "sigma": 0.02})
    for options, message in (({"target": "noisy"}, "target must be"), ({"target": "recorrupted", "alpha": 0}, "alpha"),
                             ({"alpha": "big"}, "alpha"), ({"sigma": -0.1}, "sigma"), ({"sigma": float("nan")}, "sigma")):
        with pytest.raises(InputError, match=message):
            make_pair_maker("denoise", options)


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_denoise_recorrupted_estimates_the_scans_own_noise(modality):
    """The per-volume sigma is the added noise's, in the normalised units the pairs are made in."""
    from MedSynthLib.training.pairs import make_pair_maker

    sigma = 6.0
    _, noisy = _recorrupt_volumes(modality, sigma)
    pair_maker = make_pair_maker("denoise", {"target": "recorrupted"})
    _, info = pair_maker.normalise(noisy)
    expected = sigma / (info["high"] - info["low"])
    assert info["noise_sigma"] == pytest.approx(expected, rel=0.1)
    assert "noise_sigma" not in make_pair_maker("denoise").normalise(noisy)[1]  # clean targets: no estimate
    _, fixed = make_pair_maker("denoise", {"target": "recorrupted", "sigma": 0.03}).normalise(noisy)
    assert fixed["noise_sigma"] == 0.03


def _noise_pairs(target: str, *, alpha: float = 1.0, count: int = 60):
    """(input noise, target noise) of the centre slice over ``count`` CT samples, tissue voxels only."""
    from MedSynthLib.training.data import CachedVolume, _foreground_points
    from MedSynthLib.training.pairs import _choose_axis, extract_planes, make_pair_maker, pick_center

    sigma = 10.0
    clean, noisy = _recorrupt_volumes("CT", sigma)
    pair_maker = make_pair_maker("denoise", {"target": target, "alpha": alpha, "noise": [0.0, 0.0], "rician_probability": 0.0},
                                 crop=32)
    array, info = pair_maker.normalise(noisy)
    clean_normalised = (clean.array - info["low"]) / (info["high"] - info["low"])
    volume = CachedVolume(path=Path("phantom.nii.gz"), array=array, spacing_kji=(1.0, 1.0, 1.0), info=info)
    volume.foreground = _foreground_points(array, 0.5, np.random.default_rng(0))
    inputs, targets = [], []
    for seed in range(count):
        pair = pair_maker.sample(volume, np.random.default_rng(seed))
        replay = np.random.default_rng(seed)  # the same draws locate the crop in the clean volume
        axis = _choose_axis(volume, replay, "all")
        center = pick_center(volume, replay)
        truth = extract_planes(clean_normalised, axis=axis, indices=center[axis] + np.arange(-2, 3), center=center, crop=32)[2]
        shifted = clean.array + 2000.0  # soft tissue 1900-2090, air 1000, zero padding of the crop 0
        tissue = extract_planes(shifted, axis=axis, indices=[center[axis]], center=center, crop=32)[0] > 1500
        inputs.append((pair["input"][2] - truth)[tissue])
        targets.append((pair["target"][0] - truth)[tissue])
    return np.concatenate(inputs), np.concatenate(targets), sigma / (info["high"] - info["low"])


def test_denoise_recorrupted_target_is_unbiased_and_independent_of_the_input_noise():
    """R2R: target noise has mean ~0 and does not correlate with the input noise; clean targets do."""
    alpha = 0.5
    input_noise, target_noise, sigma = _noise_pairs("recorrupted", alpha=alpha)
    assert abs(target_noise.mean()) < 0.05 * sigma
    assert abs(np.corrcoef(input_noise, target_noise)[0, 1]) < 0.03
    assert target_noise.std() == pytest.approx(sigma * np.sqrt(1 + 1 / alpha**2), rel=0.1)
    assert input_noise.std() == pytest.approx(sigma * np.sqrt(1 + alpha**2), rel=0.1)
    # the old targets keep the scan's own noise, which the input shares: the network learns to keep it
    input_noise, target_noise, _ = _noise_pairs("clean", count=20)
    assert np.corrcoef(input_noise, target_noise)[0, 1] > 0.9


def test_denoise_recorrupted_tiny_run_trains(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path / "run", "denoise", "unet", task_options={"target": "recorrupted"},
                         augment=1.0, loss={"ssim_weight": 0.0})
    result = train(config, quiet=True)
    assert np.all(np.isfinite(result.step_losses))
    package = load_package(result.package, task="denoise")
    assert package.metadata["training"]["config"]["task_options"]["target"] == "recorrupted"
