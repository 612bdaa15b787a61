"""BraTSMamba.ui and BraTSMambaTrain.ui against the code that uses them, checked without a Slicer application.

Every widget the module touches must exist in the .ui with a class that has the members and signals
the code uses (members from the Qt 5 / CTK / MRML widget headers); widgets bound to the parameter node
must have a class that Slicer's parameterNodeWrapper can connect to the parameter's type (the
connector table of Base/Python/slicer/parameterNodeWrapper/guiConnectors.py); every MRML widget must
receive the scene from the top-level qMRMLWidget; every non-Qt class must be declared as a custom widget.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "BraTSMamba"
UI = MODULE / "Resources/UI/BraTSMamba.ui"
#: module -> (widgets the module must use, parameters that must be bound to a widget)
MODULES: dict[str, tuple[set[str], set[str]]] = {
    "BraTSMamba": ({"applyButton", "modelComboBox", "modelPathLineEdit", "progressBar"},
                   {"t1", "t1ce", "t2", "flair", "outputSegmentation", "fast", "createLabelmap"}),
    "BraTSMambaTrain": ({"trainButton", "compareButton", "statusTableView", "compareTableView", "modelComboBox",
                         "deviceComboBox", "openReviewButton", "previousButton", "nextButton", "acceptButton",
                         "needsCorrectionButton", "rejectButton", "noteLineEdit", "metricsLabel", "logTextEdit",
                         "saveCorrectedButton"},
                        {"runFolder", "preprocessedFolder", "resultsFolder", "datasetId", "fold", "epochs", "resume",
                         "compareFolder", "testCasesFolder", "casesFolder", "predictionsFolder", "reviewFile",
                         "reviewer", "editedSegmentation", "correctedFolder"}),
}

_WIDGET = {"enabled", "visible", "toolTip", "setToolTip", "setVisible", "setEnabled", "show", "hide",
           "property", "setProperty", "connect", "objectName", "name"}
#: class -> (base class, members the module may use, signals it may connect to)
CLASSES: dict[str, tuple[str | None, set[str], set[str]]] = {
    "QWidget": (None, _WIDGET, set()),
    "QAbstractButton": ("QWidget", {"text", "checked", "checkable", "click"}, {"clicked(bool)", "clicked()", "toggled(bool)"}),
    "QPushButton": ("QAbstractButton", set(), set()),
    "QCheckBox": ("QAbstractButton", set(), {"stateChanged(int)"}),
    "QLabel": ("QWidget", {"text", "wordWrap"}, set()),
    "QComboBox": ("QWidget", {"addItem", "clear", "findData", "findText", "itemData", "itemText", "count",
                              "currentIndex", "setCurrentIndex", "currentText"},
                  {"currentIndexChanged(int)", "currentTextChanged(QString)", "activated(int)"}),
    "QProgressBar": ("QWidget", {"value", "setValue", "minimum", "maximum", "setRange"}, {"valueChanged(int)"}),
    "QPlainTextEdit": ("QWidget", {"appendPlainText", "clear", "toPlainText", "setPlainText", "readOnly"},
                       {"textChanged()"}),
    "QTableView": ("QWidget", set(), set()),
    "QTabWidget": ("QWidget", {"currentIndex", "setCurrentIndex", "count"}, {"currentChanged(int)"}),
    "QSpinBox": ("QWidget", {"value", "setValue", "minimum", "maximum"}, {"valueChanged(int)"}),
    "QLineEdit": ("QWidget", {"text", "setText", "clear", "placeholderText"},
                  {"textChanged(QString)", "editingFinished()", "returnPressed()"}),
    "ctkCollapsibleButton": ("QAbstractButton", {"collapsed"}, {"contentsCollapsed(bool)"}),
    "ctkPathLineEdit": ("QWidget", {"currentPath", "setCurrentPath", "filters", "settingKey", "addCurrentPathToHistory"},
                        {"currentPathChanged(QString)", "validInputChanged(bool)"}),
    "qMRMLWidget": ("QWidget", {"setMRMLScene", "mrmlScene"}, {"mrmlSceneChanged(vtkMRMLScene*)"}),
    "qMRMLNodeComboBox": ("QWidget", {"currentNode", "setCurrentNode", "currentNodeID", "setMRMLScene", "nodeTypes"},
                          {"currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)"}),
    "qMRMLTableView": ("QTableView", {"setMRMLTableNode", "mrmlTableNode", "setMRMLScene"}, set()),
}
QT_STANDARD = {c for c in CLASSES if c.startswith("Q")} | {"QFormLayout", "QVBoxLayout", "QHBoxLayout"}

#: parameterNodeWrapper connectors: parameter type -> widget classes (exact type match in Slicer)
CONNECTORS = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSlider", "QSpinBox", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "QComboBox"},
    "str": {"QLineEdit", "QTextEdit", "QComboBox"},
    "pathlib.Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
}
#: names parameterNodeWrapper defines on the wrapper class (wrapper.py `_processClass`, `_initMethod`)
RESERVED = {"allParameters", "default", "isCached", "dataType", "getValue", "setValue", "connectGui",
            "connectParametersToGui", "disconnectGui", "StartModify", "EndModify", "AddObserver",
            "RemoveObserver", "Modified", "parameterNode"}


def _mro(cls: str) -> list[str]:
    out = []
    while cls:
        out.append(cls)
        cls = CLASSES[cls][0]
    return out


def _members(cls: str) -> set[str]:
    return set().union(*(CLASSES[c][1] for c in _mro(cls)))


def _signals(cls: str) -> set[str]:
    return set().union(*(CLASSES[c][2] for c in _mro(cls)))


def _ui(module: str = "BraTSMamba"):
    tree = ET.parse(ROOT / module / "Resources/UI" / f"{module}.ui")
    widgets = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    return tree, widgets


def _uses(source: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(widget, member) pairs and (widget, signal) pairs the module code uses, aliases followed."""
    tree = ast.parse(source)

    def widget_of(node) -> str | None:
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            return node.attr
        return None

    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                         and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                for t, v in pairs:
                    if isinstance(t, ast.Name) and widget_of(v):
                        aliases[t.id] = widget_of(v)
    members, signals = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = widget_of(node.value) or (aliases.get(node.value.id) if isinstance(node.value, ast.Name) else None)
            if owner:
                members.add((owner, node.attr))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                and node.args and isinstance(node.args[0], ast.Constant)):
            owner = widget_of(node.func.value)
            if owner:
                signals.add((owner, node.args[0].value))
    return members, signals


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_widget_member_and_signal_the_module_uses_exists_in_the_ui_class(module):
    _, widgets = _ui(module)
    members, signals = _uses((ROOT / module / f"{module}.py").read_text())
    assert {w for w, _ in members} >= MODULES[module][0]
    problems = [f"{w}: not in the .ui" for w, _ in members | signals if w not in widgets]
    problems += [f"{w} ({widgets[w]}).{m}" for w, m in members if w in widgets and m not in _members(widgets[w])]
    problems += [f"{w} ({widgets[w]}) has no signal {s}" for w, s in signals
                 if w in widgets and s not in _signals(widgets[w])]
    assert problems == []


def _unannotated(annotation: str) -> str:
    """`Annotated[int, WithinRange(0, 4)]` -> `int` (what parameterNodeWrapper's unannotatedType gives)."""
    m = re.fullmatch(r"Annotated\[([\w.]+),.*\]", annotation)
    return m.group(1) if m else annotation


@pytest.mark.parametrize("module", sorted(MODULES))
def test_parameter_bindings_have_widgets_slicer_can_connect(module):
    tree, widgets = _ui(module)
    code = ast.parse((ROOT / module / f"{module}.py").read_text())
    cls = next(n for n in code.body if isinstance(n, ast.ClassDef) and n.name == f"{module}ParameterNode")
    params = {n.target.id: _unannotated(ast.unparse(n.annotation)) for n in cls.body if isinstance(n, ast.AnnAssign)}
    assert set(params) & RESERVED == set()
    kinds = {name: ("node" if ann.startswith("vtkMRML") else ann) for name, ann in params.items()}
    assert set(kinds.values()) <= set(CONNECTORS), kinds
    bound = {}
    for w in tree.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "a dynamic property needs stdset=0"
                bound[prop.find("string").text] = w
    assert MODULES[module][1] <= set(bound)
    for name, w in bound.items():
        assert name in params, f"{w.get('name')} binds unknown parameter {name}"
        assert w.get("class") in CONNECTORS[kinds[name]], f"{w.get('name')} ({w.get('class')}) cannot hold {params[name]}"
        assert not (kinds[name] == "str" and w.get("class") == "QComboBox"), "str combo needs a Choice annotation"
        if kinds[name] == "node":  # the connector sets nodeTypes from the annotation; the .ui must agree
            types = [s.text for p in w.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
            assert types == [params[name]], (name, types)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_mrml_widgets_receive_the_scene_and_custom_widgets_are_declared(module):
    tree, widgets = _ui(module)
    root = tree.find("widget")
    assert root.get("class") == "qMRMLWidget" and root.get("name") == module
    connected = {(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
                 for c in tree.iter("connection")}
    for name, cls in widgets.items():
        if cls.startswith("qMRML") and name != root.get("name"):
            assert (module, "mrmlSceneChanged(vtkMRMLScene*)", name, "setMRMLScene(vtkMRMLScene*)") in connected, name
    declared = {c.findtext("class"): c for c in tree.iter("customwidget")}
    for cls in set(widgets.values()):
        if cls not in QT_STANDARD:
            assert cls in declared, f"{cls} is not declared in <customwidgets>"
            assert declared[cls].findtext("header") == f"{cls}.h"
    for cls, decl in declared.items():
        assert decl.findtext("extends") in QT_STANDARD | {"QWidget"}, cls
    for layout in tree.iter("layout"):
        assert layout.get("class") in QT_STANDARD, layout.get("class")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_widget_members_table_covers_the_ui_classes(module):
    """The member table above must know every class the .ui uses, else the first test checks nothing."""
    _, widgets = _ui(module)
    assert set(widgets.values()) <= set(CLASSES)
    text = (ROOT / module / "Resources/UI" / f"{module}.ui").read_text()
    assert not re.search(r"<enum>(?!Qt::|QPlainTextEdit::)", text)


#: ctkPathLineEdit::Filter (CTK Libs/Widgets/ctkPathLineEdit.h)
PATH_FILTERS = {"Dirs", "Files", "Drives", "NoSymLinks", "AllEntries", "TypeMask", "Readable", "Writable",
                "Executable", "PermissionMask", "Modified", "Hidden", "System", "AccessMask", "AllDirs",
                "CaseSensitive", "NoDotAndDotDot", "NoDot", "NoDotDot", "NoFilter"}


def test_model_path_browse_button_picks_folders():
    """With `Files` set, ctkPathLineEdit::browse() opens a file dialog, where package and nnU-Net result
    folders cannot be chosen (ctkPathLineEdit.h, browse())."""
    tree, widgets = _ui()
    edit = next(w for w in tree.iter("widget") if w.get("name") == "modelPathLineEdit")
    flags = next(p for p in edit.findall("property") if p.get("name") == "filters").findtext("set").split("|")
    names = {f.split("::")[1] for f in flags}
    assert all(f.startswith("ctkPathLineEdit::") for f in flags) and names <= PATH_FILTERS
    assert "Dirs" in names and "Files" not in names


def test_training_module_path_edits_browse_what_they_hold():
    """Folders browse folders; the review file is a file the module may create (Writable, not Readable)."""
    tree, _ = _ui("BraTSMambaTrain")
    for edit in (w for w in tree.iter("widget") if w.get("class") == "ctkPathLineEdit"):
        flags = next(p for p in edit.findall("property") if p.get("name") == "filters").findtext("set").split("|")
        names = {f.split("::")[1] for f in flags}
        assert all(f.startswith("ctkPathLineEdit::") for f in flags) and names <= PATH_FILTERS, edit.get("name")
        if edit.get("name") == "reviewFilePathLineEdit":
            assert "Files" in names and "Dirs" not in names and "Readable" not in names
        else:
            assert "Dirs" in names and "Files" not in names, edit.get("name")


def test_training_module_spin_boxes_are_bounded_by_their_parameters():
    """parameterNodeWrapper sets a QSpinBox's range from WithinRange (else -2^31..2^31-1, guiConnectors.py)."""
    code = ast.parse((ROOT / "BraTSMambaTrain/BraTSMambaTrain.py").read_text())
    cls = next(n for n in code.body if isinstance(n, ast.ClassDef) and n.name == "BraTSMambaTrainParameterNode")
    tree, _ = _ui("BraTSMambaTrain")
    bound = {p.find("string").text: w for w in tree.iter("widget") for p in w.findall("property")
             if p.get("name") == "SlicerParameterName"}
    spins = 0
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and node.target.id in bound and bound[node.target.id].get("class") == "QSpinBox":
            spins += 1
            ann = ast.unparse(node.annotation)
            m = re.fullmatch(r"Annotated\[int, WithinRange\((\d+), (\d+)\)\]", ann)
            assert m, f"{node.target.id}: {ann} needs WithinRange"
            assert int(m.group(1)) <= node.value.value <= int(m.group(2)), node.target.id
            ui_range = {p.get("name"): int(p.findtext("number")) for p in bound[node.target.id].findall("property")
                        if p.get("name") in ("minimum", "maximum")}  # the .ui agrees before the wrapper connects
            assert ui_range == {"minimum": int(m.group(1)), "maximum": int(m.group(2))}, node.target.id
    assert spins == 3
