"""Triton kernels of the Mamba layer's memory-bound steps (forward only, fp32 arithmetic).

* ``conv_silu_seq``: causal depthwise conv1d (+ bias, + SiLU) of a (batch, E, L) input read in token order
  or reversed; one program per (block of positions, channel, batch).
* ``conv_silu_slices``: the same conv of the inter-slice ordering of SegMamba's tri-orientated layer: the
  sequence of L = ns * S tokens (ns slices of S tokens) read as position j of every slice, then j + 1, ...
  (reordered position p = j * ns + k holds token k * S + j). A program covers BJ positions j of all ns
  slices, so reads run along j and writes along k; triton's coalescing pass gives each its own layout.
* ``gate_sum``: silu(z) * (forward + reversed(backward) + from-slices(inter-slice)): the three scans of the
  tri-orientated layer summed in token order and gated once.

Every input is addressed by (batch, channel) strides with a contiguous last dimension, so channel slices of
larger tensors are read in place. This module imports triton; import it only where triton works.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _silu(x):
    return x / (1.0 + tl.exp(-x))


@triton.jit
def conv_silu_seq(x_ptr, w_ptr, b_ptr, out_ptr, L, sx_b, sx_e, sw_e, sw_k, so_b, so_e,
                  K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
                  BLOCK: tl.constexpr):
    """out[b, e, t] = act(bias[e] + sum_k w[e, k] x'[b, e, t - (K-1) + k]), x' = x or x reversed along L,
    zero before the start."""
    pid_l = tl.program_id(0)
    e = tl.program_id(1).to(tl.int64)
    bi = tl.program_id(2).to(tl.int64)
    t = pid_l * BLOCK + tl.arange(0, BLOCK)
    inside = t < L
    row = x_ptr + bi * sx_b + e * sx_e
    acc = tl.zeros((BLOCK,), tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + e).to(tl.float32)
    for k in tl.static_range(K):
        src = t - (K - 1 - k)
        if REVERSE:
            pos = L - 1 - src
        else:
            pos = src
        w = tl.load(w_ptr + e * sw_e + k * sw_k).to(tl.float32)
        acc += w * tl.load(row + pos, mask=inside & (src >= 0), other=0.0).to(tl.float32)
    if SILU:
        acc = _silu(acc)
    tl.store(out_ptr + bi * so_b + e * so_e + t, acc.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _slice_tile(NS, S, NSP: tl.constexpr, BJ: tl.constexpr):
    """This program's channel e, batch bi and (NSP, BJ) tile of slice index k x position-in-slice j
    (grid: position blocks, channels, batch), with the mask of the tile's tokens inside the sequence."""
    e = tl.program_id(1).to(tl.int64)
    bi = tl.program_id(2).to(tl.int64)
    k = tl.arange(0, NSP)[:, None]
    j = tl.program_id(0) * BJ + tl.arange(0, BJ)[None, :]
    return e, bi, k, j, (k < NS) & (j < S)


@triton.jit
def conv_silu_slices(x_ptr, w_ptr, b_ptr, out_ptr, NS, S, sx_b, sx_e, sw_e, sw_k, so_b, so_e,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, NSP: tl.constexpr,
                     BJ: tl.constexpr):
    """The causal conv of the inter-slice ordering: out[b, e, j*NS + k] from x[b, e, k'*S + j'] at the
    reordered positions j*NS + k - d, d = 0..K-1 (previous j when k < d; needs NS >= K - 1)."""
    e, bi, k, j, inside = _slice_tile(NS, S, NSP, BJ)
    row = x_ptr + bi * sx_b + e * sx_e
    acc = tl.zeros((NSP, BJ), tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + e).to(tl.float32)
    for tap in tl.static_range(K):
        d = K - 1 - tap
        wrap = k < d
        kk = tl.where(wrap, k - d + NS, k - d)
        jj = j - wrap.to(tl.int32)
        w = tl.load(w_ptr + e * sw_e + tap * sw_k).to(tl.float32)
        acc += w * tl.load(row + kk.to(tl.int64) * S + jj, mask=inside & (jj >= 0), other=0.0).to(tl.float32)
    if SILU:
        acc = _silu(acc)
    out = out_ptr + bi * so_b + e * so_e + j.to(tl.int64) * NS + k
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def gate_sum(z_ptr, f_ptr, r_ptr, s_ptr, out_ptr, NS, S,
             sz_b, sz_e, sf_b, sf_e, sr_b, sr_e, ss_b, ss_e, so_b, so_e,
             NSP: tl.constexpr, BJ: tl.constexpr):
    """out[t] = silu(z[t]) * (f[t] + r[L-1-t] + s[j*NS + k]) for token t = k*S + j, L = NS*S."""
    e, bi, k, j, inside = _slice_tile(NS, S, NSP, BJ)
    t = k.to(tl.int64) * S + j
    p = j.to(tl.int64) * NS + k
    L = NS * S
    zv = tl.load(z_ptr + bi * sz_b + e * sz_e + t, mask=inside, other=0.0).to(tl.float32)
    acc = tl.load(f_ptr + bi * sf_b + e * sf_e + t, mask=inside, other=0.0).to(tl.float32)
    acc += tl.load(r_ptr + bi * sr_b + e * sr_e + (L - 1 - t), mask=inside, other=0.0).to(tl.float32)
    acc += tl.load(s_ptr + bi * ss_b + e * ss_e + p, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + bi * so_b + e * so_e + t, (_silu(zv) * acc).to(out_ptr.dtype.element_ty), mask=inside)
