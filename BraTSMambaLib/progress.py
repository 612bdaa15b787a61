"""Progress of a segmentation job: the stages, the callback the pipeline reports through, and the
machine-readable line format the CLI prints for a parent process (the 3D Slicer job) to parse.

One home for the line format, shared by the producer (`brats-mamba segment` with
`BRATSMAMBA_PROGRESS=json` or `--progress-json`) and the consumer (`BraTSMambaLib.mrml.process`):

    @@brats-mamba-progress {"stage": "inference", "fraction": 0.42, "message": "tile 12/28"}

`stage` is one of STAGES, `fraction` the overall fraction done (0..1), non-decreasing within a job.
The library core never prints: it calls a `ProgressCallback(stage, fraction, message)`; the
command wires `JsonLinesReporter` to it when asked.
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, TextIO

#: Environment variable asking `brats-mamba segment` for JSON progress lines (value `json`).
PROGRESS_ENV = "BRATSMAMBA_PROGRESS"
PROGRESS_PREFIX = "@@brats-mamba-progress "

#: Stages of a segmentation job, in order, with the overall fraction each starts at and its title.
STAGES: Mapping[str, tuple[float, str]] = {
    "start": (0.00, "Starting"),
    "load": (0.05, "Loading model and images"),
    "preprocess": (0.15, "Preprocessing"),
    "inference": (0.25, "Segmenting"),
    "postprocess": (0.85, "Postprocessing"),
    "write": (0.92, "Writing results"),
    "done": (1.00, "Done"),
}

_TQDM_RE = re.compile(r"(\d{1,3})%\|")


class ProgressCallback(Protocol):
    """Told where a job is: stage key, overall fraction 0..1, a short message for the user."""

    def __call__(self, stage: str, fraction: float, message: str = "") -> None: ...


@dataclass
class Progress:
    """Where a job is: stage key, overall fraction 0..1, a short message for the user."""

    stage: str = "start"
    fraction: float = 0.0
    message: str = ""

    @property
    def title(self) -> str:
        return STAGES.get(self.stage, (0.0, self.stage.capitalize()))[1]


def stage_fraction(stage: str, within: float = 0.0) -> float:
    """Overall fraction `within` (0..1) of the way through `stage` (towards the next stage's start)."""
    keys = list(STAGES)
    start = STAGES[stage][0]
    nxt = keys.index(stage) + 1
    end = STAGES[keys[nxt]][0] if nxt < len(keys) else 1.0
    return start + (end - start) * min(max(within, 0.0), 1.0)


def format_progress(stage: str, fraction: float | None = None, message: str = "") -> str:
    """One progress line; `fraction` defaults to the stage's start."""
    if fraction is None:
        fraction = STAGES.get(stage, (0.0, ""))[0]
    return PROGRESS_PREFIX + json.dumps({"stage": stage, "fraction": round(float(fraction), 4), "message": message})


def parse_progress(line: str, default_stage: str = "start") -> Progress | None:
    """The progress a `format_progress` line (anywhere in `line`) reports, else None."""
    idx = line.find(PROGRESS_PREFIX)
    if idx < 0:
        return None
    try:
        data = json.loads(line[idx + len(PROGRESS_PREFIX):])
        stage = str(data.get("stage", default_stage))
        fraction = data.get("fraction")
        fraction = STAGES.get(stage, (0.0, ""))[0] if fraction is None else float(fraction)
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None
    return Progress(stage, min(max(fraction, 0.0), 1.0), str(data.get("message", "")))


def parse_progress_line(line: str, current: Progress) -> Progress | None:
    """The progress a line reports: a JSON line, or a tqdm bar ("45%|") inside the current stage; else None."""
    if PROGRESS_PREFIX in line:
        return parse_progress(line, current.stage)
    m = _TQDM_RE.search(line)
    if m:
        within = min(int(m.group(1)), 100) / 100.0
        if current.stage in STAGES:
            fraction = stage_fraction(current.stage, within)
        else:
            fraction = current.fraction + (1.0 - current.fraction) * within
        return Progress(current.stage, max(current.fraction, fraction), line.strip()[-80:])
    return None


def json_progress_requested(env: Mapping[str, str] | None = None) -> bool:
    """True when PROGRESS_ENV asks for JSON progress lines."""
    return (os.environ if env is None else env).get(PROGRESS_ENV, "").strip().lower() == "json"


class JsonLinesReporter:
    """A ProgressCallback printing one flushed `format_progress` line per call to `stream`."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        stream = self.stream or sys.stdout
        print(format_progress(stage, fraction, message), file=stream, flush=True)


def within(callback: ProgressCallback | None, lo: float, hi: float, prefix: str = "") -> ProgressCallback | None:
    """A callback mapping 0..1 onto `lo`..`hi` of `callback` and prefixing messages (a case of a batch)."""
    if callback is None:
        return None

    def report(stage: str, fraction: float, message: str = "") -> None:
        callback(stage, lo + (hi - lo) * min(max(fraction, 0.0), 1.0), prefix + message)

    return report
