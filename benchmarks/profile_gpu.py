"""Benchmark: where a network's inference forward pass spends its GPU time, and what each convolution
could run at.

Three parts, each guarded (one failing never loses the others):
  profile   torch.profiler over `--reps` forward passes at `--batch` per variant (forward_gpu.py's
            variants: bf16, bf16_cl, bf16_cl_compileconvs, ...): GPU time per aten operator (with input
            shapes), per kernel category (convolution, transposed convolution, normalisation, scan,
            element-wise, copies/layout, GEMM), and per module type from CUDA events around every leaf
            module.
  convs     every distinct Conv3d / ConvTranspose3d call of the network, alone, at the same batch in
            bf16: cuDNN in NCDHW and in NDHWC (channels_last_3d), TFLOP/s each; a k2 s2 transposed
            convolution also as one GEMM plus a pixel shuffle (the same arithmetic, cuBLAS instead of
            cuDNN's data-gradient kernels).
  The tables print last; everything also goes to --json.

    python benchmarks/profile_gpu.py --json profile.json
    python benchmarks/profile_gpu.py --model umambabot --variants bf16 --parts profile
    python benchmarks/profile_gpu.py --device cpu --tiny --batch 1 --size 32     # dry run
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from forward_gpu import Runner, log, sync, time_step  # noqa: E402

#: Kernel-name patterns -> category (first match wins; names from cuDNN 9, cuBLAS, ATen, Triton, Inductor).
CATEGORIES = [
    ("scan", r"selective|scan|_fwd_kernel|chunk_state|chunk_scan"),
    ("conv transpose (dgrad)", r"dgrad|convolve_dgrad|transpose"),
    ("conv", r"conv|xmma|implicit|fprop|wgrad|sm90_xmma|cudnn|nhwc|ndhwc"),
    ("gemm", r"gemm|cutlass|sm90_|ampere_|Kernel2|matmul|mm_"),
    ("norm", r"norm|welford|batch_norm|moments|rstd|layer_norm"),
    ("copy/layout", r"copy|transpose|permute|cat|flip|contiguous|nchwToNhwc|nhwcToNchw|CatArray"),
    ("element-wise", r"elementwise|vectorized|unrolled|triton_poi|triton_per|triton_red|reduce|activation"),
]


def categorise(name: str) -> str:
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, low):
            return cat
    return "other"


def device_time(evt) -> float:
    """Self device time (us) of a profiler event or aggregate, across torch versions."""
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(evt, attr, None)
        if v is not None:
            return float(v)
    return 0.0


def leaf_module_timer(model: torch.nn.Module):
    """Forward hooks recording CUDA events around every leaf module and every Mamba layer; returns
    (handles, records) with records[(type, input shape)] = list of (start, end) event pairs."""
    from BraTSMambaLib.ssm.modules.mamba import Mamba

    records: dict[tuple[str, str], list] = defaultdict(list)
    handles = []
    for mod in model.modules():
        if isinstance(mod, Mamba) or not any(True for _ in mod.children()):
            def pre(m, args, _name=type(mod).__name__):
                x = args[0] if args else None
                shape = "x".join(map(str, x.shape)) if isinstance(x, torch.Tensor) else "?"
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                m._prof_start = (ev, (_name, shape))

            def post(m, args, out):
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                start, key = m._prof_start
                records[key].append((start, ev))

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return handles, records


def profile_variant(args, variant: str, x: torch.Tensor) -> dict:
    """Profiler and per-module tables of one variant."""
    from torch.profiler import ProfilerActivity, profile

    runner = Runner(args.model, args.size, args.tiny, x.device, variant, "default")
    with torch.inference_mode():   # as the predictor runs it (forward-only scan backends need it)
        step = runner.make_step(x)
        ms, _, first_s = time_step(step, x.device, 3, 1.0)
    result = {"variant": variant, "batch": x.shape[0], "ms_per_forward": round(ms, 2),
              "ms_per_tile": round(ms / x.shape[0], 3), "first_call_s": round(first_s, 1)}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    with torch.inference_mode(), profile(activities=acts, record_shapes=True) as prof:
        for _ in range(args.reps):
            step()
        sync(x.device)
    ops = []
    for e in prof.key_averages(group_by_input_shape=True):
        t = device_time(e)
        if t > 0:
            ops.append({"op": e.key, "shapes": str(e.input_shapes)[:160], "count": e.count // args.reps,
                        "ms": round(t / 1e3 / args.reps, 3)})
    ops.sort(key=lambda r: -r["ms"])
    kernels: dict[str, float] = defaultdict(float)
    cats: dict[str, float] = defaultdict(float)
    for e in prof.events():
        if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA"):
            t = device_time(e) or float(getattr(e, "device_time", 0.0) or 0.0)
            kernels[e.name] += t
            cats[categorise(e.name)] += t
    total = sum(cats.values()) or 1.0
    result["kernel_ms_per_forward"] = round(total / 1e3 / args.reps, 2)
    result["categories"] = {k: {"ms": round(v / 1e3 / args.reps, 2), "share": round(v / total, 3)}
                            for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}
    result["top_kernels"] = [{"kernel": k[:140], "category": categorise(k), "ms": round(v / 1e3 / args.reps, 3)}
                             for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:40]]
    result["top_ops"] = ops[:60]
    if x.device.type == "cuda" and "compile" not in variant:  # hooks inside compiled regions would recompile
        handles, records = leaf_module_timer(runner.model)
        try:
            with torch.inference_mode():
                step()
                sync(x.device)
                records.clear()
                step()
                sync(x.device)
        finally:
            for h in handles:
                h.remove()
        per_type: dict[str, float] = defaultdict(float)
        per_key = []
        for (name, shape), pairs in records.items():
            t = sum(s.elapsed_time(e) for s, e in pairs)
            per_type[name] += t
            per_key.append({"module": name, "input": shape, "calls": len(pairs), "ms": round(t, 3)})
        result["modules_ms"] = {k: round(v, 2) for k, v in sorted(per_type.items(), key=lambda kv: -kv[1])}
        result["module_calls"] = sorted(per_key, key=lambda r: -r["ms"])[:40]
    del runner, step
    return result


def conv_calls(args, device: torch.device) -> list[tuple[torch.nn.Module, tuple[int, ...]]]:
    """(module, input shape at batch 1) for every distinct Conv3d / ConvTranspose3d call of the network."""
    from forward_gpu import build

    model = build(args.model, args.size, args.tiny, device)
    seen, calls = set(), []

    def hook(m, inputs, _out):
        shape = tuple(inputs[0].shape[1:])
        key = (type(m).__name__, tuple(m.weight.shape), m.stride, m.padding, shape)
        if key not in seen:
            seen.add(key)
            calls.append((m, shape))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.inference_mode():
        model(torch.randn(1, 4, *(args.size,) * 3, device=device))
    for h in handles:
        h.remove()
    return calls


def conv_flops(m: torch.nn.Module, out: torch.Tensor) -> float:
    k = m.weight.shape
    if isinstance(m, torch.nn.ConvTranspose3d):  # weight (Cin, Cout, k...): each input voxel -> k^3 outputs
        return 2.0 * k[0] * k[1] * k[2] * k[3] * k[4] * out.numel() / (k[1] * m.stride[0] * m.stride[1] * m.stride[2])
    return 2.0 * out.numel() * k[1] * k[2] * k[3] * k[4]


def transpose_as_gemm(m: torch.nn.ConvTranspose3d):
    """k2 s2 ConvTranspose3d as GEMM + pixel shuffle on NDHWC input (same arithmetic, exact)."""
    cin, cout = m.weight.shape[:2]
    w = m.weight.permute(0, 2, 3, 4, 1).reshape(cin, 8 * cout).contiguous()  # (Cin, kd*kh*kw*Cout)
    bias = m.bias

    def run(x: torch.Tensor) -> torch.Tensor:
        n, _, d, h, wd = x.shape
        y = x.permute(0, 2, 3, 4, 1).reshape(-1, cin) @ w               # NDHWC input: a view, no copy
        y = y.view(n, d, h, wd, 2, 2, 2, cout).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(n, 2 * d, 2 * h, 2 * wd, cout)
        if bias is not None:
            y = y + bias
        return y.permute(0, 4, 1, 2, 3)                                   # NCDHW view of NDHWC memory
    return run


def bench_convs(args, device: torch.device) -> list[dict]:
    rows = []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for m, shape in conv_calls(args, device):
        if args.conv_max_cin and m.weight.shape[1 if isinstance(m, torch.nn.Conv3d) else 0] > args.conv_max_cin:
            continue
        m = m.to(dtype)
        x = torch.randn(args.batch, *shape, device=device, dtype=dtype)
        row = {"module": type(m).__name__, "weight": list(m.weight.shape), "stride": list(m.stride),
               "input": [args.batch, *shape]}
        with torch.inference_mode():
            ref = m(x)
            flops = conv_flops(m, ref)
            row["gflop"] = round(flops / 1e9, 1)
            variants = {"ncdhw": (m, x)}
            m_cl = type(m).__new__(type(m))
            m_cl.__dict__ = dict(m.__dict__)
            m_cl = m_cl.to(memory_format=torch.channels_last_3d)
            variants["ndhwc"] = (m_cl, x.contiguous(memory_format=torch.channels_last_3d))
            if isinstance(m, torch.nn.Conv3d) and m.weight.shape[1] < 8:   # few input channels: zero-pad to 8
                m8 = torch.nn.Conv3d(8, m.out_channels, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)
                m8 = m8.to(device=device, dtype=dtype, memory_format=torch.channels_last_3d)
                with torch.no_grad():
                    m8.weight.zero_()
                    m8.weight[:, : m.weight.shape[1]] = m.weight
                    if m.bias is not None:
                        m8.bias.copy_(m.bias)
                x8 = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 0, 0, 8 - x.shape[1]))
                variants["ndhwc pad8"] = (m8, x8.contiguous(memory_format=torch.channels_last_3d))
            if isinstance(m, torch.nn.ConvTranspose3d) and tuple(m.stride) == (2, 2, 2) and m.kernel_size == (2, 2, 2):
                variants["gemm+shuffle"] = (transpose_as_gemm(m), variants["ndhwc"][1])
            for name, (fn, inp) in variants.items():
                try:
                    out = fn(inp)
                    err = float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
                    ms, _, _ = time_step(lambda: fn(inp), device, 5, 0.3)
                    row[name] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1), "rel_err": round(err, 5)}
                except Exception as e:  # noqa: BLE001 - one variant failing must not lose the rest
                    row[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
        rows.append(row)
        log(json.dumps(row))
        del x, ref
    return rows


def print_tables(results: dict) -> None:
    for prof in results.get("profile", []):
        if "error" in prof:
            log(f"\n## {prof['variant']}: {prof['error']}")
            continue
        log(f"\n## {prof['variant']} batch {prof['batch']}: {prof['ms_per_forward']} ms/forward "
            f"({prof['ms_per_tile']} ms/tile), kernels {prof['kernel_ms_per_forward']} ms")
        for k, v in prof["categories"].items():
            log(f"  {k:28s} {v['ms']:9.2f} ms  {100 * v['share']:5.1f} %")
        for k, v in list(prof.get("modules_ms", {}).items())[:14]:
            log(f"  module {k:24s} {v:9.2f} ms")
        for r in prof["top_kernels"][:12]:
            log(f"  {r['ms']:8.3f} ms  [{r['category']}] {r['kernel'][:100]}")
    if results.get("convs"):
        log("\n| conv | weight | input | GFLOP | NCDHW ms (TFLOP/s) | NDHWC ms (TFLOP/s) | GEMM+shuffle ms (TFLOP/s) "
            "| NDHWC, C_in padded to 8 |")
        log("|---|---|---|---|---|---|---|---|")
        for r in results["convs"]:
            def cell(k):
                v = r.get(k)
                if not v:
                    return ""
                return v.get("error", "")[:40] or f"{v['ms']} ({v['tflops']})"
            log(f"| {r['module']} s{r['stride'][0]} | {r['weight']} | {r['input']} | {r['gflop']} | {cell('ncdhw')} "
                f"| {cell('ndhwc')} | {cell('gemm+shuffle')} | {cell('ndhwc pad8')} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="segmamba")
    p.add_argument("--variants", nargs="+", default=["bf16", "bf16_cl", "bf16_cl_compileconvs"])
    p.add_argument("--parts", nargs="+", default=["profile", "convs"], choices=["profile", "convs"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--reps", type=int, default=2, help="profiled forward passes per variant")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="the registry's tiny configuration (dry runs)")
    p.add_argument("--conv-max-cin", type=int, default=0, help="convs part: only layers with at most this many "
                   "input channels (0: all)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    x = torch.randn(args.batch, 4, *(args.size,) * 3, device=device)
    results: dict = {"model": args.model, "batch": args.batch, "size": args.size, "torch": torch.__version__,
                     "cudnn": torch.backends.cudnn.version(), "profile": [], "convs": []}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    if "profile" in args.parts:
        for v in args.variants:
            t0 = time.perf_counter()
            try:
                results["profile"].append(profile_variant(args, v, x))
            except Exception as e:  # noqa: BLE001 - a variant failing must not lose the others
                results["profile"].append({"variant": v, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]})
            log(f"   profile {v}: {time.perf_counter() - t0:.1f} s")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            try:
                torch._dynamo.reset()
            except Exception as e:  # noqa: BLE001
                log(f"   dynamo reset failed: {e}")
    if "convs" in args.parts:
        try:
            results["convs"] = bench_convs(args, device)
        except Exception as e:  # noqa: BLE001
            results["convs_error"] = f"{type(e).__name__}: {e}"
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    print_tables(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
