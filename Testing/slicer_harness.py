"""Real Slicer MRML for tests: what Slicer's application builds at start-up, from the ``slicer-core`` wheel.

``slicer-core`` (PyPI) ships Slicer's own MRML, MRML logic, Segmentations, Markups, Volumes,
Transforms, Colors, Subject hierarchy and Terminologies libraries and Slicer's real
``slicer/util.py``, but no application. :class:`SlicerHarness` builds the part of
``qSlicerCoreApplication`` start-up that MedSynth relies on: a ``vtkMRMLScene``, a
``vtkSlicerApplicationLogic`` with its color logic and default colour tables, and the module
logics, registered with the application logic and exposed as ``slicer.mrmlScene`` and
``slicer.modules.<name>.logic()`` as in Slicer.

Stand-ins remain only for what the wheel does not ship: ``qt``, ``ctk``, ``slicer.i18n``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` and ``slicer.app``. They are
deliberately small: anything MedSynth does to MRML goes through the real classes.

The unrelated PyPI package ``slicer`` uses the same import name; :func:`require_slicer_core`
skips when ``slicer`` is not Slicer's.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
import typing
import unittest
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MedSynth"

#: ``slicer.modules.<name>`` -> the logic class built for it (as Slicer's module names them).
MODULE_LOGICS = {
    "subjecthierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "terminologies": "vtkSlicerTerminologiesModuleLogic",
    "volumes": "vtkSlicerVolumesLogic",
    "segmentations": "vtkSlicerSegmentationsModuleLogic",
    "markups": "vtkSlicerMarkupsLogic",
    "transforms": "vtkSlicerTransformLogic",
}

#: Names under which vtkSlicerApplicationLogic.GetModuleLogic finds them (Slicer's module names).
_APPLICATION_NAMES = {
    "subjecthierarchy": "SubjectHierarchy", "terminologies": "Terminologies", "volumes": "Volumes",
    "segmentations": "Segmentations", "markups": "Markups", "transforms": "Transforms",
}


def require_slicer_core() -> types.ModuleType:
    """The real ``slicer`` package of ``slicer-core``, or skip the test (no wheel on this platform)."""
    pytest.importorskip("slicer_core", reason="slicer-core (Slicer's MRML as a wheel) is not installed here")
    import slicer

    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the 'slicer' package found is not Slicer's (the unrelated PyPI 'slicer' is installed)")
    import slicer.util  # noqa: F401 - Slicer's real util module

    return slicer


class _ModuleLogicHandle:
    """What ``slicer.modules.volumes`` is in Slicer, reduced to ``logic()``."""

    def __init__(self, logic: Any) -> None:
        self._logic = logic

    def logic(self) -> Any:
        return self._logic


class SlicerHarness:
    """A real scene with the application and module logics MedSynth uses (no GUI).

    Build one per test: the scene and logics are fresh, so tests cannot leak nodes into each other.
    """

    def __init__(self) -> None:
        slicer = require_slicer_core()
        import vtk

        self.slicer = slicer
        self.scene = slicer.vtkMRMLScene()
        self.application_logic = slicer.vtkSlicerApplicationLogic()
        self.application_logic.SetMRMLScene(self.scene)
        colors = self.application_logic.GetColorLogic()
        colors.SetMRMLScene(self.scene)
        colors.AddDefaultColorNodes()
        self.application_logic.SetModuleLogic("Colors", colors)
        self.logics = {"colors": colors}
        for name, class_name in MODULE_LOGICS.items():
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(self.application_logic)
            if name == "terminologies":
                # The wheel ships no terminology files; Slicer would load them from its share folder.
                previous = vtk.vtkLogger.GetCurrentVerbosityCutoff()
                vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
                try:
                    logic.SetMRMLScene(self.scene)
                finally:
                    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.ConvertToVerbosity(int(previous)))
            else:
                logic.SetMRMLScene(self.scene)
            self.application_logic.SetModuleLogic(_APPLICATION_NAMES[name], logic)
            self.logics[name] = logic
        self.modules = SimpleNamespace(**{name: _ModuleLogicHandle(logic) for name, logic in self.logics.items()})
        self.app = SimpleNamespace(
            processEvents=lambda: None,
            applicationLogic=lambda: self.application_logic,
            testingEnabled=lambda: True,
            setOverrideCursor=lambda cursor: None,
            restoreOverrideCursor=lambda: None,
        )

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make ``import slicer`` look like Slicer's Python: the real scene, logics, util and the stand-ins."""
        slicer = self.slicer
        monkeypatch.setattr(slicer, "mrmlScene", self.scene, raising=False)
        monkeypatch.setattr(slicer, "modules", self.modules, raising=False)
        monkeypatch.setattr(slicer, "app", self.app, raising=False)
        for name, module in _stand_ins().items():
            monkeypatch.setitem(sys.modules, name, module)
            if name.startswith("slicer."):
                monkeypatch.setattr(slicer, name.split(".", 1)[1], module, raising=False)
        monkeypatch.syspath_prepend(str(MODULE_DIR))

    def load_module(self) -> types.ModuleType:
        """``MedSynth/MedSynth.py`` imported as Slicer imports it (after :meth:`install`)."""
        spec = importlib.util.spec_from_file_location("MedSynth", MODULE_DIR / "MedSynth.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


# ---- stand-ins for what slicer-core does not ship -------------------------------------------------
def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


class _GuiConnector:
    def __init__(self) -> None:
        self._callback = None

    def changed(self) -> None:
        if self._callback:
            self._callback()


class _Validator:
    def __init__(self, *args: Any) -> None:
        self.args = args


def _unannotated(datatype: Any) -> Any:
    return typing.get_args(datatype)[0] if typing.get_origin(datatype) is typing.Annotated else datatype


class _ScriptedLoadableModule:
    def __init__(self, parent: Any) -> None:
        self.parent = parent

    def resourcePath(self, filename: str) -> str:
        return str(MODULE_DIR / "Resources" / filename)


class _ScriptedLoadableModuleLogic:
    """Slicer's base logic; MedSynth's Logic uses only its constructor outside the panel."""

    def __init__(self, parent: Any = None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")


class _ScriptedLoadableModuleTest(unittest.TestCase):
    """Slicer's base test is a ``unittest.TestCase`` whose ``delayDisplay`` shows a message box."""

    def delayDisplay(self, message: str, msec: int = 100) -> None:
        logging.info(message)


def _stand_ins() -> dict[str, types.ModuleType]:
    return {
        "qt": _module("qt", QTimer=object, QTabWidget=type("QTabWidget", (), {})),
        "ctk": _module("ctk", ctkComboBox=type("ctkComboBox", (), {})),
        "slicer.i18n": _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": _module(
            "slicer.parameterNodeWrapper", Choice=_Validator, WithinRange=_Validator, GuiConnector=_GuiConnector,
            parameterNodeGuiConnector=lambda cls: cls, parameterNodeWrapper=lambda cls: cls,
            unannotatedType=_unannotated,
        ),
        "slicer.ScriptedLoadableModule": _module(
            "slicer.ScriptedLoadableModule",
            ScriptedLoadableModule=_ScriptedLoadableModule,
            ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (), {}),
            ScriptedLoadableModuleLogic=_ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest=_ScriptedLoadableModuleTest,
        ),
    }
