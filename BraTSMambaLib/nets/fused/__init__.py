"""Inference-time fusion for channels_last_3d networks on CUDA: instance norm + residual add +
activation in one pass, layer norm over narrow rows in one pass (Triton); same parameters and
state-dict keys as the unfused model."""
from BraTSMambaLib.nets.fused.blocks import FusedInstanceNorm3d, FusedLayerNorm, fuse_norms, is_fused

__all__ = ["FusedInstanceNorm3d", "FusedLayerNorm", "fuse_norms", "is_fused"]
