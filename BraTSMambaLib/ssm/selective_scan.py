"""`selective_scan`: mamba_ssm's `selective_scan_fn` with a choice of backend (mamba_ssm, cuda, triton, c, torch,
reference). `auto` takes the fastest one available for the tensors' device and the sequence length (skipping
forward-only backends when autograd records the scan); the `backend` argument or the environment variable
BRATSMAMBA_SCAN_BACKEND forces one, and a forced backend that cannot run raises `BackendUnavailableError`
with the reason: there is never a silent fallback.
"""
from __future__ import annotations

import os

import torch

from BraTSMambaLib.errors import BackendUnavailableError
from BraTSMambaLib.ssm.backends import MODULES, load
from BraTSMambaLib.ssm.ops.dispatch import records_grad

ENV_VAR = "BRATSMAMBA_SCAN_BACKEND"
BACKENDS: tuple[str, ...] = tuple(MODULES)
#: Preference order for `auto`, per device type; the first available wins.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("mamba_ssm", "triton", "cuda", "torch"), "cpu": ("c", "torch")}
AUTO_DEFAULT: tuple[str, ...] = ("torch",)
#: On CUDA at inference, sequences at least this long go to the `cuda` backend first: its rows kernel was
#: 1.9x Triton's scan at SegMamba's stage 0 (L = 262144) and 1.7x at stage 1 (32768) on an H200, and
#: slower than Triton's at 4096 and below (docs/performance.md).
LONG_SEQUENCE = 16384


def auto_order(device_type: str, length: int | None = None, *, needs_grad: bool = False) -> tuple[str, ...]:
    """The backends `auto` tries on a device type, in order, for a scan of `length` positions."""
    order = AUTO_ORDER.get(device_type, AUTO_DEFAULT)
    if device_type == "cuda" and not needs_grad and length is not None and length >= LONG_SEQUENCE:
        order = ("cuda", *(c for c in order if c != "cuda"))
    return order


def backend_status(name: str, device: torch.device | str) -> tuple[bool, str]:
    """(available, reason) for backend `name` on `device`."""
    if name not in MODULES:
        raise BackendUnavailableError(f"unknown scan backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    mod, why = load(name)
    if mod is None:
        return False, why
    try:
        ok, reason = mod.is_available(torch.device(device))
    except Exception as e:
        return False, f"availability check failed: {type(e).__name__}: {e}".splitlines()[0]
    return bool(ok), str(reason)


def requested_backend(backend: str | None = "auto") -> str:
    """The backend asked for: the argument unless it is `auto`/None, else the environment variable, else auto."""
    name = (backend or "auto").strip().lower()
    if name == "auto":
        name = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if name != "auto" and name not in MODULES:
        raise BackendUnavailableError(
            f"unknown scan backend {name!r} (argument or {ENV_VAR}); choose one of auto, {', '.join(BACKENDS)}")
    return name


def forward_only(name: str) -> bool:
    """True for a backend without a backward pass (it serves inference only)."""
    mod, _ = load(name)
    return bool(getattr(mod, "FORWARD_ONLY", False))


def resolve_backend(backend: str | None, device: torch.device | str, *, needs_grad: bool = False,
                    length: int | None = None) -> str:
    """Name of the backend that will run on `device` (one with a backward pass if `needs_grad`) for a scan
    of `length` positions (None: any); raises BackendUnavailableError when it cannot."""
    device = torch.device(device)
    name = requested_backend(backend)
    if name == "auto":
        reasons = []
        for cand in auto_order(device.type, length, needs_grad=needs_grad):
            if needs_grad and forward_only(cand):
                reasons.append(f"{cand}: forward only")
                continue
            ok, why = backend_status(cand, device)
            if ok:
                return cand
            reasons.append(f"{cand}: {why}")
        raise BackendUnavailableError(f"no scan backend available on {device}: " + "; ".join(reasons))
    ok, why = backend_status(name, device)
    if not ok:
        raise BackendUnavailableError(f"scan backend {name!r} is unavailable on {device}: {why}")
    if needs_grad and forward_only(name):
        raise BackendUnavailableError(f"scan backend {name!r} is forward-only (inference); this scan needs "
                                      "gradients: use auto or torch")
    return name


def _check(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, E, L), got {tuple(u.shape)}")
    b, E, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta {tuple(delta.shape)} must match u {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != E or A.is_complex():
        raise ValueError(f"selective_scan: A must be real (E={E}, N), got {tuple(A.shape)} {A.dtype}")
    N = A.shape[1]
    for nm, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = t.shape == (b, N, L)
        elif t.dim() == 4:
            ok = t.shape[0] == b and t.shape[2:] == (N, L) and t.shape[1] >= 1 and E % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(f"selective_scan: {nm} must be (batch, N, L) = {(b, N, L)} or (batch, G, N, L) "
                             f"with E={E} divisible by G, got {tuple(t.shape)}")
    for nm, t, shape in (("D", D, (E,)), ("delta_bias", delta_bias, (E,)), ("z", z, (b, E, L))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {nm} must be {shape}, got {tuple(t.shape)}")


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, *, backend: str | None = "auto"):
    """Selective scan with mamba_ssm's `selective_scan_fn` semantics.

    u, delta: (batch, E, L); A: (E, N) real; B, C: (batch, N, L) or grouped (batch, G, N, L), G | E;
    D, delta_bias: (E,); z: (batch, E, L). delta' = softplus(delta + delta_bias) if delta_softplus;
    h_t = exp(delta'_t A) h_{t-1} + delta'_t B_t u_t (float32), y_t = C_t . h_t + D u_t, y * silu(z).
    Returns y in u's dtype, and (y, last_state (batch, E, N) float32) if return_last_state.
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device, needs_grad=records_grad(u, delta, A, B, C, D, z, delta_bias),
                           length=u.shape[-1])
    mod, _ = load(name)
    return mod.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                              delta_softplus=delta_softplus, return_last_state=return_last_state)
