"""`brats-mamba phantom OUT_DIR`: write a synthetic BraTS-2021-style case (the embedded default input)."""
from __future__ import annotations

import argparse

NAME = "phantom"
HELP = "write a synthetic brain-tumour case (T1, T1ce, T2, FLAIR + seg) built on the MNI152 template"
DESCRIPTION = """\
Write a synthetic BraTS-2021-style case folder OUT_DIR/BraTSPhantom_s<SEED>_{t1,t1ce,t2,flair,seg}.nii.gz:
healthy anatomy from the MNI152 template shipped with nilearn, mapped to T1/T1ce/T2/FLAIR contrasts, with
a seeded glioma (necrotic core, enhancing rim bright on T1ce, edema bright on T2/FLAIR), a smooth bias
field and Rician noise. Labels follow BraTS 2021 (1 necrosis, 2 edema, 4 enhancing). The same seed and
shape give the same bytes. See docs/data.md for the model.

example: brats-mamba phantom phantom-case --seed 3 && brats-mamba check phantom-case"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="case folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the tumour, bias and noise (default: 0)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=(240, 240, 155),
                        help="grid size in voxels (default: 240 240 155, the BraTS grid)")
    parser.add_argument("--spacing", type=float, default=1.0, metavar="MM", help="voxel spacing in mm (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing phantom files in OUT_DIR")


def run(args: argparse.Namespace) -> int:
    from BraTSMambaLib.data.phantom import phantom_case_id, write_phantom

    out = write_phantom(args.out_dir, args.seed, tuple(args.shape), spacing=args.spacing, overwrite=args.overwrite)
    print(f"wrote {phantom_case_id(args.seed)} ({' x '.join(map(str, args.shape))} voxels) to {out}")
    return 0
