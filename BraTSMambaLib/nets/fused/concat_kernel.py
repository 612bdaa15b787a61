"""Triton kernel: channel concatenation of two channels_last_3d (NDHWC) tensors, for the UNETR decoder's
`torch.cat((upsampled, skip), dim=1)`.

In NDHWC memory a channel concatenation interleaves rows (each voxel's C_a channels, then its C_b), which
PyTorch copies with its generic strided kernel, element by element (5.2 ms per 8-tile SegMamba forward
pass on the H200, profile_gpu.py). Here a program copies whole rows of both inputs as 2-D tiles whose
channel extents are compile-time constants, so loads and stores are 16-byte vectors.
This module imports triton; import it only where triton works.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from BraTSMambaLib.nets.fused.norm_kernels import ndhwc_view

ROWS = 64   # voxels per program


@triton.jit
def _concat_kernel(a_ptr, b_ptr, y_ptr, M, CA: tl.constexpr, CB: tl.constexpr, BLOCK_A: tl.constexpr,
                   BLOCK_B: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = (rows < M)[:, None]
    ca = tl.arange(0, BLOCK_A)[None, :]
    ok_a = row_ok & (ca < CA)
    va = tl.load(a_ptr + rows[:, None] * CA + ca, mask=ok_a)
    tl.store(y_ptr + rows[:, None] * (CA + CB) + ca, va, mask=ok_a)
    cb = tl.arange(0, BLOCK_B)[None, :]
    ok_b = row_ok & (cb < CB)
    vb = tl.load(b_ptr + rows[:, None] * CB + cb, mask=ok_b)
    tl.store(y_ptr + rows[:, None] * (CA + CB) + CA + cb, vb, mask=ok_b)


def concat_channels_ndhwc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.cat((a, b), dim=1) for two 5-D tensors of one dtype and spatial shape; channels_last_3d result."""
    if a.dim() != 5 or a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:] or a.dtype != b.dtype:
        raise ValueError(f"cannot concatenate {tuple(a.shape)} {a.dtype} and {tuple(b.shape)} {b.dtype} "
                         "along channels")
    if a.numel() == 0 or b.numel() == 0:
        return torch.cat((a, b), dim=1).contiguous(memory_format=torch.channels_last_3d)
    n, ca = a.shape[:2]
    cb = b.shape[1]
    y = torch.empty((n, ca + cb, *a.shape[2:]), device=a.device, dtype=a.dtype,
                    memory_format=torch.channels_last_3d)
    m = a.numel() // ca
    _concat_kernel[(triton.cdiv(m, ROWS),)](ndhwc_view(a), ndhwc_view(b), y, m, CA=ca, CB=cb,
                                            BLOCK_A=triton.next_power_of_2(ca), BLOCK_B=triton.next_power_of_2(cb),
                                            ROWS=ROWS, num_warps=4)
    return y
