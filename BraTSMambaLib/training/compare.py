"""The study's Table I: one row per training run, from its status.jsonl and, with test cases, from
inference on held-out cases evaluated with the project's metrics.

Columns: run id, architecture, epochs, epoch duration min/max, final training loss, training
pseudo-Dice WT/TC/ET (nnU-Net's online Dice on validation patches in the last epoch), and with
`test_cases`: test Dice WT/TC/ET and HD95 WT/TC/ET (mean over cases, legacy BraTS rules for empty
masks), seconds per case (preprocessing + sliding window + restoring, the model already loaded).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.training.status import read_status

PathLike = str | os.PathLike

COLUMNS: tuple[tuple[str, str], ...] = (
    ("run", "Run"), ("architecture", "Architecture"), ("epochs", "Epochs"),
    ("epoch_s_min", "Epoch s (min)"), ("epoch_s_max", "Epoch s (max)"), ("final_train_loss", "Final train loss"),
    *((f"train_dice_{r}", f"Train Dice {r}") for r in C.REGIONS),
    *((f"test_dice_{r}", f"Test Dice {r}") for r in C.REGIONS),
    *((f"test_hd95_{r}", f"HD95 {r} (mm)") for r in C.REGIONS),
    ("seconds_per_case", "s / case"), ("inference", "Inference on"), ("test_cases", "Test cases"),
)


def fold_dirs(path: PathLike) -> list[Path]:
    """Fold folders (holding status.jsonl) at or under `path`."""
    p = Path(path)
    if (p / "status.jsonl").is_file():
        return [p]
    found = sorted(f.parent for f in p.glob("fold_*/status.jsonl"))
    if not found:
        raise BraTSInputError(f"{p}: no status.jsonl (not a run trained with a BraTSMamba trainer)")
    return found


def run_row(fold: Path) -> dict[str, Any]:
    """The training columns of one fold folder."""
    recs = read_status(fold)
    if not recs:
        raise BraTSInputError(f"{fold}: status.jsonl holds no epochs")
    trainer, plans, conf = (fold.parent.name.split("__") + ["", "", ""])[:3]
    from BraTSMambaLib.inference.nnunet_import import registry_name_for_trainer
    from BraTSMambaLib import nets

    try:
        arch = nets.get_spec(registry_name_for_trainer(trainer)).title
    except BraTSInputError:
        arch = recs[-1].get("model") or trainer
    times = [r["epoch_s"] for r in recs if r.get("epoch_s") is not None]
    last = recs[-1]
    return {
        "run": f"{fold.parent.parent.name}/{fold.parent.name}/{fold.name}",
        "architecture": arch,
        "epochs": len(recs),
        "epoch_s_min": round(min(times), 2) if times else None,
        "epoch_s_max": round(max(times), 2) if times else None,
        "final_train_loss": last.get("train_loss"),
        **{f"train_dice_{r}": last.get(f"dice_{r}") for r in C.REGIONS},
        "finished": (fold / "checkpoint_final.pth").is_file(),
    }


def test_columns(results_dir: Path, fold: Path, cases: Sequence[Path], device: str, fast: bool) -> dict[str, Any]:
    """Import the run as a package, segment every test case, evaluate with the metrics package."""
    from BraTSMambaLib.data.case import load_case
    from BraTSMambaLib.inference.nnunet_import import import_nnunet
    from BraTSMambaLib.inference.package import open_package
    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model, predict_labels
    from BraTSMambaLib.metrics.evaluate import evaluate_labels

    with tempfile.TemporaryDirectory(prefix="brats-compare-") as tmp:
        pkg_dir = import_nnunet(results_dir, Path(tmp) / "pkg", folds=[fold.name])
        options = SegmentOptions(device=device, fast=fast)
        model = load_model(open_package(pkg_dir), options)
        per_case, seconds = [], []
        for folder in cases:
            case = load_case(folder, require_seg=True)
            t0 = time.perf_counter()
            labels = predict_labels(case, model, options).labels
            seconds.append(time.perf_counter() - t0)
            spacing = tuple(reversed(case.reference.GetSpacing()))
            per_case.append(evaluate_labels(labels, case.seg_array("2021"), spacing, "2021",
                                            pred_name=f"{case.case_id} prediction", ref_name=str(case.seg_path)))
    out: dict[str, Any] = {"test_cases": len(per_case), "seconds_per_case": round(float(np.mean(seconds)), 2),
                           "inference": f"{model.device.type} {model.predictor.precision}"}
    for r in C.REGIONS:
        out[f"test_dice_{r}"] = _mean([m[r]["dice"] for m in per_case])
        out[f"test_hd95_{r}"] = _mean([m[r]["hd95"] for m in per_case])
    out["per_case"] = [{"case": Path(c).name, **{f"{k}_{r}": m[r][k] for r in C.REGIONS for k in ("dice", "hd95")}}
                       for c, m in zip(cases, per_case)]
    return out


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return round(float(np.mean(vals)), 4) if vals else None


def compare(runs: Sequence[PathLike], *, test_cases: PathLike | None = None, device: str = "auto",
            fast: bool = False) -> list[dict[str, Any]]:
    """Table I rows for every fold folder found under `runs`."""
    cases: list[Path] = []
    if test_cases is not None:
        from BraTSMambaLib.data.case import find_cases

        cases = find_cases(test_cases)
        if not cases:
            raise BraTSInputError(f"{test_cases}: no BraTS cases found")
    rows = []
    for run in runs:
        for fold in fold_dirs(run):
            row = run_row(fold)
            if cases:
                if not row["finished"]:
                    raise BraTSInputError(f"{fold}: no checkpoint_final.pth yet; test columns need a finished run")
                row.update(test_columns(fold.parent, fold, cases, device, fast))
            rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    cols = [(k, t) for k, t in COLUMNS if any(r.get(k) is not None for r in rows)]
    lines = ["| " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([k for k, _ in COLUMNS])
    for r in rows:
        w.writerow(["" if r.get(k) is None else r.get(k) for k, _ in COLUMNS])
    return buf.getvalue()


def write_table(rows: Sequence[dict[str, Any]], out_stem: PathLike, *, overwrite: bool = True) -> tuple[Path, Path, Path]:
    """Write `<stem>.md`, `<stem>.csv` and `<stem>.json` atomically."""
    from BraTSMambaLib.data.io import atomic_write_text

    stem = Path(out_stem)
    md = atomic_write_text(stem.with_name(stem.name + ".md"), to_markdown(rows), overwrite=overwrite)
    cs = atomic_write_text(stem.with_name(stem.name + ".csv"), to_csv(rows), overwrite=overwrite)
    js = atomic_write_text(stem.with_name(stem.name + ".json"), json.dumps({"rows": list(rows)}, indent=2),
                           overwrite=overwrite)
    return md, cs, js
