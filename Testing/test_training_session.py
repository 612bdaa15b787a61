"""The device training session (benchmarks/train_session.sh) rehearsed on the CPU with a phantom
dataset, and the pieces that make DDP and wall-clock limits safe: all ranks agree on the epoch
count, and the epoch count fits a time budget and an end time."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "train_session.sh"


def _agree_worker(rank: int, world: int, port: int, values: list[int], out: str) -> None:
    import torch.distributed as dist

    from BraTSMambaLib.training.trainers.nnunet_trainer_base import agree_min

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        got = agree_min(values[rank], torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}").write_text(str(got))


def test_ddp_ranks_agree_on_the_smallest_epoch_count(tmp_path):
    """Two real processes (gloo) that timed their epochs differently stop after the same epoch."""
    import torch.multiprocessing as mp
    from nnunetv2.run.run_training import find_free_network_port

    from BraTSMambaLib.training.trainers.nnunet_trainer_base import agree_min

    mp.spawn(_agree_worker, args=(2, find_free_network_port(), [7, 5], str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["5", "5"]
    assert agree_min(9, torch.device("cpu")) == 9  # outside DDP: the value itself


def _budget_trainer(budget: float, end_by: float, epochs: int = 100):
    """The base trainer's budget state without nnU-Net's set-up (no dataset needed)."""
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    from BraTSMambaLib.training.trainers.nnunet_trainers import nnUNetTrainerUMambaBot

    tr = object.__new__(nnUNetTrainerUMambaBot)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    tr.__dict__.update(time_budget_s=budget, end_by=end_by, _epoch_times=[], _epoch_ends=[], _train_seconds=0.0, current_epoch=0,
                       _max_epochs=epochs, num_epochs=epochs, device=torch.device("cpu"), messages=[],
                       lr_scheduler=PolyLRScheduler(opt, 1e-3, epochs))
    tr.print_to_log_file = lambda *a, **k: tr.messages.append(" ".join(map(str, a)))
    return tr


def _epoch(tr, seconds: float) -> None:
    tr._train_seconds += seconds
    tr._apply_time_budget(seconds)
    tr.current_epoch += 1


def test_time_budget_counts_epoch_time_and_skips_the_first_epoch_in_the_estimate():
    tr = _budget_trainer(budget=100.0, end_by=0.0)
    _epoch(tr, 30.0)  # start-up epoch: 70 s left at 30 s an epoch -> 1 + 2
    assert tr.num_epochs == 3 and tr.lr_scheduler.max_steps == 3
    _epoch(tr, 10.0)  # typical epoch now 10 s: 60 s left -> 2 + 6
    assert tr.num_epochs == 8 and "8 epochs fit" in tr.messages[-1]
    while tr.current_epoch < tr.num_epochs:
        _epoch(tr, 10.0)
    assert tr._train_seconds == 100.0


def test_end_by_limits_the_epochs_to_the_wall_clock():
    tr = _budget_trainer(budget=1000.0, end_by=time.time() + 25.0)
    _epoch(tr, 10.0)
    _epoch(tr, 10.0)  # about 25 s of wall clock left, 10 s an epoch -> this one + 2 more
    assert tr.num_epochs == 4 and "end by" in tr.messages[-1]
    slow = _budget_trainer(budget=1000.0, end_by=time.time() + 25.0)
    slow._epoch_ends = [time.time() - 40.0, time.time() - 20.0]  # 20 s of wall clock an epoch (checkpoints)
    _epoch(slow, 10.0)
    assert slow.num_epochs == 2  # 25 s left at 20 s an epoch: this one + 1
    none = _budget_trainer(budget=0.0, end_by=0.0, epochs=50)
    _epoch(none, 10.0)
    assert none.num_epochs == 50 and not none.messages


def test_session_script_trainer_names_match_the_trainers():
    from BraTSMambaLib.training.trainers.nnunet_trainers import TRAINERS

    text = SCRIPT.read_text()
    mapping = dict(re.findall(r"\[(\w+)\]=(nnUNetTrainer\w+)", text))
    assert mapping == {m: cls.__name__ for m, cls in TRAINERS.items()}
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def _cli(env: dict, *args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "BraTSMambaLib.cli", *args], env=env, capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr[-3000:]


def _session(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_session_script_rehearsal_on_cpu(tmp_path):
    """stage (two carried folders), prep, ddp (1 process; 2-GPU runs fail cleanly on a CPU), train2
    (two architectures at once under a time budget, then compare on the held-out case)."""
    from BraTSMambaLib.data.phantom import write_phantom
    from BraTSMambaLib.training import bundle

    ds_id, ds = 993, "Dataset993_Session"
    base = dict(os.environ, OMP_NUM_THREADS="1", nnUNet_raw=str(tmp_path / "raw"),
                nnUNet_preprocessed=str(tmp_path / "pre"), nnUNet_results=str(tmp_path / "res"))
    for seed in range(4):
        write_phantom(tmp_path / "cases" / f"c{seed}", seed=seed, shape_xyz=(48, 48, 40))
    _cli(base, "convert", str(tmp_path / "cases"), "-o", str(tmp_path / "raw"), "--id", str(ds_id), "--name",
         "Session", "--jobs", "1")
    _cli(base, "plan", str(ds_id), "--processes", "1", "--skip-preprocess", "--val-cases", "BraTSPhantom_s3")
    tiny = ["--patch-size", "32", "32", "32", "--stages", "3", "--features", "4", "8", "16"]
    for tag, extra in (("compact", ["--batch-size", "2"]), ("compactb4", ["--batch-size", "4"]),
                       ("tinyseg", ["--batch-size", "2", '--override=depths=[1,1,1,1]',
                                    '--override=feat_size=[4,8,8,16]', "--override=hidden_size=16",
                                    "--override=d_state=4"])):
        _cli(base, "plan", str(ds_id), "--skip-plan", "--skip-preprocess", "--tag", tag, *tiny, *extra)
    parts = bundle.pack(tmp_path / "raw" / ds, tmp_path / "bundle", part_mb=0.01, jobs=1)
    carried = [tmp_path / "carry" / f"s{i}" for i in (1, 2)]
    for i, part in enumerate(parts):
        dest = carried[i % 2] / "cases"
        dest.mkdir(parents=True, exist_ok=True)
        for f in part.iterdir():
            shutil.copy(f, dest / f.name)
    shutil.copytree(tmp_path / "pre" / ds, carried[1] / "meta", ignore=shutil.ignore_patterns("nnUNetPlans_3d*"))

    out = tmp_path / "out"
    env = {k: v for k, v in base.items() if not k.startswith("nnUNet_")}
    env.update(DEVSTAGE=str(tmp_path / "devstage"), OUT=str(out), PY=sys.executable, DS_ID=str(ds_id), DS=ds,
               N_CASES="4", VAL_CASES="BraTSPhantom_s3", ITERS="4", VAL_ITERS="2", DA="0", DEVICE="cpu",
               PROCS="1", DDP_EPOCHS="2", DDP_ITERS="5", BUDGET_S="3", CALL_S="900",
               MODELS="umambabot:nnUNetPlans_compact segmamba:nnUNetPlans_tinyseg")
    _session(env, "stage", *map(str, carried))
    assert len(list((tmp_path / "devstage" / "cases").glob("*.case.xz"))) == 4

    _session(env, "prep")
    held = tmp_path / "devstage" / "heldout" / "BraTSPhantom_s3"
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(held / "BraTSPhantom_s3_seg.nii.gz")))
    orig = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cases" / "c3" / "BraTSPhantom_s3_seg.nii.gz")))
    assert set(np.unique(seg)) == set(np.unique(orig)) == {0, 1, 2, 4}
    assert (seg > 0).sum() == (orig > 0).sum()  # the bundle's crop keeps every labelled voxel

    _session(env, "ddp")
    rows = {r["run"]: r for r in json.loads((out / "ddp_summary.json").read_text())}
    one = rows["g1_b2"]
    assert one["finished"] and one["epochs"] == 2 and one["global_batch"] == 2 and one["iters_per_s"] > 0
    assert one["speedup_patches_vs_1gpu"] == 1.0
    assert not rows["g2_b2"]["finished"] and rows["g2_b2"]["patches_per_s"] is None  # no 2 GPUs here
    assert "needs 2 CUDA devices" in (out / "ddp_g2_b2.log").read_text()

    shutil.rmtree(out)
    res = _session(env, "train2")
    assert "training done" in res.stdout and "eval done" in res.stdout
    table = json.loads((out / "train2_table.json").read_text())["rows"]
    assert [r["architecture"] for r in table] == ["U-Mamba Bot", "SegMamba"]
    for r in table:
        assert r["test_cases"] == 1 and 0.0 <= r["test_dice_WT"] <= 1.0 and r["epochs"] >= 1
    with tarfile.open(out / "train2_runs.tar.gz") as tar:
        names = tar.getnames()
    assert sum(n.endswith("status.jsonl") for n in names) == 2 and sum(n.endswith("progress.png") for n in names) == 2
    assert len(list(out.iterdir())) <= 8
