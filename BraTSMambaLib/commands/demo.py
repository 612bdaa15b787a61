"""`brats-mamba demo`: segment a generated phantom case with the bundled demo model, no download."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "demo"
HELP = "segment a generated phantom case with the bundled demo model (no download) and score it"
DESCRIPTION = """\
Generate a synthetic four-modality brain-tumour case (the phantom, with its true label map), segment
it with the demo model package bundled in Resources/Models/, write every output (label map,
.seg.nrrd with overlapping WT/TC/ET segments, volumes and timings, PNG overlay) and print Dice
against the phantom's truth. Needs no network access and no GPU.
"""

DEFAULT_OUTPUT = "demo-output"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default=DEFAULT_OUTPUT, metavar="OUT",
                   help=f"output folder (default {DEFAULT_OUTPUT})")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, mps")
    p.add_argument("--seed", type=int, default=0, help="phantom random seed (default 0)")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="phantom grid size in voxels (default 240 240 155, the BraTS box)")
    p.add_argument("--full", action="store_true", help="8-flip test-time augmentation (default: --fast settings)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier demo run")


def run(args: argparse.Namespace) -> int:
    from BraTSMambaLib.inference.catalogue import demo_package_path, resources_dir

    package = demo_package_path()
    if package is None:
        print("brats-mamba demo: the demo model package is not bundled in this copy "
              f"(expected {resources_dir() / 'Models' / 'demo'}); it is produced by the training step "
              "(see docs/training.md). Nothing was segmented: untrained weights are never used.",
              file=sys.stderr)
        return 1

    from BraTSMambaLib.commands.segment import print_case
    from BraTSMambaLib.data.phantom import phantom_case_id, write_phantom
    from BraTSMambaLib.inference.outputs import check_targets, output_paths
    from BraTSMambaLib.inference.package import open_package
    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model, segment_case

    out = Path(args.output)
    options = SegmentOptions(device=args.device, fast=not args.full, overlay=True, evaluate=True,
                             overwrite=args.overwrite)
    case_dir = out / "phantom-case"
    pkg = open_package(package)
    case_id = phantom_case_id(args.seed)
    check_targets(output_paths(out, case_id, overlay=True), options.overwrite)
    shape = {"shape_xyz": tuple(args.shape)} if args.shape else {}
    case_path = write_phantom(case_dir, seed=args.seed, overwrite=args.overwrite, **shape)
    model = load_model(pkg, options)
    print(f"demo model {pkg.describe()} on {model.device} ({model.predictor.precision}; loaded and verified in "
          f"{model.load_seconds:.1f} s)")
    model.predictor.progress = True
    result = segment_case(case_path, model, out, options)
    print_case(result.report)
    print(f"outputs in {out}/: " + ", ".join(p.name for p in result.paths.values()))
    return 0

