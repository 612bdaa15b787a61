"""SegMamba as coded in ge-xing/SegMamba `model_segmamba/segmamba.py` (not as the paper draws it).

Encoder (`vit`): stem Conv3d k7 s2, then per stage GSC -> `depths[i]` tri-orientated Mamba layers;
between stages InstanceNorm + Conv3d k2 s2; each stage output goes through InstanceNorm and a
1x1 MLP (C -> 2C -> C). Decoder: MONAI UNETR blocks `encoder1..5`, `decoder5..1`, `out`.
Module names and shapes equal upstream's (291 entries, 67,416,147 parameters for in 4 / out 3).

Two deliberate differences, neither changing the default state dict:
* nslices (the inter-slice scan's slice count) is the real depth of each stage's feature map,
  where upstream hard-codes [64, 32, 16, 8] (= 128^3 input); any input divisible by 16 works.
* optional deep-supervision heads (`ds_heads.<i>`, 1x1 UnetOutBlocks on the 1/2, 1/4, 1/8
  decoder outputs) exist only when built with `deep_supervision=True`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
from torch import nn

from BraTSMambaLib.ssm import TriOrientedMamba


class MambaLayer(nn.Module):
    """LayerNorm -> tri-orientated Mamba over row-major tokens (d*HW + h*W + w) -> + x."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, num_slices: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.mamba = TriOrientedMamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand, nslices=num_slices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        dims = x.shape[2:]
        tokens = x.reshape(b, c, -1).transpose(-1, -2)
        out = self.mamba(self.norm(tokens), nslices=dims[0])
        return out.transpose(-1, -2).reshape(b, c, *dims) + x


class MlpChannel(nn.Module):
    """1x1x1 conv MLP: C -> hidden -> C with GELU."""

    def __init__(self, hidden_size: int, mlp_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(hidden_size, mlp_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(mlp_dim, hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GSC(nn.Module):
    """Gated spatial convolution: ([conv3-IN-ReLU] x2 + conv1-IN-ReLU) -> conv1-IN-ReLU, + x."""

    def __init__(self, in_channles: int) -> None:
        super().__init__()
        c = in_channles
        self.proj, self.norm, self.nonliner = nn.Conv3d(c, c, 3, 1, 1), nn.InstanceNorm3d(c), nn.ReLU()
        self.proj2, self.norm2, self.nonliner2 = nn.Conv3d(c, c, 3, 1, 1), nn.InstanceNorm3d(c), nn.ReLU()
        self.proj3, self.norm3, self.nonliner3 = nn.Conv3d(c, c, 1, 1, 0), nn.InstanceNorm3d(c), nn.ReLU()
        self.proj4, self.norm4, self.nonliner4 = nn.Conv3d(c, c, 1, 1, 0), nn.InstanceNorm3d(c), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.nonliner(self.norm(self.proj(x)))
        x1 = self.nonliner2(self.norm2(self.proj2(x1)))
        x2 = self.nonliner3(self.norm3(self.proj3(x)))
        return self.nonliner4(self.norm4(self.proj4(x1 + x2))) + x


class MambaEncoder(nn.Module):
    """Four stages at 1/2, 1/4, 1/8, 1/16 resolution; returns the MLP-projected stage outputs."""

    def __init__(self, in_chans: int, depths: Sequence[int], dims: Sequence[int], patch_size: Sequence[int],
                 d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv3d(in_chans, dims[0], 7, stride=2, padding=3))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(nn.InstanceNorm3d(dims[i]),
                                                        nn.Conv3d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages, self.gscs, self.mlps = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(4):
            nslices = max(1, int(patch_size[0]) // 2 ** (i + 1))
            self.gscs.append(GSC(dims[i]))
            self.stages.append(nn.Sequential(*[MambaLayer(dims[i], d_state, d_conv, expand, nslices)
                                               for _ in range(depths[i])]))
        for i in range(4):
            self.add_module(f"norm{i}", nn.InstanceNorm3d(dims[i]))
            self.mlps.append(MlpChannel(dims[i], 2 * dims[i]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i in range(4):
            x = self.stages[i](self.gscs[i](self.downsample_layers[i](x)))
            outs.append(self.mlps[i](getattr(self, f"norm{i}")(x)))
        return tuple(outs)


class SegMamba(nn.Module):
    """SegMamba: Mamba encoder + UNETR-style convolutional decoder; input sides divisible by 16."""

    def __init__(self, in_chans: int = 4, out_chans: int = 3, depths: Sequence[int] = (2, 2, 2, 2),
                 feat_size: Sequence[int] = (48, 96, 192, 384), hidden_size: int = 768, norm_name: str = "instance",
                 res_block: bool = True, patch_size: Sequence[int] = (128, 128, 128), deep_supervision: bool = False,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
        super().__init__()
        f = list(feat_size)
        self.in_chans, self.out_chans, self.feat_size, self.hidden_size = in_chans, out_chans, f, hidden_size
        self.vit = MambaEncoder(in_chans, depths, f, patch_size, d_state, d_conv, expand)
        basic = dict(spatial_dims=3, kernel_size=3, stride=1, norm_name=norm_name, res_block=res_block)
        up = dict(spatial_dims=3, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name, res_block=res_block)
        self.encoder1 = UnetrBasicBlock(in_channels=in_chans, out_channels=f[0], **basic)
        self.encoder2 = UnetrBasicBlock(in_channels=f[0], out_channels=f[1], **basic)
        self.encoder3 = UnetrBasicBlock(in_channels=f[1], out_channels=f[2], **basic)
        self.encoder4 = UnetrBasicBlock(in_channels=f[2], out_channels=f[3], **basic)
        self.encoder5 = UnetrBasicBlock(in_channels=f[3], out_channels=hidden_size, **basic)
        self.decoder5 = UnetrUpBlock(in_channels=hidden_size, out_channels=f[3], **up)
        self.decoder4 = UnetrUpBlock(in_channels=f[3], out_channels=f[2], **up)
        self.decoder3 = UnetrUpBlock(in_channels=f[2], out_channels=f[1], **up)
        self.decoder2 = UnetrUpBlock(in_channels=f[1], out_channels=f[0], **up)
        self.decoder1 = UnetrBasicBlock(in_channels=f[0], out_channels=f[0], **basic)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=f[0], out_channels=out_chans)
        self.deep_supervision = deep_supervision
        self.ds_scales = [1.0, 0.5, 0.25, 0.125]
        if deep_supervision:
            self.ds_heads = nn.ModuleList([UnetOutBlock(spatial_dims=3, in_channels=c, out_channels=out_chans)
                                           for c in (f[1], f[2], f[3])])

    def forward(self, x_in: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outs = self.vit(x_in)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(outs[0])
        enc3 = self.encoder3(outs[1])
        enc4 = self.encoder4(outs[2])
        enc_hidden = self.encoder5(outs[3])
        dec3 = self.decoder5(enc_hidden, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        logits = self.out(self.decoder1(dec0))
        if not self.deep_supervision:
            return logits
        return [logits] + [head(t) for head, t in zip(self.ds_heads, (dec1, dec2, dec3))]


def build_segmamba(in_channels: int, out_channels: int, patch_size: Sequence[int], deep_supervision: bool,
                   **overrides) -> SegMamba:
    """Registry constructor; overrides: depths, feat_size, hidden_size, d_state, d_conv, expand, norm_name."""
    return SegMamba(in_chans=in_channels, out_chans=out_channels, patch_size=patch_size,
                    deep_supervision=deep_supervision, **overrides)
