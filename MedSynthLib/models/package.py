"""Model packages: ``NAME.safetensors`` (weights) beside ``NAME.json`` (everything else).

Safetensors holds raw tensors only, and the JSON names a registered network
builder, so loading a package never executes code from the file: no pickle in
the distribution format. Loading validates the format version, the task, the
builder and every tensor's name and shape, and refuses a mismatch with a
message that says what is wrong.

JSON keys (format version 1)::

    format_version  1
    name            package name (the file stem)
    task            "fill" | "denoise" | "lesion-shape" | "lesion-inpaint" | ...
    family          "unet" | "gan" | "vae" | "diffusion"
    builder         a name registered in MedSynthLib.models.networks
    builder_args    keyword arguments of the builder
    input           task-specific input spec (context slices, channels, normalisation)
    training        provenance: command, config, data, seed, epochs, versions
    metrics         validation metrics
    description     one line shown in the panel and `medsynth models`
    weights_sha256  SHA-256 of NAME.safetensors (hex), verified before the weights are used

A package written before the checksum existed loads with a warning; one whose
weights do not match their checksum is refused (a damaged download or copy
otherwise loads and computes a wrong result without any sign).
:func:`check_packages` gives every package found with what is wrong with it, for ``medsynth models``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from ..errors import ModelError
from ..reports import to_json
from .networks import build_network

__all__ = [
    "FORMAT_VERSION",
    "BUNDLED_DIR",
    "PackageInfo",
    "PackageCheck",
    "LoadedModel",
    "save_package",
    "read_package_info",
    "load_package",
    "list_packages",
    "check_packages",
    "bundled_package",
    "weights_sha256",
    "weights_problem",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
_REQUIRED = ("format_version", "name", "task", "family", "builder", "builder_args", "input")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class PackageInfo:
    """A package's metadata, read from its JSON without loading weights."""

    json_path: Path
    metadata: dict

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def task(self) -> str:
        return str(self.metadata["task"])

    @property
    def family(self) -> str:
        return str(self.metadata["family"])

    @property
    def weights_path(self) -> Path:
        return self.json_path.with_suffix(".safetensors")

    @property
    def bundled(self) -> bool:
        return self.json_path.parent.resolve() == BUNDLED_DIR


@dataclass
class LoadedModel:
    """A validated package: the network with its weights (eval mode, on the CPU) and its metadata."""

    network: torch.nn.Module
    info: PackageInfo

    @property
    def metadata(self) -> dict:
        return self.info.metadata


def _json_path(path: PathLike) -> Path:
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix(".json")
    return path.with_name(path.name + ".json")


def save_package(
    network: torch.nn.Module,
    path: PathLike,
    *,
    task: str,
    family: str,
    builder: str,
    builder_args: dict,
    input_spec: dict,
    training: Optional[dict] = None,
    metrics: Optional[dict] = None,
    description: str = "",
) -> Path:
    """Write ``network``'s weights and metadata as a package; returns the JSON path.

    ``path`` is the JSON path or the stem (``out/fill_default`` writes
    ``out/fill_default.json`` and ``out/fill_default.safetensors``).
    """
    from safetensors.torch import save_file

    json_path = _json_path(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format_version": FORMAT_VERSION,
        "name": json_path.stem,
        "task": task,
        "family": family,
        "builder": builder,
        "builder_args": builder_args,
        "input": input_spec,
        "training": training or {},
        "metrics": metrics or {},
        "description": description,
    }
    json.dumps(metadata)  # fail before writing anything if metadata is not JSON
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    weights = json_path.with_suffix(".safetensors")
    save_file(state, str(weights), metadata={"format": "pt"})
    metadata["weights_sha256"] = weights_sha256(weights)
    json_path.write_text(to_json(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")  # strict: no NaN
    return json_path


def weights_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a weights file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safetensors_size(path: Path) -> Optional[str]:
    """Why ``path`` is shorter than its own safetensors header says (8 bytes of length, the JSON header, then the
    tensors up to the largest ``data_offsets`` end), or None; reads the header only."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        start = stream.read(9)
        if len(start) < 9 or start[8:9] != b"{":
            return f"its weights file {path.name} is not a valid safetensors file (it does not start with one's header)"
        length = int.from_bytes(start[:8], "little")
        if 8 + length > size:
            return f"its weights file {path.name} is truncated ({size:,} bytes, shorter than its own header)"
        try:
            header = json.loads(start[8:] + stream.read(length - 1))
            end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"),
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"its weights file {path.name} is not a valid safetensors file (its header cannot be read)"
    if 8 + length + end > size:
        return (f"its weights file {path.name} is truncated (its header promises {8 + length + end:,} bytes, "
                f"{size:,} are there)")
    return None


def weights_problem(info: PackageInfo) -> Optional[str]:
    """Why ``info``'s weights file cannot be used as its JSON describes it (missing, truncated, another SHA-256), or None.

    The file's length is compared with what its own safetensors header says first, so a truncated
    file is named without reading it; then its SHA-256 with the recorded one (about 0.5 s per GB).
    A package that records no checksum is not called damaged (:func:`load_package` warns).
    """
    path = info.weights_path
    if not path.is_file():
        return f"its weights file {path.name} is missing"
    expected = info.metadata.get("weights_sha256")
    try:
        problem = _safetensors_size(path)
        if problem is not None or expected is None:
            return problem
        actual = weights_sha256(path)
    except OSError as error:
        return f"cannot read {path}: {error.strerror or error}"
    if actual != str(expected).lower():
        return (f"{path} is damaged or was replaced (its SHA-256 {actual[:12]}... differs from the "
                f"{str(expected)[:12]}... recorded in {info.json_path.name}); copy or download it again")
    return None


def _verify_weights(info: PackageInfo) -> None:
    """Refuse weights that are missing, truncated, or whose SHA-256 differs from the one the package's JSON records."""
    if info.metadata.get("weights_sha256") is None:
        log.warning("model package %s records no weights checksum (written before MedSynth recorded one); "
                    "its weights cannot be verified", info.name)
    problem = weights_problem(info)
    if problem is not None:
        raise ModelError(f"model package {info.name}: {problem}")


def read_package_info(path: PathLike) -> PackageInfo:
    """Read and check a package's JSON (no weights loaded)."""
    json_path = _json_path(path)
    if not json_path.is_file():
        raise ModelError(f"model package not found: {json_path}")
    try:
        metadata = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"model package {json_path.name} has unreadable metadata: {error}") from None
    if not isinstance(metadata, dict):
        raise ModelError(f"model package {json_path.name}: metadata must be a JSON object")
    missing = [key for key in _REQUIRED if key not in metadata]
    if missing:
        raise ModelError(f"model package {json_path.name} lacks {', '.join(missing)} in its metadata")
    if metadata["format_version"] != FORMAT_VERSION:
        raise ModelError(
            f"model package {json_path.name} has format version {metadata['format_version']}; "
            f"this MedSynth reads version {FORMAT_VERSION}: update MedSynth or re-export the model"
        )
    if not isinstance(metadata["builder_args"], dict) or not isinstance(metadata["input"], dict):
        raise ModelError(f"model package {json_path.name}: builder_args and input must be JSON objects")
    return PackageInfo(json_path=json_path, metadata=metadata)


def load_package(path: PathLike, *, task: Optional[str] = None) -> LoadedModel:
    """Load and validate a package; the network comes back in eval mode on the CPU.

    Raises
    ------
    ModelError
        Missing files, wrong format version or task, unknown builder, weights
        whose SHA-256 differs from the recorded one, or weights whose names or
        shapes do not match the network the metadata describes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = read_package_info(path)
    if task is not None and info.task != task:
        raise ModelError(f"model package {info.name} is a {info.task!r} model; this needs a {task!r} model")
    if not info.weights_path.is_file():
        raise ModelError(f"model package {info.name}: weights file {info.weights_path.name} is missing")
    _verify_weights(info)
    network = build_network(info.metadata["builder"], **info.metadata["builder_args"])
    try:
        state = load_file(str(info.weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"model package {info.name}: {info.weights_path.name} is not a valid safetensors file ({error})") from None
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"model package {info.name}: weights do not match the network "
            f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelError(
                f"model package {info.name}: tensor {key} has shape {tuple(state[key].shape)}, "
                f"the network needs {tuple(tensor.shape)}"
            )
    network.load_state_dict(state, strict=True)
    network.eval()
    return LoadedModel(network=network, info=info)


def list_packages(extra_dirs: Iterable[PathLike] = (), *, task: Optional[str] = None) -> list[PackageInfo]:
    """Bundled packages plus those in ``extra_dirs``; unreadable ones are skipped."""
    infos: list[PackageInfo] = []
    for folder in (BUNDLED_DIR, *map(Path, extra_dirs)):
        if not folder.is_dir():
            continue
        for json_path in sorted(folder.glob("*.json")):
            if not json_path.with_suffix(".safetensors").is_file():
                continue
            try:
                info = read_package_info(json_path)
            except ModelError:
                continue
            if task is None or info.task == task:
                infos.append(info)
    return infos


@dataclass(frozen=True)
class PackageCheck:
    """A package found by :func:`check_packages`: its JSON, its metadata (None if unreadable) and what is wrong."""

    json_path: Path
    info: Optional[PackageInfo]
    problem: Optional[str]  # None: the weights are those the JSON records

    @property
    def name(self) -> str:
        return self.info.name if self.info is not None else self.json_path.stem


def check_packages(extra_dirs: Iterable[PathLike] = (), *, task: Optional[str] = None) -> list[PackageCheck]:
    """Every package in the bundled folder and ``extra_dirs``, each with its weights checked (size, then SHA-256).

    Unlike :func:`list_packages`, a package with missing or damaged weights, or with metadata that cannot be
    read beside a weights file, is listed with its problem instead of being left out. A JSON file with neither
    package metadata nor a weights file beside it is not a package and is skipped.
    """
    checks: list[PackageCheck] = []
    for folder in (BUNDLED_DIR, *map(Path, extra_dirs)):
        if not folder.is_dir():
            continue
        for json_path in sorted(folder.glob("*.json")):
            try:
                info = read_package_info(json_path)
            except ModelError as error:
                if json_path.with_suffix(".safetensors").is_file():
                    checks.append(PackageCheck(json_path, None, str(error)))
                continue
            if task is None or info.task == task:
                checks.append(PackageCheck(json_path, info, weights_problem(info)))
    return checks


def bundled_package(task: str) -> Optional[Path]:
    """The JSON path of the bundled default package of ``task`` (``TASK_default``), or None if not shipped.

    The tasks' ``model``/``auto`` methods use it when the user names no package.
    """
    json_path = BUNDLED_DIR / f"{task.replace('-', '_')}_default.json"
    if json_path.is_file() and json_path.with_suffix(".safetensors").is_file():
        return json_path
    return None
