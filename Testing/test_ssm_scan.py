"""The pure-PyTorch selective scan against the sequential reference: outputs, last state and every
gradient, across lengths that hit chunk and block boundaries, grouped B/C and every optional input."""
from __future__ import annotations

import pytest
import torch

from BraTSMambaLib.ssm import selective_scan
from BraTSMambaLib.ssm.backends import torch_scan


@pytest.fixture(params=["step", "block"])
def small_blocks(monkeypatch, request):
    """Tiny chunks and blocks so that short sequences cross many chunk and block boundaries; the forward
    in both schedules (CPU's per-step one and the accelerators' whole-block one)."""
    monkeypatch.setenv(torch_scan.MODE_ENV, request.param)
    monkeypatch.setattr(torch_scan, "CHUNK", 4)
    monkeypatch.setattr(torch_scan, "STEP_ELEMENTS", 2 * 6 * 3 * 3)
    monkeypatch.setattr(torch_scan, "BLOCK_ELEMENTS_CPU", 2 * 6 * 3 * 3 * 4 * 3)


def _inputs(b, E, L, N, groups, dtype, seed=0, with_z=True, with_D=True, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    bc = (b, N, L) if groups is None else (b, groups, N, L)
    t = {
        "u": r(b, E, L), "delta": 0.5 * r(b, E, L), "A": -torch.exp(0.5 * r(E, N)),
        "B": r(*bc), "C": r(*bc),
        "D": r(E) if with_D else None, "z": r(b, E, L) if with_z else None,
        "delta_bias": 0.3 * r(E) if with_bias else None,
    }
    return {k: (v.to(dtype if k != "A" else torch.float32).requires_grad_() if v is not None else None)
            for k, v in t.items()}


def _run(backend, t, softplus, last):
    kw = {k: v for k, v in t.items() if k not in ("u", "delta", "A", "B", "C")}
    res = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], delta_softplus=softplus,
                         return_last_state=last, backend=backend, **kw)
    y, h = res if last else (res, None)
    g = torch.Generator().manual_seed(99)
    loss = (y.float() * torch.randn(y.shape, generator=g).to(y.device)).sum()
    if h is not None:
        loss = loss + (h * torch.randn(h.shape, generator=g).to(h.device)).sum()
    names = [k for k, v in t.items() if v is not None]
    grads = torch.autograd.grad(loss, [t[k] for k in names])
    return y, h, dict(zip(names, grads))


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


CASES = [  # (L, groups, with_z, with_D, with_bias, softplus, last)
    (1, None, True, True, True, True, True),
    (2, None, False, False, False, False, False),
    (13, None, True, True, True, True, True),
    (37, 2, True, False, True, True, True),
    (61, 3, False, True, False, True, False),
    (97, None, True, True, False, False, True),
    (128, 6, True, True, True, True, True),
    (211, 1, False, False, True, True, True),
]


@pytest.mark.parametrize("L,groups,with_z,with_D,with_bias,softplus,last", CASES)
def test_torch_matches_reference_fp32(small_blocks, L, groups, with_z, with_D, with_bias, softplus, last):
    t = _inputs(2, 6, L, 3, groups, torch.float32, seed=L, with_z=with_z, with_D=with_D, with_bias=with_bias)
    y, h, g = _run("torch", t, softplus, last)
    y_ref, h_ref, g_ref = _run("reference", t, softplus, last)
    assert y.dtype == torch.float32 and y.shape == (2, 6, L)
    assert _rel(y, y_ref) <= 1e-5
    if last:
        assert h.shape == (2, 6, 3) and h.dtype == torch.float32
        assert _rel(h, h_ref) <= 1e-5
    assert set(g) == set(g_ref)
    for k in g:
        assert g[k].shape == t[k].shape and g[k].dtype == t[k].dtype
        if L == 1 and k == "A":      # dA involves h_{t-1} = 0 only
            assert g[k].abs().max() == 0 and g_ref[k].abs().max() == 0
            continue
        assert _rel(g[k], g_ref[k]) <= 1e-5, k


def test_torch_default_chunk_several_blocks(monkeypatch):
    """Production chunk length over several blocks and a tail (few chunks per block to keep L short)."""
    monkeypatch.setattr(torch_scan, "STEP_ELEMENTS", 4 * 4 * 3)
    monkeypatch.setattr(torch_scan, "BLOCK_ELEMENTS_CPU", 4 * 4 * 3 * 32)
    L = torch_scan._segments(1, 4, 4, 10 ** 9, torch.device("cpu"), "step")[0][1] * 2 + 45
    assert torch_scan.CHUNK == 32 and L == 237
    t = _inputs(1, 4, L, 4, None, torch.float32, seed=3)
    y, h = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True,
                          True, backend="torch")
    y_ref, h_ref = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
                                  True, True, backend="reference")
    assert _rel(y, y_ref) <= 1e-5 and _rel(h, h_ref) <= 1e-5


@pytest.mark.parametrize("groups", [None, 2])
def test_torch_matches_reference_bf16(small_blocks, groups):
    t = _inputs(2, 6, 29, 3, groups, torch.bfloat16, seed=5)
    y, h, g = _run("torch", t, True, True)
    y_ref, h_ref, g_ref = _run("reference", t, True, True)
    assert y.dtype == torch.bfloat16
    assert _rel(y, y_ref) <= 2e-2 and _rel(h, h_ref) <= 1e-3
    for k in g:
        assert g[k].dtype == t[k].dtype
        assert _rel(g[k], g_ref[k]) <= 2e-2, k


def test_strong_decay_does_not_overflow(small_blocks):
    """Large dt * |A| (a trained model's sharp channels) must not produce inf/nan: only decays <= 1 are used."""
    t = _inputs(1, 6, 40, 3, None, torch.float32, seed=7)
    with torch.no_grad():
        t["A"].mul_(200.0)
        t["delta"].add_(3.0)
    y, h, g = _run("torch", t, True, True)
    y_ref, h_ref, g_ref = _run("reference", t, True, True)
    assert torch.isfinite(y).all() and all(torch.isfinite(v).all() for v in g.values())
    assert _rel(y, y_ref) <= 1e-5
    for k in g:
        assert _rel(g[k], g_ref[k]) <= 1e-4, k


def test_b_and_c_grouped_differently(small_blocks):
    t = _inputs(1, 6, 23, 3, 2, torch.float32, seed=11)
    t["C"] = torch.randn(1, 3, 23, requires_grad=True)
    y, h, g = _run("torch", t, True, True)
    y_ref, h_ref, g_ref = _run("reference", t, True, True)
    assert _rel(y, y_ref) <= 1e-5 and g["C"].shape == (1, 3, 23) and g["B"].shape == (1, 2, 3, 23)
    for k in g:
        assert _rel(g[k], g_ref[k]) <= 1e-5, k


def test_fp64_inputs_keep_dtype():
    t = _inputs(1, 4, 9, 2, None, torch.float64, seed=1)
    y = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend="torch")
    assert y.dtype == torch.float64


def test_shape_errors_are_clear():
    t = _inputs(1, 4, 9, 2, None, torch.float32)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"][..., :5], t["C"], backend="torch")
    with pytest.raises(ValueError, match="divisible"):
        selective_scan(t["u"], t["delta"], t["A"], torch.randn(1, 3, 2, 9), t["C"], backend="torch")


def test_cpu_thread_parts_match_single_thread(monkeypatch):
    """The opt-in CPU channel split over threads gives the same numbers as one thread (grouped and not)."""
    t0 = _inputs(1, 8, 70, 3, None, torch.float32, seed=4)
    assert len(torch_scan._parts(t0["u"], t0["B"].unsqueeze(1), t0["C"].unsqueeze(1))) == 1  # default: one part
    monkeypatch.setenv(torch_scan.CPU_PARTS_ENV, "1")
    outs = []
    t = _inputs(1, 8, 70, 3, None, torch.float32, seed=4)
    t2 = _inputs(1, 8, 70, 3, 2, torch.float32, seed=6)
    n = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert len(torch_scan._parts(t["u"], t["B"].unsqueeze(1), t["C"].unsqueeze(1))) == threads
            outs.append([_run("torch", t, True, True), _run("torch", t2, True, True)])
    finally:
        torch.set_num_threads(n)
    for (y1, h1, g1), (y2, h2, g2) in zip(*outs):
        torch.testing.assert_close(y1, y2, rtol=1e-6, atol=1e-6)   # block lengths differ: rounding only
        torch.testing.assert_close(h1, h2, rtol=1e-6, atol=1e-6)
        for k in g1:
            torch.testing.assert_close(g1[k], g2[k], rtol=1e-6, atol=1e-6)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    """BRATSMAMBA_SCAN_COMPILE=1 where torch.compile cannot work: one warning, then the eager result."""
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setenv(torch_scan.COMPILE_ENV, "1")
    monkeypatch.setattr(torch_scan, "_compile_broken", False)
    monkeypatch.setattr(torch_scan, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)
    t = _inputs(1, 4, 300, 3, None, torch.float32, seed=8)
    with pytest.warns(RuntimeWarning, match="torch.compile of the scan failed"):
        y = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True,
                           backend="torch")
    assert torch_scan._compile_broken
    y_ref = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True,
                           backend="reference")
    assert _rel(y, y_ref) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_backend_on_cuda_matches_reference(dtype):
    t = _inputs(2, 8, 300, 4, None, dtype, seed=12)
    t = {k: (v.detach().cuda().requires_grad_() if v is not None else None) for k, v in t.items()}
    y, h, g = _run("torch", t, True, True)
    y_ref, h_ref, g_ref = _run("reference", t, True, True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert y.device.type == "cuda" and _rel(y, y_ref) <= tol and _rel(h, h_ref) <= max(tol, 1e-3)
    for k in g:
        assert _rel(g[k], g_ref[k]) <= tol, k


@pytest.mark.parametrize("L,groups", [(211, None), (150, 3)])
def test_hierarchical_chunk_carries(monkeypatch, L, groups):
    """Many chunks per block: carries go through the recursive two-level path (with padding) both ways."""
    monkeypatch.setattr(torch_scan, "CHUNK", 2)
    monkeypatch.setattr(torch_scan, "CARRY_SEQUENTIAL", 2)
    monkeypatch.setattr(torch_scan, "STEP_ELEMENTS", 1 << 20)
    t = _inputs(1, 6, L, 3, groups, torch.float32, seed=L)
    y, h, g = _run("torch", t, True, True)
    y_ref, h_ref, g_ref = _run("reference", t, True, True)
    assert _rel(y, y_ref) <= 1e-5 and _rel(h, h_ref) <= 1e-5
    for k in g:
        assert _rel(g[k], g_ref[k]) <= 1e-5, k
