"""Pair makers of the two lesion tasks: appearance (``lesion-inpaint``, 2.5D) and shape (``lesion-shape``, 3D VAE).

The inpainting input is :mod:`MedSynthLib.network_inputs.lesion`'s, the one the lesion task's painter builds.
"""

from __future__ import annotations

import numpy as np

from ..network_inputs.lesion import inpaint_input_spec, make_inpaint_inputs
from ..volume import Volume
from .pairs_base import PairMaker, _apply, extract_planes, pick_center

__all__ = ["LesionInpaintPairs", "LesionShapePairs"]


# --------------------------------------------------------------------------- lesion inpainting


class LesionInpaintPairs(PairMaker):
    """Lesion appearance from a mask and the surrounding tissue (2.5D).

    A sample is centred on a labelled lesion voxel; the lesion (slightly dilated
    or eroded at random, so the model does not learn the exact outline) is
    blanked in the centre slice and its ``context`` neighbours. Input channels:
    the blanked planes, then the centre mask; target: the centre slice. The loss
    weights the mask 1 and the rest ``outside_weight``.
    """

    task = "lesion-inpaint"
    families = ("unet", "gan", "diffusion")
    needs_labels = True
    defaults = {"context": 1, "outside_weight": 0.1, "lesion_probability": 0.95}

    @property
    def context(self) -> int:
        return int(self.options["context"])

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 2

    def sample(self, volume, rng, *, intensity=None, spatial=None, transform_seed=0):
        from scipy import ndimage

        c = self.context
        axis = int(np.argmax(volume.spacing_kji)) if rng.random() < 0.5 else int(rng.integers(3))
        center = pick_center(volume, rng, prefer="lesion", probability=float(self.options["lesion_probability"]))
        indices = center[axis] + np.arange(-c, c + 1)
        planes = extract_planes(volume.array, axis=axis, indices=indices, center=center, crop=self.crop)
        masks = extract_planes(volume.label.astype(np.float32), axis=axis, indices=indices, center=center, crop=self.crop)
        masks = masks > 0.5
        change = int(rng.integers(-1, 3))
        if change > 0:
            masks = np.stack([ndimage.binary_dilation(m, iterations=change) for m in masks])
        elif change < 0:
            eroded = np.stack([ndimage.binary_erosion(m) for m in masks])
            masks = eroded if eroded[c].any() else masks
        planes = _apply(intensity, planes, transform_seed)
        both = _apply(spatial, np.concatenate([planes, masks.astype(np.float32)]), transform_seed + 1)
        planes, masks = both[: 2 * c + 1], both[2 * c + 1 :] > 0.5
        inputs = make_inpaint_inputs(planes[None], masks[None], context=c)[0]
        mask = inputs[-1:]
        weight = np.where(mask > 0, 1.0, float(self.options["outside_weight"])).astype(np.float32)
        return {"input": inputs, "target": planes[c : c + 1], "weight": weight}

    def input_spec(self) -> dict:
        return inpaint_input_spec(context=self.context, crop=self.crop)

    def known(self, batch: dict):
        mask = batch["input"][:, -1:]
        centre = batch["input"][:, self.context : self.context + 1]
        return centre, 1.0 - mask


# --------------------------------------------------------------------------- lesion shapes


class LesionShapePairs(PairMaker):
    """3D lesion masks resampled to an isotropic patch, randomly rotated and scaled (VAE input = target).

    Lesions come from the label maps; each patch is resampled from the label's
    physical grid (so thick-slice scans give correctly proportioned shapes) at
    ``voxel_mm`` with a random rotation and scale, centred near the lesion's
    centre of mass plus a small jitter.
    """

    task = "lesion-shape"
    families = ("vae",)
    needs_labels = True
    spatial_dims = 3
    intensity_augment = False
    target_kind = "mask"
    defaults = {"voxel_mm": 1.0, "scale": [0.7, 1.4], "jitter_mm": 2.0}

    @property
    def in_channels(self) -> int:
        return 1

    def normalise(self, volume: Volume) -> tuple[np.ndarray, dict]:
        # shapes only: the image is not used; keep a tiny placeholder to save memory
        return np.zeros((1, 1, 1), dtype=np.float32), {}

    def sample(self, volume, rng, *, intensity=None, spatial=None, transform_seed=0):
        from scipy import ndimage

        lesions = volume.info.get("lesions")
        if lesions is None:  # once per volume (and worker): each lesion's bounding block and centre
            components, count = ndimage.label(volume.label)
            lesions = []
            for which, box in enumerate(ndimage.find_objects(components), start=1):
                mask = (components[box] == which).astype(np.float32)
                lesions.append((mask, np.array(ndimage.center_of_mass(mask))))
            volume.info["lesions"] = lesions
        mask, centre = lesions[int(rng.integers(len(lesions)))]
        spacing = np.asarray(volume.spacing_kji)
        rotation = _rotation(rng.uniform(-np.pi, np.pi, 3))
        scale = float(np.exp(rng.uniform(*np.log(self.options["scale"]))))
        n = self.crop
        grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2] * 3, indexing="ij"), -1).reshape(-1, 3)
        millimetres = grid * float(self.options["voxel_mm"]) / scale
        jitter = rng.normal(0, float(self.options["jitter_mm"]), 3)
        voxels = (millimetres @ rotation.T + jitter) / spacing + centre  # in the lesion's block
        patch = ndimage.map_coordinates(mask, voxels.T, order=1, mode="constant")
        patch = (patch.reshape(n, n, n) > 0.5).astype(np.float32)[None]
        patch = _apply(spatial, patch, transform_seed + 1)
        return {"input": patch, "target": patch.copy(), "weight": np.ones_like(patch)}

    def input_spec(self) -> dict:
        return {
            "format": "lesion-shape-3d",
            "version": 1,
            "channels": 1,
            "patch": self.crop,
            "voxel_mm": float(self.options["voxel_mm"]),
            "layout": "N, 1, D, H, W binary lesion mask, isotropic voxel_mm, lesion centred",
            "output": "reconstruction logits (sigmoid > 0.5 is the mask); decode N(0, I) latents to sample new shapes",
        }


def _rotation(angles: np.ndarray) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx
