"""`gate_sum`: the tri-orientated layer's three ungated scan outputs summed in token order and gated once.

silu(z) * (y_f + from_order(y_r, "reverse") + from_order(y_s, "slices")) equals the fork's
y_f*silu(z) + flip(y_r*silu(flip z)) + unslice(y_s*silu(slice z)): every order is a permutation, so the
gate of a token is silu of that token's z in all three. On CUDA without autograd one Triton pass reads the
four inputs through their strides (reversed and inter-slice positions by index arithmetic) and writes the
sum (fp32 arithmetic, one rounding); otherwise the PyTorch formula.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from BraTSMambaLib.ssm.ops.dispatch import use_triton
from BraTSMambaLib.ssm.ops.orders import check_order, from_order

TILE = 4096
NUM_WARPS = 4


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def gate_sum_torch(z: torch.Tensor, y_f: torch.Tensor, y_r: torch.Tensor, y_s: torch.Tensor,
                   nslices: int) -> torch.Tensor:
    """The PyTorch formula (differentiable), computed in fp32 at least, returned in y_f's dtype."""
    acc = torch.promote_types(y_f.dtype, torch.float32)
    s = y_f.to(acc) + from_order(y_r, "reverse").to(acc) + from_order(y_s, "slices", nslices).to(acc)
    return (F.silu(z.to(acc)) * s).to(y_f.dtype)


def gate_sum_triton(z: torch.Tensor, y_f: torch.Tensor, y_r: torch.Tensor, y_s: torch.Tensor,
                    nslices: int) -> torch.Tensor:
    """The Triton kernel, forward only; inputs (b, E, L) with contiguous last dimensions (any batch/channel
    strides); returns a new contiguous (b, E, L) tensor of y_f's dtype. Runs under TRITON_INTERPRET=1 too."""
    from BraTSMambaLib.ssm.ops import kernels

    b, E, L = y_f.shape
    check_order("slices", nslices, L)
    for nm, t in (("z", z), ("y_r", y_r), ("y_s", y_s)):
        if t.shape != y_f.shape:
            raise ValueError(f"gate_sum: {nm} {tuple(t.shape)} must match y_f {tuple(y_f.shape)}")
    z, y_f, y_r, y_s = (t if t.stride(-1) == 1 else t.contiguous() for t in (z, y_f, y_r, y_s))
    out = torch.empty((b, E, L), dtype=y_f.dtype, device=y_f.device)
    if out.numel() == 0:
        return out
    S = L // nslices
    nsp = max(2, _next_pow2(nslices))
    if nsp > TILE:
        return gate_sum_torch(z, y_f, y_r, y_s, nslices)
    bj = max(2, min(_next_pow2(S), TILE // nsp))
    kernels.gate_sum[(-(-S // bj), E, b)](
        z, y_f, y_r, y_s, out, nslices, S, z.stride(0), z.stride(1), y_f.stride(0), y_f.stride(1),
        y_r.stride(0), y_r.stride(1), y_s.stride(0), y_s.stride(1), out.stride(0), out.stride(1),
        NSP=nsp, BJ=bj, num_warps=NUM_WARPS)
    return out


def gate_sum(z: torch.Tensor, y_f: torch.Tensor, y_r: torch.Tensor, y_s: torch.Tensor,
             nslices: int) -> torch.Tensor:
    """silu(z) * (y_f + y_r reversed + y_s from the inter-slice order), all (b, E, L); y_f's dtype."""
    if use_triton(y_f, z, y_r, y_s) and y_f.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return gate_sum_triton(z, y_f, y_r, y_s, nslices)
    return gate_sum_torch(z, y_f, y_r, y_s, nslices)
