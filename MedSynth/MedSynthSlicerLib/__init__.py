"""Slicer-side helpers of the MedSynth module that need no Slicer: testable with plain pytest.

- :mod:`.worker`: the persistent background thread, jobs, progress and cancel.
- :mod:`.undo`: the bounded per-volume undo stack.
- :mod:`.history`: the ``MedSynth.history`` provenance attribute.
- :mod:`.nodes`: volume node <-> :class:`MedSynthLib.Volume` with VTK only; markups to RAS.
- :mod:`.tasks`: panel settings -> library call -> result line.
- :mod:`.dependencies`, :mod:`.devices`: first-use installs and the device list.

Slicer's python FAQ asks helpers to live in a ``<Module>Lib`` package so that Slicer does not
load them as modules; ``MedSynth.py`` is the only file that imports ``slicer``, ``qt`` or ``ctk``.
"""

__all__ = ["dependencies", "devices", "history", "nodes", "tasks", "undo", "worker"]
