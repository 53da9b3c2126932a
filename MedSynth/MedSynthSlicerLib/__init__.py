"""Slicer-side helpers of the MedSynth module that need no Slicer: testable with plain pytest.

- :mod:`.worker`: the persistent background thread, jobs, progress and cancel.
- :mod:`.undo`: the bounded per-volume undo stack.
- :mod:`.history`: the ``MedSynth.history`` provenance attribute.
- :mod:`.nodes`: volume node <-> :class:`MedSynthLib.Volume` with VTK only; markups and transforms to RAS.
- :mod:`.requests`: panel settings -> the Python API's options -> one request -> library call -> result line.
- :mod:`.choices`: the run-time lists of the panel (devices, models, presets, tasks).
- :mod:`.dependencies`, :mod:`.devices`: the first-use install flow, the device list, the torch thread limit.

Slicer's python FAQ asks helpers to live in a ``<Module>Lib`` package so that Slicer does not
load them as modules; ``MedSynth.py`` is the only file that imports ``slicer``, ``qt`` or ``ctk``.
"""

__all__ = ["choices", "dependencies", "devices", "history", "nodes", "requests", "undo", "worker"]
