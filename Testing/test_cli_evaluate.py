"""`brats-mamba evaluate`: pair and folder modes, outputs, and bad input (exit 2, nothing written)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BraTSMambaLib.cli import main
from BraTSMambaLib.data.conventions import REGIONS
from BraTSMambaLib.metrics import EMPTY_HD95_MM, METRICS, evaluate_files


def _labels(shift: int = 0) -> np.ndarray:
    lab = np.zeros((16, 20, 24), np.uint8)
    lab[3:13, 4:16, 5:19] = 2
    lab[5:11, 7:13, 8:16] = 1
    lab[6:10, 8:12, 10:14] = 4
    return np.roll(lab, shift, axis=2)


def _write(path: Path, lab: np.ndarray, spacing=(0.8, 0.8, 2.0)) -> Path:
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for i, cid in enumerate(("BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003")):
        _write(gt / f"{cid}_seg.nii.gz", _labels())
        if i < 2:
            _write(pred / f"{cid}.nii.gz", _labels(shift=i + 1))
    _write(pred / "stray_99.nii.gz", _labels())
    return pred, gt


def test_single_pair_prints_table_and_writes_json_csv(tmp_path, capsys):
    p = _write(tmp_path / "p.nii.gz", _labels(shift=2))
    g = _write(tmp_path / "case_seg.nii.gz", _labels())
    out_json, out_csv = tmp_path / "out" / "m.json", tmp_path / "out" / "m.csv"
    rc = main(["evaluate", "--pred", str(p), "--gt", str(g), "--json", str(out_json), "--csv", str(out_csv)])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"case: {p} vs {g}" in text and all(r in text for r in REGIONS) and "HD95 (mm)" in text
    doc = json.loads(out_json.read_text())
    expected = evaluate_files(p, g, "2021")
    assert doc["labels"] == "2021" and len(doc["cases"]) == 1
    assert doc["cases"][0]["case_id"] == "case"
    assert doc["cases"][0]["metrics"] == expected
    assert doc["rules"]["one_empty"]["hd95"] == EMPTY_HD95_MM
    assert expected["ET"]["hd95"] == pytest.approx(2 * 0.8)  # 2 voxels along x at 0.8 mm
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 1 and float(rows[0]["TC_dice"]) == pytest.approx(expected["TC"]["dice"])
    assert set(rows[0]) == {"case_id", "pred", "ref", *(f"{r}_{m}" for r in REGIONS for m in METRICS)}
    assert not [f for f in out_json.parent.iterdir() if f.name.startswith(".")]  # no temporary leftovers


def test_folders_match_by_case_id_summary_and_unmatched(folders, tmp_path, capsys):
    pred, gt = folders
    out_json = tmp_path / "s.json"
    rc = main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(out_json), "--quiet"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "2 cases" in captured.out and "mean ± std (median)" in captured.out
    assert "no reference for prediction" in captured.err and "stray_99" in captured.err
    assert "no prediction for reference" in captured.err and "BraTS2021_00003_seg" in captured.err
    doc = json.loads(out_json.read_text())
    assert [c["case_id"] for c in doc["cases"]] == ["BraTS2021_00001", "BraTS2021_00002"]
    dices = [c["metrics"]["WT"]["dice"] for c in doc["cases"]]
    assert doc["summary"]["WT"]["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert doc["summary"]["WT"]["dice"]["std"] == pytest.approx(np.std(dices, ddof=1))
    assert doc["summary"]["WT"]["dice"]["n"] == 2
    assert [Path(p).name for p in doc["unmatched_ref"]] == ["BraTS2021_00003_seg.nii.gz"]


def test_folders_missing_scored_as_empty(folders, tmp_path, capsys):
    pred, gt = folders
    out_csv = tmp_path / "s.csv"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--csv", str(out_csv), "--missing", "empty",
                 "--quiet"]) == 0
    rows = {r["case_id"]: r for r in csv.DictReader(out_csv.open())}
    assert len(rows) == 3
    assert float(rows["BraTS2021_00003"]["WT_dice"]) == 0.0
    assert float(rows["BraTS2021_00003"]["ET_hd95"]) == EMPTY_HD95_MM
    assert rows["BraTS2021_00003"]["pred"] == ""


def test_existing_output_refused_unless_overwrite(tmp_path, capsys):
    p = _write(tmp_path / "p.nii.gz", _labels(shift=1))
    g = _write(tmp_path / "g.nii.gz", _labels())
    out = tmp_path / "m.json"
    out.write_text("keep me")
    args = ["evaluate", "--pred", str(p), "--gt", str(g), "--json", str(out)]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main([*args, "--overwrite"]) == 0
    assert json.loads(out.read_text())["cases"][0]["case_id"] == "g"


@pytest.mark.parametrize("problem", ["missing", "geometry", "labels", "file_vs_folder"])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, problem):
    g = _write(tmp_path / "g.nii.gz", _labels())
    p = tmp_path / "p.nii.gz"
    extra = []
    if problem == "geometry":
        _write(p, _labels(), spacing=(1.0, 1.0, 1.0))
    elif problem == "labels":
        lab = _labels()
        lab[lab == 4] = 3  # a 2023 label map evaluated as 2021
        _write(p, lab)
    elif problem == "file_vs_folder":
        p = tmp_path
    out_json, out_csv = tmp_path / "o" / "m.json", tmp_path / "o" / "m.csv"
    rc = main(["evaluate", "--pred", str(p), "--gt", str(g), "--json", str(out_json), "--csv", str(out_csv), *extra])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("brats-mamba evaluate: error:") and len(err.splitlines()) == 1
    expected = {"missing": "not found", "geometry": "spacing", "labels": "label values [3]",
                "file_vs_folder": "two files or two folders"}[problem]
    assert expected in err
    if problem in ("geometry", "labels"):
        assert "p.nii.gz" in err
    if problem == "geometry":
        assert "g.nii.gz" in err
    assert not out_json.exists() and not out_csv.exists()


def test_labels_2023_accepted(tmp_path):
    lab = _labels()
    lab[lab == 4] = 3
    p = _write(tmp_path / "p.nii.gz", lab)
    g = _write(tmp_path / "g.nii.gz", lab)
    out = tmp_path / "m.json"
    assert main(["evaluate", "--pred", str(p), "--gt", str(g), "--labels", "2023", "--json", str(out)]) == 0
    m = json.loads(out.read_text())["cases"][0]["metrics"]
    assert all(m[r]["dice"] == 1.0 and m[r]["hd95"] == 0.0 for r in REGIONS)


def test_help_explains_the_metrics(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "HD95" in out and "373.13" in out and "--labels" in out and "case id" in out
