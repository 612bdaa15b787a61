"""Benchmark: do two forward passes on two CUDA streams at once beat the same two passes one after the other?

SegMamba's forward pass mixes tensor-core convolutions with selective scans that leave most issue slots of a
GPU idle; a second pass on its own stream could fill them. Both ways run the same network (prepared as the
predictor prepares it: `forward_gpu.Runner`, default bf16 autocast, channels_last, fused norms) on
`--batch` tiles per pass, in one process, alternating, and the script prints ms per pass and the ratio.

    python3 benchmarks/concurrent_forward.py --models segmamba umambabot --batch 8
    python3 benchmarks/concurrent_forward.py --device cpu --tiny --batch 1 --repeats 1   # dry run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from forward_gpu import Runner, sync  # noqa: E402


def two_passes(runner: Runner, xs: list[torch.Tensor], streams: list | None) -> None:
    """Two forward passes, on `streams` (each waiting for the current one first) or on the current stream."""
    if streams is None:
        for x in xs:
            runner.forward(x)
        return
    current = torch.cuda.current_stream()
    for s, x in zip(streams, xs):
        s.wait_stream(current)
        with torch.cuda.stream(s):
            runner.forward(x)
    for s in streams:
        current.wait_stream(s)


def measure(runner: Runner, xs: list[torch.Tensor], streams: list | None, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        two_passes(runner, xs, streams)
    sync(device)
    return (time.perf_counter() - t0) * 1e3 / len(xs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["segmamba"])
    p.add_argument("--batch", type=int, default=8, help="tiles per forward pass (the predictor's 8)")
    p.add_argument("--variant", default="autocast_cl_fused", help="a forward_gpu.py variant")
    p.add_argument("--size", type=int, default=128, help="tile edge")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (each: sequential, then concurrent)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny configurations (dry runs)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    results = []
    for name in args.models:
        runner = Runner(name, args.size, args.tiny, device, args.variant, "default")
        g = torch.Generator(device="cpu").manual_seed(0)
        xs = [runner.prepare_input(torch.randn(args.batch, 4, *(args.size,) * 3, generator=g).to(device))
              for _ in range(2)]
        streams = [torch.cuda.Stream(device) for _ in xs] if device.type == "cuda" else None
        for _ in range(2):   # warm-up: cuDNN autotuning, kernel compiles, both ways
            measure(runner, xs, None, device)
            measure(runner, xs, streams, device)
        seq, conc = [], []
        for _ in range(args.repeats):
            seq.append(measure(runner, xs, None, device))
            conc.append(measure(runner, xs, streams, device))
        row = {"model": name, "batch": args.batch, "variant": args.variant,
               "sequential_ms_per_pass": statistics.median(seq), "two_streams_ms_per_pass": statistics.median(conc)}
        row["speedup"] = row["sequential_ms_per_pass"] / row["two_streams_ms_per_pass"]
        results.append(row)
        print(f"{name:10s} batch {args.batch}: one after the other {row['sequential_ms_per_pass']:.1f} ms per pass, "
              f"two streams at once {row['two_streams_ms_per_pass']:.1f} ms per pass ({row['speedup']:.2f}x)",
              flush=True)
        del runner, xs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
