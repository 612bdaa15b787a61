"""Benchmark: inference forward passes of full-size networks on a CUDA GPU, per speed option.

For each network (default SegMamba and UMambaBot, default BraTS configuration, 128^3 tiles, random
weights) and each variant below, time the forward pass under torch.inference_mode with CUDA events
(warm-up first, median of the timed runs) at batch 8, 2 (then 16, 4, 1), and print ms per tile-forward,
effective TFLOP/s (forward FLOPs of one tile from torch.utils.flop_counter, counted once) and the
predicted network time of a whole case (--tile-forwards, default 64 = 8 tiles x 8 mirror flips).
Each variant's output on the first sample is compared with the autocast NCDHW reference
(max |sigmoid difference|). The options are applied with the same helpers the predictor uses
(`inference.networks.cast_network / to_memory_format / compile_network`).

variants (name: what)
  autocast           bf16 autocast, NCDHW (the predictor before this benchmark)
  autocast_cl        bf16 autocast, model and input channels_last_3d
  bf16               weights and input cast to bf16, no autocast (U-Mamba's Mamba layer and the scan
                     parameters A_log/D stay fp32)
  bf16_cl            bf16 + channels_last_3d
  fp16_cl            fp16 autocast + channels_last_3d
  *_nobench          the same with cudnn.benchmark off (all others: on)
  *_graph            the forward captured once in a CUDA graph at a fixed batch, replayed
  *_compile          torch.compile of the whole network (--compile-mode), compile time reported
  *_compileconvs     torch.compile of the parts without Mamba layers only (scans stay eager)
  *_fused            instance norm + residual add + activation fused (nets.fused, Triton; with *_cl)
Every variant runs guarded (exception and per-variant timeout): one failure never loses the others;
a global --budget-s skips what would not fit. Progress lines are flushed as they come.

    python benchmarks/forward_gpu.py --json forward.json
    python benchmarks/forward_gpu.py --models segmamba --batches 8 --variants autocast_cl bf16_cl_compile
    python benchmarks/forward_gpu.py --device cpu --tiny --batches 1 2     # dry run of the code paths
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

BASES = {  # name -> (precision, channels_last)
    "autocast": ("bf16", False),
    "autocast_cl": ("bf16", True),
    "bf16": ("bf16-cast", False),
    "bf16_cl": ("bf16-cast", True),
    "fp16_cl": ("fp16", True),
}
SUFFIXES = ("_nobench", "_graph", "_compile", "_compileconvs", "_fused")
MAIN = ("autocast", "autocast_cl", "bf16", "bf16_cl")
#: Phases, each run for every model before the next: [(variant, batches)]. The main variants at the
#: predictor's batch (8 = 1 tile x 8 flips) and 2 first, then the extras at 8, then the other batches.
DEFAULT_PHASES = [
    [(v, [8, 2]) for v in MAIN],
    [("bf16_cl_graph", [8]), ("bf16_cl_compileconvs", [8]), ("bf16_cl_compile", [8]),
     ("autocast_cl_nobench", [8]), ("autocast_nobench", [8]), ("autocast_compile", [8])],
    [(v, [16, 4, 1]) for v in MAIN],
]


def log(msg: str) -> None:
    print(msg, flush=True)


def parse_variant(name: str) -> tuple[str, str]:
    """(base, suffix) of a variant name; ValueError for an unknown one."""
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in BASES:
            return name[: -len(suffix)], suffix
    if name in BASES:
        return name, ""
    raise ValueError(f"unknown variant {name!r}: bases {', '.join(BASES)}, optional suffix {', '.join(SUFFIXES)}")


class VariantTimeout(Exception):
    """A variant ran past its time limit."""


@contextmanager
def time_limit(seconds: float):
    """Raise VariantTimeout in the main thread after `seconds` (SIGALRM; POSIX)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise VariantTimeout(f"timed out after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, size: int, tiny: bool, device: torch.device) -> torch.nn.Module:
    from BraTSMambaLib.nets import build_model, get_spec

    torch.manual_seed(0)
    kw = dict(get_spec(name).tiny) if tiny else {}
    kw.setdefault("patch_size", (size,) * 3)
    return build_model(name, **kw).to(device).eval()


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs of one input (convolutions and matrix products; the scans are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if x.device.type == "cuda" else nullcontext()
    with torch.inference_mode(), ctx, FlopCounterMode(display=False) as fc:
        model(x[:1])
    return float(fc.get_total_flops())


class Runner:
    """A prepared network + the callable that runs one forward pass of a fixed-batch input."""

    def __init__(self, name: str, size: int, tiny: bool, device: torch.device, variant: str,
                 compile_mode: str) -> None:
        from BraTSMambaLib.inference.networks import cast_network, compile_network, to_memory_format

        self.base, self.suffix = parse_variant(variant)
        precision, self.channels_last = BASES[self.base]
        self.device = device
        self.model = build(name, size, tiny, device)
        self.autocast = None
        self.in_dtype = torch.float32
        if precision.endswith("-cast"):
            self.in_dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
            cast_network(self.model, self.in_dtype)
        elif device.type == "cuda":
            self.autocast = torch.bfloat16 if precision == "bf16" else torch.float16
        if self.channels_last:
            to_memory_format(self.model, True)
        if self.suffix == "_fused":
            from BraTSMambaLib.nets.fused import fuse_for_inference

            fuse_for_inference(self.model)
        self.compile_s = None
        if self.suffix in ("_compile", "_compileconvs"):
            compile_network(self.model, compile_mode, "whole" if self.suffix == "_compile" else "convs")
        self.graph = None

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.in_dtype)
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            y = self.model(x)
        return y[0] if isinstance(y, (list, tuple)) else y

    def make_step(self, x: torch.Tensor):
        """A no-argument callable running one forward of `x` (captured in a CUDA graph for *_graph)."""
        x = self.prepare_input(x)
        if self.suffix != "_graph":
            return lambda: self.forward(x)
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        static_x = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.forward(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = self.forward(static_x)
        self.graph = graph

        def replay() -> torch.Tensor:
            graph.replay()
            return static_y

        return replay


def time_step(step, device: torch.device, min_reps: int, target_s: float) -> tuple[float, list[float], float]:
    """(median ms, all ms, first-call s) of step(): one first call (autotuning, compiling), one more
    warm-up, then enough timed calls to fill about `target_s` (at least `min_reps`)."""
    t0 = time.perf_counter()
    step()
    sync(device)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    step()
    sync(device)
    est = time.perf_counter() - t0
    reps = max(min_reps, min(20, int(target_s / max(est, 1e-4))))
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times, first_s


def run_variant(name: str, variant: str, batches: list[int], x_all: torch.Tensor, args, flops: float | None,
                reference: dict, deadline: float) -> list[dict]:
    """Rows (one per batch) for one network and variant; errors are rows too."""
    device = x_all.device
    rows = []
    suffix = parse_variant(variant)[1]
    bench = suffix != "_nobench"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bench
    limit = args.compile_timeout_s if "compile" in suffix else args.variant_timeout_s
    limit = min(limit, deadline - time.monotonic())
    if limit < 10:
        return [{"model": name, "variant": variant, "batch": b, "skipped": "time budget spent"} for b in batches]
    t_var = time.perf_counter()
    runner = None
    try:
        with time_limit(limit):
            t0 = time.perf_counter()
            runner = Runner(name, args.size, args.tiny, device, variant, args.compile_mode)
            setup_s = time.perf_counter() - t0
            for b in batches:
                row = {"model": name, "variant": variant, "batch": b, "cudnn_benchmark": bench}
                try:
                    with torch.inference_mode():
                        step = runner.make_step(x_all[:b])
                        ms, all_ms, first_s = time_step(step, device, args.min_reps, args.target_s)
                        y = step()
                        out = torch.sigmoid(y[:1].float())
                    if reference.get("out") is not None and reference["out"].shape == out.shape:
                        row["max_abs_diff_vs_autocast"] = float((out - reference["out"]).abs().max())
                    elif variant == "autocast":
                        reference["out"] = out.clone()
                    per_tile = ms / b
                    row.update(ms=round(ms, 3), ms_per_tile=round(per_tile, 3), first_call_s=round(first_s, 2),
                               runs_ms=[round(t, 2) for t in all_ms],
                               predicted_case_network_s=round(per_tile * args.tile_forwards / 1e3, 3))
                    if flops:
                        row["tflops"] = round(flops / (per_tile / 1e3) / 1e12, 1)
                    if device.type == "cuda":
                        row["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
                    if "compile" in suffix and b == batches[0]:
                        row["compile_and_first_call_s"] = round(first_s, 1)
                    del step, y, out
                except VariantTimeout:
                    raise
                except Exception as e:  # noqa: BLE001 - one batch size failing (OOM) must not lose the rest
                    row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                    if runner is not None:
                        runner.graph = None
                rows.append(row)
                log(json.dumps(row))
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
            if rows:
                rows[0]["setup_s"] = round(setup_s, 2)
    except VariantTimeout as e:
        done = {r["batch"] for r in rows}
        for b in batches:
            if b not in done:
                row = {"model": name, "variant": variant, "batch": b, "error": f"VariantTimeout: {e}"}
                rows.append(row)
                log(json.dumps(row))
    except Exception as e:  # noqa: BLE001 - building/preparing the variant failed
        row = {"model": name, "variant": variant, "batch": batches[0],
               "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        rows.append(row)
        log(json.dumps(row))
    finally:
        del runner
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.backends.cudnn.benchmark = True
        try:
            from torch import _dynamo

            _dynamo.reset()
        except Exception:  # noqa: BLE001
            pass
    log(f"   {name} {variant}: {time.perf_counter() - t_var:.1f} s")
    return rows


def summary(rows: list[dict], tile_forwards: int) -> list[str]:
    """Markdown table: best batch per (model, variant)."""
    lines = ["| model | variant | batch | ms/forward | ms/tile | TFLOP/s | case network s "
             f"({tile_forwards} tile-fwd) | max diff vs autocast |", "|" + "---|" * 8]
    for r in rows:
        if "ms" in r:
            lines.append(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['ms']:.1f} | {r['ms_per_tile']:.2f} | "
                         f"{r.get('tflops', '')} | {r['predicted_case_network_s']:.3f} | "
                         f"{r.get('max_abs_diff_vs_autocast', '')} |")
        else:
            why = r.get("error") or r.get("skipped")
            lines.append(f"| {r['model']} | {r['variant']} | {r['batch']} | {why} | | | | |")
    return lines


def write_json(path: str | None, env: dict, info: dict, rows: list[dict], best: dict | None = None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"env": env, "models": info, "rows": rows, "best": best}, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["segmamba", "umambabot"])
    p.add_argument("--batches", nargs="+", type=int, default=None,
                   help="batch sizes of the main variants (default: 8 2 first, the extras at 8, then 16 4 1)")
    p.add_argument("--max-batch", type=int, default=64, help="cap every batch size (small GPUs, CPU dry runs)")
    p.add_argument("--variants", nargs="+", default=None,
                   help="variant names (default: all phases of DEFAULT_PHASES); graph/compile variants run at "
                        "the largest of --batches")
    p.add_argument("--size", type=int, default=128, help="tile side (default 128)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="the registry's tiny configurations (CPU dry runs)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode: default, max-autotune-no-cudagraphs, max-autotune, reduce-overhead")
    p.add_argument("--tile-forwards", type=int, default=64, help="tile-forwards per case (8 tiles x 8 flips)")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--target-s", type=float, default=1.0, help="timed seconds per measurement (adaptive reps)")
    p.add_argument("--variant-timeout-s", type=float, default=75.0)
    p.add_argument("--compile-timeout-s", type=float, default=100.0)
    p.add_argument("--budget-s", type=float, default=280.0, help="whole run; variants that would not fit are skipped")
    p.add_argument("--json", default=None, help="write all rows and the environment to this file")
    args = p.parse_args(argv)
    args.batches_given = args.batches is not None
    args.batches = args.batches or [8, 2]
    deadline = time.monotonic() + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log("forward_gpu.py: no CUDA device here (use --device cpu --tiny for a dry run)")
        return 1
    if args.variants:
        for v in args.variants:
            parse_variant(v)
        phases = [[(v, list(args.batches) if parse_variant(v)[1] in ("", "_nobench") else [max(args.batches)])
                   for v in args.variants]]
    elif args.batches_given:
        phases = [[(v, list(b if v not in MAIN else args.batches)) for v, b in ph] for ph in DEFAULT_PHASES[:2]]
    else:
        phases = DEFAULT_PHASES
    phases = [[(v, list(dict.fromkeys(min(b, args.max_batch) for b in bs))) for v, bs in ph] for ph in phases]
    big = max(b for ph in phases for _, bs in ph for b in bs)
    from BraTSMambaLib.ssm import resolve_backend

    try:
        backend = resolve_backend("auto", device)
    except Exception as e:  # noqa: BLE001 - reported; the Mamba models then fail per variant
        backend = f"unavailable: {e}"
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "scan_backend": backend, "size": args.size, "tiny": args.tiny,
           "compile_mode": args.compile_mode, "tile_forwards": args.tile_forwards}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    log(f"# forward_gpu: {json.dumps(env)}")
    from BraTSMambaLib.nets import get_spec

    rows: list[dict] = []
    info: dict = {}
    inputs: dict = {}
    references: dict = {}
    for name in args.models:
        size = get_spec(name).tiny.get("patch_size", (args.size,) * 3)[0] if args.tiny else args.size
        gen = torch.Generator().manual_seed(0)
        inputs[name] = torch.randn(big, get_spec(name).in_channels, size, size, size, generator=gen)
        references[name] = {}
        info[name] = {}
        try:
            with time_limit(min(60.0, max(1.0, deadline - time.monotonic()))):
                model = build(name, args.size, args.tiny, device)
                info[name]["params"] = sum(p.numel() for p in model.parameters())
                flops = count_flops(model, inputs[name][:1].to(device))
                del model
            info[name]["gflops_per_tile"] = round(flops / 1e9, 1)
            log(f"## {name}: {info[name]['params']:,} parameters, {flops / 1e9:,.0f} GFLOP per {size}^3 tile-forward")
        except Exception as e:  # noqa: BLE001
            info[name]["flops_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            log(f"## {name}: FLOP count failed: {info[name]['flops_error']}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for phase in phases:
        for name in args.models:
            flops = info[name].get("gflops_per_tile", 0) * 1e9 or None
            for variant, batches in phase:
                x_all = inputs[name][:max(batches)].to(device)
                rows += run_variant(name, variant, batches, x_all, args, flops, references[name], deadline)
                del x_all
                write_json(args.json, env, info, rows)  # after every variant: a killed run keeps its rows
    log("\n".join(summary(rows, args.tile_forwards)))
    best = {}
    for r in rows:
        if "ms_per_tile" in r and (r["model"] not in best or r["ms_per_tile"] < best[r["model"]]["ms_per_tile"]):
            best[r["model"]] = r
    for name, r in best.items():
        log(f"best {name}: {r['variant']} batch {r['batch']}: {r['ms_per_tile']:.2f} ms/tile, "
            f"{r['predicted_case_network_s']:.3f} s per case ({args.tile_forwards} tile-forwards)")
    write_json(args.json, env, info, rows, {k: v["variant"] for k, v in best.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
