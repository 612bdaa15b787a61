"""`brats-mamba import-nnunet`: package an nnU-Net v2 results folder (folds become an ensemble)."""
from __future__ import annotations

import argparse

NAME = "import-nnunet"
HELP = "turn an nnU-Net v2 results folder into a model package"
DESCRIPTION = """\
Turn an nnU-Net v2 results folder <Trainer>__<Plans>__<Configuration>/ (plans.json, dataset.json,
fold_*/checkpoint_final.pth) trained with a BraTSMamba trainer (nnUNetTrainer<Network>) or with
U-Mamba's nnUNetTrainerUMambaBot / nnUNetTrainerUMambaEnc into a model package: weights as
safetensors with sha256 sums, nnU-Net's plans.json and dataset.json kept for identical preprocessing,
all folds as one ensemble. Every fold is loaded strictly into the network first.
Output ending in .zip gives a zipped package.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", metavar="RESULTS_FOLDER", help="nnU-Net results folder Trainer__Plans__Configuration")
    p.add_argument("-o", "--output", required=True, metavar="PACKAGE", help="package folder (or .zip) to write")
    p.add_argument("--folds", nargs="+", default=None, help="folds to include (default: every fold_* folder)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold")
    p.add_argument("--name", default=None, help="package name (default: <network>-<dataset>)")
    p.add_argument("--license", default="unspecified", help="license of the weights, recorded in model.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")


def run(args: argparse.Namespace) -> int:
    from BraTSMambaLib.inference.nnunet_import import import_nnunet
    from BraTSMambaLib.inference.package import open_package

    out = import_nnunet(args.results, args.output, folds=args.folds, checkpoint=args.checkpoint,
                        overwrite=args.overwrite, name=args.name, license=args.license)
    pkg = open_package(out)
    print(f"wrote {out}: {pkg.describe()}, patch {list(pkg.patch_size)}, "
          f"configuration {pkg.configuration}")
    return 0
