"""`TriOrientedMamba`: SegMamba's tri-orientated Mamba (its mamba_ssm fork, `bimamba_type="v3"`).

One shared in_proj/out_proj and three scans with their own conv1d/x_proj/dt_proj/A_log/D (suffixes
"", "_b", "_s"): forward over the tokens, backward over the flipped tokens, and inter-slice over the
tokens re-ordered by `stack(xz.chunk(nslices, -1), -1).flatten(-2)` (position j within a slice, then
slice k); each is gated by SiLU(z), the three are SUMMED (not averaged), then out_proj. Parameter names
match the fork, so its state dicts load with strict=True.

Two evaluations of that sum. With autograd (training): as written, each scan gated by its reordered z.
Without (inference): the orders are permutations, so every token's three terms share the gate
silu(z_token): the scans run ungated, their convolutions read x reversed / by slices in place, and one
pass (`ssm.ops.gate_sum`) adds the three in token order and gates once - no reordered copies of x, z or
the outputs; on CUDA the three scans run at once on side streams (`ssm.ops.concurrently`).
"""
from __future__ import annotations

import torch

from BraTSMambaLib.ssm.modules.mamba import Mamba
from BraTSMambaLib.ssm.ops.dispatch import records_grad
from BraTSMambaLib.ssm.ops.orders import from_order, to_order
from BraTSMambaLib.ssm.ops.streams import concurrently
from BraTSMambaLib.ssm.ops.tri_gate import gate_sum


class TriOrientedMamba(Mamba):
    """SegMamba's v3 Mamba layer; `nslices` is the number of slices (depth) the token sequence is made of."""

    SCAN_SUFFIXES = ("", "_b", "_s")

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank="auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 use_fast_path: bool = True, layer_idx: int | None = None, device=None, dtype=None,
                 nslices: int = 5, *, scan_backend: str = "auto") -> None:
        super().__init__(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale,
                         dt_init_floor, conv_bias, bias, use_fast_path, layer_idx, device, dtype,
                         scan_backend=scan_backend)
        self.bimamba_type = "v3"
        self.nslices = nslices

    def forward(self, hidden_states: torch.Tensor, inference_params=None, nslices: int | None = None
                ) -> torch.Tensor:
        """hidden_states (B, L, d_model) -> (B, L, d_model); L must be a multiple of nslices."""
        if inference_params is not None:
            raise NotImplementedError("step-by-step decoding (inference_params) is not supported")
        ns = self.nslices if nslices is None else nslices
        b, L, _ = hidden_states.shape
        if ns < 1 or L % ns:
            raise ValueError(f"TriOrientedMamba: sequence length {L} is not a multiple of nslices={ns}")
        x, z = self._in_proj(hidden_states)
        if records_grad(hidden_states, *self.parameters()):
            y = self._branch(x, z, "")
            y = y + from_order(self._branch(x, to_order(z, "reverse"), "_b", "reverse"), "reverse")
            y = y + from_order(self._branch(x, to_order(z, "slices", ns), "_s", "slices", ns), "slices", ns)
        else:
            y_f, y_r, y_s = concurrently(x.device, lambda: self._branch(x, None, ""),
                                         lambda: self._branch(x, None, "_b", "reverse"),
                                         lambda: self._branch(x, None, "_s", "slices", ns))
            y = gate_sum(z, y_f, y_r, y_s, ns)
        return self._out_proj(y)
