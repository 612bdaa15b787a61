"""Training runs in MRML: status.jsonl as a table node with plot series, the comparison table as a table node.

What the Slicer training module shows, built from the files a run writes (`training.status`) and from
`brats-mamba compare`'s CSV, without Qt: the same functions run inside Slicer and with PyPI slicer-core.
Table columns are vtkDoubleArray (missing values NaN) so that plot series can use any of them.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from BraTSMambaLib.data import conventions as cv
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.training.status import STATUS_FILE, read_status

#: (status.jsonl key, table column title), in table order.
STATUS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("epoch", "Epoch"), ("train_loss", "Train loss"), ("val_loss", "Val loss"),
    *((f"dice_{r}", f"Dice {r}") for r in cv.REGIONS),
    ("epoch_s", "Epoch [s]"), ("lr", "LR"), ("peak_gpu_mem_gb", "GPU [GB]"),
)

#: Curves of the training chart: (column title, RGB). Dice curves take the regions' colours.
LOSS_COLORS: Mapping[str, tuple[float, float, float]] = {"Train loss": (0.12, 0.47, 0.71),
                                                         "Val loss": (0.84, 0.15, 0.16)}
CURVES: tuple[tuple[str, tuple[float, float, float]], ...] = (
    *LOSS_COLORS.items(), *((f"Dice {r}", cv.REGION_COLORS[r]) for r in cv.REGIONS))


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def status_table(scene, records: Sequence[Mapping[str, Any]], name: str = "Training status", *, target=None):
    """Table node with one row per epoch record (STATUS_COLUMNS); `target` is refilled in place."""
    import vtk

    table = target or scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    was = table.StartModify()
    table.RemoveAllColumns()
    for key, title in STATUS_COLUMNS:
        arr = vtk.vtkDoubleArray()
        arr.SetName(title)
        for rec in records:
            arr.InsertNextValue(_number(rec.get(key)))
        table.AddColumn(arr)
    table.SetColumnUnitLabel("Epoch [s]", "s")
    table.SetColumnUnitLabel("GPU [GB]", "GB")
    table.EndModify(was)
    return table


def status_chart(scene, table, name: str = "Training curves", *, target=None):
    """Plot chart with one line series per curve (losses, pseudo-Dice WT/TC/ET) against the epoch column.

    Series nodes are created once per chart and re-pointed at `table` on later calls.
    """
    chart = target or scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    existing = {chart.GetNthPlotSeriesNode(i).GetName(): chart.GetNthPlotSeriesNode(i)
                for i in range(chart.GetNumberOfPlotSeriesNodes())}
    for title, color in CURVES:
        series = existing.get(title) or scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", title)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("Epoch")
        series.SetYColumnName(title)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        series.SetColor(*color)
        if title not in existing:
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(name)
    chart.SetXAxisTitle("epoch")
    chart.SetYAxisTitle("loss (Dice + BCE) / pseudo-Dice")
    return chart


#: Where status.jsonl files are looked for under a chosen folder, in nnU-Net's results layout
#: (`Dataset<NNN>_<name>/<trainer>__<plans>__<configuration>/fold_<F>`): a fold folder, a trainer
#: folder, a dataset folder, or the results folder. Bounded on purpose (no recursive search): the
#: panel re-checks while the user types a path, which may be a large tree.
RUN_PATTERNS: tuple[str, ...] = (STATUS_FILE, f"fold_*/{STATUS_FILE}", f"*__*__*/fold_*/{STATUS_FILE}",
                                 f"Dataset*/*__*__*/fold_*/{STATUS_FILE}")


def run_status_files(root: str | os.PathLike) -> list[Path]:
    """status.jsonl files of the runs at or just below `root` (see RUN_PATTERNS), sorted."""
    p = Path(root)
    if not p.is_dir():
        return []
    return sorted({f for pattern in RUN_PATTERNS for f in p.glob(pattern) if f.is_file()})


@dataclass
class RunView:
    """The live view of one run folder: re-reads status.jsonl only when the file changed.

    `root` may be a fold folder, a trainer folder or a results tree; the most recently written
    status.jsonl under it is shown. Poll `refresh(scene)` from a timer; it returns True when the
    table and chart were updated.
    """

    root: Path
    table: object | None = None
    chart: object | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    _stamp: tuple | None = None

    @property
    def status_file(self) -> Path | None:
        files = run_status_files(self.root)
        return max(files, key=lambda p: p.stat().st_mtime_ns) if files else None

    def refresh(self, scene, name: str = "Training status") -> bool:
        status = self.status_file
        if status is None:
            return False
        st = status.stat()
        stamp = (str(status), st.st_mtime_ns, st.st_size)
        if stamp == self._stamp and self.table is not None:
            return False
        self.records = read_status(status)
        self.table = status_table(scene, self.records, name, target=self.table)
        self.chart = status_chart(scene, self.table, f"{name} curves", target=self.chart)
        self._stamp = stamp
        return True


def _cell(text: str) -> float | None:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def table_from_csv(scene, path: str | os.PathLike, name: str | None = None, *, target=None):
    """Table node from a CSV with a header row (e.g. `brats-mamba compare -o T` -> T.csv).

    Columns whose cells are all numbers (or empty) become vtkDoubleArray, the others vtkStringArray.
    """
    import vtk

    p = Path(path)
    if not p.is_file():
        raise BraTSInputError(f"{p}: file not found")
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0]:
        raise BraTSInputError(f"{p}: empty CSV (no header row)")
    header, body = rows[0], rows[1:]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise BraTSInputError(f"{p}: rows {bad[:5]} have not {len(header)} cells like the header")
    table = target or scene.AddNewNodeByClass("vtkMRMLTableNode", name or p.stem)
    was = table.StartModify()
    table.RemoveAllColumns()
    for j, title in enumerate(header):
        cells = [r[j] for r in body]
        values = [_cell(c) for c in cells]
        numeric = bool(cells) and all(v is not None for v in values) and any(c != "" for c in cells)
        arr = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        arr.SetName(title)
        for c, v in zip(cells, values):
            arr.InsertNextValue(v if numeric else c)
        table.AddColumn(arr)
    table.EndModify(was)
    return table


def table_rows(table) -> list[dict[str, Any]]:
    """A table node's rows as dicts (column title -> value; NaN for empty numeric cells)."""
    t = table.GetTable()
    cols = [t.GetColumn(j) for j in range(t.GetNumberOfColumns())]
    return [{c.GetName(): c.GetValue(i) for c in cols} for i in range(t.GetNumberOfRows())]


__all__ = ["CURVES", "RUN_PATTERNS", "STATUS_COLUMNS", "RunView", "run_status_files", "status_chart", "status_table",
           "table_from_csv", "table_rows"]
