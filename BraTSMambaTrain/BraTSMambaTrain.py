"""BraTSMambaTrain: train, watch and compare BraTSMamba networks, and review annotations, in 3D Slicer.

The companion of the BraTSMamba segmentation module, for ML researchers. The Widget only moves values
between the UI and the parameter node and polls background work from a timer; the Logic calls the
Qt-free parts of BraTSMambaLib, tested with PyPI slicer-core:

- `BraTSMambaLib.mrml.cli_job`: `brats-mamba train` / `compare` in a separate process under Slicer's
  Python (the segmentation job's process machinery: own process group, cancel kills the tree);
- `BraTSMambaLib.mrml.training_view`: status.jsonl -> table node + plot chart, compare CSV -> table node;
- `BraTSMambaLib.mrml.review`: cases, ground truth and prediction as WT/TC/ET segmentations, Dice,
  verdicts in an atomically written CSV (`BraTSMambaLib.data.review_log`), corrected label maps.
"""
import html
import importlib.util
import logging
import os
import pathlib
import sys
from typing import Annotated, Optional

import qt
import slicer
from slicer import vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _ensureLibraryImportable() -> None:
    """From a source checkout: the library sits next to this module's folder, the shared installer
    helpers (`BraTSMambaUtils`) in the BraTSMamba module's folder. Installed, all are on sys.path.

    Only looked up, not imported (see BraTSMamba.py: the Python-version gate must run first).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if importlib.util.find_spec("BraTSMambaLib") is None and os.path.isdir(os.path.join(root, "BraTSMambaLib")):
        sys.path.insert(0, root)
    utils = os.path.join(root, "BraTSMamba")
    if importlib.util.find_spec("BraTSMambaUtils") is None and os.path.isdir(os.path.join(utils, "BraTSMambaUtils")):
        sys.path.insert(0, utils)


_ensureLibraryImportable()


#
# Module
#


class BraTSMambaTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BraTS Mamba Training"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["BraTSMamba contributors"]
        self.parent.helpText = (
            "Train the BraTSMamba networks inside nnU-Net v2 in a background process, watch a run's epochs "
            "(losses, pseudo-Dice WT/TC/ET, epoch time, learning rate, GPU memory) live, compare runs in one "
            "table, and review ground-truth annotations and predictions case by case with a verdict per case. "
            "Research use only. "
            '<a href="https://github.com/brats-mamba/SlicerBraTSMamba/blob/main/docs/slicer.md">Documentation</a>.')
        self.parent.acknowledgementText = (
            "Built on 3D Slicer, nnU-Net v2 and the Mamba state-space models (SegMamba, U-Mamba).")


#
# Parameters
#


@parameterNodeWrapper
class BraTSMambaTrainParameterNode:
    """Folders and settings of the training and review tabs (model and device live in combos)."""

    runFolder: pathlib.Path
    preprocessedFolder: pathlib.Path
    resultsFolder: pathlib.Path
    datasetId: Annotated[int, WithinRange(1, 999)] = 500
    fold: Annotated[int, WithinRange(0, 4)] = 0
    epochs: Annotated[int, WithinRange(1, 10000)] = 400
    resume: bool = False
    compareFolder: pathlib.Path
    testCasesFolder: pathlib.Path
    casesFolder: pathlib.Path
    predictionsFolder: pathlib.Path
    reviewFile: pathlib.Path
    reviewer: str = ""
    editedSegmentation: vtkMRMLSegmentationNode
    correctedFolder: pathlib.Path


def _given(path) -> Optional[str]:
    """A path parameter's text, or None while unset (the wrapper's default Path is '.')."""
    text = str(path) if path is not None else ""
    return text if text not in ("", ".") else None


#
# Widget
#


class BraTSMambaTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_INTERVAL_MS = 500

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._unsupported = None
        self._trainJob = None
        self._compareJob = None
        self._runView = None
        self._session = None
        self._shownLines = {}  # job -> output lines already in the log
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._poll)

    def setup(self) -> None:
        from BraTSMambaUtils.choices import DEVICES
        from BraTSMambaUtils.dependencies import unsupported_python

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BraTSMambaTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BraTSMambaTrainLogic()
        self._unsupported = unsupported_python()
        for title, value in DEVICES:
            self.ui.deviceComboBox.addItem(title, value)
        if self._unsupported:
            for tab in (self.ui.trainingTab, self.ui.reviewTab):
                tab.enabled = False
            self.ui.runInfoLabel.text = self._unsupported
        else:
            for name in self.logic.modelChoices():
                self.ui.modelComboBox.addItem(name)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.runFolderPathLineEdit.connect("currentPathChanged(QString)", self.onRunFolderChanged)
        self.ui.showCurvesButton.connect("clicked(bool)", self.onShowCurves)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.openReviewButton.connect("clicked(bool)", self.onOpenReview)
        self.ui.previousButton.connect("clicked(bool)", lambda: self.onStep(-1))
        self.ui.nextButton.connect("clicked(bool)", lambda: self.onStep(1))
        self.ui.acceptButton.connect("clicked(bool)", lambda: self.onVerdict("accept"))
        self.ui.needsCorrectionButton.connect("clicked(bool)", lambda: self.onVerdict("needs correction"))
        self.ui.rejectButton.connect("clicked(bool)", lambda: self.onVerdict("reject"))
        self.ui.saveCorrectedButton.connect("clicked(bool)", self.onSaveCorrected)
        self.initializeParameterNode()
        self._updateButtons()

    def cleanup(self) -> None:
        self._timer.stop()
        for job in (self._trainJob, self._compareJob):
            if job is not None:
                job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self._runView = None
        self._session = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[BraTSMambaTrainParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # --- training: live view ---------------------------------------------------------------------

    def onRunFolderChanged(self, path: str) -> None:
        if self._unsupported:
            return
        self._runView = self.logic.runView(path) if _given(path) else None
        self._refreshRunView()
        self._ensureTimer()

    def _refreshRunView(self) -> None:
        view = self._runView
        if view is None:
            return
        try:
            changed = self.logic.refreshRunView(view)
        except Exception as e:  # a half-written file is retried on the next tick; other errors are shown
            self.ui.runInfoLabel.text = f"Cannot read the run: {e}"
            return
        if changed:
            self.ui.statusTableView.setMRMLTableNode(view.table)
            last = view.records[-1] if view.records else {}
            self.ui.runInfoLabel.text = (f"{len(view.records)} epochs in {view.status_file}"
                                         + (f"; model {last['model']}" if last.get("model") else ""))
        elif view.status_file is None:
            self.ui.runInfoLabel.text = ("No status.jsonl in this folder yet (a run trained with a BraTSMamba "
                                         "trainer writes one per epoch).")

    def onShowCurves(self) -> None:
        if self._runView is None or self._runView.chart is None:
            self.ui.runInfoLabel.text = "Choose a run folder with a status.jsonl first."
            return
        self.logic.showChart(self._runView.chart)

    # --- training: background jobs ---------------------------------------------------------------

    def onTrainButton(self) -> None:
        if self._trainJob is not None:
            self._trainJob.cancel()
            self._finishTrain()
            return
        if not self._dependenciesReady("Training"):
            return
        p = self._parameterNode
        model = self.ui.modelComboBox.currentText
        device = self.ui.deviceComboBox.itemData(self.ui.deviceComboBox.currentIndex)
        try:
            self._trainJob = self.logic.startTraining(p, model, device)
        except Exception as e:
            self._showError(self.ui.trainStatusLabel, str(e))
            return
        self.ui.logTextEdit.clear()
        self.ui.trainStatusLabel.text = f"Training {model}, dataset {p.datasetId}, fold {p.fold}..."
        self._updateButtons()
        self._ensureTimer()

    def onCompareButton(self) -> None:
        if self._compareJob is not None:
            self._compareJob.cancel()
            self._finishCompare()
            return
        if not self._dependenciesReady("Compare"):
            return
        try:
            self._compareJob = self.logic.startCompare(self._parameterNode)
        except Exception as e:
            self._showError(self.ui.compareStatusLabel, str(e))
            return
        self.ui.compareStatusLabel.text = "Comparing..."
        self._updateButtons()
        self._ensureTimer()

    def _ensureTimer(self) -> None:
        if not self._timer.isActive() and (self._trainJob or self._compareJob or self._runView):
            self._timer.start()

    def _poll(self) -> None:
        for job, finish in ((self._trainJob, self._finishTrain), (self._compareJob, self._finishCompare)):
            if job is None:
                continue
            try:
                done = job.poll()
            except Exception as e:  # a timer callback that raised would raise again every tick
                job.abort(f"Failed: {e}")
                done = True
            self._showNewLogLines(job)
            if done:
                finish()
        if self._trainJob is not None and self._runView is None:
            found = self.logic.expectedRunFolder(self._parameterNode, self.ui.modelComboBox.currentText)
            if found is not None:
                self._parameterNode.runFolder = found  # the path edit's signal starts the live view
        self._refreshRunView()
        if not (self._trainJob or self._compareJob or self._runView):
            self._timer.stop()

    def _showNewLogLines(self, job) -> None:
        lines = job.process.lines if job.process else []
        for line in lines[self._shownLines.get(id(job), 0):]:
            self.ui.logTextEdit.appendPlainText(line)
        self._shownLines[id(job)] = len(lines)

    def _finishTrain(self) -> None:
        job, self._trainJob = self._trainJob, None
        if job is not None:
            self._showNewLogLines(job)
            self._shownLines.pop(id(job), None)
            if job.cancelled:
                self.ui.trainStatusLabel.text = "Cancelled (the process tree was stopped; resume with 'Continue')."
            elif job.error:
                self._showError(self.ui.trainStatusLabel, job.error)
            else:
                self.ui.trainStatusLabel.text = "Training finished."
        self._refreshRunView()
        self._updateButtons()

    def _finishCompare(self) -> None:
        job, self._compareJob = self._compareJob, None
        if job is not None:
            self._showNewLogLines(job)
            self._shownLines.pop(id(job), None)
            if job.cancelled:
                self.ui.compareStatusLabel.text = "Cancelled."
            elif job.error:
                self._showError(self.ui.compareStatusLabel, job.error)
            else:
                try:
                    table = self.logic.loadCompareTable(job)
                    self.ui.logTextEdit.appendPlainText(job.table_md.read_text(encoding="utf-8"))
                except Exception as e:
                    self._showError(self.ui.compareStatusLabel, str(e))
                else:
                    self.ui.compareTableView.setMRMLTableNode(table)
                    self.ui.compareStatusLabel.text = (f"{table.GetNumberOfRows()} runs compared "
                                                       "(Markdown table in the log).")
            job.cleanup()
        self._updateButtons()

    def _updateButtons(self) -> None:
        training, comparing = self._trainJob is not None, self._compareJob is not None
        self.ui.trainButton.text = "Cancel" if training else "Train"
        self.ui.compareButton.text = "Cancel" if comparing else "Compare"
        self.ui.trainButton.enabled = not self._unsupported
        self.ui.compareButton.enabled = not self._unsupported
        hasCase = self._session is not None
        for button in (self.ui.previousButton, self.ui.nextButton, self.ui.acceptButton,
                       self.ui.needsCorrectionButton, self.ui.rejectButton, self.ui.saveCorrectedButton):
            button.enabled = hasCase

    def _dependenciesReady(self, what: str) -> bool:
        try:
            if not self.logic.ensureDependencies(ask=True):
                self.ui.runInfoLabel.text = f"{what} needs the Python packages; nothing was installed."
                return False
        except Exception as e:
            self._showError(self.ui.runInfoLabel, f"Could not install the required Python packages:\n{e}")
            return False
        return True

    def _showError(self, label, message: str) -> None:
        """The first line in `label`, the whole message in the expanded process log."""
        first = message.strip().splitlines()[0] if message.strip() else "Failed."
        label.text = f"<span style='color:#c00'>{html.escape(first)}</span>"
        self.ui.logTextEdit.appendPlainText(message)
        self.ui.logCollapsibleButton.collapsed = False
        logging.error(message)

    # --- annotation review -----------------------------------------------------------------------

    def onOpenReview(self) -> None:
        if not self._dependenciesReady("Review"):
            return
        try:
            self._session = self.logic.openReview(self._parameterNode)
        except Exception as e:
            self._session = None
            self._showError(self.ui.reviewStatusLabel, str(e))
            self._updateButtons()
            return
        self._updateButtons()
        self._showCase(self._session.index)

    def onStep(self, delta: int) -> None:
        if self._session is not None:
            self._showCase(self._session.index + delta)

    def _showCase(self, index: int) -> None:
        session = self._session
        if not 0 <= index < len(session.cases):
            self.ui.reviewStatusLabel.text = "No further case in that direction."
            return
        case = session.cases[index]
        try:
            loaded = self.logic.showCase(session, index)
        except Exception as e:  # the case stays current (without nodes) so that it can be rejected
            loaded = None
            self.ui.metricsLabel.text = "Could not be loaded (see the log); it can still be given a verdict."
            self._showError(self.ui.reviewStatusLabel, f"{case.case_id}: {e}")
        self.ui.caseLabel.text = f"{case.case_id} ({session.index + 1}/{len(session.cases)})"
        entry = session.log.verdict(session.current.case_id)
        self.ui.noteLineEdit.text = entry["note"] if entry else ""
        self.ui.verdictLabel.text = f"Verdict: {entry['verdict']} ({entry['time']})" if entry else "No verdict yet."
        if loaded is None:
            return
        self.ui.metricsLabel.text = self.logic.metricsText(loaded)
        self.ui.reviewStatusLabel.text = session.progress_text()
        self._parameterNode.editedSegmentation = (loaded.prediction if loaded.prediction is not None
                                                  else loaded.ground_truth)

    def onVerdict(self, verdict: str) -> None:
        if self._session is None:
            return
        try:
            row = self._session.record(verdict, self.ui.noteLineEdit.text)
        except Exception as e:
            self._showError(self.ui.reviewStatusLabel, str(e))
            return
        self.ui.verdictLabel.text = f"Verdict: {row['verdict']} ({row['time']})"
        if self._session.index + 1 < len(self._session.cases):
            self._showCase(self._session.index + 1)
        else:
            self.ui.reviewStatusLabel.text = self._session.progress_text() + "; last case."

    def onSaveCorrected(self) -> None:
        if self._session is None:
            return
        try:
            path = self.logic.saveCorrected(self._session, self._parameterNode)
        except Exception as e:
            self._showError(self.ui.reviewStatusLabel, str(e))
            return
        self.ui.reviewStatusLabel.text = f"Saved {path}"


#
# Logic
#


class BraTSMambaTrainLogic(ScriptedLoadableModuleLogic):
    """Starts training / compare jobs and drives the review; the MRML work is in BraTSMambaLib.mrml."""

    def getParameterNode(self) -> BraTSMambaTrainParameterNode:
        return BraTSMambaTrainParameterNode(super().getParameterNode())

    @staticmethod
    def modelChoices() -> list:
        """Registry network names; empty until torch is installed (the combo is editable meanwhile)."""
        try:
            from BraTSMambaLib.nets import list_models
        except ImportError:
            return []
        return list_models()

    @staticmethod
    def ensureDependencies(ask: bool = True) -> bool:
        from BraTSMambaUtils.dependencies import ensure_dependencies

        return ensure_dependencies(ask=ask)

    # --- training ---

    @staticmethod
    def runView(path: str):
        from BraTSMambaLib.mrml.training_view import RunView

        return RunView(pathlib.Path(path))

    @staticmethod
    def refreshRunView(view) -> bool:
        return view.refresh(slicer.mrmlScene)

    @staticmethod
    def showChart(chart) -> None:
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    @staticmethod
    def startTraining(p: BraTSMambaTrainParameterNode, model: str, device: str = "auto"):
        """Launch `brats-mamba train` for the parameter node's dataset / fold / epochs; returns the job."""
        from BraTSMambaLib.mrml.cli_job import CliJob, train_arguments

        job = CliJob(train_arguments(p.datasetId, model, p.fold, epochs=p.epochs, device=device,
                                     results=_given(p.resultsFolder), preprocessed=_given(p.preprocessedFolder),
                                     resume=p.resume), env_base=slicer.util.startupEnvironment())
        job.start()
        return job

    @staticmethod
    def expectedRunFolder(p: BraTSMambaTrainParameterNode, model: str) -> Optional[pathlib.Path]:
        from BraTSMambaLib.mrml.cli_job import find_run_folder

        results = _given(p.resultsFolder) or os.environ.get("nnUNet_results")
        return find_run_folder(results, p.datasetId, model, p.fold) if results else None

    @staticmethod
    def startCompare(p: BraTSMambaTrainParameterNode):
        """`brats-mamba compare` over every run (fold folder with status.jsonl) under the compare folder."""
        from BraTSMambaLib.errors import BraTSInputError
        from BraTSMambaLib.mrml.cli_job import CompareJob
        from BraTSMambaLib.mrml.training_view import run_status_files

        root = _given(p.compareFolder) or _given(p.runFolder)
        if not root:
            raise BraTSInputError("Choose the folder holding the runs to compare.")
        runs = [f.parent for f in run_status_files(root)]
        if not runs:
            raise BraTSInputError(f"{root}: no run with a status.jsonl under it")
        job = CompareJob.for_runs(runs, test_cases=_given(p.testCasesFolder), env_base=slicer.util.startupEnvironment())
        job.start()
        return job

    @staticmethod
    def loadCompareTable(job, target=None):
        from BraTSMambaLib.mrml.training_view import table_from_csv

        if job.table_csv is None:
            raise RuntimeError("brats-mamba compare finished without writing its table")
        name = "BraTSMamba run comparison"
        if target is None:  # a later comparison refills the table of the previous one
            old = slicer.mrmlScene.GetFirstNodeByName(name)
            target = old if old is not None and old.IsA("vtkMRMLTableNode") else None
        return table_from_csv(slicer.mrmlScene, job.table_csv, name, target=target)

    # --- review ---

    @staticmethod
    def openReview(p: BraTSMambaTrainParameterNode):
        from BraTSMambaLib.errors import BraTSInputError
        from BraTSMambaLib.mrml.review import ReviewSession

        cases, review = _given(p.casesFolder), _given(p.reviewFile)
        if not cases or not review:
            raise BraTSInputError("Choose the cases folder and the review file.")
        return ReviewSession.open(cases, review, _given(p.predictionsFolder), reviewer=p.reviewer.strip())

    @staticmethod
    def showCase(session, index: int):
        """Load a case (replacing the previous one) and show it: T1ce in the background, FLAIR in the foreground."""
        loaded = session.show(slicer.mrmlScene, index, show3d=True)
        slicer.util.setSliceViewerLayers(background=loaded.reference, foreground=loaded.volumes["flair"],
                                         foregroundOpacity=0.0, fit=True)
        return loaded

    @staticmethod
    def metricsText(loaded) -> str:
        from BraTSMambaLib.data import conventions as C

        if loaded.metrics is None:
            what = ("no prediction" if loaded.prediction is None else "no ground truth")
            return f"No scores ({what} for this case)."
        return "\n".join(f"{r}: Dice {loaded.metrics[r]['dice']:.3f}, HD95 {loaded.metrics[r]['hd95']:.1f} mm"
                          for r in C.REGIONS)

    @staticmethod
    def saveCorrected(session, p: BraTSMambaTrainParameterNode) -> pathlib.Path:
        from BraTSMambaLib.errors import BraTSInputError
        from BraTSMambaLib.mrml.review import save_corrected_labelmap

        out = _given(p.correctedFolder)
        if session.loaded is None or p.editedSegmentation is None or not out:
            raise BraTSInputError("Choose the edited segmentation and an output folder.")
        return save_corrected_labelmap(p.editedSegmentation, session.loaded, out, overwrite=True)


#
# Test
#


class BraTSMambaTrainTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the live view of the bundled demo model's real status.jsonl, and a review of
    two phantom cases (one with a prediction) with a verdict written and resumed."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RunView()
        self.setUp()
        self.test_Review()

    def test_RunView(self):
        from BraTSMambaLib.inference.catalogue import demo_package_path

        demo = demo_package_path()
        if demo is None or not (demo / "training" / "status.jsonl").is_file():
            self.delayDisplay("Skipped: the demo model package (with its training status) is not bundled")
            return
        self.delayDisplay("Training status of the demo model as a table and curves")
        logic = BraTSMambaTrainLogic()
        view = logic.runView(str(demo / "training"))
        self.assertTrue(logic.refreshRunView(view))
        self.assertEqual(view.table.GetNumberOfRows(), len(view.records))
        self.assertEqual(view.chart.GetNumberOfPlotSeriesNodes(), 5)
        self.assertFalse(logic.refreshRunView(view))  # unchanged file: not re-read
        logic.showChart(view.chart)

    def test_Review(self):
        import shutil
        import tempfile

        from BraTSMambaLib.data.phantom import phantom_case_id, write_phantom
        from BraTSMambaUtils.dependencies import missing_requirements

        if missing_requirements():  # a test must not install packages
            self.delayDisplay("Skipped: the module's Python packages are not installed in this Slicer")
            return
        self.delayDisplay("Review two phantom cases, record a verdict, resume")
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="brats-review-test-"))
        try:
            for seed in (1, 2):
                write_phantom(tmp / "cases" / phantom_case_id(seed), seed=seed, shape_xyz=(48, 48, 32))
            (tmp / "preds").mkdir()
            cid = phantom_case_id(2)
            shutil.copy(tmp / "cases" / cid / f"{cid}_seg.nii.gz", tmp / "preds" / f"{cid}.nii.gz")
            logic = BraTSMambaTrainLogic()
            p = logic.getParameterNode()
            p.casesFolder, p.predictionsFolder = tmp / "cases", tmp / "preds"
            p.reviewFile = tmp / "review.csv"
            session = logic.openReview(p)
            logic.showCase(session, 1)
            self.assertEqual(session.loaded.dice, {"WT": 1.0, "TC": 1.0, "ET": 1.0})
            session.record("accept", "test")
            self.assertEqual(logic.openReview(p).index, 0)  # the first case still has no verdict
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.delayDisplay("Test passed")
