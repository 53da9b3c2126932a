"""A bounded undo stack per volume node, because Slicer keeps no undo for voxel edits.

Scene undo is off by default in Slicer and volumes have none, so before MedSynth edits a
volume in place it pushes a copy of the voxels *and* the IJK-to-RAS matrix (upsampling changes
both). Undo restores both. The stack is bounded twice: a number of steps per volume and a total
memory budget across volumes, oldest entries dropped first, so a long session cannot exhaust RAM
(the out-of-memory complaints users file against AI extensions).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from MedSynthLib.volume import Volume

__all__ = ["UndoEntry", "UndoStack", "arrays_equal"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UndoEntry:
    """The state of a volume before one edit."""

    volume: Volume
    description: str
    history: Optional[str] = None
    name: Optional[str] = None
    order: int = field(default=0, compare=False)
    #: What else the edit created and undo should remove (e.g. ``{"segments": [(nodeID, segmentID)]}``).
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def nbytes(self) -> int:
        return int(self.volume.array.nbytes)


class UndoStack:
    """Undo entries keyed by node ID, bounded in steps per key and in total bytes.

    Parameters
    ----------
    max_steps : int
        Edits remembered per volume.
    max_bytes : int
        Memory all entries together may hold; the oldest entries (any volume) go first.
    """

    def __init__(self, *, max_steps: int = 5, max_bytes: int = 2 * 1024**3) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self.max_bytes = int(max_bytes)
        self._stacks: dict[str, list[UndoEntry]] = {}
        self._counter = itertools.count()

    def push(self, key: str, volume: Volume, *, description: str, history: Optional[str] = None,
             name: Optional[str] = None) -> bool:
        """Remember ``volume`` (copied) before an edit of node ``key``.

        Returns
        -------
        bool
            False when the volume alone is larger than the memory budget: the edit then cannot
            be undone, and the caller should say so before editing.
        """
        if volume.array.nbytes > self.max_bytes:
            log.warning("volume of %d bytes exceeds the undo budget of %d bytes; no undo kept",
                        volume.array.nbytes, self.max_bytes)
            return False
        entry = UndoEntry(volume.copy(), description, history, name, next(self._counter))
        stack = self._stacks.setdefault(key, [])
        stack.append(entry)
        del stack[: max(0, len(stack) - self.max_steps)]
        self._enforce_budget()
        return True

    def _enforce_budget(self) -> None:
        while self.nbytes > self.max_bytes:
            oldest_key = min(
                (k for k, s in self._stacks.items() if s), key=lambda k: self._stacks[k][0].order
            )
            self._stacks[oldest_key].pop(0)
            if not self._stacks[oldest_key]:
                del self._stacks[oldest_key]

    def pop(self, key: str) -> Optional[UndoEntry]:
        """The latest entry of ``key`` (removed), or None when there is nothing to undo."""
        stack = self._stacks.get(key)
        if not stack:
            return None
        entry = stack.pop()
        if not stack:
            del self._stacks[key]
        return entry

    def peek(self, key: str) -> Optional[UndoEntry]:
        stack = self._stacks.get(key)
        return stack[-1] if stack else None

    def depth(self, key: str) -> int:
        return len(self._stacks.get(key, ()))

    def can_undo(self, key: Optional[str]) -> bool:
        return key is not None and self.depth(key) > 0

    def clear(self, key: Optional[str] = None) -> None:
        """Forget ``key``'s entries, or everything (scene close) when ``key`` is None."""
        if key is None:
            self._stacks.clear()
        else:
            self._stacks.pop(key, None)

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for stack in self._stacks.values() for entry in stack)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.can_undo(key)


def arrays_equal(a: Volume, b: Volume) -> bool:
    """Same voxels, dtype and geometry (used by tests and the self-test to check an undo)."""
    return (
        a.array.dtype == b.array.dtype
        and a.array.shape == b.array.shape
        and bool(np.array_equal(a.array, b.array))
        and bool(np.allclose(a.ijk_to_ras, b.ijk_to_ras))
    )
