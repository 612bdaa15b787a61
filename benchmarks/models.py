"""Benchmark every registered network on a CUDA GPU at batch 2 x 4 x 128^3.

Per model (and, for Mamba models, per selective-scan backend): parameters, forward GFLOPs
(torch.utils.flop_counter: convolutions and matmuls; the selective scan itself is not counted,
see docs/models/vmunet3d.md for its cost), forward time (eval, inference mode) and
forward+backward time (train mode, mean of squared logits as loss), both under bf16 autocast,
and peak CUDA memory of each. Times are the median of --repeat runs after one warm-up, measured
with CUDA events. Results print as a Markdown table and go to --out as JSON.

    python benchmarks/models.py [--models segmamba umambabot ...] [--backends mamba_ssm triton]
                                [--batch 2] [--size 128] [--repeat 3] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from BraTSMambaLib.nets import build_model, get_spec, list_models  # noqa: E402
from BraTSMambaLib.ssm import ENV_VAR, backend_status  # noqa: E402


def _time(fn, repeat: int) -> tuple[float, float]:
    """(median ms, peak MiB) of fn() after one warm-up."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**20


def bench(name: str, backend: str | None, batch: int, size: int, repeat: int, flops: bool) -> dict:
    row = {"model": name, "backend": backend or "-", "batch": batch, "size": size}
    if backend:
        os.environ[ENV_VAR] = backend
    else:
        os.environ.pop(ENV_VAR, None)
    torch.manual_seed(0)
    model = build_model(name, patch_size=(size,) * 3).cuda()
    row["params"] = sum(p.numel() for p in model.parameters())
    x = torch.randn(batch, get_spec(name).in_channels, size, size, size, device="cuda")

    model.eval()
    if flops:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16), \
                FlopCounterMode(display=False) as fc:
            model(x)
        row["fwd_gflops"] = fc.get_total_flops() / 1e9

    def fwd():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(x)

    row["fwd_ms"], row["fwd_peak_mib"] = _time(fwd, repeat)

    model.train()

    def fwd_bwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    row["fwd_bwd_ms"], row["fwd_bwd_peak_mib"] = _time(fwd_bwd, repeat)
    return row


def markdown(rows: list[dict]) -> str:
    head = "| model | scan backend | params | fwd GFLOPs | fwd ms | fwd peak MiB | fwd+bwd ms | fwd+bwd peak MiB |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['backend']} | | | error: {r['error']} | | | |")
            continue
        gf = f"{r['fwd_gflops']:,.0f}" if "fwd_gflops" in r else ""
        lines.append(f"| {r['model']} | {r['backend']} | {r['params']:,} | {gf} | {r['fwd_ms']:.1f} | "
                     f"{r['fwd_peak_mib']:,.0f} | {r['fwd_bwd_ms']:.1f} | {r['fwd_bwd_peak_mib']:,.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=None, help="registry names (default: all)")
    ap.add_argument("--backends", nargs="*", default=["mamba_ssm", "triton"],
                    help="scan backends to try for Mamba models (unavailable ones are reported and skipped)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/models.py needs a CUDA GPU", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    rows = []
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch} x 4 x {args.size}^3, "
          f"bf16 autocast", flush=True)
    for name in args.models or list_models():
        backends = [None]
        if get_spec(name).uses_mamba:
            backends = []
            for b in args.backends:
                ok, why = backend_status(b, "cuda")
                if ok:
                    backends.append(b)
                else:
                    rows.append({"model": name, "backend": b, "error": f"unavailable: {why}"})
        for i, b in enumerate(backends):
            t0 = time.time()
            try:
                row = bench(name, b, args.batch, args.size, args.repeat, flops=(i == 0))
            except Exception as e:  # one model failing (OOM, kernel error) must not stop the others
                row = {"model": name, "backend": b or "-", "error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
                torch.cuda.empty_cache()
            torch.cuda.empty_cache()
            row["wall_s"] = round(time.time() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(markdown(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
