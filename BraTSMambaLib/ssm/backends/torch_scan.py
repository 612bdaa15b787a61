"""Pure-PyTorch selective scan for any device (CPU, CUDA, MPS): chunked, two-pass, memory-bounded.

The recurrence h_t = a_t h_{t-1} + x_t (a_t = exp(dt_t A), x_t = dt_t u_t B_t) has a (batch, E, L, N)
state - 400 M floats at SegMamba's stage 0 - so it is never held for the whole sequence. The sequence is
cut into blocks and a block into m chunks of c positions. One Python step advances all m chunks of the
block by one position, so a block costs c steps on (batch, E, m, N) slices that stay in cache:

  pass 1  every chunk from a zero state -> its end state e_k;
  carry   s_{k+1} = exp(A * sum of dt over chunk k) * s_k + e_k  (the true state entering each chunk);
  pass 2  every chunk again from its true initial state, contracting with C on the way (y_t = C_t . h_t).

Only decays exp(dt A) <= 1 and their products appear, never inverses, so nothing overflows whatever dt
and A are. The backward pass (a custom autograd.Function) walks the blocks in reverse from the saved
block-initial states: it recomputes the block's states (pass 1, carry, pass 2 keeping the block's states),
then runs the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1} with the same two passes (reverse chunk carries)
and accumulates every gradient step by step. Memory stays O(block), never O(L * N).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NAME = "torch"

#: Chunk length: positions covered by one block's Python step loop.
CHUNK = 32
#: Target size (elements) of one step's state slice (batch * E * chunks per block * N); sets the block length.
#: CPU: fits L2. GPUs: large, so that each op fills the device and few ops are launched per sequence
#: (the backward keeps CHUNK slices of states per block: 2^22 floats x 32 = 512 MB there).
STEP_ELEMENTS = 1 << 18
STEP_ELEMENTS_ACCEL = 1 << 22
#: Chunk carries are propagated sequentially up to this many chunks, hierarchically above.
CARRY_SEQUENTIAL = 64


def is_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Pure PyTorch: available on every device torch supports."""
    return True, "pure PyTorch (chunked two-pass scan), any device"


def _block_len(b: int, E: int, N: int, L: int, device: torch.device | None = None) -> int:
    """Positions per block: CHUNK times the number of chunks whose step slice fits STEP_ELEMENTS."""
    step = STEP_ELEMENTS if device is None or device.type == "cpu" else STEP_ELEMENTS_ACCEL
    return max(1, min(L, CHUNK * max(1, step // max(1, b * E * N))))


def _segments(b: int, E: int, N: int, L: int, device: torch.device | None = None) -> list[tuple[int, int, int]]:
    """(start, end, chunk) pieces of the sequence: blocks of whole chunks, each block's remainder on its own."""
    out = []
    blk = _block_len(b, E, N, L, device)
    for s in range(0, L, blk):
        e = min(s + blk, L)
        c = min(CHUNK, e - s)
        main = s + (e - s) // c * c
        out.append((s, main, c))
        if main < e:
            out.append((main, e, e - main))
    return out


# ----------------------------------------------------------------------------------------------------------
# optional torch.compile of the forward's two chunk passes (BRATSMAMBA_SCAN_COMPILE=1)
# ----------------------------------------------------------------------------------------------------------
# Inductor fuses a pass's c steps into one loop over the (b, G, m, H, N) slice that keeps the state in
# registers: about 3x less time than the eager step loop on a CPU. Compiling takes a minute or two per
# shape (cached by torch afterwards), needs a C++ compiler, and is therefore opt-in; any failure turns it
# off for the process with one warning and the eager loop runs instead.

COMPILE_ENV = "BRATSMAMBA_SCAN_COMPILE"
_compiled: dict[str, object] = {}
_compile_broken = False


def _ends_fn(dt5, du5, B5, A5):
    e = None
    for j in range(dt5.shape[3]):
        x = du5[:, :, :, j, :, None] * B5[:, :, :, j, None, :]
        e = x if e is None else torch.exp(dt5[:, :, :, j, :, None] * A5) * e + x
    return e


def _pass2_fn(dt5, du5, B5, C5, A5, h):
    ys = []
    for j in range(dt5.shape[3]):
        h = torch.exp(dt5[:, :, :, j, :, None] * A5) * h + du5[:, :, :, j, :, None] * B5[:, :, :, j, None, :]
        ys.append((h * C5[:, :, :, j, None, :]).sum(-1))
    return torch.stack(ys, 3), h


def compile_enabled() -> bool:
    import os

    return not _compile_broken and os.environ.get(COMPILE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _try_compiled(name: str, fn, *args):
    """fn compiled by torch.compile (cached), or None when compilation is off or has failed."""
    global _compile_broken
    if not compile_enabled():
        return None
    try:
        if name not in _compiled:
            _compiled[name] = torch.compile(fn, dynamic=False, fullgraph=True)
        return _compiled[name](*args)
    except Exception as e:  # no compiler, unsupported platform, inductor bug: run eagerly from now on
        import warnings

        _compile_broken = True
        warnings.warn(f"{COMPILE_ENV}: torch.compile of the scan failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200]}); using the eager scan", RuntimeWarning, stacklevel=2)
        return None


def _carries(S: torch.Tensor, A5: torch.Tensor, e: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """States entering each of m chunks: s_0 = s0, s_{k+1} = exp(S_k A) s_k + e_k.

    S (b, G, m, H) sums of dt per chunk, A5 (1, G, 1, H, N), e (b, G, m, H, N) chunk ends from a zero
    state, s0 (b, G, H, N). Sequential for few chunks; otherwise the same two-level scheme once more
    (groups of chunks scanned side by side, group carries by recursion), so the number of Python steps
    grows like sqrt(m), not m.
    """
    b, G, m, H, N = e.shape
    if m <= CARRY_SEQUENTIAL:
        whole = torch.exp(S.unsqueeze(-1) * A5)
        out = torch.empty_like(e)
        s = s0
        for k in range(m):
            out[:, :, k] = s
            s = torch.addcmul(e[:, :, k], whole[:, :, k], s)
        return out
    m2 = math.isqrt(m)
    m1 = -(-m // m2)
    pad = m1 * m2 - m
    if pad:
        S = torch.cat([S, S.new_zeros(b, G, pad, H)], 2)
        e = torch.cat([e, e.new_zeros(b, G, pad, H, N)], 2)
    S6 = S.reshape(b, G, m1, m2, H)
    e6 = e.reshape(b, G, m1, m2, H, N)
    A6 = A5.unsqueeze(2)
    W6 = torch.exp(S6.unsqueeze(-1) * A6)
    after = torch.empty_like(e6)
    after[:, :, :, 0] = e6[:, :, :, 0]
    for j in range(1, m2):
        torch.addcmul(e6[:, :, :, j], W6[:, :, :, j], after[:, :, :, j - 1], out=after[:, :, :, j])
    g_in = _carries(S6.sum(3), A5, after[:, :, :, -1].contiguous(), s0)
    after.addcmul_(torch.exp(S6.cumsum(3).unsqueeze(-1) * A6), g_in.unsqueeze(3))
    flat = after.reshape(b, G, m1 * m2, H, N)
    out = torch.empty(b, G, m, H, N, dtype=e.dtype, device=e.device)
    out[:, :, 0] = s0
    out[:, :, 1:] = flat[:, :, :m - 1]
    return out


def _dt(delta: torch.Tensor, delta_bias, softplus: bool, need_sigmoid: bool
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dt = softplus(delta + bias) (or delta + bias) in float32, and softplus' = sigmoid for the backward."""
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float().unsqueeze(-1)
    if softplus:
        return F.softplus(dt), (torch.sigmoid(dt) if need_sigmoid else None)
    return dt, None


def _layout(t: torch.Tensor, G: int, m: int, c: int) -> torch.Tensor:
    """(b, G*K, m*c) or (b, G, K, m*c) -> contiguous float32 (b, G, m, c, K): one (b, G, m, K) slice per
    step j, all chunks of the block side by side."""
    b = t.shape[0]
    return t.float().reshape(b, G, -1, m, c).permute(0, 1, 3, 4, 2).contiguous()


def _unlayout(t5: torch.Tensor) -> torch.Tensor:
    """Inverse of `_layout` for (b, G, m, c, K) -> (b, G, K, m*c)."""
    b, G, m, c, K = t5.shape
    return t5.permute(0, 1, 4, 2, 3).reshape(b, G, K, m * c)


def _groups(B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """B and C with a common group count (B and C may be grouped differently)."""
    if B.shape[1] == C.shape[1]:
        return B, C, B.shape[1]
    G = math.lcm(B.shape[1], C.shape[1])
    return B.repeat_interleave(G // B.shape[1], 1), C.repeat_interleave(G // C.shape[1], 1), G


class _Seg:
    """One segment's inputs in step layout: dt5, du5 (= dt*u) (b, G, m, c, H); B5, C5 (b, G, m, c, N)."""

    def __init__(self, u, delta, B, C, delta_bias, softplus, A, s, e, c, backward=False):
        b, E, _ = u.shape
        Bs, Cs, G = _groups(B[..., s:e], C[..., s:e])
        self.G, self.H, self.N, self.m, self.c = G, E // G, A.shape[1], (e - s) // c, c
        dt, self.sig = _dt(delta[..., s:e], delta_bias, softplus, backward)
        self.u32 = u[..., s:e].float()
        self.dt = dt
        self.dt5 = _layout(dt, G, self.m, c)
        self.du5 = _layout(dt * self.u32, G, self.m, c)
        self.B5 = _layout(Bs, G, self.m, c)
        self.C5 = _layout(Cs, G, self.m, c)
        self.A5 = A.float().view(1, G, 1, self.H, self.N)

    def decay(self, j: int, out: torch.Tensor) -> torch.Tensor:
        torch.mul(self.dt5[:, :, :, j, :, None], self.A5, out=out)
        return out.exp_()

    def chunk_starts(self, h_in: torch.Tensor) -> torch.Tensor:
        """True state entering every chunk (b, G, m, H, N), from the state h_in (b, E, N) entering the segment."""
        b = h_in.shape[0]
        G, H, N, m = self.G, self.H, self.N, self.m
        if m == 1:
            return h_in.reshape(b, G, 1, H, N).clone()
        e = _try_compiled("ends", _ends_fn, self.dt5, self.du5, self.B5, self.A5)
        if e is None:
            e = self.dt5.new_zeros(b, G, m, H, N)
            a = torch.empty_like(e)
            for j in range(self.c):                                         # pass 1: zero-state chunk ends
                e.mul_(self.decay(j, a)).addcmul_(self.du5[:, :, :, j, :, None], self.B5[:, :, :, j, None, :])
        return _carries(self.dt5.sum(3), self.A5, e, h_in.reshape(b, G, H, N))


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus):
    b, E, L = u.shape
    N = A.shape[1]
    out = torch.empty_like(u)
    segs = _segments(b, E, N, L, u.device)
    states = torch.empty(max(1, len(segs)), b, E, N, dtype=torch.float32, device=u.device)
    h = torch.zeros(b, E, N, dtype=torch.float32, device=u.device)
    for i, (s, e, c) in enumerate(segs):
        states[i] = h
        sg = _Seg(u, delta, B, C, delta_bias, softplus, A, s, e, c)
        hc = sg.chunk_starts(h)
        res = _try_compiled("pass2", _pass2_fn, sg.dt5, sg.du5, sg.B5, sg.C5, sg.A5, hc) if sg.m > 1 else None
        if res is not None:
            y5, hc = res
        else:
            y5 = sg.dt5.new_empty(sg.dt5.shape)
            a = torch.empty_like(hc)
            for j in range(c):                                              # pass 2: states and y = C . h
                hc.mul_(sg.decay(j, a)).addcmul_(sg.du5[:, :, :, j, :, None], sg.B5[:, :, :, j, None, :])
                y5[:, :, :, j] = torch.einsum("bgmhn,bgmn->bgmh", hc, sg.C5[:, :, :, j])
        h = hc[:, :, -1].reshape(b, E, N)
        y = _unlayout(y5).reshape(b, E, e - s)
        if D is not None:
            y.addcmul_(sg.u32, D.float().unsqueeze(-1))
        if z is not None:
            y.mul_(F.silu(z[..., s:e].float()))
        out[..., s:e] = y
    return out, h, states


def _segment_backward(sg: _Seg, h_in, dout, z, D32, gc, grads, s, e):
    """Gradients of one segment; returns the adjoint carry a_s g_s flowing into the previous segment."""
    b = dout.shape[0]
    G, H, N, m, c = sg.G, sg.H, sg.N, sg.m, sg.c
    E = G * H
    # states of the segment, kept: hs[:, :, :, j] = h at position j of every chunk
    h0 = sg.chunk_starts(h_in)
    hs = sg.dt5.new_empty(b, G, m, c, H, N)
    a = torch.empty_like(h0)
    prev = h0
    for j in range(c):
        torch.addcmul(sg.du5[:, :, :, j, :, None] * sg.B5[:, :, :, j, None, :], sg.decay(j, a), prev,
                      out=hs[:, :, :, j])
        prev = hs[:, :, :, j]
    dy = dout[..., s:e].float()
    if z is not None:
        z32 = z[..., s:e].float()
        y5 = torch.matmul(hs, sg.C5.unsqueeze(-1)).squeeze(-1)             # (b, G, m, c, H)
        y = _unlayout(y5).reshape(b, E, e - s)
        if D32 is not None:
            y.addcmul_(sg.u32, D32.unsqueeze(-1))
        zs = torch.sigmoid(z32)
        grads["z"][..., s:e] = dout[..., s:e].float() * y * zs * (1 + z32 * (1 - zs))
        dy = dy * z32 * zs
    dy5 = _layout(dy, G, m, c)
    # adjoint pass 1: zero carry at every chunk end -> what each chunk sends left (a_start g_start)
    inc = torch.zeros_like(h0)
    if m > 1:
        g = torch.empty_like(h0)
        for j in range(c - 1, -1, -1):
            torch.addcmul(inc, sg.C5[:, :, :, j, None, :], dy5[:, :, :, j, :, None], out=g)
            torch.mul(g, sg.decay(j, a), out=inc)
        # right-to-left carries: the forward recurrence on the chunk axis reversed
        inc = _carries(sg.dt5.sum(3).flip(2), sg.A5, inc.flip(2), gc.reshape(b, G, H, N)).flip(2)
    else:
        inc = gc.reshape(b, G, 1, H, N).clone()
    # adjoint pass 2 with the true carries, accumulating the gradients step by step
    gB5 = torch.empty_like(sg.dt5)
    ddtA5 = torch.empty_like(sg.dt5)
    dB5 = torch.empty_like(sg.B5)
    dC5 = torch.empty_like(sg.C5)
    dA_acc = torch.zeros_like(h0)
    g = torch.empty_like(h0)
    q = torch.empty_like(h0)
    for j in range(c - 1, -1, -1):
        torch.addcmul(inc, sg.C5[:, :, :, j, None, :], dy5[:, :, :, j, :, None], out=g)
        torch.mul(g, sg.decay(j, a), out=inc)                               # a_j g_j: carried to j-1
        torch.mul(inc, hs[:, :, :, j - 1] if j else h0, out=q)             # q_j = g_j a_j h_{j-1}
        dA_acc.addcmul_(q, sg.dt5[:, :, :, j, :, None])
        ddtA5[:, :, :, j] = torch.einsum("bgmhn,ghn->bgmh", q, sg.A5[0, :, 0])
        gB5[:, :, :, j] = torch.einsum("bgmhn,bgmn->bgmh", g, sg.B5[:, :, :, j])
        dB5[:, :, :, j] = torch.einsum("bgmh,bgmhn->bgmn", sg.du5[:, :, :, j], g)
        dC5[:, :, :, j] = torch.einsum("bgmh,bgmhn->bgmn", dy5[:, :, :, j], hs[:, :, :, j])
    grads["A"] += dA_acc.sum((0, 2)).reshape(E, N)
    gB = _unlayout(gB5).reshape(b, E, e - s)
    du = gB * sg.dt
    ddt = _unlayout(ddtA5).reshape(b, E, e - s).addcmul_(gB, sg.u32)
    if D32 is not None:
        du.addcmul_(dy, D32.unsqueeze(-1))
        grads["D"] += (dy * sg.u32).sum((0, 2))
    if sg.sig is not None:
        ddt.mul_(sg.sig)
    grads["u"][..., s:e] = du
    grads["delta"][..., s:e] = ddt
    if grads.get("delta_bias") is not None:
        grads["delta_bias"] += ddt.sum((0, 2))
    grads["B"][..., s:e] = _unlayout(dB5)
    grads["C"][..., s:e] = _unlayout(dC5)
    # carry into the previous segment: a_s g_s of the segment's first position, chunk 0
    return inc[:, :, 0].reshape(b, E, N)


def _fold_groups(g: torch.Tensor, G: int) -> torch.Tensor:
    """Sum a (b, Gc, N, L) gradient of a group-expanded tensor back to (b, G, N, L)."""
    b, Gc, N, L = g.shape
    return g if Gc == G else g.view(b, G, Gc // G, N, L).sum(2)


def _backward(u, delta, A, B, C, D, z, delta_bias, softplus, states, dout, dlast):
    b, E, L = u.shape
    N = A.shape[1]
    Gc = math.lcm(B.shape[1], C.shape[1])
    f32 = dict(dtype=torch.float32, device=u.device)
    grads = {"u": torch.empty(b, E, L, **f32), "delta": torch.empty(b, E, L, **f32),
             "A": torch.zeros(E, N, **f32), "B": torch.empty(b, Gc, N, L, **f32),
             "C": torch.empty(b, Gc, N, L, **f32),
             "D": torch.zeros(E, **f32) if D is not None else None,
             "z": torch.empty(b, E, L, **f32) if z is not None else None,
             "delta_bias": torch.zeros(E, **f32) if delta_bias is not None else None}
    D32 = D.float() if D is not None else None
    gc = dlast.float() if dlast is not None else torch.zeros(b, E, N, **f32)
    segs = _segments(b, E, N, L, u.device)
    for i in range(len(segs) - 1, -1, -1):
        s, e, c = segs[i]
        sg = _Seg(u, delta, B, C, delta_bias, softplus, A, s, e, c, backward=True)
        gc = _segment_backward(sg, states[i], dout, z, D32, gc, grads, s, e)
    grads["B"] = _fold_groups(grads["B"], B.shape[1])
    grads["C"] = _fold_groups(grads["C"], C.shape[1])
    return grads


# ----------------------------------------------------------------------------------------------------------
# CPU threading: channel parts on Python threads, each running single-threaded ATen ops
# ----------------------------------------------------------------------------------------------------------
# By default one part runs with ATen's own intra-op threads: on an idle 2-core machine that is fastest
# (stage 0: forward 1.11 s, forward+backward 4.9 s, against 1.94 s / 8.2 s with the thread split below).
# On an oversubscribed machine every small op forking an OpenMP team can cost 10x, so
# BRATSMAMBA_SCAN_CPU_PARTS=1 splits the channels into torch.get_num_threads() parts on Python threads
# (ATen releases the GIL), each step slice kept below ATen's parallel grain so no op opens a parallel region.
CPU_PARTS_ENV = "BRATSMAMBA_SCAN_CPU_PARTS"

_POOL = None
#: per-part step slice on CPU when threads are used: below ATen's grain size (32768), so ops stay serial
CPU_PART_STEP_ELEMENTS = 1 << 15


def _pool(n: int):
    global _POOL
    from concurrent.futures import ThreadPoolExecutor

    if _POOL is None or _POOL._max_workers != n:
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="bratsmamba-scan")
    return _POOL


def _parts(u, B, C) -> list[tuple[int, int, int, int]]:
    """Channel parts (e0, e1, g0, g1) for the CPU threads; one part (everything) when not worth it."""
    import os

    split = os.environ.get(CPU_PARTS_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    P = torch.get_num_threads() if split and u.device.type == "cpu" and not compile_enabled() else 1
    E = u.shape[1]
    G = B.shape[1]
    if P <= 1 or B.shape[1] != C.shape[1] or E < 2 * P:
        return [(0, E, 0, G)]
    if G == 1:
        cuts = [round(E * p / P) for p in range(P + 1)]
        return [(cuts[p], cuts[p + 1], 0, 1) for p in range(P)]
    if G % P == 0:
        H = E // G
        return [(G * p // P * H, G * (p + 1) // P * H, G * p // P, G * (p + 1) // P) for p in range(P)]
    return [(0, E, 0, G)]


def _run_parts(fn, parts):
    if len(parts) == 1:
        return [fn(*parts[0])]
    global STEP_ELEMENTS
    saved = STEP_ELEMENTS

    def serial(*part):
        torch.set_num_threads(1)          # this worker thread only runs serial ops (per-thread OpenMP setting)
        with torch.no_grad():             # grad mode is per thread; the Function computes its own gradients
            return fn(*part)

    STEP_ELEMENTS = min(STEP_ELEMENTS, CPU_PART_STEP_ELEMENTS)
    try:
        return [f.result() for f in [_pool(len(parts)).submit(serial, *p) for p in parts]]
    finally:
        STEP_ELEMENTS = saved


def _sub(t, e0, e1, dim=1):
    return None if t is None else t.narrow(dim, e0, e1 - e0)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        parts = _parts(u, B, C)
        ctx.parts = parts
        grouped = B.shape[1] > 1

        def run(e0, e1, g0, g1):
            Bp, Cp = (B[:, g0:g1], C[:, g0:g1]) if grouped else (B, C)
            return _forward(_sub(u, e0, e1), _sub(delta, e0, e1), A[e0:e1], Bp, Cp, _sub(D, e0, e1, 0),
                            _sub(z, e0, e1), _sub(delta_bias, e0, e1, 0), delta_softplus)

        res = _run_parts(run, parts)
        out = torch.cat([r[0] for r in res], 1) if len(res) > 1 else res[0][0]
        last = torch.cat([r[1] for r in res], 1) if len(res) > 1 else res[0][1]
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *[r[2] for r in res])
        ctx.softplus = delta_softplus
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, *states = ctx.saved_tensors
        grouped = B.shape[1] > 1
        parts = ctx.parts

        def run(idx, e0, e1, g0, g1):
            Bp, Cp = (B[:, g0:g1], C[:, g0:g1]) if grouped else (B, C)
            return _backward(_sub(u, e0, e1), _sub(delta, e0, e1), A[e0:e1], Bp, Cp, _sub(D, e0, e1, 0),
                             _sub(z, e0, e1), _sub(delta_bias, e0, e1, 0), ctx.softplus, states[idx],
                             _sub(dout, e0, e1), _sub(dlast, e0, e1))

        res = _run_parts(run, [(i, *p) for i, p in enumerate(parts)])
        if len(res) == 1:
            g = res[0]
        else:
            cat = lambda k, dim: torch.cat([r[k] for r in res], dim) if res[0][k] is not None else None
            g = {k: cat(k, 1) for k in ("u", "delta", "z")}
            g.update({k: cat(k, 0) for k in ("A", "D", "delta_bias")})
            for k in ("B", "C"):
                g[k] = cat(k, 1) if grouped else torch.stack([r[k] for r in res]).sum(0)
        cast = lambda k, like: g[k].to(like.dtype) if like is not None else None
        return (cast("u", u), cast("delta", delta), cast("A", A), cast("B", B), cast("C", C), cast("D", D),
                cast("z", z), cast("delta_bias", delta_bias), None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """mamba_ssm's `selective_scan_fn` in pure PyTorch; B, C may be (b, N, L) or grouped (b, G, N, L).

    Unlike mamba_ssm, a gradient flowing into the returned last state is propagated too.
    """
    B4 = B.unsqueeze(1) if B.dim() == 3 else B
    C4 = C.unsqueeze(1) if C.dim() == 3 else C
    out, last = _SelectiveScan.apply(u, delta, A, B4, C4, D, z, delta_bias, bool(delta_softplus))
    return (out, last) if return_last_state else out
