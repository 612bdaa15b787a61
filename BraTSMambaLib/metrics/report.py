"""Evaluation results as JSON, CSV and a printed table."""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from BraTSMambaLib.data.conventions import REGIONS
from BraTSMambaLib.metrics.binary import EMPTY_HD95_MM, METRIC_TITLES, METRICS
from BraTSMambaLib.metrics.evaluate import EvaluationResults, summarize


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def to_json(results: EvaluationResults) -> str:
    """Cases, unmatched files, the per-region summary and the scoring rules, as JSON (NaN written as null)."""
    summary = summarize(results)
    doc: dict[str, Any] = {
        "labels": results.convention,
        "rules": {
            "hd95": "95th percentile of pooled symmetric surface distances, mm",
            "both_empty": {"dice": 1.0, "hd95": 0.0},
            "one_empty": {"dice": 0.0, "hd95": EMPTY_HD95_MM},
        },
        "cases": [
            {
                "case_id": c.case_id,
                "pred": None if c.pred is None else str(c.pred),
                "ref": str(c.ref),
                "missing_prediction": c.missing_prediction,
                "metrics": c.metrics,
            }
            for c in results.cases
        ],
        "unmatched_pred": [str(p) for p in results.unmatched_pred],
        "unmatched_ref": [str(p) for p in results.unmatched_ref],
        "summary": {
            r: {m: {k: _finite(v) for k, v in s.items()} for m, s in ms.items()} for r, ms in summary.items()
        },
    }
    return json.dumps(doc, indent=2) + "\n"


def csv_columns() -> list[str]:
    """CSV header: case, files, then `<region>_<metric>` for every region and metric."""
    return ["case_id", "pred", "ref", *(f"{r}_{m}" for r in REGIONS for m in METRICS)]


def to_csv(results: EvaluationResults) -> str:
    """One row per case with every region's metrics."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(csv_columns())
    for c in results.cases:
        w.writerow([c.case_id, "" if c.pred is None else str(c.pred), str(c.ref),
                    *(repr(float(c.metrics[r][m])) for r in REGIONS for m in METRICS)])
    return buf.getvalue()


def _num(x: float, digits: int) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


_DIGITS = {"dice": 4, "hd95": 2, "sensitivity": 4, "specificity": 4, "pred_volume_ml": 2, "ref_volume_ml": 2}


def format_table(results: EvaluationResults) -> str:
    """Plain-text table: one row per region; a case's values, or mean ± std (median) over several cases."""
    single = len(results.cases) == 1
    header = ["Region", *(METRIC_TITLES[m] for m in METRICS)]
    rows = []
    if single:
        case = results.cases[0]
        metrics = case.metrics
        for r in REGIONS:
            rows.append([r, *(_num(metrics[r][m], _DIGITS[m]) for m in METRICS)])
    else:
        summary = summarize(results)
        for r in REGIONS:
            cells = []
            for m in METRICS:
                s, d = summary[r][m], _DIGITS[m]
                cells.append(f"{_num(s['mean'], d)} ± {_num(s['std'], d)} ({_num(s['median'], d)})")
            rows.append([r, *cells])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if single:
        lines.insert(0, f"{case.case_id}: {case.pred} vs {case.ref} ({results.convention} labels)")
    else:
        lines.append(f"{len(results.cases)} cases, {results.convention} labels; mean ± std (median)")
    return "\n".join(lines)
