"""mamba_ssm's compiled CUDA kernel (`selective_scan_fn`), used only when it imports and tensors are on CUDA.

mamba_ssm imports its compiled extension unconditionally, so it is imported lazily, here, on first use.
"""
from __future__ import annotations

import functools

import torch

NAME = "mamba_ssm"


@functools.lru_cache(maxsize=1)
def _import() -> tuple[object | None, str]:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:  # ImportError, OSError (bad .so), RuntimeError (CUDA mismatch)
        return None, f"mamba_ssm does not import: {type(e).__name__}: {e}".splitlines()[0]
    return selective_scan_fn, "mamba_ssm " + _version()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mamba_ssm")
    except Exception:
        return "(version unknown)"


def is_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """True only for a CUDA device and an importable mamba_ssm (with its compiled kernel)."""
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda":
        return False, "mamba_ssm's kernel needs CUDA tensors"
    fn, reason = _import()
    return fn is not None, reason


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Call mamba_ssm's `selective_scan_fn` unchanged."""
    fn, reason = _import()
    if fn is None:
        from BraTSMambaLib.errors import BackendUnavailableError

        raise BackendUnavailableError(f"scan backend 'mamba_ssm' is unavailable: {reason}")
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
