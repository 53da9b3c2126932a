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

# Heavy packages (torch, MONAI, the tasks' methods) are imported at first use, never here: opening Slicer must
# not wait for them, and they may not be installed yet. The task packages export lazily, so importing them (and
# their torch-free options classes, which the panel reads its choices from) costs nothing.
from MedSynthLib.errors import Cancelled, InputError
from MedSynthLib.provenance import PROVENANCE_COLOURS, PROVENANCE_NAMES, SYNTHESISED
from MedSynthSlicerLib import choices, dependencies, devices, history, nodes, panel_settings, result_line
from MedSynthSlicerLib.task_request import ProcessResult, TaskOutcome, request_for
from MedSynthSlicerLib.task_runs import run_request
from MedSynthSlicerLib.undo import UndoStack, arrays_equal
from MedSynthSlicerLib.worker import BackgroundWorker, Job, JobState, JobStatus

DOCS_URL = "https://github.com/medsynth/MedSynth/blob/main/docs/slicer.md"  # = EXTENSION_HOMEPAGE

#: Edits remembered per volume, and the memory all undo copies together may use.
UNDO_STEPS = 5
UNDO_BYTES = 2 * 1024**3

#: The segmentation that shows which voxels of an output were synthesised (1) or rewritten (2), and the volume
#: attribute that points to it.
SYNTHETIC_MASK_NAME = "MedSynth: synthesised"
SYNTHETIC_MASK_ATTRIBUTE = "MedSynth.syntheticMask"

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

    Sizes and contrasts set to 0 mean "the preset's own value", time budgets 0 the library's automatic one.
    Choices and ranges of the fields that show a library option are not written here: the panel reads them
    from the library's options objects at start-up (``panel_settings.PANEL_KNOBS``), and the options object
    built at Apply checks the values, with the same message as the command line.
    """

    # Inputs
    inputVolume: vtkMRMLScalarVolumeNode
    maskSegmentation: vtkMRMLSegmentationNode
    task: Annotated[str, Choice(["fill", "lesion", "enhance"])] = "fill"

    # Fill slices / upsample
    fillSlices: str = ""
    fillAxis: str = "auto"
    fillMethod: str = "auto"
    fillUpsample: bool = False
    upsampleFactor: int = 2
    fillUncertainty: bool = False  # an uncertainty overlay (standard deviation) with the result
    timeBudget: float = 0.0  # seconds; 0: the library's automatic budget
    enhanceTimeBudget: float = 0.0  # seconds for the Enhance pipeline; 0: the library's automatic budget

    # Lesions
    lesionPreset: str = "auto"
    lesionCentres: vtkMRMLMarkupsFiducialNode
    lesionCount: int = 3
    lesionSize: Annotated[float, WithinRange(*panel_settings.slider_range("lesionSizeSliderWidget"))] = 0.0
    lesionContrast: float = 0.0
    lesionLabels: str = "classes"
    lesionSegmentation: vtkMRMLSegmentationNode

    # Enhance
    enhanceDenoise: bool = True
    denoiseMethod: str = "auto"
    denoiseStrength: Annotated[float, WithinRange(*panel_settings.slider_range("denoiseStrengthSliderWidget"))] = 1.0
    enhanceBias: bool = False
    biasShrink: int = 6

    # Model, device, output
    model: str = "auto"
    modelFile: pathlib.Path
    device: str = "auto"
    seed: int = 0
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
        self.logic.forgetScene()
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
            self.ui.lesionCountSpinBox.enabled = not (p.lesionCentres and p.lesionCentres.GetNumberOfControlPoints())
            self.ui.lesionPlaceWidget.setCurrentNode(p.lesionCentres)
            self.ui.denoiseMethodComboBox.enabled = p.enhanceDenoise
            self.ui.denoiseStrengthSliderWidget.enabled = p.enhanceDenoise
            self.ui.biasShrinkSpinBox.enabled = p.enhanceBias
            self.updateButtons(p, running)
        finally:
            self._updatingGUI = False

    def updateButtons(self, p, running: bool) -> None:
        reasons = [] if running else panel_settings.reasons_not_to_apply(p)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.enabled = running or not reasons
        self.ui.applyButton.toolTip = (
            _("Stop the running task; the input is left unchanged.") if running
            else ("\n".join(reasons) if reasons else _("Run the task of the selected tab."))
        )
        for section in (self.ui.inputsCollapsibleButton, self.ui.taskTabWidget, self.ui.settingsCollapsibleButton):
            section.enabled = not running
        self.ui.detectButton.enabled = not running and p.inputVolume is not None
        canUndo = not running and p.inputVolume is not None and self.logic.canUndo(p.inputVolume)
        self.ui.undoButton.enabled = canUndo
        self.ui.undoButton.toolTip = (
            _("Restore {name} as it was before the last in-place edit ({count} step(s) kept).").format(
                name=p.inputVolume.GetName(), count=self.logic.undoStack.depth(p.inputVolume.GetID()))
            if canUndo else _("Nothing to undo: only in-place edits of the input volume can be undone.")
        )

    def populateChoices(self) -> None:
        """Fill the run-time lists (devices, models, presets) from what is installed now, and every widget that
        shows a library option (choices, range, tooltip) from the library's options objects."""
        found = choices.panel_choices()
        lists = [(self.ui.deviceComboBox, found["devices"]), (self.ui.modelComboBox, found["models"]),
                 (self.ui.lesionPresetComboBox, found["presets"])]
        for name, offer in panel_settings.panel_knobs().items():
            widget = getattr(self.ui, name)
            widget.toolTip = offer["toolTip"]
            if "items" in offer:
                lists.append((widget, offer["items"]))
                continue
            wasBlocked = widget.blockSignals(True)
            widget.minimum, widget.maximum = offer["low"], offer["high"]
            if offer["zero"] and hasattr(widget, "specialValueText"):
                widget.specialValueText = offer["zero"]
            widget.blockSignals(wasBlocked)
        self.ui.fillUncertaintyCheckBox.toolTip = panel_settings.owner_options("fill").knob("uncertainty").help
        for combo, items in lists:
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
        self.ui.deviceInfoLabel.text = found["deviceSummary"]
        self.ui.deviceInfoLabel.toolTip = found["deviceWarning"] or found["deviceSummary"]
        for task, present in found["tasks"].items():
            if task != "upsample":  # upsampling is an option of the Fill tab
                self.ui.taskTabWidget.setTabEnabled(self.ui.taskTabWidget.indexOf(getattr(self.ui, f"{task}Tab")), present)

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
            self._job, self._jobContext = self.logic.startFromParameters(self._parameterNode)
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
        if status.state == JobState.SUCCEEDED:
            with slicer.util.tryWithErrorDisplay(_("Failed to apply the result."), waitCursor=True):
                self.ui.resultLabel.text = self.logic.finish(status, context).summary
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
            except ImportError:  # the library's dependencies are installed at first use
                if not self.ensureDependencies():
                    return
                found = self.logic.detectMissingSlices(p.inputVolume, axis=p.fillAxis)
            self.ui.suspectSlicesList.clear()
            for index, reason in found:
                self.ui.suspectSlicesList.addItem(f"{index}: {reason}")
            p.fillSlices = panel_settings.format_slice_list([index for index, _reason in found])
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

        def status(text: str) -> None:
            self.ui.statusLabel.text = text
            slicer.app.processEvents()

        return self.logic.ensureDependencies(
            confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle=_("Install MedSynth dependencies")),
            status=status,
        )


#
# MedSynthLogic
#


class MedSynthLogic(ScriptedLoadableModuleLogic):
    """The only place that touches MRML for MedSynth: node <-> Volume, background runs, results,
    undo and provenance. Computation is MedSynthLib's. Scriptable from Slicer's Python console
    (the panel's Apply takes the same path)::

        logic = slicer.util.getModuleLogic("MedSynth")  # or MedSynth.MedSynthLogic()
        result = logic.process("lesion", getNode("T1"), preset="mr-wmh", count=3, seed=7)
        result.volume, result.segmentation, result.report["lesions"]
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.worker = BackgroundWorker()
        self.undoStack = UndoStack(max_steps=UNDO_STEPS, max_bytes=UNDO_BYTES)
        self._syntheticMasks: dict = {}  # segmentation node ID -> its mask (KJI uint8), to accumulate and undo
        self.requirementsPath = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

    def getParameterNode(self):
        return MedSynthParameterNode(super().getParameterNode())

    def shutdown(self) -> None:
        self.worker.shutdown(timeout=2.0)

    # ---- dependencies -----------------------------------------------------------------------
    def ensureDependencies(self, *, confirm, status=None) -> bool:
        """Install what is missing: torch through PyTorchUtils, the rest with pip after ``confirm(text)``."""
        return dependencies.ensure_dependencies(
            dependencies.read_requirements(self.requirementsPath), torch_installed=choices.torch_installed,
            install_torch=self.installTorch, confirm=confirm, install_packages=self.installPackages, status=status,
        )

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
        return torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=">=2.1") is not None

    def installPackages(self, requirements: list) -> None:
        """pip install ``requirements`` with Slicer's numpy, SimpleITK, vtk and torch pinned."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            constraints = os.path.join(folder, "constraints.txt")
            with open(constraints, "w", encoding="utf-8") as file:
                file.write(dependencies.constraints_text())
            slicer.util.pip_install(["-c", constraints, *requirements])

    # ---- inputs: centres through transforms, masks -------------------------------------------
    def centresInVolumeFrame(self, volumeNode, centres) -> list:
        """Lesion centres (markups or world RAS points) in the volume's own frame, transforms respected."""
        return nodes.centres_in_volume_frame(volumeNode, centres)

    def maskArray(self, segmentationNode, referenceVolumeNode) -> Optional[np.ndarray]:
        """The visible segments of ``segmentationNode`` as one boolean mask on the volume's grid.

        The segments are resampled onto the volume's geometry, so a segmentation drawn on another
        grid (or another volume) works.
        """
        if segmentationNode is None:
            return None
        segmentIds = vtk.vtkStringArray()
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.GetVisibleSegmentIDs(segmentIds)
        else:
            segmentationNode.GetSegmentation().GetSegmentIDs(segmentIds)
        if segmentIds.GetNumberOfValues() == 0:
            raise InputError(_("The mask segmentation {name} has no visible segment; show one or choose no mask.")
                             .format(name=segmentationNode.GetName()))
        labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentationNode, segmentIds, labelmapNode, referenceVolumeNode)
            return slicer.util.arrayFromVolume(labelmapNode) > 0
        finally:
            slicer.mrmlScene.RemoveNode(labelmapNode)

    def _mask(self, mask, volumeNode, volume) -> Optional[np.ndarray]:
        if mask is None or hasattr(mask, "GetSegmentation"):
            return self.maskArray(mask, volumeNode)
        mask = np.asarray(mask)
        if mask.shape != volume.array.shape:
            raise InputError(f"mask shape {mask.shape} does not match the volume's {volume.array.shape} (KJI)")
        return mask.astype(bool)

    # ---- running: start (panel and process), wait, finish ------------------------------------
    def start(self, task: str, inputVolume, *, inPlace: bool = False, mask=None, centres=None,
              segmentation=None, **options):
        """Copy the input (main thread) and start ``task`` on the worker thread; returns ``(job, context)``.

        The node is not touched until :meth:`finish` is given the job's final status.
        """
        volume = nodes.volume_from_node(inputVolume)
        request = request_for(task, options, centres=self.centresInVolumeFrame(inputVolume, centres))
        maskArray = self._mask(mask, inputVolume, volume)
        context = {
            "request": request,
            "inputNodeID": inputVolume.GetID(),
            "snapshot": volume,
            "inPlace": bool(inPlace),
            "segmentationNodeID": segmentation.GetID() if segmentation is not None else None,
        }

        def work(progress, cancel):
            devices.limit_torch_threads()
            return run_request(volume, request, mask=maskArray, progress=progress, cancel=cancel)

        return self.worker.submit(work, description=task), context

    def startFromParameters(self, p):
        """:meth:`start` with the panel's settings (the same call ``process`` makes)."""
        hasCentres = bool(p.lesionCentres and p.lesionCentres.GetNumberOfControlPoints())
        task, options = panel_settings.options_from_settings(p, has_centres=hasCentres)
        lesion = task == "lesion"
        return self.start(
            task, p.inputVolume, inPlace=p.outputMode == "in place", mask=p.maskSegmentation,
            centres=p.lesionCentres if lesion else None, segmentation=p.lesionSegmentation if lesion else None,
            **options,
        )

    def process(self, task: str, inputVolume, *, inPlace: bool = False, mask=None, centres=None,
                segmentation=None, timeout: Optional[float] = None, **options) -> ProcessResult:
        """Run ``task`` on ``inputVolume`` and wait for it; what the panel's Apply does, for scripts.

        Parameters
        ----------
        task : {"fill", "upsample", "lesion", "enhance"}
        inputVolume : vtkMRMLScalarVolumeNode
        inPlace : bool
            Edit the input (undoable with :meth:`undo`) instead of creating a new volume.
        mask : vtkMRMLSegmentationNode or ndarray, optional
            Its visible segments (resampled onto the input's grid), or a KJI boolean array: the
            lesion region, or the denoise/bias mask.
        centres : vtkMRMLMarkupsFiducialNode or list of (R, A, S), optional
            Lesion centres in world RAS; the markups' and the volume's transforms are respected.
        segmentation : vtkMRMLSegmentationNode, optional
            Lesions: add the segments here instead of to a new segmentation.
        timeout : float, optional
            Seconds after which the task is cancelled (and :class:`Cancelled` raised).
        **options
            The Python API's keyword arguments: ``slices``, ``axis``, ``method``, ``factor``,
            ``preset``, ``count``, ``size`` (or ``size_mm``), ``contrast``, ``label_mode``,
            ``steps``, ``model``, ``device``, ``seed``.

        Returns
        -------
        ProcessResult
            ``volume`` (output node), ``segmentation`` (lesions, else None), ``report``, ``summary``.

        Raises
        ------
        InputError, ModelError, Cancelled
            The library's errors, as the library raises them; the scene is then unchanged.
        """
        job, context = self.start(task, inputVolume, inPlace=inPlace, mask=mask, centres=centres,
                                  segmentation=segmentation, **options)
        deadline = None if timeout is None else time.monotonic() + timeout
        processEvents = getattr(getattr(slicer, "app", None), "processEvents", None)
        while not job.wait(0.03):
            if processEvents is not None:
                processEvents()  # inside Slicer the GUI keeps drawing; a plain Python session just waits
            if deadline is not None and time.monotonic() > deadline:
                job.cancel()
        return self.finish(job.status(), context)

    def finish(self, status: JobStatus, context: dict) -> ProcessResult:
        """Put a finished job's result into the scene (main thread), or raise why there is none."""
        if status.state != JobState.SUCCEEDED:
            raise status.error or RuntimeError(status.message)
        if slicer.mrmlScene.GetNodeByID(context["inputNodeID"]) is None:
            raise InputError(_("The input volume was removed (or the scene closed); the result was discarded."))
        return self._apply(status.result, context)

    def _apply(self, outcome: TaskOutcome, context: dict) -> ProcessResult:
        """In place: the voxels are replaced only now, after success, with an undo copy kept first.
        If the input's voxels or geometry changed while the task ran, the result goes to a new
        volume instead, so the user's edit is not overwritten.
        """
        inputNode = slicer.mrmlScene.GetNodeByID(context["inputNodeID"])
        request = outcome.request
        summary = result_line.summarize(outcome)
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
        kept = False
        if inPlace:
            outputNode = inputNode
            kept = self.undoStack.push(inputNode.GetID(), current, description=request.task,
                                       history=previousHistory, name=inputNode.GetName())
            summary += "" if kept else _(" · too large to keep an undo copy")
        else:
            outputNode = self._newOutputNode(inputNode, request.task)
        nodes.update_node_from_volume(outputNode, outcome.volume)
        provenanceNode, provenanceUndo = None, None
        if outcome.synthetic_mask is not None and outcome.synthetic_mask.any():
            provenanceNode, provenanceUndo = self.showSyntheticMask(outcome.synthetic_mask, outputNode)
            entry["synthetic_mask"] = f"{provenanceNode.GetName()} ({provenanceNode.GetID()})"
        uncertaintyNode = None
        if outcome.uncertainty is not None:
            uncertaintyNode = self.showUncertainty(outcome.uncertainty, outputNode)
            entry["uncertainty"] = f"{uncertaintyNode.GetName()} ({uncertaintyNode.GetID()})"
        outputNode.SetAttribute(history.HISTORY_ATTRIBUTE, history.append_history(previousHistory, entry))
        if kept:  # undo restores the synthesised-voxel segmentation and removes the overlay made here
            extra = self.undoStack.peek(inputNode.GetID()).extra
            extra["provenance"] = provenanceUndo
            extra["nodes"] = [uncertaintyNode.GetID()] if uncertaintyNode is not None else []
        segmentationNode = None
        if request.task == "lesion":
            outputNode.SetName(history.lesion_volume_name(outputNode.GetName()))
            segmentationNode, segmentIds = self.labelsToSegmentation(outcome, outputNode, context, entry)
            if kept:  # undo of these lesions removes their segments too
                self.undoStack.peek(inputNode.GetID()).extra["segments"] = [
                    (segmentationNode.GetID(), segmentId) for segmentId in segmentIds]
        if uncertaintyNode is not None:
            slicer.util.setSliceViewerLayers(background=outputNode, foreground=uncertaintyNode, foregroundOpacity=0.4)
        else:
            slicer.util.setSliceViewerLayers(background=outputNode)
        return ProcessResult(volume=outputNode, segmentation=segmentationNode, report=outcome.report,
                             summary=summary, synthetic_mask=provenanceNode, uncertainty=uncertaintyNode)

    def showSyntheticMask(self, mask: np.ndarray, volumeNode):
        """Put the task's synthesised-voxel mask over ``volumeNode`` as the segmentation "MedSynth: synthesised"
        (segments "synthesised" and "rewritten", shown in the slice views), created or updated.

        Successive in-place edits accumulate on the same grid (a synthesised voxel stays synthesised);
        returns ``(segmentation node, undo record)``, the record being what :meth:`undo` restores.
        """
        scene = slicer.mrmlScene
        nodeID = volumeNode.GetAttribute(SYNTHETIC_MASK_ATTRIBUTE)
        segmentationNode = scene.GetNodeByID(nodeID) if nodeID else None
        previous = self._syntheticMasks.get(nodeID) if segmentationNode is not None else None
        created = segmentationNode is None
        if created:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", SYNTHETIC_MASK_NAME)
            segmentationNode.CreateDefaultDisplayNodes()
            volumeNode.SetAttribute(SYNTHETIC_MASK_ATTRIBUTE, segmentationNode.GetID())
        if previous is not None and previous.shape == mask.shape:
            mask = np.where((mask == SYNTHESISED) | (previous == SYNTHESISED), SYNTHESISED,
                            np.maximum(mask, previous)).astype(np.uint8)
        self._writeSyntheticMask(segmentationNode, volumeNode, mask)
        return segmentationNode, {"nodeID": segmentationNode.GetID(), "volumeID": volumeNode.GetID(),
                                  "created": created, "previous": previous}

    def _writeSyntheticMask(self, segmentationNode, volumeNode, mask: np.ndarray) -> None:
        segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        for value, name in PROVENANCE_NAMES.items():
            if value == 0:
                continue
            segmentId = segmentation.GetSegmentIdBySegmentName(name)
            if not segmentId:
                segmentId = segmentation.AddEmptySegment(name, name, PROVENANCE_COLOURS[value])
            slicer.util.updateSegmentBinaryLabelmapFromArray((mask == value).astype(np.uint8), segmentationNode,
                                                            segmentId, volumeNode)
        self._syntheticMasks[segmentationNode.GetID()] = np.array(mask, np.uint8)

    def showUncertainty(self, uncertainty: np.ndarray, volumeNode):
        """The uncertainty (standard deviation) as a scalar volume on ``volumeNode``'s grid and transform."""
        scene = slicer.mrmlScene
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                       scene.GenerateUniqueName(f"{volumeNode.GetName()} uncertainty (sd)"))
        geometry = nodes.volume_from_node(volumeNode)
        nodes.update_node_from_volume(node, geometry.with_array(np.asarray(uncertainty, np.float32)))
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        return node

    @staticmethod
    def _newOutputNode(inputNode, task: str):
        """An empty copy of the input (display, transform, attributes) named "<input> <task>", made unique once."""
        scene = slicer.mrmlScene
        baseName = f"{inputNode.GetName()} {task}"
        name = scene.GenerateUniqueName(history.lesion_volume_name(baseName) if task == "lesion" else baseName)
        # The volumes logic makes any name it is given unique again (and counts it as used), so clone
        # under a scratch name and set the one chosen here after: "T1 upsample", then "T1 upsample_1"...
        outputNode = slicer.modules.volumes.logic().CloneVolumeWithoutImageData(scene, inputNode, "MedSynth output")
        outputNode.SetName(name)
        return outputNode

    def labelsToSegmentation(self, outcome: TaskOutcome, volumeNode, context: dict, entry: dict):
        """Lesion labels as named, coloured segments on the edited volume's geometry."""
        scene = slicer.mrmlScene
        segmentationNode = scene.GetNodeByID(context["segmentationNodeID"]) if context.get("segmentationNodeID") else None
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volumeNode.GetName()} lesions"))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
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
    def forgetScene(self) -> None:
        """Drop what refers to the closing scene's nodes: the undo copies and the synthesised-voxel masks kept to
        accumulate and undo them (they would otherwise hold their memory for the session)."""
        self.undoStack.clear()
        self._syntheticMasks.clear()

    def canUndo(self, volumeNode) -> bool:
        return volumeNode is not None and self.undoStack.can_undo(volumeNode.GetID())

    def undo(self, volumeNode) -> str:
        """Restore the voxels, geometry, name and history from before the last in-place edit."""
        entry = self.undoStack.pop(volumeNode.GetID()) if volumeNode is not None else None
        if entry is None:
            raise InputError(_("Nothing to undo for this volume."))
        nodes.update_node_from_volume(volumeNode, entry.volume)
        if entry.name:
            volumeNode.SetName(entry.name)
        if entry.history:
            volumeNode.SetAttribute(history.HISTORY_ATTRIBUTE, entry.history)
        else:
            volumeNode.RemoveAttribute(history.HISTORY_ATTRIBUTE)
        provenance = entry.extra.get("provenance")
        if provenance:
            segmentationNode = slicer.mrmlScene.GetNodeByID(provenance["nodeID"])
            if segmentationNode is not None and provenance["created"]:
                slicer.mrmlScene.RemoveNode(segmentationNode)
                volumeNode.RemoveAttribute(SYNTHETIC_MASK_ATTRIBUTE)
                self._syntheticMasks.pop(provenance["nodeID"], None)
            elif segmentationNode is not None and provenance["previous"] is not None:
                self._writeSyntheticMask(segmentationNode, volumeNode, provenance["previous"])
        for nodeID in entry.extra.get("nodes", []):
            node = slicer.mrmlScene.GetNodeByID(nodeID)
            if node is not None:
                slicer.mrmlScene.RemoveNode(node)
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
        centre = [(n - 1) / 2.0 for n in volume.shape_ijk]
        centre[2 - array_axis(axis, volume)] = float(index)
        slicer.modules.markups.logic().JumpSlicesToLocation(*volume.ijk_points_to_ras(centre), True)


#
# MedSynthTest
#


class MedSynthTest(ScriptedLoadableModuleTest):
    """Self-test on synthetic volumes made here (no downloads): each task through ``process`` (the
    panel's path), with geometry, dtype, provenance, undo and a cancel mid-run checked. Run it from
    the Reload & Test button or with ``Slicer --testing --python-code "slicer.selfTests['MedSynth']()"``;
    pytest runs it too, on Slicer's real MRML from the ``slicer-core`` wheel.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_FillInPlaceAndUndo, self.test_UpsampleNewVolume, self.test_LesionsSegmentation,
                     self.test_Enhance, self.test_CancelMidRunLeavesInputUntouched, self.test_MaskFromSegmentation):
            self.setUp()
            test()

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

    def makeVolumeNode(self, shape=(12, 40, 48), dtype=np.int16, name="MedSynthTestVolume", matrix=None):
        """A head-like phantom (ellipsoid with a bright core, texture and noise) on an oblique grid."""
        rng = np.random.default_rng(0)
        k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        r = np.sqrt((i / 0.85) ** 2 + (j / 0.8) ** 2 + (k / 0.95) ** 2)
        image = 100.0 * (r < 1) + 60.0 * (r < 0.35) + 30 * np.sin(3 * i) * (r < 1) + rng.normal(0, 2.0, shape)
        array = np.round(np.clip(image, 0, None)).astype(dtype)
        ijkToRAS = self.obliqueMatrix() if matrix is None else matrix
        return slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRAS, name=name)

    @staticmethod
    def matrixOf(node):
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        return nodes.matrix_to_array(matrix)

    # ---- tests ------------------------------------------------------------------------------
    def test_FillInPlaceAndUndo(self):
        self.delayDisplay("Fill slices in place, then undo")
        node = self.makeVolumeNode()
        damaged = slicer.util.arrayFromVolume(node).copy()
        damaged[5] = 0
        slicer.util.updateVolumeFromArray(node, damaged)
        logic = MedSynthLogic()
        result = logic.process("fill", node, inPlace=True, slices=[5], axis="k", method="linear")
        self.assertIs(result.volume, node)
        self.assertIsNone(result.segmentation)
        self.assertEqual(result.report["method"], "linear")
        filled = slicer.util.arrayFromVolume(node)
        self.assertEqual(filled.dtype, damaged.dtype)
        np.testing.assert_array_equal(np.delete(filled, 5, axis=0), np.delete(damaged, 5, axis=0))
        self.assertGreater(np.abs(filled[5].astype(float)).sum(), 0)
        np.testing.assert_allclose(self.matrixOf(node), self.obliqueMatrix(), atol=1e-9)
        entry = history.read_history(node.GetAttribute(history.HISTORY_ATTRIBUTE))[-1]
        self.assertEqual((entry["task"], entry["action"], entry["parameters"]["slices"]), ("fill", "edited", [5]))
        self.assertIn("Undid fill", logic.undo(node))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), damaged)
        np.testing.assert_allclose(self.matrixOf(node), self.obliqueMatrix(), atol=1e-9)
        self.assertEqual(node.GetName(), "MedSynthTestVolume")
        self.assertIsNone(node.GetAttribute(history.HISTORY_ATTRIBUTE))
        self.assertFalse(logic.canUndo(node))

    def test_UpsampleNewVolume(self):
        self.delayDisplay("Upsample through-plane into a new volume")
        node = self.makeVolumeNode(name="T1")
        before = slicer.util.arrayFromVolume(node).copy()
        logic = MedSynthLogic()
        output = logic.process("upsample", node, factor=2, axis="k", method="linear").volume
        self.assertIsNot(output, node)
        self.assertEqual(output.GetName(), "T1 upsample")
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
        upsampled, original = nodes.volume_from_node(output), nodes.volume_from_node(node)
        self.assertEqual(upsampled.array.shape, (23, 40, 48))
        np.testing.assert_allclose(upsampled.spacing, (0.9, 1.1, 1.5), atol=1e-9)
        np.testing.assert_allclose(upsampled.direction, original.direction, atol=1e-9)
        # The first and the last original slice keep their position in RAS.
        for lastIndex, lastOriginal in ((0, 0), (22, 11)):
            np.testing.assert_allclose(upsampled.ijk_points_to_ras([0, 0, lastIndex]),
                                       original.ijk_points_to_ras([0, 0, lastOriginal]), atol=1e-9)
        self.assertEqual(history.read_history(output.GetAttribute(history.HISTORY_ATTRIBUTE))[-1]["action"], "created")
        self.assertFalse(logic.canUndo(node))
        second = logic.process("upsample", node, factor=2, axis="k", method="linear").volume.GetName()
        self.assertRegex(second, r"^T1 upsample_\d+$")  # made unique by the scene, once

    def test_LesionsSegmentation(self):
        self.delayDisplay("Synthetic lesions at a clicked point")
        node = self.makeVolumeNode(name="T1")
        centre = nodes.volume_from_node(node).ijk_points_to_ras([24.0, 20.0, 6.0]).tolist()
        result = MedSynthLogic().process("lesion", node, centres=[centre], size=8.0, seed=3, label_mode="instances")
        self.assertEqual(result.volume.GetName(), "T1 lesion" + history.SYNTHETIC_LESIONS_SUFFIX)
        segmentation = result.segmentation.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertTrue(segmentation.GetNthSegment(0).GetName().startswith("Synthetic lesion 1"))
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentation, segmentation.GetNthSegmentID(0), result.volume)
        self.assertGreater(int(mask.sum()), 0)
        self.assertAlmostEqual(result.report["lesions"][0]["volume_ml"],
                               mask.sum() * abs(np.linalg.det(self.obliqueMatrix()[:3, :3])) / 1000, places=3)
        self.assertIsNotNone(result.segmentation.GetAttribute(history.HISTORY_ATTRIBUTE))
        # In place, into the same segmentation; undo restores the voxels and removes the new segments.
        before = slicer.util.arrayFromVolume(node).copy()
        logic = MedSynthLogic()
        logic.process("lesion", node, inPlace=True, centres=[centre], size=8.0, seed=4, label_mode="instances",
                      segmentation=result.segmentation)
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        self.assertFalse(np.array_equal(slicer.util.arrayFromVolume(node), before))
        self.assertTrue(node.GetName().endswith(history.SYNTHETIC_LESIONS_SUFFIX))
        logic.undo(node)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(node.GetName(), "T1")

    def test_Enhance(self):
        self.delayDisplay("Enhance: denoise into a new volume")
        node = self.makeVolumeNode(dtype=np.float32)
        output = MedSynthLogic().process("enhance", node, steps=["denoise:nlm"]).volume
        result = slicer.util.arrayFromVolume(output)
        self.assertEqual(result.dtype, np.float32)
        self.assertEqual(result.shape, slicer.util.arrayFromVolume(node).shape)
        self.assertFalse(np.array_equal(result, slicer.util.arrayFromVolume(node)))
        np.testing.assert_allclose(self.matrixOf(output), self.matrixOf(node), atol=1e-9)

    def test_CancelMidRunLeavesInputUntouched(self):
        self.delayDisplay("Cancel during training leaves the input untouched")
        node = self.makeVolumeNode(dtype=np.float32)
        before = slicer.util.arrayFromVolume(node).copy()
        logic = MedSynthLogic()
        job, context = logic.start("enhance", node, inPlace=True, steps=["denoise:selfsup"], device="cpu")
        deadline = time.monotonic() + 120
        while "training" not in job.status().message and not job.done and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertIn("training", job.status().message)  # it is running, mid-training
        job.cancel()
        self.assertTrue(job.wait(60))
        self.assertEqual(job.status().state, JobState.CANCELLED)
        with self.assertRaises(Cancelled):
            logic.finish(job.status(), context)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
        self.assertIsNone(node.GetAttribute(history.HISTORY_ATTRIBUTE))
        self.assertFalse(logic.canUndo(node))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), 1)

    def test_MaskFromSegmentation(self):
        self.delayDisplay("A segmentation drawn on another grid becomes a mask on the volume's grid")
        node = self.makeVolumeNode()
        # Drawn on a grid twice as fine in-plane and offset by half a voxel of the volume.
        fine = self.obliqueMatrix(spacing=(0.45, 0.55, 3.0))
        fine[:3, 3] = self.obliqueMatrix()[:3, :3] @ [-0.25, -0.25, 0.0] + self.obliqueMatrix()[:3, 3]
        labels = np.zeros((12, 80, 96), np.uint8)
        labels[3:7, 20:40, 24:60] = 1  # voxels j 10-19, i 12-29 of the volume
        labelmap = slicer.util.addVolumeFromArray(labels, ijkToRAS=fine, name="box", nodeClassName="vtkMRMLLabelMapVolumeNode")
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentationNode)
        mask = MedSynthLogic().maskArray(segmentationNode, node)
        expected = np.zeros(slicer.util.arrayFromVolume(node).shape, bool)
        expected[3:7, 10:20, 12:30] = True
        np.testing.assert_array_equal(mask, expected)
