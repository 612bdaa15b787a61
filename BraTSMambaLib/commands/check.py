"""`brats-mamba check CASE_DIR`: say whether a case folder can be segmented or evaluated, and why not."""
from __future__ import annotations

import argparse
import json

NAME = "check"
HELP = "check a case folder: modalities, naming, geometry, intensities, labels; list every problem"
DESCRIPTION = """\
Inspect a BraTS case folder (BraTS 2018-2021 names <case>_t1/_t1ce/_t2/_flair[/_seg].nii.gz, BraTS 2023
names <case>-t1n/-t1c/-t2w/-t2f[/-seg].nii.gz, or nnU-Net <case>_0000.._0003) and report what was found:
the modalities, naming convention, grid (size, spacing, origin, orientation), intensity range per
modality and the label values of a segmentation. Every problem is listed (missing or unreadable files,
2D/4D images, grids that differ from the T1ce, NaN/inf voxels, labels outside the convention).

exit status: 0 the case is usable, 2 it is not."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case_dir", metavar="CASE_DIR", help="folder holding one case's image files")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    parser.add_argument("--labels", choices=("2021", "2023"), default=None,
                        help="label convention of the segmentation (default: from the file naming)")
    parser.add_argument("--atol", type=float, default=1e-3, metavar="MM",
                        help="tolerance for spacing/origin (mm) and direction differences (default: 1e-3)")


def run(args: argparse.Namespace) -> int:
    from BraTSMambaLib.data.check import check_case, format_report

    report = check_case(args.case_dir, labels=args.labels, atol=args.atol)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.usable else 2
