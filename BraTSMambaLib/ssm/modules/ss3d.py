"""`SS3D`: a 3D selective-scan block for VM-UNet-3D, designed after VMamba's/VM-UNet's SS2D.

SS2D scans a 2D feature map along K=4 routes (row-major, column-major and their reverses) with one
grouped `selective_scan` call and sums the routes back. SS3D does the same in 3D with K=6 routes: the
three cyclic axis orders (D,H,W), (H,W,D), (W,D,H) - so each axis is the fastest-varying one of one route -
and the reverse of each. Parameter names follow SS2D (in_proj, conv3d, x_proj_weight (K, R+2N, d_inner),
dt_projs_weight (K, d_inner, R), dt_projs_bias (K, d_inner), A_logs (K*d_inner, N), Ds (K*d_inner),
out_norm, out_proj); initialisation is mamba_ssm's, per route.

Cost per block: K * d_inner * L * N state updates, i.e. 6x one Mamba direction (SegMamba's v3 layer is 3x).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from BraTSMambaLib.ssm.modules.mamba import dt_projection, set_layer_dims
from BraTSMambaLib.ssm.selective_scan import selective_scan

#: Axis orders of the forward routes, as permutations of the (D, H, W) axes of a (B, C, D, H, W) tensor.
ROUTE_ORDERS: tuple[tuple[int, int, int], ...] = ((2, 3, 4), (3, 4, 2), (4, 2, 3))
K_ROUTES = 2 * len(ROUTE_ORDERS)


def cross_scan_3d(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, 6, C, L): the three axis-order flattenings, then the same three reversed."""
    b, c = x.shape[:2]
    routes = [x.permute(0, 1, *order).reshape(b, c, -1) for order in ROUTE_ORDERS]
    fwd = torch.stack(routes, dim=1)
    return torch.cat([fwd, fwd.flip(-1)], dim=1)


def cross_merge_3d(ys: torch.Tensor, spatial: tuple[int, int, int]) -> torch.Tensor:
    """(B, 6, C, L) route outputs -> (B, C, L) in (D, H, W) row-major order, summed over the routes.

    The adjoint of `cross_scan_3d`: cross_merge_3d(cross_scan_3d(x)) == 6 * x.flatten(2).
    """
    b, k, c, L = ys.shape
    n = len(ROUTE_ORDERS)
    if k != 2 * n or math.prod(spatial) != L:
        raise ValueError(f"cross_merge_3d: expected (B, {2 * n}, C, {math.prod(spatial)}), got {tuple(ys.shape)}")
    ys = ys[:, :n] + ys[:, n:].flip(-1)
    out = None
    for i, order in enumerate(ROUTE_ORDERS):
        shape = [spatial[a - 2] for a in order]
        inverse = [0, 1] + [2 + order.index(a) for a in (2, 3, 4)]
        vol = ys[:, i].reshape(b, c, *shape).permute(*inverse).reshape(b, c, L)
        out = vol if out is None else out + vol
    return out


class SS3D(nn.Module):
    """3D selective-scan block: (B, D, H, W, d_model) -> (B, D, H, W, d_model), channels last like SS2D."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: int = 2, dt_rank="auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, dropout: float = 0.0, conv_bias: bool = True, bias: bool = False,
                 device=None, dtype=None, *, scan_backend: str = "auto") -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        set_layer_dims(self, d_model, d_state, d_conv, expand, dt_rank)
        self.scan_backend = scan_backend
        K, E, R, N = K_ROUTES, self.d_inner, self.dt_rank, d_state

        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias, **factory_kwargs)
        self.conv3d = nn.Conv3d(E, E, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=E, bias=conv_bias,
                                **factory_kwargs)
        self.act = nn.SiLU()
        x_projs = [nn.Linear(E, R + 2 * N, bias=False, **factory_kwargs) for _ in range(K)]
        self.x_proj_weight = nn.Parameter(torch.stack([p.weight for p in x_projs], dim=0))
        dt_projs = [dt_projection(R, E, dt_min, dt_max, dt_init, dt_scale, dt_init_floor, factory_kwargs)
                    for _ in range(K)]
        self.dt_projs_weight = nn.Parameter(torch.stack([p.weight for p in dt_projs], dim=0))
        self.dt_projs_bias = nn.Parameter(torch.stack([p.bias for p in dt_projs], dim=0))
        A = torch.arange(1, N + 1, dtype=torch.float32, device=device).repeat(K * E, 1)
        self.A_logs = nn.Parameter(torch.log(A))
        self.A_logs._no_weight_decay = True
        self.Ds = nn.Parameter(torch.ones(K * E, device=device))
        self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(E, **factory_kwargs)
        self.out_proj = nn.Linear(E, d_model, bias=bias, **factory_kwargs)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else None

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_inner, D, H, W) after conv+SiLU -> (B, d_inner, L): the six routes scanned and summed."""
        b, E, D, H, W = x.shape
        L, K, N, R = D * H * W, K_ROUTES, self.d_state, self.dt_rank
        xs = cross_scan_3d(x)                                                     # (b, K, E, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        ys = selective_scan(xs.float().reshape(b, K * E, L), dts.float().reshape(b, K * E, L),
                            -torch.exp(self.A_logs.float()), Bs.float().contiguous(), Cs.float().contiguous(),
                            self.Ds.float(), delta_bias=self.dt_projs_bias.float().reshape(-1),
                            delta_softplus=True, backend=self.scan_backend)
        return cross_merge_3d(ys.view(b, K, E, L), (D, H, W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, D, H, W, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv3d(x.permute(0, 4, 1, 2, 3).contiguous()))
        y = self.forward_core(x).transpose(1, 2).reshape(b, D, H, W, self.d_inner)
        y = self.out_norm(y) * F.silu(z)
        out = self.out_proj(y)
        return self.dropout(out) if self.dropout is not None else out
