"""Extension packaging: CMake lists every module file, the UI is valid and matches the module code,
the index entry and requirements agree with the project, the sample data checksums are right."""
from __future__ import annotations

import ast
import hashlib
import json
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "BraTSMamba"


def _cmake_set(text: str, var: str) -> list[str]:
    m = re.search(rf"set\({var}\s+(.*?)\)", text, re.S)
    assert m, f"set({var} ...) missing"
    return [tok.replace("${MODULE_NAME}", "BraTSMamba") for tok in m.group(1).split()]


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"set\(MODULE_NAME BraTSMamba\)", text)
    listed = set(_cmake_set(text, "MODULE_PYTHON_SCRIPTS")) | set(_cmake_set(text, "MODULE_PYTHON_RESOURCES"))
    on_disk = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts
               and p.suffix in {".py", ".ui", ".png", ".txt", ".json"} and p.name != "CMakeLists.txt"}
    assert on_disk - listed == set(), "files missing from BraTSMamba/CMakeLists.txt"
    assert listed - on_disk == set(), "CMakeLists.txt lists files that do not exist"


def test_top_level_cmake_is_a_slicer_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    for needle in ("project(BraTSMamba)", "EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                   "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", 'set(EXTENSION_DEPENDS "PyTorch")',
                   "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(BraTSMamba)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})",
                   "ctkMacroCompilePythonScript(", "BraTSMambaLib/*.py", "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR"):
        assert needle in text, needle
    # both modules are always built (issue 7)
    assert re.search(r"^add_subdirectory\(BraTSMambaTrain\)$", text, re.M) and "if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/BraTSMambaTrain" not in text
    for var in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):  # the files the URLs will serve exist
        rel = re.search(rf'{var} "[^"]*/main/([^"]+)"', text).group(1)
        assert (ROOT / rel).is_file(), rel


def test_icons_are_real_png_images():
    from PIL import Image

    for path in (MODULE / "Resources/Icons/BraTSMamba.png", ROOT / "Resources/Icons/BraTSMamba.png",
                 MODULE / "Resources/Icons/BraTS-GLI-00001-000.png"):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (128, 128)
            assert len(set(im.convert("L").tobytes())) > 50  # an image, not a flat colour


def test_extensions_index_entry():
    entry = json.loads((ROOT / "Resources/BraTSMamba.json").read_text())
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["category"] == re.search(r'EXTENSION_CATEGORY "([^"]+)"', (ROOT / "CMakeLists.txt").read_text()).group(1)
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"].startswith("https://") and entry["scm_revision"]
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
               "scm_url", "tier"}
    assert set(entry) <= allowed  # the schema forbids other properties


def _ui_widgets() -> dict[str, ET.Element]:
    tree = ET.parse(MODULE / "Resources/UI/BraTSMamba.ui")
    return {w.get("name"): w for w in tree.iter("widget")}


def test_ui_is_valid_and_matches_the_module_code():
    widgets = _ui_widgets()
    code = (MODULE / "BraTSMamba.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    assert used - set(widgets) == set(), "BraTSMamba.py uses widgets the .ui lacks"
    # every widget bound to the parameter node names a real parameter
    tree = ast.parse(code)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BraTSMambaParameterNode")
    params = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    bound = {p.find("string").text for w in widgets.values() for p in w.findall("property")
             if p.get("name") == "SlicerParameterName"}
    assert bound and bound <= params
    assert {"t1", "t1ce", "t2", "flair", "outputSegmentation"} <= bound
    for sel in ("t1Selector", "t1ceSelector", "t2Selector", "flairSelector", "outputSegmentationSelector"):
        assert widgets[sel].get("class") == "qMRMLNodeComboBox"


def test_module_file_structure():
    tree = ast.parse((MODULE / "BraTSMamba.py").read_text())
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["BraTSMamba"] == ["ScriptedLoadableModule"]
    assert classes["BraTSMambaWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["BraTSMambaLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["BraTSMambaTest"] == ["ScriptedLoadableModuleTest"]
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
    assert "torch" not in imported and "numpy" not in imported  # no maths in the module file


def _dependencies_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("brats_mamba_slicer_deps", MODULE / "BraTSMambaUtils/dependencies.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_slicer_installs_the_projects_own_dependencies(tmp_path):
    """The module reads pyproject.toml (installed beside the library), minus what Slicer provides otherwise."""
    deps = _dependencies_module()
    text = (ROOT / "pyproject.toml").read_text()
    declared = tomllib.loads(text)["project"]["dependencies"]
    assert deps.pyproject_path() == ROOT / "pyproject.toml"
    assert deps.parse_dependencies(text, use_tomllib=False) == declared  # the fallback for older Pythons
    wanted = deps.requirements()
    assert wanted and set(wanted) == {d for d in declared if re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower()
                                      not in {"torch", "numpy", "simpleitk"}}
    assert deps.missing_requirements() == []  # this environment has them all
    fake = tmp_path / "pyproject.toml"
    fake.write_text('[project]\nname = "x"\ndependencies = [\n  "scipy>=999",\n  "no-such-dist-xyz>=1",\n'
                    '  "torch>=2.3",\n  "tqdm>=4",\n]\n')
    assert deps.missing_requirements(fake) == ["scipy>=999", "no-such-dist-xyz>=1"]
    assert "pyproject.toml" in (ROOT / "CMakeLists.txt").read_text()


@pytest.mark.shared_data
def test_sample_data_checksums(shared_data):
    tree = ast.parse((MODULE / "BraTSMamba.py").read_text())
    sha = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
               and getattr(n.targets[0], "id", "") == "SAMPLE_SHA256")
    url = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
               and getattr(n.targets[0], "id", "") == "SAMPLE_BASE_URL")
    assert url == ("https://raw.githubusercontent.com/BrainLesion/tutorials/a2d3fff/BraTS/data/segmentation/"
                   "BraTS-GLI-00001-000/")
    folder = shared_data / "brats2023-gli-sample"
    for suffix, digest in sha.items():
        path = folder / f"BraTS-GLI-00001-000-{suffix}.nii.gz"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path.name
