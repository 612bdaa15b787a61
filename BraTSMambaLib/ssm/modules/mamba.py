"""`Mamba`: mamba_ssm's `mamba_simple.Mamba` layer (same constructor, initialisation, parameter names and
shapes, so state dicts load with strict=True both ways), running on any scan backend.

Forward math as mamba_ssm: in_proj -> causal depthwise conv1d -> SiLU -> x_proj -> (dt, B, C) ->
dt_proj weight (its bias enters the scan as delta_bias with softplus) -> selective scan gated by SiLU(z)
-> out_proj. The causal conv is `nn.Conv1d` with padding d_conv-1 truncated to L (mamba_ssm's own fallback
when causal_conv1d is not installed); without autograd on CUDA it is one Triton pass (`ssm.ops`).

Layout: every activation stays (batch, channels, L) with L contiguous, as the scan wants it; the
projections are batched matrix products over that layout (`_per_batch`), so nothing is transposed.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from BraTSMambaLib.ssm.ops.causal_conv1d import causal_conv1d_silu
from BraTSMambaLib.ssm.ops.dispatch import compute_dtype
from BraTSMambaLib.ssm.selective_scan import selective_scan


#: On CUDA dt_proj's inner dimension (dt_rank) is widened to a multiple of this (`apply_dt_proj`).
DT_ALIGN_CUDA = 8


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


def _per_batch(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """weight (M, K) applied to every position of x (b, K, L) -> (b, M, L) contiguous: the arithmetic of
    F.linear on x.transpose(1, 2), as one batched GEMM that reads x through its strides (torch.matmul
    would first copy a transposed x to fold the batch into the rows)."""
    y = torch.bmm(weight.expand(x.shape[0], -1, -1), x)
    return y if bias is None else y + bias.to(y.dtype).unsqueeze(-1)


def apply_dt_proj(weight: torch.Tensor, x_dbl: torch.Tensor, align: int = 1) -> torch.Tensor:
    """dt_proj's weight (d_inner, R) applied to the first R rows of x_dbl (b, R + 2N, L). With align > 1 the
    inner dimension is widened to a multiple of `align` with zero weight columns over the following (B)
    rows: the same sums (a non-finite B would turn into NaN, where dt is already meaningless), but operands
    cuBLAS runs with aligned tensor-core kernels (R = 3 and 6 at SegMamba's first stages made 6- and
    12-byte weight rows and slow 'align1'/'align2' kernels on the H200: 3.5 ms per 8-tile forward pass)."""
    r = weight.shape[1]
    k = -(-r // align) * align
    if k == r or k > x_dbl.shape[1]:
        return _per_batch(weight, x_dbl[:, :r])
    return _per_batch(F.pad(weight, (0, k - r)), x_dbl[:, :k])


def ssm_branch(x: torch.Tensor, z: torch.Tensor | None, conv1d: nn.Conv1d, x_proj: nn.Linear,
               dt_proj: nn.Linear, A_log: torch.Tensor, D: torch.Tensor, backend: str, *,
               order: str = "forward", nslices: int | None = None) -> torch.Tensor:
    """One scan of a Mamba layer: conv -> SiLU -> x_proj -> scan (* SiLU(z) when z is given).

    x (batch, d_inner, L) in token order (any batch/channel strides), scanned in `order` ("forward",
    "reverse", "slices" with `nslices`: `ssm.ops.orders`); z (batch, d_inner, L) already in that order, or
    None for the ungated scan. Returns (batch, d_inner, L) in the scan's order, before out_proj (with z:
    what mamba_ssm's `mamba_inner_fn_no_out_proj` returns). dt, B and C are row blocks of one
    (batch, R + 2N, L) product: B and C reach the scan as strided views.
    """
    dt_rank = dt_proj.weight.shape[1]
    d_state = A_log.shape[1]
    x = causal_conv1d_silu(x, conv1d, order=order, nslices=nslices)
    x_dbl = _per_batch(x_proj.weight, x, x_proj.bias)
    dt = apply_dt_proj(dt_proj.weight, x_dbl, align=DT_ALIGN_CUDA if x_dbl.is_cuda else 1)
    Bm = x_dbl[:, dt_rank:dt_rank + d_state]
    Cm = x_dbl[:, dt_rank + d_state:dt_rank + 2 * d_state]
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

    def _in_proj(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d) -> x, z (B, d_inner, L), each contiguous: the two halves of in_proj as two batched
        products over hidden_states read in place (no transposed copy; cast once under autocast)."""
        E = self.d_inner
        w, bias = self.in_proj.weight, self.in_proj.bias
        h = hidden_states.to(compute_dtype(hidden_states)).transpose(1, 2)
        x = _per_batch(w[:E], h, None if bias is None else bias[:E])
        z = _per_batch(w[E:], h, None if bias is None else bias[E:])
        return x, z

    def _branch(self, x: torch.Tensor, z: torch.Tensor | None, suffix: str = "", order: str = "forward",
                nslices: int | None = None) -> torch.Tensor:
        return ssm_branch(x, z, getattr(self, f"conv1d{suffix}"), getattr(self, f"x_proj{suffix}"),
                          getattr(self, f"dt_proj{suffix}"), getattr(self, f"A{suffix}_log"),
                          getattr(self, f"D{suffix}"), self.scan_backend, order=order, nslices=nslices)

    def _out_proj(self, y: torch.Tensor) -> torch.Tensor:
        """y (B, d_inner, L) -> (B, L, d_model): out_proj as one batched product over y read transposed."""
        w, bias = self.out_proj.weight, self.out_proj.bias
        out = torch.bmm(y.transpose(1, 2), w.t().expand(y.shape[0], -1, -1))
        return out if bias is None else out + bias.to(out.dtype)

    def forward(self, hidden_states: torch.Tensor, inference_params=None) -> torch.Tensor:
        """hidden_states (B, L, d_model) -> (B, L, d_model)."""
        if inference_params is not None:
            raise NotImplementedError("step-by-step decoding (inference_params) is not supported; "
                                      "segmentation runs whole sequences")
        return self._out_proj(self._branch(*self._in_proj(hidden_states)))
