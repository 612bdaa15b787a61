"""Sequential transcription of the selective-scan recurrence: the yardstick the fast backends are tested against.

One time step per Python iteration, autograd through the loop: slow, exact, for tests and small inputs only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "reference"


def is_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """The reference runs wherever torch runs."""
    return True, "plain PyTorch loop (tests only: one Python step per position)"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t;  y_t = C_t . h_t + D u_t;  y * silu(z).

    Shapes as `BraTSMambaLib.ssm.selective_scan`; all arithmetic in float32.
    """
    dtype_in = u.dtype
    batch, E, L = u.shape
    N = A.shape[1]
    u32, dt = u.float(), delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float().unsqueeze(-1)
    if delta_softplus:
        dt = F.softplus(dt)
    A32 = A.float()
    Bf = B.float() if B.dim() == 4 else B.float().unsqueeze(1)
    Cf = C.float() if C.dim() == 4 else C.float().unsqueeze(1)
    Bf = Bf.repeat_interleave(E // Bf.shape[1], dim=1)  # (batch, E, N, L)
    Cf = Cf.repeat_interleave(E // Cf.shape[1], dim=1)
    h = u32.new_zeros(batch, E, N)
    ys = []
    # unbind: per-step views whose backward is one stack, not L full-size index gradients
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u32.unbind(-1), Bf.unbind(-1), Cf.unbind(-1)):
        h = torch.exp(dt_t.unsqueeze(-1) * A32) * h + (dt_t * u_t).unsqueeze(-1) * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u32.new_zeros(batch, E, 0)
    if D is not None:
        y = y + D.float().unsqueeze(-1) * u32
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y
