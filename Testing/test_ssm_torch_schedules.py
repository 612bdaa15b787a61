"""The torch scan's accelerator schedule run on CPU tensors (whole-block tensors, one block for the whole
sequence, recursive chunk carries) against the reference, its sizing from free device memory, and the
environment variables that tune it."""
from __future__ import annotations

import pytest
import torch
from test_ssm_scan import _inputs, _rel, _run

from BraTSMambaLib.ssm.backends import torch_scan


def _accel_like(monkeypatch, chunk: int, block: int | None, carry: int = 3) -> None:
    """The settings a GPU gets, forced on the CPU through the documented environment variables."""
    monkeypatch.setenv(torch_scan.MODE_ENV, "block")
    monkeypatch.setenv(torch_scan.CHUNK_ENV, str(chunk))
    monkeypatch.setenv(torch_scan.CARRY_ENV, str(carry))
    if block:
        monkeypatch.setenv(torch_scan.BLOCK_ENV, str(block))
    monkeypatch.setattr(torch_scan, "CARRY_SEQUENTIAL", 2)


@pytest.mark.parametrize("L,groups,chunk,block", [
    (300, None, 4, 10 ** 9),          # one block: 75 chunks, carries three levels deep with padding
    (257, 2, 8, 2 * 6 * 3 * 8 * 7),   # several blocks of 7 chunks and a tail shorter than a chunk
    (64, 3, 32, 10 ** 9),             # the default chunk length, two chunks
    (5, None, 16, 10 ** 9),           # shorter than one chunk
])
def test_block_schedule_matches_reference(monkeypatch, L, groups, chunk, block):
    _accel_like(monkeypatch, chunk, block)
    monkeypatch.setattr(torch_scan, "CONTRACT_H_BY_BMM", True)     # the accelerators' contractions too
    t = _inputs(2, 6, L, 3, groups, torch.float32, seed=L)
    y, h, g = _run("torch", t, True, True)
    y_ref, h_ref, g_ref = _run("reference", t, True, True)
    assert _rel(y, y_ref) <= 1e-5 and _rel(h, h_ref) <= 1e-5
    for k in g:
        assert _rel(g[k], g_ref[k]) <= 1e-5, k


def test_block_schedule_no_optional_inputs(monkeypatch):
    _accel_like(monkeypatch, 4, 10 ** 9)
    t = _inputs(1, 4, 97, 5, None, torch.float32, seed=2, with_z=False, with_D=False, with_bias=False)
    y, h, g = _run("torch", t, False, True)
    y_ref, h_ref, g_ref = _run("reference", t, False, True)
    assert _rel(y, y_ref) <= 1e-5 and _rel(h, h_ref) <= 1e-5
    for k in g:
        assert _rel(g[k], g_ref[k]) <= 1e-5, k


def test_step_and_block_forward_agree_without_grad(monkeypatch):
    """Inference (no gradient) uses the forward schedule's own block lengths: same numbers either way."""
    t = _inputs(1, 6, 500, 4, None, torch.float32, seed=9)
    args = [t[k].detach() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    outs = []
    for mode in ("step", "block"):
        monkeypatch.setenv(torch_scan.MODE_ENV, mode)
        with torch.no_grad():
            outs.append(torch_scan.selective_scan(*args, delta_softplus=True, return_last_state=True))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)


def test_accelerator_block_sized_from_free_memory(monkeypatch):
    """On an accelerator the block is the whole sequence when memory allows, else what fits."""
    for k in (torch_scan.BLOCK_ENV, torch_scan.STEP_ENV, torch_scan.CHUNK_ENV):
        monkeypatch.delenv(k, raising=False)
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch_scan, "_free_bytes", lambda d: 100 * 2 ** 30)
    b, E, N, L = 2, 96, 16, 64 ** 3
    segs = torch_scan._segments(b, E, N, L, cuda, "block")
    assert segs == [(0, L, torch_scan.CHUNK)]                                 # stage 0: one block
    monkeypatch.setattr(torch_scan, "_free_bytes", lambda d: 2 ** 30)       # 1 GiB free
    blk = torch_scan._block_elements(cuda)
    assert blk * 4 * torch_scan.ACCEL_BUFFERS <= 2 ** 30 * torch_scan.ACCEL_MEMORY_FRACTION
    segs = torch_scan._segments(b, E, N, L, cuda, "block")
    assert len(segs) > 1 and segs[0][1] * b * E * N <= blk and segs[-1][1] == L
    monkeypatch.setenv(torch_scan.STEP_ENV, str(b * E * N * 64))             # explicit step slice wins
    assert torch_scan._segments(b, E, N, L, cuda, "block")[0][1] == 64 * torch_scan.CHUNK


def test_env_overrides(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(torch_scan.CHUNK_ENV, "8")
    monkeypatch.setenv(torch_scan.STEP_ENV, "0x400")
    assert torch_scan.chunk_len() == 8
    assert torch_scan._segments(1, 4, 4, 1000, cpu, "step")[0] == (0, 8 * (1024 // 16), 8)
    monkeypatch.setenv(torch_scan.MODE_ENV, "block")
    assert torch_scan.forward_mode(cpu) == "block"
    monkeypatch.setenv(torch_scan.MODE_ENV, "fast")
    with pytest.raises(ValueError, match="BRATSMAMBA_SCAN_TORCH_MODE"):
        torch_scan.forward_mode(cpu)
    monkeypatch.setenv(torch_scan.CHUNK_ENV, "zero")
    with pytest.raises(ValueError, match="BRATSMAMBA_SCAN_TORCH_CHUNK"):
        torch_scan.chunk_len()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,chunk", [(torch.float32, None), (torch.float32, 8), (torch.bfloat16, None)])
def test_block_schedule_on_cuda_matches_reference(monkeypatch, dtype, chunk):
    """The accelerator defaults (one block sized from free memory) on a real GPU; chunk 8 gives 375 chunks
    and recursive carries."""
    if chunk:
        monkeypatch.setenv(torch_scan.CHUNK_ENV, str(chunk))
    t = _inputs(2, 8, 3000, 4, None, dtype, seed=21)
    t = {k: (v.detach().cuda().requires_grad_() if v is not None else None) for k, v in t.items()}
    y, h, g = _run("torch", t, True, True)
    y_ref, h_ref, g_ref = _run("reference", t, True, True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert y.device.type == "cuda" and _rel(y, y_ref) <= tol and _rel(h, h_ref) <= max(tol, 1e-3)
    for k in g:
        assert _rel(g[k], g_ref[k]) <= tol, k


@pytest.mark.parametrize("mode", ["step", "block"])
def test_backward_uses_the_forward_segments(monkeypatch, mode):
    """Settings that change between forward and backward (an environment variable, the free GPU memory)
    must not change the backward's segments: it reuses the forward's."""
    monkeypatch.setenv(torch_scan.MODE_ENV, mode)
    monkeypatch.setenv(torch_scan.BLOCK_ENV, str(2 * 6 * 3 * 4 * 5))
    monkeypatch.setenv(torch_scan.CHUNK_ENV, "4")
    t = _inputs(2, 6, 150, 3, None, torch.float32, seed=15)
    names = [k for k, v in t.items() if v is not None]
    kw = {k: v for k, v in t.items() if k not in ("u", "delta", "A", "B", "C")}
    y = torch_scan.selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], delta_softplus=True, **kw)
    monkeypatch.setenv(torch_scan.BLOCK_ENV, str(10 ** 9))
    monkeypatch.setenv(torch_scan.CHUNK_ENV, "32")
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    g = torch.autograd.grad(y, [t[k] for k in names], gy)
    y_ref = _run("reference", t, True, False)[0]
    g_ref = torch.autograd.grad(
        torch_scan_reference(t), [t[k] for k in names], gy)
    assert _rel(y, y_ref) <= 1e-5
    for k, a, b in zip(names, g, g_ref):
        assert _rel(a, b) <= 1e-5, k


def torch_scan_reference(t):
    from BraTSMambaLib.ssm import selective_scan

    kw = {k: v for k, v in t.items() if k not in ("u", "delta", "A", "B", "C")}
    return selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], delta_softplus=True, backend="reference",
                          **kw)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_block_schedule_on_cuda_same_yardstick_as_mamba_ssm(dtype):
    """The torch backend and mamba_ssm's CUDA kernel against one float64 transcription, forward and every
    gradient: our error must be of the kernel's order (fp32: both at rounding level)."""
    pytest.importorskip("mamba_ssm.ops.selective_scan_interface")
    t = _inputs(2, 16, 1024, 16, None, dtype, seed=41)
    fp32_only = ("A", "D", "delta_bias")  # mamba_ssm's kernel takes these in fp32 whatever the input dtype

    def on_cuda(to64: bool):
        return {k: (v.detach().to("cuda", torch.float64 if to64 else (torch.float32 if k in fp32_only else v.dtype))
                    .requires_grad_() if v is not None else None) for k, v in t.items()}

    y_ref, h_ref, g_ref = _run("reference", on_cuda(True), True, True)
    results = {b: _run(b, on_cuda(False), True, True) for b in ("torch", "mamba_ssm")}
    errs = {b: {"out": _rel(y, y_ref), "last": _rel(h, h_ref), **{k: _rel(g[k], g_ref[k]) for k in g}}
            for b, (y, h, g) in results.items()}
    print(dtype, {b: {k: f"{v:.1e}" for k, v in e.items()} for b, e in errs.items()})
    floor = 1e-5 if dtype == torch.float32 else 2e-2
    for k, v in errs["torch"].items():
        assert v <= max(floor, 4 * errs["mamba_ssm"][k]), f"{k}: torch {v:.3g}, mamba_ssm {errs['mamba_ssm'][k]:.3g}"
