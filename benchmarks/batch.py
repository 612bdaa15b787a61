"""Batch throughput of `segment --batch`: the same cases segmented one after the other and pipelined (the
next case read and the previous case written on threads while the current one is predicted), in one run.

    python benchmarks/batch.py --case CASE --copies 6 --model segmamba            # a GPU machine
    python benchmarks/batch.py --copies 3 --model umambabot --tiny --device cpu --fast   # dry run, phantom

The case folder is linked under N case ids (a renamed symlink per modality), so every copy is a distinct
case with the same work. The package is a full-size registry network with random weights
(`benchmarks/segment.py build_package`); one case is segmented first to warm up (cuDNN autotuning,
kernel compiles). Prints seconds per case for each mode and their ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def link_copies(case_dir: Path, root: Path, copies: int) -> list[str]:
    """`copies` case folders under `root`, each linking the case's images under a new case id."""
    from BraTSMambaLib.data.case import find_case_files

    case_id, _, files = find_case_files(case_dir)
    ids = []
    for k in range(copies):
        new = f"{case_id}c{k}"
        (root / new).mkdir(parents=True)
        for mod, path in files.items():
            ext = "".join(Path(path).suffixes)
            (root / new / f"{new}_{mod}{ext}").symlink_to(Path(path).resolve())
        ids.append(new)
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default=None, help="BraTS case folder (default: a generated phantom)")
    p.add_argument("--copies", type=int, default=6, help="cases in the batch (default 6)")
    p.add_argument("--model", default="segmamba", help="registry network (random weights)")
    p.add_argument("--tiny", action="store_true", help="the network's tiny configuration (dry runs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--fast", action="store_true", help="the CLI's --fast settings (default: 8 flips, overlap 0.5)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from segment import build_package, load_input

    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model, segment_batch, segment_case

    tmp = Path(tempfile.mkdtemp(prefix="brats-batch-"))
    case_dir, _, source = load_input(args.case, tmp)
    ids = link_copies(Path(case_dir), tmp / "cases", args.copies)
    patch = (32, 32, 32) if args.tiny else (128, 128, 128)
    opts = SegmentOptions(device=args.device, fast=args.fast, overwrite=True)
    model = load_model(build_package(args.model, tmp / "pkg", patch, args.tiny), opts)
    segment_case(case_dir, model, tmp / "warm", opts)
    rows = {}
    for pipeline in (False, True):
        t0 = time.perf_counter()
        res = segment_batch(tmp / "cases", model, tmp / f"out_{pipeline}", opts, progress=False, pipeline=pipeline)
        dt = time.perf_counter() - t0
        assert res.done == sorted(ids) and not res.failed, res
        rows["pipelined" if pipeline else "sequential"] = dt / len(ids)
        print(f"{'pipelined' if pipeline else 'sequential':10s}: {dt:.2f} s for {len(ids)} cases, "
              f"{dt / len(ids):.3f} s per case (disk I/O included)", flush=True)
    print(f"pipelined / sequential throughput: {rows['sequential'] / rows['pipelined']:.2f}x "
          f"({args.model}, {model.device}, {source})")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": str(model.device), "input": source,
                                         "copies": args.copies, "s_per_case": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
