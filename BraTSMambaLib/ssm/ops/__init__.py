"""Fused ops of the Mamba layers around the scan: causal depthwise conv1d + SiLU (`causal_conv1d_silu`) and
the tri-orientated layer's gated sum of its three scans (`gate_sum`), and its three scans at once on CUDA side
streams (`concurrently`). Triton kernels on CUDA when no
gradient is recorded, the PyTorch formula otherwise. Importing this package does not import triton.
"""
from BraTSMambaLib.ssm.ops.causal_conv1d import (causal_conv1d_silu, causal_conv1d_silu_torch,
                                                 causal_conv1d_silu_triton, conv_parameters)
from BraTSMambaLib.ssm.ops.orders import ORDERS, from_order, to_order
from BraTSMambaLib.ssm.ops.streams import concurrently
from BraTSMambaLib.ssm.ops.tri_gate import gate_sum, gate_sum_torch, gate_sum_triton

__all__ = ["concurrently", "causal_conv1d_silu", "causal_conv1d_silu_torch", "causal_conv1d_silu_triton", "conv_parameters",
           "gate_sum", "gate_sum_torch", "gate_sum_triton", "ORDERS", "from_order", "to_order"]
