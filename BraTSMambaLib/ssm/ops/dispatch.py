"""When the layer ops run their Triton kernels: CUDA tensors, a working triton, no gradient wanted.

The kernels are forward-only, so whenever autograd would record the op (grad mode on and an input that
requires grad) the PyTorch formula runs instead and training keeps its gradients. BRATSMAMBA_LAYER_KERNELS=torch
turns the kernels off (comparisons, debugging); the default is auto.
"""
from __future__ import annotations

import functools

import torch

from BraTSMambaLib.ssm.settings import env_choice

ENV_VAR = "BRATSMAMBA_LAYER_KERNELS"


@functools.lru_cache(maxsize=8)
def triton_status(device: torch.device) -> tuple[bool, str]:
    """(usable, reason) for the Triton layer kernels on `device` (cached per device)."""
    if device.type != "cuda":
        return False, f"needs a CUDA device (got {device.type})"
    if not torch.cuda.is_available():
        return False, "torch reports no usable CUDA device"
    try:
        import triton

        from BraTSMambaLib.ssm.ops import kernels  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import or driver failure means "not usable"
        return False, f"triton is not usable: {type(e).__name__}: {e}".splitlines()[0]
    major, minor = torch.cuda.get_device_capability(device)
    if major < 7:
        return False, f"triton needs compute capability >= 7.0 (device has {major}.{minor})"
    return True, f"triton {triton.__version__}"


def kernels_enabled() -> bool:
    """False when BRATSMAMBA_LAYER_KERNELS=torch; ValueError for an unknown value."""
    return env_choice(ENV_VAR, ("auto", "torch"), "auto") == "auto"


def records_grad(*tensors: torch.Tensor | None) -> bool:
    """True when autograd would record an op on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def use_triton(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether an op on x (and `others`) should run its Triton kernel."""
    if x.device.type != "cuda" or records_grad(x, *others) or not kernels_enabled():
        return False
    return triton_status(x.device)[0]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an autocast-eligible op (conv, matmul) runs in for x: autocast's when it is on."""
    dev = x.device.type
    if x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype
