"""`brats-mamba compare`: the study's Table I (Markdown and CSV) for one or more training runs."""
from __future__ import annotations

import argparse
import json

NAME = "compare"
HELP = "compare training runs in one table (epochs, epoch time, losses, train/test Dice WT/TC/ET, HD95, s/case)"
DESCRIPTION = """\
Builds the study's Table I from run folders (fold folders, or trainer folders holding fold_*):
epochs, epoch duration min/max, final training loss and training pseudo-Dice WT/TC/ET from each
run's status.jsonl. With --test-cases, every run is imported as a model package and segments each
held-out case (with its segmentation), evaluated with the project's metrics: test Dice and HD95
per region (mean over cases) and seconds per case.

Example:
  brats-mamba compare results/Dataset500_BraTS/*__3d_fullres --test-cases heldout/ -o table1
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--test-cases", help="folder of held-out BraTS cases with segmentations")
    parser.add_argument("-o", "--output", help="write OUTPUT.md, OUTPUT.csv and OUTPUT.json")
    parser.add_argument("--device", default="auto", help="inference device for the test columns (default auto)")
    parser.add_argument("--fast", action="store_true", help="no test-time mirroring, less tile overlap")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of Markdown")


def run(args: argparse.Namespace) -> int:
    from BraTSMambaLib.training.compare import compare, to_markdown, write_table

    rows = compare(args.runs, test_cases=args.test_cases, device=args.device, fast=args.fast)
    if args.output:
        for p in write_table(rows, args.output):
            if not args.json:
                print(f"wrote {p}")
    print(json.dumps({"rows": rows}, indent=2) if args.json else to_markdown(rows))
    return 0
