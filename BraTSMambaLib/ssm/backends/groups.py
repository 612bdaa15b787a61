"""B and C of a scan in one grouped layout, for the backends whose kernels take a single group count."""
from __future__ import annotations

import math

import torch


def common_groups(B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B and C as (batch, G, N, L) with the same G: a (batch, N, L) input is one group, and differently
    grouped inputs are repeated to the least common multiple of their group counts."""
    B = B if B.dim() == 4 else B.unsqueeze(1)
    C = C if C.dim() == 4 else C.unsqueeze(1)
    G = math.lcm(B.shape[1], C.shape[1])
    if B.shape[1] != G:
        B = B.repeat_interleave(G // B.shape[1], 1)
    if C.shape[1] != G:
        C = C.repeat_interleave(G // C.shape[1], 1)
    return B, C
