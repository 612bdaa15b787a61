"""BraTSMamba: segment brain tumours (WT, TC, ET) in four MRI volumes with Mamba networks, in 3D Slicer.

The Widget only moves values between the UI and the parameter node and shows progress; the Logic
starts a `BraTSMambaLib.mrml.job.SegmentJob` (the `brats-mamba segment` CLI in a separate process
under Slicer's Python, files exchanged in a temporary folder) and loads the results in one step
once the process has succeeded. Everything that touches MRML without Qt is in `BraTSMambaLib.mrml`,
where it is tested with PyPI slicer-core.
"""
import html
import importlib.util
import logging
import os
import sys
import time
from typing import Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _ensureLibraryImportable() -> None:
    """From a source checkout the library sits next to this module's folder: put it on sys.path.

    Only looked up, not imported: on a Python the library does not support, importing it could raise
    a SyntaxError while Slicer loads the module; the widget says what is wrong instead.
    """
    if importlib.util.find_spec("BraTSMambaLib") is None:  # installed with the extension, or not
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.isdir(os.path.join(root, "BraTSMambaLib")):
            sys.path.insert(0, root)


_ensureLibraryImportable()

# Public sample: BrainLesion/tutorials, BraTS/data/segmentation/ at commit a2d3fff (BraTS 2023 GLI naming).
SAMPLE_CASE = "BraTS-GLI-00001-000"
SAMPLE_BASE_URL = ("https://raw.githubusercontent.com/BrainLesion/tutorials/a2d3fff/"
                   "BraTS/data/segmentation/BraTS-GLI-00001-000/")
SAMPLE_SHA256 = {
    "t1n": "e860924b936e301ddeba20409fbb59dde322475cb49328f1b46a9235c792e73e",
    "t1c": "4399faadcc45c8a4541313cdf88aced7d835ed59ac3078d950e0eac293d603f5",
    "t2w": "4cd389cc57d12134a30a898c66532228126b9a7d0600ee578e82a32144528b51",
    "t2f": "82aed8546af5e6d8d94fd91c56227abdcf6120130390d1556c4342a208980604",
}


#
# Module
#


class BraTSMamba(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BraTS Mamba"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["BraTSMamba contributors"]
        self.parent.helpText = (
            "Segments a brain tumour in four co-registered, skull-stripped MRI volumes (T1, T1ce, T2, FLAIR) "
            "into whole tumour (WT), tumour core (TC) and enhancing tumour (ET) with Mamba state-space "
            "networks trained in nnU-Net v2. Inference runs in a background process that can be cancelled. "
            "Research use only, not for clinical decisions. "
            '<a href="https://github.com/brats-mamba/SlicerBraTSMamba/blob/main/docs/slicer.md">Documentation</a>.')
        self.parent.acknowledgementText = (
            "Built on 3D Slicer, nnU-Net v2, MONAI and the Mamba state-space models (SegMamba, U-Mamba). "
            "Sample data: BraTS 2023 glioma case BraTS-GLI-00001-000 from the BrainLesion tutorials.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The public BraTS-GLI-00001-000 case (four modalities) in the Sample Data module, checked by SHA256."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    order = ("t1n", "t1c", "t2w", "t2f")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="BraTSMamba",
        sampleName=SAMPLE_CASE,
        thumbnailFileName=os.path.join(iconsPath, f"{SAMPLE_CASE}.png"),
        uris=[f"{SAMPLE_BASE_URL}{SAMPLE_CASE}-{s}.nii.gz" for s in order],
        fileNames=[f"{SAMPLE_CASE}-{s}.nii.gz" for s in order],
        nodeNames=[f"{SAMPLE_CASE}-{s}" for s in order],
        checksums=[f"SHA256:{SAMPLE_SHA256[s]}" for s in order],
        loadFileType=["VolumeFile"] * len(order),
    )


#
# Parameters
#


@parameterNodeWrapper
class BraTSMambaParameterNode:
    """Inputs and options of one segmentation; `model` "" means the bundled demo package."""

    t1: vtkMRMLScalarVolumeNode
    t1ce: vtkMRMLScalarVolumeNode
    t2: vtkMRMLScalarVolumeNode
    flair: vtkMRMLScalarVolumeNode
    model: str = ""
    device: str = "auto"
    fast: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    createLabelmap: bool = False
    labelConvention: str = "2021"


#
# Widget
#


class BraTSMambaWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_INTERVAL_MS = 250

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobStart = 0.0
        self._shownLines = 0
        self._unsupported = None
        self._modelInfo = {}
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._pollJob)

    def setup(self) -> None:
        from BraTSMambaUtils.choices import DEVICES, LABEL_CONVENTIONS
        from BraTSMambaUtils.dependencies import unsupported_python

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BraTSMamba.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BraTSMambaLogic()
        self._unsupported = unsupported_python()
        self.ui.progressBar.visible = False
        self.ui.volumesTableView.visible = False

        for title, value in DEVICES:
            self.ui.deviceComboBox.addItem(title, value)
        for title, value in LABEL_CONVENTIONS:
            self.ui.labelConventionComboBox.addItem(title, value)
        if self._unsupported:
            self.ui.statusLabel.text = self._unsupported
        else:
            self._fillModelChoices()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.autoFillButton.connect("clicked(bool)", self.onAutoFill)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self._onModelChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self._onModelPathChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self._onDeviceChanged)
        self.ui.labelConventionComboBox.connect("currentIndexChanged(int)", self._onLabelsChanged)
        self.initializeParameterNode()
        self._onModelChanged(self.ui.modelComboBox.currentIndex)

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None:
            self._job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButton)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()
            self._finishJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node) -> None:
        if isinstance(node, vtkMRMLScalarVolumeNode) and self._parameterNode is not None:
            qt.QTimer.singleShot(0, self._fillEmptyInputs)  # the node's name is set after it is added

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._unsupported:
            self._fillEmptyInputs()

    def setParameterNode(self, inputParameterNode: Optional[BraTSMambaParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButton)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButton)
            self._selectData(self.ui.deviceComboBox, self._parameterNode.device)
            self._selectData(self.ui.labelConventionComboBox, self._parameterNode.labelConvention)
            self._showModel(self._parameterNode.model)
            self._updateButton()

    def _showModel(self, model: str) -> None:
        """Select the parameter node's model: a listed choice, else the local path."""
        from BraTSMambaUtils.choices import choice_for_model

        combo = self.ui.modelComboBox
        choice, path = choice_for_model(model, [combo.itemData(i) for i in range(combo.count)])
        if path:
            self.ui.modelPathLineEdit.currentPath = path
        self._selectData(combo, choice)

    # --- inputs and options ---------------------------------------------------------------------

    def _fillEmptyInputs(self) -> None:
        if self._parameterNode is None:
            return
        for key, node in self.logic.guessInputs().items():
            if getattr(self._parameterNode, key) is None:
                setattr(self._parameterNode, key, node)

    def onAutoFill(self) -> None:
        if self._parameterNode is None or self._unsupported:
            return
        guessed = self.logic.guessInputs()
        for key, node in guessed.items():
            setattr(self._parameterNode, key, node)
        self.ui.statusLabel.text = ("Filled from volume names." if guessed
                                    else "No loaded volume follows the BraTS naming; choose the four volumes.")

    def _fillModelChoices(self) -> None:
        self.ui.modelComboBox.clear()
        self._modelInfo = {}
        for title, value, info in self.logic.modelChoices():
            self.ui.modelComboBox.addItem(title, value)
            self._modelInfo[value] = info

    def _onModelChanged(self, index: int) -> None:
        from BraTSMambaUtils.choices import LOCAL_CHOICE, model_argument

        choice = self.ui.modelComboBox.itemData(index)
        self.ui.modelPathLineEdit.enabled = choice == LOCAL_CHOICE
        self.ui.modelInfoLabel.text = self._modelInfo.get(choice, "")
        if self._parameterNode:
            self._parameterNode.model = model_argument(choice, self.ui.modelPathLineEdit.currentPath)

    def _onModelPathChanged(self, path: str) -> None:
        from BraTSMambaUtils.choices import LOCAL_CHOICE

        combo = self.ui.modelComboBox
        if self._parameterNode and combo.itemData(combo.currentIndex) == LOCAL_CHOICE:
            self._parameterNode.model = path.strip()

    def _onDeviceChanged(self, index: int) -> None:
        # one parameter per combo: showing a stored node selects the combos one by one
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def _onLabelsChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.labelConvention = self.ui.labelConventionComboBox.itemData(index)

    @staticmethod
    def _selectData(combo, value) -> None:
        index = combo.findData(value)
        if index >= 0:
            combo.setCurrentIndex(index)

    def _updateButton(self, caller=None, event=None) -> None:
        idle = self._job is None
        for section in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton, self.ui.outputsCollapsibleButton):
            section.enabled = idle  # a running job keeps the settings it started with
        if not idle:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the segmentation; nothing is added to the scene."
            self.ui.applyButton.enabled = True
            return
        p = self._parameterNode
        missing = [k for k in ("t1", "t1ce", "t2", "flair") if p is None or getattr(p, k) is None]
        self.ui.applyButton.text = "Segment"
        self.ui.applyButton.enabled = not missing and not self._unsupported
        self.ui.applyButton.toolTip = (self._unsupported or ("Segment the tumour in a background process."
                                       if not missing else f"Select the input volumes: {', '.join(missing)}."))

    # --- running --------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._finishJob()
            return
        try:
            if not self.logic.ensureDependencies(ask=True):
                self.ui.statusLabel.text = "Segmentation needs the Python packages; nothing was installed."
                return
        except Exception as e:
            self._showError(f"Could not install the required Python packages:\n{e}")
            return
        try:
            self._job = self.logic.startSegmentation(self._parameterNode)
        except Exception as e:
            self._showError(str(e))
            return
        self._jobStart = time.monotonic()
        self._shownLines = 0
        self.ui.logTextEdit.clear()
        self.ui.volumesTableView.visible = False
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting..."
        self._updateButton()
        self._timer.start()

    def _pollJob(self) -> None:
        if self._job is None:
            self._timer.stop()
            return
        try:
            done = self._job.poll()
        except Exception as e:  # a timer callback that raised would raise again every tick
            self._job.abort(f"Segmentation failed: {e}")
            done = True
        self._showNewLogLines(self._job)
        progress = self._job.progress
        self.ui.progressBar.value = int(round(100 * progress.fraction))
        message = f": {progress.message}" if progress.message else ""
        self.ui.statusLabel.text = f"{progress.title} ({time.monotonic() - self._jobStart:.0f} s){message}"
        if done:
            self._finishJob()

    def _showNewLogLines(self, job) -> None:
        lines = job.process.lines if job.process else []
        for line in lines[self._shownLines:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._shownLines = len(lines)

    def _finishJob(self) -> None:
        self._timer.stop()
        job, self._job = self._job, None
        self.ui.progressBar.visible = False
        if job is not None:
            self._showNewLogLines(job)
            if job.error:
                if job.cancelled:
                    self.ui.statusLabel.text = "Cancelled; the scene was not changed."
                else:
                    self._showError(job.error)
            else:
                self.logic.showResults(job)
                if self._parameterNode:
                    self._parameterNode.outputSegmentation = job.segmentation
                self.ui.volumesTableView.setMRMLTableNode(job.table)
                self.ui.volumesTableView.visible = True
                self.ui.statusLabel.text = f"Done in {time.monotonic() - self._jobStart:.1f} s."
        self._updateButton()

    def _showError(self, message: str) -> None:
        """The error in the status line, the whole log expanded below it."""
        first = message.strip().splitlines()[0] if message.strip() else "Segmentation failed."
        self.ui.statusLabel.text = f"<span style='color:#c00'>{html.escape(first)}</span>"  # rich text: escape <, &
        self.ui.logTextEdit.appendPlainText(message)
        self.ui.logCollapsibleButton.collapsed = False
        logging.error(message)


#
# Logic
#


class BraTSMambaLogic(ScriptedLoadableModuleLogic):
    """Starts segmentation jobs and puts their results on screen; the MRML work is in BraTSMambaLib.mrml."""

    def getParameterNode(self) -> BraTSMambaParameterNode:
        return BraTSMambaParameterNode(super().getParameterNode())

    def guessInputs(self) -> dict:
        """Volume nodes for each modality, matched by BraTS naming of the node names."""
        from BraTSMambaLib.mrml import guess_volume_nodes

        return guess_volume_nodes(slicer.mrmlScene)

    def modelChoices(self) -> list:
        """(title, combo value, what it needs): demo, catalogue models, local path (BraTSMambaUtils.choices)."""
        from BraTSMambaUtils.choices import model_choices

        return model_choices()

    def ensureDependencies(self, ask: bool = True) -> bool:
        from BraTSMambaUtils.dependencies import ensure_dependencies

        return ensure_dependencies(ask=ask)

    @staticmethod
    def inputNodes(parameterNode: BraTSMambaParameterNode) -> dict:
        return {k: getattr(parameterNode, k) for k in ("t1", "t1ce", "t2", "flair")}

    def startSegmentation(self, parameterNode: BraTSMambaParameterNode, **overrides):
        """Validate the inputs, write them to a temporary folder and launch the CLI; returns the job."""
        from BraTSMambaUtils.dependencies import unsupported_python

        problem = unsupported_python()
        if problem:
            raise RuntimeError(problem)
        from BraTSMambaLib.mrml.job import SegmentJob

        p = parameterNode
        job = SegmentJob(slicer.mrmlScene, self.inputNodes(p), model=p.model or None, device=p.device,
                         fast=p.fast, target=p.outputSegmentation, labelmap=p.createLabelmap,
                         labels=p.labelConvention, env_base=slicer.util.startupEnvironment(), **overrides)
        job.start()
        return job

    def process(self, parameterNode: BraTSMambaParameterNode, timeout: Optional[float] = None):
        """Segment and wait (scripts, self-test); raises RuntimeError with the process log on failure."""
        job = self.startSegmentation(parameterNode)
        if not job.wait(timeout):
            raise RuntimeError(job.error)
        self.showResults(job)
        return job

    @staticmethod
    def showResults(job) -> None:
        """Segments in slice views (outline + fill) and 3D; the label map in the label layer when made."""
        segmentation = job.segmentation
        display = segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility(True)
            display.SetVisibility3D(True)
        reference = job.nodes["t1ce"]
        label = job.labelmap_node if job.labelmap_node is not None else "keep-current"
        slicer.util.setSliceViewerLayers(background=reference, label=label, fit=True)


#
# Test
#


class BraTSMambaTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: naming, geometry refusal, and a whole background segmentation of a phantom."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GuessInputs()
        self.setUp()
        self.test_MismatchedGeometryRefused()
        self.setUp()
        self.test_SegmentPhantom()

    def _phantomNodes(self, shape=(64, 64, 48)):
        from BraTSMambaLib.data.phantom import make_phantom
        from BraTSMambaLib.mrml.geometry import volume_node_from_image

        case = make_phantom(seed=3, shape_xyz=shape)
        nodes = {k: volume_node_from_image(slicer.mrmlScene, img, f"{case.case_id}_{k}") for k, img in case.images.items()}
        for node in nodes.values():
            node.CreateDefaultDisplayNodes()
        return case, nodes

    def test_GuessInputs(self):
        self.delayDisplay("Inputs from BraTS 2021 and 2023 node names")
        _, nodes = self._phantomNodes()
        guessed = BraTSMambaLogic().guessInputs()
        self.assertEqual({k: n.GetID() for k, n in guessed.items()}, {k: n.GetID() for k, n in nodes.items()})
        for key, name in {"t1": "X-t1n", "t1ce": "X-t1c", "t2": "X-t2w", "flair": "X-t2f"}.items():
            nodes[key].SetName(name)
        guessed = BraTSMambaLogic().guessInputs()
        self.assertEqual({k: n.GetName() for k, n in guessed.items()},
                         {"t1": "X-t1n", "t1ce": "X-t1c", "t2": "X-t2w", "flair": "X-t2f"})

    def test_MismatchedGeometryRefused(self):
        from BraTSMambaLib.errors import BraTSInputError

        self.delayDisplay("A T2 with another origin is refused before any process starts")
        _, nodes = self._phantomNodes()
        nodes["t2"].SetOrigin(5.0, 0.0, 0.0)
        logic = BraTSMambaLogic()
        p = logic.getParameterNode()
        for k, n in nodes.items():
            setattr(p, k, n)
        with self.assertRaises(BraTSInputError):
            logic.startSegmentation(p)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0)

    def test_SegmentPhantom(self):
        from BraTSMambaLib.inference.catalogue import demo_package_path
        from BraTSMambaUtils.dependencies import missing_requirements, torch_ready

        if demo_package_path() is None:
            self.delayDisplay("Skipped: the demo model package is not bundled in this build")
            return
        if not torch_ready() or missing_requirements():  # a test must not install packages
            self.delayDisplay("Skipped: torch and the module's Python packages are not installed in this Slicer")
            return
        self.delayDisplay("Segment a phantom in a background process with the demo model")
        _, nodes = self._phantomNodes()
        logic = BraTSMambaLogic()
        p = logic.getParameterNode()
        for k, n in nodes.items():
            setattr(p, k, n)
        p.fast = True
        p.device = "cpu"
        p.createLabelmap = True
        job = logic.process(p, timeout=600)
        segmentation = job.segmentation.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, ["WT", "TC", "ET"])
        self.assertEqual(segmentation.GetNumberOfLayers(), 3)
        self.assertEqual(job.table.GetNumberOfRows(), 3)
        self.assertIsNotNone(job.labelmap_node)
        self.delayDisplay("Test passed")
