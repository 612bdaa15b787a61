"""nnU-Net-style residual encoder/decoder blocks with U-Mamba's module layout.

U-Mamba (bowang-lab/U-Mamba, `UMamba{Bot,Enc}_3d.py`) defines its own `BasicResBlock`,
`UpsampleLayer`, `UNetResEncoder` and `UNetResDecoder` around dynamic_network_architectures'
`BasicBlockD`. These are written to produce the same state-dict keys and shapes, so U-Mamba
checkpoints (`checkpoint_final.pth['network_weights']`) load with `strict=True`; `BasicBlockD`
itself is reused from the installed library. The decoder keeps a reference to the encoder (as
upstream and nnU-Net do), which is why encoder keys also appear under `decoder.encoder.*`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from dynamic_network_architectures.building_blocks.helper import maybe_convert_scalar_to_list
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from torch import nn
from torch.nn import functional as F


class BasicResBlock(nn.Module):
    """conv-norm-act-conv-norm + (1x1 projected) residual, then act; convs carry a bias."""

    def __init__(self, conv_op: type[nn.Module], input_channels: int, output_channels: int,
                 norm_op: type[nn.Module], norm_op_kwargs: dict, kernel_size: Sequence[int] | int = 3,
                 padding: Sequence[int] | int = 1, stride: Sequence[int] | int = 1, use_1x1conv: bool = False,
                 nonlin: type[nn.Module] = nn.LeakyReLU, nonlin_kwargs: dict | None = None) -> None:
        super().__init__()
        nonlin_kwargs = {"inplace": True} if nonlin_kwargs is None else nonlin_kwargs
        self.conv1 = conv_op(input_channels, output_channels, kernel_size, stride=stride, padding=padding)
        self.norm1 = norm_op(output_channels, **norm_op_kwargs)
        self.act1 = nonlin(**nonlin_kwargs)
        self.conv2 = conv_op(output_channels, output_channels, kernel_size, padding=padding)
        self.norm2 = norm_op(output_channels, **norm_op_kwargs)
        self.act2 = nonlin(**nonlin_kwargs)
        self.conv3 = conv_op(input_channels, output_channels, kernel_size=1, stride=stride) if use_1x1conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return self.act2(y + x)


class UpsampleLayer(nn.Module):
    """Nearest-neighbour upsampling by the stage stride, then a 1x1 conv to the skip's width."""

    def __init__(self, conv_op: type[nn.Module], input_channels: int, output_channels: int,
                 pool_op_kernel_size: Sequence[int], mode: str = "nearest") -> None:
        super().__init__()
        self.conv = conv_op(input_channels, output_channels, kernel_size=1)
        self.pool_op_kernel_size = [float(s) for s in pool_op_kernel_size]
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.pool_op_kernel_size, mode=self.mode))


def _res_stage(conv_op, in_ch: int, out_ch: int, kernel, pad, stride, n_blocks: int, conv_bias: bool,
               norm_op, norm_op_kwargs, nonlin, nonlin_kwargs) -> nn.Sequential:
    """One U-Mamba stage: a BasicResBlock (strided, projected) then n_blocks-1 BasicBlockD."""
    return nn.Sequential(
        BasicResBlock(conv_op, in_ch, out_ch, norm_op, norm_op_kwargs, kernel_size=kernel, padding=pad,
                      stride=stride, use_1x1conv=True, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs),
        *[BasicBlockD(conv_op, out_ch, out_ch, kernel, 1, conv_bias, norm_op, norm_op_kwargs,
                      nonlin=nonlin, nonlin_kwargs=nonlin_kwargs) for _ in range(n_blocks - 1)],
    )


class UNetResEncoder(nn.Module):
    """Residual encoder: a stem stage at full resolution, then one stage per resolution level.

    Returns the list of stage outputs (skips), deepest last. `stages` is a ModuleList, which
    gives the same keys (`stages.<s>.<b>.*`) as upstream's Sequential.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: Sequence[int],
                 conv_op: type[nn.Module], kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                 n_blocks_per_stage: Sequence[int], conv_bias: bool = True,
                 norm_op: type[nn.Module] = nn.InstanceNorm3d, norm_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] = nn.LeakyReLU,
                 nonlin_kwargs: dict | None = None) -> None:
        super().__init__()
        norm_op_kwargs = {"eps": 1e-5, "affine": True} if norm_op_kwargs is None else norm_op_kwargs
        nonlin_kwargs = {"inplace": True} if nonlin_kwargs is None else nonlin_kwargs
        kernel_sizes = [maybe_convert_scalar_to_list(conv_op, k) for k in kernel_sizes]
        self.conv_pad_sizes = [[k // 2 for k in krnl] for krnl in kernel_sizes]
        args = (conv_bias, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs)
        f0 = features_per_stage[0]
        self.stem = _res_stage(conv_op, input_channels, f0, kernel_sizes[0], self.conv_pad_sizes[0], 1,
                               n_blocks_per_stage[0], *args)
        stages, in_ch = [], f0
        for s in range(n_stages):
            stages.append(_res_stage(conv_op, in_ch, features_per_stage[s], kernel_sizes[s], self.conv_pad_sizes[s],
                                     strides[s], n_blocks_per_stage[s], *args))
            in_ch = features_per_stage[s]
        self.stages = nn.ModuleList(stages)
        self.output_channels = list(features_per_stage)
        self.strides = [maybe_convert_scalar_to_list(conv_op, s) for s in strides]
        self.conv_op, self.norm_op, self.norm_op_kwargs = conv_op, norm_op, norm_op_kwargs
        self.nonlin, self.nonlin_kwargs = nonlin, nonlin_kwargs
        self.conv_bias, self.kernel_sizes = conv_bias, kernel_sizes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class UNetResDecoder(nn.Module):
    """Upsample + concatenate skip + residual stage per level, a 1x1 seg head per level.

    With `deep_supervision` it returns one logit map per level, highest resolution first
    (nnU-Net's convention); otherwise only the full-resolution map.
    """

    def __init__(self, encoder: UNetResEncoder, num_classes: int, n_conv_per_stage: Sequence[int],
                 deep_supervision: bool) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.encoder = encoder
        self.num_classes = num_classes
        n = len(encoder.output_channels)
        stages, ups, segs = [], [], []
        for s in range(1, n):
            below, skip = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            ups.append(UpsampleLayer(encoder.conv_op, below, skip, encoder.strides[-s]))
            stages.append(_res_stage(encoder.conv_op, 2 * skip, skip, encoder.kernel_sizes[-(s + 1)],
                                     encoder.conv_pad_sizes[-(s + 1)], 1, n_conv_per_stage[s - 1], encoder.conv_bias,
                                     encoder.norm_op, encoder.norm_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs))
            segs.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.upsample_layers = nn.ModuleList(ups)
        self.seg_layers = nn.ModuleList(segs)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        for s, stage in enumerate(self.stages):
            x = stage(torch.cat((self.upsample_layers[s](x), skips[-(s + 2)]), 1))
            if self.deep_supervision:
                outputs.append(self.seg_layers[s](x))
            elif s == len(self.stages) - 1:
                outputs.append(self.seg_layers[-1](x))
        outputs = outputs[::-1]
        return outputs if self.deep_supervision else outputs[0]
