"""VM-UNet 3D: a fully state-space U-Net for volumes (our 3D design of VM-UNet; docs/models/vmunet3d.md).

    x (B, C_in, z, y, x)
      -> PatchEmbed3D: Conv3d k4 s4 -> LayerNorm                    (1/4,  C)
      -> encoder stage i: depths[i] VSS3D blocks, PatchMerging3D     (1/4 .. 1/32, C .. 8C)
      -> decoder stage j: PatchExpand3D, + skip (added, as VM-UNet), depths[-1-j] VSS3D blocks
      -> FinalPatchExpand3D x4 -> LayerNorm -> 1x1x1 conv              (1, out)

Every block works channels-last (B, z, y, x, C). A VSS3D block is LayerNorm -> SS3D (+ drop
path) residual, optionally followed by LayerNorm -> MLP residual. SS3D scans the volume in six
orders (three axis orders x two directions) in one grouped selective scan.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from BraTSMambaLib.nets.defaults import VMUNET3D_DEFAULTS as DEFAULTS
from BraTSMambaLib.ssm import SS3D


def _linspace(stop: float, n: int) -> list[float]:
    """Stochastic-depth rates 0..stop (plain Python: works when building on the meta device)."""
    return [stop * i / (n - 1) for i in range(n)] if n > 1 else [0.0] * n


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSS3DBlock(nn.Module):
    """x + DropPath(SS3D(LN(x))) [ + DropPath(MLP(LN(x))) ], channels-last."""

    def __init__(self, dim: int, d_state: int, expand: float, d_conv: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS3D(d_model=dim, d_state=d_state, expand=expand, d_conv=d_conv)
        self.drop_path = DropPath(drop_path)
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if hasattr(self, "mlp"):
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class PatchEmbed3D(nn.Module):
    """Conv3d k=s=p (non-overlapping patches) -> LayerNorm; returns channels-last."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class PatchMerging3D(nn.Module):
    """2x2x2 neighbours concatenated (8C) -> LayerNorm -> Linear to 2C: halves every side."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8 * dim)
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        x = x.reshape(b, d // 2, 2, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        return self.reduction(self.norm(x.reshape(b, d // 2, h // 2, w // 2, 8 * c)))


class PatchExpand3D(nn.Module):
    """Linear C -> s^3 * C_out, voxel shuffle to s-times larger sides, LayerNorm(C_out)."""

    def __init__(self, dim: int, out_dim: int, scale: int = 2) -> None:
        super().__init__()
        self.scale, self.out_dim = scale, out_dim
        self.expand = nn.Linear(dim, scale ** 3 * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, _ = x.shape
        s, c = self.scale, self.out_dim
        x = self.expand(x).reshape(b, d, h, w, s, s, s, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return self.norm(x.reshape(b, d * s, h * s, w * s, c))


class VMUNet3D(nn.Module):
    """VM-UNet 3D; `deep_supervision` adds 1x1 heads on the 1/4, 1/8 and 1/16 decoder outputs."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, patch_embed: int = 4, embed_dim: int = 48,
                 depths: Sequence[int] = (2, 2, 2, 2), depths_decoder: Sequence[int] | None = None,
                 d_state: int = 16, ssm_expand: float = 2, d_conv: int = 3, mlp_ratio: float = 0.0,
                 drop_path_rate: float = 0.1, deep_supervision: bool = False) -> None:
        super().__init__()
        n = len(depths)
        depths_decoder = tuple(depths[::-1]) if depths_decoder is None else tuple(depths_decoder)
        if len(depths_decoder) != n:
            raise ValueError(f"depths_decoder needs {n} entries, got {len(depths_decoder)}")
        dims = [embed_dim * 2 ** i for i in range(n)]
        dpr = _linspace(drop_path_rate, sum(depths))
        blk = dict(d_state=d_state, expand=ssm_expand, d_conv=d_conv, mlp_ratio=mlp_ratio)

        self.patch_embed = PatchEmbed3D(in_channels, embed_dim, patch_embed)
        self.layers, self.downsample, k = nn.ModuleList(), nn.ModuleList(), 0
        for i in range(n):
            self.layers.append(nn.Sequential(*[VSS3DBlock(dims[i], drop_path=dpr[k + j], **blk)
                                               for j in range(depths[i])]))
            k += depths[i]
            if i < n - 1:
                self.downsample.append(PatchMerging3D(dims[i]))
        dpr_up = _linspace(drop_path_rate, sum(depths_decoder))[::-1]
        self.upsample, self.layers_up, k = nn.ModuleList(), nn.ModuleList(), 0
        for j in range(n):
            i = n - 1 - j
            if j > 0:
                self.upsample.append(PatchExpand3D(dims[i + 1], dims[i]))
            self.layers_up.append(nn.Sequential(*[VSS3DBlock(dims[i], drop_path=dpr_up[k + t], **blk)
                                                  for t in range(depths_decoder[j])]))
            k += depths_decoder[j]
        self.final_up = PatchExpand3D(embed_dim, max(embed_dim // patch_embed, 1), scale=patch_embed)
        self.final_conv = nn.Conv3d(max(embed_dim // patch_embed, 1), out_channels, 1)
        self.deep_supervision = deep_supervision
        self.ds_scales = [1.0] + [1.0 / (patch_embed * 2 ** i) for i in range(min(3, n))]
        if deep_supervision:
            self.ds_heads = nn.ModuleList([nn.Conv3d(dims[i], out_channels, 1) for i in range(min(3, n))])

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.patch_embed(x)
        skips = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            skips.append(x)
            if i < len(self.downsample):
                x = self.downsample[i](x)
        feats = []
        for j, layer in enumerate(self.layers_up):
            if j > 0:
                x = self.upsample[j - 1](x) + skips[-1 - j]
            x = layer(x)
            feats.append(x)
        logits = self.final_conv(self.final_up(x).permute(0, 4, 1, 2, 3))
        if not self.deep_supervision:
            return logits
        levels = feats[::-1]  # 1/4, 1/8, 1/16, ...
        return [logits] + [head(f.permute(0, 4, 1, 2, 3)) for head, f in zip(self.ds_heads, levels)]


def build_vmunet3d(in_channels: int, out_channels: int, patch_size: Sequence[int], deep_supervision: bool,
                   **overrides: Any) -> VMUNet3D:
    """Registry constructor; every DEFAULTS entry is overridable."""
    kw = {**DEFAULTS, **overrides}
    return VMUNet3D(in_channels, out_channels, deep_supervision=deep_supervision, **kw)
