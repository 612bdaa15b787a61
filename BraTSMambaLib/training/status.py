"""Run status: one JSON line per epoch (`status.jsonl`) and the curves (`progress.png`).

The trainer appends a line after every epoch; `brats-mamba status` and the Slicer training module
read it. A resumed run may repeat an epoch that was interrupted after its line was written:
`read_status` keeps the last line per epoch, so readers always see one row per epoch.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from BraTSMambaLib.data import conventions as C

STATUS_FILE = "status.jsonl"
PROGRESS_FILE = "progress.png"

#: Fields of one status line, in order (`dice_WT`.. follow conventions.REGIONS).
FIELDS: tuple[str, ...] = (
    "epoch", "train_loss", "val_loss", *(f"dice_{r}" for r in C.REGIONS), "epoch_s", "lr",
    "peak_gpu_mem_gb", "wall_time", "iterations", "model",
)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def append_status(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one epoch record, flushed and fsynced so a killed run keeps every finished line."""
    path = Path(run_dir) / STATUS_FILE
    line = json.dumps({k: _clean(v) for k, v in record.items()}, sort_keys=False)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_status(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Epoch records of a run (a run folder or its status.jsonl), one per epoch, the latest kept.

    A torn last line (a run killed while writing) is ignored.
    """
    p = Path(path)
    if p.is_dir():
        p = p / STATUS_FILE
    if not p.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "epoch" in rec:
            by_epoch[int(rec["epoch"])] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def find_status_files(root: str | os.PathLike) -> list[Path]:
    """status.jsonl files under `root` (a fold folder, a trainer folder or a results tree)."""
    p = Path(root)
    if (p / STATUS_FILE).is_file():
        return [p / STATUS_FILE]
    return sorted(p.rglob(STATUS_FILE))


def plot_progress(records: Iterable[Mapping[str, Any]], out: str | os.PathLike, title: str = "") -> Path:
    """Write progress.png (losses, pseudo-Dice per region, epoch time, learning rate) atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from BraTSMambaLib.data.io import atomic_path

    recs = list(records)
    ep = [r["epoch"] for r in recs]

    def col(key):
        return [float("nan") if r.get(key) is None else r[key] for r in recs]

    # nnU-Net's own plot sets a global seaborn style (font scale 2.5); draw ours in matplotlib's defaults
    with matplotlib.style.context("default"):
        fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
        ax = axes[0]
        ax.plot(ep, col("train_loss"), label="train loss", color="tab:blue")
        ax.plot(ep, col("val_loss"), label="validation loss", color="tab:red")
        ax.set_ylabel("loss (Dice + BCE)")
        ax.legend(loc="upper right")
        ax.set_title(title or "training progress")
        ax.grid(alpha=0.3)
        ax = axes[1]
        for r in C.REGIONS:
            ax.plot(ep, col(f"dice_{r}"), label=f"pseudo-Dice {r}", color=C.REGION_COLORS[r])
        ax.set_ylim(0, 1)
        ax.set_ylabel("pseudo-Dice (validation patches)")
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        ax = axes[2]
        ax.plot(ep, col("epoch_s"), label="epoch time", color="tab:gray")
        ax.set_ylabel("epoch time [s]")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(ep, col("lr"), label="learning rate", color="tab:green")
        ax2.set_ylabel("learning rate", color="tab:green")
        fig.tight_layout()
    out = Path(out)
    with atomic_path(out, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=72, format="png")
    plt.close(fig)
    return out


def format_table(records: list[Mapping[str, Any]], last: int | None = None) -> str:
    """Plain-text table of epoch records for the terminal."""
    rows = records[-last:] if last else records
    head = f"{'epoch':>5} {'train':>8} {'val':>8} " + " ".join(f"{r:>6}" for r in C.REGIONS) + \
        f" {'time s':>7} {'lr':>9} {'GPU GB':>7}"
    lines = [head]

    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    for r in rows:
        lines.append(
            f"{r['epoch']:>5} {f(r.get('train_loss'), '8.4f')} {f(r.get('val_loss'), '8.4f')} "
            + " ".join(f(r.get(f'dice_{g}'), '6.3f').rjust(6) for g in C.REGIONS)
            + f" {f(r.get('epoch_s'), '7.1f')} {f(r.get('lr'), '9.2e')} {f(r.get('peak_gpu_mem_gb'), '7.2f')}")
    return "\n".join(lines)
