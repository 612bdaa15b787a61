"""Triton backend of the selective scan: a chunked kernel parallel along the sequence, forward and backward.

mamba_ssm's kernel runs one thread block per (batch, channel) and walks the whole sequence, which at
SegMamba's training shape (batch 2, E 96, L 64^3) is 192 blocks for 132 multiprocessors. Here the
sequence is also cut into chunks that run at once (see `triton_scan_kernels` for the passes), so the
GPU fills at any batch size. Semantics, shapes and dtypes are those of mamba_ssm's `selective_scan_fn`.
triton is imported only when a scan runs or availability is asked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from BraTSMambaLib.errors import BackendUnavailableError
from BraTSMambaLib.ssm.backends.groups import common_groups

NAME = "triton"


@dataclass(frozen=True)
class ScanConfig:
    """Launch shape. `tile_*` positions per scan step (powers of two; the forward saves states every
    `tile_bwd` positions for the backward, so the forward tile is raised to at least `tile_bwd`);
    `bd_*` channels per program (power of two; reduced until it divides E/G); `warps_*` warps per
    program; `chunk_tiles_*` tiles per chunk (None: enough chunks for `target_programs` programs);
    `atomic_dbc`: accumulate dB/dC with atomics instead of per-block partial sums (not bit-reproducible,
    like mamba_ssm's kernel); `bd_fwd_nograd`: channels per program of a forward that saves nothing.
    Defaults: the configurations measured fastest on an H200 at SegMamba's stage-0 shape
    (training: sweep configuration 3; inference: configuration 6; docs/performance.md)."""

    tile_fwd: int = 16
    tile_bwd: int = 8
    bd_fwd: int = 8
    bd_bwd: int = 8
    warps_fwd: int = 1
    warps_bwd: int = 1
    chunk_tiles_fwd: int | None = None
    chunk_tiles_bwd: int | None = None
    target_programs: int = 2048
    atomic_dbc: bool = True
    bd_fwd_nograd: int = 4


DEFAULT_CONFIG = ScanConfig()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def is_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """True only for a CUDA device with a working triton."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda":
        return False, f"needs a CUDA device (got {dev.type})"
    if not torch.cuda.is_available():
        return False, "torch reports no usable CUDA device"
    try:
        import triton

        _kernels()
    except Exception as e:  # noqa: BLE001 - any import or driver failure means "not available"
        return False, f"triton is not usable: {type(e).__name__}: {e}".splitlines()[0]
    major, minor = torch.cuda.get_device_capability(dev)
    if major < 7:
        return (
            False,
            f"triton needs compute capability >= 7.0 (device has {major}.{minor})",
        )
    return True, f"triton {triton.__version__} on {torch.cuda.get_device_name(dev)}"


def _kernels():
    from BraTSMambaLib.ssm.backends import triton_scan_kernels

    return triton_scan_kernels


def _pow2_divisor(want: int, n: int) -> int:
    """Largest power of two <= want that divides n."""
    bd = 1
    while bd * 2 <= want and n % (bd * 2) == 0:
        bd *= 2
    return bd


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _chunking(
    L: int, tile: int, programs_per_chunk: int, chunk_tiles: int | None, target: int
) -> tuple[int, int]:
    """(chunk length, number of chunks)."""
    ntiles = -(-L // tile)
    if chunk_tiles is None:
        want = max(1, min(ntiles, -(-target // max(1, programs_per_chunk))))
        chunk_tiles = -(-ntiles // want)
    chunk_len = max(1, chunk_tiles) * tile
    return chunk_len, -(-L // chunk_len)


def _tiles(L: int, cfg: ScanConfig) -> tuple[int, int]:
    """(forward tile, backward tile = state-saving interval); the forward tile is a multiple of the other."""
    tb = max(1, min(cfg.tile_bwd, _next_pow2(L)))
    return max(tb, min(cfg.tile_fwd, _next_pow2(L))), tb


def _scan_chunks(
    S: torch.Tensor, dsum: torch.Tensor, A: torch.Tensor, H: torch.Tensor, reverse: bool
) -> None:
    """H[:, :, c] = state entering chunk c, given chunk end states S from zero and summed deltas dsum."""
    b, E, nc, N = S.shape
    BD = min(32, _next_pow2(E))
    CT = max(2, min(16, _next_pow2(nc)))
    _kernels()._chunk_scan[(-(-E // BD), b)](
        S,
        dsum,
        A,
        H,
        E,
        N,
        nc,
        REVERSE=reverse,
        BD=BD,
        NP=max(2, _next_pow2(N)),
        CT=CT,
        num_warps=4,
    )


@dataclass(frozen=True)
class _Launch:
    """One direction's chunked launch: sizes, grid, the kernels' shared scalar arguments and flags."""

    b: int
    E: int
    L: int
    G: int
    N: int
    BD: int
    nc: int
    grid: tuple[int, int, int]
    sizes: tuple[int, ...]
    flags: dict


def _launch(
    u, A, B, delta_bias, softplus: bool, T: int, bd: int, chunk_tiles, cfg: ScanConfig
) -> _Launch:
    """Launch shape for T positions per step and up to `bd` channels per program."""
    b, E, L = u.shape
    G, N = B.shape[1], A.shape[1]
    BD = _pow2_divisor(bd, E // G)
    chunk_len, nc = _chunking(L, T, b * E // BD, chunk_tiles, cfg.target_programs)
    flags = {
        "HAS_BIAS": delta_bias is not None,
        "SOFTPLUS": softplus,
        "BD": BD,
        "NP": max(2, _next_pow2(N)),
        "T": T,
    }
    return _Launch(
        b, E, L, G, N, BD, nc, (nc, E // BD, b), (E, L, N, G, nc, chunk_len), flags
    )


def _chunk_carries(
    kernel, inputs: tuple, lp: _Launch, A, reverse: bool, num_warps: int, **flags
):
    """Run a chunk-summary kernel on `inputs` and scan its per-chunk results into the state (forward)
    or adjoint (reverse) entering each chunk, (b, E, nc, N) float32."""
    f32 = {"device": A.device, "dtype": torch.float32}
    S = torch.empty((lp.b, lp.E, lp.nc, lp.N), **f32)
    dsum = torch.empty((lp.b, lp.E, lp.nc), **f32)
    kernel[lp.grid](
        *inputs, S, dsum, *lp.sizes, num_warps=num_warps, **lp.flags, **flags
    )
    H = torch.empty_like(S)
    _scan_chunks(S, dsum, A, H, reverse=reverse)
    return H


def _forward(
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    softplus: bool,
    want_last: bool,
    save: bool,
    cfg: ScanConfig,
):
    """Run the forward passes; returns (out, last_state or None, tile-start states or None)."""
    k = _kernels()
    T, TS = _tiles(u.shape[2], cfg)
    bd = cfg.bd_fwd if save else cfg.bd_fwd_nograd
    lp = _launch(u, A, B, delta_bias, softplus, T, bd, cfg.chunk_tiles_fwd, cfg)
    b, E, L, N = lp.b, lp.E, lp.L, lp.N
    ntiles = -(-L // TS)
    f32 = {"device": u.device, "dtype": torch.float32}
    out = torch.empty_like(u)
    Hsave = torch.empty((b, E, ntiles, N), **f32) if save else out
    last = torch.empty((b, E, N), **f32) if want_last else out
    dummy = out
    bias_t = delta_bias if delta_bias is not None else dummy
    H = dummy
    if lp.nc > 1:
        H = _chunk_carries(
            k._fwd_chunk_state, (u, delta, A, B, bias_t), lp, A, False, cfg.warps_fwd
        )
    k._fwd_chunk_out[lp.grid](
        u,
        delta,
        A,
        B,
        C,
        D if D is not None else dummy,
        z if z is not None else dummy,
        bias_t,
        H,
        out,
        Hsave,
        last,
        *lp.sizes,
        ntiles,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_INIT=lp.nc > 1,
        SAVE=save,
        RET_LAST=want_last,
        TS=TS,
        num_warps=cfg.warps_fwd,
        **lp.flags,
    )
    return out, (last if want_last else None), (Hsave if save else None)


def _backward(
    dout, u, delta, A, B, C, D, z, delta_bias, softplus: bool, Hsave, cfg: ScanConfig
):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) in float32 where they are reductions."""
    k = _kernels()
    _, T = _tiles(u.shape[2], cfg)
    lp = _launch(u, A, B, delta_bias, softplus, T, cfg.bd_bwd, cfg.chunk_tiles_bwd, cfg)
    b, E, L, G, N, nc = lp.b, lp.E, lp.L, lp.G, lp.N, lp.nc
    nblk = (E // G) // lp.BD
    ntiles = -(-L // T)
    f32 = {"device": u.device, "dtype": torch.float32}
    dummy = u
    bias_t = delta_bias if delta_bias is not None else dummy
    z_t = z if z is not None else dummy
    R = dummy
    if nc > 1:
        R = _chunk_carries(
            k._bwd_chunk_state,
            (delta, A, C, z_t, bias_t, dout),
            lp,
            A,
            True,
            cfg.warps_bwd,
            HAS_Z=z is not None,
        )
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else dummy
    atomic = cfg.atomic_dbc and nblk > 1
    alloc = torch.zeros if atomic else torch.empty
    dBp = alloc((b, G, 1 if atomic else nblk, N, L), **f32)
    dCp = alloc((b, G, 1 if atomic else nblk, N, L), **f32)
    dAp = torch.empty((b, nc, E, N), **f32)
    dDp = torch.empty((b, nc, E), **f32)
    dbp = torch.empty((b, nc, E), **f32)
    k._bwd_chunk_grads[lp.grid](
        u,
        delta,
        A,
        B,
        C,
        D if D is not None else dummy,
        z_t,
        bias_t,
        dout,
        Hsave,
        R,
        du,
        ddelta,
        dz,
        dBp,
        dCp,
        dAp,
        dDp,
        dbp,
        *lp.sizes,
        ntiles,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_INIT=nc > 1,
        ATOMIC=atomic,
        num_warps=cfg.warps_bwd,
        **lp.flags,
    )
    dB = dBp.sum(2) if dBp.shape[2] > 1 else dBp[:, :, 0]
    dC = dCp.sum(2) if dCp.shape[2] > 1 else dCp[:, :, 0]
    return (
        du,
        ddelta,
        dAp.sum((0, 1)),
        dB,
        dC,
        dDp.sum((0, 1)) if D is not None else None,
        dz if z is not None else None,
        dbp.sum((0, 1)) if delta_bias is not None else None,
    )


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, cfg
    ):
        squeeze_B, squeeze_C = B.dim() == 3, C.dim() == 3
        Bk, Ck = (t.contiguous() for t in common_groups(B, C))
        uc, dc, Ac = u.contiguous(), delta.contiguous(), A.contiguous().float()
        Dc = D.contiguous().float() if D is not None else None
        zc = z.contiguous() if z is not None else None
        bc = delta_bias.contiguous().float() if delta_bias is not None else None
        save = any(ctx.needs_input_grad[:8])
        out, last, Hsave = _forward(
            uc,
            dc,
            Ac,
            Bk,
            Ck,
            Dc,
            zc,
            bc,
            bool(delta_softplus),
            bool(return_last_state),
            save,
            cfg,
        )
        if save:
            ctx.save_for_backward(uc, dc, Ac, Bk, Ck, Dc, zc, bc, Hsave)
        ctx.meta = (
            bool(delta_softplus),
            squeeze_B,
            squeeze_C,
            B.shape[1] if B.dim() == 4 else 1,
            C.shape[1] if C.dim() == 4 else 1,
            cfg,
        )
        ctx.dtypes = (
            A.dtype,
            B.dtype,
            C.dtype,
            None if D is None else D.dtype,
            None if delta_bias is None else delta_bias.dtype,
        )
        if return_last_state:
            ctx.mark_non_differentiable(last)
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout, *_):
        uc, dc, Ac, Bk, Ck, Dc, zc, bc, Hsave = ctx.saved_tensors
        softplus, squeeze_B, squeeze_C, GB, GC, cfg = ctx.meta
        A_dt, B_dt, C_dt, D_dt, b_dt = ctx.dtypes
        du, ddelta, dA, dB, dC, dD, dz, db = _backward(
            dout.contiguous(), uc, dc, Ac, Bk, Ck, Dc, zc, bc, softplus, Hsave, cfg
        )

        def regroup(g, groups, squeeze):
            if g.shape[1] != groups:
                g = g.reshape(
                    g.shape[0], groups, g.shape[1] // groups, *g.shape[2:]
                ).sum(2)
            return g.squeeze(1) if squeeze else g

        dB = regroup(dB, GB, squeeze_B).to(B_dt)
        dC = regroup(dC, GC, squeeze_C).to(C_dt)
        return (
            du,
            ddelta,
            dA.to(A_dt),
            dB,
            dC,
            None if dD is None else dD.to(D_dt),
            dz,
            None if db is None else db.to(b_dt),
            None,
            None,
            None,
        )


def _validate(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"triton selective_scan: u and delta must be (batch, E, L), got {tuple(u.shape)}, "
            f"{tuple(delta.shape)}"
        )
    b, E, L = u.shape
    if A.dim() != 2 or A.shape[0] != E or A.is_complex():
        raise ValueError(
            f"triton selective_scan: A must be real (E={E}, N), got {tuple(A.shape)} {A.dtype}"
        )
    N = A.shape[1]
    for nm, t in (("B", B), ("C", C)):
        ok = (t.dim() == 3 and tuple(t.shape) == (b, N, L)) or (
            t.dim() == 4
            and t.shape[0] == b
            and tuple(t.shape[2:]) == (N, L)
            and E % t.shape[1] == 0
        )
        if not ok:
            raise ValueError(
                f"triton selective_scan: {nm} must be (batch, N, L) or (batch, G, N, L) with G | E "
                f"(input-dependent), got {tuple(t.shape)}"
            )
    for nm, t, shape in (
        ("D", D, (E,)),
        ("delta_bias", delta_bias, (E,)),
        ("z", z, (b, E, L)),
    ):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(
                f"triton selective_scan: {nm} must be {shape}, got {tuple(t.shape)}"
            )
    dev = u.device
    if dev.type != "cuda" and not _interpreting():
        raise BackendUnavailableError(
            f"the triton scan backend needs CUDA tensors (got {dev})"
        )
    for nm, t in (
        ("delta", delta),
        ("A", A),
        ("B", B),
        ("C", C),
        ("D", D),
        ("z", z),
        ("delta_bias", delta_bias),
    ):
        if t is not None and t.device != dev:
            raise ValueError(
                f"triton selective_scan: {nm} is on {t.device}, u on {dev}"
            )


def scan_with_config(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    *,
    config: ScanConfig = DEFAULT_CONFIG,
):
    """`selective_scan` with an explicit launch configuration (tests and benchmarks)."""
    _validate(u, delta, A, B, C, D, z, delta_bias)
    return _SelectiveScanTriton.apply(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, config
    )


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """mamba_ssm `selective_scan_fn` semantics on the chunked Triton kernel; differentiable in every input."""
    return scan_with_config(
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        delta_softplus,
        return_last_state,
        config=DEFAULT_CONFIG,
    )
