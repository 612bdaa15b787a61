"""Inference-time rewrites of networks for CUDA, each exact and keeping the parameters and state-dict keys:
instance norm + residual add + activation in one pass and layer norm over narrow rows in one pass
(Triton, `blocks`), the UNETR decoder's skip concatenation as one vectorised copy (`concat_kernel`),
SegMamba's full-resolution 3x3x3 convolutions in kernels of our own that also write the next norm's
statistics (`conv3d_kernels`), and a few-channel strided convolution as a space-to-depth convolution
(`space_to_depth`). Off CUDA, or when
gradients are needed, every module runs its original code."""
from torch import nn

from BraTSMambaLib.nets.fused.blocks import (FusedInstanceNorm3d, FusedLayerNorm, fuse_norms, is_fused,
                                             kernels_available)
from BraTSMambaLib.nets.fused.space_to_depth import SpaceToDepthConv3d, use_space_to_depth


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """All rewrites of this package, in place (for channels_last_3d networks on CUDA); returns the model."""
    return use_space_to_depth(fuse_norms(model))


__all__ = ["FusedInstanceNorm3d", "FusedLayerNorm", "SpaceToDepthConv3d", "fuse_for_inference", "fuse_norms",
           "is_fused", "kernels_available", "use_space_to_depth"]
