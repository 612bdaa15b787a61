"""End-to-end training on a tiny phantom dataset (CPU): convert, plan, train two architectures,
resume after kill -9, compare, import the run as a package and segment with it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BraTSMambaLib.data import conventions as C

SHAPE_XYZ = (48, 48, 40)
DATASET_ID = 990
TINY = {
    # model: (plans tag, stages, features, registry overrides)
    "umambabot": ("tinybot", 3, [4, 8, 16], {}),  # U-Mamba takes its whole layout from the plans
    "segmamba": ("tinyseg", 3, [4, 8, 16], {"depths": [1, 1, 1, 1], "feat_size": [4, 8, 8, 16], "hidden_size": 16,
                                            "d_state": 4}),
}
EPOCHS, ITERS = 3, 6


def _cli(*args: str, env: dict | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "BraTSMambaLib.cli", *args], env=env, check=check,
                          capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def nn_env(tmp_path_factory) -> dict:
    """Phantom cases (4 for training, 1 held out, 1 broken), converted and planned."""
    from BraTSMambaLib.data.phantom import write_phantom

    root = tmp_path_factory.mktemp("nnunet")
    src = root / "cases"
    for seed in range(4):
        write_phantom(src / f"case{seed}", seed=seed, shape_xyz=SHAPE_XYZ)
    write_phantom(root / "heldout" / "case9", seed=9, shape_xyz=SHAPE_XYZ)
    broken = write_phantom(src / "broken", seed=7, shape_xyz=SHAPE_XYZ)
    next(broken.glob("*_seg.nii.gz")).unlink()
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "results"), OMP_NUM_THREADS="1")
    conv = _cli("convert", str(src), "-o", str(root / "raw"), "--id", str(DATASET_ID), "--name", "Phantom",
                "--jobs", "1", "--json", env=env, check=False)
    assert conv.returncode == 1, conv.stderr  # one case rejected
    plan = _cli("plan", str(DATASET_ID), "--processes", "1", "--val-cases", "BraTSPhantom_s3", env=env, check=False)
    assert plan.returncode == 0, plan.stderr[-3000:]
    for model, (tag, stages, feats, over) in TINY.items():
        _cli("plan", str(DATASET_ID), "--skip-plan", "--skip-preprocess", "--tag", tag, "--patch-size", "32", "32",
             "32", "--stages", str(stages), "--features", *map(str, feats), "--batch-size", "2",
             *[f"--override={k}={json.dumps(v)}" for k, v in over.items()], env=env)
    return {"root": root, "env": env, "convert": json.loads(conv.stdout), "plan_out": plan.stdout}


def test_convert_layout_labels_and_rejections(nn_env):
    conv = nn_env["convert"]
    ds = Path(conv["dataset_dir"])
    assert ds.name == f"Dataset{DATASET_ID}_Phantom"
    assert sorted(conv["converted"]) == [f"BraTSPhantom_s{s}" for s in range(4)]
    (bad, reason), = conv["rejected"].items()
    assert bad.endswith("broken") and "segmentation" in reason
    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["labels"]["WT"] == [1, 2, 3] and dj["labels"]["TC"] == [2, 3] and dj["labels"]["ET"] == [3]
    assert dj["regions_class_order"] == [1, 2, 3] and dj["numTraining"] == 4
    assert [dj["channel_names"][str(i)] for i in range(4)] == ["T1", "T1ce", "T2", "FLAIR"]
    case = "BraTSPhantom_s0"
    src = sitk.GetArrayFromImage(sitk.ReadImage(str(nn_env["root"] / "cases" / "case0" / f"{case}_seg.nii.gz")))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "labelsTr" / f"{case}.nii.gz")))
    np.testing.assert_array_equal(lab, C.convert_labels(src, "2021", "nnunet"))
    assert set(np.unique(lab)) <= {0, 1, 2, 3} and (lab == 3).any()
    t1ce = sitk.ReadImage(str(ds / "imagesTr" / f"{case}_0001.nii.gz"))
    ref = sitk.ReadImage(str(nn_env["root"] / "cases" / "case0" / f"{case}_t1ce.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(t1ce), sitk.GetArrayFromImage(ref))
    # the id is taken now: converting again needs --overwrite, and leaves the dataset untouched
    again = _cli("convert", str(nn_env["root"] / "cases"), "-o", nn_env["env"]["nnUNet_raw"], "--id", str(DATASET_ID),
                 env=nn_env["env"], check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_plan_writes_plans_and_preprocessed_data(nn_env):
    pre = Path(nn_env["env"]["nnUNet_preprocessed"]) / f"Dataset{DATASET_ID}_Phantom"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert "3d_fullres" in plans["configurations"]
    data = pre / plans["configurations"]["3d_fullres"]["data_identifier"]
    assert len(list(data.glob("*.b2nd"))) >= 4
    tiny = json.loads((pre / "nnUNetPlans_tinyseg.json").read_text())["configurations"]["3d_fullres"]
    assert tiny["patch_size"] == [32, 32, 32] and tiny["batch_size"] == 2
    assert tiny["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16]
    assert tiny["network_overrides"]["hidden_size"] == 16
    assert tiny["data_identifier"] == plans["configurations"]["3d_fullres"]["data_identifier"]


def _train(nn_env, model: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    tag = TINY[model][0]
    return _cli("train", str(DATASET_ID), "--model", model, "--fold", "0", "--plans", f"nnUNetPlans_{tag}",
                "--epochs", str(EPOCHS), "--iters", str(ITERS), "--val-iters", "2", "--device", "cpu",
                "--no-validation", "--da-processes", "0", "--lr", "3e-3", *extra, env=nn_env["env"], check=check)


def _run_dir(nn_env, model: str) -> Path:
    from BraTSMambaLib.training.trainers import trainer_name

    tag = TINY[model][0]
    return (Path(nn_env["env"]["nnUNet_results"]) / f"Dataset{DATASET_ID}_Phantom"
            / f"{trainer_name(model)}__nnUNetPlans_{tag}__3d_fullres" / "fold_0")


@pytest.fixture(scope="module")
def trained(nn_env) -> dict:
    runs = {}
    for model in TINY:
        res = _train(nn_env, model)
        runs[model] = _run_dir(nn_env, model)
        assert runs[model].is_dir(), res.stdout[-2000:] + res.stderr[-2000:]
    return runs


@pytest.mark.parametrize("model", list(TINY))
def test_training_writes_checkpoints_and_status(trained, model):
    from BraTSMambaLib.training.status import read_status

    run = trained[model]
    assert (run / "checkpoint_final.pth").is_file()
    recs = read_status(run)
    assert [r["epoch"] for r in recs] == list(range(EPOCHS))
    for r in recs:
        assert r["model"].lower() == model and r["iterations"] == ITERS and r["epoch_s"] > 0
        assert all(0.0 <= r[f"dice_{g}"] <= 1.0 for g in C.REGIONS if r[f"dice_{g}"] is not None)
        assert np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) and r["lr"] > 0
    assert recs[-1]["train_loss"] < recs[0]["train_loss"], [r["train_loss"] for r in recs]
    assert (run / "progress.png").stat().st_size > 1000
    ck = __import__("torch").load(run / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ck["trainer_name"].lower() == f"nnunettrainer{model}" and ck["current_epoch"] == EPOCHS
    assert type(ck["optimizer_state"]["param_groups"][0]["eps"]) is float
    assert ck["optimizer_state"]["param_groups"][0]["eps"] == 1e-4  # AdamW with the study's epsilon


def test_status_command_prints_epochs(trained):
    out = _cli("status", str(trained["umambabot"]))
    lines = out.stdout.strip().splitlines()
    assert "finished" in lines[0] and len(lines) == 2 + EPOCHS
    js = json.loads(_cli("status", str(trained["umambabot"]), "--json").stdout)
    assert len(next(iter(js.values()))) == EPOCHS


def test_resume_after_kill_loses_at_most_one_epoch(nn_env, trained):
    from BraTSMambaLib.training.status import read_status

    env = dict(nn_env["env"])
    run = _run_dir(nn_env, "umambabot").parent.parent / "nnUNetTrainerUMambaBot__nnUNetPlans_tinybot__3d_fullres"
    epochs = 8
    results = Path(env["nnUNet_results"]).parent / "results_kill"
    env["nnUNet_results"] = str(results)
    cmd = [sys.executable, "-m", "BraTSMambaLib.cli", "train", str(DATASET_ID), "--model", "umambabot",
           "--plans", "nnUNetPlans_tinybot", "--epochs", str(epochs), "--iters", str(ITERS), "--val-iters", "1",
           "--device", "cpu", "--no-validation", "--da-processes", "0"]
    fold = results / run.parent.name / run.name / "fold_0"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while len(read_status(fold)) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = len(read_status(fold))
    assert done_before >= 3 and not (fold / "checkpoint_final.pth").exists()
    res = subprocess.run(cmd + ["--continue"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in (fold / "status.jsonl").read_text().splitlines()]
    resumed_from = lines[done_before]["epoch"]  # first epoch the resumed run wrote
    assert resumed_from >= done_before - 1, (done_before, resumed_from)
    assert [r["epoch"] for r in read_status(fold)] == list(range(epochs))
    import torch

    ck = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ck["current_epoch"] == epochs


def test_compare_produces_table(nn_env, trained, tmp_path):
    out = tmp_path / "table"
    res = _cli("compare", *(str(trained[m]) for m in TINY), "--test-cases", str(nn_env["root"] / "heldout"),
               "-o", str(out), "--device", "cpu", "--json", env=nn_env["env"])
    rows = json.loads(res.stdout)["rows"]
    assert [r["architecture"] for r in rows] == ["U-Mamba Bot", "SegMamba"]
    for r in rows:
        assert r["epochs"] == EPOCHS and r["epoch_s_min"] <= r["epoch_s_max"]
        assert all(0.0 <= r[f"test_dice_{g}"] <= 1.0 for g in C.REGIONS)
        assert r["test_cases"] == 1 and r["seconds_per_case"] > 0 and r["inference"] == "cpu fp32"
    md = (tmp_path / "table.md").read_text()
    assert md.count("\n|") >= 3 and "WT" in md
    csv = (tmp_path / "table.csv").read_text().splitlines()
    assert len(csv) == 3


def test_import_run_as_package_and_segment(nn_env, trained, tmp_path):
    pkg = tmp_path / "pkg"
    _cli("import-nnunet", str(trained["umambabot"].parent), "-o", str(pkg), env=nn_env["env"])
    assert (pkg / "model.json").is_file()
    out = tmp_path / "seg"
    case = nn_env["root"] / "heldout" / "case9"
    res = _cli("segment", "--case", str(case), "--model", str(pkg), "-o", str(out), "--device", "cpu", "--fast",
               "--evaluate", "--json", "--no-progress", env=nn_env["env"], check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    segs = list(out.rglob("*_seg.nii.gz"))
    assert len(segs) == 1
    lab = sitk.ReadImage(str(segs[0]))
    assert lab.GetSize() == SHAPE_XYZ
    assert set(np.unique(sitk.GetArrayFromImage(lab))) <= {0, 1, 2, 4}
