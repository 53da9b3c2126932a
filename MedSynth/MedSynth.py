import json
import logging
import os
import pathlib
import time
from typing import Annotated, Optional

import ctk
import numpy as np
import qt
import vtk

import slicer
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import (
    Choice,
    GuiConnector,
    WithinRange,
    parameterNodeGuiConnector,
    parameterNodeWrapper,
    unannotatedType,
)
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Heavy packages (torch, MONAI, MedSynthLib's tasks) are imported at first use, never here:
# opening Slicer must not wait for them, and they may not be installed yet.
from MedSynthSlicerLib import dependencies, history, nodes, tasks
from MedSynthSlicerLib.undo import UndoStack, arrays_equal
from MedSynthSlicerLib.worker import BackgroundWorker, Job, JobState

DOCS_URL = "https://github.com/medsynth/MedSynth/blob/main/docs/slicer.md"

#: Edits remembered per volume, and the memory all undo copies together may use.
UNDO_STEPS = 5
UNDO_BYTES = 2 * 1024**3

#: How often the GUI thread looks at a running job (ms).
POLL_INTERVAL_MS = 100


#
# MedSynth
#


class MedSynth(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSynth")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSynth developers"]
        self.parent.helpText = _(
            "Generative editing of the loaded volume: fill missing or corrupted slices and upsample "
            "through-plane, insert synthetic lesions with an exact segmentation, denoise and correct "
            "the bias field. Work runs in the background (Apply becomes Cancel), in-place edits can be "
            "undone, and every edited or created node records what was done in its "
            "<code>MedSynth.history</code> attribute. "
            f'See the <a href="{DOCS_URL}">MedSynth Slicer documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "MedSynth builds on MONAI, PyTorch, SimpleITK and scikit-image. The module follows the "
            "conventions of Slicer's scripted module template and learns from SlicerMONAIAuto3DSeg, "
            "SlicerTotalSegmentator, SlicerPyTorch and SlicerNNInteractive."
        )


#
# GUI connectors for lists known only at run time
#


@parameterNodeGuiConnector
class CtkComboBoxToStrConnector(GuiConnector):
    """Binds a ``ctkComboBox`` to a ``str`` parameter whose choices are only known at run time.

    Slicer's own QComboBox connector needs a fixed ``Choice``; models, devices and lesion presets
    depend on what is installed. Each item's data is the value, its text the label; a saved value
    that is not listed (a model from another computer) is kept as an extra item, not lost.
    """

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return type(widget) == ctk.ctkComboBox and unannotatedType(datatype) == str

    @staticmethod
    def create(widget, datatype):
        if CtkComboBoxToStrConnector.canRepresent(widget, datatype):
            return CtkComboBoxToStrConnector(widget)
        return None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.currentIndexChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.currentIndexChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> str:
        data = self._widget.currentData
        return str(data) if data is not None else self._widget.currentText

    def write(self, value: str) -> None:
        index = self._widget.findData(value)
        if index < 0 and value:
            self._widget.addItem(value, value)
            index = self._widget.count - 1
        self._widget.currentIndex = max(index, 0)


@parameterNodeGuiConnector
class TabWidgetToStrConnector(GuiConnector):
    """Binds a ``QTabWidget`` to a ``str`` parameter: the value is the page's name without "Tab"."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return type(widget) == qt.QTabWidget and unannotatedType(datatype) == str

    @staticmethod
    def create(widget, datatype):
        if TabWidgetToStrConnector.canRepresent(widget, datatype):
            return TabWidgetToStrConnector(widget)
        return None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.currentChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.currentChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> str:
        return self._widget.currentWidget().objectName.removesuffix("Tab")

    def write(self, value: str) -> None:
        for index in range(self._widget.count):
            if self._widget.widget(index).objectName == f"{value}Tab":
                self._widget.currentIndex = index
                return


#
# MedSynthParameterNode
#


@parameterNodeWrapper
class MedSynthParameterNode:
    """Every panel setting, saved with the scene. Each field is bound to the widget of the .ui whose
    ``SlicerParameterName`` property names it.

    Sizes and contrasts set to 0 mean "the preset's own value".
    """

    # Inputs
    inputVolume: vtkMRMLScalarVolumeNode
    maskSegmentation: vtkMRMLSegmentationNode
    task: Annotated[str, Choice(["fill", "lesion", "enhance"])] = "fill"

    # Fill slices / upsample
    fillSlices: str = ""
    fillAxis: Annotated[str, Choice(["auto", "k", "j", "i"])] = "auto"
    fillMethod: Annotated[str, Choice(["auto", "linear", "cubic", "flow", "selfsup", "model"])] = "auto"
    fillUpsample: bool = False
    upsampleFactor: Annotated[int, WithinRange(2, 8)] = 2

    # Lesions
    lesionPreset: str = ""
    lesionCentres: vtkMRMLMarkupsFiducialNode
    lesionCount: Annotated[int, WithinRange(1, 50)] = 3
    lesionSize: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    lesionContrast: Annotated[float, WithinRange(-1000.0, 1000.0)] = 0.0
    lesionLabels: Annotated[str, Choice(["per lesion", "per class"])] = "per lesion"
    lesionSegmentation: vtkMRMLSegmentationNode

    # Enhance
    enhanceDenoise: bool = True
    denoiseMethod: Annotated[str, Choice(["auto", "selfsup", "model", "nlm", "aniso"])] = "auto"
    denoiseStrength: Annotated[float, WithinRange(0.1, 2.0)] = 1.0
    enhanceBias: bool = False
    biasShrink: Annotated[int, WithinRange(1, 8)] = 4
    enhanceSuperResolve: bool = False
    superResolveFactor: Annotated[int, WithinRange(2, 8)] = 2

    # Model, device, output
    model: str = "auto"
    modelFile: pathlib.Path
    device: str = "auto"
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    outputMode: Annotated[str, Choice(["new volume", "in place"])] = "new volume"


#
# MedSynthWidget
#


class MedSynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False
        self._job: Optional[Job] = None
        self._jobContext: Optional[dict] = None
        self._pollTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSynthLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.detectButton.connect("clicked(bool)", self.onDetectButton)
        self.ui.suspectSlicesList.connect("itemDoubleClicked(QListWidgetItem*)", self.onSuspectSliceDoubleClicked)
        self.ui.refreshDevicesButton.connect("clicked(bool)", self.onRefreshChoices)

        self.ui.progressBar.setVisible(False)
        self.populateChoices()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._job is not None:
            self._job.cancel()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self.logic is not None:
            self.logic.shutdown()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # A running job keeps running while the user visits other modules; only the GUI link goes.
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()
        self.logic.undoStack.clear()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[MedSynthParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    # ---- one guarded function draws the panel from the parameters ------------------------
    def updateGUI(self, caller=None, event=None) -> None:
        if self._updatingGUI or self._parameterNode is None:
            return
        self._updatingGUI = True
        try:
            p = self._parameterNode
            running = self._job is not None
            self.ui.modelPathLineEdit.enabled = p.model == "file"
            self.ui.upsampleFactorSpinBox.enabled = p.fillUpsample
            self.ui.fillSlicesLineEdit.enabled = not p.fillUpsample
            self.ui.lesionCountSpinBox.enabled = not self.logic.centresOf(p)
            self.ui.lesionPlaceWidget.setCurrentNode(p.lesionCentres)
            self.ui.denoiseMethodComboBox.enabled = p.enhanceDenoise
            self.ui.denoiseStrengthSliderWidget.enabled = p.enhanceDenoise
            self.ui.biasShrinkSpinBox.enabled = p.enhanceBias
            self.ui.superResolveFactorSpinBox.enabled = p.enhanceSuperResolve

            reasons = [] if running else self.logic.reasonsNotToApply(p)
            self.ui.applyButton.text = _("Cancel") if running else _("Apply")
            self.ui.applyButton.enabled = running or not reasons
            self.ui.applyButton.toolTip = (
                _("Stop the running task; the input is left unchanged.") if running
                else ("\n".join(reasons) if reasons else _("Run the task of the selected tab."))
            )
            self.ui.inputsCollapsibleButton.enabled = not running
            self.ui.taskTabWidget.enabled = not running
            self.ui.settingsCollapsibleButton.enabled = not running
            self.ui.detectButton.enabled = not running and p.inputVolume is not None
            canUndo = not running and p.inputVolume is not None and self.logic.canUndo(p.inputVolume)
            self.ui.undoButton.enabled = canUndo
            self.ui.undoButton.toolTip = (
                _("Restore {name} as it was before the last in-place edit ({count} step(s) kept).").format(
                    name=p.inputVolume.GetName(), count=self.logic.undoStack.depth(p.inputVolume.GetID()))
                if canUndo else _("Nothing to undo: only in-place edits of the input volume can be undone.")
            )
        finally:
            self._updatingGUI = False

    def populateChoices(self) -> None:
        """Fill the run-time lists (devices, models, presets) from what is installed now."""
        choices = self.logic.choices()
        for combo, items in (
            (self.ui.deviceComboBox, choices["devices"]),
            (self.ui.modelComboBox, choices["models"]),
            (self.ui.lesionPresetComboBox, choices["presets"]),
        ):
            current = combo.currentData
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for label, value in items:
                combo.addItem(label, value)
            index = combo.findData(current) if current is not None else -1
            combo.currentIndex = max(index, 0)
            combo.blockSignals(wasBlocked)
        if self._parameterNode:
            # Signals were blocked: let the parameter node re-select its saved values.
            self._parameterNode.Modified()
        self.ui.deviceInfoLabel.text = choices["deviceSummary"]
        self.ui.deviceInfoLabel.toolTip = choices.get("deviceWarning") or choices["deviceSummary"]
        for task, present in choices["tasks"].items():
            tab = getattr(self.ui, f"{'fill' if task == 'upsample' else task}Tab")
            index = self.ui.taskTabWidget.indexOf(tab)
            if task != "upsample":
                self.ui.taskTabWidget.setTabEnabled(index, present)

    # ---- handlers ---------------------------------------------------------------------------
    def onRefreshChoices(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to list devices and models."), waitCursor=True):
            self.populateChoices()

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start MedSynth."), waitCursor=True):
            if not self.ensureDependencies():
                return
            self.populateChoices()
            p = self._parameterNode
            self._job, self._jobContext = self.logic.startFromParameters(p)
            self.ui.resultLabel.text = ""
            self.ui.progressBar.value = 0
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = _("Started: {task}").format(task=self._jobContext["request"].task)
            self._pollTimer.start()
            self.updateGUI()

    def onPollJob(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        status = job.status()
        self.ui.progressBar.value = int(round(100 * status.fraction))
        self.ui.statusLabel.text = f"{status.message} ({status.seconds:.0f} s)"
        if not status.state.finished:
            return
        self._pollTimer.stop()
        context, self._job, self._jobContext = self._jobContext, None, None
        self.ui.progressBar.setVisible(False)
        if status.state == JobState.SUCCEEDED and slicer.mrmlScene.GetNodeByID(context["inputNodeID"]) is None:
            self.ui.statusLabel.text = _("The input volume was removed (or the scene closed); the result was discarded.")
        elif status.state == JobState.SUCCEEDED:
            with slicer.util.tryWithErrorDisplay(_("Failed to apply the result."), waitCursor=True):
                self.ui.resultLabel.text = self.logic.apply(status.result, context)
                self.ui.statusLabel.text = _("Done")
        elif status.state == JobState.CANCELLED:
            self.ui.statusLabel.text = _("Cancelled; nothing was changed.")
        else:
            self.ui.statusLabel.text = _("Failed; nothing was changed.")
            slicer.util.errorDisplay(
                _("MedSynth failed: {error}").format(error=status.error), detailedText=status.error_details
            )
        self.updateGUI()

    def onUndoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to undo."), waitCursor=True):
            self.ui.resultLabel.text = self.logic.undo(self._parameterNode.inputVolume)
            self.updateGUI()

    def onDetectButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to detect missing slices."), waitCursor=True):
            p = self._parameterNode
            try:
                found = self.logic.detectMissingSlices(p.inputVolume, axis=p.fillAxis)
            except ImportError:
                if not self.ensureDependencies():
                    return
                found = self.logic.detectMissingSlices(p.inputVolume, axis=p.fillAxis)
            self.ui.suspectSlicesList.clear()
            for index, reason in found:
                self.ui.suspectSlicesList.addItem(f"{index}: {reason}")
            p.fillSlices = tasks.format_slice_list([index for index, _reason in found])
            self.ui.statusLabel.text = (
                _("{count} suspect slice(s) found; they are in the Slices field.").format(count=len(found))
                if found else _("No missing or corrupted slices found.")
            )

    def onSuspectSliceDoubleClicked(self, item) -> None:
        """Show the double-clicked slice in the slice views."""
        index = int(item.text().split(":", 1)[0])
        self.logic.jumpToSlice(self._parameterNode.inputVolume, index, axis=self._parameterNode.fillAxis)

    def ensureDependencies(self) -> bool:
        """Install what is missing after asking (torch via PyTorchUtils, the rest with pip)."""
        if not self.logic.torchInstalled():
            if not self.logic.installTorch(askConfirmation=True):
                return False
        missing = self.logic.missingPackages()
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                _("MedSynth needs these Python packages, which will be downloaded and installed now "
                  "(Slicer's own numpy, SimpleITK, vtk and the installed PyTorch are kept):\n\n{packages}")
                .format(packages="\n".join(missing)),
                windowTitle=_("Install MedSynth dependencies"),
            ):
                return False
            self.ui.statusLabel.text = _("Installing Python packages...")
            slicer.app.processEvents()
            self.logic.installPackages(missing)
        return True


#
# MedSynthLogic
#


class MedSynthLogic(ScriptedLoadableModuleLogic):
    """The only place that touches MRML for MedSynth: node <-> Volume, background runs, results,
    undo and provenance. Computation is MedSynthLib's; this class can be used from Slicer's
    Python console without the widget::

        logic = slicer.modules.medsynth.widgetRepresentation().self().logic  # or MedSynthLogic()
        outputNode = logic.run(volumeNode, "fill", {"method": "linear"}, inPlace=False)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.worker = BackgroundWorker()
        self.undoStack = UndoStack(max_steps=UNDO_STEPS, max_bytes=UNDO_BYTES)
        self.requirementsPath = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

    def getParameterNode(self):
        return MedSynthParameterNode(super().getParameterNode())

    def shutdown(self) -> None:
        self.worker.shutdown(timeout=2.0)

    # ---- dependencies -----------------------------------------------------------------------
    def torchInstalled(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("torch") is not None

    def installTorch(self, *, askConfirmation: bool = True) -> bool:
        """Install torch through SlicerPyTorch (it picks the CUDA build for this GPU and driver)."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(
                _("This module requires the PyTorch extension. Install it from the Extensions Manager, "
                  "restart Slicer, and press Apply again.")
            ) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return True
        torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=">=2.1")
        return torch is not None

    def missingPackages(self) -> list[str]:
        return dependencies.missing_requirements(dependencies.read_requirements(self.requirementsPath))

    def installPackages(self, requirements: list[str]) -> None:
        """pip install ``requirements`` with Slicer's numpy, SimpleITK, vtk and torch pinned."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            constraints = os.path.join(folder, "constraints.txt")
            with open(constraints, "w", encoding="utf-8") as file:
                file.write(dependencies.constraints_text())
            slicer.util.pip_install(["-c", constraints, *requirements])
        import importlib

        importlib.invalidate_caches()

    def choices(self) -> dict:
        """Devices, models, lesion presets and tasks available now (no install triggered)."""
        from MedSynthSlicerLib import devices

        result = {
            "devices": [("auto", "auto")],
            "deviceSummary": _("PyTorch not installed yet: it is installed at the first Apply"),
            "models": [(_("auto (best available)"), "auto"), (_("from file..."), "file")],
            "presets": [(_("default ({presets})").format(
                presets=", ".join(f"{m}: {n}" for m, n in tasks.DEFAULT_PRESETS.items())), "")],
            "tasks": tasks.available_tasks(),
        }
        try:
            from MedSynthLib.tasks import lesion

            result["presets"] += [(f"{preset['name']} ({preset['modality']})", preset["name"])
                                  for preset in lesion.list_presets()]
        except ImportError as error:
            logging.info("MedSynth: lesion presets not listed yet (%s)", error)
        if not self.torchInstalled():
            return result
        import torch

        result["devices"], result["deviceSummary"] = devices.device_choices(torch)
        result["deviceWarning"] = dependencies.torch_problem(torch, nvidia_gpu_present=devices.nvidia_gpu_present())
        if result["deviceWarning"]:
            # Said in the panel itself, not hidden in a tooltip: the CPU-only surprise is the most
            # reported problem of AI extensions.
            result["deviceSummary"] += " — " + result["deviceWarning"]
        try:
            from MedSynthLib.models import list_packages
        except ImportError as error:
            logging.info("MedSynth: model packages not listed yet (%s)", error)
            return result
        result["models"][1:1] = [
            (f"{info.name} ({info.task}{', bundled' if info.bundled else ''})", info.name)
            for info in list_packages()
        ]
        return result

    # ---- what can run ------------------------------------------------------------------------
    def centresOf(self, p) -> list:
        """RAS lesion centres of the point list, in the input volume's own frame."""
        if p.lesionCentres is None:
            return []
        return nodes.control_points_ras(p.lesionCentres, world_to_local=self._worldToLocal(p.inputVolume))

    @staticmethod
    def _worldToLocal(volumeNode):
        if volumeNode is None or volumeNode.GetParentTransformNode() is None:
            return None
        transform = volumeNode.GetParentTransformNode().GetTransformFromWorld()
        return lambda point: transform.TransformPoint(point)

    def reasonsNotToApply(self, p) -> list[str]:
        """Why Apply is disabled, for its tooltip; empty when it can run."""
        reasons = []
        if p.inputVolume is None:
            reasons.append(_("Select an input volume."))
        elif p.inputVolume.GetImageData() is None:
            reasons.append(_("The input volume has no voxels."))
        elif p.inputVolume.GetImageData().GetNumberOfScalarComponents() != 1:
            reasons.append(_("The input is a colour or vector volume; MedSynth needs a scalar volume."))
        if p.model == "file" and not str(p.modelFile or "").strip(". "):
            reasons.append(_("Choose the model package file (.json) or another model."))
        if p.task == "enhance" and not (p.enhanceDenoise or p.enhanceBias or p.enhanceSuperResolve):
            reasons.append(_("Tick at least one enhancement step."))
        if p.task == "fill" and not p.fillUpsample and p.inputVolume is not None:
            try:
                tasks.parse_slice_list(p.fillSlices)
            except ValueError as error:
                reasons.append(str(error))
            except ImportError:
                pass  # checked again after the dependencies are installed
        return reasons

    def requestFor(self, p) -> tasks.TaskRequest:
        """The panel's settings for the selected task as a :class:`TaskRequest`."""
        model = str(p.modelFile) if p.model == "file" else p.model
        common = {"device": p.device or "auto", "seed": int(p.seed), "model": model}
        if p.task == "fill" and p.fillUpsample:
            return tasks.TaskRequest("upsample", {**common, "factor": int(p.upsampleFactor),
                                                  "axis": p.fillAxis, "method": p.fillMethod})
        if p.task == "fill":
            shape = p.inputVolume.GetImageData().GetDimensions() if p.inputVolume is not None else None
            axisSize = None
            if shape is not None and p.fillAxis in ("i", "j", "k"):
                axisSize = shape["ijk".index(p.fillAxis)]
            slices = tasks.parse_slice_list(p.fillSlices, size=axisSize)
            return tasks.TaskRequest("fill", {**common, "slices": slices, "axis": p.fillAxis, "method": p.fillMethod})
        if p.task == "lesion":
            return tasks.TaskRequest("lesion", {
                **common, "preset": p.lesionPreset, "centres": self.centresOf(p), "count": int(p.lesionCount),
                "size_mm": float(p.lesionSize), "contrast": float(p.lesionContrast),
                "label_mode": "classes" if p.lesionLabels == "per class" else "instances",
            })
        # The library's step grammar (``medsynth enhance --steps`` takes the same strings).
        steps = []
        if p.enhanceBias:
            steps.append(f"bias:{int(p.biasShrink)}")
        if p.enhanceDenoise:
            steps.append(f"denoise:{p.denoiseMethod}:{float(p.denoiseStrength):g}")
        if p.enhanceSuperResolve:
            steps.append(f"upsample:{int(p.superResolveFactor)}")
        return tasks.TaskRequest("enhance", {**common, "steps": steps})

    # ---- node <-> Volume -------------------------------------------------------------------
    def maskArray(self, segmentationNode, referenceVolumeNode) -> Optional[np.ndarray]:
        """The visible segments of ``segmentationNode`` as one boolean mask on the volume's grid."""
        if segmentationNode is None:
            return None
        segmentIds = vtk.vtkStringArray()
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.GetVisibleSegmentIDs(segmentIds)
        else:
            segmentationNode.GetSegmentation().GetSegmentIDs(segmentIds)
        if segmentIds.GetNumberOfValues() == 0:
            raise ValueError(_("The mask segmentation {name} has no visible segment; show one or choose no mask.")
                             .format(name=segmentationNode.GetName()))
        labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentationNode, segmentIds, labelmapNode, referenceVolumeNode)
            return slicer.util.arrayFromVolume(labelmapNode) > 0
        finally:
            slicer.mrmlScene.RemoveNode(labelmapNode)

    # ---- running ----------------------------------------------------------------------------
    def start(self, inputNode, request: tasks.TaskRequest, *, inPlace: bool = False, maskNode=None,
              segmentationNode=None):
        """Copy the input (main thread) and start ``request`` on the worker thread.

        Returns ``(job, context)``; pass the job's result and ``context`` to :meth:`apply` once the
        job has succeeded. The node is not touched until then.
        """
        volume = nodes.volume_from_node(inputNode)
        mask = self.maskArray(maskNode, inputNode)
        context = {
            "request": request,
            "inputNodeID": inputNode.GetID(),
            "snapshot": volume,
            "inPlace": bool(inPlace),
            "segmentationNodeID": segmentationNode.GetID() if segmentationNode is not None else None,
        }

        def work(progress, cancel):
            _limitTorchThreads()
            return tasks.run_request(volume, request, mask=mask, progress=progress, cancel=cancel)

        return self.worker.submit(work, description=request.task), context

    def startFromParameters(self, p):
        """:meth:`start` with the panel's settings."""
        return self.start(
            p.inputVolume, self.requestFor(p), inPlace=p.outputMode == "in place", maskNode=p.maskSegmentation,
            segmentationNode=p.lesionSegmentation,
        )

    def run(self, inputNode, task: str, parameters: dict, *, inPlace: bool = False, maskNode=None,
            segmentationNode=None, timeout: float = 600.0):
        """Run one task and wait for it (scripts, the self-test); returns the output volume node.

        Slicer's event loop keeps running while waiting, as it does when the panel polls.
        """
        request = tasks.TaskRequest(task, {"device": "auto", "seed": 0, "model": "auto", **parameters})
        job, context = self.start(inputNode, request, inPlace=inPlace, maskNode=maskNode,
                                  segmentationNode=segmentationNode)
        deadline = time.monotonic() + timeout
        while not job.wait(0.03):
            slicer.app.processEvents()
            if time.monotonic() > deadline:
                job.cancel()
                job.wait()
        status = job.status()
        if status.state != JobState.SUCCEEDED:
            raise status.error or RuntimeError(status.message)
        self.apply(status.result, context)
        return context["outputNode"]

    def apply(self, outcome: tasks.TaskOutcome, context: dict) -> str:
        """Put a finished result into the scene (main thread); returns the panel's result line.

        In place: the voxels are replaced only now, after success, with an undo copy kept first.
        If the input's voxels or geometry changed while the task ran, the result goes to a new
        volume instead, so the user's edit is not overwritten.
        """
        scene = slicer.mrmlScene
        inputNode = scene.GetNodeByID(context["inputNodeID"])
        if inputNode is None:
            raise RuntimeError(_("The input volume was deleted while MedSynth was running."))
        request = outcome.request
        summary = tasks.summarize(outcome)
        inPlace = context["inPlace"]
        current = nodes.volume_from_node(inputNode) if inPlace else None
        if inPlace and not arrays_equal(current, context["snapshot"]):
            # Edited meanwhile (e.g. painted in Segment Editor's mask tools): keep the user's edit.
            inPlace = False
            summary += _(" · the input changed while running, so the result is a new volume")
        entry = history.history_entry(
            action="edited" if inPlace else "created", task=request.task, parameters=request.parameters,
            report=outcome.report, output="in place" if inPlace else "new volume",
            source=None if inPlace else f"{inputNode.GetName()} ({inputNode.GetID()})",
        )
        previousHistory = inputNode.GetAttribute(history.HISTORY_ATTRIBUTE)
        if inPlace:
            outputNode = inputNode
            kept = self.undoStack.push(
                inputNode.GetID(), current, description=request.task, history=previousHistory,
                name=inputNode.GetName(),
            )
            if not kept:
                summary += _(" · too large to keep an undo copy")
        else:
            name = scene.GenerateUniqueName(f"{inputNode.GetName()} {request.task}")
            outputNode = slicer.modules.volumes.logic().CloneVolumeWithoutImageData(scene, inputNode, name)
        nodes.update_node_from_volume(outputNode, outcome.volume)
        outputNode.SetAttribute(history.HISTORY_ATTRIBUTE, history.append_history(previousHistory, entry))
        if request.task == "lesion":
            outputNode.SetName(history.lesion_volume_name(outputNode.GetName()))
            segmentationNode, segmentIds = self.labelsToSegmentation(outcome, outputNode, context, entry)
            context["segmentationNode"] = segmentationNode
            if inPlace and kept:
                # Undo of these lesions removes their segments too.
                self.undoStack.peek(inputNode.GetID()).extra["segments"] = [
                    (segmentationNode.GetID(), segmentId) for segmentId in segmentIds]
        context["outputNode"] = outputNode
        slicer.util.setSliceViewerLayers(background=outputNode)
        return summary

    def labelsToSegmentation(self, outcome: tasks.TaskOutcome, volumeNode, context: dict, entry: dict):
        """Lesion labels as named, coloured segments on the edited volume's geometry."""
        scene = slicer.mrmlScene
        segmentationNode = scene.GetNodeByID(context["segmentationNodeID"]) if context.get("segmentationNodeID") else None
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volumeNode.GetName()} lesions"))
            segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = []
        for segment in outcome.segments:
            segmentId = segmentation.AddEmptySegment("", segment["name"], segment["color"])
            mask = (outcome.labels == segment["value"]).astype(np.uint8)
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, volumeNode)
            segmentIds.append(segmentId)
        segmentationNode.SetAttribute(
            history.HISTORY_ATTRIBUTE,
            history.append_history(segmentationNode.GetAttribute(history.HISTORY_ATTRIBUTE),
                                   {**entry, "action": "created", "source": f"{volumeNode.GetName()} ({volumeNode.GetID()})"}),
        )
        return segmentationNode, segmentIds

    # ---- undo, detection, navigation ---------------------------------------------------------
    def canUndo(self, volumeNode) -> bool:
        return volumeNode is not None and self.undoStack.can_undo(volumeNode.GetID())

    def undo(self, volumeNode) -> str:
        """Restore the voxels, geometry, name and history from before the last in-place edit."""
        entry = self.undoStack.pop(volumeNode.GetID()) if volumeNode is not None else None
        if entry is None:
            raise RuntimeError(_("Nothing to undo for this volume."))
        nodes.update_node_from_volume(volumeNode, entry.volume)
        if entry.name:
            volumeNode.SetName(entry.name)
        if entry.history:
            volumeNode.SetAttribute(history.HISTORY_ATTRIBUTE, entry.history)
        else:
            volumeNode.RemoveAttribute(history.HISTORY_ATTRIBUTE)
        for segmentationNodeID, segmentId in entry.extra.get("segments", []):
            segmentationNode = slicer.mrmlScene.GetNodeByID(segmentationNodeID)
            if segmentationNode is not None and segmentationNode.GetSegmentation().GetSegment(segmentId) is not None:
                segmentationNode.GetSegmentation().RemoveSegment(segmentId)
        return _("Undid {task} on {name}").format(task=entry.description, name=volumeNode.GetName())

    def detectMissingSlices(self, volumeNode, *, axis: str = "auto") -> list:
        """(index, reason) of the blank or corrupted slices the library finds (fast; main thread)."""
        from MedSynthLib.tasks.fill import find_missing_slices

        volume = nodes.volume_from_node(volumeNode)
        return [(int(index), str(reason)) for index, reason in find_missing_slices(volume, axis=axis)]

    def jumpToSlice(self, volumeNode, index: int, *, axis: str = "auto") -> None:
        """Centre the slice views on slice ``index`` along ``axis`` of ``volumeNode``."""
        from MedSynthLib.volume import array_axis

        volume = nodes.volume_from_node(volumeNode)
        arrayAxis = array_axis(axis, volume)
        centre = [(n - 1) / 2.0 for n in volume.shape_ijk]
        centre[2 - arrayAxis] = float(index)
        ras = volume.ijk_points_to_ras(centre)
        slicer.modules.markups.logic().JumpSlicesToLocation(*ras, True)


def _limitTorchThreads() -> None:
    """Leave one CPU core to Slicer's GUI while torch works (runs once, on the worker thread)."""
    try:
        import torch
    except ImportError:
        return
    cores = os.cpu_count() or 1
    if cores > 2 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)


#
# MedSynthTest
#


class MedSynthTest(ScriptedLoadableModuleTest):
    """Self-test on synthetic volumes made here (no downloads): each task through the Logic,
    geometry, dtype, provenance and undo checked. Run it from the Reload & Test button or with
    ``Slicer --testing --python-code "slicer.selfTests['MedSynth']()"``.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_NodeConversionRoundTrip()
        self.setUp()
        self.test_FillInPlaceAndUndo()
        self.setUp()
        self.test_UpsampleNewVolume()
        self.setUp()
        self.test_LesionsSegmentation()
        self.setUp()
        self.test_Enhance()
        self.setUp()
        self.test_CancelLeavesInputUntouched()
        self.setUp()
        self.test_MaskFromSegmentation()

    # ---- helpers ----------------------------------------------------------------------------
    @staticmethod
    def obliqueMatrix(spacing=(0.9, 1.1, 3.0)):
        a, b, c = 0.3, -0.2, 0.45
        rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
        matrix = np.eye(4)
        matrix[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
        matrix[:3, 3] = (-12.5, 30.25, 4.0)
        return matrix

    def makeVolumeNode(self, shape=(12, 40, 48), dtype=np.int16, name="MedSynthTestVolume"):
        """A head-like phantom (ellipsoid with a bright core, texture and noise) on an oblique grid."""
        rng = np.random.default_rng(0)
        k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        r = np.sqrt((i / 0.85) ** 2 + (j / 0.8) ** 2 + (k / 0.95) ** 2)
        image = 100.0 * (r < 1) + 60.0 * (r < 0.35) + 30 * np.sin(3 * i) * (r < 1) + rng.normal(0, 2.0, shape)
        array = np.round(np.clip(image, 0, None)).astype(dtype)
        return slicer.util.addVolumeFromArray(array, ijkToRAS=self.obliqueMatrix(), name=name)

    def assertSameGeometry(self, nodeA, nodeB):
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        nodeA.GetIJKToRASMatrix(a)
        nodeB.GetIJKToRASMatrix(b)
        np.testing.assert_allclose(nodes.matrix_to_array(a), nodes.matrix_to_array(b), atol=1e-6)

    # ---- tests ------------------------------------------------------------------------------
    def test_NodeConversionRoundTrip(self):
        self.delayDisplay("Node <-> Volume round trip")
        node = self.makeVolumeNode()
        volume = nodes.volume_from_node(node)
        np.testing.assert_array_equal(volume.array, slicer.util.arrayFromVolume(node))
        np.testing.assert_allclose(volume.ijk_to_ras, self.obliqueMatrix(), atol=1e-9)
        copy = slicer.modules.volumes.logic().CloneVolumeWithoutImageData(slicer.mrmlScene, node, "copy")
        nodes.update_node_from_volume(copy, volume)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(copy), volume.array)
        self.assertSameGeometry(node, copy)
        self.delayDisplay("Round trip passed")

    def test_FillInPlaceAndUndo(self):
        self.delayDisplay("Fill slices in place, then undo")
        node = self.makeVolumeNode()
        original = slicer.util.arrayFromVolume(node).copy()
        damaged = original.copy()
        damaged[5] = 0
        slicer.util.updateVolumeFromArray(node, damaged)
        logic = MedSynthLogic()
        output = logic.run(node, "fill", {"slices": [5], "axis": "k", "method": "linear"}, inPlace=True)
        self.assertIs(output, node)
        filled = slicer.util.arrayFromVolume(node)
        self.assertEqual(filled.dtype, original.dtype)
        np.testing.assert_array_equal(np.delete(filled, 5, axis=0), np.delete(damaged, 5, axis=0))
        self.assertGreater(np.abs(filled[5].astype(float)).sum(), 0)
        self.assertSameGeometry(node, self.makeVolumeNode(name="reference"))
        self.assertEqual(json.loads(node.GetAttribute(history.HISTORY_ATTRIBUTE))[-1]["task"], "fill")
        logic.undo(node)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), damaged)
        self.assertIsNone(node.GetAttribute(history.HISTORY_ATTRIBUTE))
        self.delayDisplay("Fill and undo passed")

    def test_UpsampleNewVolume(self):
        self.delayDisplay("Upsample through-plane into a new volume")
        node = self.makeVolumeNode()
        before = slicer.util.arrayFromVolume(node).copy()
        output = MedSynthLogic().run(node, "upsample", {"factor": 2, "axis": "k", "method": "linear"})
        self.assertIsNot(output, node)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
        upsampled = nodes.volume_from_node(output)
        self.assertAlmostEqual(upsampled.spacing[2], 1.5, places=4)
        np.testing.assert_allclose(upsampled.direction, nodes.volume_from_node(node).direction, atol=1e-6)
        self.assertIn('"created"', output.GetAttribute(history.HISTORY_ATTRIBUTE))
        self.delayDisplay("Upsample passed")

    def test_LesionsSegmentation(self):
        self.delayDisplay("Synthetic lesions at a clicked point")
        node = self.makeVolumeNode()
        volume = nodes.volume_from_node(node)
        centre = volume.ijk_points_to_ras([24.0, 20.0, 6.0]).tolist()
        output = MedSynthLogic().run(node, "lesion", {"centres": [centre], "seed": 3})
        self.assertIn(history.SYNTHETIC_LESIONS_SUFFIX.strip(), output.GetName())
        segmentationNodes = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
        self.assertEqual(len(segmentationNodes), 1)
        segmentation = segmentationNodes[0].GetSegmentation()
        self.assertGreaterEqual(segmentation.GetNumberOfSegments(), 1)
        segmentId = segmentation.GetNthSegmentID(0)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNodes[0], segmentId, output)
        self.assertGreater(int(mask.sum()), 0)
        self.assertIsNotNone(segmentationNodes[0].GetAttribute(history.HISTORY_ATTRIBUTE))
        # In place, into the same segmentation; undo restores the voxels and removes the new segments.
        before = slicer.util.arrayFromVolume(node).copy()
        segmentCount = segmentation.GetNumberOfSegments()
        logic = MedSynthLogic()
        logic.run(node, "lesion", {"centres": [centre], "seed": 4}, inPlace=True,
                  segmentationNode=segmentationNodes[0])
        self.assertGreater(segmentation.GetNumberOfSegments(), segmentCount)
        self.assertFalse(np.array_equal(slicer.util.arrayFromVolume(node), before))
        logic.undo(node)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
        self.assertEqual(segmentation.GetNumberOfSegments(), segmentCount)
        self.assertNotIn(history.SYNTHETIC_LESIONS_SUFFIX.strip(), node.GetName())
        self.delayDisplay("Lesions passed")

    def test_Enhance(self):
        self.delayDisplay("Enhance: denoise into a new volume")
        node = self.makeVolumeNode(dtype=np.float32)
        output = MedSynthLogic().run(node, "enhance", {"steps": ["denoise:nlm"]})
        result = slicer.util.arrayFromVolume(output)
        self.assertEqual(result.dtype, np.float32)
        self.assertEqual(result.shape, slicer.util.arrayFromVolume(node).shape)
        self.assertSameGeometry(node, output)
        self.delayDisplay("Enhance passed")

    def test_CancelLeavesInputUntouched(self):
        self.delayDisplay("Cancel leaves the input untouched")
        node = self.makeVolumeNode()
        before = slicer.util.arrayFromVolume(node).copy()
        logic = MedSynthLogic()
        job, _context = logic.start(node, tasks.TaskRequest("enhance", {"steps": ["denoise:nlm"]}), inPlace=True)
        job.cancel()
        job.wait(60)
        self.assertIn(job.status().state, (JobState.CANCELLED, JobState.SUCCEEDED))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
        self.assertFalse(logic.canUndo(node))
        self.delayDisplay("Cancel passed")

    def test_MaskFromSegmentation(self):
        self.delayDisplay("A segmentation becomes a mask on the volume's grid")
        node = self.makeVolumeNode()
        labels = np.zeros(slicer.util.arrayFromVolume(node).shape, np.uint8)
        labels[3:7, 10:20, 12:30] = 1
        labelmap = slicer.util.addVolumeFromArray(labels, ijkToRAS=self.obliqueMatrix(), name="box",
                                                  nodeClassName="vtkMRMLLabelMapVolumeNode")
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentationNode)
        mask = MedSynthLogic().maskArray(segmentationNode, node)
        self.assertEqual(mask.shape, labels.shape)
        self.assertEqual(int(mask.sum()), int(labels.sum()))
        np.testing.assert_array_equal(mask, labels > 0)
        self.delayDisplay("Mask passed")
