"""The C selective scan (CPU inference) against the sequential reference: outputs and last state across
lengths, state counts (the vectorised N = 16 path and the generic one), grouped B/C, every optional
input, bf16 inputs and strided views; its build cache; and its refusal to run under autograd.
Skipped where this machine has no working C compiler (then `auto` takes the torch backend)."""
from __future__ import annotations

import pytest
import torch

from BraTSMambaLib.errors import BackendUnavailableError
from BraTSMambaLib.ssm import selective_scan
from BraTSMambaLib.ssm.backends import c_scan

pytestmark = pytest.mark.skipif(not c_scan.is_available("cpu")[0], reason=c_scan.is_available("cpu")[1])


def _inputs(b, E, L, N, groups, dtype=torch.float32, seed=0, with_z=True, with_D=True, with_bias=True,
            groups_c=None):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    bshape = (b, N, L) if groups is None else (b, groups, N, L)
    cshape = bshape if groups_c is None else (b, groups_c, N, L)
    t = {"u": r(b, E, L), "delta": 0.5 * r(b, E, L), "A": -torch.exp(0.5 * r(E, N)), "B": r(*bshape),
         "C": r(*cshape), "D": r(E) if with_D else None, "z": r(b, E, L) if with_z else None,
         "delta_bias": 0.3 * r(E) if with_bias else None}
    return {k: (v.to(dtype) if v is not None and k != "A" else v) for k, v in t.items()}


def _scan(backend, t, softplus=True, last=True):
    kw = {k: v for k, v in t.items() if k not in ("u", "delta", "A", "B", "C")}
    with torch.no_grad():
        return selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], delta_softplus=softplus,
                              return_last_state=last, backend=backend, **kw)


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


CASES = [  # (b, E, L, N, groups, with_z, with_D, with_bias, softplus)
    (1, 4, 1, 16, None, True, True, True, True),
    (2, 6, 37, 16, None, False, False, False, False),
    (2, 8, 129, 16, 2, True, True, True, True),
    (1, 6, 61, 5, 3, True, False, True, True),
    (3, 4, 50, 1, None, False, True, False, False),
    (1, 12, 300, 16, 4, True, True, True, True),
    (1, 4, 23, 33, None, True, True, True, True),
]


@pytest.mark.parametrize("b,E,L,N,groups,with_z,with_D,with_bias,softplus", CASES)
def test_c_matches_reference(b, E, L, N, groups, with_z, with_D, with_bias, softplus):
    t = _inputs(b, E, L, N, groups, with_z=with_z, with_D=with_D, with_bias=with_bias)
    y, h = _scan("c", t, softplus)
    y_ref, h_ref = _scan("reference", t, softplus)
    assert y.shape == y_ref.shape and y.dtype == torch.float32 and h.shape == (b, E, N)
    assert _rel(y, y_ref) < 2e-6 and _rel(h, h_ref) < 2e-6


def test_c_matches_a_float64_recurrence_as_closely_as_the_torch_backend():
    t = _inputs(2, 8, 200, 16, None)
    t64 = {k: (v.double() if v is not None else None) for k, v in t.items()}
    y64, _ = _scan("reference", t64)
    err_c, err_torch = _rel(_scan("c", t)[0], y64), _rel(_scan("torch", t)[0], y64)
    assert err_c < 1e-6 and err_c < 10 * max(err_torch, 1e-7)


def test_strong_decay_and_large_inputs_stay_finite():
    t = _inputs(1, 4, 40, 16, None, with_bias=False)
    t["delta"] = t["delta"] * 0 + 60.0            # softplus(60) * A: exp2 of values far below -126
    y, h = _scan("c", t)
    y_ref, h_ref = _scan("reference", t)
    assert torch.isfinite(y).all() and _rel(y, y_ref) < 2e-6 and _rel(h, h_ref) < 2e-6


def test_bf16_inputs_and_strided_views():
    t = _inputs(2, 8, 64, 16, None, dtype=torch.bfloat16)
    xdbl = torch.randn(2, 4 + 32, 64).to(torch.bfloat16)     # B and C as row blocks of one product, as the layers pass them
    t["B"], t["C"] = xdbl[:, 4:20], xdbl[:, 20:36]
    t["z"] = torch.randn(2, 64, 8).transpose(1, 2).to(torch.bfloat16)
    y, h = _scan("c", t)
    y_ref, h_ref = _scan("reference", t)
    assert y.dtype == torch.bfloat16 and _rel(y, y_ref) < 1e-2 and _rel(h, h_ref) < 2e-6


def test_b_and_c_grouped_differently():
    t = _inputs(1, 6, 30, 16, 2, groups_c=3)
    assert _rel(_scan("c", t)[0], _scan("reference", t)[0]) < 2e-6


def test_threads_split_rows_without_changing_the_result(monkeypatch):
    t = _inputs(2, 6, 80, 16, 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = _scan("c", t)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 5)
    five = _scan("c", t)
    assert torch.equal(one[0], five[0]) and torch.equal(one[1], five[1])


def test_forced_under_autograd_is_refused_and_auto_takes_torch():
    t = _inputs(1, 4, 9, 16, None)
    t["u"].requires_grad_()
    with pytest.raises(BackendUnavailableError, match="forward-only"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend="c")
    y = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"])      # auto: torch, with gradients
    y.sum().backward()
    assert t["u"].grad is not None


def test_layers_give_the_torch_backends_output():
    from BraTSMambaLib.nets import build_model, get_spec

    torch.manual_seed(0)
    net = build_model("segmamba", **get_spec("segmamba").tiny).eval()
    x = torch.randn(1, 4, *get_spec("segmamba").tiny["patch_size"])
    with torch.inference_mode():
        for m in net.modules():
            if hasattr(m, "scan_backend"):
                m.scan_backend = "torch"
        ref = net(x)
        for m in net.modules():
            if hasattr(m, "scan_backend"):
                m.scan_backend = "c"
        out = net(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_build_is_cached_per_source_and_compiler(tmp_path, monkeypatch):
    from BraTSMambaLib.ssm.backends import native_build

    monkeypatch.setenv("BRATSMAMBA_CACHE", str(tmp_path))
    native_build.load_library.cache_clear()
    try:
        lib = native_build.load_library(c_scan.SOURCE)
        built = sorted((tmp_path / "kernels").iterdir())
        assert len(built) == 1 and built[0].suffix == ".so" and hasattr(lib, "selective_scan_fwd_rows")
        native_build.load_library.cache_clear()
        native_build.load_library(c_scan.SOURCE)                # loaded from the cache, not rebuilt
        assert sorted((tmp_path / "kernels").iterdir()) == built
    finally:
        native_build.load_library.cache_clear()


def test_a_source_that_does_not_compile_names_the_file(tmp_path, monkeypatch):
    from BraTSMambaLib.ssm.backends import native_build

    monkeypatch.setenv("BRATSMAMBA_CACHE", str(tmp_path))
    bad = tmp_path / "broken_kernel.c"
    bad.write_text("int f( {\n")
    with pytest.raises(native_build.NativeBuildError, match="could not compile broken_kernel.c"):
        native_build.load_library(bad)
    assert not any((tmp_path / "kernels").iterdir())            # no half-written library left behind


def test_portable_vector_path_matches_reference(tmp_path, monkeypatch):
    """The kernel built without AVX-512 (the vector-extension path other CPUs take) gives the same results."""
    from BraTSMambaLib.ssm.backends import native_build

    monkeypatch.setenv("BRATSMAMBA_CACHE", str(tmp_path))
    monkeypatch.setattr(native_build, "FLAG_SETS", (("-O3", "-mno-avx512f", "-fno-math-errno", "-Wno-psabi"),
                                                    ("-O3", "-fno-math-errno", "-Wno-psabi")))
    native_build.load_library.cache_clear()
    try:
        lib = c_scan.bind(native_build.load_library(c_scan.SOURCE))
    finally:
        native_build.load_library.cache_clear()
    for dtype, N, tol in ((torch.float32, 16, 2e-6), (torch.float32, 5, 2e-6), (torch.bfloat16, 16, 1e-2)):
        t = _inputs(2, 6, 45, N, 2, dtype=dtype)
        kw = {k: v for k, v in t.items() if k not in ("u", "delta", "A", "B", "C")}
        with torch.no_grad():
            y, h = c_scan.selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], delta_softplus=True,
                                         return_last_state=True, lib=lib, **kw)
        y_ref, h_ref = _scan("reference", t)
        assert _rel(y, y_ref) < tol and _rel(h, h_ref) < 2e-6, (dtype, N)
