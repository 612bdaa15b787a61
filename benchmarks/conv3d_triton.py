"""Prototype: a Triton implicit-GEMM 3-D convolution (stride 1, 'same' padding, NDHWC bf16), to measure
against cuDNN on the convolutions that dominate SegMamba's inference (C = 48-96 channels at 64^3-128^3).

Output voxels (flattened n, d, h, w) are the GEMM's M, output channels its N, and (tap, input channel)
its K: for every kernel tap the program loads the input rows shifted by that tap (zero outside the
volume) and multiplies them with that tap's (C_in, C_out) weight slice. One loop over taps x channel
blocks lets Triton pipeline the loads (num_stages) behind the tensor-core dots.

    python benchmarks/conv3d_triton.py --check          # CPU: TRITON_INTERPRET=1 on tiny shapes
    python benchmarks/conv3d_triton.py                  # GPU: SegMamba's shapes at batch 8 vs cuDNN
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
import triton.language as tl


def _configs():
    cfgs = []
    for bm, bn, bk, warps, stages in [
        (128, 64, 16, 4, 4), (128, 64, 32, 4, 4), (128, 64, 64, 4, 3), (256, 64, 32, 8, 3),
        (128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (256, 128, 32, 8, 3), (64, 64, 32, 4, 4),
        (128, 64, 16, 4, 6), (256, 64, 16, 8, 4),
    ]:
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages))
    return cfgs


def _prune(configs, named_args, **kwargs):
    """Drop configs whose channel blocks are far larger than the layer's channels."""
    c, k = named_args["C"], named_args["K"]
    keep = [cfg for cfg in configs
            if cfg.kwargs["BLOCK_K"] <= max(16, triton.next_power_of_2(c))
            and cfg.kwargs["BLOCK_N"] <= max(16, triton.next_power_of_2(k))]
    return keep or configs[:1]


@triton.autotune(configs=_configs(), key=["C", "K", "D", "H", "W", "KS"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _conv3d_ndhwc_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, D, H, W, C, K,
                         KS: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    PAD: tl.constexpr = KS // 2
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    w_i = offs_m % W
    h_i = (offs_m // W) % H
    d_i = (offs_m // (W * H)) % D
    x_rows = x_ptr + offs_m.to(tl.int64) * C
    n_ok = offs_n < K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    kc = tl.cdiv(C, BLOCK_K)
    for it in range(KS * KS * KS * kc):
        t = it // kc
        c0 = (it % kc) * BLOCK_K
        kd = t // (KS * KS) - PAD
        kh = (t // KS) % KS - PAD
        kw = t % KS - PAD
        dd = d_i + kd
        hh = h_i + kh
        ww = w_i + kw
        row_ok = m_ok & (dd >= 0) & (dd < D) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        shift = ((kd * H + kh) * W + kw) * C
        cc = c0 + offs_k
        a = tl.load(x_rows[:, None] + shift + cc[None, :], mask=row_ok[:, None] & (cc < C)[None, :], other=0.0)
        b = tl.load(w_ptr + (t * C + cc)[:, None] * K + offs_n[None, :],
                    mask=(cc < C)[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + offs_m.to(tl.int64)[:, None] * K + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, k, k, k) Conv3d weight -> (k^3, C, K) contiguous, tap-major (the kernel's B operand)."""
    k_out, c_in = weight.shape[:2]
    return weight.permute(2, 3, 4, 1, 0).reshape(-1, c_in, k_out).contiguous()


def conv3d_ndhwc(x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor | None, ks: int) -> torch.Tensor:
    """Stride-1 'same' convolution of a channels_last_3d (N, C, D, H, W) tensor; returns channels_last_3d."""
    n, c, d, h, w = x.shape
    k = w_packed.shape[-1]
    xl = x.permute(0, 2, 3, 4, 1)
    if not xl.is_contiguous():
        xl = xl.contiguous()
    y = torch.empty((n, d, h, w, k), device=x.device, dtype=x.dtype)
    m = n * d * h * w
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(k, meta["BLOCK_N"]))  # noqa: E731
    _conv3d_ndhwc_kernel[grid](xl, w_packed, bias if bias is not None else w_packed, y, m, d, h, w, c, k,
                               KS=ks, HAS_BIAS=bias is not None)
    return y.permute(0, 4, 1, 2, 3)


def check() -> int:
    """Tiny shapes against torch's conv3d in float64 (run with TRITON_INTERPRET=1 on CPU)."""
    torch.manual_seed(0)
    worst = 0.0
    for (n, c, k, s, ks, bias) in [(1, 4, 8, 5, 3, True), (2, 6, 5, 4, 3, False), (1, 3, 4, 6, 1, True),
                                   (1, 20, 18, 3, 3, True)]:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        dt = torch.bfloat16 if dev == "cuda" else torch.float32
        x = torch.randn(n, c, s, s + 1, s + 2, device=dev).to(dt)
        wt = torch.randn(k, c, ks, ks, ks, device=dev).to(dt)
        b = torch.randn(k, device=dev).to(dt) if bias else None
        ref = torch.nn.functional.conv3d(x.double().cpu(), wt.double().cpu(), None if b is None else b.double().cpu(),
                                         padding=ks // 2)
        out = conv3d_ndhwc(x.contiguous(memory_format=torch.channels_last_3d), pack_weight(wt), b, ks)
        err = float((out.double().cpu() - ref).norm() / ref.norm())
        worst = max(worst, err)
        print(f"n{n} c{c} k{k} s{s} ks{ks} bias={bias}: rel err {err:.2e}")
    limit = 1e-2 if torch.cuda.is_available() else 1e-5
    print("OK" if worst < limit else "FAIL")
    return 0 if worst < limit else 1


def bench(batch: int) -> int:
    from triton.testing import do_bench

    torch.backends.cudnn.benchmark = True
    shapes = [(48, 48, 128, 3), (96, 48, 128, 3), (4, 48, 128, 3), (48, 96, 64, 3), (96, 96, 64, 3),
              (192, 96, 64, 3), (48, 48, 64, 3), (96, 96, 32, 3), (192, 192, 32, 3)]
    print("| C -> K | side | GFLOP | cuDNN NCDHW ms (TFLOP/s) | cuDNN NDHWC ms | Triton NDHWC ms (TFLOP/s) | rel err |")
    print("|---|---|---|---|---|---|---|")
    for c, k, s, ks in shapes:
        x = torch.randn(batch, c, s, s, s, device="cuda", dtype=torch.bfloat16)
        conv = torch.nn.Conv3d(c, k, ks, padding=ks // 2).cuda().to(torch.bfloat16)
        flops = 2.0 * batch * s ** 3 * k * c * ks ** 3
        with torch.inference_mode():
            t_nc = do_bench(lambda: conv(x), return_mode="median")
            x_cl = x.contiguous(memory_format=torch.channels_last_3d)
            conv_cl = torch.nn.Conv3d(c, k, ks, padding=ks // 2).cuda().to(torch.bfloat16)
            conv_cl.load_state_dict(conv.state_dict())
            conv_cl = conv_cl.to(memory_format=torch.channels_last_3d)
            t_cl = do_bench(lambda: conv_cl(x_cl), return_mode="median")
            wp = pack_weight(conv.weight)
            out = conv3d_ndhwc(x_cl, wp, conv.bias, ks)
            ref = conv(x)
            err = float((out.float() - ref.float()).norm() / ref.float().norm())
            t_tr = do_bench(lambda: conv3d_ndhwc(x_cl, wp, conv.bias, ks), return_mode="median")
        f = lambda t: f"{t:.3f} ({flops / t / 1e9:.0f})"  # noqa: E731
        print(f"| {c} -> {k} | {s} | {flops / 1e9:.0f} | {f(t_nc)} | {f(t_cl)} | {f(t_tr)} | {err:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    if a.check:
        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        sys.exit(check())
    sys.exit(bench(a.batch))
