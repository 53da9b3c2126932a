"""Fixtures shared by the test suite: small phantoms on oblique, anisotropic grids, and the real scans."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from MedSynthLib.volume import Volume

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLE_DIR = REPO / "Resources" / "SampleData"


def oblique_matrix(spacing=(0.8, 0.9, 3.0), origin=(-12.5, 30.25, 4.0), angles=(0.3, -0.2, 0.45)) -> np.ndarray:
    """IJK-to-RAS with a rotation about all three axes, anisotropic spacing and a non-zero origin."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def make_phantom(shape_kji=(12, 40, 48), *, dtype=np.float32, seed=0, matrix=None) -> Volume:
    """A smooth head-like phantom: ellipsoid 'brain' with an inner 'ventricle' and mild noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_kji], indexing="ij")
    r = np.sqrt((i / 0.85) ** 2 + (j / 0.8) ** 2 + (k / 0.95) ** 2)
    image = 100.0 * (r < 1) + 60.0 * ((r < 0.35)) + 30 * np.sin(3 * i) * (r < 1)
    image = image + rng.normal(0, 2.0, size=shape_kji)
    image = np.clip(image, 0, None)
    if np.dtype(dtype).kind in "iu":
        image = np.round(image)
    return Volume(image.astype(dtype), oblique_matrix() if matrix is None else matrix)


@pytest.fixture
def oblique_volume() -> Volume:
    return make_phantom()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real scans not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Training data for tiny medsynth-train runs: two oblique, anisotropic phantoms (``images/``) with
    lesion-like label maps on the same grids (``labels/``). Read only."""
    from MedSynthLib.io import write_volume

    root = tmp_path_factory.mktemp("train_data")
    for seed in range(2):
        volume = make_phantom((12, 40, 48), seed=seed)
        write_volume(volume, root / "images" / f"case{seed}.nii.gz")
        label = (volume.array > 150).astype(np.uint8)
        write_volume(volume.with_array(label), root / "labels" / f"case{seed}.nii.gz")
    return root


@pytest.fixture(scope="session")
def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def damaged_fill_package(tmp_path) -> Path:
    """A copy of the bundled fill_default whose 4,000 bytes after the safetensors header are zeroed: same size,
    still parses; only its checksum tells. Returns the package's JSON path."""
    import shutil
    import struct

    from MedSynthLib.models import BUNDLED_DIR

    folder = tmp_path / "damaged"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(BUNDLED_DIR / f"fill_default{suffix}", folder / f"fill_default{suffix}")
    weights = folder / "fill_default.safetensors"
    data = bytearray(weights.read_bytes())
    start = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
    data[start:start + 4000] = bytes(4000)
    weights.write_bytes(bytes(data))
    return folder / "fill_default.json"


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: small tensors run faster so on a shared, busy CPU, and the tasks must
    never use more than the caller allows."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(capsys, *argv) -> tuple[int, str]:
    """``medsynth -q ARGV`` in this process: (exit code, stderr stripped)."""
    from MedSynthLib.cli import main

    code = main(["-q", *map(str, argv)])
    return code, capsys.readouterr().err.strip()


def one_line(err: str) -> str:
    """``err``, asserted to be one line and no traceback (what every refusal of the command line prints)."""
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def write_dicom_series(folder: Path, planes, positions) -> Path:
    """One CT slice file per 2D SimpleITK image of ``planes``, at ``positions`` ((x, y, z) mm, LPS) with axial
    orientation, one series, as a scanner writes them; returns ``folder``."""
    import SimpleITK as sitk

    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, (plane, position) in enumerate(zip(planes, positions)):
        for tag, value in {
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.2.{k + 1}",
            "0020|0032": "\\".join(str(x) for x in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0008|0060": "CT",
        }.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    return folder
