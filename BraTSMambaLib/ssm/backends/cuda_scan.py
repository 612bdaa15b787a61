"""CUDA backend of the selective scan for GPU inference, compiled at run time by NVRTC: two kernels of
`cuda_scan_kernel.cu`, chosen by sequence length (`kernel_kind`).

Why kernels of our own beside the Triton one: on SegMamba's long sequences the rows kernel is about twice as
fast as our Triton kernel (on an H200, stage 0 at batch 8: 3.2-3.8 ms against 7.6-8.0), so `auto` takes this
backend for inference scans of `selective_scan.LONG_SEQUENCE` positions or more; and PyTorch's Windows and
some Linux CUDA builds come without Triton, where the GPU scan would otherwise fall back to the `torch`
backend's chunked formula. The kernels need only what PyTorch's CUDA wheels ship: NVRTC compiles them on
first use (no toolkit, no build step; `nvrtc_build`), the driver loads them.

* `scan_rows` (long sequences): a thread per (row, chunk) walks its row alone with the row's states in
  registers: per position one softplus, per state one ex2.approx and two FMAs, B and C of a step of
  positions staged once per block in shared memory, u/delta/out moved as 16-byte words. Rows are cut into
  chunks until the blocks fill `ROWS_WAVES` whole waves (the driver's occupancy calculator says how many
  blocks fit on a multiprocessor).
* `scan_fwd` (short sequences): a lane per (row, state); each block of 16 positions loaded once (the next
  block's loads issued first), a transposed butterfly over the lanes gives each lane the output of one
  position; for bf16 B and C the rows of a block share them through shared memory.

Both cut rows into chunks when there are too few to fill the GPU: a state-only pass, a join of the chunks'
states (`join_chunks`), then the output pass. Forward only (`FORWARD_ONLY`): `auto` never picks this backend
when autograd records the scan, and forcing it then raises. Up to 32 states (a state count that is not a
power of two is padded with zero states).
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from BraTSMambaLib.errors import BackendUnavailableError
from BraTSMambaLib.ssm.backends.groups import common_groups
from BraTSMambaLib.ssm.ops.dispatch import records_grad
from BraTSMambaLib.ssm.settings import env_choice, env_int, env_switch

NAME = "cuda"
FORWARD_ONLY = True
SOURCE = Path(__file__).with_name("cuda_scan_kernel.cu")
MAX_STATES = 32
LOG2E = 1.4426950408889634
#: Launch settings, overridable for benchmarks: warps per thread block (BRATSMAMBA_SCAN_CUDA_WARPS), the
#: lanes (rows x states) below which rows are cut into chunks (24 warps on each of an H200's 132 SMs: one
#: sequential lane needs several warps beside it to hide its latencies), the shortest chunk, and a forced
#: number of chunks per row (BRATSMAMBA_SCAN_CUDA_CHUNKS, default auto). Cutting costs one state-only pass
#: over the sequence whatever the number of chunks.
WARPS, SHARED_WARPS = 1, 8
FILL_LANES = 132 * 24 * 32
MIN_CHUNK = 512
WARPS_ENV, CHUNKS_ENV, SHARE_ENV = "BRATSMAMBA_SCAN_CUDA_WARPS", "BRATSMAMBA_SCAN_CUDA_CHUNKS", "BRATSMAMBA_SCAN_CUDA_SHARE"
#: Which kernel: "rows" (`scan_rows`: a thread per row and chunk, its states in registers), "lanes"
#: (`scan_fwd`: a lane per row and state), or "auto" (BRATSMAMBA_SCAN_CUDA_KERNEL unset): rows for sequences of
#: ROWS_MIN_LENGTH positions or more, lanes below. On an H200 at SegMamba's shapes (batch 8, bf16) rows took
#: 3.2-3.8 ms at L = 262144 against lanes' 7.3-7.6, 1.1-1.5 against 1.8-2.2 at 32768, about the same at 4096,
#: and 0.6-1.0 against 0.4-0.6 at 512 (docs/performance.md).
KERNEL_ENV, KERNELS = "BRATSMAMBA_SCAN_CUDA_KERNEL", ("auto", "rows", "lanes")
ROWS_MIN_LENGTH = 16384
#: The rows kernel's rows are cut into chunks until its blocks fill ROWS_WAVES whole waves of the GPU (a
#: partial last wave left SMs idle: 4.15 ms at stage 0 with 1.33 waves, 3.69 ms with 2), chunks no shorter
#: than ROWS_MIN_CHUNK positions.
ROWS_WAVES, ROWS_MIN_CHUNK, ROWS_STEP = 2, 64, 16
#: Positions a thread of the rows kernel loads and walks per step (8, 16 or 32; BRATSMAMBA_SCAN_CUDA_STEP for
#: benchmarks): 16 loads 32 bytes of a bf16 row at a time.
STEP_ENV, STEPS = "BRATSMAMBA_SCAN_CUDA_STEP", (8, 16, 32)
ROWS_MIN_THREADS, ROWS_MAX_THREADS = 64, 128
#: Blocks of ROWS_MAX_THREADS the rows kernel is compiled to fit on one multiprocessor (its register budget:
#: 3 gives 168 registers a thread, no spills at 16 states); BRATSMAMBA_SCAN_CUDA_MIN_BLOCKS for benchmarks.
ROWS_MIN_BLOCKS, MIN_BLOCKS_ENV = 3, "BRATSMAMBA_SCAN_CUDA_MIN_BLOCKS"
_TYPES = {torch.float32: "float", torch.bfloat16: "bf16", torch.float16: "f16"}


def rows_step() -> int:
    """Positions per step of the rows kernel (ROWS_STEP unless BRATSMAMBA_SCAN_CUDA_STEP sets one of STEPS)."""
    step = env_int(STEP_ENV, ROWS_STEP)
    if step not in STEPS:
        raise ValueError(f"{STEP_ENV}={step}: expected one of {', '.join(map(str, STEPS))}")
    return step


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def is_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """True on a CUDA device of compute capability >= 8.0 where NVRTC compiles and the driver loads the
    kernel (tried once per device and process)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda":
        return False, f"needs a CUDA device (got {dev.type})"
    if not torch.cuda.is_available():
        return False, "torch reports no usable CUDA device"
    return _probe(dev.index if dev.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=8)
def _probe(index: int) -> tuple[bool, str]:
    from BraTSMambaLib.ssm.backends.nvrtc_build import NvrtcError

    major, minor = torch.cuda.get_device_capability(index)
    if major < 8:
        return False, f"needs compute capability >= 8.0 (device has {major}.{minor})"
    try:
        _kernel(_defines(16, (torch.bfloat16,) * 6, True, True, True, True, (True, True), False, False, False),
                torch.device("cuda", index))
    except (NvrtcError, OSError, RuntimeError) as e:
        return False, f"the CUDA kernel is not usable here: {e}".splitlines()[0]
    return True, f"NVRTC-compiled kernel on {torch.cuda.get_device_name(index)} (forward only: inference)"


def _defines(ns: int, dtypes: tuple[torch.dtype, ...], has_d: bool, has_z: bool, has_bias: bool,
             softplus: bool, vec: tuple[bool, bool], state_only: bool, has_hinit: bool, write_last: bool,
             warps: int = WARPS, share: bool = False) -> dict[str, str]:
    u, dt, z, out, b, c = (_TYPES[t] for t in dtypes)
    flags = {"HAS_D": has_d, "HAS_Z": has_z, "HAS_BIAS": has_bias, "SOFTPLUS": softplus, "VEC_B": vec[0],
             "VEC_C": vec[1], "SHARE_BC": share, "STATE_ONLY": state_only, "HAS_HINIT": has_hinit, "WRITE_LAST": write_last}
    return {"NS": str(ns), "WARPS": str(warps), "ROWS_MIN_THREADS": str(ROWS_MIN_THREADS),
            "ROWS_MAX_THREADS": str(ROWS_MAX_THREADS), "RP": str(rows_step()),
            "ROWS_MIN_BLOCKS": str(env_int(MIN_BLOCKS_ENV, ROWS_MIN_BLOCKS)), "T_U": u, "T_DT": dt, "T_Z": z, "T_OUT": out, "T_B": b, "T_C": c,
            **{k: str(int(v)) for k, v in flags.items()}}


def _kernel(defines: dict[str, str], device: torch.device, name: str = "scan_fwd"):
    from BraTSMambaLib.ssm.backends.nvrtc_build import kernel

    return kernel(SOURCE, defines, name, device)


def _rows_dtype(t: torch.Tensor) -> torch.Tensor:
    """t with a dtype the kernel reads (fp32/bf16/fp16, else fp32) and a contiguous last dimension."""
    if t.dtype not in _TYPES:
        t = t.float()
    return t if t.stride(-1) == 1 else t.contiguous()


def _vectorisable(t: torch.Tensor, ns: int) -> bool:
    """Whether NS consecutive positions of every state row of t are whole 16-byte words."""
    size = t.element_size()
    return (ns * size) % 16 == 0 and t.data_ptr() % 16 == 0 and all((s * size) % 16 == 0 for s in t.stride()[:-1])


def _grouped(B: torch.Tensor, C: torch.Tensor, ns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B and C as (batch, G, NS, L) with one group count, states padded with zeros to NS."""
    Bg, Cg = common_groups(B, C)
    pad = ns - Bg.shape[2]
    if pad:
        Bg = torch.nn.functional.pad(Bg, (0, 0, 0, pad))
        Cg = torch.nn.functional.pad(Cg, (0, 0, 0, pad))
    return _rows_dtype(Bg), _rows_dtype(Cg)


def _launch_shape(ns: int, E: int, G: int, Bg: torch.Tensor, Cg: torch.Tensor, vec: tuple[bool, bool]
                  ) -> tuple[int, bool]:
    """(warps per block, whether the block shares B and C through shared memory). Sharing needs every
    row of a block in one batch and group, 16-byte rows and a thread per word of a block of positions;
    it is taken for bf16 B and C (autocast's, the case measured and tested on a GPU), per-lane loads
    otherwise. BRATSMAMBA_SCAN_CUDA_SHARE=0 turns it off, BRATSMAMBA_SCAN_CUDA_WARPS sets the warps."""
    words = ns * ns * (Bg.element_size() + Cg.element_size()) // 16
    forced = env_int(WARPS_ENV, None)
    warps = forced or SHARED_WARPS
    if forced is not None and warps > 32:
        raise ValueError(f"{WARPS_ENV}={warps}: at most 32 warps per block")
    share = (env_switch(SHARE_ENV) and all(vec) and Bg.dtype == Cg.dtype == torch.bfloat16 and 2 * ns >= 16
             and 32 * warps >= words and (E // G) % (warps * (32 // ns)) == 0)
    return (warps if share or forced is not None else WARPS), share


def kernel_kind(length: int) -> str:
    """"rows" or "lanes" for a scan of `length` positions: BRATSMAMBA_SCAN_CUDA_KERNEL's, or by length (auto)."""
    v = env_choice(KERNEL_ENV, KERNELS, "auto")
    if v == "auto":
        return "rows" if length >= ROWS_MIN_LENGTH else "lanes"
    return v


def _rows_threads(egroup: int) -> int:
    """Threads per block of the rows kernel (one per row of one batch and B/C group): the largest
    multiple of 32 in [ROWS_MIN_THREADS, ROWS_MAX_THREADS] dividing the group's rows, else the group
    rounded up to 32 within those bounds (the kernel stages B and C with at least ROWS_MIN_THREADS)."""
    for t in range(ROWS_MAX_THREADS, ROWS_MIN_THREADS - 1, -32):
        if egroup % t == 0:
            return t
    return min(ROWS_MAX_THREADS, max(ROWS_MIN_THREADS, -(-egroup // 32) * 32))


def _rows_chunks(blocks_per_chunk: int, wave: int, L: int) -> int:
    """Chunks per row for the rows kernel: its grid (`blocks_per_chunk` blocks per chunk) made ROWS_WAVES
    waves of `wave` resident blocks, none shorter than ROWS_MIN_CHUNK (or BRATSMAMBA_SCAN_CUDA_CHUNKS);
    one when the rows alone fill a wave."""
    forced = env_int(CHUNKS_ENV, None, auto=True)
    if forced is not None:
        return max(1, min(forced, -(-L // rows_step())))
    if blocks_per_chunk >= wave:
        return 1
    return max(1, min(-(-ROWS_WAVES * wave // blocks_per_chunk), L // ROWS_MIN_CHUNK))


def _chunks(rows: int, ns: int, L: int) -> int:
    """Chunks per row: 1 when rows x lanes fill the GPU, else enough to fill it with >= MIN_CHUNK positions
    (or BRATSMAMBA_SCAN_CUDA_CHUNKS)."""
    forced = env_int(CHUNKS_ENV, None, auto=True)
    if forced is not None:
        return max(1, min(forced, -(-L // ns)))
    lanes = rows * ns
    if lanes >= FILL_LANES or L < 2 * MIN_CHUNK:
        return 1
    return max(1, min(-(-FILL_LANES // lanes), L // MIN_CHUNK))


def _rows_launch(b: int, E: int, G: int, L: int, device: torch.device, chunked_defines: dict[str, str],
                 row_tensors: tuple) -> tuple[str, tuple, tuple, int, list]:
    """(kernel name, grid, block, chunk length, extra arguments) of the rows kernel: a block per batch, B/C
    group and ROWS_MAX_THREADS rows of it; chunks from the output pass's occupancy (`chunked_defines`).
    `row_tensors` (u, delta, out, z or None) decide the 16-byte loads and stores."""
    from BraTSMambaLib.ssm.backends.nvrtc_build import resident_blocks

    threads = _rows_threads(E // G)
    per_chunk = b * G * -(-(E // G) // threads)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    wave = sms * resident_blocks(_kernel(chunked_defines, device, "scan_rows"), threads)
    nchunks = _rows_chunks(per_chunk, wave, L)
    step = rows_step()
    chunk_len = -(-(-(-L // nchunks)) // step) * step
    vec_rows = all(_vectorisable(t, step) for t in row_tensors if t is not None)
    return "scan_rows", (per_chunk, -(-L // chunk_len), 1), (threads, 1, 1), chunk_len, [ctypes.c_int(int(vec_rows))]


def _i(*vals: int) -> list[ctypes.c_longlong]:
    return [ctypes.c_longlong(int(v)) for v in vals]


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """mamba_ssm's `selective_scan_fn` forward on the GPU (shapes and semantics: `ssm.selective_scan`)."""
    from BraTSMambaLib.ssm.backends.nvrtc_build import NvrtcError, launch
    from BraTSMambaLib.ssm.backends.nvrtc_build import pointer as _p

    if records_grad(u, delta, A, B, C, D, z, delta_bias):
        raise BackendUnavailableError("scan backend 'cuda' is forward-only: use 'triton' (or auto) when training")
    b, E, L = u.shape
    N = A.shape[1]
    if N > MAX_STATES:
        raise BackendUnavailableError(f"scan backend 'cuda' handles at most {MAX_STATES} states (got {N})")
    kind = kernel_kind(L)
    ns = max(4 if kind == "rows" else 2, _next_pow2(N))
    out = torch.empty((b, E, L), dtype=u.dtype if u.dtype in _TYPES else torch.float32, device=u.device)
    last = torch.zeros((b, E, ns), dtype=torch.float32, device=u.device) if return_last_state else None
    if out.numel() == 0:
        return (out.to(u.dtype), last[..., :N]) if return_last_state else out.to(u.dtype)
    u_, dt_ = _rows_dtype(u), _rows_dtype(delta)
    z_ = None if z is None else _rows_dtype(z)
    Bg, Cg = _grouped(B, C, ns)
    A2 = torch.zeros((E, ns), dtype=torch.float32, device=u.device)
    A2[:, :N] = A.float() * LOG2E
    D32 = None if D is None else D.float().contiguous()
    bias32 = None if delta_bias is None else delta_bias.float().contiguous()
    rows = b * E
    G = Bg.shape[1]
    dtypes = (u_.dtype, dt_.dtype, (z_ if z_ is not None else u_).dtype, out.dtype, Bg.dtype, Cg.dtype)
    zs = (z_.stride(0), z_.stride(1)) if z_ is not None else (0, 0)
    if kind == "rows":
        warps, share, vec = WARPS, False, (False, False)   # B and C go through shared memory
    else:
        vec = (_vectorisable(Bg, ns), _vectorisable(Cg, ns))
        warps, share = _launch_shape(ns, E, G, Bg, Cg, vec)

    def defines(state_only: bool, has_hinit: bool) -> dict[str, str]:
        return _defines(ns, dtypes, D is not None, z is not None, delta_bias is not None, bool(delta_softplus),
                        vec, state_only, has_hinit, last is not None and not state_only, warps, share)

    try:
        with torch.cuda.device(u.device):
            if kind == "rows":
                name, grid, block, chunk_len, extra = _rows_launch(b, E, G, L, u.device, defines(False, True),
                                                                   (u_, dt_, out, z_))
            else:
                chunk_len = -(-(-(-L // _chunks(rows, ns, L))) // ns) * ns
                grid = (-(-rows // (warps * (32 // ns))), -(-L // chunk_len), 1)
                name, block, extra = "scan_fwd", (32 * warps, 1, 1), []
            nchunks = grid[1]
            sizes = _i(rows, E, L, E // G, chunk_len, u_.stride(0), u_.stride(1), dt_.stride(0), dt_.stride(1),
                       *zs, *Bg.stride()[:3], *Cg.stride()[:3])

            def scan(defs: dict[str, str], h_init, cstate, cdsum) -> None:
                launch(_kernel(defs, u.device, name), grid, block,
                       [_p(u_), _p(dt_), _p(z_), _p(out), _p(A2), _p(Bg), _p(Cg), _p(D32), _p(bias32), _p(h_init),
                        _p(cstate), _p(cdsum), _p(last), *sizes, *extra])

            h_init = None
            if nchunks > 1:
                f32 = {"dtype": torch.float32, "device": u.device}
                S = torch.empty((rows, nchunks, ns), **f32)
                dsum = torch.empty((rows, nchunks), **f32)
                state_defs = defines(True, False)
                scan(state_defs, None, S, dsum)
                h_init = torch.empty_like(S)
                launch(_kernel(state_defs, u.device, "join_chunks"), (-(-rows * ns // 256), 1, 1), (256, 1, 1),
                       [_p(S), _p(dsum), _p(A2), _p(h_init), *_i(rows, E, nchunks)])
            scan(defines(False, h_init is not None), h_init, None, None)
    except NvrtcError as e:
        raise BackendUnavailableError(f"scan backend 'cuda' failed: {e}") from e
    y = out.to(u.dtype)
    return (y, last[..., :N]) if return_last_state else y

