"""`brats-mamba evaluate`: score predicted label maps against references (Dice, HD95, ... per region)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from BraTSMambaLib.data.io import atomic_write_text
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.metrics.binary import EMPTY_HD95_MM
from BraTSMambaLib.metrics.evaluate import (
    CaseResult,
    EvaluationResults,
    case_id_of,
    evaluate_files,
    evaluate_folders,
)
from BraTSMambaLib.metrics.report import format_table, to_csv, to_json

NAME = "evaluate"
HELP = "score predicted segmentations against references (Dice, HD95, sensitivity, specificity, volumes)"
DESCRIPTION = f"""\
Score a predicted label map against a reference, or every prediction in a folder against the
reference with the same case id, for the BraTS regions WT, TC and ET.

Metrics per region: Dice, HD95 in mm (95th percentile of the pooled symmetric surface distances,
as the official BraTS package defines it, with the voxel spacing applied), sensitivity,
specificity, and the predicted and reference volumes in mL. Legacy BraTS rules for empty masks:
both empty -> Dice 1, HD95 0; exactly one empty -> Dice 0, HD95 {EMPTY_HD95_MM} mm.

Folders are matched by case id: `<case>_seg.nii.gz` / `<case>-seg.nii.gz` give `<case>`, other
names their stem; ids that still differ are matched by their numbers (`00217-000.nii.gz` pairs
with `BraTS-MET-00217-000-seg.nii.gz`). The reference folder may also hold BraTS case folders.

examples:
  brats-mamba evaluate --pred pred.nii.gz --gt BraTS2021_00000_seg.nii.gz
  brats-mamba evaluate --pred preds/ --gt BraTS2023/ --labels 2023 --json scores.json --csv scores.csv
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, type=Path, metavar="P", help="predicted label map, or a folder of them")
    parser.add_argument("--gt", required=True, type=Path, metavar="G",
                        help="reference label map, or a folder of them (or of BraTS case folders)")
    parser.add_argument("--labels", default="2021", choices=("2021", "2023"),
                        help="label convention of both: 2021 = {0,1,2,4} (BraTS 2018-2021), 2023 = {0,1,2,3} "
                             "(default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write cases, unmatched files and summary as JSON")
    parser.add_argument("--csv", type=Path, metavar="OUT", help="write one row per case as CSV")
    parser.add_argument("--missing", choices=("skip", "empty"), default="skip",
                        help="folders: references without a prediction are listed and skipped, or scored as an "
                             "empty prediction (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --json/--csv outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_outputs(args: argparse.Namespace) -> None:
    outs = [p for p in (args.json, args.csv) if p is not None]
    if len(outs) == 2 and outs[0].resolve() == outs[1].resolve():
        raise BraTSInputError(f"{outs[0]}: --json and --csv name the same file")
    for p in outs:
        if p.is_dir():
            raise BraTSInputError(f"{p}: is a folder, expected a file path")
        if p.exists() and not args.overwrite:
            raise BraTSInputError(f"{p}: already exists (use --overwrite to replace it)")


def _evaluate(args: argparse.Namespace) -> EvaluationResults:
    pred, gt = args.pred, args.gt
    for p, what in ((pred, "prediction"), (gt, "reference")):
        if not p.exists():
            raise BraTSInputError(f"{p}: {what} not found")
    if pred.is_dir() != gt.is_dir():
        raise BraTSInputError(f"{pred} and {gt}: give two files or two folders")
    if pred.is_dir():
        bar = (lambda jobs: tqdm(jobs, desc="evaluate", unit="case", file=sys.stderr, disable=args.quiet))
        return evaluate_folders(pred, gt, args.labels, missing=args.missing, progress=bar)
    metrics = evaluate_files(pred, gt, args.labels)
    return EvaluationResults(args.labels, cases=[CaseResult(case_id_of(gt), pred, gt, metrics)])


def run(args: argparse.Namespace) -> int:
    _check_outputs(args)
    results = _evaluate(args)
    for p in results.unmatched_pred:
        print(f"warning: no reference for prediction {p}", file=sys.stderr)
    for p in results.unmatched_ref:
        verb = "scored as empty" if args.missing == "empty" else "skipped"
        print(f"warning: no prediction for reference {p} ({verb})", file=sys.stderr)
    if args.json:
        atomic_write_text(args.json, to_json(results), overwrite=args.overwrite)
    if args.csv:
        atomic_write_text(args.csv, to_csv(results), overwrite=args.overwrite)
    print(format_table(results))
    for p in (args.json, args.csv):
        if p:
            print(f"wrote {p}")
    return 0
