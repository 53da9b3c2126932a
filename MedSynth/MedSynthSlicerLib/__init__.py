"""Slicer-side helpers of the MedSynth module that need no Slicer: testable with plain pytest.

- :mod:`.worker`: the persistent background thread, jobs, progress and cancel.
- :mod:`.undo`: the bounded per-volume undo stack.
- :mod:`.history`: the ``MedSynth.history`` provenance attribute.
- :mod:`.nodes`: volume node <-> :class:`MedSynthLib.Volume` with VTK only; markups and transforms to RAS.
- :mod:`.panel_settings`: the panel's settings as the Python API's options; which widget shows which library
  option (choices, ranges and tooltips read from the library at start-up).
- :mod:`.task_request`: one request = the task and the library's options object for it, built once.
- :mod:`.task_runs`: task -> library call (one table); the run on the worker thread.
- :mod:`.result_line`: the panel's one-line result.
- :mod:`.model_choice`: the panel's model choice as the package file the library loads.
- :mod:`.choices`: the run-time lists of the panel (devices, models, presets, tasks).
- :mod:`.dependencies`, :mod:`.devices`: the first-use install flow, the device list, the torch thread limit.

Slicer's python FAQ asks helpers to live in a ``<Module>Lib`` package so that Slicer does not
load them as modules; ``MedSynth.py`` is the only file that imports ``slicer``, ``qt`` or ``ctk``.
"""

__all__ = ["choices", "dependencies", "devices", "history", "model_choice", "nodes", "panel_settings",
           "result_line", "task_request", "task_runs", "undo", "worker"]
