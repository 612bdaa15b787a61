"""`brats-mamba plan`: nnU-Net fingerprinting, planning and 3d_fullres preprocessing."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

NAME = "plan"
HELP = "run nnU-Net's fingerprinting, planning and 3d_fullres preprocessing; optionally plans sized for one model"
DESCRIPTION = """\
Runs nnU-Net v2's own experiment planning through its Python API (plan_and_preprocess_api) for the
3d_fullres configuration, with worker counts that suit this machine (fingerprints: all cores;
preprocessing: bounded by memory, about 4 GB a worker).

With --tag (and --patch-size / --stages / --features / --batch-size / --override) it also writes
nnUNetPlans_TAG.json, the default plans resized for one model, sharing the preprocessed data.
Train with it: brats-mamba train N --model NAME --plans nnUNetPlans_TAG

Examples:
  brats-mamba plan 500 --raw nnUNet_raw --preprocessed nnUNet_preprocessed
  brats-mamba plan 500 --skip-preprocess --tag compact --stages 5 --features 16 32 64 128 192
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset id (e.g. 500) or name (Dataset500_BraTS)")
    parser.add_argument("--raw", help="nnUNet_raw folder (default: $nnUNet_raw)")
    parser.add_argument("--preprocessed", help="nnUNet_preprocessed folder (default: $nnUNet_preprocessed)")
    parser.add_argument("--processes", type=int, default=None, help="worker processes (default: from the machine)")
    parser.add_argument("--skip-plan", action="store_true", help="keep existing default plans (no fingerprinting)")
    parser.add_argument("--skip-preprocess", action="store_true", help="plan only")
    parser.add_argument("--no-verify", action="store_true", help="skip nnU-Net's dataset integrity check")
    parser.add_argument("--gpu-memory-gb", type=float, default=None, help="nnU-Net's GPU memory target for planning")
    g = parser.add_argument_group("plans for one model (written as nnUNetPlans_TAG.json)")
    g.add_argument("--tag", help="name suffix of the derived plans")
    g.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"))
    g.add_argument("--stages", type=int, help="at most this many resolution stages")
    g.add_argument("--features", type=int, nargs="+", help="feature width per stage")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                   help="registry override stored in the plans (e.g. feat_size=[24,48,96,192]); repeatable")
    parser.add_argument("--val-cases", nargs="+", metavar="CASE",
                        help="write a fixed split (splits_final.json, fold 0): these cases validate, the rest train")
    parser.add_argument("--json", action="store_true", help="print the resulting 3d_fullres configuration as JSON")


def _overrides(items: list[str]) -> dict:
    from BraTSMambaLib.errors import BraTSInputError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BraTSInputError(f"--override {item!r}: use KEY=JSON, e.g. hidden_size=256")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _write_split(pre_dir, val_cases: list[str]) -> None:
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.training.convert import write_split

    raw = os.environ["nnUNet_raw"]
    labels = sorted(p.name[: -len(".nii.gz")] for p in (Path(raw) / pre_dir.name / "labelsTr")
                    .glob("*.nii.gz"))
    unknown = sorted(set(val_cases) - set(labels))
    if unknown:
        raise BraTSInputError(f"--val-cases: not in the dataset: {', '.join(unknown)}")
    path = write_split(pre_dir, [c for c in labels if c not in val_cases], val_cases)
    print(f"{path}: fold 0 = {len(labels) - len(val_cases)} training / {len(val_cases)} validation cases")


def run(args: argparse.Namespace) -> int:
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.training import planning

    planning.set_nnunet_paths(args.raw, args.preprocessed)
    derive = any(v is not None for v in (args.patch_size, args.stages, args.features, args.batch_size)) or args.override
    if derive and not args.tag:
        raise BraTSInputError("--patch-size/--stages/--features/--batch-size/--override need --tag")
    if args.skip_plan:
        res = planning.load_plan(args.dataset)
        if not args.skip_preprocess:
            planning.preprocess_dataset(args.dataset, res.plans_identifier, num_processes=args.processes)
    else:
        res = planning.plan_dataset(args.dataset, num_processes=args.processes, verify=not args.no_verify,
                                    preprocess=not args.skip_preprocess, gpu_memory_gb=args.gpu_memory_gb)
    if args.tag:
        res = planning.derive_plans(args.dataset, args.tag, patch_size=args.patch_size, n_stages=args.stages,
                                    features_per_stage=args.features, batch_size=args.batch_size,
                                    network_overrides=_overrides(args.override))
    if args.val_cases:
        _write_split(res.plans_file.parent, args.val_cases)
    if args.json:
        print(json.dumps({"plans": res.plans_identifier, "file": str(res.plans_file), **res.configuration}, indent=2))
    else:
        c = res.configuration
        print(f"{res.plans_file}: {res.plans_identifier} 3d_fullres patch {c['patch_size']}, batch {c['batch_size']}, "
              f"spacing {c['spacing']}, features {c['architecture']['arch_kwargs']['features_per_stage']}")
    return 0
