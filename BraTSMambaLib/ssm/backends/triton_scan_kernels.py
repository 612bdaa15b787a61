"""Triton kernels of the chunked selective scan (forward and backward).

The sequence is cut into chunks that run in parallel, and each chunk into tiles of T positions.
Tiles are laid out (T, NP, BD): positions x states x channels, so that triton's default layout puts
channels on the lanes and positions in each thread's registers. The recurrence
h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t inside a tile is then an associative scan that runs
sequentially within each thread (no shuffles); tiles follow each other inside a chunk with the state
carried in registers. Chunks are joined by two short passes: ``_fwd_chunk_state`` gives every
chunk's end state from a zero start and its summed delta (the chunk's decay is exp(A * sum delta)),
``_chunk_scan`` runs the recurrence over the chunks, and ``_fwd_chunk_out`` recomputes each chunk
from its true start state and writes y, with the D*u skip and the silu(z) gate fused. The backward
pass is the adjoint analogue, scanned from the right: ``_bwd_chunk_state`` and
``_chunk_scan(REVERSE)`` give each chunk's adjoint inflow, and ``_bwd_chunk_grads`` walks its tiles
right to left, recomputing a tile's forward states from the tile-start states the forward pass
saved: no (batch, E, L, N) tensor is ever stored. All state arithmetic is fp32.
This module imports triton; import it only where triton works.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _softplus(x):
    """mamba_ssm's softplus: log1p(exp(x)) for x <= 20, else x; log1p kept accurate for small exp(x)."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.where(x <= 20.0, lp, x)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _combine_fwd(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 (earlier) with h -> a2 h + b2 (later)."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _combine_adj(a_r, b_r, a_l, b_l):
    """Compose g -> b_l + a_l g (earlier position) after g -> b_r + a_r g, for a right-to-left scan
    (first argument: the later segment). The adjoint obeys g_t = C_t dy_t + a_{t+1} g_{t+1}, so the
    coefficient of position t is a_{t+1} = exp(delta_{t+1} A)."""
    return a_l * a_r, b_l + a_l * b_r


@triton.jit
def _load_delta(
    delta_ptr, bias, offs, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr
):
    """(T, BD) raw delta (+ bias) and the effective delta (softplus'd, zero outside the sequence)."""
    raw = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[None, :]
    dl = raw
    if SOFTPLUS:
        dl = _softplus(raw)
    dl = tl.where(mask, dl, 0.0)
    return raw, dl


@triton.jit
def _load_tile(ptr, row, t, mask):
    """Positions t of the rows `row` of a (batch, E, L) or (batch, G, N, L) input, in fp32, zero where
    masked."""
    return tl.load(ptr + row + t[:, None], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_channels(ptr, offs_d, BD: tl.constexpr, PRESENT: tl.constexpr):
    """(BD,) fp32 per-channel vector (delta bias, D); zeros when the input is absent."""
    v = tl.zeros((BD,), tl.float32)
    if PRESENT:
        v = tl.load(ptr + offs_d).to(tl.float32)
    return v


@triton.jit
def _load_A(A_ptr, offs_d, offs_n, mask, N):
    """(NP, BD) A in fp32, zero where masked."""
    return tl.load(
        A_ptr + offs_d[None, :] * N + offs_n[:, None], mask=mask, other=0.0
    ).to(tl.float32)


@triton.jit
def _log2e(A):
    """A * log2(e), so that exp(delta A) = exp2(delta A2)."""
    return A * 1.4426950408889634


@triton.jit
def _state_ptrs(ptr, idx, offs_n, N):
    """(NP, BD) addresses of the states of the rows idx (BD,) in a (..., N) state tensor."""
    return ptr + idx[None, :] * N + offs_n[:, None]


@triton.jit
def _chunk_program(E, N, G, BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr):
    """A (chunk, channel block, batch) program: its ids, channel/state/position offsets and the B/C
    group of its channels."""
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    offs_t = tl.arange(0, T)
    grp = (pid_d * BD) // (E // G)
    return pid_c, pid_d, pid_b, offs_d, offs_n, mask_n, offs_t, grp


@triton.jit
def _rows(pid_b, grp, offs_d, offs_n, E, L, N, G):
    """Row offsets of the block's channels in (batch, E, L) tensors and of its group's states in
    (batch, G, N, L) tensors."""
    row = pid_b * E * L + offs_d[None, :].to(tl.int64) * L
    brow = (pid_b * G + grp) * N * L + offs_n[None, :].to(tl.int64) * L
    return row, brow


@triton.jit
def _chunk_bounds(pid_c, chunk_len, L):
    """[start, end) positions of chunk pid_c."""
    start = pid_c * chunk_len
    return start, tl.minimum(start + chunk_len, L)


@triton.jit
def _chunk_index(pid_b, pid_c, offs_d, E, nchunks):
    """Row of (batch, channel, chunk) in (batch, E, nchunks[, N]) per-chunk tensors."""
    return (pid_b * E + offs_d) * nchunks + pid_c


@triton.jit
def _tile_states(A2, dl, uu, Bt, h):
    """States hs (T, NP, BD) of a tile entered with state h, and its inputs x = delta B u."""
    dA = tl.exp2(A2[None, :, :] * dl[:, None, :])
    x = (dl * uu)[:, None, :] * Bt[:, :, None]
    pa, hb = tl.associative_scan((dA, x), axis=0, combine_fn=_combine_fwd)
    return hb + pa * h[None, :, :], x


@triton.jit
def _readout(hs, Ct, Dv, uu, HAS_D: tl.constexpr):
    """y = C.h (+ D u) of a tile, before the gate."""
    y = tl.sum(hs * Ct[:, :, None], axis=1)
    if HAS_D:
        y += Dv[None, :] * uu
    return y


@triton.jit
def _pick(x, offs, i):
    """x[i] of an (n, NP, BD) block (a masked sum: triton has no dynamic indexing)."""
    return tl.sum(tl.where((offs == i)[:, None, None], x, 0.0), axis=0)


@triton.jit
def _gated(v, z_ptr, row, t, mask):
    """v * silu(z) on a tile."""
    zz = _load_tile(z_ptr, row, t, mask)
    return v * zz * _sigmoid(zz)


@triton.jit
def _fwd_chunk_state(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    bias_ptr,
    S_ptr,
    dsum_ptr,
    E,
    L,
    N,
    G,
    nchunks,
    chunk_len,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BD: tl.constexpr,
    NP: tl.constexpr,
    T: tl.constexpr,
):
    """Per (chunk, channel block, batch): end state from a zero start, and the summed delta."""
    pid_c, _pid_d, pid_b, offs_d, offs_n, mask_n, offs_t, grp = _chunk_program(
        E, N, G, BD, NP, T
    )
    A2 = _log2e(_load_A(A_ptr, offs_d, offs_n, mask_n[:, None], N))
    bias = _load_channels(bias_ptr, offs_d, BD, HAS_BIAS)
    row, brow = _rows(pid_b, grp, offs_d, offs_n, E, L, N, G)
    S = tl.zeros((NP, BD), tl.float32)
    dsum = tl.zeros((BD,), tl.float32)
    start, end = _chunk_bounds(pid_c, chunk_len, L)
    for t0 in range(start, end, T):
        t = t0 + offs_t
        mt = (t < L)[:, None]
        _, dl = _load_delta(delta_ptr, bias, row + t[:, None], mt, HAS_BIAS, SOFTPLUS)
        uu = _load_tile(u_ptr, row, t, mt)
        Bt = _load_tile(B_ptr, brow, t, mask_n[None, :] & mt)
        cum = tl.cumsum(dl, axis=0)
        tot = tl.sum(dl, axis=0)
        w = tl.exp2(A2[None, :, :] * (tot[None, :] - cum)[:, None, :])
        S = S * tl.exp2(A2 * tot[None, :]) + tl.sum(
            w * (dl * uu)[:, None, :] * Bt[:, :, None], axis=0
        )
        dsum += tot
    cidx = _chunk_index(pid_b, pid_c, offs_d, E, nchunks)
    tl.store(_state_ptrs(S_ptr, cidx, offs_n, N), S, mask=mask_n[:, None])
    tl.store(dsum_ptr + cidx, dsum)


@triton.jit
def _chunk_scan(
    S_ptr,
    dsum_ptr,
    A_ptr,
    H_ptr,
    E,
    N,
    nchunks,
    REVERSE: tl.constexpr,
    BD: tl.constexpr,
    NP: tl.constexpr,
    CT: tl.constexpr,
):
    """Recurrence over chunks: H[c] is the state entering chunk c (from the left, or the right).

    CT chunks at a time go through one associative scan, so the sequential depth is nchunks / CT.
    """
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < E
    offs_n = tl.arange(0, NP)
    offs_c = tl.arange(0, CT)
    m2 = mask_d[None, :] & (offs_n < N)[:, None]
    A2 = _log2e(_load_A(A_ptr, offs_d, offs_n, m2, N))
    base = (pid_b * E + offs_d) * nchunks
    h = tl.zeros((NP, BD), tl.float32)
    for c0 in range(0, nchunks, CT):
        k = c0 + offs_c
        if REVERSE:
            c = nchunks - 1 - k
            nxt = c - 1
        else:
            c = k
            nxt = c + 1
        valid = k < nchunks
        idx = base[None, :] + c[:, None]
        m3 = valid[:, None, None] & m2[None, :, :]
        s = tl.load(
            S_ptr + idx[:, None, :] * N + offs_n[None, :, None], mask=m3, other=0.0
        )
        ds = tl.load(dsum_ptr + idx, mask=valid[:, None] & mask_d[None, :], other=0.0)
        pa, hb = tl.associative_scan(
            (tl.exp2(A2[None, :, :] * ds[:, None, :]), s),
            axis=0,
            combine_fn=_combine_fwd,
        )
        incl = hb + pa * h[None, :, :]
        first = base[None, :] + c[:, None]
        tl.store(
            H_ptr + first[:, None, :] * N + offs_n[None, :, None],
            tl.broadcast_to(h[None, :, :], (CT, NP, BD)),
            mask=m3 & (offs_c == 0)[:, None, None],
        )
        nidx = base[None, :] + nxt[:, None]
        tl.store(
            H_ptr + nidx[:, None, :] * N + offs_n[None, :, None],
            incl,
            mask=m3 & (k + 1 < nchunks)[:, None, None],
        )
        h = _pick(incl, offs_c, CT - 1)


@triton.jit
def _fwd_chunk_out(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    H_ptr,
    out_ptr,
    Hsave_ptr,
    last_ptr,
    E,
    L,
    N,
    G,
    nchunks,
    chunk_len,
    ntiles,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_INIT: tl.constexpr,
    SAVE: tl.constexpr,
    RET_LAST: tl.constexpr,
    TS: tl.constexpr,
    BD: tl.constexpr,
    NP: tl.constexpr,
    T: tl.constexpr,
):
    """Per (chunk, channel block, batch): scan the chunk from its start state and write y.

    With SAVE, the state entering every TS-position segment goes to Hsave (b, E, cdiv(L, TS), N).
    """
    pid_c, _pid_d, pid_b, offs_d, offs_n, mask_n, offs_t, grp = _chunk_program(
        E, N, G, BD, NP, T
    )
    A2 = _log2e(_load_A(A_ptr, offs_d, offs_n, mask_n[:, None], N))
    bias = _load_channels(bias_ptr, offs_d, BD, HAS_BIAS)
    Dv = _load_channels(D_ptr, offs_d, BD, HAS_D)
    row, brow = _rows(pid_b, grp, offs_d, offs_n, E, L, N, G)
    srow = (pid_b * E + offs_d).to(tl.int64) * ntiles
    if HAS_INIT:
        cidx = _chunk_index(pid_b, pid_c, offs_d, E, nchunks)
        h = tl.load(
            _state_ptrs(H_ptr, cidx, offs_n, N), mask=mask_n[:, None], other=0.0
        )
    else:
        h = tl.zeros((NP, BD), tl.float32)
    start, end = _chunk_bounds(pid_c, chunk_len, L)
    for t0 in range(start, end, T):
        t = t0 + offs_t
        mt = (t < L)[:, None]
        _, dl = _load_delta(delta_ptr, bias, row + t[:, None], mt, HAS_BIAS, SOFTPLUS)
        uu = _load_tile(u_ptr, row, t, mt)
        mtn = mask_n[None, :] & mt
        Bt = _load_tile(B_ptr, brow, t, mtn)
        Ct = _load_tile(C_ptr, brow, t, mtn)
        if SAVE:
            tl.store(
                _state_ptrs(Hsave_ptr, srow + t0 // TS, offs_n, N),
                h,
                mask=mask_n[:, None],
            )
        hs, _ = _tile_states(A2, dl, uu, Bt, h)
        y = _readout(hs, Ct, Dv, uu, HAS_D)
        if HAS_Z:
            y = _gated(y, z_ptr, row, t, mt)
        tl.store(out_ptr + row + t[:, None], y, mask=mt)
        if SAVE:
            for j in tl.static_range(1, T // TS):
                hj = _pick(hs, offs_t, j * TS - 1)
                tl.store(
                    _state_ptrs(Hsave_ptr, srow + t0 // TS + j, offs_n, N),
                    hj,
                    mask=mask_n[:, None] & (t0 + j * TS < L),
                )
        h = _pick(hs, offs_t, T - 1)
    if RET_LAST:
        lidx = (pid_b * E + offs_d)[None, :] * N + offs_n[:, None]
        tl.store(last_ptr + lidx, h, mask=mask_n[:, None] & (pid_c == nchunks - 1))


@triton.jit
def _bwd_chunk_state(
    delta_ptr,
    A_ptr,
    C_ptr,
    z_ptr,
    bias_ptr,
    dout_ptr,
    S_ptr,
    dsum_ptr,
    E,
    L,
    N,
    G,
    nchunks,
    chunk_len,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_Z: tl.constexpr,
    BD: tl.constexpr,
    NP: tl.constexpr,
    T: tl.constexpr,
):
    """Per chunk: the adjoint it sends out of its left end (a_s g_s) with no inflow from the right."""
    pid_c, _pid_d, pid_b, offs_d, offs_n, mask_n, offs_t, grp = _chunk_program(
        E, N, G, BD, NP, T
    )
    A2 = _log2e(_load_A(A_ptr, offs_d, offs_n, mask_n[:, None], N))
    bias = _load_channels(bias_ptr, offs_d, BD, HAS_BIAS)
    row, brow = _rows(pid_b, grp, offs_d, offs_n, E, L, N, G)
    S = tl.zeros((NP, BD), tl.float32)
    run = tl.zeros((BD,), tl.float32)
    start, end = _chunk_bounds(pid_c, chunk_len, L)
    for t0 in range(start, end, T):
        t = t0 + offs_t
        mt = (t < L)[:, None]
        _, dl = _load_delta(delta_ptr, bias, row + t[:, None], mt, HAS_BIAS, SOFTPLUS)
        dy = _load_tile(dout_ptr, row, t, mt)
        if HAS_Z:
            dy = _gated(dy, z_ptr, row, t, mt)
        Ct = _load_tile(C_ptr, brow, t, mask_n[None, :] & mt)
        cum = tl.cumsum(dl, axis=0) + run[None, :]
        w = tl.exp2(A2[None, :, :] * cum[:, None, :])
        S += tl.sum(w * Ct[:, :, None] * dy[:, None, :], axis=0)
        run += tl.sum(dl, axis=0)
    cidx = _chunk_index(pid_b, pid_c, offs_d, E, nchunks)
    tl.store(_state_ptrs(S_ptr, cidx, offs_n, N), S, mask=mask_n[:, None])
    tl.store(dsum_ptr + cidx, run)


@triton.jit
def _bwd_chunk_grads(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    dout_ptr,
    Hsave_ptr,
    R_ptr,
    du_ptr,
    ddelta_ptr,
    dz_ptr,
    dB_ptr,
    dC_ptr,
    dA_ptr,
    dD_ptr,
    dbias_ptr,
    E,
    L,
    N,
    G,
    nchunks,
    chunk_len,
    ntiles,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_INIT: tl.constexpr,
    ATOMIC: tl.constexpr,
    BD: tl.constexpr,
    NP: tl.constexpr,
    T: tl.constexpr,
):
    """Per (chunk, channel block, batch): walk the tiles right to left and write all gradients.

    dB/dC are summed over the block's channels and written into partial buffers (batch, G, blocks
    per group, N, L), or with ATOMIC added into zeroed (batch, G, N, L) buffers (faster, not
    bit-reproducible); dA/dD/dbias go per (batch, chunk); the caller sums the partials.
    """
    pid_c, pid_d, pid_b, offs_d, offs_n, mask_n, offs_t, grp = _chunk_program(
        E, N, G, BD, NP, T
    )
    nblk = (E // G) // BD
    jblk = pid_d % nblk
    A = _load_A(A_ptr, offs_d, offs_n, mask_n[:, None], N)
    A2 = _log2e(A)
    bias = _load_channels(bias_ptr, offs_d, BD, HAS_BIAS)
    Dv = _load_channels(D_ptr, offs_d, BD, HAS_D)
    row, brow = _rows(pid_b, grp, offs_d, offs_n, E, L, N, G)
    prow = (((pid_b * G + grp) * nblk + jblk) * N + offs_n[None, :]).to(tl.int64) * L
    srow = (pid_b * E + offs_d).to(tl.int64) * ntiles
    if HAS_INIT:
        cidx = _chunk_index(pid_b, pid_c, offs_d, E, nchunks)
        R = tl.load(
            _state_ptrs(R_ptr, cidx, offs_n, N), mask=mask_n[:, None], other=0.0
        )
    else:
        R = tl.zeros((NP, BD), tl.float32)
    dA_acc = tl.zeros((NP, BD), tl.float32)
    dD_acc = tl.zeros((BD,), tl.float32)
    db_acc = tl.zeros((BD,), tl.float32)
    start, end = _chunk_bounds(pid_c, chunk_len, L)
    ntile_c = (end - start + T - 1) // T
    for i in range(ntile_c):
        t0 = start + (ntile_c - 1 - i) * T
        t = t0 + offs_t
        mt = (t < L)[:, None]
        raw, dl = _load_delta(delta_ptr, bias, row + t[:, None], mt, HAS_BIAS, SOFTPLUS)
        uu = _load_tile(u_ptr, row, t, mt)
        mtn = mask_n[None, :] & mt
        Bt = _load_tile(B_ptr, brow, t, mtn)
        Ct = _load_tile(C_ptr, brow, t, mtn)
        h0 = tl.load(
            _state_ptrs(Hsave_ptr, srow + t0 // T, offs_n, N),
            mask=mask_n[:, None],
            other=0.0,
        )
        hs, x = _tile_states(A2, dl, uu, Bt, h0)
        dy = _load_tile(dout_ptr, row, t, mt)
        if HAS_Z:
            zz = _load_tile(z_ptr, row, t, mt)
            sz = _sigmoid(zz)
            y = _readout(hs, Ct, Dv, uu, HAS_D)
            tl.store(
                dz_ptr + row + t[:, None],
                dy * y * sz * (1.0 + zz * (1.0 - sz)),
                mask=mt,
            )
            dy = dy * zz * sz
        dCt = tl.sum(hs * dy[:, None, :], axis=2)
        if ATOMIC:
            tl.atomic_add(dC_ptr + brow + t[:, None], dCt, mask=mtn, sem="relaxed")
        else:
            tl.store(dC_ptr + prow + t[:, None], dCt, mask=mtn)
        hprev = hs - x
        dA0 = tl.exp2(
            A2 * tl.sum(tl.where((offs_t == 0)[:, None], dl, 0.0), axis=0)[None, :]
        )
        mnext = ((t + 1 < L) & (offs_t < T - 1))[:, None]
        _, dl_next = _load_delta(
            delta_ptr, bias, row + t[:, None] + 1, mnext, HAS_BIAS, SOFTPLUS
        )
        pg, bg = tl.associative_scan(
            (
                tl.exp2(A2[None, :, :] * dl_next[:, None, :]),
                Ct[:, :, None] * dy[:, None, :],
            ),
            axis=0,
            combine_fn=_combine_adj,
            reverse=True,
        )
        g = bg + pg * R[None, :, :]
        dBt = tl.sum(g * (dl * uu)[:, None, :], axis=2)
        if ATOMIC:
            tl.atomic_add(dB_ptr + brow + t[:, None], dBt, mask=mtn, sem="relaxed")
        else:
            tl.store(dB_ptr + prow + t[:, None], dBt, mask=mtn)
        du = tl.sum(g * Bt[:, :, None], axis=1) * dl
        if HAS_D:
            du += Dv[None, :] * dy
            dD_acc += tl.sum(dy * uu, axis=0)
        ddl = tl.sum(
            g * (Bt[:, :, None] * uu[:, None, :] + hprev * A[None, :, :]), axis=1
        )
        dA_acc += tl.sum(g * hprev * dl[:, None, :], axis=0)
        if SOFTPLUS:
            ddl = tl.where(raw <= 20.0, ddl * _sigmoid(raw), ddl)
        ddl = tl.where(mt, ddl, 0.0)
        db_acc += tl.sum(ddl, axis=0)
        tl.store(du_ptr + row + t[:, None], du, mask=mt)
        tl.store(ddelta_ptr + row + t[:, None], ddl, mask=mt)
        R = dA0 * _pick(g, offs_t, 0)
    pidx = (pid_b * nchunks + pid_c) * E + offs_d
    tl.store(_state_ptrs(dA_ptr, pidx, offs_n, N), dA_acc, mask=mask_n[:, None])
    tl.store(dD_ptr + pidx, dD_acc)
    tl.store(dbias_ptr + pidx, db_acc)
