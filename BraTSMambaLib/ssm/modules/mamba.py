"""`Mamba`: mamba_ssm's `mamba_simple.Mamba` layer (same constructor, initialisation, parameter names and
shapes, so state dicts load with strict=True both ways), running on any scan backend.

Forward math as mamba_ssm: in_proj -> causal depthwise conv1d -> SiLU -> x_proj -> (dt, B, C) ->
dt_proj weight (its bias enters the scan as delta_bias with softplus) -> selective scan gated by SiLU(z)
-> out_proj. The causal conv is `nn.Conv1d` with padding d_conv-1 truncated to L, which is mamba_ssm's
own fallback when causal_conv1d is not installed.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from BraTSMambaLib.ssm.selective_scan import selective_scan


def s4d_real_A_log(d_inner: int, d_state: int, device=None) -> nn.Parameter:
    """A_log = log(1..N) for every channel (S4D-real), float32, excluded from weight decay."""
    A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(d_inner, 1)
    p = nn.Parameter(torch.log(A))
    p._no_weight_decay = True
    return p


def skip_D(d_inner: int, device=None) -> nn.Parameter:
    """D = 1 (float32), excluded from weight decay."""
    p = nn.Parameter(torch.ones(d_inner, device=device))
    p._no_weight_decay = True
    return p


def depthwise_conv(d_inner: int, d_conv: int, conv_bias: bool, factory_kwargs: dict) -> nn.Conv1d:
    return nn.Conv1d(d_inner, d_inner, kernel_size=d_conv, groups=d_inner, padding=d_conv - 1,
                     bias=conv_bias, **factory_kwargs)


def dt_projection(dt_rank: int, d_inner: int, dt_min: float, dt_max: float, dt_init: str, dt_scale: float,
                  dt_init_floor: float, factory_kwargs: dict) -> nn.Linear:
    """dt_proj with mamba_ssm's init: weight ~ U(+-dt_rank^-0.5 * dt_scale) (or constant) and a bias whose
    softplus is log-uniform in [dt_min, dt_max] (floored at dt_init_floor)."""
    proj = nn.Linear(dt_rank, d_inner, bias=True, **factory_kwargs)
    std = dt_rank ** -0.5 * dt_scale
    if dt_init == "constant":
        nn.init.constant_(proj.weight, std)
    elif dt_init == "random":
        nn.init.uniform_(proj.weight, -std, std)
    else:
        raise NotImplementedError(f"dt_init={dt_init!r}; mamba_ssm supports 'random' and 'constant'")
    dt = torch.exp(torch.rand(d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=dt_init_floor)
    inv_dt = dt + torch.log(-torch.expm1(-dt))          # softplus^-1
    with torch.no_grad():
        proj.bias.copy_(inv_dt)
    proj.bias._no_reinit = True
    return proj


def set_layer_dims(layer: nn.Module, d_model: int, d_state: int, d_conv: int, expand: float, dt_rank) -> None:
    """d_model, d_state, d_conv, expand, d_inner = int(expand * d_model) and dt_rank ("auto":
    ceil(d_model / 16)) on `layer`, as mamba_ssm's layers set them."""
    layer.d_model = d_model
    layer.d_state = d_state
    layer.d_conv = d_conv
    layer.expand = expand
    layer.d_inner = int(expand * d_model)
    layer.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank


def ssm_branch(x: torch.Tensor, z: torch.Tensor, conv1d: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear,
               A_log: torch.Tensor, D: torch.Tensor, backend: str) -> torch.Tensor:
    """One scan of a Mamba layer on x, z (batch, d_inner, L): conv -> SiLU -> x_proj -> scan * SiLU(z).

    Returns (batch, d_inner, L), before out_proj (what mamba_ssm's `mamba_inner_fn_no_out_proj` returns).
    """
    b, E, L = x.shape
    dt_rank = dt_proj.weight.shape[1]
    d_state = A_log.shape[1]
    x = F.silu(conv1d(x)[..., :L])
    x_dbl = F.linear(x.transpose(1, 2).reshape(b * L, E), x_proj.weight, x_proj.bias)
    dt, Bm, Cm = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    dt = (dt_proj.weight @ dt.t()).view(E, b, L).transpose(0, 1)
    Bm = Bm.view(b, L, d_state).transpose(1, 2).contiguous()
    Cm = Cm.view(b, L, d_state).transpose(1, 2).contiguous()
    A = -torch.exp(A_log.float())
    return selective_scan(x, dt, A, Bm, Cm, D.float(), z=z, delta_bias=dt_proj.bias.float(),
                          delta_softplus=True, backend=backend)


class Mamba(nn.Module):
    """mamba_ssm's Mamba block (B, L, d_model) -> (B, L, d_model) on a selectable scan backend.

    Arguments as `mamba_ssm.modules.mamba_simple.Mamba`; `use_fast_path` is accepted for compatibility
    (the math is the same either way); `scan_backend` is passed to `selective_scan` ("auto", "mamba_ssm",
    "triton", "torch", "reference").
    """

    #: Suffixes of the scan parameter sets ("" = conv1d, x_proj, dt_proj, A_log, D).
    SCAN_SUFFIXES: tuple[str, ...] = ("",)

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank="auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 use_fast_path: bool = True, layer_idx: int | None = None, device=None, dtype=None,
                 *, scan_backend: str = "auto") -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        set_layer_dims(self, d_model, d_state, d_conv, expand, dt_rank)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.scan_backend = scan_backend
        self.activation = "silu"
        self.act = nn.SiLU()

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        for suffix in self.SCAN_SUFFIXES:   # created in upstream's order: same RNG draws for the same seed
            self._init_scan_params(suffix, conv_bias, dt_min, dt_max, dt_init, dt_scale, dt_init_floor,
                                   factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def _init_scan_params(self, suffix: str, conv_bias: bool, dt_min: float, dt_max: float, dt_init: str,
                          dt_scale: float, dt_init_floor: float, factory_kwargs: dict) -> None:
        """conv1d{s}, x_proj{s}, dt_proj{s}, A{s}_log, D{s}: the parameters of one scan direction."""
        dev = factory_kwargs["device"]
        setattr(self, f"conv1d{suffix}", depthwise_conv(self.d_inner, self.d_conv, conv_bias, factory_kwargs))
        setattr(self, f"x_proj{suffix}", nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False,
                                                   **factory_kwargs))
        setattr(self, f"dt_proj{suffix}", dt_projection(self.dt_rank, self.d_inner, dt_min, dt_max, dt_init,
                                                        dt_scale, dt_init_floor, factory_kwargs))
        setattr(self, f"A{suffix}_log", s4d_real_A_log(self.d_inner, self.d_state, dev))
        setattr(self, f"D{suffix}", skip_D(self.d_inner, dev))

    def _in_proj(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> xz (B, 2*d_inner, L), contiguous along L as the scan wants it."""
        b, L, d = hidden_states.shape
        xz = (self.in_proj.weight @ hidden_states.reshape(b * L, d).t()).view(-1, b, L).transpose(0, 1)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype).unsqueeze(-1)
        return xz

    def _branch(self, xz: torch.Tensor, suffix: str = "") -> torch.Tensor:
        x, z = xz.chunk(2, dim=1)
        return ssm_branch(x, z, getattr(self, f"conv1d{suffix}"), getattr(self, f"x_proj{suffix}"),
                          getattr(self, f"dt_proj{suffix}"), getattr(self, f"A{suffix}_log"),
                          getattr(self, f"D{suffix}"), self.scan_backend)

    def forward(self, hidden_states: torch.Tensor, inference_params=None) -> torch.Tensor:
        """hidden_states (B, L, d_model) -> (B, L, d_model)."""
        if inference_params is not None:
            raise NotImplementedError("step-by-step decoding (inference_params) is not supported; "
                                      "segmentation runs whole sequences")
        y = self._branch(self._in_proj(hidden_states))
        return F.linear(y.transpose(1, 2), self.out_proj.weight, self.out_proj.bias)
