"""A strided convolution over few input channels (SegMamba's stem: 4 -> 48, kernel 7, stride 2) as a
stride-1 convolution over a space-to-depth view of its input.

cuDNN runs convolutions with 4 input channels at about 35 TFLOP/s on the H200 (every layout, also with
the channels zero-padded to 8). Moving each 2x2x2 block of voxels into channels gives 32 input channels
and a 4x4x4 kernel (the 7-tap kernel zero-padded to 8 taps and split into 4 blocks of 2), stride 1, no
padding: the same sums, in an operand shape the tensor-core kernels suit.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _applies(conv: nn.Conv3d) -> bool:
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    return (conv.in_channels <= 8 and conv.groups == 1 and all(v == 2 for v in s) and all(d == 1 for d in conv.dilation)
            and isinstance(p, tuple) and all(kk % 2 == 1 and pp == kk // 2 for kk, pp in zip(k, p)))


def s2d_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, k, k, k) stride-2 weight (k odd) -> (K, 8C, (k+1)/2, ...) for the space-to-depth input."""
    kout, c, kd, kh, kw = weight.shape
    w = F.pad(weight, (0, 1, 0, 1, 0, 1))
    a = [(kd + 1) // 2, (kh + 1) // 2, (kw + 1) // 2]
    w = w.view(kout, c, a[0], 2, a[1], 2, a[2], 2).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return w.reshape(kout, c * 8, *a)


def space_to_depth(x: torch.Tensor, padding: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad (N, C, D, H, W) by `padding` before and enough after to even sides, then move each
    2x2x2 block into channels: (N, 8C, D'/2, H'/2, W'/2), channels_last_3d."""
    n, c = x.shape[:2]
    pads = []
    for size, p in zip(reversed(x.shape[2:]), reversed(padding)):
        total = size + 2 * p
        pads += [p, p + total % 2]
    x = F.pad(x, pads)
    d, h, w = (s // 2 for s in x.shape[2:])
    x = x.view(n, c, d, 2, h, 2, w, 2).permute(0, 2, 4, 6, 1, 3, 5, 7)   # N, D, H, W, C, rd, rh, rw
    return x.reshape(n, d, h, w, c * 8).permute(0, 4, 1, 2, 3)            # NCDHW view of NDHWC memory


class SpaceToDepthConv3d(nn.Conv3d):
    """nn.Conv3d (stride 2, odd kernel, 'same' padding, <= 8 input channels) that runs as a stride-1
    convolution on a space-to-depth view on CUDA without gradients; elsewhere the plain convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_cuda and x.dim() == 5 and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return super().forward(x)
        cache = getattr(self, "_s2d_cache", None)
        key = (self.weight._version, self.weight.dtype, self.weight.data_ptr())
        if cache is None or cache[0] != key:
            w = s2d_weight(self.weight.detach()).contiguous(memory_format=torch.channels_last_3d)
            cache = self._s2d_cache = (key, w)
        out = F.conv3d(space_to_depth(x.to(cache[1].dtype), self.padding), cache[1], self.bias)
        d, h, w = ((s + 2 * p - k) // 2 + 1 for s, p, k in zip(x.shape[2:], self.padding, self.kernel_size))
        return out[:, :, :d, :h, :w]


def use_space_to_depth(model: nn.Module) -> nn.Module:
    """In place: every plain nn.Conv3d the space-to-depth form applies to becomes a SpaceToDepthConv3d."""
    for module in model.modules():
        if type(module) is nn.Conv3d and _applies(module):
            module.__class__ = SpaceToDepthConv3d
    return model
