"""Backend selection: auto, the argument, the BRATSMAMBA_SCAN_BACKEND variable, and clear errors."""
from __future__ import annotations

import sys

import pytest
import torch

from BraTSMambaLib.errors import BackendUnavailableError
from BraTSMambaLib.ssm import ENV_VAR, Mamba, backend_status, resolve_backend, selective_scan
from BraTSMambaLib.ssm.backends import MODULES


def _args(L=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 4, L, generator=g), torch.randn(1, 4, L, generator=g), -torch.rand(4, 2, generator=g) - 0.5,
            torch.randn(1, 2, L, generator=g), torch.randn(1, 2, L, generator=g))


def test_auto_on_cpu_is_c_where_it_builds_else_torch(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    expected = "c" if backend_status("c", "cpu")[0] else "torch"
    assert resolve_backend("auto", "cpu") == expected
    assert resolve_backend("auto", "cpu", needs_grad=True) == "torch"   # c is forward-only


def test_auto_order_on_cuda_puts_the_cuda_scan_first_for_long_inference_sequences():
    from BraTSMambaLib.ssm.selective_scan import AUTO_ORDER, LONG_SEQUENCE, auto_order

    assert auto_order("cuda") == AUTO_ORDER["cuda"]
    assert auto_order("cuda", LONG_SEQUENCE - 1) == AUTO_ORDER["cuda"]
    assert auto_order("cuda", LONG_SEQUENCE)[0] == "cuda"
    assert sorted(auto_order("cuda", 64 ** 3)) == sorted(AUTO_ORDER["cuda"])
    assert auto_order("cuda", 64 ** 3, needs_grad=True) == AUTO_ORDER["cuda"]    # training: a backward pass
    assert auto_order("cpu", 64 ** 3) == AUTO_ORDER["cpu"]


def test_auto_falls_back_to_torch_when_the_c_kernel_cannot_build(monkeypatch):
    from BraTSMambaLib.ssm.backends import c_scan

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(c_scan, "_library", lambda: (None, "no C compiler found (install gcc or clang, or set CC)"))
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(BackendUnavailableError, match="'c' is unavailable on cpu: .*no C compiler"):
        selective_scan(*_args(), backend="c")


def test_import_does_not_load_mamba_ssm_or_triton():
    code = ("import sys, BraTSMambaLib.ssm as s, torch; "
            "s.selective_scan(*[torch.randn(1,2,3), torch.randn(1,2,3), -torch.ones(2,2), torch.randn(1,2,3), "
            "torch.randn(1,2,3)]); "
            "assert 'mamba_ssm' not in sys.modules and 'triton' not in sys.modules, sorted(sys.modules)")
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": "", ENV_VAR: ""})


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve_backend("auto", "cpu") == "reference"
    assert resolve_backend("torch", "cpu") == "torch"          # an explicit argument wins
    a = _args()
    torch.testing.assert_close(selective_scan(*a), selective_scan(*a, backend="torch"), rtol=1e-5, atol=1e-6)


def test_env_var_unknown_name_raises(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cudnn")
    with pytest.raises(BackendUnavailableError, match="unknown scan backend 'cudnn'.*BRATSMAMBA_SCAN_BACKEND"):
        selective_scan(*_args())


def test_unknown_argument_raises():
    with pytest.raises(BackendUnavailableError, match="choose one of auto, mamba_ssm, cuda, triton, c, torch, reference"):
        selective_scan(*_args(), backend="fast")


def test_mamba_ssm_on_cpu_raises_with_reason(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(BackendUnavailableError, match="'mamba_ssm' is unavailable on cpu: .*CUDA"):
        selective_scan(*_args(), backend="mamba_ssm")


def test_triton_on_cpu_raises_with_reason(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    ok, why = backend_status("triton", "cpu")
    assert not ok and why
    with pytest.raises(BackendUnavailableError, match="'triton' is unavailable on cpu"):
        selective_scan(*_args(), backend="triton")


def test_missing_backend_module_is_reported(monkeypatch):
    monkeypatch.setitem(MODULES, "triton", "BraTSMambaLib.ssm.backends._no_such_module")
    ok, why = backend_status("triton", "cuda")
    assert not ok and "not part of this installation" in why


def test_layer_passes_backend_through(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    m = Mamba(8, d_state=4, scan_backend="mamba_ssm")
    with pytest.raises(BackendUnavailableError, match="mamba_ssm"):
        m(torch.randn(1, 5, 8))
    m.scan_backend = "reference"
    ref = m(torch.ones(1, 5, 8))
    m.scan_backend = "torch"
    torch.testing.assert_close(m(torch.ones(1, 5, 8)), ref, rtol=1e-5, atol=1e-6)
