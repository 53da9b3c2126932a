"""Block-matching collaborative filtering (the BM3D/BM4D scheme, Dabov et al. 2007, Maggioni et al. 2013).

Why: the sliding DCT (:mod:`._dct`) only uses the voxels of one block, so it cannot average away noise that
looks like texture inside it; a brain repeats the same tissue boundary many times within a few voxels.
Grouping each reference block with its ``group`` most similar blocks in a ``(2 search + 1)^3`` window and
filtering the stack in a 4D transform (3D DCT of every block, then an orthonormal DCT across the group)
concentrates what the blocks share into few coefficients; what they do not share is noise. Two stages as in
:mod:`._dct`: hard threshold with groups found on the noisy data, then an empirical Wiener filter with the
groups found on the first estimate (where matching is not fooled by the noise).

The published choices (block 4^3 at a stride of 3, 16 blocks a group, threshold 2.7 sigma) are used as they
are; the reference blocks are processed a slab at a time (:data:`CHUNK_VALUES`). Torch on the CPU (the
threads of :func:`~MedSynthLib.budget.torch_threads`); a GPU path is future work.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ...progress import CancelToken, ProgressCallback, check_cancel, report
from ._dct import _dct_matrix, mirror_pad, shrink

__all__ = ["denoise_collaborative", "COLLABORATIVE_DEFAULTS", "collaborative_influence"]

#: block edge, stride between reference blocks, search radius (voxels), blocks per group, hard threshold (sigma).
COLLABORATIVE_DEFAULTS = {"patch": 4, "step": 3, "search": 3, "group": 16, "threshold": 2.7}
#: At most this many grouped block values are held at once.
CHUNK_VALUES = 2**24


def collaborative_influence(patch: int = 4, search: int = 3) -> int:
    """How far a change in the input can move the output, per stage: the reference blocks whose search reaches
    a block holding the voxel (search + patch - 1), then the blocks of their groups (search + patch - 1)."""
    return 2 * (2 * int(search) + 2 * (int(patch) - 1))


def _block_distances(x: torch.Tensor, refs: tuple[int, int, int], *, patch: int, step: int, search: int,
                     lo: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance of every reference block (grid of stride ``step`` from ``lo``) to each block shifted by
    every offset in the search cube: (refs..., offsets), and the offsets (offsets, 3)."""
    offsets = torch.tensor(list(itertools.product(range(-search, search + 1), repeat=3)))
    nz, ny, nx = refs
    span = [(n - 1) * step + patch for n in refs]
    ref_region = x[lo:lo + span[0], lo:lo + span[1], lo:lo + span[2]]
    out = torch.empty((nz, ny, nx, len(offsets)), dtype=x.dtype)
    for index, (dz, dy, dx) in enumerate(offsets.tolist()):
        moved = x[lo + dz:lo + dz + span[0], lo + dy:lo + dy + span[1], lo + dx:lo + dx + span[2]]
        squared = (ref_region - moved) ** 2
        out[..., index] = torch.nn.functional.avg_pool3d(squared[None, None], patch, stride=step)[0, 0]
    return out, offsets


def _group_starts(distances: torch.Tensor, offsets: torch.Tensor, *, group: int, step: int, lo: int) -> torch.Tensor:
    """Start voxels (refs..., group, 3) of each reference's ``group`` nearest blocks (itself first)."""
    nearest = torch.topk(distances, k=group, dim=-1, largest=False).indices
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) * step + lo for n in distances.shape[:3]],
                                      indexing="ij"), dim=-1)
    return grid[..., None, :] + offsets[nearest]


def _filter_groups(x: torch.Tensor, pilot: Optional[torch.Tensor], starts: torch.Tensor, sigma: float, *,
                   patch: int, threshold: float, total: torch.Tensor, norm: torch.Tensor) -> None:
    """Collaboratively filter the groups whose blocks start at ``starts`` (n, group, 3) and add them back."""
    matrix = _dct_matrix(patch).to(x.dtype)
    across = _dct_matrix(starts.shape[1]).to(x.dtype)

    def transformed(volume: torch.Tensor) -> torch.Tensor:  # (n, group, p, p, p) coefficients of the groups
        blocks = volume.unfold(0, patch, 1).unfold(1, patch, 1).unfold(2, patch, 1)[z, y, w]
        return torch.einsum("ai,bj,ck,gh,nhijk->ngabc", matrix, matrix, matrix, across, blocks)

    z, y, w = starts.unbind(-1)
    filtered, weights = shrink(transformed(x), None if pilot is None else transformed(pilot), sigma,
                               threshold=threshold, ndim=4)
    estimate = torch.einsum("ai,bj,ck,gh,ngabc->nhijk", matrix, matrix, matrix, across, filtered)
    inside = torch.stack(torch.meshgrid(*[torch.arange(patch)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
    voxels = starts[:, :, None, :] + inside  # (n, group, p^3, 3)
    flat = (voxels[..., 0] * x.shape[1] + voxels[..., 1]) * x.shape[2] + voxels[..., 2]
    weight_each = weights[:, None, None].expand(flat.shape)
    total.view(-1).index_add_(0, flat.reshape(-1), (estimate.reshape(flat.shape) * weight_each).reshape(-1))
    norm.view(-1).index_add_(0, flat.reshape(-1), weight_each.reshape(-1))


@dataclass(frozen=True)
class _Knobs:
    patch: int
    step: int
    search: int
    group: int
    threshold: float


def _stage(x: torch.Tensor, pilot: Optional[torch.Tensor], sigma: float, *, inner: tuple[int, ...], knobs: _Knobs,
           cancel: Optional[CancelToken], matches: Optional[list] = None) -> torch.Tensor:
    """One pass: groups matched on ``pilot`` (or the noisy data), hard threshold or Wiener, aggregation.

    ``matches``: the group starts of every slab; an empty list is filled, a full one is used instead of
    matching again."""
    patch, step, search, group = knobs.patch, knobs.step, knobs.search, knobs.group
    lo = search  # the reference grid starts inside the search margin
    refs = [(n - patch) // step + 1 for n in inner]
    rows = max(1, CHUNK_VALUES // max(refs[1] * refs[2] * group * patch**3, 1))
    total, norm = torch.zeros_like(x), torch.zeros_like(x)
    matched = x if pilot is None else pilot
    for first in range(0, refs[0], rows):
        check_cancel(cancel)
        count = min(rows, refs[0] - first)
        z0 = first * step
        part = matched[z0:]
        if matches is not None and len(matches) > first // rows:
            starts = matches[first // rows]
        else:
            distances, offsets = _block_distances(part, (count, refs[1], refs[2]), patch=patch, step=step,
                                                  search=search, lo=lo)
            starts = _group_starts(distances, offsets, group=group, step=step, lo=lo).reshape(-1, group, 3)
            starts[..., 0] += z0
            if matches is not None:
                matches.append(starts)
        _filter_groups(x, pilot, starts, sigma, patch=patch, threshold=knobs.threshold, total=total, norm=norm)
    return total / norm.clamp_min(1e-30)


def denoise_collaborative(
    array: np.ndarray,
    *,
    sigma: float,
    strength: float = 1.0,
    patch: int = COLLABORATIVE_DEFAULTS["patch"],
    step: int = COLLABORATIVE_DEFAULTS["step"],
    search: int = COLLABORATIVE_DEFAULTS["search"],
    group: int = COLLABORATIVE_DEFAULTS["group"],
    threshold: float = COLLABORATIVE_DEFAULTS["threshold"],
    matches: Optional[dict] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> tuple[np.ndarray, dict]:
    """Two-stage block-matching collaborative filtering of ``array`` (Gaussian noise ``sigma`` x ``strength``).

    Returns the float32 estimate and the parameters used; Rician data are filtered as they are (see
    :func:`._dct.denoise_dct`). ``matches``: an empty dict is filled with the groups found; passed again
    with an array of the same shape, those groups are used instead of matching again (another shape: matched
    anew, the dict kept as it is). Why: SURE's
    divergence probe (:mod:`._sure`) must see the filter as a smooth function of the data; a block that
    joins or leaves a group under the tiny probe is a jump, and made SURE overestimate this filter's risk
    by 5 % on the MNI template at 5 % noise (the matching held fixed is the usual convention).
    """
    patch, step, search, group = int(patch), int(step), int(search), int(group)
    if patch < 2 or not 1 <= step <= patch or search < 1 or not 2 <= group <= (2 * search + 1) ** 3:
        raise ValueError(f"bad collaborative filter settings: patch {patch}, step {step}, search {search}, "
                         f"group {group}")
    noise = float(sigma) * float(strength)
    params = {"patch": patch, "step": step, "search": search, "group": group, "threshold": float(threshold),
              "sigma": noise}
    values = np.asarray(array, dtype=np.float32)
    if noise <= 0:
        return values.copy(), params
    # the search radius around the mirrored border, so that every candidate block lies inside the padded volume
    padded, keep = mirror_pad(values, patch=patch, step=step, margin=search)
    covered = [n - 2 * search for n in padded.shape]  # the volume the reference blocks cover
    stage_args = {"inner": tuple(covered), "knobs": _Knobs(patch, step, search, group, float(threshold)),
                  "cancel": cancel}
    report(progress, 0.0, "collaborative filtering: hard threshold")
    if matches is not None and not matches:
        matches.update(shape=tuple(padded.shape), first=[], second=[])
    held = matches if matches is not None and matches["shape"] == tuple(padded.shape) else None  # else: match anew
    first = _stage(padded, None, noise, **stage_args, matches=held["first"] if held is not None else None)
    # the search margin of the first estimate is mirrored again from the estimate (it holds partial sums)
    estimate = first[tuple(slice(search, search + c) for c in covered)].numpy()
    pilot = torch.from_numpy(np.pad(estimate, search, mode="symmetric"))
    report(progress, 0.5, "collaborative filtering: Wiener")
    second = _stage(padded, pilot, noise, **stage_args, matches=held["second"] if held is not None else None)
    report(progress, 1.0, "collaborative filtering done")
    return np.ascontiguousarray(second[keep].numpy(), dtype=np.float32), params
