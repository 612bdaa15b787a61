"""Render BraTSMambaTrain/Resources/UI/BraTSMambaTrain.ui (both tabs) to docs/images/slicer-train-module.png
without Slicer, with the plain-Qt stand-ins of render_slicer_ui.py. The status rows are the bundled demo
model's real status.jsonl; the review numbers are what the module shows for Brats18_2013_11_1 against its
ground truth shifted by one voxel (Testing/test_review.py builds that prediction). Needs PySide6:

    QT_QPA_PLATFORM=offscreen python docs/images/render_train_ui.py
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs/images"))
sys.path.insert(0, str(ROOT))
from render_slicer_ui import plain_qt_ui  # noqa: E402
from PySide6.QtCore import QBuffer, QByteArray, QIODevice  # noqa: E402
from PySide6.QtGui import QColor, QImage, QPainter, QStandardItem, QStandardItemModel  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import QApplication, QComboBox, QLineEdit, QTableView, QTabWidget, QSpinBox  # noqa: E402

from BraTSMambaLib.mrml.training_view import STATUS_COLUMNS  # noqa: E402
from BraTSMambaLib.training.status import read_status  # noqa: E402

app = QApplication(sys.argv)
data = QByteArray(plain_qt_ui(ROOT / "BraTSMambaTrain/Resources/UI/BraTSMambaTrain.ui"))
buf = QBuffer(data)
buf.open(QIODevice.ReadOnly)
w = QUiLoader().load(buf)
assert w is not None


def f(cls, name):
    return w.findChild(cls, name)


run = "nnUNet_results/Dataset500_BraTS/nnUNetTrainerUMambaBot__nnUNetPlans_compact__3d_fullres/fold_0"
f(QLineEdit, "runFolderPathLineEdit").setText(run)
recs = read_status(ROOT / "Resources/Models/demo/training/status.jsonl")
f(object, "runInfoLabel").setText(f"{len(recs)} epochs in .../fold_0/status.jsonl; model UMambaBot")
model = QStandardItemModel()
model.setHorizontalHeaderLabels([t for _, t in STATUS_COLUMNS])
for r in recs[-6:]:
    row = []
    for k, _ in STATUS_COLUMNS:
        v = r.get(k)
        row.append(QStandardItem("" if v is None else (str(v) if k == "epoch" else f"{v:.4g}")))
    model.appendRow(row)
tv = f(QTableView, "statusTableView")
tv.setModel(model)
tv.resizeColumnsToContents()
tv.verticalHeader().setVisible(False)
f(QLineEdit, "preprocessedPathLineEdit").setText("nnUNet_preprocessed")
f(QLineEdit, "resultsPathLineEdit").setText("nnUNet_results")
f(QSpinBox, "datasetSpinBox").setRange(1, 999); f(QSpinBox, "datasetSpinBox").setValue(500)
f(QSpinBox, "epochsSpinBox").setRange(1, 10000); f(QSpinBox, "epochsSpinBox").setValue(400)
for name in ("segmamba", "umambabot", "umambaenc", "vmunet3d", "mednext_s", "swinunetr"):
    f(QComboBox, "modelComboBox").addItem(name)
f(QComboBox, "modelComboBox").setCurrentIndex(1)
f(QComboBox, "deviceComboBox").addItem("Auto")
for name in ("compareTableView", "logTextEdit", "compareFolderPathLineEdit", "testCasesPathLineEdit", "compareButton",
             "compareStatusLabel", "compareFolderLabel", "testCasesLabel"):
    f(object, name).setVisible(False)  # collapsed sections
w.resize(430, 900)
tabs = f(QTabWidget, "tabWidget")
w.show(); app.processEvents()
w.resize(430, w.sizeHint().height()); app.processEvents()
train_tab = w.grab().toImage()
tabs.setCurrentIndex(1)
f(QLineEdit, "casesPathLineEdit").setText("brats2018")
f(QLineEdit, "predictionsPathLineEdit").setText("predictions (ground truth shifted by 1 voxel)")
f(QLineEdit, "reviewFilePathLineEdit").setText("review.csv")
f(QLineEdit, "reviewerLineEdit").setText("AB")
f(object, "caseLabel").setText("Brats18_2013_11_1 (1/14)")
f(object, "metricsLabel").setText("WT: Dice 0.967, HD95 1.0 mm\nTC: Dice 0.958, HD95 1.0 mm\nET: Dice 0.777, HD95 1.0 mm")
f(object, "verdictLabel").setText("No verdict yet.")
f(object, "reviewStatusLabel").setText("case 1/14; reviewed 0")
for name in ("editedSegmentationSelector", "correctedPathLineEdit", "saveCorrectedButton", "editedSegmentationLabel",
             "correctedFolderLabel"):
    f(object, name).setVisible(False)
app.processEvents()
w.resize(430, 900); app.processEvents()
review_tab = w.grab().toImage()
canvas = QImage(train_tab.width() + review_tab.width() + 10, train_tab.height(), QImage.Format_RGB32)
canvas.fill(QColor("white"))
painter = QPainter(canvas)
painter.drawImage(0, 0, train_tab)
painter.drawImage(train_tab.width() + 10, 0, review_tab.copy(0, 0, review_tab.width(), 600))
painter.end()
canvas.save(str(ROOT / "docs/images/slicer-train-module.png"))
