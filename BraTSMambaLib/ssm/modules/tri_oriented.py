"""`TriOrientedMamba`: SegMamba's tri-orientated Mamba (its mamba_ssm fork, `bimamba_type="v3"`).

One shared in_proj/out_proj and three scans with their own conv1d/x_proj/dt_proj/A_log/D (suffixes
"", "_b", "_s"): forward over the tokens, backward over the flipped tokens, and inter-slice over the
tokens re-ordered by `stack(xz.chunk(nslices, -1), -1).flatten(-2)` (position j within a slice, then
slice k); each is gated by SiLU(z), the three are SUMMED (not averaged), then out_proj. Parameter names
match the fork, so its state dicts load with strict=True.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from BraTSMambaLib.ssm.modules.mamba import Mamba


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
        xz = self._in_proj(hidden_states)
        out = self._branch(xz, "")
        out_b = self._branch(xz.flip([-1]), "_b").flip([-1])
        xz_s = xz.view(b, -1, ns, L // ns).transpose(-1, -2).reshape(b, -1, L)
        out_s = self._branch(xz_s, "_s")
        out_s = out_s.view(b, -1, L // ns, ns).transpose(-1, -2).reshape(b, -1, L)
        return F.linear((out + out_b + out_s).transpose(1, 2), self.out_proj.weight, self.out_proj.bias)
