"""Learned lesion appearance: a ``lesion-inpaint`` package paints the inside of a lesion from its mask and the
tissue around it.

The procedural renderer (``_render``) keeps everything that makes the label exact ground truth: the
shape and its occupancy, partial-volume blending, the region of influence, the mean of each labelled
compartment and noise matched to the surrounding tissue. A painter only replaces the procedural texture
model (mean + smooth random field) by what a network trained on real lesions draws there, given the
surrounding tissue: heterogeneous enhancement, internal structure, an edge that looks like the training
lesions' edges.

The package contract is :mod:`MedSynthLib.network_inputs.lesion` (input format ``lesion-inpaint-2.5d``,
version 1), which training uses too: ``2 * context + 1`` slices across the volume's slice axis with the lesion set to 0, then the
centre slice's mask; intensities normalised by the whole volume's 0.5 / 99.5 percentiles; output the centre
slice with the lesion painted in. ``diffusion`` packages sample with DDIM and data consistency outside the
mask (one noise image shared by all slices of a lesion, so the slices agree); ``unet`` / ``gan`` packages
predict directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from ...engine import EngineReport, describe_device, run_slices, select_device
from ...errors import ModelError
from ...intensity import Scale, robust_scale
from ...models.package import LoadedModel, load_package
from ...models.sampling import ddim_sample_batches, package_schedule, size_multiple
from ...network_inputs.lesion import INPAINT_PERCENTILES, check_inpaint_input_spec, make_inpaint_inputs

__all__ = ["LesionPainter", "load_inpaint_model", "make_painter"]

_FAMILIES = ("unet", "gan", "diffusion")
_UNET_MULTIPLE = 16  # BasicUNet (unet/gan families) pools 4 times
_MIN_CONTEXT_PX = 16  # tissue seen around the lesion's bounding box, each side, in-plane


def load_inpaint_model(model: Union[str, Path, LoadedModel]) -> LoadedModel:
    """Load (or accept) a ``lesion-inpaint`` package and check its input convention.

    Raises
    ------
    ModelError
        Not a lesion-inpaint package, a family or input format this MedSynth cannot run.
    """
    loaded = model if isinstance(model, LoadedModel) else load_package(model, task="lesion-inpaint")
    name = loaded.info.name
    if loaded.info.task != "lesion-inpaint":
        raise ModelError(f"model package {name} is a {loaded.info.task!r} model; lesion appearance needs a "
                         "'lesion-inpaint' model (medsynth-train lesion-inpaint)")
    if loaded.info.family not in _FAMILIES:
        raise ModelError(f"model package {name} has family {loaded.info.family!r}; lesion appearance runs "
                         f"{', '.join(_FAMILIES)}")
    check_inpaint_input_spec(loaded.metadata.get("input", {}), name=f"model package {name}")
    if loaded.info.family == "diffusion":
        package_schedule(loaded)  # refuses a package without its noise schedule
    return loaded


@dataclass
class LesionPainter:
    """Paints lesion interiors with one loaded package, on one volume (its normalisation and slice axis).

    Attributes
    ----------
    model : LoadedModel
    scale : Scale
        The whole volume's robust normalisation (the training convention); a crop's own
        percentiles would change with the lesion's surroundings.
    axis : int
        The array axis the 2.5D slices are taken across (the volume's slice axis).
    steps : int
        DDIM steps of a diffusion package (ignored by unet / gan).
    device : str
    engine : EngineReport
        Where the network ran and any out-of-memory fallback, across all lesions.
    """

    model: LoadedModel
    scale: Scale
    axis: int
    steps: int = 20
    device: str = "auto"
    batch_size: int = 16
    engine: EngineReport = field(default_factory=EngineReport)

    @property
    def context(self) -> int:
        return int(self.model.metadata["input"]["context"])

    def describe(self) -> dict:
        """Provenance for the report: package, family, steps, device and engine record."""
        return {
            "name": self.model.info.name,
            "path": str(self.model.info.json_path),
            "family": self.model.info.family,
            "ddim_steps": self.steps if self.model.info.family == "diffusion" else None,
            "slice_axis": "kji"[self.axis],
            "device": describe_device(select_device(self.engine.device_used)),
            "engine": self.engine.as_dict(),
        }

    def paint(self, work: np.ndarray, crop: tuple[slice, slice, slice], mask: np.ndarray, *, seed: int) -> np.ndarray:
        """The crop of ``work`` with the voxels of ``mask`` painted by the model (volume units, float64).

        Parameters
        ----------
        work : ndarray (K, J, I)
            The working window around the lesion (after any mass effect), volume units;
            only read. Its voxels around ``crop`` are the context the model sees.
        crop : 3 slices
            The region (KJI, inside ``work``) the caller renders into; ``mask`` is on it.
        mask : ndarray of bool, shape of the crop
            Where the lesion is (any occupancy): blanked for the model, then painted.
        seed : int
            The lesion's seed: the same seed gives the same painting.

        Returns
        -------
        ndarray, shape of the crop: ``work[crop]`` with the masked voxels replaced.
        """
        if not mask.any():
            return np.array(work[crop], dtype=np.float64)
        axis, c = self.axis, self.context
        # the in-plane box: the mask's bounding box plus context, inside the window
        starts = [s.start for s in crop]
        box = []
        for a in range(3):
            hit = np.flatnonzero(np.moveaxis(mask, a, 0).reshape(mask.shape[a], -1).any(axis=1))
            lo, hi = starts[a] + int(hit[0]), starts[a] + int(hit[-1]) + 1
            if a != axis:
                lo, hi = max(0, lo - _MIN_CONTEXT_PX), min(work.shape[a], hi + _MIN_CONTEXT_PX)
            box.append(slice(lo, hi))
        full_mask = np.zeros(work.shape, bool)
        full_mask[crop] = mask
        # slices across the axis: the lesion's planes and their context (edge planes repeat)
        moved = np.moveaxis(work, axis, 0)
        moved_mask = np.moveaxis(full_mask, axis, 0)
        plane = tuple(box[a] for a in range(3) if a != axis)
        centres = np.arange(box[axis].start, box[axis].stop)
        offsets = np.arange(-c, c + 1)
        index = np.clip(centres[:, None] + offsets[None, :], 0, moved.shape[0] - 1)  # (N, 2c+1)
        planes = self.scale.forward(moved[(slice(None),) + plane][index])  # (N, 2c+1, H, W)
        masks = moved_mask[(slice(None),) + plane][index]
        inputs = make_inpaint_inputs(planes, masks, context=c)
        centre_mask = inputs[:, -1:]
        painted = self._run(inputs, planes[:, c : c + 1], centre_mask, seed=seed)[:, 0]  # (N, H, W)
        # within the range the model was trained on (the volume's 0.5-99.5 percentiles): a poorly trained
        # package cannot push values so far that clipping to the valid range would shift the lesion's mean
        values = self.scale.inverse(np.clip(painted, 0.0, 1.0))
        # write the painted planes back where the mask is
        result = np.array(moved, dtype=np.float64, copy=True)
        where = (slice(box[axis].start, box[axis].stop),) + plane
        region = result[where]  # a view
        region[moved_mask[where]] = values[moved_mask[where]]
        return np.moveaxis(result, 0, axis)[crop].copy()

    def _run(self, inputs: np.ndarray, known: np.ndarray, centre_mask: np.ndarray, *, seed: int) -> np.ndarray:
        """The network's centre slices (N, 1, H, W), normalised units (inputs padded to the network's multiple)."""
        diffusion = self.model.info.family == "diffusion"
        multiple = _UNET_MULTIPLE
        if diffusion:  # at least what its downsamplings need (deeper networks than the default need more)
            multiple = max(multiple, size_multiple(self.model.metadata["builder_args"].get("channels", (32, 64, 64))))
        height, width = inputs.shape[2:]
        pad = ((0, 0), (0, 0), (0, (-height) % multiple), (0, (-width) % multiple))
        # edge values: the model sees more of the same tissue, not a black border; padding is never painted
        condition = np.pad(inputs, pad, mode="edge")
        if diffusion:
            sample = ddim_sample_batches(
                self.model.network, condition, scheduler_settings=package_schedule(self.model),
                steps=self.steps, seed=seed, device=self.device, batch_size=self.batch_size,
                known=np.pad(known, pad, mode="edge"), known_mask=1.0 - np.pad(centre_mask, pad),
                multiple=multiple, report_to=self.engine)
        else:
            sample = run_slices(self.model.network, condition, device=self.device, batch_size=self.batch_size,
                                amp=True, report_to=self.engine)
        return sample[:, :, :height, :width]


def make_painter(volume_array: np.ndarray, model: Union[str, Path, LoadedModel], *, slice_axis: int,
                 steps: int = 20, device: str = "auto") -> LesionPainter:
    """A painter for one volume: loads and checks the package, fixes the volume's normalisation.

    Raises
    ------
    ModelError
        See :func:`load_inpaint_model`.
    DeviceError
        ``device`` names a device that is not present.
    """
    loaded = load_inpaint_model(model)
    select_device(device)  # a missing device fails before any work
    spec = loaded.metadata["input"].get("normalisation", {})
    percentiles = tuple(spec.get("percentiles", INPAINT_PERCENTILES))
    return LesionPainter(model=loaded, scale=robust_scale(volume_array, percentiles=percentiles), axis=int(slice_axis),
                         steps=int(steps), device=device)
