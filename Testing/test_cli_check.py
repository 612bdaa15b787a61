"""`brats-mamba check` and `brats-mamba phantom`: reports, --json, every problem listed, exit codes 0/2."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from BraTSMambaLib.cli import main
from BraTSMambaLib.data import io

SHAPE = ["48", "48", "32"]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "case"
    assert main(["phantom", str(out), "--seed", "4", "--shape", *SHAPE]) == 0
    return out


def _check_json(capsys, folder, *extra) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["check", str(folder), "--json", *extra])
    return rc, json.loads(capsys.readouterr().out)


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_check_usable_case_text_and_json(phantom_dir, capsys):
    capsys.readouterr()
    assert main(["check", str(phantom_dir)]) == 0
    text = capsys.readouterr().out
    assert "BraTSPhantom_s4" in text and "brats2021" in text and "orientation LPS" in text and "usable: yes" in text
    rc, rep = _check_json(capsys, phantom_dir)
    assert rc == 0 and rep["usable"] is True and rep["problems"] == []
    assert rep["modalities_found"] == ["t1", "t1ce", "t2", "flair"] and rep["has_segmentation"] is True
    assert rep["naming"] == "brats2021" and rep["label_convention"] == "2021"
    t1ce = rep["files"]["t1ce"]
    assert t1ce["size"] == [48, 48, 32] and t1ce["spacing"] == [1.0, 1.0, 1.0] and t1ce["orientation"] == "LPS"
    assert t1ce["min"] == 0 and t1ce["max"] > 0
    assert rep["files"]["seg"]["label_values"] == [0, 1, 2, 4]


def test_check_lists_every_problem(phantom_dir, tmp_path, capsys):
    bad = _copy(phantom_dir, tmp_path / "bad")
    flair = bad / "BraTSPhantom_s4_flair.nii.gz"
    img = sitk.ReadImage(str(flair))
    img.SetSpacing((1.0, 1.0, 3.0))
    io.write_image(img, flair, overwrite=True)
    t2 = bad / "BraTSPhantom_s4_t2.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(t2))).astype(np.float32)
    arr[5, 5, 5] = np.nan
    nan_img = sitk.GetImageFromArray(arr)
    nan_img.CopyInformation(img)
    nan_img.SetSpacing((1.0, 1.0, 1.0))
    io.write_image(nan_img, t2, overwrite=True)
    (bad / "BraTSPhantom_s4_t1.nii.gz").unlink()
    rc, rep = _check_json(capsys, bad)
    assert rc == 2 and rep["usable"] is False
    problems = " | ".join(rep["problems"])
    assert "missing T1 (expected BraTSPhantom_s4_t1.nii.gz)" in problems
    assert "BraTSPhantom_s4_flair.nii.gz: flair spacing (1.0, 1.0, 3.0) differs from t1ce (1.0, 1.0, 1.0)" in problems
    assert "BraTSPhantom_s4_t2.nii.gz: 1 voxels are NaN or infinite" in problems
    assert len(rep["problems"]) == 3
    capsys.readouterr()
    assert main(["check", str(bad)]) == 2
    text = capsys.readouterr().out
    assert text.count("problem:") == 3 and "usable: NO (3 problem(s))" in text


def test_check_label_convention(phantom_dir, capsys):
    rc, rep = _check_json(capsys, phantom_dir, "--labels", "2023")
    assert rc == 2 and "label values [4] are not in the BraTS 2023 convention" in rep["problems"][0]


def test_check_unreadable_and_absent(tmp_path, phantom_dir, capsys):
    bad = _copy(phantom_dir, tmp_path / "bad")
    (bad / "BraTSPhantom_s4_t1ce.nii.gz").write_text("not an image")
    rc, rep = _check_json(capsys, bad)
    assert rc == 2 and any("t1ce.nii.gz: cannot be read as an image" in p for p in rep["problems"])
    rc, rep = _check_json(capsys, tmp_path / "absent")
    assert rc == 2 and rep["problems"] == [f"{tmp_path / 'absent'}: not found"]


def test_phantom_refuses_existing_output(phantom_dir, capsys):
    before = {p.name: p.read_bytes() for p in phantom_dir.iterdir()}
    capsys.readouterr()
    assert main(["phantom", str(phantom_dir), "--seed", "4", "--shape", *SHAPE]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already holds" in err and "--overwrite" in err
    assert main(["phantom", str(phantom_dir), "--seed", "4", "--shape", *SHAPE, "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in phantom_dir.iterdir()} == before


def test_console_exit_status(phantom_dir, tmp_path):
    """The installed entry point returns 0/2 to the shell, errors on stderr in one line."""
    ok = subprocess.run([sys.executable, "-m", "BraTSMambaLib.cli", "check", str(phantom_dir)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "empty").mkdir()
    bad = subprocess.run([sys.executable, "-m", "BraTSMambaLib.cli", "check", str(tmp_path / "empty"), "--json"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no BraTS case files" in json.loads(bad.stdout)["problems"][0]


@pytest.mark.shared_data
@pytest.mark.parametrize("which", ["brats2018", "brats2023-gli-sample"])
def test_check_real_cases(shared_data, brats2018_cases, capsys, which):
    folder = brats2018_cases[0] if which == "brats2018" else shared_data / which
    rc, rep = _check_json(capsys, folder)
    assert rc == 0 and rep["usable"], rep["problems"]
    assert rep["files"]["t1ce"]["size"] == [240, 240, 155]
    if which == "brats2018":
        assert rep["naming"] == "brats2021" and set(rep["files"]["seg"]["label_values"]) <= {0, 1, 2, 4}
    else:
        assert rep["naming"] == "brats2023" and not rep["has_segmentation"]
