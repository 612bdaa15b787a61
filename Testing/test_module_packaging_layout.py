"""The extension package's layout, derived from the CMake files, works for the module.

slicerMacroBuildScriptedModule copies each listed module file to
<build>/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/<relative path> and installs that folder's contents
(NO_INSTALL_SUBDIR; CMake/SlicerMacroBuildScriptedModule.cmake, CTK's ctkMacroCompilePythonScript.cmake).
The top-level CMakeLists must put BraTSMambaLib, pyproject.toml and the Resources beside them the same
way. This test builds that folder from the CMake lists and runs the module's helpers from it, in a
child Python with the folder first on sys.path, as Slicer puts qt-scripted-modules there.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "BraTSMamba"
MODULES = ("BraTSMamba", "BraTSMambaTrain")
SCRIPTED = "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"


def _call(text: str, command: str) -> str:
    m = re.search(rf"^{command}\((.*?)^\s*\)", text, re.S | re.M)
    assert m, f"{command}(...) missing"
    return m.group(1)


def _module_files(module: str = "BraTSMamba") -> list[str]:
    text = (ROOT / module / "CMakeLists.txt").read_text()
    assert re.search(rf"^set\(MODULE_NAME {module}\)$", text, re.M)
    files = []
    for var in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        body = re.search(rf"set\({var}\s+(.*?)\)", text, re.S).group(1)
        files += [t.replace("${MODULE_NAME}", module) for t in body.split()]
    return files


def test_training_module_cmake_lists_every_file_and_both_modules_are_built():
    """BraTSMambaTrain/CMakeLists.txt lists exactly the module's files; the extension always adds both modules."""
    module = ROOT / "BraTSMambaTrain"
    text = (module / "CMakeLists.txt").read_text()
    call = _call(text, "slicerMacroBuildScriptedModule")
    for needle in ("NAME ${MODULE_NAME}", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}", "RESOURCES ${MODULE_PYTHON_RESOURCES}",
                   "WITH_GENERIC_TESTS"):
        assert needle in call, needle
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    listed = set(_module_files("BraTSMambaTrain"))
    on_disk = {p.relative_to(module).as_posix() for p in module.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"}
    assert on_disk - listed == set(), "files missing from BraTSMambaTrain/CMakeLists.txt"
    assert listed - on_disk == set(), "BraTSMambaTrain/CMakeLists.txt lists files that do not exist"
    top = (ROOT / "CMakeLists.txt").read_text()
    added = re.findall(r"^add_subdirectory\((\w+)\)$", top, re.M)
    assert added == list(MODULES), added
    assert "if(EXISTS" not in top.split("# Extension modules")[1], "a module is built only conditionally"
    shared = [f for f in listed if f.startswith("Resources/")]  # both modules install into one Resources/ folder
    assert not set(shared) & set(_module_files("BraTSMamba")), "resource names collide in qt-scripted-modules"


def test_training_module_icon_is_a_distinct_png():
    from PIL import Image

    with Image.open(ROOT / "BraTSMambaTrain/Resources/Icons/BraTSMambaTrain.png") as im:
        assert im.format == "PNG" and im.size == (128, 128)
        train = im.convert("RGB").tobytes()
        assert len(set(im.convert("L").tobytes())) > 20
    with Image.open(MODULE / "Resources/Icons/BraTSMamba.png") as other:
        assert other.convert("RGB").tobytes() != train


def test_library_installs_into_the_scripted_modules_folder_itself():
    text = (ROOT / "CMakeLists.txt").read_text()
    call = _call(text, "ctkMacroCompilePythonScript")
    assert f"DESTINATION_DIR {SCRIPTED}\n" in call + "\n"
    assert "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in call
    assert re.search(r"^\s*NO_INSTALL_SUBDIR\s*$", call, re.M), "without it the install nests qt-scripted-modules"
    for src, dest in re.findall(r"configure_file\((\S+) (\S+) COPYONLY\)", text):
        assert dest.startswith(SCRIPTED + "/"), dest
    installs = re.findall(r"install\((?:FILES|DIRECTORY) (\S+)\s+DESTINATION (\S+)", text)
    assert installs and all(d.startswith("${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}") for _, d in installs)


def _layout(tmp: Path) -> Path:
    """<build>/qt-scripted-modules as the CMake files fill it."""
    text = (ROOT / "CMakeLists.txt").read_text()
    dest = tmp / "qt-scripted-modules"
    glob = re.search(r"GLOB_RECURSE BRATSMAMBALIB_SCRIPTS RELATIVE \S+\s+\S+/(BraTSMambaLib)/\*\.py", text)
    assert glob
    resources = re.search(r"GLOB_RECURSE BRATSMAMBALIB_RESOURCES RELATIVE \S+((?:\s+\S+/BraTSMambaLib/\*\.\w+)+)\)", text)
    assert resources
    patterns = ["*.py"] + [p.rsplit("/", 1)[1] for p in resources.group(1).split()]
    assert "*.c" in patterns and "*.cu" in patterns   # the C and CUDA scan kernels travel with the library
    for pattern in patterns:
        for f in (ROOT / glob.group(1)).rglob(pattern):
            target = dest / f.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    for src, target in re.findall(r"configure_file\((\S+) (\S+) COPYONLY\)", text):
        out = dest / target.replace(SCRIPTED + "/", "")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / src, out)
    for src, target in re.findall(r"file\(COPY (\S+) DESTINATION (\S+)\)", text):
        shutil.copytree(ROOT / src, dest / target.replace(SCRIPTED + "/", "") / Path(src).name)
    for module in MODULES:
        for rel in _module_files(module):
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / module / rel, out)
    return dest


CHILD = """
import json, sys
sys.path.insert(0, %r)
import importlib, importlib.util
import BraTSMambaLib
from BraTSMambaLib.inference import catalogue
from BraTSMambaUtils import choices, dependencies
print(json.dumps({
    "lib": BraTSMambaLib.__file__,
    "utils": dependencies.__file__,
    "pyproject": str(dependencies.pyproject_path()),
    "resources": str(catalogue.resources_dir()),
    "demo": str(catalogue.demo_package_path()),
    "choices": [v for _, v, _ in choices.model_choices()],
    "python": dependencies.unsupported_python(),
    "requirements": dependencies.requirements(),
    "ui": importlib.util.find_spec("BraTSMamba") is not None,
    "train": importlib.util.find_spec("BraTSMambaTrain") is not None,
    "train_lib": [importlib.import_module(m).__file__ for m in (
        "BraTSMambaLib.mrml.review", "BraTSMambaLib.mrml.cli_job", "BraTSMambaLib.mrml.training_view",
        "BraTSMambaLib.data.review_log")],
    "c_source": str(importlib.import_module("BraTSMambaLib.ssm.backends.c_scan").SOURCE),
    "cuda_source": str(importlib.import_module("BraTSMambaLib.ssm.backends.cuda_scan").SOURCE),
}))
"""


def test_module_helpers_work_from_the_built_extension_folder(tmp_path):
    dest = _layout(tmp_path)
    assert (dest / "BraTSMamba.py").is_file() and (dest / "Resources/UI/BraTSMamba.ui").is_file()
    assert (dest / "BraTSMambaTrain.py").is_file() and (dest / "Resources/UI/BraTSMambaTrain.ui").is_file()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("BRATSMAMBA_")}
    run = subprocess.run([sys.executable, "-c", CHILD % str(dest)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for key in ("lib", "utils", "pyproject", "resources", "demo"):
        assert out[key].startswith(str(dest)), (key, out[key])
    assert Path(out["pyproject"]) == dest / "pyproject.toml"
    assert Path(out["demo"]) == dest / "Resources/Models/demo"
    assert out["choices"][0] == "<demo>" and out["python"] is None and out["requirements"]
    assert out["ui"] and out["train"]
    assert all(f.startswith(str(dest)) for f in out["train_lib"]), out["train_lib"]
    assert out["c_source"].startswith(str(dest)) and Path(out["c_source"]).is_file()
    assert out["cuda_source"].startswith(str(dest)) and Path(out["cuda_source"]).is_file()
