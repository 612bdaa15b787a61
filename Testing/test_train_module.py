"""The training tab's Qt-free parts with a real MRML scene (slicer-core) and the real CLI: status.jsonl ->
table node + plot series (live refresh), the comparison table from `brats-mamba compare` -> table node,
the train command line against `brats-mamba train`'s own parser, and the background job's failure log
and process-tree cancel."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_STATUS = ROOT / "Resources/Models/demo/training/status.jsonl"  # a real run's status (the demo model)


@pytest.fixture()
def scene():
    from BraTSMambaLib import mrml

    return mrml.new_scene()


@pytest.fixture()
def run_tree(tmp_path) -> Path:
    """nnU-Net results layout holding one fold folder with the demo model's real status.jsonl."""
    fold = tmp_path / "results/Dataset500_BraTS/nnUNetTrainerUMambaBot__nnUNetPlans__3d_fullres/fold_0"
    fold.mkdir(parents=True)
    shutil.copy(DEMO_STATUS, fold / "status.jsonl")
    return fold


def _column(table, title: str) -> list:
    arr = table.GetTable().GetColumnByName(title)
    assert arr is not None, title
    return [arr.GetValue(i) for i in range(arr.GetNumberOfTuples())]


def _same(a, b) -> bool:
    return (a is None and math.isnan(b)) or (a is not None and math.isclose(float(a), b, rel_tol=1e-12))


def test_status_records_become_a_table_and_plot_series(scene):
    from BraTSMambaLib.data import conventions as C
    from BraTSMambaLib.mrml.training_view import STATUS_COLUMNS, status_chart, status_table
    from BraTSMambaLib.training.status import read_status

    records = read_status(DEMO_STATUS)
    assert len(records) > 5
    records[3] = {**records[3], "peak_gpu_mem_gb": None}  # a CPU epoch has no GPU memory
    table = status_table(scene, records)
    assert table.GetNumberOfRows() == len(records)
    assert [table.GetColumnName(j) for j in range(table.GetNumberOfColumns())] == [t for _, t in STATUS_COLUMNS]
    for key, title in STATUS_COLUMNS:
        assert all(_same(r.get(key), v) for r, v in zip(records, _column(table, title))), key
    chart = status_chart(scene, table)
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [s.GetYColumnName() for s in series] == ["Train loss", "Val loss", *(f"Dice {r}" for r in C.REGIONS)]
    for s in series:
        assert s.GetTableNode() is table and s.GetXColumnName() == "Epoch"
        assert s.GetPlotType() == s.PlotTypeScatter
    for r in C.REGIONS:
        s = next(s for s in series if s.GetYColumnName() == f"Dice {r}")
        assert tuple(round(c, 6) for c in s.GetColor()) == tuple(round(c, 6) for c in C.REGION_COLORS[r])
    again = status_chart(scene, table, target=chart)  # refreshing re-uses the series
    assert again is chart and chart.GetNumberOfPlotSeriesNodes() == len(series)
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == len(series)


def test_run_view_follows_a_growing_status_file(scene, run_tree):
    from BraTSMambaLib.mrml.training_view import RunView
    from BraTSMambaLib.training.status import append_status, read_status

    view = RunView(run_tree.parent.parent)  # the dataset folder: the status.jsonl below it is found
    assert view.status_file == run_tree / "status.jsonl"
    assert view.refresh(scene)
    n = len(read_status(DEMO_STATUS))
    assert view.table.GetNumberOfRows() == n and view.chart.GetNumberOfPlotSeriesNodes() == 5
    assert not view.refresh(scene)  # unchanged file: not re-read
    last = dict(view.records[-1], epoch=view.records[-1]["epoch"] + 1, train_loss=-0.9)
    append_status(run_tree, last)
    with open(run_tree / "status.jsonl", "a") as f:
        f.write('{"epoch": 99, "train_lo')  # a run killed while writing: the torn line is ignored
    assert view.refresh(scene)
    assert view.table.GetNumberOfRows() == n + 1
    assert _column(view.table, "Train loss")[-1] == -0.9
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1  # refilled in place
    assert RunView(run_tree.parent / "nothing").status_file is None


def test_runs_are_found_at_the_levels_of_an_nnunet_results_tree(run_tree):
    from BraTSMambaLib.mrml.training_view import run_status_files

    other = run_tree.parent / "fold_1"
    other.mkdir()
    shutil.copy(DEMO_STATUS, other / "status.jsonl")
    deep = run_tree / "nested/fold_0"  # not a run layout: ignored
    deep.mkdir(parents=True)
    shutil.copy(DEMO_STATUS, deep / "status.jsonl")
    both = [run_tree / "status.jsonl", other / "status.jsonl"]
    for level in (run_tree.parent, run_tree.parents[1], run_tree.parents[2]):  # trainer, dataset, results
        assert run_status_files(level) == both, level
    assert run_status_files(run_tree) == [run_tree / "status.jsonl"]
    assert run_status_files(run_tree / "missing") == []


def test_csv_table_loading_types_and_errors(scene, tmp_path):
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.mrml.training_view import table_from_csv, table_rows

    p = tmp_path / "t.csv"
    p.write_text("run,epochs,test_dice_WT\na/b/fold_0,13,\nc/d/fold_1,400,0.84\n")
    table = table_from_csv(scene, p)
    assert table.GetTable().GetColumnByName("run").IsA("vtkStringArray")
    assert table.GetTable().GetColumnByName("epochs").IsA("vtkDoubleArray")
    rows = table_rows(table)
    assert rows[1] == {"run": "c/d/fold_1", "epochs": 400.0, "test_dice_WT": 0.84}
    assert math.isnan(rows[0]["test_dice_WT"])
    p.write_text("run,epochs\nx,1,2\n")
    with pytest.raises(BraTSInputError, match="t.csv"):
        table_from_csv(scene, p)
    with pytest.raises(BraTSInputError, match="not found"):
        table_from_csv(scene, tmp_path / "missing.csv")


def test_compare_job_runs_the_cli_and_its_table_loads(scene, run_tree):
    from BraTSMambaLib.mrml.cli_job import CompareJob
    from BraTSMambaLib.mrml.training_view import table_from_csv, table_rows
    from BraTSMambaLib.training.compare import COLUMNS, run_row

    job = CompareJob.for_runs([run_tree])
    assert job.command[1:4] == ["-m", "BraTSMambaLib.cli", "compare"]
    job.start()
    assert job.wait(timeout=180), job.error
    try:
        table = table_from_csv(scene, job.table_csv, "comparison")
        rows = table_rows(table)
        assert [table.GetColumnName(j) for j in range(table.GetNumberOfColumns())] == [k for k, _ in COLUMNS]
        expected = run_row(run_tree)  # the same numbers computed in this process
        assert len(rows) == 1
        assert (rows[0]["run"], rows[0]["architecture"]) == (expected["run"], expected["architecture"])
        for key in ("epochs", "epoch_s_min", "epoch_s_max", "final_train_loss", "train_dice_WT", "train_dice_ET"):
            assert math.isclose(rows[0][key], expected[key], rel_tol=1e-9), key
        assert "| Run |" in job.table_md.read_text()
    finally:
        job.cleanup()
    assert not job.workdir.exists()


def test_train_arguments_parse_with_the_train_command(tmp_path):
    from BraTSMambaLib.commands import train
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.mrml.cli_job import train_arguments
    from BraTSMambaLib.nets import list_models

    parser = argparse.ArgumentParser(prog="train")
    train.configure(parser)
    for model in list_models():
        args = train_arguments(500, model, 3, epochs=400, device="cuda", results=tmp_path / "r",
                               preprocessed=tmp_path / "p", resume=True)
        assert args[0] == "train"
        ns = parser.parse_args(args[1:])
        assert (ns.dataset, ns.model, ns.fold, ns.epochs, ns.device, ns.cont) == ("500", model, "3", 400, "cuda", True)
        assert (ns.results, ns.preprocessed, ns.plans) == (str(tmp_path / "r"), str(tmp_path / "p"), "nnUNetPlans")
    ns = parser.parse_args(train_arguments("Dataset500_BraTS", "segmamba")[1:])
    assert ns.epochs is None and not ns.cont and ns.results is None
    with pytest.raises(BraTSInputError):
        train_arguments(500, " ")


def test_find_run_folder_matches_the_trainer_of_the_model(run_tree):
    from BraTSMambaLib.mrml.cli_job import find_run_folder

    results = run_tree.parents[2]
    assert find_run_folder(results, 500, "umambabot", 0) == run_tree
    assert find_run_folder(results, "Dataset500_BraTS", "umambabot", 0) == run_tree
    assert find_run_folder(results, 500, "segmamba", 0) is None
    assert find_run_folder(results, 500, "umambabot", 1) is None
    assert find_run_folder(results, 501, "umambabot", 0) is None


def test_failed_command_shows_its_log_and_cancel_kills_the_tree(run_tree, tmp_path):
    from BraTSMambaLib.mrml.cli_job import CliJob

    job = CliJob(["compare", str(tmp_path / "no-runs-here")])
    job.start()
    assert not job.wait(timeout=120)
    assert "exit status" in job.error and "no-runs-here" in job.error  # the CLI's own one-line message
    follow = CliJob(["status", str(run_tree), "--follow", "--interval", "0.2"])
    follow.start()
    deadline = time.monotonic() + 120
    while not any("epochs" in line for line in follow.process.lines) and time.monotonic() < deadline:
        assert not follow.poll(), follow.error  # --follow never ends on its own for an unfinished run
        time.sleep(0.1)
    pid = follow.process.pid
    follow.cancel()
    assert follow.done and follow.cancelled and follow.error == "Cancelled."
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_status_columns_match_the_status_fields():
    """Every numeric status.jsonl field the trainers write has a column (one home: training.status.FIELDS)."""
    from BraTSMambaLib.mrml.training_view import STATUS_COLUMNS
    from BraTSMambaLib.training.status import FIELDS

    first = json.loads(DEMO_STATUS.read_text().splitlines()[0])
    numeric = {k for k in FIELDS if isinstance(first.get(k), (int, float)) and k != "iterations"}
    assert numeric == {k for k, _ in STATUS_COLUMNS}


LIVE_VIEW = """
import slicer
from BraTSMambaLib.mrml import cli_job, training_view
try:
    from BraTSMambaLib.nets import list_models
    models = list_models()
except ImportError:
    models = []
scene = slicer.vtkMRMLScene()
view = training_view.RunView(__import__("pathlib").Path(%r))
print(json.dumps({"models": models, "refreshed": view.refresh(scene), "rows": view.table.GetNumberOfRows(),
                  "args": cli_job.train_arguments(500, "segmamba", 0)}))
"""


def test_live_view_works_before_the_packages_are_installed():
    """Watching a run trained elsewhere needs only what Slicer ships (numpy, vtk, MRML): the module's model
    list falls back to an editable combo, and the table and curves come without torch or matplotlib."""
    import subprocess
    import sys

    from slicer_python import without_extension_packages

    code = without_extension_packages(str(ROOT / "BraTSMamba"), str(ROOT)) + LIVE_VIEW % str(DEMO_STATUS.parent)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["models"] == [] and out["refreshed"] and out["rows"] == len(DEMO_STATUS.read_text().splitlines())
    assert out["args"][:2] == ["train", "500"]


def test_module_file_parses_on_slicer_58_python():
    """Slicer 5.8 (Python 3.9) must load the module far enough to say it needs a newer Slicer."""
    import ast

    source = (ROOT / "BraTSMambaTrain/BraTSMambaTrain.py").read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    for node in ast.walk(tree):  # annotations are evaluated at runtime (no __future__ import): no PEP 604 unions
        ann = getattr(node, "annotation", None) if isinstance(node, (ast.arg, ast.AnnAssign)) else None
        assert ann is None or "|" not in ast.unparse(ann), ast.unparse(ann)
        assert not isinstance(node, ast.Match)
    top = {n.names[0].name.split(".")[0] if isinstance(n, ast.Import) else (n.module or "").split(".")[0]
           for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert top <= {"html", "importlib", "logging", "os", "pathlib", "sys", "typing", "qt", "slicer", "vtk"}, top
