"""The reviewer's verdict per case, kept in a CSV file that is rewritten atomically after every verdict.

One row per case (the latest verdict wins): case, verdict, note, Dice WT/TC/ET of the prediction when
both a prediction and a ground truth were shown, reviewer, UTC time. Reopening the file resumes the
review at the first case without a verdict. A killed Slicer leaves the previous complete file.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.data.io import atomic_write_text
from BraTSMambaLib.errors import BraTSInputError

#: Verdicts a reviewer can give, in the order the module shows them.
VERDICTS: tuple[str, ...] = ("accept", "needs correction", "reject")
FIELDS: tuple[str, ...] = ("case", "verdict", "note", *(f"dice_{r}" for r in C.REGIONS), "reviewer", "time")


@dataclass
class ReviewLog:
    """Verdicts of one review, backed by `path` (created on the first verdict)."""

    path: Path
    entries: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ReviewLog":
        """Read an existing review file (or start an empty one); BraTSInputError names a malformed row."""
        p = Path(path)
        log = cls(p)
        if not p.exists():
            return log
        if not p.is_file():
            raise BraTSInputError(f"{p}: is not a file")
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [k for k in ("case", "verdict") if k not in (reader.fieldnames or [])]
            if missing:
                raise BraTSInputError(f"{p}: not a review file (no column {', '.join(missing)})")
            for n, row in enumerate(reader, start=2):
                if row["verdict"] not in VERDICTS:
                    raise BraTSInputError(f"{p}: row {n}: verdict {row['verdict']!r} is not one of {list(VERDICTS)}")
                log.entries[row["case"]] = {k: row.get(k) or "" for k in FIELDS}
        return log

    def verdict(self, case_id: str) -> dict[str, str] | None:
        return self.entries.get(case_id)

    def record(self, case_id: str, verdict: str, note: str = "", *, dice: Mapping[str, float] | None = None,
               reviewer: str = "") -> dict[str, str]:
        """Store a verdict and rewrite the file atomically; returns the row written."""
        if verdict not in VERDICTS:
            raise BraTSInputError(f"verdict {verdict!r} is not one of {list(VERDICTS)}")
        if not case_id:
            raise BraTSInputError("a verdict needs a case id")
        row = {"case": case_id, "verdict": verdict, "note": " ".join(note.split()), "reviewer": reviewer,
               "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        for r in C.REGIONS:
            v = (dice or {}).get(r)
            row[f"dice_{r}"] = "" if v is None or not math.isfinite(v) else f"{v:.4f}"
        entries = {**self.entries, case_id: row}
        atomic_write_text(self.path, self.to_csv(entries), overwrite=True)
        self.entries = entries  # only once the file holds it
        return row

    def to_csv(self, entries: Mapping[str, Mapping[str, str]] | None = None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        for row in (self.entries if entries is None else entries).values():
            w.writerow(row)
        return buf.getvalue()

    def first_unreviewed(self, case_ids: Sequence[str]) -> int:
        """Index of the first case without a verdict (where a resumed review starts); the last when all have one."""
        for i, cid in enumerate(case_ids):
            if cid not in self.entries:
                return i
        return max(len(case_ids) - 1, 0)

    def counts(self, case_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Number of cases per verdict (among `case_ids` when given)."""
        ids = set(self.entries) if case_ids is None else set(case_ids) & set(self.entries)
        return {v: sum(1 for c in ids if self.entries[c]["verdict"] == v) for v in VERDICTS}
