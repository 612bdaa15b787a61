"""The Mamba layer's fused ops (`ssm.ops`) and the layers built on them.

CPU: the Triton kernels (causal conv1d + SiLU in every token order, the tri-orientated gated sum) run under
TRITON_INTERPRET=1 in one subprocess on tiny shapes against float64 PyTorch; the dispatcher's PyTorch path;
`Mamba` / `TriOrientedMamba` (training path with autograd, inference path with ungated scans and one gate)
against a float64 transcription of the previous implementation, gradients included. GPU (`-m gpu`): the
compiled kernels at SegMamba's shapes and the layer's two paths against each other.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from triton_interp import run_in_interpreter

from BraTSMambaLib.ssm import Mamba, TriOrientedMamba
from BraTSMambaLib.ssm.ops import causal_conv1d_silu, causal_conv1d_silu_torch, gate_sum, gate_sum_torch
from BraTSMambaLib.ssm.ops.dispatch import use_triton
from BraTSMambaLib.ssm.ops.orders import from_order, to_order

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: relative error allowed against float64: one rounding of the output to the dtype (plus fp32 arithmetic)
TOL = {"float32": 1e-5, "bfloat16": 1.2e-2, "float16": 1.5e-3}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def conv_ref64(x, w, bias, order="forward", nslices=None) -> torch.Tensor:
    """silu(F.conv1d(x in `order`, padding K-1)[..., :L]) in float64 (orders as upstream writes them)."""
    L, K = x.shape[-1], w.shape[-1]
    x = x.double()
    if order == "reverse":
        x = x.flip([-1])
    elif order == "slices":
        x = torch.stack(x.chunk(nslices, -1), -1).flatten(-2)
    return F.silu(F.conv1d(x, w.double(), None if bias is None else bias.double(), padding=K - 1,
                           groups=w.shape[0])[..., :L])


# --- kernels under the interpreter -----------------------------------------------------------------------

CONV_CASES = [
    # (dtype, K, bias, order, nslices, layout)
    ("float32", 4, True, "forward", None, "xz_slice"),
    ("float32", 2, False, "forward", None, "contiguous"),
    ("float32", 3, True, "reverse", None, "transposed"),
    ("float32", 4, True, "slices", 4, "xz_slice"),
    ("float32", 4, False, "slices", 3, "transposed"),     # ns not a power of two
    ("float32", 4, True, "slices", 2, "xz_slice"),        # ns < K - 1: reordered copy, then the kernel
    ("float32", 1, True, "slices", 6, "contiguous"),
    ("float32", 3, True, "slices", 36, "xz_slice"),       # one token per slice (S = 1)
    ("bfloat16", 4, True, "forward", None, "xz_slice"),
    ("bfloat16", 3, False, "reverse", None, "contiguous"),
    ("bfloat16", 2, True, "slices", 4, "transposed"),
    ("float16", 4, True, "reverse", None, "xz_slice"),
    ("float16", 3, True, "slices", 6, "contiguous"),
    ("float16", 2, False, "forward", None, "transposed"),
]


def _conv_inputs(case, seed: int):
    dtype, K, has_bias, order, ns, layout = case
    g = torch.Generator().manual_seed(seed)
    b, E, L = 2, 5, 36
    dt = DTYPES[dtype]
    if layout == "xz_slice":              # x = first half of xz (b, 2E, L): batch stride 2EL
        x = torch.randn(b, 2 * E, L, generator=g).to(dt)[:, :E]
    elif layout == "transposed":          # (E, b, L) memory seen as (b, E, L), as a (2E, b*L) GEMM leaves it
        x = torch.randn(E, b, L, generator=g).to(dt).transpose(0, 1)
    else:
        x = torch.randn(b, E, L, generator=g).to(dt)
    w = (torch.randn(E, 1, K, generator=g) * 0.5).to(dt)
    bias = (torch.randn(E, generator=g) * 0.3).to(dt) if has_bias else None
    return x, w, bias


def _gate_inputs(seed: int, ns: int, dtype: str):
    g = torch.Generator().manual_seed(seed)
    b, E, L = 2, 3, ns * 7
    dt = DTYPES[dtype]
    z = torch.randn(b, 2 * E, L, generator=g).to(dt)[:, E:]          # second half of xz
    f, r, s = (torch.randn(b, E, L, generator=g).to(dt) for _ in range(3))
    return z, f, r, s


GATE_CASES = [(4, "float32"), (3, "float32"), (5, "bfloat16"), (1, "float16"), (8, "float32")]


def _run_interpreter_cases() -> dict:
    from BraTSMambaLib.ssm.ops import causal_conv1d_silu_triton, gate_sum_triton

    res = {}
    for i, case in enumerate(CONV_CASES):
        x, w, bias = _conv_inputs(case, i)
        out = causal_conv1d_silu_triton(x, w, bias, order=case[3], nslices=case[4])
        res["conv_" + "_".join(map(str, case))] = {
            "err": rel(out, conv_ref64(x, w, bias, case[3], case[4])),
            "dtype_ok": out.dtype == x.dtype and out.shape == x.shape and out.is_contiguous(),
            "tol": TOL[case[0]]}
    x, w, bias = _conv_inputs(("float32", 4, True, "forward", None, "contiguous"), 99)
    plain = causal_conv1d_silu_triton(x, w[:, 0], bias)               # (E, K) weight accepted
    res["conv_weight_2d"] = {"err": rel(plain, conv_ref64(x, w, bias)), "dtype_ok": True, "tol": TOL["float32"]}
    for i, (ns, dtype) in enumerate(GATE_CASES):
        z, f, r, s = _gate_inputs(100 + i, ns, dtype)
        out = gate_sum_triton(z, f, r, s, ns)
        ref = F.silu(z.double()) * (f.double() + r.double().flip(-1)
                                    + from_order(s.double(), "slices", ns))
        res[f"gate_ns{ns}_{dtype}"] = {"err": rel(out, ref), "tol": TOL[dtype],
                                        "dtype_ok": out.dtype == f.dtype and out.is_contiguous()}
    return res


@pytest.fixture(scope="module")
def interp_results() -> dict:
    pytest.importorskip("triton")
    return run_in_interpreter("test_ssm_ops_causal_conv1d", "_run_interpreter_cases")


def test_interpreter_ran_every_case(interp_results):
    assert len(interp_results) == len(CONV_CASES) + 1 + len(GATE_CASES)


@pytest.mark.parametrize("name", ["conv_" + "_".join(map(str, c)) for c in CONV_CASES] + ["conv_weight_2d"]
                         + [f"gate_ns{ns}_{dt}" for ns, dt in GATE_CASES])
def test_triton_kernel_matches_float64(interp_results, name):
    r = interp_results[name]
    assert r["dtype_ok"], name
    assert r["err"] < r["tol"], f"{name}: relative error {r['err']:.2e} >= {r['tol']:.0e}"


# --- dispatcher and orders on CPU -------------------------------------------------------------------------

def test_orders_round_trip_and_match_upstream():
    x = torch.arange(2 * 3 * 12.).view(2, 3, 12)
    up = torch.stack(x.chunk(4, -1), -1).flatten(-2)
    assert torch.equal(to_order(x, "slices", 4), up)
    for order, ns in (("forward", None), ("reverse", None), ("slices", 4), ("slices", 12)):
        assert torch.equal(from_order(to_order(x, order, ns), order, ns), x)
    with pytest.raises(ValueError, match="multiple of nslices"):
        to_order(x, "slices", 5)
    with pytest.raises(ValueError, match="unknown token order"):
        to_order(x, "sideways")


def test_dispatcher_cpu_path_is_the_conv1d_module_formula():
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, 4, groups=6, padding=3)
    xz = torch.randn(2, 12, 20)
    x = xz[:, :6]
    assert not use_triton(x, conv.weight)
    with torch.no_grad():
        out = causal_conv1d_silu(x, conv)
        assert torch.equal(out, F.silu(conv(x)[..., :20]))
        assert torch.equal(causal_conv1d_silu(x, conv.weight, conv.bias, order="reverse"),
                           F.silu(conv(x.flip(-1))[..., :20]))
    assert rel(causal_conv1d_silu(x, conv.weight[:, 0], conv.bias, order="slices", nslices=4),
               conv_ref64(x, conv.weight, conv.bias, "slices", 4)) < 1e-6


def test_dispatcher_keeps_gradients():
    torch.manual_seed(1)
    conv = nn.Conv1d(4, 4, 3, groups=4, padding=2)
    x = torch.randn(2, 4, 15, requires_grad=True)
    causal_conv1d_silu(x, conv, order="slices", nslices=5).square().sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    w64 = conv.weight.detach().double().requires_grad_(True)
    b64 = conv.bias.detach().double().requires_grad_(True)
    conv_ref64(x64, w64, b64, "slices", 5).square().sum().backward()
    for got, want in ((x.grad, x64.grad), (conv.weight.grad, w64.grad), (conv.bias.grad, b64.grad)):
        assert got is not None and rel(got, want) < 1e-5


def test_dispatcher_rejects_a_conv_that_is_not_causal_depthwise():
    with pytest.raises(ValueError, match="not a causal depthwise"):
        causal_conv1d_silu(torch.randn(1, 4, 8), nn.Conv1d(4, 4, 3, groups=4, padding=1))
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv1d_silu(torch.randn(1, 4, 8), torch.randn(4, 2, 3))


def test_gate_sum_cpu_path():
    z, f, r, s = _gate_inputs(7, 4, "float32")
    ref = F.silu(z.double()) * (f.double() + r.double().flip(-1) + from_order(s.double(), "slices", 4))
    assert rel(gate_sum(z, f, r, s, 4), ref) < 1e-6
    assert torch.equal(gate_sum(z, f, r, s, 4), gate_sum_torch(z, f, r, s, 4))


# --- layers against the previous implementation (float64) -------------------------------------------------

def scan64(u, delta, A, B, C, D, z, delta_bias):
    """Sequential selective scan in float64 (softplus on delta + bias), gated by silu(z); differentiable."""
    dt = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[..., t, None] * A) * h + (dt[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return (torch.stack(ys, -1) + D[:, None] * u) * F.silu(z)


def old_branch64(P, xz, s, L):
    """The previous `ssm_branch` on float64 parameters P (transposed x_proj input, (E, b, L) delta)."""
    x, z = xz.chunk(2, dim=1)
    b, E, _ = x.shape
    K = P[f"conv1d{s}.weight"].shape[-1]
    R = P[f"dt_proj{s}.weight"].shape[1]
    N = P[f"A{s}_log"].shape[1]
    x = F.silu(F.conv1d(x, P[f"conv1d{s}.weight"], P[f"conv1d{s}.bias"], padding=K - 1, groups=E)[..., :L])
    x_dbl = F.linear(x.transpose(1, 2).reshape(b * L, E), P[f"x_proj{s}.weight"])
    dt, Bm, Cm = torch.split(x_dbl, [R, N, N], dim=-1)
    dt = (P[f"dt_proj{s}.weight"] @ dt.t()).view(E, b, L).transpose(0, 1)
    Bm = Bm.view(b, L, N).transpose(1, 2)
    Cm = Cm.view(b, L, N).transpose(1, 2)
    return scan64(x, dt, -torch.exp(P[f"A{s}_log"]), Bm, Cm, P[f"D{s}"], z, P[f"dt_proj{s}.bias"])


def old_forward64(m: Mamba, h: torch.Tensor, P: dict) -> torch.Tensor:
    """The previous Mamba / TriOrientedMamba forward, transcribed, in float64."""
    b, L, d = h.shape
    xz = (P["in_proj.weight"] @ h.reshape(b * L, d).t()).view(-1, b, L).transpose(0, 1)
    if not isinstance(m, TriOrientedMamba):
        return F.linear(old_branch64(P, xz, "", L).transpose(1, 2), P["out_proj.weight"])
    ns = m.nslices
    out = old_branch64(P, xz, "", L)
    out_b = old_branch64(P, xz.flip([-1]), "_b", L).flip([-1])
    xz_s = xz.view(b, -1, ns, L // ns).transpose(-1, -2).reshape(b, -1, L)
    out_s = old_branch64(P, xz_s, "_s", L).view(b, -1, L // ns, ns).transpose(-1, -2).reshape(b, -1, L)
    return F.linear((out + out_b + out_s).transpose(1, 2), P["out_proj.weight"])


def _params64(m: nn.Module, grad: bool = False) -> dict:
    return {k: v.detach().double().requires_grad_(grad) for k, v in m.state_dict().items()}


def _layer(cls, seed: int, **kw):
    torch.manual_seed(seed)
    m = cls(**kw, scan_backend="torch")
    with torch.no_grad():                       # non-trivial A, D and conv bias
        for name, p in m.named_parameters():
            if name.startswith("A"):
                p.add_(0.3 * torch.randn_like(p))
            elif name.startswith("D") or "conv1d" in name:
                p.add_(0.3 * torch.randn_like(p))
    return m


LAYERS = [
    ("mamba", Mamba, {"d_model": 8, "d_state": 4}, 21),
    ("tri_ns5", TriOrientedMamba, {"d_model": 8, "d_state": 4, "nslices": 5}, 20),
    ("tri_ns2_k3", TriOrientedMamba, {"d_model": 6, "d_state": 3, "d_conv": 3, "nslices": 2}, 18),
    ("tri_ns1_k2", TriOrientedMamba, {"d_model": 6, "d_state": 4, "d_conv": 2, "nslices": 1}, 7),
]


@pytest.mark.parametrize("name,cls,kw,L", LAYERS, ids=[c[0] for c in LAYERS])
@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
def test_layer_output_unchanged(name, cls, kw, L, mode):
    m = _layer(cls, 3, **kw)
    h = torch.randn(2, L, kw["d_model"])
    ctx = {"grad": torch.enable_grad(), "no_grad": torch.no_grad(), "inference_mode": torch.inference_mode()}
    with ctx[mode]:
        out = m(h)
    assert out.shape == h.shape and out.dtype == h.dtype
    assert rel(out, old_forward64(m, h.double(), _params64(m))) < 2e-5


@pytest.mark.parametrize("name,cls,kw,L", LAYERS[:3], ids=[c[0] for c in LAYERS[:3]])
def test_layer_gradients_unchanged_in_training(name, cls, kw, L):
    m = _layer(cls, 4, **kw).train()
    h = torch.randn(2, L, kw["d_model"], requires_grad=True)
    w = torch.linspace(-1, 1, h.numel()).view(h.shape)
    (m(h) * w).sum().backward()
    P = _params64(m, grad=True)
    h64 = h.detach().double().requires_grad_(True)
    (old_forward64(m, h64, P) * w.double()).sum().backward()
    assert rel(h.grad, h64.grad) < 1e-4
    for k, p in m.named_parameters():
        assert p.grad is not None, k
        assert rel(p.grad, P[k].grad) < 1e-4, k


def test_state_dict_round_trip_is_strict():
    a = _layer(TriOrientedMamba, 5, d_model=8, nslices=4)
    b = TriOrientedMamba(8, nslices=4, scan_backend="torch")      # the same scan as `a`: outputs equal bit for bit
    b.load_state_dict(a.state_dict(), strict=True)
    h = torch.randn(1, 12, 8)
    with torch.no_grad():
        assert torch.equal(a(h), b(h))


# --- GPU ---------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("order,ns", [("forward", None), ("reverse", None), ("slices", 64)])
def test_gpu_conv_kernel_at_segmamba_stage0(dtype, order, ns):
    torch.manual_seed(0)
    dt = DTYPES[dtype]
    xz = torch.randn(2, 192, 64 ** 3, device="cuda", dtype=dt)
    x = xz[:, :96]
    w = (torch.randn(96, 1, 4, device="cuda") * 0.5).to(dt)
    bias = (torch.randn(96, device="cuda") * 0.3).to(dt)
    assert use_triton(x, w, bias)
    with torch.inference_mode():
        out = causal_conv1d_silu(x, w, bias, order=order, nslices=ns)
        ref = causal_conv1d_silu_torch(x.float(), w.float(), bias.float(), order=order, nslices=ns)
    assert out.dtype == dt and out.is_contiguous()
    assert rel(out, ref) < TOL[dtype]


@pytest.mark.gpu
def test_gpu_conv_kernel_under_autocast_matches_nn_conv1d():
    torch.manual_seed(1)
    conv = nn.Conv1d(96, 96, 4, groups=96, padding=3).cuda()
    x = torch.randn(2, 96, 32768, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = causal_conv1d_silu(x, conv)
        ref = F.silu(conv(x)[..., :32768])
    assert out.dtype == ref.dtype == torch.bfloat16
    assert rel(out, ref) < TOL["bfloat16"]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
def test_gpu_tri_oriented_inference_path_matches_training_path(backend):
    torch.manual_seed(2)
    m = _layer(TriOrientedMamba, 6, d_model=96, nslices=32).cuda()
    m.scan_backend = backend
    h = torch.randn(2, 32768, 96, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with torch.inference_mode():
            fast = m(h)
        slow = m(h)                              # parameters require grad: the autograd path
    assert fast.dtype == slow.dtype
    assert rel(fast, slow) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_gpu_layer_with_widened_dt_projection_matches_float64_transcription(backend):
    """d_model 48: dt_rank 3, widened to 8 on CUDA (`apply_dt_proj`); fp32 on the GPU against float64."""
    m = _layer(TriOrientedMamba, 7, d_model=48, nslices=4)
    h = torch.randn(2, 64, 48)
    ref = old_forward64(m, h.double(), _params64(m))
    m = m.cuda()
    m.scan_backend = backend
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            out = m(h.cuda()).cpu().double()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert rel(out, ref) < 1e-4
