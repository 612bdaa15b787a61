"""Render BraTSMamba/Resources/UI/BraTSMamba.ui to docs/images/slicer-module.png without Slicer.

Slicer's own widgets (CTK, qMRML) are replaced by their plain-Qt look-alikes, and the selectors show
the names the Sample Data case loads with. Needs PySide6 (not a project dependency):

    QT_QPA_PLATFORM=offscreen python docs/images/render_slicer_ui.py
"""
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6.QtCore import QBuffer, QByteArray, QIODevice  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import QApplication, QComboBox  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STAND_INS = {"ctkCollapsibleButton": "QGroupBox", "qMRMLNodeComboBox": "QComboBox", "ctkPathLineEdit": "QLineEdit",
             "qMRMLTableView": "QTableView", "qMRMLWidget": "QWidget"}
SELECTED = {"t1Selector": "BraTS-GLI-00001-000-t1n", "t1ceSelector": "BraTS-GLI-00001-000-t1c",
            "t2Selector": "BraTS-GLI-00001-000-t2w", "flairSelector": "BraTS-GLI-00001-000-t2f",
            "outputSegmentationSelector": "Create new segmentation", "modelComboBox": "Demo model (bundled)",
            "deviceComboBox": "Auto", "labelConventionComboBox": "BraTS 2021 (1, 2, 4)"}


def plain_qt_ui(path: Path) -> bytes:
    tree = ET.parse(path)
    for w in tree.iter("widget"):
        cls = w.get("class")
        if cls in STAND_INS:
            w.set("class", STAND_INS[cls])
            for p in list(w.findall("property")):
                if cls == "ctkCollapsibleButton" and p.get("name") == "text":
                    p.set("name", "title")
                elif p.get("name") not in ("toolTip", "text", "maximumSize", "geometry", "visible"):
                    w.remove(p)
    root = tree.getroot()
    for tag in ("customwidgets", "connections"):
        for el in root.findall(tag):
            root.remove(el)
    return ET.tostring(root)


def main(out: Path) -> None:
    app = QApplication(sys.argv)
    data = QByteArray(plain_qt_ui(ROOT / "BraTSMamba/Resources/UI/BraTSMamba.ui"))
    buf = QBuffer(data)
    buf.open(QIODevice.ReadOnly)
    widget = QUiLoader().load(buf)
    for name, text in SELECTED.items():
        widget.findChild(QComboBox, name).addItem(text)
    widget.findChild(object, "modelInfoLabel").setText("Bundled with the extension (Resources/Models/demo).")
    widget.findChild(object, "logTextEdit").setVisible(False)  # the log section starts collapsed
    widget.findChild(object, "applyButton").setEnabled(True)
    widget.findChild(object, "modelPathLineEdit").setEnabled(False)
    widget.resize(400, widget.sizeHint().height())
    widget.show()
    app.processEvents()
    widget.grab().save(str(out))


if __name__ == "__main__":
    main(ROOT / "docs/images/slicer-module.png")
