"""Selective scan and Mamba layers that run everywhere: mamba_ssm's CUDA kernel when present, our Triton
kernel on CUDA GPUs, a pure-PyTorch path on CPU and Apple GPUs (see docs/ssm.md).

Importing this package imports neither mamba_ssm nor triton; backends load on first use.
"""
from BraTSMambaLib.errors import BackendUnavailableError
from BraTSMambaLib.ssm.modules.mamba import Mamba
from BraTSMambaLib.ssm.modules.ss3d import SS3D, cross_merge_3d, cross_scan_3d
from BraTSMambaLib.ssm.modules.tri_oriented import TriOrientedMamba
from BraTSMambaLib.ssm.selective_scan import (BACKENDS, ENV_VAR, backend_status, resolve_backend,
                                              selective_scan)

__all__ = ["selective_scan", "Mamba", "TriOrientedMamba", "SS3D", "cross_scan_3d", "cross_merge_3d",
           "BackendUnavailableError", "BACKENDS",
           "ENV_VAR", "backend_status", "resolve_backend"]
