"""Triton selective-scan backend against a float64 sequential transcription (and mamba_ssm's kernel on GPU).

CPU: the kernels run under TRITON_INTERPRET=1 (numpy) on tiny shapes, in one subprocess, because the
interpreter must be chosen before triton compiles anything. GPU (`-m gpu`): compiled kernels, fp32/bf16/fp16,
grouped B/C, with and without z/D/delta_bias/softplus, multi-chunk lengths, and mamba_ssm when it imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def reference64(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False
):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t.h_t + D u_t, y * silu(z), in float64.

    Returns (y, last_state); differentiable through the Python loop.
    """
    u, dt, A = u.double(), delta.double(), A.double()
    b, E, L = u.shape
    if delta_bias is not None:
        dt = dt + delta_bias.double()[:, None]
    if delta_softplus:
        dt = torch.where(dt <= 20, F.softplus(dt), dt)
    Bf = (B.unsqueeze(1) if B.dim() == 3 else B).double()
    Cf = (C.unsqueeze(1) if C.dim() == 3 else C).double()
    Bf = Bf.repeat_interleave(E // Bf.shape[1], 1)
    Cf = Cf.repeat_interleave(E // Cf.shape[1], 1)
    h = u.new_zeros(b, E, A.shape[1])
    ys = []
    for t in range(L):
        h = (
            torch.exp(dt[:, :, t, None] * A) * h
            + (dt[:, :, t] * u[:, :, t])[..., None] * Bf[..., t]
        )
        ys.append((h * Cf[..., t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def make_inputs(case: dict, device: str, seed: int) -> dict:
    """Fresh random inputs for `case` (keys b, E, L, N, dtype, gB, gC, z, D, bias, softplus)."""
    g = torch.Generator().manual_seed(seed)
    b, E, L, N = case["b"], case["E"], case["L"], case["N"]
    dt = getattr(torch, case["dtype"])

    def r(*s, scale=1.0, shift=0.0):
        return torch.randn(*s, generator=g) * scale + shift

    def bc(groups):
        return r(b, N, L) if groups == 0 else r(b, groups, N, L)

    delta = r(b, E, L, scale=0.5, shift=-1.0 if case["softplus"] else 0.0)
    if not case["softplus"]:
        delta = delta.abs() * 0.5
    if case.get("big_delta") and L > 3:
        delta[:, 0, 2] = 25.0
    x = {
        "u": r(b, E, L),
        "delta": delta,
        "A": -torch.rand(E, N, generator=g) * 4 - 0.1,
        "B": bc(case["gB"]),
        "C": bc(case["gC"]),
        "D": r(E) if case["D"] else None,
        "z": r(b, E, L) if case["z"] else None,
        "delta_bias": r(E, scale=0.3) if case["bias"] else None,
    }
    out = {}
    for k, v in x.items():
        if v is None:
            out[k] = None
            continue
        v = v.to(dt) if k in ("u", "delta", "B", "C", "z") else v.float()
        out[k] = v.to(device).requires_grad_(True)
    out["dout"] = r(b, E, L).to(dt).to(device)
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||; the absolute error where b is exactly zero (dA at L = 1)."""
    a, b = a.detach().double(), b.detach().double()
    nb = float(b.norm())
    return float((a - b).norm()) / (nb if nb > 0 else 1.0)


def compare_case(case: dict, device: str, seed: int, backend: str = "triton") -> dict:
    """Relative errors of one backend against float64: 'out', 'last', and one per gradient."""
    from BraTSMambaLib.ssm.backends import triton_scan

    x = make_inputs(case, device, seed)
    args = {k: x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")}
    if backend == "triton":
        cfg = triton_scan.ScanConfig(**case.get("cfg", {}))
        out, last = triton_scan.scan_with_config(
            **args, delta_softplus=case["softplus"], return_last_state=True, config=cfg
        )
    else:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        out, last = selective_scan_fn(
            **args, delta_softplus=case["softplus"], return_last_state=True
        )
    names = [k for k in GRAD_NAMES if args[k] is not None]
    grads = torch.autograd.grad(out, [args[k] for k in names], x["dout"])
    out_nograd = None
    if backend == "triton":
        with torch.no_grad():
            out_nograd = triton_scan.scan_with_config(
                **args, delta_softplus=case["softplus"], config=cfg
            )
    ref_args = {
        k: (v.detach().double().requires_grad_(True) if v is not None else None)
        for k, v in args.items()
    }
    ref_out, ref_last = reference64(**ref_args, delta_softplus=case["softplus"])
    ref_grads = torch.autograd.grad(
        ref_out, [ref_args[k] for k in names], x["dout"].double()
    )
    res = {
        "out": rel(out, ref_out),
        "last": rel(last, ref_last),
        **({"out_nograd": rel(out_nograd, ref_out)} if out_nograd is not None else {}),
        "out_dtype_ok": out.dtype == x["u"].dtype and last.dtype == torch.float32,
    }
    for k, gr, rg in zip(names, grads, ref_grads):
        res[k] = rel(gr, rg)
        res[k + "_dtype_ok"] = gr.dtype == args[k].dtype and gr.shape == args[k].shape
    return res


def all_features(b: int, E: int, L: int, N: int, **extra) -> dict:
    """A float32 case with ungrouped B/C, z, D, delta_bias and softplus (see `make_inputs`)."""
    return {
        "b": b,
        "E": E,
        "L": L,
        "N": N,
        "dtype": "float32",
        "gB": 0,
        "gC": 0,
        "z": True,
        "D": True,
        "bias": True,
        "softplus": True,
        **extra,
    }


# Tiny shapes for the interpreter: several chunks, ragged last tile, N not a power of two, L = 1.
SMALL = all_features(
    b=2,
    E=4,
    L=37,
    N=4,
    cfg={
        "tile_fwd": 8,
        "tile_bwd": 8,
        "bd_fwd": 2,
        "bd_bwd": 2,
        "chunk_tiles_fwd": 2,
        "chunk_tiles_bwd": 2,
    },
)
INTERP_CASES = {
    "all_features_multichunk": dict(SMALL),
    "grouped_bc_big_delta": dict(SMALL, gB=2, gC=2, big_delta=True),
    "mixed_groups_bwd_blocks": dict(
        SMALL,
        E=8,
        gB=0,
        gC=2,
        cfg={
            "tile_fwd": 8,
            "tile_bwd": 8,
            "bd_fwd": 4,
            "bd_bwd": 2,
            "bd_fwd_nograd": 8,
            "chunk_tiles_fwd": 1,
            "chunk_tiles_bwd": 3,
        },
    ),
    "many_chunks_chunk_scan_tiles": dict(
        SMALL,
        cfg={
            "tile_fwd": 2,
            "tile_bwd": 2,
            "bd_fwd": 2,
            "bd_bwd": 4,
            "chunk_tiles_fwd": 1,
            "chunk_tiles_bwd": 1,
        },
    ),
    "atomic_dbc": dict(
        SMALL,
        E=8,
        gC=2,
        cfg=dict(SMALL["cfg"], atomic_dbc=True),
    ),
    "fwd_tile_4x_bwd_tile": dict(
        SMALL,
        cfg={
            "tile_fwd": 8,
            "tile_bwd": 2,
            "bd_fwd": 2,
            "bd_bwd": 4,
            "chunk_tiles_fwd": 2,
            "chunk_tiles_bwd": 3,
        },
    ),
    "bwd_tile_above_fwd_tile": dict(
        SMALL,
        gB=2,
        cfg={"tile_fwd": 2, "tile_bwd": 8, "chunk_tiles_fwd": 1, "chunk_tiles_bwd": 1},
    ),
    "plain_N3": dict(SMALL, N=3, z=False, D=False, bias=False, softplus=False),
    "L1": dict(SMALL, L=1),
    "single_chunk_default_cfg": dict(
        SMALL, b=1, L=21, cfg={"tile_fwd": 8, "tile_bwd": 8}
    ),
    "bf16": dict(SMALL, dtype="bfloat16", L=19),
    "fp16_no_z": dict(SMALL, dtype="float16", z=False, L=19, gC=2),
}
TOL = {"float32": 2e-5, "bfloat16": 2e-2, "float16": 5e-3}


def _run_interpreter_cases() -> dict:
    return {
        name: compare_case(case, "cpu", seed=i)
        for i, (name, case) in enumerate(INTERP_CASES.items())
    }


@pytest.fixture(scope="module")
def interp_results() -> dict:
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = (
        f"import sys, json; sys.path.insert(0, {str(ROOT / 'Testing')!r}); import test_ssm_triton as t; "
        "print('RESULTS=' + json.dumps(t._run_interpreter_cases()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS=")][-1]
    return json.loads(line[len("RESULTS=") :])


def _check(res: dict, tol: float) -> None:
    for key, val in res.items():
        if key.endswith("_ok"):
            assert val, f"{key} failed"
        else:
            assert val <= tol, f"{key}: relative error {val:.3g} > {tol:g}"


@pytest.mark.parametrize("name", list(INTERP_CASES))
def test_interpreter_matches_float64(interp_results, name):
    _check(interp_results[name], TOL[INTERP_CASES[name]["dtype"]])


def test_cpu_tensors_are_refused_outside_the_interpreter():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter mode accepts CPU tensors")
    from BraTSMambaLib.errors import BackendUnavailableError
    from BraTSMambaLib.ssm.backends import triton_scan

    ok, why = triton_scan.is_available("cpu")
    assert not ok and "CUDA" in why
    x = make_inputs(dict(SMALL, L=5), "cpu", seed=0)
    with pytest.raises(BackendUnavailableError):
        triton_scan.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"])


def test_bad_shapes_raise():
    from BraTSMambaLib.ssm.backends import triton_scan

    x = make_inputs(dict(SMALL, L=5), "cpu", seed=0)
    with pytest.raises(ValueError, match="B must be"):
        triton_scan.selective_scan(x["u"], x["delta"], x["A"], x["B"][:, :3], x["C"])
    with pytest.raises(ValueError, match="A must be"):
        triton_scan.selective_scan(x["u"], x["delta"], x["A"][:3], x["B"], x["C"])


# ---------------------------------------------------------------- GPU
GPU_BASE = all_features(b=2, E=16, L=1000, N=16)
GPU_CASES = {
    "fp32_all_features": dict(GPU_BASE),
    "fp32_plain_grouped": dict(
        GPU_BASE, gB=4, gC=4, z=False, D=False, bias=False, softplus=False
    ),
    "fp32_many_chunks_small_tiles": dict(
        GPU_BASE,
        L=3001,
        cfg={"tile_fwd": 16, "tile_bwd": 4, "chunk_tiles_fwd": 5, "chunk_tiles_bwd": 7},
    ),
    "bf16_all_features": dict(GPU_BASE, dtype="bfloat16"),
    "fp16_no_z_grouped": dict(GPU_BASE, dtype="float16", z=False, gB=2, gC=2),
    "fp32_N5_L1": dict(GPU_BASE, N=5, L=1),
    "fp32_atomic_dbc": dict(GPU_BASE, E=64, cfg={"atomic_dbc": True}),
}
GPU_TOL = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_triton_matches_float64(name):
    res = compare_case(GPU_CASES[name], "cuda", seed=100 + list(GPU_CASES).index(name))
    print(
        name,
        json.dumps(
            {k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in res.items()}
        ),
    )
    _check(res, GPU_TOL[GPU_CASES[name]["dtype"]])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name", ["fp32_all_features", "bf16_all_features", "fp32_plain_grouped"]
)
def test_gpu_mamba_ssm_kernel_same_yardstick(name):
    """mamba_ssm's own kernel against the same float64 transcription: our errors must be of its order."""
    pytest.importorskip("mamba_ssm")
    case = GPU_CASES[name]
    seed = 100 + list(GPU_CASES).index(name)
    ours, theirs = (
        compare_case(case, "cuda", seed),
        compare_case(case, "cuda", seed, backend="mamba_ssm"),
    )
    print(
        name,
        "triton",
        json.dumps({k: f"{v:.2e}" for k, v in ours.items() if isinstance(v, float)}),
    )
    print(
        name,
        "mamba_ssm",
        json.dumps({k: f"{v:.2e}" for k, v in theirs.items() if isinstance(v, float)}),
    )
    tol = GPU_TOL[case["dtype"]]
    for k, v in ours.items():
        if isinstance(v, float):
            # our no-grad forward (a triton-only path) is held to mamba_ssm's forward error
            yardstick = theirs["out" if k == "out_nograd" else k]
            assert v <= max(tol, 4 * yardstick), (
                f"{k}: triton {v:.3g}, mamba_ssm {yardstick:.3g}"
            )


@pytest.mark.gpu
def test_gpu_large_shape_matches_mamba_ssm():
    """A SegMamba-like shape (many chunks, default launch config) against mamba_ssm's kernel directly."""
    mamba = pytest.importorskip("mamba_ssm.ops.selective_scan_interface")
    from BraTSMambaLib.ssm.backends import triton_scan

    case = dict(GPU_BASE, b=2, E=96, L=32768, gB=0, gC=0)
    x = make_inputs(case, "cuda", seed=7)
    args = {k: x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")}
    names = [k for k in GRAD_NAMES if args[k] is not None]
    o1, l1 = triton_scan.selective_scan(
        **args, delta_softplus=True, return_last_state=True
    )
    g1 = torch.autograd.grad(o1, [args[k] for k in names], x["dout"])
    o2, l2 = mamba.selective_scan_fn(
        **args, delta_softplus=True, return_last_state=True
    )
    g2 = torch.autograd.grad(o2, [args[k] for k in names], x["dout"])
    errs = {
        "out": rel(o1, o2),
        "last": rel(l1, l2),
        **{k: rel(a, b) for k, a, b in zip(names, g1, g2)},
    }
    print("large", json.dumps({k: f"{v:.2e}" for k, v in errs.items()}))
    for k, v in errs.items():
        assert v <= 1e-3, f"{k}: {v:.3g}"
