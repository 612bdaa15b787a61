"""Triton kernels: instance normalisation of channels_last_3d (NDHWC) tensors, with the following
residual add and activation fused into the same pass.

PyTorch's instance norm views its input as (1, N*C, D, H, W) and runs batch norm, which needs NCDHW
memory: on channels_last_3d activations (the layout cuDNN's fast 3-D convolution kernels use) every
norm costs two layout copies on top of its two passes. Here the statistics are one read of x (per
(n, c) sums of x - pivot in fp32, the pivot being the first voxel's value, so a large mean does not
cancel the variance; partial sums per block of rows), one small kernel adds the partial sums up in float64
and folds mean, variance, weight and bias into a per-channel scale and shift (about twenty small torch
operations before: 2.1-2.6x faster norms below 32^3 on the H200, benchmarks/fused_kernels.py), and the normalisation,
optional residual add and ReLU/LeakyReLU are one read and one write. Input and output keep NDHWC.
This module imports triton; import it only where triton works.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

ACTS = {None: 0, "relu": 1, "leaky_relu": 2}
# Statistics pass: elements per (rows x channels) tile, programs per sample, warps per program
# (benchmarks/fused_kernels.py measures the choices: larger tiles and more or fewer programs were slower at
# 128^3 on the H200).
STATS_TILE = 2048
STATS_PROGRAMS = 512
STATS_WARPS = 8
STATS_MIN_TILES = 16          # tiles per program at least: small tensors take fewer, longer programs


@triton.jit
def _stats_kernel(x_ptr, psum_ptr, psq_ptr, S, C, ROWS_PER_PROG,
                  BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0)
    p = tl.program_id(1)
    nprog = tl.num_programs(1)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    base = x_ptr + n.to(tl.int64) * S * C
    piv = tl.load(base + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    row0 = p * ROWS_PER_PROG
    for r in range(0, ROWS_PER_PROG, BLOCK_S):
        rows = row0 + r + tl.arange(0, BLOCK_S)
        ok = (rows < S)[:, None] & c_ok[None, :]
        x = tl.load(base + rows.to(tl.int64)[:, None] * C + offs_c[None, :], mask=ok, other=0.0).to(tl.float32)
        d = tl.where(ok, x - piv[None, :], 0.0)
        acc += d
        acc2 += d * d
    out = (n * nprog + p) * C + offs_c
    tl.store(psum_ptr + out, tl.sum(acc, axis=0), mask=c_ok)
    tl.store(psq_ptr + out, tl.sum(acc2, axis=0), mask=c_ok)


@triton.jit
def _finish_kernel(x_ptr, psum_ptr, psq_ptr, w_ptr, b_ptr, eb_ptr, scale_ptr, shift_ptr, S, C, NPROG, eps,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_EB: tl.constexpr, PIVOT: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per (n, c): the partial sums (of x - pivot where PIVOT, else of x) added in float64, then
    scale = rstd * w and shift = b + extra_bias - mean * scale, so that the apply pass is one FMA per element."""
    n = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    s1 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64)
    s2 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64)
    for p0 in range(0, NPROG, BLOCK_P):
        prog = p0 + tl.arange(0, BLOCK_P)
        ok = (prog < NPROG)[:, None] & c_ok[None, :]
        at = (n * NPROG + prog)[:, None] * C + offs_c[None, :]
        s1 += tl.load(psum_ptr + at, mask=ok, other=0.0).to(tl.float64)
        s2 += tl.load(psq_ptr + at, mask=ok, other=0.0).to(tl.float64)
    m1 = tl.sum(s1, axis=0) / S
    var = tl.maximum(tl.sum(s2, axis=0) / S - m1 * m1, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    if PIVOT:
        piv = tl.load(x_ptr + n.to(tl.int64) * S * C + offs_c, mask=c_ok, other=0.0).to(tl.float64)
    else:
        piv = tl.zeros((BLOCK_C,), dtype=tl.float64)
    scale = rstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + offs_c, mask=c_ok, other=1.0).to(tl.float64)
    shift = -(piv + m1) * scale
    if HAS_B:
        shift += tl.load(b_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float64)
    if HAS_EB:
        shift += tl.load(eb_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float64)
    tl.store(scale_ptr + n * C + offs_c, scale.to(tl.float32), mask=c_ok)
    tl.store(shift_ptr + n * C + offs_c, shift.to(tl.float32), mask=c_ok)


@triton.jit
def _apply_kernel(x_ptr, scale_ptr, shift_ptr, res_ptr, y_ptr, SC, C, SLOPE,
                  ACT: tl.constexpr, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < SC
    base = n.to(tl.int64) * SC
    ch = (offs % C).to(tl.int32)
    scale = tl.load(scale_ptr + n * C + ch, mask=ok, other=0.0)
    shift = tl.load(shift_ptr + n * C + ch, mask=ok, other=0.0)
    x = tl.load(x_ptr + base + offs, mask=ok, other=0.0).to(tl.float32)
    y = x * scale + shift
    if HAS_RES:
        y += tl.load(res_ptr + base + offs, mask=ok, other=0.0).to(tl.float32)
    if ACT == 1:
        y = tl.maximum(y, 0.0)
    elif ACT == 2:
        y = tl.where(y >= 0.0, y, y * SLOPE)
    tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


def ndhwc_view(t: torch.Tensor) -> torch.Tensor:
    """(N, S, C) contiguous view of a channels_last_3d tensor (copying only if it is not one)."""
    n, c = t.shape[:2]
    flat = t.permute(0, 2, 3, 4, 1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return flat.view(n, -1, c)


def partial_sums(xs: torch.Tensor, tile: int = STATS_TILE, programs: int = STATS_PROGRAMS,
                 warps: int = STATS_WARPS, min_tiles: int = STATS_MIN_TILES) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics pass over an (N, S, C) NDHWC view: per (n, program, c) sums of x - pivot and of its
    square, in fp32 (the settings are the module's unless a benchmark tries others)."""
    n, s, c = xs.shape
    block_c = max(16, triton.next_power_of_2(c))
    block_s = max(1, tile // block_c)
    rows = max(min_tiles * block_s, triton.cdiv(triton.cdiv(s, programs), block_s) * block_s)
    nprog = triton.cdiv(s, rows)
    psum = torch.empty((n, nprog, c), device=xs.device, dtype=torch.float32)
    psq = torch.empty_like(psum)
    _stats_kernel[(n, nprog)](xs, psum, psq, s, c, rows, BLOCK_S=block_s, BLOCK_C=block_c, num_warps=warps)
    return psum, psq


def instance_norm_ndhwc(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                        act: str | None = None, slope: float = 0.01, residual: torch.Tensor | None = None,
                        extra_bias: torch.Tensor | None = None,
                        sums: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """act(instance_norm(x) * weight + bias + extra_bias + residual) for a 5-D CUDA tensor; the result
    is channels_last_3d in x's dtype. Statistics in fp32 (biased variance, as nn.InstanceNorm3d).
    `extra_bias` (per channel) is where a residual branch's convolution bias goes. `sums`: x's partial
    sums and sums of squares, each (N, parts, C) fp32, from the convolution that wrote x
    (`conv3d_kernels`), in place of the statistics pass."""
    n, c = x.shape[:2]
    xs = ndhwc_view(x)
    s = xs.shape[1]
    block_c = max(16, triton.next_power_of_2(c))
    psum, psq = partial_sums(xs) if sums is None else sums
    nprog = psum.shape[1]
    scale = torch.empty((n, c), device=x.device, dtype=torch.float32)
    shift = torch.empty_like(scale)
    _finish_kernel[(n, triton.cdiv(c, 64))](
        xs, psum, psq, xs if weight is None else weight, xs if bias is None else bias,
        xs if extra_bias is None else extra_bias, scale, shift, s, c, nprog, float(eps),
        HAS_W=weight is not None, HAS_B=bias is not None, HAS_EB=extra_bias is not None, PIVOT=sums is None,
        BLOCK_P=64, BLOCK_C=min(block_c, 64), num_warps=8)
    y = torch.empty((n, c, *x.shape[2:]), device=x.device, dtype=x.dtype, memory_format=torch.channels_last_3d)
    ys = y.permute(0, 2, 3, 4, 1).view(n, -1, c)
    res = ndhwc_view(residual.to(x.dtype)) if residual is not None else xs
    block = 4096
    _apply_kernel[(triton.cdiv(s * c, block), n)](xs, scale, shift, res, ys, s * c, c, float(slope),
                                                  ACT=ACTS[act], HAS_RES=residual is not None, BLOCK=block,
                                                  num_warps=8)
    return y


@triton.jit
def _layer_norm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, R, C, eps,
                       HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    ok = (rows < R)[:, None] & (cols < C)[None, :]
    offs = rows[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    d = tl.where(ok, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
    y = d * rstd[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=cols < C, other=1.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


def layer_norm_rows(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
                    ) -> torch.Tensor:
    """F.layer_norm over the last dimension (at most 1024 wide) of a CUDA tensor, statistics in fp32.
    PyTorch's kernel runs one narrow row per warp group and reaches a few percent of the memory
    bandwidth on the (tokens, 48) rows of SegMamba's first stage; here each program takes many rows."""
    c = x.shape[-1]
    xs = x if x.is_contiguous() else x.contiguous()
    y = torch.empty_like(xs)
    r = xs.numel() // c
    block_c = max(16, triton.next_power_of_2(c))
    block_r = max(1, 4096 // block_c)
    _layer_norm_kernel[(triton.cdiv(r, block_r),)](xs, weight if weight is not None else xs,
                                                    bias if bias is not None else xs, y, r, c, float(eps),
                                                    HAS_W=weight is not None, HAS_B=bias is not None,
                                                    BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
    return y
