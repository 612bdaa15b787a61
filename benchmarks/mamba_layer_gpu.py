"""GPU benchmark of SegMamba's tri-orientated Mamba layer around its scans: the previous implementation
against the current one, and the causal conv1d + SiLU alone (nn.Conv1d formula against the Triton kernel).

    python benchmarks/mamba_layer_gpu.py                       # stages 0 and 1 at batch 8, bf16 autocast
    python benchmarks/mamba_layer_gpu.py --json layer.json --backend triton
    python benchmarks/mamba_layer_gpu.py --device cpu --tiny   # dry run of the script (tiny shapes)

Layer rows (torch.inference_mode, autocast bf16 unless --precision cast): "previous" is the forward as it
was before the ssm.ops kernels (transcribed below: transposed x_proj input, (E, b, L) delta, flipped and
re-ordered copies of xz and of the outputs, each scan gated); "current, torch ops" is the current layer
with BRATSMAMBA_LAYER_KERNELS=torch (layout changes only); "current" uses the Triton kernels. Conv rows:
x is the first half of xz (b, 2E, L) as in the layer; the previous formula flips / re-orders x first where
the order needs it. Times are medians over CUDA events; GB/s counts one read of x and one write of y.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envvars import set_env  # noqa: E402

from BraTSMambaLib.ssm import TriOrientedMamba, selective_scan  # noqa: E402
from BraTSMambaLib.ssm.ops import causal_conv1d_silu, to_order  # noqa: E402
from BraTSMambaLib.ssm.ops.dispatch import ENV_VAR, triton_status  # noqa: E402
from BraTSMambaLib.ssm.ops.streams import ENV_VAR as STREAMS_ENV  # noqa: E402
from BraTSMambaLib.ssm.selective_scan import ENV_VAR as SCAN_ENV  # noqa: E402

#: SegMamba's stages 0 and 1 at a 128^3 patch: (name, tokens L, d_model, nslices)
STAGES = [("stage0", 64 ** 3, 48, 64), ("stage1", 32 ** 3, 96, 32)]
TINY = [("tiny0", 16 ** 3, 48, 16), ("tiny1", 8 ** 3, 96, 8)]


def previous_branch(m: TriOrientedMamba, xz: torch.Tensor, s: str) -> torch.Tensor:
    """The previous `ssm_branch` (before ssm.ops), verbatim in its arithmetic and copies."""
    conv1d, x_proj, dt_proj = getattr(m, f"conv1d{s}"), getattr(m, f"x_proj{s}"), getattr(m, f"dt_proj{s}")
    A_log, D = getattr(m, f"A{s}_log"), getattr(m, f"D{s}")
    x, z = xz.chunk(2, dim=1)
    b, E, L = x.shape
    R, N = dt_proj.weight.shape[1], A_log.shape[1]
    x = F.silu(conv1d(x)[..., :L])
    x_dbl = F.linear(x.transpose(1, 2).reshape(b * L, E), x_proj.weight, x_proj.bias)
    dt, Bm, Cm = torch.split(x_dbl, [R, N, N], dim=-1)
    dt = (dt_proj.weight @ dt.t()).view(E, b, L).transpose(0, 1)
    Bm = Bm.view(b, L, N).transpose(1, 2).contiguous()
    Cm = Cm.view(b, L, N).transpose(1, 2).contiguous()
    return selective_scan(x, dt, -torch.exp(A_log.float()), Bm, Cm, D.float(), z=z,
                          delta_bias=dt_proj.bias.float(), delta_softplus=True, backend=m.scan_backend)


def previous_forward(m: TriOrientedMamba, h: torch.Tensor) -> torch.Tensor:
    """The previous TriOrientedMamba.forward."""
    ns = m.nslices
    b, L, d = h.shape
    xz = (m.in_proj.weight @ h.reshape(b * L, d).t()).view(-1, b, L).transpose(0, 1)
    out = previous_branch(m, xz, "")
    out_b = previous_branch(m, xz.flip([-1]), "_b").flip([-1])
    xz_s = xz.view(b, -1, ns, L // ns).transpose(-1, -2).reshape(b, -1, L)
    out_s = previous_branch(m, xz_s, "_s").view(b, -1, L // ns, ns).transpose(-1, -2).reshape(b, -1, L)
    return F.linear((out + out_b + out_s).transpose(1, 2), m.out_proj.weight, m.out_proj.bias)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, reps: int) -> tuple[float, float | None]:
    """(median ms, peak MiB allocated above the start; None off CUDA) of fn() after two warm-up calls."""
    fn()
    fn()
    sync(device)
    times = []
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        peak = None
    return statistics.median(times), peak


def bench_stage(name: str, L: int, d: int, ns: int, args, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    m = TriOrientedMamba(d, nslices=ns, scan_backend=args.backend).to(device).eval()
    dtype = torch.bfloat16
    if args.precision == "cast":
        m = m.to(dtype)
    h = torch.randn(args.batch, L, d, device=device, dtype=dtype if args.precision == "cast" else torch.float32)
    amp = torch.autocast(device.type, dtype=dtype, enabled=args.precision == "autocast")
    rows = []

    def add(kind, label, fn, nbytes=None):
        try:
            with torch.inference_mode(), amp:
                ms, peak = time_ms(fn, device, args.reps)
        except Exception as e:  # noqa: BLE001 - one failing row never loses the others
            print(f"  {name} {label}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            return
        row = {"stage": name, "kind": kind, "what": label, "ms": ms, "peak_MiB": peak,
               "GB/s": nbytes / ms / 1e6 if nbytes else None}
        rows.append(row)
        print(f"  {name:7s} {kind:5s} {label:38s} {ms:9.3f} ms", flush=True)

    with torch.inference_mode(), amp:
        ref = previous_forward(m, h).float()
        with set_env({ENV_VAR: "torch"}):
            off = m(h).float()
        new = m(h).float()
    for label, y in (("current, torch ops", off), ("current", new)):
        err = float((y - ref).norm() / ref.norm())
        print(f"  {name} {label}: relative difference to previous {err:.2e}", flush=True)
    del ref, off, new

    add("layer", "previous", lambda: previous_forward(m, h))
    with set_env({ENV_VAR: "torch"}):
        add("layer", "current, torch ops", lambda: m(h))
    add("layer", "current", lambda: m(h))
    for backend in args.scan_backends:
        for streams in ("1", "0"):
            with set_env({SCAN_ENV: backend, STREAMS_ENV: streams}):
                add("layer", f"current, {backend} scan, streams {'on' if streams == '1' else 'off'}", lambda: m(h))

    E = m.d_inner
    xz = torch.randn(args.batch, 2 * E, L, device=device, dtype=dtype)
    x = xz[:, :E]
    conv = m.conv1d
    nbytes = 2 * x.numel() * x.element_size()
    for order in ("forward", "reverse", "slices"):
        nsl = ns if order == "slices" else None
        add("conv", f"{order}: nn.Conv1d + silu (previous)",
            lambda o=order, n=nsl: F.silu(conv(to_order(x, o, n))[..., :L]), nbytes)
        add("conv", f"{order}: causal_conv1d_silu",
            lambda o=order, n=nsl: causal_conv1d_silu(x, conv, order=o, nslices=n), nbytes)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cuda", help="torch device (default cuda; cpu for a dry run)")
    p.add_argument("--batch", type=int, default=8, help="tiles per forward (default 8)")
    p.add_argument("--stages", default="0,1", help="comma-separated stage indices (default 0,1)")
    p.add_argument("--backend", default="auto", help="scan backend: auto, cuda, mamba_ssm, triton, torch")
    p.add_argument("--scan-backends", nargs="*", default=[], metavar="NAME",
                   help="extra layer rows: the current layer with each of these scan backends, with the three "
                        "scans on side streams and without (BRATSMAMBA_LAYER_STREAMS)")
    p.add_argument("--precision", choices=("autocast", "cast"), default="autocast",
                   help="bf16 autocast over fp32 weights (the predictor's default) or bf16-cast weights")
    p.add_argument("--reps", type=int, default=10, help="timed calls per row (default 10)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (dry run)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.tiny:
        args.batch = min(args.batch, 2)
    stages = TINY if args.tiny else STAGES
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", layer kernels: {triton_status(device)[1]}, batch {args.batch}, {args.precision} bf16", flush=True)
    rows = []
    for i in (int(s) for s in args.stages.split(",")):
        name, L, d, ns = stages[i]
        rows += bench_stage(name, L, d, ns, args, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{'stage':7s} {'kind':5s} {'what':38s} {'ms':>9s} {'peak MiB':>9s} {'GB/s':>7s}")
    for r in rows:
        gbs = f"{r['GB/s']:7.0f}" if r["GB/s"] else " " * 7
        peak = f"{r['peak_MiB']:9.0f}" if r["peak_MiB"] is not None else " " * 9
        print(f"{r['stage']:7s} {r['kind']:5s} {r['what']:38s} {r['ms']:9.3f} {peak} {gbs}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
