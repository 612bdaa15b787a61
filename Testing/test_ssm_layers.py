"""Mamba and SegMamba-v3 layers against a direct transcription of the upstream forward, and state-dict
compatibility with mamba_ssm / SegMamba's fork (key names and shapes from DESIGN.md §4)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from BraTSMambaLib.ssm import Mamba, TriOrientedMamba
from BraTSMambaLib.ssm.backends.reference import selective_scan as scan_ref


def _upstream_inner(xz, conv_w, conv_b, x_proj_w, dt_proj_w, dt_proj_b, A_log, D):
    """mamba_ssm's mamba_inner_fn_no_out_proj math, written out step by step from the upstream code."""
    L = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, conv_w, conv_b, padding=conv_w.shape[-1] - 1, groups=x.shape[1])[..., :L])
    b, d, _ = x.shape
    x_dbl = F.linear(x.permute(0, 2, 1).reshape(b * L, d), x_proj_w)
    R, N = dt_proj_w.shape[1], A_log.shape[1]
    delta = (dt_proj_w @ x_dbl[:, :R].t()).reshape(d, b, L).permute(1, 0, 2)
    Bm = x_dbl[:, R:R + N].reshape(b, L, N).permute(0, 2, 1)
    Cm = x_dbl[:, -N:].reshape(b, L, N).permute(0, 2, 1)
    return scan_ref(x, delta, -torch.exp(A_log.float()), Bm, Cm, D.float(), z=z, delta_bias=dt_proj_b.float(),
                    delta_softplus=True)


def _upstream_mamba(m, h):
    b, L, _ = h.shape
    xz = (m.in_proj.weight @ h.reshape(b * L, -1).t()).reshape(-1, b, L).permute(1, 0, 2)
    y = _upstream_inner(xz, m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias,
                        m.A_log, m.D)
    return F.linear(y.permute(0, 2, 1), m.out_proj.weight, m.out_proj.bias)


def _upstream_v3(m, h, nslices):
    b, L, _ = h.shape
    d_inner = m.d_inner
    xz = (m.in_proj.weight @ h.reshape(b * L, -1).t()).reshape(-1, b, L).permute(1, 0, 2)
    p = lambda s: (getattr(m, f"conv1d{s}").weight, getattr(m, f"conv1d{s}").bias, getattr(m, f"x_proj{s}").weight,
                   getattr(m, f"dt_proj{s}").weight, getattr(m, f"dt_proj{s}").bias,
                   getattr(m, "A_log" if not s else f"A{s}_log"), getattr(m, f"D{s}"))
    out = _upstream_inner(xz, *p(""))
    out_b = _upstream_inner(xz.flip([-1]), *p("_b"))
    xz_s = torch.stack(xz.chunk(nslices, dim=-1), dim=-1).flatten(-2)
    out_s = _upstream_inner(xz_s, *p("_s"))
    out_s = out_s.reshape(b, d_inner, L // nslices, nslices).permute(0, 1, 3, 2).flatten(-2)
    return F.linear((out + out_b.flip([-1]) + out_s).permute(0, 2, 1), m.out_proj.weight, m.out_proj.bias)


def _perturb(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "A" in name and "log" in name:
                p.add_(0.3 * torch.randn_like(p))
            elif name.startswith("D"):
                p.add_(0.5 * torch.randn_like(p))


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_mamba_matches_upstream_math(backend):
    torch.manual_seed(0)
    m = Mamba(12, d_state=4, scan_backend=backend)
    _perturb(m)
    h = torch.randn(2, 37, 12)
    torch.testing.assert_close(m(h), _upstream_mamba(m, h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_tri_oriented_matches_upstream_v3(backend):
    torch.manual_seed(1)
    m = TriOrientedMamba(10, d_state=4, nslices=5, scan_backend=backend)
    _perturb(m)
    h = torch.randn(2, 5 * 7, 10)
    torch.testing.assert_close(m(h), _upstream_v3(m, h, 5), rtol=1e-5, atol=1e-5)


def test_tri_oriented_gradients_match_reference_backend():
    torch.manual_seed(2)
    m = TriOrientedMamba(8, d_state=4, nslices=3)
    h = torch.randn(1, 3 * 11, 8, requires_grad=True)
    grads = {}
    for backend in ("torch", "reference"):
        m.scan_backend = backend
        m.zero_grad()
        h.grad = None
        (m(h) * torch.linspace(-1, 1, 3 * 11 * 8).view(1, 33, 8)).sum().backward()
        grads[backend] = [h.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    for a, b in zip(grads["torch"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_tri_oriented_rejects_length_not_multiple_of_nslices():
    m = TriOrientedMamba(8, d_state=4, nslices=4)
    with pytest.raises(ValueError, match="multiple of nslices"):
        m(torch.randn(1, 10, 8))


def _mamba_ssm_shapes(d, N=16, d_conv=4, expand=2):
    E, R = expand * d, math.ceil(d / 16)
    return {"in_proj.weight": (2 * E, d), "conv1d.weight": (E, 1, d_conv), "conv1d.bias": (E,),
            "x_proj.weight": (R + 2 * N, E), "dt_proj.weight": (E, R), "dt_proj.bias": (E,),
            "A_log": (E, N), "D": (E,), "out_proj.weight": (d, E)}


@pytest.mark.parametrize("d_model", [48, 320])
def test_mamba_state_dict_keys_and_shapes(d_model):
    m = Mamba(d_model)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == _mamba_ssm_shapes(d_model)
    m2 = Mamba(d_model)
    m2.load_state_dict(m.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_v3_state_dict_keys_and_shapes():
    d = 96
    expected = _mamba_ssm_shapes(d)
    for s in ("_b", "_s"):
        for k in ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias"):
            mod, leaf = k.split(".")
            expected[f"{mod}{s}.{leaf}"] = expected[k]
        expected[f"A{s}_log"] = expected["A_log"]
        expected[f"D{s}"] = expected["D"]
    m = TriOrientedMamba(d, nslices=32)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    TriOrientedMamba(d, nslices=32).load_state_dict(m.state_dict(), strict=True)
    with pytest.raises(RuntimeError):
        Mamba(d).load_state_dict(m.state_dict(), strict=True)


def test_mamba_ssm_initialisation():
    torch.manual_seed(0)
    m = Mamba(64, dt_min=0.001, dt_max=0.1)
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 17, dtype=torch.float32)).repeat(128, 1))
    assert torch.equal(m.D, torch.ones(128))
    assert m.A_log.dtype == m.D.dtype == torch.float32
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    bound = m.dt_rank ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound and m.dt_proj.weight.abs().max() > 0.5 * bound
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.conv1d.bias is not None


@pytest.mark.parametrize("rank,rows,align", [(3, 35, 8), (6, 38, 8), (24, 56, 8), (3, 5, 8), (3, 35, 1)])
def test_dt_projection_widened_to_aligned_rows_is_the_same_sum(rank, rows, align):
    """CUDA widens dt_proj's inner dimension to a multiple of 8 with zero weight columns over B's rows:
    the result and the weight's gradient equal the plain product (no widening where x_dbl is too short)."""
    from BraTSMambaLib.ssm.modules.mamba import apply_dt_proj

    g = torch.Generator().manual_seed(rank + rows)
    w = torch.randn(20, rank, generator=g, dtype=torch.float64, requires_grad=True)
    x_dbl = torch.randn(2, rows, 17, generator=g, dtype=torch.float64)
    ref = torch.bmm(w.expand(2, -1, -1), x_dbl[:, :rank])
    (g_ref,) = torch.autograd.grad(ref.sum(), w)
    out = apply_dt_proj(w, x_dbl, align=align)
    (g_out,) = torch.autograd.grad(out.sum(), w)
    assert out.shape == ref.shape == (2, 20, 17)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-12, atol=1e-12)
