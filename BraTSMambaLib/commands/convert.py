"""`brats-mamba convert`: BraTS case folders -> nnU-Net v2 raw dataset for region training."""
from __future__ import annotations

import argparse
import json

NAME = "convert"
HELP = "convert BraTS 2018-2021 or 2023 cases into an nnU-Net v2 raw dataset (regions WT/TC/ET)"
DESCRIPTION = """\
Convert a folder of BraTS cases (2018-2021 names <case>_t1/_t1ce/_t2/_flair/_seg.nii.gz, or 2023
names <case>-t1n/-t1c/-t2w/-t2f/-seg.nii.gz) into nnU-Net v2's raw format, as its Dataset137:

  OUT/DatasetNNN_NAME/imagesTr/<case>_0000..0003.nii.gz   T1, T1ce, T2, FLAIR
  OUT/DatasetNNN_NAME/labelsTr/<case>.nii.gz              labels 1 ED, 2 NCR, 3 ET (nnU-Net internal)
  OUT/DatasetNNN_NAME/dataset.json                        regions WT (1,2,3), TC (2,3), ET (3), order (1,2,3)

Every case is validated (all four modalities and a segmentation on one grid, finite values, legal
labels); rejected cases are listed with the reason and left out (also in conversion.json).
Example:
  brats-mamba convert /data/BraTS2021 -o nnUNet_raw --id 500
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", nargs="+", help="folder(s) holding BraTS case folders (searched recursively)")
    parser.add_argument("-o", "--output", required=True, metavar="NNUNET_RAW", help="nnU-Net raw folder to write into")
    parser.add_argument("--id", type=int, required=True, dest="dataset_id", help="nnU-Net dataset id (1-999)")
    parser.add_argument("--name", default="BraTS", help="dataset name after the id (default: BraTS)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel cases (default: CPU count)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this id")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from BraTSMambaLib.training.convert import convert_dataset

    res = convert_dataset(args.src if len(args.src) > 1 else args.src[0], args.output, args.dataset_id, args.name,
                          overwrite=args.overwrite, jobs=args.jobs, progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(res.as_dict(), indent=2))
    else:
        print(f"{res.dataset_dir}: {len(res.converted)} cases converted, {len(res.rejected)} rejected")
        for folder, reason in res.rejected.items():
            print(f"  rejected {folder}: {reason}")
    return 0 if not res.rejected else 1
