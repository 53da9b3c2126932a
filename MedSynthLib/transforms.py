"""MONAI transforms: synthetic lesions with exact masks, on the fly inside a training pipeline.

:class:`RandSyntheticLesiond` inserts lesions (:func:`~MedSynthLib.tasks.lesion.insert_lesions`)
into an image ``MetaTensor`` and writes their mask into its label, so a segmenter
sees real and synthetic lesions mixed. It reads the voxel-to-world affine from
the tensor's meta, so lesion sizes in mm and RAS placement stay right after
MONAI's own ``Orientationd`` / ``Spacingd``; it draws everything from MONAI's
random state, so ``set_determinism`` and a ``DataLoader`` with workers give the
same batches for the same seed. Importing this module imports MONAI.
"""

from __future__ import annotations

import logging
from typing import Any, Hashable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

from .errors import InputError
from .reports import to_json
from .tasks.lesion import LesionOptions
from .volume import Volume

__all__ = ["RandSyntheticLesiond", "META_KEY", "TRANSFORM_LESION"]

logger = logging.getLogger(__name__)

#: Meta-dict key (image and label) holding a JSON record of what the transform did.
META_KEY = "medsynth_synthetic_lesions"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: The transform's lesion options unless given: one lesion per sample, 2 mm apart (patches are small).
TRANSFORM_LESION = {"count": 1, "min_spacing_mm": 2.0}


def _coarse_auto_region(image: Volume, options: LesionOptions) -> Optional[np.ndarray]:
    """The automatic region of ``options`` (``LesionOptions.region_tissue``: white matter on MR, lungs on CT, or
    the preset's or named tissue) found at half resolution.

    Finding the region costs about 0.3 s on a 128^3 patch at full resolution, more than the lesion itself; it
    only decides where centres may go, so a 2x coarser grid (8x fewer voxels) is as good a guide. None when
    nothing is found (``insert_lesions`` then looks at full resolution and says why if it fails too).
    """
    from .intensity import guess_modality
    from .tasks.lesion import auto_region

    tissue = options.region_tissue(options.modality or guess_modality(image))
    matrix = image.ijk_to_ras.copy()
    matrix[:3, :3] *= 2.0
    coarse = Volume(np.ascontiguousarray(image.array[::2, ::2, ::2]), matrix)
    try:
        small = auto_region(coarse, tissue)
    except InputError:
        return None
    full = small.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    return np.ascontiguousarray(full[tuple(slice(0, n) for n in image.array.shape)])


def _ras_affine(image: Any) -> np.ndarray:
    """The (x, y, z) voxel index to RAS mm affine of a MetaTensor (LPS meta converted); identity otherwise."""
    if not isinstance(image, MetaTensor):
        return np.eye(4)
    affine = np.asarray(image.affine, dtype=np.float64)
    space = str(image.meta.get("space", "RAS")).upper()
    return _LPS_TO_RAS @ affine if space.endswith("LPS") else affine


#: MONAI arrays are (x, y, z); MedSynth arrays are (k, j, i). Read an (x, y, z) array as MedSynth's array
#: directly (no transposed copy: 30 ms per 128^3 array) by swapping the affine's first and third columns.
#: Windows tried (each around a new random point) before the whole patch.
_WINDOW_TRIES = 2
_SWAP_IK = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def _volume(tensor: Any, affine: np.ndarray, name: str) -> Volume:
    """The one channel of ``tensor`` as a Volume on the same voxels (array shared, not copied)."""
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    if array.ndim != 4 or array.shape[0] != 1:
        raise InputError(f"RandSyntheticLesiond needs {name} as one channel, shape (1, X, Y, Z), got {array.shape}")
    return Volume(array[0], affine @ _SWAP_IK)


def _put(like: Any, array: np.ndarray) -> Any:
    """``like`` (tensor or array, channel first) holding ``array`` (x, y, z) as its channel, meta and dtype kept."""
    if isinstance(like, torch.Tensor):
        out = like.clone()
        out[0] = torch.from_numpy(np.ascontiguousarray(array)).to(dtype=out.dtype, device=out.device)
        return out
    return np.asarray(array, dtype=np.asarray(like).dtype)[None]


def _mask_like(image: Any, mask: np.ndarray) -> Any:
    """A uint8 channel-first mask on ``image``'s grid (a MetaTensor with its meta when ``image`` is one)."""
    values = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None]
    if isinstance(image, MetaTensor):
        return MetaTensor(values, affine=image.affine.clone(), meta={k: v for k, v in image.meta.items() if k != "affine"})
    return values if isinstance(image, torch.Tensor) else values.numpy()


def _record(item: Any, record: str) -> None:
    if isinstance(item, MetaTensor):
        item.meta[META_KEY] = record


class RandSyntheticLesiond(RandomizableTransform, MapTransform):
    """Randomly insert synthetic lesions into ``keys[0]`` and their mask into ``keys[1]``.

    Parameters
    ----------
    keys : (image key, label key)
        Channel-first one-channel tensors (``MetaTensor``: its affine is used; a plain
        tensor is taken as 1 mm voxels). The label key may be absent from ``keys`` when ``mask_key`` is given.
    prob : float
        Chance that a sample gets lesions.
    region : "auto" or a key
        Where lesions may go: ``"auto"`` (the options' automatic region: the preset's tissue, white matter on
        MR, lungs on CT, or the tissue named by the ``region`` option) or the key of a mask in the data dict
        (faster, and right for patches: a brain or organ mask).
    lesion_label : int
        Class id of the synthetic lesion in the label (default 1: the class of real lesions,
        so real and synthetic lesions train one class). Existing labels are kept (moved
        with any mass effect) and the lesion (with its core) is written on top.
    mask_key : str, optional
        Write the lesion mask (0/1) to this key instead, leaving the label as it is.
    options : LesionOptions or mapping, optional
        The lesions (:class:`~MedSynthLib.tasks.lesion.LesionOptions`, as ``insert_lesions`` takes them);
        a mapping goes on top of :data:`TRANSFORM_LESION` (one lesion, 2 mm apart).
    **knobs
        Fields of ``LesionOptions`` on top of ``options``: ``preset`` (its modality is checked, so apply CT
        presets before intensity scaling: the image in HU; ``"auto"``: by modality), ``count``, ``size_mm``,
        ``contrast``, ``min_spacing_mm``, ``modality``, ``shape_model``, ``appearance_model``...
        Built and checked once, here: a bad or unknown option raises :class:`~MedSynthLib.errors.InputError`
        at construction, as ``insert_lesions`` and ``augment`` refuse it.

    Notes
    -----
    The cost is bounded on patches when the region is a mask: lesions are placed in a window
    half the patch along each axis (at least 48 voxels) around a random voxel of the region;
    two windows are tried, then the whole patch. Nothing outside the window used changes.
    ``"auto"`` finds its region once per patch at half resolution (it only guides placement), then
    places as with a mask (measured in ``docs/lesion.md``).
    A sample where the lesions cannot be placed (patch without room in the region) is
    returned unchanged, with the reason in its meta record; the first such case is logged.
    The record (``meta["medsynth_synthetic_lesions"]``, JSON) holds ``applied``, ``seed``,
    ``preset``, ``window_xyz`` (voxel ranges of the window in the tensor's x, y, z), the resolved specs and the lesion volumes in mL.
    """

    def __init__(self, keys: Sequence[Hashable] = ("image", "label"), *, prob: float = 0.5, region: str = "auto",
                 lesion_label: int = 1, mask_key: Optional[str] = None,
                 options: Union[LesionOptions, Mapping[str, Any], None] = None, **knobs: Any) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) not in (1, 2) or (len(self.keys) == 1 and mask_key is None):
            raise InputError("keys must be (image key, label key), or (image key,) with mask_key")
        if not isinstance(options, LesionOptions):
            given = {**dict(options or {}), **knobs}
            placed = given.get("specs") is not None or given.get("centres") is not None
            options = {**({} if placed else TRANSFORM_LESION), **dict(options or {})}
        self.options = LesionOptions.build(options, **knobs)
        if self.options.count is None:
            raise InputError("RandSyntheticLesiond places lesions at random in every sample: give count, "
                             "not specs or centres")
        self.region, self.lesion_label, self.mask_key = region, int(lesion_label), mask_key
        self._warned = False

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(0, 2**31 - 1))  # drawn every time: the stream does not depend on prob

    def _windows(self, shape: tuple, mask: Optional[np.ndarray]) -> list[tuple]:
        """Where to try: windows half the patch along each axis (at least 48 voxels) around random region
        voxels, then the whole patch; the cost follows the window, not the patch."""
        full = tuple(slice(0, n) for n in shape)
        sides = [min(n, max(48, n // 2)) for n in shape]
        inside = None if mask is None else np.flatnonzero(mask)
        if sides == list(shape) or inside is None or not inside.size:
            return [full]
        rng = np.random.default_rng([self._seed, 1])
        windows = []
        for _ in range(_WINDOW_TRIES):
            centre = np.unravel_index(int(inside[rng.integers(len(inside))]), shape)
            starts = [int(np.clip(c - side // 2, 0, n - side)) for c, side, n in zip(centre, sides, shape)]
            windows.append(tuple(slice(a, a + side) for a, side in zip(starts, sides)))
        return windows + [full]

    def _insert(self, data: dict, image: Volume, labels: Optional[Volume]):
        from .tasks.lesion import insert_lesions

        if self.region != "auto":
            mask = _volume(data[self.region], np.eye(4), f"region {self.region!r}").array != 0
        else:
            mask = _coarse_auto_region(image, self.options)
        error: Optional[InputError] = None
        for window in self._windows(image.array.shape, mask):
            changes: dict[str, Any] = {"seed": self._seed, "labels": None if labels is None else labels.crop(window)}
            if mask is not None:
                changes["region"] = mask[window]
            try:
                return insert_lesions(image.crop(window), self.options, **changes), window
            except InputError as failure:  # no room in the window: the whole patch next
                error = failure
        raise error  # type: ignore[misc]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        self.randomize()
        image_key = self.keys[0]
        label_key = self.keys[1] if len(self.keys) == 2 else None
        record: dict[str, Any] = {"applied": False, "seed": self._seed, "preset": self.options.preset}
        affine = _ras_affine(d[image_key])
        image = _volume(d[image_key], affine, f"image {image_key!r}")
        labels = None if label_key is None else _volume(d[label_key], affine, "label")
        lesion = np.zeros(image.array.shape, bool)
        if self._do_transform:
            try:
                result, window = self._insert(d, image, labels)
            except InputError as error:
                record["skipped"] = str(error)
                if not self._warned:
                    logger.warning("RandSyntheticLesiond: sample left without lesions: %s", error)
                    self._warned = True
            else:
                self._paste(d, image_key, label_key, image, labels, result, window, lesion)
                record.update(applied=True, window_xyz=[[w.start, w.stop] for w in window],
                              specs=[s.as_dict() for s in result.specs],
                              volumes_ml=[entry["volume_ml"] for entry in result.report["lesions"]])
        if self.mask_key:
            d[self.mask_key] = _mask_like(d[image_key], lesion)
        text = to_json(record, separators=(",", ":"))
        for key in (image_key, label_key, self.mask_key):
            if key is not None:
                _record(d[key], text)
        return d

    def _paste(self, d: dict, image_key: Hashable, label_key: Optional[Hashable], image: Volume,
               labels: Optional[Volume], result, window: tuple, lesion: np.ndarray) -> None:
        """Write the window's result into the sample (image; label: existing ids moved, lesion on top)."""
        array = image.array.copy()
        array[window] = result.volume.array
        d[image_key] = _put(d[image_key], array)
        lesion[window] = np.isin(result.labels.array, (1, 2))
        if labels is not None:
            kept = labels.array.copy()
            kept[window] = result.moved_labels.array  # existing labels, moved with any mass effect
            if not self.mask_key:
                kept[lesion] = self.lesion_label
            d[label_key] = _put(d[label_key], kept)
