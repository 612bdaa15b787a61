"""Pure-PyTorch selective scan for any device (CPU, CUDA, MPS): blocked, two-level, memory-bounded.

Why this shape. The recurrence h_t = a_t * h_{t-1} + x_t (a_t = exp(dt_t A), x_t = dt_t u_t B_t) has a
(batch, E, L, N) state; at SegMamba's stage 0 that is 400 M floats, so it is never held for the whole
sequence. The sequence is cut into blocks whose states fit in cache; a block is cut into chunks; one
Python step advances *every* chunk of the block by one position (the loop is as long as a chunk, not as
the block), then chunk carries are propagated and added back with the within-chunk decay
exp(A * cumsum(dt)). Only products of decays (<= 1 for real negative A and dt >= 0) appear, never their
inverses, so nothing overflows whatever the values of dt and A. The backward pass is a custom autograd
Function that walks the blocks in reverse, recomputes each block's states from the block's saved
initial state, and runs the adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} with the same chunked
scheme: memory stays O(block), not O(L).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NAME = "torch"

#: Chunk length: positions one Python step loop covers (forward); the state slice of one step is
#: (batch, E, chunks per block, N) and stays in L2 cache.
CHUNK = 32
#: Target size (elements) of that per-step state slice; sets the number of chunks per block.
STEP_ELEMENTS = 1 << 17
#: Upper bound on the chunk length of the backward's full-block scans.
MAX_CHUNK = 64


def is_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Pure PyTorch: available on every device torch supports."""
    return True, "pure PyTorch (chunked two-level scan), any device"


# ----------------------------------------------------------------------------------------------------------
# chunked linear recurrences on (batch, E, T, N) float32 tensors
# ----------------------------------------------------------------------------------------------------------

def _chunk_len(T: int) -> int:
    return max(1, min(MAX_CHUNK, int(math.isqrt(max(T, 1)))))


def _scan_forward(dt: torch.Tensor, A: torch.Tensor, a: torch.Tensor, x: torch.Tensor,
                  h0: torch.Tensor) -> torch.Tensor:
    """h_j = a_j h_{j-1} + x_j with h_{-1} = h0, in place in `x`; returns x (now the states).

    dt (b, E, T) with a = exp(dt A) given as (b, E, T, N); the within-chunk decay products are
    exp(A * cumsum(dt)), computed from dt rather than multiplied out.
    """
    b, E, T, N = x.shape
    c = _chunk_len(T)
    m = T // c
    if m >= 2:
        Tm = m * c
        x4 = x[:, :, :Tm].view(b, E, m, c, N)
        a4 = a[:, :, :Tm].view(b, E, m, c, N)
        for j in range(1, c):
            x4[:, :, :, j].addcmul_(a4[:, :, :, j], x4[:, :, :, j - 1])
        cum = dt[:, :, :Tm].reshape(b, E, m, c).cumsum(-1)                     # inclusive, per chunk
        decay = torch.exp(cum.unsqueeze(-1) * A.view(1, E, 1, 1, N))           # (b, E, m, c, N)
        carries = x.new_empty(b, E, m, N)
        s = h0
        for k in range(m):
            carries[:, :, k] = s
            s = torch.addcmul(x4[:, :, k, -1], decay[:, :, k, -1], s)
        x4.addcmul_(decay, carries.unsqueeze(3))
        start, prev = Tm, x[:, :, Tm - 1]
    else:
        x[:, :, 0].addcmul_(a[:, :, 0], h0)
        start, prev = 1, x[:, :, 0]
    for j in range(start, T):
        x[:, :, j].addcmul_(a[:, :, j], prev)
        prev = x[:, :, j]
    return x


def _scan_reverse(dt: torch.Tensor, A: torch.Tensor, a: torch.Tensor, x: torch.Tensor,
                  gc: torch.Tensor) -> torch.Tensor:
    """Adjoint recurrence g_j = x_j + a_{j+1} g_{j+1}, with g_{T-1} = x_{T-1} + gc; in place in `x`.

    `gc` is what flows in from the right (a_T g_T of the next block, or the last-state gradient).
    """
    b, E, T, N = x.shape
    c = _chunk_len(T)
    m = T // c
    r = T - m * c                      # the tail [m*c, T) is scanned first, sequentially
    prev = gc
    for j in range(T - 1, m * c - 1, -1):
        x[:, :, j].add_(prev)
        prev = a[:, :, j] * x[:, :, j]
    if m == 0:
        return x
    if m == 1:
        for j in range(c - 1, -1, -1):
            x[:, :, j].add_(prev)
            if j:
                prev = a[:, :, j] * x[:, :, j]
        return x
    Tm = m * c
    x4 = x[:, :, :Tm].view(b, E, m, c, N)
    a4 = a[:, :, :Tm].view(b, E, m, c, N)
    for j in range(c - 2, -1, -1):
        x4[:, :, :, j].addcmul_(a4[:, :, :, j + 1], x4[:, :, :, j + 1])
    dt4 = dt[:, :, :Tm].reshape(b, E, m, c)
    # Q_j = prod_{i=j+1}^{end} a_i  (exclusive reverse cumulative sum of dt)
    rcum = dt4.flip(-1).cumsum(-1).flip(-1) - dt4
    decay = torch.exp(rcum.unsqueeze(-1) * A.view(1, E, 1, 1, N))
    whole = torch.exp((dt4.sum(-1)).unsqueeze(-1) * A.view(1, E, 1, N))     # (b, E, m, N)
    carries = x.new_empty(b, E, m, N)
    s = prev
    for k in range(m - 1, -1, -1):
        carries[:, :, k] = s
        # carry into chunk k-1: a_{start_k} * g_{start_k} = a_start * g_loc_start + whole_k * s
        s = torch.addcmul(whole[:, :, k] * s, a4[:, :, k, 0], x4[:, :, k, 0])
    x4.addcmul_(decay, carries.unsqueeze(3))
    return x


# ----------------------------------------------------------------------------------------------------------
# one block, forward and backward
# ----------------------------------------------------------------------------------------------------------

def _dt(delta: torch.Tensor, delta_bias, softplus: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float().unsqueeze(-1)
    if softplus:
        return F.softplus(dt), torch.sigmoid(dt)
    return dt, None


def _grouped(t4: torch.Tensor, E: int) -> torch.Tensor:
    """(b, G, N, T) -> float32 (b, G, 1, T, N) view that broadcasts over the E/G channels of each group."""
    return t4.float().transpose(-1, -2).unsqueeze(2)


def _states(dt, u32, A, Bg, h0):
    b, E, T = dt.shape
    G = Bg.shape[1]
    N = A.shape[1]
    a = torch.exp(dt.unsqueeze(-1) * A.view(1, E, 1, N))
    x = torch.empty(b, E, T, N, dtype=torch.float32, device=dt.device)
    torch.mul((dt * u32).view(b, G, E // G, T, 1), Bg, out=x.view(b, G, E // G, T, N))
    return a, _scan_forward(dt, A, a, x, h0)


def _contract_C(h: torch.Tensor, Cg: torch.Tensor) -> torch.Tensor:
    b, E, T, N = h.shape
    G = Cg.shape[1]
    return torch.einsum("bghtn,bgtn->bght", h.view(b, G, E // G, T, N), Cg.squeeze(2)).reshape(b, E, T)


def _layout(t: torch.Tensor, G: int, m: int, c: int) -> torch.Tensor:
    """(b, G*K, m*c) or (b, G, K, m*c) -> contiguous float32 (b, G, m, c, K): one (b, G, m, K) slice per
    step j, all chunks of the block side by side."""
    b = t.shape[0]
    return t.float().reshape(b, G, -1, m, c).permute(0, 1, 3, 4, 2).contiguous()


def _steps_end(dt5, du5, B5, A5, h):
    """Advance every chunk by its c positions from state h (b, G, m, H, N), in place; returns h."""
    a = torch.empty_like(h)
    for j in range(dt5.shape[3]):
        torch.mul(dt5[:, :, :, j, :, None], A5, out=a)
        a.exp_()
        h.mul_(a).addcmul_(du5[:, :, :, j, :, None], B5[:, :, :, j, None, :])
    return h


def _steps_y(dt5, du5, B5, C5, A5, h):
    """As `_steps_end`, also returning y (b, G, m, c, H) = C_j . h_j for every position."""
    y = dt5.new_empty(dt5.shape)
    a = torch.empty_like(h)
    for j in range(dt5.shape[3]):
        torch.mul(dt5[:, :, :, j, :, None], A5, out=a)
        a.exp_()
        h.mul_(a).addcmul_(du5[:, :, :, j, :, None], B5[:, :, :, j, None, :])
        torch.matmul(h, C5[:, :, :, j, :, None], out=y[:, :, :, j, :, None])
    return y, h


def _block_forward(dt, u32, A, B, C, h_in, c):
    """One block: dt, u32 (b, E, T) float32 with T = m*c; B, C (b, G, N, T); h_in (b, E, N).

    Pass 1 runs every chunk from a zero state to get its end state; the chunk carries follow from
    carry_{k+1} = exp(A sum(dt over chunk k)) carry_k + end_k; pass 2 reruns the chunks from their true
    initial states and contracts with C on the way. Returns y (b, E, T) and the block's last state.
    """
    b, E, T = dt.shape
    N = A.shape[1]
    if B.shape[1] != C.shape[1]:
        G = math.lcm(B.shape[1], C.shape[1])
        B = B.repeat_interleave(G // B.shape[1], dim=1)
        C = C.repeat_interleave(G // C.shape[1], dim=1)
    G = B.shape[1]
    H = E // G
    m = T // c
    dt5 = _layout(dt, G, m, c)
    du5 = _layout(dt * u32, G, m, c)
    B5 = _layout(B, G, m, c)
    C5 = _layout(C, G, m, c)
    A5 = A.view(1, G, 1, H, N)
    if m > 1:
        ends = _steps_end(dt5, du5, B5, A5, dt5.new_zeros(b, G, m, H, N))
        whole = torch.exp(dt5.sum(3).unsqueeze(-1) * A5)
        h0 = torch.empty_like(ends)
        s_ = h_in.view(b, G, H, N)
        for k in range(m):
            h0[:, :, k] = s_
            s_ = torch.addcmul(ends[:, :, k], whole[:, :, k], s_)
    else:
        h0 = h_in.view(b, G, 1, H, N).clone()
    y5, h = _steps_y(dt5, du5, B5, C5, A5, h0)
    y = y5.permute(0, 1, 4, 2, 3).reshape(b, E, T)
    return y, h[:, :, -1].reshape(b, E, N)


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus):
    b, E, L = u.shape
    N = A.shape[1]
    A32 = A.float()
    out = torch.empty_like(u)
    blk = _block_len(b, E, N, L)
    starts = list(range(0, L, blk)) or [0]
    states = torch.empty(len(starts), b, E, N, dtype=torch.float32, device=u.device)
    h = torch.zeros(b, E, N, dtype=torch.float32, device=u.device)
    for i, s in enumerate(starts):
        e = min(s + blk, L)
        states[i] = h
        if e == s:
            break
        dt, _ = _dt(delta[..., s:e], delta_bias, softplus)
        u32 = u[..., s:e].float()
        T = e - s
        c = min(CHUNK, T)
        main = T - T % c
        y = torch.empty(b, E, T, dtype=torch.float32, device=u.device)
        y[..., :main], h = _block_forward(dt[..., :main], u32[..., :main], A32, B[..., s:s + main],
                                          C[..., s:s + main], h, c)
        if main < T:
            y[..., main:], h = _block_forward(dt[..., main:], u32[..., main:], A32, B[..., s + main:e],
                                              C[..., s + main:e], h, T - main)
        if D is not None:
            y.addcmul_(u32, D.float().unsqueeze(-1))
        if z is not None:
            y.mul_(F.silu(z[..., s:e].float()))
        out[..., s:e] = y
    return out, h, states


def _block_len(b: int, E: int, N: int, L: int) -> int:
    """Positions per block: CHUNK times the number of chunks whose step slice fits STEP_ELEMENTS."""
    return max(1, min(L, CHUNK * max(1, STEP_ELEMENTS // max(1, b * E * N))))


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, last, states = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.softplus = delta_softplus
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        b, E, L = u.shape
        N = A.shape[1]
        GB, GC = B.shape[1], C.shape[1]
        HB, HC = E // GB, E // GC
        dev = u.device
        f32 = dict(dtype=torch.float32, device=dev)
        A32 = A.float()
        D32 = D.float() if D is not None else None
        du = torch.empty(b, E, L, **f32)
        ddelta = torch.empty(b, E, L, **f32)
        dB = torch.empty(b, GB, N, L, **f32)
        dC = torch.empty(b, GC, N, L, **f32)
        dz = torch.empty(b, E, L, **f32) if z is not None else None
        dA = torch.zeros(E, N, **f32)
        dD = torch.zeros(E, **f32) if D is not None else None
        dbias = torch.zeros(E, **f32) if delta_bias is not None else None
        gc = dlast.float() if dlast is not None else torch.zeros(b, E, N, **f32)
        blk = _block_len(b, E, N, L)
        starts = list(range(0, L, blk))
        for i in range(len(starts) - 1, -1, -1):
            s = starts[i]
            e = min(s + blk, L)
            T = e - s
            dt, sig = _dt(delta[..., s:e], delta_bias, ctx.softplus)
            u32 = u[..., s:e].float()
            Bg = _grouped(B[..., s:e], E)
            Cg = _grouped(C[..., s:e], E)
            h0 = states[i]
            a, hs = _states(dt, u32, A32, Bg, h0)
            dy = dout[..., s:e].float()
            if z is not None:
                z32 = z[..., s:e].float()
                y = _contract_C(hs, Cg)
                if D32 is not None:
                    y.addcmul_(u32, D32.unsqueeze(-1))
                zs = torch.sigmoid(z32)
                dz[..., s:e] = dy * y * zs * (1 + z32 * (1 - zs))
                dy = dy * z32 * zs
            # dC = sum over the group's channels of dy * h
            dC[..., s:e] = torch.einsum("bght,bghtn->bgnt", dy.view(b, GC, HC, T), hs.view(b, GC, HC, T, N))
            # dA/d(dt) terms need a_t * h_{t-1}: overwrite `a` with it
            a0 = a[:, :, 0].clone()
            a[:, :, 1:].mul_(hs[:, :, :-1])
            a[:, :, 0].mul_(h0)
            ah = a
            del hs
            g = torch.empty(b, E, T, N, **f32)
            torch.mul(dy.view(b, GC, HC, T, 1), Cg, out=g.view(b, GC, HC, T, N))
            # adjoint scan needs the raw decays again: a_{j+1}; recompute them (cheap vs storing)
            a_dec = torch.exp(dt.unsqueeze(-1) * A32.view(1, E, 1, N))
            g = _scan_reverse(dt, A32, a_dec, g, gc)
            del a_dec
            gc = a0 * g[:, :, 0]
            ah.mul_(g)                                                            # q = g * a * h_prev
            dA += torch.einsum("betn,bet->en", ah, dt)
            ddt = torch.einsum("betn,en->bet", ah, A32)
            del ah
            gB = torch.einsum("bghtn,bgtn->bght", g.view(b, GB, HB, T, N), Bg.squeeze(2)).reshape(b, E, T)
            dB[..., s:e] = torch.einsum("bghtn,bght->bgnt", g.view(b, GB, HB, T, N), (dt * u32).view(b, GB, HB, T))
            del g
            ddt.addcmul_(gB, u32)
            du_blk = gB * dt
            if D32 is not None:
                du_blk.addcmul_(dy, D32.unsqueeze(-1))
                dD += (dy * u32).sum((0, 2))
            du[..., s:e] = du_blk
            if sig is not None:
                ddt.mul_(sig)
            ddelta[..., s:e] = ddt
            if dbias is not None:
                dbias += ddt.sum((0, 2))
        return (du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.to(D.dtype) if D is not None else None,
                dz.to(z.dtype) if z is not None else None,
                dbias.to(delta_bias.dtype) if delta_bias is not None else None, None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """mamba_ssm's `selective_scan_fn` in pure PyTorch; B, C may be (b, N, L) or grouped (b, G, N, L)."""
    squeeze_B, squeeze_C = B.dim() == 3, C.dim() == 3
    B4 = B.unsqueeze(1) if squeeze_B else B
    C4 = C.unsqueeze(1) if squeeze_C else C
    out, last = _SelectiveScan.apply(u, delta, A, B4, C4, D, z, delta_bias, bool(delta_softplus))
    return (out, last) if return_last_state else out
