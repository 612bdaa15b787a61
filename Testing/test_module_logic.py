"""The Slicer module's Qt-free parts, run here: combo-box values against the real CLI, model choices from
the real catalogue, input guessing in a real MRML scene (slicer-core), the dependency helpers, and that
the module's pre-install code paths import nothing Slicer does not ship."""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "BraTSMamba"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"brats_mamba_module_{name}", MODULE / "BraTSMambaUtils" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


choices = _load("choices")
deps = _load("dependencies")


def _segment_parser() -> argparse.ArgumentParser:
    from BraTSMambaLib.commands import segment

    p = argparse.ArgumentParser(prog="segment")
    segment.configure(p)
    return p


def test_every_combo_value_is_accepted_by_the_segment_cli(tmp_path):
    """The job's command line for each device / label choice parses with `brats-mamba segment`'s parser."""
    from BraTSMambaLib.data import conventions as cv
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.inference.predictor import resolve_device
    from BraTSMambaLib.mrml.job import SegmentJob

    parser = _segment_parser()
    inputs = {m: tmp_path / f"c_{m}.nii" for m in cv.MODALITIES}
    for _, device in choices.DEVICES:
        for _, labels in choices.LABEL_CONVENTIONS:
            for model in ("", "demo", str(tmp_path / "pkg")):
                job = SegmentJob(scene=None, nodes={}, model=model or None, device=device, fast=True, labels=labels)
                argv = job.command(inputs, tmp_path / "out")
                assert argv[1:4] == ["-m", "BraTSMambaLib.cli", "segment"]
                args = parser.parse_args(argv[4:])
                assert (args.device, args.labels, args.fast, args.model) == (device, labels, True, model or None)
                assert {m: getattr(args, m) for m in cv.MODALITIES} == {m: str(p) for m, p in inputs.items()}
        try:  # the pipeline knows the device name (it may be absent on this machine)
            resolve_device(device)
        except BraTSInputError as e:
            assert "use auto, cpu" not in str(e), e


def test_model_choice_round_trip_and_catalogue():
    listed = choices.model_choices()
    values = [v for _, v, _ in listed]
    assert values[0] == choices.DEMO_CHOICE and values[-1] == choices.LOCAL_CHOICE
    assert "Bundled with the extension" in listed[0][2]  # the real bundled demo package is found
    assert len(set(values)) == len(values)
    from BraTSMambaLib.inference import catalogue

    for name in catalogue.load_catalogue():
        assert name == catalogue.DEMO_MODEL or name in values
    for model in ["", *values[1:-1], "/data/my model.zip"]:
        choice, path = choices.choice_for_model(model, values)
        assert choice in values
        assert choices.model_argument(choice, path) == model
    assert choices.model_argument(choices.LOCAL_CHOICE, "  /x/pkg ") == "/x/pkg"
    assert choices.model_argument(None) == "" and choices.model_argument(choices.DEMO_CHOICE, "/ignored") == ""


def test_model_choices_survive_a_broken_catalogue(tmp_path, monkeypatch):
    (tmp_path / "models.json").write_text("{not json")
    monkeypatch.setenv("BRATSMAMBA_RESOURCES", str(tmp_path))
    listed = choices.model_choices()
    assert [v for _, v, _ in listed] == [choices.DEMO_CHOICE, choices.LOCAL_CHOICE]
    assert "not bundled" in listed[0][2]
    (tmp_path / "Models" / "demo").mkdir(parents=True)  # the demo folder is found without the catalogue
    assert str(tmp_path / "Models" / "demo") in choices.model_choices()[0][2]


def test_input_selectors_are_guessed_from_node_names_in_a_real_scene():
    slicer = pytest.importorskip("slicer")
    from BraTSMambaLib import mrml

    scene = mrml.new_scene()

    def volume(name, cls="vtkMRMLScalarVolumeNode"):
        return scene.AddNewNodeByClass(cls, name)

    assert mrml.guess_volume_nodes(scene) == {}
    other = volume("MRHead")
    seg = volume("Brats18_X_1_seg", "vtkMRMLLabelMapVolumeNode")
    trap = volume("Brats18_X_1_t1", "vtkMRMLLabelMapVolumeNode")  # a label map is never an input
    n21 = {m: volume(f"Brats18_X_1_{m}") for m in ("t1", "t1ce", "t2", "flair")}
    got = mrml.guess_volume_nodes(scene)
    assert {k: n.GetID() for k, n in got.items()} == {k: n.GetID() for k, n in n21.items()}
    assert all(n not in got.values() for n in (other, seg, trap))

    scene.Clear(0)
    n23 = {k: volume(f"BraTS-GLI-00001-000-{s}") for k, s in
           {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}.items()}
    partial = volume("OtherCase_t1ce")  # a second case with fewer modalities loses
    got = mrml.guess_volume_nodes(scene)
    assert {k: n.GetName() for k, n in got.items()} == {k: n.GetName() for k, n in n23.items()}
    assert partial not in got.values()
    assert isinstance(got["t1"], slicer.vtkMRMLScalarVolumeNode)

    scene.Clear(0)
    nn = {m: volume(f"case7_000{i}") for i, m in enumerate(("t1", "t1ce", "t2", "flair"))}
    got = mrml.guess_volume_nodes(scene)
    assert {k: n.GetName() for k, n in got.items()} == {k: n.GetName() for k, n in nn.items()}


def test_python_version_gate_reads_requires_python():
    assert deps.unsupported_python() is None  # this interpreter is supported
    message = deps.unsupported_python(version="3.9.10")  # Slicer 5.8's Python
    assert message and "3.9.10" in message and "Slicer 5.10" in message
    fake = ROOT / "pyproject.toml"
    spec = next(line for line in fake.read_text().splitlines() if line.startswith("requires-python"))
    assert spec.split('"')[1] in message


def test_constraints_pin_the_installed_builds_and_the_install_call_fits_this_slicer_util():
    import importlib.metadata

    text = deps.pinned_constraints()
    pins = dict(line.split("==") for line in text.splitlines())
    for dist in ("torch", "numpy", "SimpleITK"):
        assert pins[dist] == importlib.metadata.version(dist)
    pytest.importorskip("slicer")
    import slicer.util

    function, args, kwargs = deps.pip_call(["tqdm>=4"], "/tmp/c.txt")
    # slicer-core 5.13: no slicer.packaging, util.pip_install(requirements, **kwargs) -> the list form
    assert function is slicer.util.pip_install
    assert args == (["-c", "/tmp/c.txt", "tqdm>=4"],) and kwargs == {}
    assert deps.pip_call(["tqdm>=4"], None)[1] == (["tqdm>=4"],)


PRE_INSTALL = """
from BraTSMambaUtils import choices, dependencies
from BraTSMambaLib import mrml
from BraTSMambaLib.mrml import job
out = {"choices": [v for _, v, _ in choices.model_choices()],
       "guess": mrml.guess_modalities(["A_t1", "A_t1ce", "A_t2", "A_flair"]),
       "python": dependencies.unsupported_python(),
       "requirements": len(dependencies.requirements())}
print(json.dumps(out))
"""


def test_pre_install_code_paths_need_only_what_slicer_ships():
    """Opening the module (choices, input guessing, the job class, the dependency check) must work before
    torch, nnU-Net, nibabel... are installed; a child Python with those imports blocked runs them."""
    from slicer_python import without_extension_packages

    run = subprocess.run([sys.executable, "-c", without_extension_packages(str(MODULE), str(ROOT)) + PRE_INSTALL],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["choices"][0] == "<demo>" and out["guess"] == {"t1": "A_t1", "t1ce": "A_t1ce", "t2": "A_t2",
                                                              "flair": "A_flair"}
    assert out["python"] is None and out["requirements"] > 5


@pytest.mark.parametrize("path", ["BraTSMamba.py", "BraTSMambaUtils/__init__.py", "BraTSMambaUtils/choices.py",
                                  "BraTSMambaUtils/dependencies.py"])
def test_module_files_parse_on_slicer_58_python(path):
    """Slicer 5.8 (Python 3.9) must load the module far enough to say it needs a newer Slicer."""
    source = (MODULE / path).read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in tree.body)
    for node in ast.walk(tree):  # PEP 604 unions are evaluated at runtime in 3.9 unless annotations are lazy
        if isinstance(node, (ast.arg, ast.AnnAssign)) and not future:
            ann = node.annotation
            assert ann is None or "|" not in ast.unparse(ann), f"{path}: {ast.unparse(ann)}"
        if isinstance(node, ast.Match):
            raise AssertionError(f"{path}: match statement")
