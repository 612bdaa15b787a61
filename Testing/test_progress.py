"""The progress line format shared by the CLI (producer) and the Slicer job (consumer), the batch
sub-range mapping, and the tile count the inference stage's fractions are based on."""
from __future__ import annotations

import io

import pytest
import torch

from BraTSMambaLib.inference.predictor import tile_count
from BraTSMambaLib.progress import (
    PROGRESS_ENV,
    PROGRESS_PREFIX,
    STAGES,
    JsonLinesReporter,
    Progress,
    json_progress_requested,
    parse_progress,
    parse_progress_line,
    stage_fraction,
    within,
)


def test_reporter_lines_parse_back():
    buf = io.StringIO()
    report = JsonLinesReporter(buf)
    report("inference", 0.5, "tile 3/6")
    report("done", 1.0)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and all(ln.startswith(PROGRESS_PREFIX) for ln in lines)
    assert parse_progress(lines[0]) == Progress("inference", 0.5, "tile 3/6")
    assert parse_progress("[stderr] " + lines[1]) == Progress("done", 1.0, "")
    assert parse_progress("plain log text") is None
    assert parse_progress(PROGRESS_PREFIX + "[1, 2]") is None
    assert parse_progress(PROGRESS_PREFIX + '{"stage": "write", "fraction": "x"}') is None
    assert parse_progress(PROGRESS_PREFIX + '{"stage": "write", "fraction": 7}').fraction == 1.0


def test_stage_fraction_spans_the_stage():
    assert stage_fraction("inference") == STAGES["inference"][0]
    assert stage_fraction("inference", 1.0) == pytest.approx(STAGES["postprocess"][0])
    assert stage_fraction("inference", 0.5) == pytest.approx((STAGES["inference"][0] + STAGES["postprocess"][0]) / 2)
    assert stage_fraction("done", 0.5) == 1.0
    # a tqdm bar refines the current stage the same way, never going backwards
    p = parse_progress_line("x:  50%|#####     | 5/10", Progress("inference", 0.3))
    assert p.stage == "inference" and p.fraction == pytest.approx(stage_fraction("inference", 0.5))
    assert parse_progress_line("x:  10%|#", Progress("inference", 0.5)).fraction == 0.5


def test_within_maps_a_case_onto_its_share():
    seen = []
    case2 = within(lambda s, f, m="": seen.append((s, f, m)), 0.5, 0.75, "case 2/4 A: ")
    case2("load", 0.0, "reading")
    case2("inference", 0.5, "tile 1/2")
    case2("write", 1.0, "segmented")
    assert seen == [("load", 0.5, "case 2/4 A: reading"), ("inference", 0.625, "case 2/4 A: tile 1/2"),
                    ("write", 0.75, "case 2/4 A: segmented")]
    assert within(None, 0.0, 1.0) is None


def test_env_var_asks_for_json():
    assert json_progress_requested({PROGRESS_ENV: "json"}) and json_progress_requested({PROGRESS_ENV: " JSON "})
    assert not json_progress_requested({}) and not json_progress_requested({PROGRESS_ENV: "bar"})


@pytest.mark.parametrize("shape,patch,overlap", [((40, 44, 36), (32, 32, 32), 0.5), ((20, 70, 33), (32, 32, 16), 0.25),
                                                  ((32, 32, 32), (32, 32, 32), 0.5), ((50, 41, 64), (24, 32, 32), 0.0)])
def test_tile_count_is_what_monai_visits(shape, patch, overlap):
    from monai.inferers import sliding_window_inference

    visited = 0

    def count(x: torch.Tensor) -> torch.Tensor:
        nonlocal visited
        visited += x.shape[0]
        return x

    sliding_window_inference(torch.zeros(1, 1, *shape), patch, 3, count, overlap=overlap)
    assert tile_count(shape, patch, overlap) == visited
