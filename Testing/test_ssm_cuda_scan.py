"""CUDA (NVRTC) selective-scan backend against a float64 sequential transcription.

CPU: the backend refuses CPU tensors with a reason, and the kernel source compiles with NVRTC for the
architectures it targets wherever PyTorch's NVRTC loads (no GPU needed to compile). GPU (`-m gpu`): every
variant the host picks (dtypes, states 1-32 with zero-padding, groups, strided B/C views, z/D/bias/softplus,
lengths that are not multiples of the lane count, chunked rows, last state) against float64, and a SegMamba
layer's output equal to the Triton backend's.
"""
from __future__ import annotations

import pytest
import torch

from BraTSMambaLib.errors import BackendUnavailableError
from BraTSMambaLib.ssm import selective_scan
from BraTSMambaLib.ssm.backends import cuda_scan, nvrtc_build
from BraTSMambaLib.ssm.selective_scan import resolve_backend
from Testing.test_ssm_ops_streams import tri_layer_outputs
from Testing.test_ssm_triton import make_inputs, reference64, rel


def _nvrtc_loads() -> bool:
    try:
        nvrtc_build._nvrtc()
    except (nvrtc_build.NvrtcError, OSError):
        return False
    return True


def test_cpu_tensors_are_refused_with_a_reason():
    ok, why = cuda_scan.is_available("cpu")
    assert not ok and "CUDA" in why
    with pytest.raises(BackendUnavailableError, match="'cuda' is unavailable on cpu"):
        resolve_backend("cuda", "cpu")


def test_forward_only_refuses_gradients():
    x = torch.randn(1, 2, 8, requires_grad=True)
    with pytest.raises(BackendUnavailableError, match="forward-only"):
        cuda_scan.selective_scan(x, x.detach(), -torch.ones(2, 4), torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    assert resolve_backend("auto", "cpu", needs_grad=True) != "cuda"


@pytest.mark.skipif(not _nvrtc_loads(), reason="PyTorch's NVRTC does not load here")
@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("variant", [
    dict(ns=16, dtypes=(torch.bfloat16,) * 6, flags=(True, False, True, True), vec=(True, True), state_only=False),
    dict(ns=16, dtypes=(torch.float32,) * 6, flags=(True, True, True, True), vec=(False, False), state_only=True),
    dict(ns=4, dtypes=(torch.float16,) * 4 + (torch.float32,) * 2, flags=(False, True, False, False),
         vec=(True, False), state_only=False),
    dict(ns=32, dtypes=(torch.bfloat16,) * 6, flags=(True, True, True, True), vec=(True, True), state_only=False),
    dict(ns=16, dtypes=(torch.bfloat16,) * 6, flags=(True, False, True, True), vec=(True, True), state_only=False,
         share=True),
    dict(ns=16, dtypes=(torch.float32,) * 6, flags=(True, True, True, True), vec=(True, True), state_only=True,
         share=True),
])
def test_kernel_source_compiles_with_nvrtc(arch, variant):
    share = variant.get("share", False)
    defines = cuda_scan._defines(variant["ns"], variant["dtypes"], *variant["flags"], variant["vec"],
                                 variant["state_only"], not variant["state_only"], True,
                                 cuda_scan.SHARED_WARPS if share else cuda_scan.WARPS, share)
    text = "".join(f"#define {k} {v}\n" for k, v in defines.items()) + cuda_scan.SOURCE.read_text()
    cubin = nvrtc_build._compile(text, "cuda_scan_kernel", arch)
    assert cubin[:4] == b"\x7fELF" and b"scan_fwd" in cubin and b"scan_rows" in cubin and b"join_chunks" in cubin


@pytest.mark.skipif(not _nvrtc_loads(), reason="PyTorch's NVRTC does not load here")
def test_a_broken_source_names_the_error():
    with pytest.raises(nvrtc_build.NvrtcError, match="could not compile broken.cu for sm_90"):
        nvrtc_build._compile("extern \"C\" __global__ void f() { undefined_name(); }", "broken", "90")


def _case(b=2, E=8, L=200, N=16, dtype="float32", gB=0, gC=0, z=True, D=True, bias=True, softplus=True, **kw):
    return dict(b=b, E=E, L=L, N=N, dtype=dtype, gB=gB, gC=gC, z=z, D=D, bias=bias, softplus=softplus, **kw)


GPU_CASES = {
    "fp32_all": _case(),
    "bf16_all": _case(dtype="bfloat16"),
    "fp16_all": _case(dtype="float16"),
    "bf16_bare": _case(dtype="bfloat16", z=False, D=False, bias=False, softplus=False),
    "groups": _case(E=12, gB=3, gC=2),
    "states4": _case(N=4, L=37),
    "states12_padded": _case(N=12, L=41),
    "states32": _case(N=32, L=70),
    "one_state": _case(N=1, L=9),
    "odd_rows_and_length": _case(b=3, E=5, L=1001),
    "big_delta": _case(big_delta=True),
    "chunked": _case(b=1, E=4, L=9000),
    # bf16, E/G a multiple of 16 rows: B and C go through shared memory (SHARE_BC)
    "shared_bf16": _case(E=32, dtype="bfloat16", L=1000),
    "shared_bf16_groups": _case(E=64, gB=2, gC=2, L=776, dtype="bfloat16"),
    "shared_chunked": _case(b=1, E=16, L=9000, dtype="bfloat16"),
    "fp32_rows_of_16": _case(E=64, gB=2, gC=2, L=776),   # fp32: per-lane loads
}
TOL = {"float32": 2e-5, "bfloat16": 2e-2, "float16": 5e-3}


def _run(case: dict, seed: int, **extra):
    x = make_inputs(case, "cuda", seed)
    args = {k: (x[k].detach() if x[k] is not None else None) for k in ("u", "delta", "A", "B", "C", "D", "z",
                                                                       "delta_bias")}
    ref, last_ref = reference64(**args, delta_softplus=case["softplus"])
    out, last = cuda_scan.selective_scan(**args, delta_softplus=case["softplus"], return_last_state=True, **extra)
    return out, last, ref, last_ref, args


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["rows", "lanes"])
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_cuda_matches_float64(name, kernel, monkeypatch):
    monkeypatch.setenv(cuda_scan.KERNEL_ENV, kernel)
    case = GPU_CASES[name]
    out, last, ref, last_ref, args = _run(case, seed=200 + list(GPU_CASES).index(name))
    assert out.dtype == args["u"].dtype and out.shape == args["u"].shape
    assert last.shape == (case["b"], case["E"], case["N"]) and last.dtype == torch.float32
    assert rel(out, ref) < TOL[case["dtype"]], rel(out, ref)
    assert rel(last, last_ref) < TOL[case["dtype"]], rel(last, last_ref)
    if "chunked" in name:
        rows = case["b"] * case["E"]
        assert (cuda_scan._chunks(rows, 16, case["L"]) if kernel == "lanes"
                else cuda_scan._rows_chunks(1, 132, case["L"])) > 1


@pytest.mark.gpu
@pytest.mark.parametrize("chunks", ["1", "7"])
def test_gpu_rows_kernel_unaligned_rows_and_forced_chunks(chunks, monkeypatch):
    """Rows whose starts are not 16-byte aligned (scalar loads) and chunk ends inside a step of positions."""
    monkeypatch.setenv(cuda_scan.KERNEL_ENV, "rows")
    monkeypatch.setenv(cuda_scan.CHUNKS_ENV, chunks)
    case = _case(b=2, E=70, L=1003, dtype="bfloat16")
    out, last, ref, last_ref, _ = _run(case, seed=401)
    assert rel(out, ref) < TOL["bfloat16"] and rel(last, last_ref) < TOL["bfloat16"]


def test_rows_kernel_launch_shape():
    assert cuda_scan._rows_threads(96) == 96 and cuda_scan._rows_threads(192) == 96
    assert cuda_scan._rows_threads(384) == 128 and cuda_scan._rows_threads(8) == cuda_scan.ROWS_MIN_THREADS
    assert cuda_scan._rows_threads(200) == cuda_scan.ROWS_MAX_THREADS
    # SegMamba's stage 0 and 1 at batch 8 on an H200 (132 SMs x 4 resident blocks): two whole waves
    assert cuda_scan._rows_chunks(8, 528, 64 ** 3) == 2 * 528 // 8
    assert cuda_scan._rows_chunks(16, 528, 32 ** 3) == 2 * 528 // 16
    assert cuda_scan._rows_chunks(48, 396, 512) == 512 // cuda_scan.ROWS_MIN_CHUNK   # chunks stay >= 64 long
    assert cuda_scan._rows_chunks(600, 528, 4096) == 1                    # the rows alone fill a wave
    assert cuda_scan._rows_chunks(1, 528, 100) == 1


def test_kernel_choice_by_length_or_from_the_environment(monkeypatch):
    monkeypatch.delenv(cuda_scan.KERNEL_ENV, raising=False)
    assert cuda_scan.kernel_kind(64 ** 3) == cuda_scan.kernel_kind(cuda_scan.ROWS_MIN_LENGTH) == "rows"
    assert cuda_scan.kernel_kind(cuda_scan.ROWS_MIN_LENGTH - 1) == cuda_scan.kernel_kind(512) == "lanes"
    monkeypatch.setenv(cuda_scan.KERNEL_ENV, "lanes")
    assert cuda_scan.kernel_kind(64 ** 3) == "lanes"
    monkeypatch.setenv(cuda_scan.KERNEL_ENV, "rows")
    assert cuda_scan.kernel_kind(512) == "rows"
    monkeypatch.setenv(cuda_scan.KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match="BRATSMAMBA_SCAN_CUDA_KERNEL='fast'"):
        cuda_scan.kernel_kind(512)
    assert cuda_scan.rows_step() == cuda_scan.ROWS_STEP
    monkeypatch.setenv(cuda_scan.STEP_ENV, "12")
    with pytest.raises(ValueError, match="BRATSMAMBA_SCAN_CUDA_STEP=12"):
        cuda_scan.rows_step()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["shared_bf16", "shared_bf16_groups", "shared_chunked"])
def test_gpu_shared_bc_path_is_taken_and_equals_the_per_lane_loads(name, monkeypatch):
    monkeypatch.setenv(cuda_scan.KERNEL_ENV, "lanes")
    case = GPU_CASES[name]
    x = make_inputs(case, "cuda", seed=300)
    args = {k: (x[k].detach() if x[k] is not None else None) for k in ("u", "delta", "A", "B", "C", "D", "z",
                                                                       "delta_bias")}
    Bg, Cg = cuda_scan._grouped(args["B"], args["C"], 16)
    vec = (cuda_scan._vectorisable(Bg, 16), cuda_scan._vectorisable(Cg, 16))
    assert cuda_scan._launch_shape(16, case["E"], Bg.shape[1], Bg, Cg, vec)[1]
    shared = cuda_scan.selective_scan(**args, delta_softplus=True)
    monkeypatch.setenv(cuda_scan.SHARE_ENV, "0")
    assert not cuda_scan._launch_shape(16, case["E"], Bg.shape[1], Bg, Cg, vec)[1]
    assert torch.equal(shared, cuda_scan.selective_scan(**args, delta_softplus=True))


def test_shared_bc_only_for_bf16_rows_of_whole_blocks():
    def shape(E, G, dtype, L=1024):
        B = torch.zeros(2, G, 16, L, dtype=dtype)
        vec = (cuda_scan._vectorisable(B, 16),) * 2
        return cuda_scan._launch_shape(16, E, G, B, B, vec)

    assert shape(96, 1, torch.bfloat16) == (cuda_scan.SHARED_WARPS, True)
    assert shape(96, 1, torch.float32) == (cuda_scan.WARPS, False)
    assert shape(40, 1, torch.bfloat16) == (cuda_scan.WARPS, False)    # 16-row blocks would straddle batches
    assert not shape(96, 1, torch.bfloat16, L=1001)[1]                 # rows not 16-byte aligned


@pytest.mark.gpu
def test_gpu_strided_views_as_the_layer_passes_them():
    """B and C as row blocks of one (batch, R + 2N, L) product, u and z as halves of in_proj's output."""
    g = torch.Generator(device="cuda").manual_seed(7)
    b, E, L, N, R = 2, 32, 4096, 16, 3
    xz = torch.randn(b, 2 * E, L, device="cuda", generator=g, dtype=torch.bfloat16)
    x_dbl = torch.randn(b, R + 2 * N, L, device="cuda", generator=g, dtype=torch.bfloat16)
    u, z = xz[:, :E], xz[:, E:]
    delta = torch.randn(b, E, L, device="cuda", generator=g, dtype=torch.bfloat16) * 0.5 - 1
    A = -torch.rand(E, N, device="cuda", generator=g) * 4 - 0.1
    B, C = x_dbl[:, R:R + N], x_dbl[:, R + N:]
    D, bias = torch.randn(E, device="cuda", generator=g), torch.randn(E, device="cuda", generator=g) * 0.3
    assert cuda_scan._vectorisable(B, 16) and not u.is_contiguous()
    out = selective_scan(u, delta, A, B, C, D, z, bias, True, backend="cuda")
    ref, _ = reference64(u, delta, A, B, C, D, z, bias, True)
    assert rel(out, ref) < TOL["bfloat16"]


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["rows", "lanes"])
def test_gpu_segmamba_layer_same_as_triton(kernel, monkeypatch):
    """A tri-orientated Mamba layer at a SegMamba stage shape: the CUDA scan gives the Triton scan's output."""
    monkeypatch.setenv(cuda_scan.KERNEL_ENV, kernel)
    triton_out, cuda_out = tri_layer_outputs(monkeypatch, "BRATSMAMBA_SCAN_BACKEND", ("triton", "cuda"), 16, 2)
    assert rel(cuda_out, triton_out) < 1e-2
