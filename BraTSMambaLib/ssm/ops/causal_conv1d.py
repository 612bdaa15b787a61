"""Causal depthwise conv1d + bias + SiLU of a Mamba layer: `causal_conv1d_silu`.

The maths of mamba_ssm's `causal_conv1d_fn(x, weight, bias, activation="silu")` and of its fallback
`silu(nn.Conv1d(padding=K-1)(x)[..., :L])`: out[b, e, t] = silu(bias[e] + sum_k w[e, k] x[b, e, t-K+1+k]),
zero before the start. On CUDA without autograd a Triton kernel does it in one pass (fp32 arithmetic, one
rounding to the input dtype) and reads x through its batch/channel strides (a channel slice of xz is not
copied), in token order, reversed, or in the inter-slice order of the tri-orientated layer (`orders`).
Everywhere else the PyTorch formula runs, so training keeps its gradients.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from BraTSMambaLib.ssm.ops.dispatch import compute_dtype, use_triton
from BraTSMambaLib.ssm.ops.orders import check_order, to_order

#: Positions per program of the sequential kernel; elements per program of the inter-slice kernel.
BLOCK_SEQ = 1024
TILE_SLICES = 4096
NUM_WARPS = 4
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def conv_parameters(conv: nn.Conv1d | torch.Tensor, bias: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (E, 1, K), bias (E,) or None) from a causal depthwise `nn.Conv1d` or from a weight tensor
    (E, 1, K) / (E, K) and `bias`; ValueError for anything else."""
    if isinstance(conv, nn.Conv1d):
        K = conv.kernel_size[0]
        if bias is not None:
            raise ValueError("causal_conv1d_silu: pass bias only with a weight tensor, not with an nn.Conv1d")
        if not (conv.groups == conv.in_channels == conv.out_channels and conv.stride == (1,)
                and conv.dilation == (1,) and conv.padding == (K - 1,) and conv.padding_mode == "zeros"):
            raise ValueError(f"causal_conv1d_silu: {conv} is not a causal depthwise conv "
                             "(groups = channels, stride 1, dilation 1, zero padding kernel_size - 1)")
        return conv.weight, conv.bias
    w = conv.unsqueeze(1) if conv.dim() == 2 else conv
    if w.dim() != 3 or w.shape[1] != 1:
        raise ValueError(f"causal_conv1d_silu: weight must be (E, K) or (E, 1, K), got {tuple(conv.shape)}")
    if bias is not None and tuple(bias.shape) != (w.shape[0],):
        raise ValueError(f"causal_conv1d_silu: bias must be ({w.shape[0]},), got {tuple(bias.shape)}")
    return w, bias


def causal_conv1d_silu_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                             *, order: str = "forward", nslices: int | None = None) -> torch.Tensor:
    """The PyTorch formula (differentiable): silu(conv1d(x in `order`, padding K-1)[..., :L])."""
    L = x.shape[-1]
    K = weight.shape[-1]
    xo = to_order(x, order, nslices)
    return F.silu(F.conv1d(xo, weight, bias, padding=K - 1, groups=weight.shape[0])[..., :L])


def causal_conv1d_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                              *, order: str = "forward", nslices: int | None = None,
                              silu: bool = True) -> torch.Tensor:
    """The Triton kernel, forward only: x (b, E, L) with any batch/channel strides, weight (E, 1, K) or
    (E, K), bias (E,) or None -> a new contiguous (b, E, L) tensor of x's dtype, in `order`.

    Arithmetic in fp32 from the given values (cast x, weight and bias to the dtype wanted first). Runs
    wherever triton runs, including its CPU interpreter (TRITON_INTERPRET=1)."""
    from BraTSMambaLib.ssm.ops import kernels

    if x.dim() != 3:
        raise ValueError(f"causal_conv1d_silu: x must be (batch, E, L), got {tuple(x.shape)}")
    b, E, L = x.shape
    check_order(order, nslices, L)
    w, bias = conv_parameters(weight, bias)
    w = w[:, 0]
    K = w.shape[1]
    if w.shape[0] != E:
        raise ValueError(f"causal_conv1d_silu: weight has {w.shape[0]} channels, x has {E}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((b, E, L), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    bias_t = bias if bias is not None else w
    flags = {"K": K, "HAS_BIAS": bias is not None, "SILU": silu, "num_warps": NUM_WARPS}
    if order == "slices":
        S = L // nslices
        nsp = max(2, _next_pow2(nslices))
        if nslices >= K - 1 and nsp <= TILE_SLICES:
            bj = max(2, min(_next_pow2(S), TILE_SLICES // nsp))
            kernels.conv_silu_slices[(_cdiv(S, bj), E, b)](
                x, w, bias_t, out, nslices, S, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
                out.stride(0), out.stride(1), NSP=nsp, BJ=bj, **flags)
            return out
        x, order = to_order(x, order, nslices), "forward"
    kernels.conv_silu_seq[(_cdiv(L, BLOCK_SEQ), E, b)](
        x, w, bias_t, out, L, x.stride(0), x.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1),
        REVERSE=order == "reverse", BLOCK=BLOCK_SEQ, **flags)
    return out


def causal_conv1d_silu(x: torch.Tensor, conv: nn.Conv1d | torch.Tensor, bias: torch.Tensor | None = None,
                       *, order: str = "forward", nslices: int | None = None) -> torch.Tensor:
    """silu(causal depthwise conv1d(x read in `order`)) (b, E, L), in the dtype nn.Conv1d would give.

    `conv`: a causal depthwise nn.Conv1d (its weight and bias) or a weight tensor (E, 1, K) / (E, K) with
    `bias`. The Triton kernel runs on CUDA when no gradient is recorded (inference, no_grad); otherwise
    the PyTorch formula, with autograd. Under autocast both compute in autocast's dtype, as nn.Conv1d does."""
    w, b = conv_parameters(conv, bias)
    dtype = compute_dtype(x)
    same_dtypes = w.dtype == x.dtype and (b is None or b.dtype == x.dtype)
    if (use_triton(x, w, b) and dtype in FLOAT_DTYPES
            and (same_dtypes or torch.is_autocast_enabled(x.device.type))):
        return causal_conv1d_silu_triton(x.to(dtype), w.to(dtype), None if b is None else b.to(dtype),
                                         order=order, nslices=nslices)
    return causal_conv1d_silu_torch(x, w, b, order=order, nslices=nslices)

