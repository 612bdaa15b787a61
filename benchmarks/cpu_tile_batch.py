"""CPU: seconds per tile and peak memory of one forward pass at several batch sizes (network inputs per pass).

Why the CPU default of `--tiles-per-forward` is 1: oneDNN already spreads one input over every core, so a
batch is no faster per input, and the activations grow with it. Each batch size runs in a fresh process
(peak resident memory is not hidden by an earlier run), one after the other, with the same weights and input.

    python benchmarks/cpu_tile_batch.py --model segmamba --size 128 --batches 1 2 [--bf16]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(name: str, size: int, batch: int, bf16: bool) -> dict:
    import torch

    from BraTSMambaLib.nets import build_model

    torch.manual_seed(0)
    model = build_model(name, patch_size=(size,) * 3).eval()
    x = torch.randn(batch, 4, size, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        t = time.perf_counter()
        model(x)
        seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6   # kB on Linux -> GB
    return {"batch": batch, "s_per_input": round(seconds / batch, 2), "peak_gb": round(peak, 2),
            "model_and_input_gb": round(base, 2), "threads": torch.get_num_threads()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="segmamba")
    p.add_argument("--size", type=int, default=128, help="tile edge (voxels)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (as --fast on a CPU with native bf16)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.model, args.size, args.child, args.bf16)))
        return 0
    print(f"{args.model}, {args.size}^3 tiles, {'bf16' if args.bf16 else 'fp32'}, one forward pass each")
    for b in args.batches:
        cmd = [sys.executable, __file__, "--model", args.model, "--size", str(args.size), "--child", str(b)]
        out = subprocess.run(cmd + (["--bf16"] if args.bf16 else []), capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  batch {b}: {r['s_per_input']} s per input, peak {r['peak_gb']} GB "
              f"(model and input {r['model_and_input_gb']} GB, {r['threads']} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
