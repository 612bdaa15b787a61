"""C backend of the selective scan for CPU inference: a sequential walk per (batch, channel) row with the
16 states in one SIMD vector (`c_scan_kernel.c`), rows split over threads.

Why a C kernel of our own: the recurrence is sequential along the sequence, so on a CPU the fastest
form is a tight loop per row, which PyTorch cannot express without one op per position (the `torch`
backend's chunked two-pass schedule is the best it can do), and no maintained package ships a CPU
selective scan. The source is compiled on first use with the system C compiler (`native_build`);
where none works, `is_available` says why and `auto` takes the `torch` backend.
Forward only (`FORWARD_ONLY`): `auto` never picks it when autograd records the scan, and forcing it
then raises. The kernel also takes the delta bias and softplus, the D skip and the SiLU(z) gate, and
reads bf16 rows (autocast's) as they are, so a scan is one pass over its inputs; here only B and C are
transposed to (batch, G, L, N).
"""
from __future__ import annotations

import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from BraTSMambaLib.errors import BackendUnavailableError
from BraTSMambaLib.ssm.backends.groups import common_groups
from BraTSMambaLib.ssm.ops.dispatch import records_grad

NAME = "c"
FORWARD_ONLY = True
SOURCE = Path(__file__).with_name("c_scan_kernel.c")
MAX_STATES = 64
LOG2E = 1.4426950408889634


@functools.lru_cache(maxsize=1)
def _library() -> tuple[ctypes.CDLL | None, str]:
    from BraTSMambaLib.ssm.backends.native_build import NativeBuildError, load_library

    try:
        return bind(load_library(SOURCE)), ""
    except (NativeBuildError, OSError) as e:
        return None, str(e)


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the kernel's C signature on a loaded build of `SOURCE`."""
    fn = lib.selective_scan_fwd_rows
    fn.restype = ctypes.c_int
    P, I = ctypes.c_void_p, ctypes.c_int
    fn.argtypes = [P, P, P, P, I, P, P, P, P, P, I, P] + [ctypes.c_int64] * 6
    return lib


def is_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """True on the CPU once the kernel compiles and loads here (tried once per process)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cpu":
        return False, f"runs on the CPU only (got {dev.type})"
    lib, why = _library()
    if lib is None:
        return False, f"the C kernel is not usable here: {why}"
    return True, "C kernel compiled for this CPU (forward only: inference)"


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, lib: ctypes.CDLL | None = None):
    """mamba_ssm's `selective_scan_fn` forward on the CPU (shapes and semantics: `ssm.selective_scan`);
    `lib` is another build of the kernel (`bind`), for tests of its portable path."""
    if records_grad(u, delta, A, B, C, D, z, delta_bias):
        raise BackendUnavailableError("scan backend 'c' is forward-only: use 'torch' (or auto) when training")
    if lib is None:
        lib, why = _library()
        if lib is None:
            raise BackendUnavailableError(f"scan backend 'c' is unavailable: {why}")
    b, E, L = u.shape
    N = A.shape[1]
    if N > MAX_STATES:
        raise BackendUnavailableError(f"scan backend 'c' handles at most {MAX_STATES} states (got {N})")
    Bg, Cg = common_groups(B, C)   # the kernel takes one group count
    G = Bg.shape[1]
    rows_dtype = torch.bfloat16 if all(t is None or t.dtype == torch.bfloat16 for t in (u, delta, z)) \
        else torch.float32                       # autocast's bf16 rows are read as they are, else float32
    u_, dl_ = u.to(rows_dtype).contiguous(), delta.to(rows_dtype).contiguous()
    z_ = None if z is None else z.to(rows_dtype).contiguous()
    A2 = _f32(A * LOG2E)
    Bt, Ct = _f32(Bg.transpose(-1, -2)), _f32(Cg.transpose(-1, -2))       # (b, G, L, N)
    D32 = None if D is None else _f32(D)
    bias32 = None if delta_bias is None else _f32(delta_bias)
    y = torch.empty((b, E, L), dtype=rows_dtype)
    last = torch.empty((b, E, N), dtype=torch.float32) if return_last_state else None
    args = [_ptr(u_), _ptr(dl_), _ptr(z_), _ptr(y), int(rows_dtype == torch.bfloat16), _ptr(A2), _ptr(Bt),
            _ptr(Ct), _ptr(D32), _ptr(bias32), int(bool(delta_softplus)), _ptr(last), E, L, N, G]
    _run_rows(lib.selective_scan_fwd_rows, args, b * E)
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def _run_rows(fn, args: list, rows: int) -> None:
    """fn(*args, row0, row1) over [0, rows) in one piece per thread (ctypes releases the GIL)."""
    threads = max(1, min(torch.get_num_threads(), rows))
    bounds = [rows * i // threads for i in range(threads + 1)]
    if threads == 1:
        codes = [fn(*args, 0, rows)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            codes = list(pool.map(lambda i: fn(*args, bounds[i], bounds[i + 1]), range(threads)))
    if any(codes):
        raise RuntimeError(f"the C scan kernel refused its arguments (codes {codes})")
