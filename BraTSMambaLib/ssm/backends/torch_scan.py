"""Pure-PyTorch selective scan for any device (CPU, CUDA, MPS): chunked, two-pass, memory-bounded.

The recurrence h_t = a_t h_{t-1} + x_t (a_t = exp(dt_t A), x_t = dt_t u_t B_t) has a (batch, E, L, N)
state - 400 M floats at SegMamba's stage 0 - so it is never held for the whole sequence at once unless the
device has the memory for it. The sequence is cut into blocks and a block into m chunks of c positions;
every chunk of a block advances by one position per Python step:

  pass 1  every chunk from a zero state -> its end state e_k;
  carry   s_{k+1} = exp(A * sum of dt over chunk k) * s_k + e_k  (the true state entering each chunk);
  pass 2  every chunk again from its true initial state, contracting with C (y_t = C_t . h_t).

Two schedules of the same arithmetic:

* "step" (CPU forward): per position, ops on one (b, G, m, N, H) slice that stays in the L2 cache; the
  decays are computed per step, twice (recomputing is cheaper than a round trip through memory).
* "block" (accelerators, and every backward): whole-block tensors (c, b, G, m, N, H) for the decays a and
  the inputs x, computed by one op each; pass 2 overwrites x with the states in place (one addcmul per
  position) and y is one batched matmul. Few kernel launches: about 2c + carries per block, and on a
  large GPU the whole sequence is one block (sized from the free device memory).

Layouts: per-position tensors are (c, b, G, m, K) ("step-major": position j of every chunk is one
contiguous slice), states (b, G, m, N, H) with the channel axis H innermost. exp(dt A) is evaluated as
exp2(dt * A log2 e) (the same value; ATen's vectorised exp2 is ~4x faster than its exp on x86 CPUs).

Only decays exp(dt A) <= 1 and their products appear, never inverses, so nothing overflows whatever dt and
A are. The backward pass (a custom autograd.Function) walks the blocks in reverse from the saved
block-initial states: it recomputes the block's states, runs the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1}
with the same two passes (chunk carries right to left) and forms every gradient with whole-block ops.

Tunables (module attributes, overridable by environment variables read at every call; see docs/ssm.md):
BRATSMAMBA_SCAN_TORCH_CHUNK, _STEP, _BLOCK, _MODE, _CARRY.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from BraTSMambaLib.ssm.backends.groups import common_groups
from BraTSMambaLib.ssm.settings import env_choice, env_int

NAME = "torch"

#: Chunk length c: positions covered by one block's Python step loop.
CHUNK = 32
#: "step" schedule (CPU): elements of one step slice (b * E * chunks per block * N); sized to fit L2.
STEP_ELEMENTS = 1 << 18
#: "block" schedule on the CPU (the backward): elements of one whole-block tensor (c * step slice).
BLOCK_ELEMENTS_CPU = 1 << 22
#: "block" schedule on accelerators: at most this many elements per block tensor, and at most a fraction
#: of the free device memory (ACCEL_MEMORY_FRACTION / ACCEL_BUFFERS per buffer).
BLOCK_ELEMENTS_ACCEL = 1 << 30
ACCEL_MEMORY_FRACTION = 0.5
ACCEL_BUFFERS = 5
#: chunk carries: sequential up to this many chunks, otherwise groups of CARRY_GROUP recursively
CARRY_SEQUENTIAL = 16
CARRY_GROUP = 8
#: backward contractions over H as batched matmuls (None: on accelerators only)
CONTRACT_H_BY_BMM: bool | None = None

LOG2E = 1.4426950408889634

CHUNK_ENV = "BRATSMAMBA_SCAN_TORCH_CHUNK"
STEP_ENV = "BRATSMAMBA_SCAN_TORCH_STEP"
BLOCK_ENV = "BRATSMAMBA_SCAN_TORCH_BLOCK"
MODE_ENV = "BRATSMAMBA_SCAN_TORCH_MODE"
CARRY_ENV = "BRATSMAMBA_SCAN_TORCH_CARRY"


def is_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Pure PyTorch: available on every device torch supports."""
    return True, "pure PyTorch (chunked two-pass scan), any device"


def chunk_len() -> int:
    """Chunk length c (BRATSMAMBA_SCAN_TORCH_CHUNK, else CHUNK)."""
    return env_int(CHUNK_ENV, CHUNK)


def forward_mode(device: torch.device) -> str:
    """'step' or 'block' schedule of the forward (BRATSMAMBA_SCAN_TORCH_MODE; default step on CPU)."""
    return env_choice(MODE_ENV, ("step", "block"), "step" if device.type == "cpu" else "block")


def _free_bytes(device: torch.device) -> int | None:
    try:
        if device.type == "cuda":           # free on the device plus what torch's cache holds unused
            return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) \
                - torch.cuda.memory_allocated(device)
        if device.type == "mps":
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    except (RuntimeError, AttributeError):      # no driver query on this build: use the fixed cap
        return None
    return None


_STEP_CAP: int | None = None          # step-slice cap while CPU thread parts run


def _step_elements(device: torch.device) -> int:
    n = env_int(STEP_ENV, STEP_ELEMENTS)
    return min(n, _STEP_CAP) if _STEP_CAP else n


def _block_elements(device: torch.device) -> int:
    """Elements of one whole-block tensor in the block schedule."""
    if device.type == "cpu":
        n = env_int(BLOCK_ENV, BLOCK_ELEMENTS_CPU)
        return min(n, _STEP_CAP * chunk_len()) if _STEP_CAP else n
    if os.environ.get(BLOCK_ENV, "").strip():
        return env_int(BLOCK_ENV, BLOCK_ELEMENTS_ACCEL)
    if os.environ.get(STEP_ENV, "").strip():
        return env_int(STEP_ENV, 1) * chunk_len()
    n = BLOCK_ELEMENTS_ACCEL if device.type != "mps" else min(BLOCK_ELEMENTS_ACCEL, 1 << 28)
    free = _free_bytes(device)
    if free:
        n = min(n, int(free * ACCEL_MEMORY_FRACTION / (4 * ACCEL_BUFFERS)))
    return max(1, n)


def _segments(b: int, E: int, N: int, L: int, device: torch.device, mode: str) -> list[tuple[int, int, int]]:
    """(start, end, chunk) pieces of the sequence: blocks of whole chunks, each block's remainder on its own."""
    c0 = chunk_len()
    row = max(1, b * E * N)
    if mode == "step":
        chunks = max(1, _step_elements(device) // row)
    else:
        chunks = max(1, _block_elements(device) // (row * c0))
    blk = max(1, min(L, c0 * chunks))
    out = []
    for s in range(0, L, blk):
        e = min(s + blk, L)
        c = min(c0, e - s)
        main = s + (e - s) // c * c
        out.append((s, main, c))
        if main < e:
            out.append((main, e, e - main))
    return out


# ----------------------------------------------------------------------------------------------------------
# optional torch.compile of the step forward's two chunk passes (BRATSMAMBA_SCAN_COMPILE=1)
# ----------------------------------------------------------------------------------------------------------
# Inductor fuses a pass's c steps into one loop over the (b, G, m, N, H) slice that keeps the state in
# registers. Compiling takes a minute or two per shape (cached by torch afterwards), needs a C++ compiler,
# and is therefore opt-in; any failure turns it off for the process with one warning.

COMPILE_ENV = "BRATSMAMBA_SCAN_COMPILE"
_compiled: dict[str, object] = {}
_compile_broken = False


def _ends_fn(dt5, du5, B5, A2):
    e = None
    for j in range(dt5.shape[0]):
        x = du5[j].unsqueeze(-2) * B5[j].unsqueeze(-1)
        e = x if e is None else torch.exp2(dt5[j].unsqueeze(-2) * A2) * e + x
    return e


def _pass2_fn(dt5, du5, B5, C5, A2, h):
    ys = []
    for j in range(dt5.shape[0]):
        h = torch.exp2(dt5[j].unsqueeze(-2) * A2) * h + du5[j].unsqueeze(-2) * B5[j].unsqueeze(-1)
        ys.append((h * C5[j].unsqueeze(-1)).sum(-2))
    return torch.stack(ys, 0), h


def compile_enabled() -> bool:
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


# ----------------------------------------------------------------------------------------------------------
# chunk carries
# ----------------------------------------------------------------------------------------------------------

def _carries(S: torch.Tensor, A2: torch.Tensor, e: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """States entering each of m chunks: s_0 = s0, s_{k+1} = exp(S_k A) s_k + e_k.

    S (b, G, m, H) sums of dt per chunk, A2 (1, G, 1, N, H) = A log2(e), e (b, G, m, N, H) chunk ends from
    a zero state (overwritten), s0 (b, G, N, H). Sequential for few chunks; otherwise groups of CARRY_GROUP chunks are
    scanned side by side (in place, from zero), the group carries by recursion, and each chunk gets its
    group's carry times the closed-form decay exp(A * cumulative dt): launches grow like log(m).
    """
    b, G, m, N, H = e.shape
    if m <= CARRY_SEQUENTIAL:
        whole = torch.exp2(S.unsqueeze(-2) * A2)
        out = torch.empty_like(e)
        s = s0
        for k in range(m):
            out[:, :, k] = s
            if k + 1 < m:
                s = torch.addcmul(e[:, :, k], whole[:, :, k], s)
        return out
    g = max(2, env_int(CARRY_ENV, CARRY_GROUP))
    m1 = -(-m // g)
    pad = m1 * g - m
    if pad:
        S = torch.cat([S, S.new_zeros(b, G, pad, H)], 2)
        e = torch.cat([e, e.new_zeros(b, G, pad, N, H)], 2)
    S6 = S.reshape(b, G, m1, g, H)
    A6 = A2.unsqueeze(2)
    W6 = torch.exp2(S6.unsqueeze(-2) * A6)                  # (b, G, m1, g, N, H)
    after = e.reshape(b, G, m1, g, N, H)                    # e (contiguous) is overwritten
    for j in range(1, g):
        after[:, :, :, j].addcmul_(W6[:, :, :, j], after[:, :, :, j - 1])
    g_in = _carries(S6.sum(3), A2, after[:, :, :, -1].contiguous(), s0)          # (b, G, m1, N, H)
    after.addcmul_(torch.exp2(S6.cumsum(3).unsqueeze(-2) * A6), g_in.unsqueeze(3))
    flat = after.reshape(b, G, m1 * g, N, H)
    out = torch.empty(b, G, m, N, H, dtype=e.dtype, device=e.device)
    out[:, :, 0] = s0
    out[:, :, 1:] = flat[:, :, :m - 1]
    return out


# ----------------------------------------------------------------------------------------------------------
# layouts and segment inputs
# ----------------------------------------------------------------------------------------------------------

def _view5(t: torch.Tensor, G: int, m: int, c: int) -> torch.Tensor:
    """(b, G*K, m*c) or (b, G, K, m*c) -> strided view (c, b, G, m, K) (no copy: writes reach t)."""
    b = t.shape[0]
    return t.view(b, G, -1, m, c).permute(4, 0, 1, 3, 2)


def _layout(t: torch.Tensor, G: int, m: int, c: int) -> torch.Tensor:
    """Contiguous float32 (c, b, G, m, K): position j of every chunk is the contiguous slice [j].

    On CPU in three cache-friendly copies (swap K and m moving rows of c; transpose the small (K, c)
    tiles; move c outermost moving rows of K), about 5x faster than one permuting copy, whose reads
    stride through the whole segment."""
    b = t.shape[0]
    v = t.reshape(b, G, -1, m, c)
    K = v.shape[2]
    if t.device.type != "cpu":
        out = torch.empty((c, b, G, m, K), dtype=torch.float32, device=t.device)
        return out.copy_(v.permute(4, 0, 1, 3, 2))
    s1 = torch.empty((b, G, m, K, c), dtype=torch.float32).copy_(v.transpose(2, 3))
    s2 = torch.empty((b, G, m, c, K), dtype=torch.float32).copy_(s1.transpose(3, 4))
    return torch.empty((c, b, G, m, K), dtype=torch.float32).copy_(s2.permute(3, 0, 1, 2, 4))


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus(x) = max(x, 0) + log1p(exp(-|x|)), as F.softplus (to rounding).

    On CPU ATen's log1p (inside F.softplus) is scalar code, ~4x slower than this vectorised form, which
    gets log1p(t) exactly from log(1 + t) * t / ((1 + t) - 1) (the ratio is 1 where 1 + t rounds to 1)."""
    if x.device.type != "cpu":
        return F.softplus(x)
    t = x.abs().neg_().exp_()
    u = t + 1
    d = u - 1
    return u.log_().div_(d).nan_to_num_(nan=1.0).mul_(t).add_(x.clamp_min(0))


def _unlayout(t5: torch.Tensor) -> torch.Tensor:
    """Inverse of `_layout`: (c, b, G, m, K) -> (b, G, K, m*c) (a copy)."""
    c, b, G, m, K = t5.shape
    return t5.permute(1, 2, 4, 3, 0).reshape(b, G, K, m * c)


def _groups(B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """B and C with a common group count (B and C may be grouped differently), and that count."""
    B, C = common_groups(B, C)
    return B, C, B.shape[1]


def _buffer(ws: dict | None, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A float32 tensor of `shape`, carved from a buffer reused across the segments of one call (`ws`):
    fresh multi-megabyte allocations per segment cost page faults that grow with the sequence length."""
    n = math.prod(shape)
    if ws is None:
        return torch.empty(shape, dtype=torch.float32, device=device)
    buf = ws.get(name)
    if buf is None or buf.numel() < n:
        buf = ws[name] = torch.empty(n, dtype=torch.float32, device=device)
    return buf[:n].view(shape)


def _bmm_rows(R: int, *ts):
    return [t.reshape(R, *t.shape[-2:]) for t in ts]


class _Seg:
    """One segment's inputs in step-major layout: dt5, du5, u5 (c, b, G, m, H); B5, C5 (c, b, G, m, N);
    A2 (1, G, 1, N, H) = A * log2(e)."""

    def __init__(self, u, delta, B, C, delta_bias, softplus, A, s, e, c, backward=False):
        b, E, _ = u.shape
        Bs, Cs, G = _groups(B[..., s:e], C[..., s:e])
        self.b, self.G, self.H, self.N, self.m, self.c = b, G, E // G, A.shape[1], (e - s) // c, c
        self.R = c * b * G * self.m
        H, m = self.H, self.m
        dt5 = _layout(delta[..., s:e], G, m, c)
        if delta_bias is not None:
            dt5.add_(delta_bias.float().view(1, 1, G, 1, H))
        self.sig = None
        if softplus:
            if backward:
                self.sig = torch.sigmoid(dt5)
            dt5 = _softplus(dt5)
        self.dt5 = dt5
        self.u5 = _layout(u[..., s:e], G, m, c)
        self.du5 = dt5 * self.u5
        self.B5 = _layout(Bs, G, m, c)
        self.C5 = _layout(Cs, G, m, c)
        self.A2 = (A.float() * LOG2E).view(G, H, self.N).transpose(1, 2).contiguous().view(1, G, 1, self.N, H)

    # --- step schedule ---------------------------------------------------------------------------------
    def step_views(self):
        """Per-position broadcast views (dt_j, du_j over N; B_j over H), made once: the step loops are
        Python-bound enough that each saved call counts."""
        if not hasattr(self, "_sv"):
            self._sv = (self.dt5.unsqueeze(-2).unbind(0), self.du5.unsqueeze(-2).unbind(0),
                        self.B5.unsqueeze(-1).unbind(0))
        return self._sv

    def chunk_sums(self) -> torch.Tensor:
        return self.dt5.sum(0)

    def starts_step(self, h_in: torch.Tensor) -> torch.Tensor:
        """True state entering every chunk (b, G, m, N, H), from h_in (b, G, N, H), per-step decays."""
        b, G, H, N, m = self.b, self.G, self.H, self.N, self.m
        if m == 1:
            return h_in.reshape(b, G, 1, N, H).clone()
        e = _try_compiled("ends", _ends_fn, self.dt5, self.du5, self.B5, self.A2)
        if e is None:
            dts, dus, Bs = self.step_views()
            A2 = self.A2
            e = torch.mul(dus[0], Bs[0])
            a = torch.empty_like(e)
            for j in range(1, self.c):                                      # pass 1: zero-state chunk ends
                torch.mul(dts[j], A2, out=a)
                e.mul_(a.exp2_()).addcmul_(dus[j], Bs[j])
        return _carries(self.chunk_sums(), self.A2, e, h_in)

    def forward_step(self, h_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y5 (c, b, G, m, H) and the state after the segment (b, G, N, H), step schedule."""
        hc = self.starts_step(h_in)
        res = _try_compiled("pass2", _pass2_fn, self.dt5, self.du5, self.B5, self.C5, self.A2, hc) \
            if self.m > 1 else None
        if res is not None:
            y5, hc = res
        else:
            y5 = self.dt5.new_empty(self.dt5.shape)
            a = torch.empty_like(hc)
            R = self.b * self.G * self.m
            hv = hc.view(R, self.N, self.H)
            dts, dus, Bs = self.step_views()
            Cs = self.C5.view(self.c, R, 1, self.N).unbind(0)
            ys = y5.view(self.c, R, 1, self.H).unbind(0)
            A2 = self.A2
            for j in range(self.c):                                         # pass 2: states and y = C . h
                torch.mul(dts[j], A2, out=a)
                hc.mul_(a.exp2_()).addcmul_(dus[j], Bs[j])
                torch.bmm(Cs[j], hv, out=ys[j])
        return y5, hc[:, :, -1]

    # --- block schedule ----------------------------------------------------------------------------------
    def block_shape(self) -> tuple[int, ...]:
        return (self.c, self.b, self.G, self.m, self.N, self.H)

    def decays(self, ws: dict | None = None) -> torch.Tensor:
        """a = exp(dt A) for the whole block, (c, b, G, m, N, H)."""
        a = _buffer(ws, "a", self.block_shape(), self.dt5.device)
        return torch.mul(self.dt5.unsqueeze(-2), self.A2, out=a).exp2_()

    def inputs(self, ws: dict | None = None) -> torch.Tensor:
        """x = dt u B for the whole block, (c, b, G, m, N, H)."""
        x = _buffer(ws, "x", self.block_shape(), self.dt5.device)
        return torch.mul(self.du5.unsqueeze(-2), self.B5.unsqueeze(-1), out=x)

    def states_block(self, a: torch.Tensor, x: torch.Tensor, h_in: torch.Tensor) -> torch.Tensor:
        """Overwrite x with the states h_t of the block (pass 1, carries, pass 2 in place); returns the
        states entering the chunks (b, G, m, N, H)."""
        b, G, H, N, m = self.b, self.G, self.H, self.N, self.m
        xs, as_ = x.unbind(0), a.unbind(0)
        if m == 1:
            hc = h_in.reshape(b, G, 1, N, H)
        else:
            e = xs[0].clone()
            for j in range(1, self.c):                                      # pass 1: zero-state chunk ends
                torch.addcmul(xs[j], as_[j], e, out=e)
            hc = _carries(self.chunk_sums(), self.A2, e, h_in)
        xs[0].addcmul_(as_[0], hc)
        for j in range(1, self.c):                                          # pass 2: the states, in place
            xs[j].addcmul_(as_[j], xs[j - 1])
        return hc

    def contract_C(self, hs: torch.Tensor) -> torch.Tensor:
        """y5 = C . h for every position, (c, b, G, m, H): one batched matmul."""
        Cv, hv = _bmm_rows(self.R, self.C5.unsqueeze(-2), hs)
        return torch.bmm(Cv, hv).view(self.dt5.shape)

    def forward_block(self, h_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs()
        self.states_block(self.decays(), x, h_in)
        return self.contract_C(x), x[-1][:, :, -1]


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus, for_backward=False):
    """Output, last state, the states entering each segment and the segments (start, end, chunk).

    The backward reuses the segments and states as they are (settings read again later - environment,
    free device memory - could differ); with `for_backward` the segments are the block schedule's,
    whatever the forward's mode."""
    b, E, L = u.shape
    N = A.shape[1]
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    mode = forward_mode(u.device)
    segs = _segments(b, E, N, L, u.device, "block" if for_backward else mode)
    states = torch.empty(max(1, len(segs)), b, E, N, dtype=torch.float32, device=u.device)
    h = torch.zeros(b, E, N, dtype=torch.float32, device=u.device)
    for i, (s, e, c) in enumerate(segs):
        states[i] = h
        sg = _Seg(u, delta, B, C, delta_bias, softplus, A, s, e, c)
        G, H = sg.G, sg.H
        h_in = h.view(b, G, H, N).transpose(2, 3)
        y5, hl = sg.forward_step(h_in) if mode == "step" else sg.forward_block(h_in)
        h = hl.transpose(2, 3).reshape(b, E, N)
        if D is not None:
            y5.addcmul_(sg.u5, D.float().view(1, 1, G, 1, H))
        if z is None:
            _view5(out[..., s:e], G, sg.m, c).copy_(y5)
        elif out.dtype == torch.float32:
            o = out[..., s:e]
            _view5(o, G, sg.m, c).copy_(y5)
            o.mul_(F.silu(z[..., s:e].float()))
        else:
            out[..., s:e] = _unlayout(y5).reshape(b, E, e - s).mul_(F.silu(z[..., s:e].float()))
    return out, h, states, segs


def _segment_backward(sg: _Seg, h_in, dout, z, D32, gc, grads, s, e, ws=None):
    """Gradients of one segment (block schedule); returns the adjoint carry a_s g_s (b, E, N) flowing into
    the previous segment."""
    b, G, H, N, m, c, R = sg.b, sg.G, sg.H, sg.N, sg.m, sg.c, sg.R
    E = G * H
    a = sg.decays(ws)
    hs = sg.inputs(ws)
    hc = sg.states_block(a, hs, h_in.view(b, G, H, N).transpose(2, 3))   # hs: states of every position
    dy5 = _layout(dout[..., s:e], G, m, c)
    if z is not None:
        z5 = _layout(z[..., s:e], G, m, c)
        y5 = sg.contract_C(hs)
        if D32 is not None:
            y5.addcmul_(sg.u5, D32.view(1, 1, G, 1, H))
        zs = torch.sigmoid(z5)
        dz5 = y5.mul_(dy5).mul_(zs).mul_(z5.mul(1 - zs).add_(1))
        _view5(grads["z"][..., s:e], G, m, c).copy_(dz5)
        dy5.mul_(z5.mul_(zs))
    # adjoint: gbuf = C dy, then g_t = C_t dy_t + a_{t+1} g_{t+1} within chunks (pass 1 zero carry, carries
    # right to left, pass 2 in place)
    gbuf = torch.mul(sg.C5.unsqueeze(-1), dy5.unsqueeze(-2), out=_buffer(ws, "g", sg.block_shape(), a.device))
    gcv = gc.view(b, G, H, N).transpose(2, 3)
    gs, as_ = gbuf.unbind(0), a.unbind(0)
    if m > 1:
        inc = gs[c - 1].clone()
        for j in range(c - 2, -1, -1):
            torch.addcmul(gs[j], as_[j + 1], inc, out=inc)
        inc.mul_(a[0])                                                       # what each chunk sends left
        r = _carries(sg.chunk_sums().flip(2), sg.A2, inc.flip(2), gcv).flip(2)
    else:
        r = gcv.reshape(b, G, 1, N, H)
    gs[c - 1].add_(r)
    for j in range(c - 2, -1, -1):
        gs[j].addcmul_(as_[j + 1], gs[j + 1])
    g_out = (a[0][:, :, 0] * gbuf[0][:, :, 0]).transpose(2, 3).reshape(b, E, N)
    # contractions over N (batched matmul) and over H (batched matmul on accelerators; on CPU, where MKL's
    # tiny matrix-vector products are slow, a product into the free adjoint buffer and an inner sum)
    gv, hv = _bmm_rows(R, gbuf, hs)
    gB5 = torch.bmm(sg.B5.reshape(R, 1, N), gv).view(sg.dt5.shape)                 # sum_n B g
    if CONTRACT_H_BY_BMM if CONTRACT_H_BY_BMM is not None else a.device.type != "cpu":
        dB5 = torch.bmm(gv, sg.du5.reshape(R, H, 1)).view(sg.B5.shape)             # sum_h g du
        dC5 = torch.bmm(hv, dy5.reshape(R, H, 1)).view(sg.C5.shape)                # sum_h h dy
        a.mul_(gbuf)
    else:
        a.mul_(gbuf)                                                                # before g is overwritten
        dB5 = gbuf.mul_(sg.du5.unsqueeze(-2)).sum(-1)
        dC5 = torch.mul(hs, dy5.unsqueeze(-2), out=gbuf).sum(-1)
    # q_t = g_t a_t h_{t-1} (into a)
    a[1:].mul_(hs[:-1])
    a[0].mul_(hc)
    qA = torch.mul(a, sg.A2, out=gbuf)
    ddt5 = qA.sum(-2).mul_(math.log(2.0))                                              # sum_n q A
    a.mul_(sg.dt5.unsqueeze(-2))
    grads["A"] += a.sum((0, 1, 3)).transpose(1, 2).reshape(E, N)                    # sum q dt
    ddt5.addcmul_(gB5, sg.u5)
    du5 = gB5.mul_(sg.dt5)
    if D32 is not None:
        du5.addcmul_(dy5, D32.view(1, 1, G, 1, H))
        grads["D"] += (dy5 * sg.u5).sum((0, 1, 3)).reshape(E)
    if sg.sig is not None:
        ddt5.mul_(sg.sig)
    if grads.get("delta_bias") is not None:
        grads["delta_bias"] += ddt5.sum((0, 1, 3)).reshape(E)
    _view5(grads["u"][..., s:e], G, m, c).copy_(du5)
    _view5(grads["delta"][..., s:e], G, m, c).copy_(ddt5)
    _view5(grads["B"][..., s:e], G, m, c).copy_(dB5)
    _view5(grads["C"][..., s:e], G, m, c).copy_(dC5)
    return g_out


def _fold_groups(g: torch.Tensor, G: int) -> torch.Tensor:
    """Sum a (b, Gc, N, L) gradient of a group-expanded tensor back to (b, G, N, L)."""
    b, Gc, N, L = g.shape
    return g if Gc == G else g.view(b, G, Gc // G, N, L).sum(2)


def _backward(u, delta, A, B, C, D, z, delta_bias, softplus, states, segs, dout, dlast):
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
    bwd = segs
    ws: dict = {}
    for i in range(len(bwd) - 1, -1, -1):
        s, e, c = bwd[i]
        sg = _Seg(u, delta, B, C, delta_bias, softplus, A, s, e, c, backward=True)
        gc = _segment_backward(sg, states[i], dout, z, D32, gc, grads, s, e, ws)
    grads["B"] = _fold_groups(grads["B"], B.shape[1])
    grads["C"] = _fold_groups(grads["C"], C.shape[1])
    return grads


# ----------------------------------------------------------------------------------------------------------
# CPU threading: channel parts on Python threads, each running single-threaded ATen ops
# ----------------------------------------------------------------------------------------------------------
# By default one part runs with ATen's own intra-op threads: on an idle 2-core machine that is fastest.
# On an oversubscribed machine every small op forking an OpenMP team can cost 10x, so
# BRATSMAMBA_SCAN_CPU_PARTS=1 splits the channels into torch.get_num_threads() parts on Python threads
# (ATen releases the GIL), each running serial ops, so no op opens a parallel region: no barriers.
CPU_PARTS_ENV = "BRATSMAMBA_SCAN_CPU_PARTS"

_POOL = None
#: per-part step slice on CPU when threads are used (each worker runs serial ATen ops: its
#: torch.set_num_threads(1) is a per-thread OpenMP setting)
CPU_PART_STEP_ELEMENTS = 1 << 17


def _pool(n: int):
    global _POOL
    from concurrent.futures import ThreadPoolExecutor

    if _POOL is None or _POOL._max_workers != n:
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="bratsmamba-scan")
    return _POOL


def _parts(u, B, C) -> list[tuple[int, int, int, int]]:
    """Channel parts (e0, e1, g0, g1) for the CPU threads; one part (everything) when not worth it."""
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
    global _STEP_CAP

    def serial(*part):
        torch.set_num_threads(1)          # this worker thread only runs serial ops (per-thread OpenMP setting)
        with torch.no_grad():             # grad mode is per thread; the Function computes its own gradients
            return fn(*part)

    _STEP_CAP = CPU_PART_STEP_ELEMENTS
    try:
        return [f.result() for f in [_pool(len(parts)).submit(serial, *p) for p in parts]]
    finally:
        _STEP_CAP = None


def _sub(t, e0, e1, dim=1):
    return None if t is None else t.narrow(dim, e0, e1 - e0)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        parts = _parts(u, B, C)
        ctx.parts = parts
        grouped = B.shape[1] > 1
        for_backward = any(ctx.needs_input_grad)

        def run(e0, e1, g0, g1):
            Bp, Cp = (B[:, g0:g1], C[:, g0:g1]) if grouped else (B, C)
            return _forward(_sub(u, e0, e1), _sub(delta, e0, e1), A[e0:e1], Bp, Cp, _sub(D, e0, e1, 0),
                            _sub(z, e0, e1), _sub(delta_bias, e0, e1, 0), delta_softplus, for_backward)

        res = _run_parts(run, parts)
        out = torch.cat([r[0] for r in res], 1) if len(res) > 1 else res[0][0]
        last = torch.cat([r[1] for r in res], 1) if len(res) > 1 else res[0][1]
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *[r[2] for r in res])
        ctx.segs = [r[3] for r in res]
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
                             _sub(z, e0, e1), _sub(delta_bias, e0, e1, 0), ctx.softplus, states[idx], ctx.segs[idx],
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
