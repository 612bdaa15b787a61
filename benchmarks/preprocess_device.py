"""Benchmark and check: nnU-Net's preprocessing (its classes, CPU) against `inference.device_preprocessing`
on real cases: seconds of each, the rounds `fill_holes` takes to settle, the voxels it fills, and the largest
difference of the preprocessed values (the crop, mask and properties must be identical).

    python benchmarks/preprocess_device.py ../shared/data/brats2018/*/Brats18_2013_11_1 --device cuda
    python benchmarks/preprocess_device.py CASE_DIR [CASE_DIR ...]            # the torch code on the CPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main(argv=None) -> int:
    import SimpleITK as sitk

    from BraTSMambaLib.data import conventions as C
    from BraTSMambaLib.data.case import load_case
    from BraTSMambaLib.inference import device_preprocessing as DP
    from BraTSMambaLib.inference.preprocessing import (equivalent_plans, nonzero_box, preprocess,
                                                       region_dataset_json)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cases", nargs="+", type=Path)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(equivalent_plans((1.0, 1.0, 1.0), (128, 128, 128)))
    cm, dj = pm.get_configuration("3d_fullres"), region_dataset_json()
    device = torch.device(args.device)
    for case_dir in args.cases:
        case = load_case(case_dir)
        spacing = tuple(reversed(case.reference.GetSpacing()))
        channels = [sitk.GetArrayViewFromImage(case.images[k]) for k in C.MODALITIES]
        t0 = time.perf_counter()
        ref, ref_props = preprocess(channels, spacing, pm, cm, dj)
        t_cpu = time.perf_counter() - t0
        DP.preprocess_on_device(channels, spacing, pm, cm, device)   # warm-up (CUDA context, kernels)
        t0 = time.perf_counter()
        got, props = DP.preprocess_on_device(channels, spacing, pm, cm, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_dev = time.perf_counter() - t0
        box = nonzero_box(channels, margin=0)
        mask = torch.from_numpy(np.any([np.asarray(c)[box] != 0 for c in channels], axis=0))
        rounds = next(r for r in range(1, DP.MAX_FILL_ROUNDS + 1) if DP.fill_holes(mask, max_rounds=r) is not None)
        filled = int(DP.fill_holes(mask).sum() - mask.sum())
        diff = float(np.abs(got.cpu().numpy() - ref).max())
        same = props == ref_props and np.array_equal(got.cpu().numpy() == 0, ref == 0)
        print(f"{case.case_id}: shape {tuple(ref.shape)}, nnU-Net {t_cpu:.3f} s, on {device} {t_dev:.3f} s, "
              f"fill_holes {rounds} rounds ({filled} voxels filled), max |difference| {diff:.2e}, "
              f"crop/mask/properties identical: {same}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
