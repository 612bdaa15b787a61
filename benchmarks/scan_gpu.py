"""GPU selective-scan benchmark: our Triton kernel against mamba_ssm's CUDA kernel on SegMamba's stage shapes.

  python3 benchmarks/scan_gpu.py --sweep --json sweep.json     # time launch configurations of the Triton kernel
  python3 benchmarks/scan_gpu.py --table --configs sweep.json  # final table (mamba_ssm, triton default/best, torch)

Shapes: batch 2, N 16, (E, L) = (96, 64^3), (192, 32^3), (384, 16^3), (768, 8^3); inputs as a Mamba layer
passes them (z, D, delta_bias, delta_softplus; A = -(1..N), dt bias from mamba's initialisation).
Times are medians of triton.testing.do_bench (CUDA events); memory is the peak allocated during one call
above what was allocated before it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from BraTSMambaLib.ssm.backends import triton_scan
from BraTSMambaLib.ssm.backends.triton_scan import ScanConfig

SHAPES = [(2, 96, 64**3), (2, 192, 32**3), (2, 384, 16**3), (2, 768, 8**3)]
N = 16
# The configurations timed on the H200 on 2026-11-30 (docs/performance.md); written out in full so that a
# change of ScanConfig's defaults does not change what the sweep measures.
_BASE = {
    "tile_fwd": 16,
    "tile_bwd": 8,
    "bd_fwd": 8,
    "warps_fwd": 1,
    "target_programs": 2048,
    "bd_fwd_nograd": 8,
}
SWEEP = [
    ScanConfig(**_BASE, bd_bwd=16, warps_bwd=2, atomic_dbc=False),
    ScanConfig(**_BASE, bd_bwd=16, warps_bwd=2, atomic_dbc=True),
    ScanConfig(**_BASE, bd_bwd=4, warps_bwd=1, atomic_dbc=True),
    ScanConfig(**_BASE, bd_bwd=8, warps_bwd=1, atomic_dbc=True),
    ScanConfig(**dict(_BASE, tile_fwd=32), bd_bwd=4, warps_bwd=1, atomic_dbc=False),
    ScanConfig(
        **dict(_BASE, bd_fwd=16, warps_fwd=2, target_programs=4096, bd_fwd_nograd=16),
        bd_bwd=16,
        warps_bwd=2,
        atomic_dbc=True,
    ),
    ScanConfig(
        **dict(_BASE, tile_bwd=16, bd_fwd=4, bd_fwd_nograd=4),
        bd_bwd=2,
        warps_bwd=1,
        atomic_dbc=True,
    ),
]


def make_inputs(b: int, E: int, L: int, dtype=torch.float32, seed: int = 0) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    dev = {"device": "cuda"}
    dt = torch.exp(
        torch.rand(E, generator=g, **dev) * (math.log(0.1) - math.log(1e-3))
        + math.log(1e-3)
    ).clamp_min(1e-4)
    return {
        "u": torch.randn(b, E, L, generator=g, **dev).to(dtype),
        "delta": (torch.randn(b, E, L, generator=g, **dev) * 0.5).to(dtype),
        "A": -torch.arange(1, N + 1, dtype=torch.float32, **dev).repeat(E, 1),
        "B": torch.randn(b, N, L, generator=g, **dev).to(dtype),
        "C": torch.randn(b, N, L, generator=g, **dev).to(dtype),
        "D": torch.ones(E, **dev),
        "z": torch.randn(b, E, L, generator=g, **dev).to(dtype),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
        "dout": torch.randn(b, E, L, generator=g, **dev).to(dtype),
    }


def runners(fn, x: dict):
    """(forward without grad, forward+backward) closures for scan function `fn`; dout is x['dout']."""
    dout = x["dout"]
    x = {k: v for k, v in x.items() if k != "dout"}
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}

    def fwd():
        with torch.no_grad():
            return fn(**x, delta_softplus=True)

    def fwd_bwd():
        out = fn(**leaves, delta_softplus=True)
        return torch.autograd.grad(out, list(leaves.values()), dout)

    return fwd, fwd_bwd


def bench(f) -> float:
    from triton.testing import do_bench

    return float(do_bench(f, warmup=25, rep=100, return_mode="median"))


def peak_mb(f) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    r = f()
    torch.cuda.synchronize()
    del r
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def with_config(cfg: ScanConfig):
    def fn(**kw):
        return triton_scan.scan_with_config(**kw, config=cfg)

    return fn


def sweep(json_path: str | None, shapes) -> dict:
    best = {}
    for b, E, L in shapes:
        x = make_inputs(b, E, L)
        ref_fb = None
        rows = []
        for i, cfg in enumerate(SWEEP):
            f, fb = runners(with_config(cfg), x)
            try:
                grads = fb()
                if ref_fb is None:
                    ref_fb, err = grads, 0.0
                else:
                    err = max(rel(a, r) for a, r in zip(grads, ref_fb))
                tf, tfb = bench(f), bench(fb)
            except Exception as e:  # noqa: BLE001 - a configuration that does not compile or fit is reported, not fatal
                print(
                    f"  ({b},{E},{L}) cfg{i} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                    flush=True,
                )
                continue
            rows.append((tfb, tf, i))
            print(
                f"  ({b},{E},{L}) cfg{i} {asdict(cfg)}  fwd {tf:.3f} ms  fwd+bwd {tfb:.3f} ms  "
                f"max grad diff vs cfg0 {err:.1e}",
                flush=True,
            )
        if rows:
            best[f"{b},{E},{L}"] = {
                "fwd_bwd": asdict(SWEEP[min(rows)[2]]),
                "fwd": asdict(SWEEP[min(rows, key=lambda r: r[1])[2]]),
            }
        del x
        torch.cuda.empty_cache()
        if json_path:
            Path(json_path).write_text(json.dumps(best, indent=1))
    return best


def resource_report() -> None:
    """Registers and spills of every compiled kernel variant (from triton's in-memory cache)."""
    from BraTSMambaLib.ssm.backends import triton_scan_kernels as k

    for name in (
        "_fwd_chunk_state",
        "_chunk_scan",
        "_fwd_chunk_out",
        "_bwd_chunk_state",
        "_bwd_chunk_grads",
    ):
        try:
            for cache in getattr(k, name).device_caches.values():
                kernels = cache[0] if isinstance(cache, tuple) else cache
                for kern in kernels.values():
                    c = (
                        {
                            kk: v
                            for kk, v in getattr(kern, "src", None).constants.items()
                        }
                        if hasattr(getattr(kern, "src", None), "constants")
                        else {}
                    )
                    print(
                        f"  {name}: regs {kern.n_regs} spills {kern.n_spills} warps {kern.metadata.num_warps} "
                        f"{ {str(kk): v for kk, v in c.items() if isinstance(v, (int, bool))} }"
                    )
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"  {name}: no resource report ({type(e).__name__}: {e})")


def table(configs_path: str | None, shapes, with_torch: bool) -> None:
    best = (
        json.loads(Path(configs_path).read_text())
        if configs_path and Path(configs_path).is_file()
        else {}
    )
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"mamba_ssm unavailable: {type(e).__name__}: {e}")
        selective_scan_fn = None
    torch_fn = None
    if with_torch:
        try:
            from BraTSMambaLib.ssm.backends import torch_scan

            torch_fn = torch_scan.selective_scan
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"torch backend unavailable: {e}")
    print(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"triton {__import__('triton').__version__}",
        flush=True,
    )
    head = "| shape (b, E, L) | backend | fwd ms | fwd+bwd ms | fwd / mamba | fwd+bwd / mamba | peak MB fwd+bwd |"
    lines = [head, "|" + "---|" * 7]
    for b, E, L in shapes:
        x = make_inputs(b, E, L)
        key = f"{b},{E},{L}"
        cands = []
        if selective_scan_fn is not None:
            cands.append(("mamba_ssm", selective_scan_fn, selective_scan_fn))
        cands.append(
            ("triton (default)", triton_scan.selective_scan, triton_scan.selective_scan)
        )
        if key in best:
            cf, cb = ScanConfig(**best[key]["fwd"]), ScanConfig(**best[key]["fwd_bwd"])
            cands.append(("triton (best swept)", with_config(cf), with_config(cb)))
        if torch_fn is not None:
            cands.append(("torch", torch_fn, torch_fn))
        ref = None
        for name, ffn, bfn in cands:
            try:
                f, _ = runners(ffn, x)
                _, fb = runners(bfn, x)
                tf, tfb, mem = bench(f), bench(fb), peak_mb(fb)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(
                    f"{key} {name} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                    flush=True,
                )
                torch.cuda.empty_cache()
                continue
            if name == "mamba_ssm":
                ref = (tf, tfb)
            r = f"{tf / ref[0]:.2f}x | {tfb / ref[1]:.2f}x" if ref else "- | -"
            lines.append(
                f"| ({b}, {E}, {L}) | {name} | {tf:.3f} | {tfb:.3f} | {r} | {mem:.0f} |"
            )
            print(lines[-1], flush=True)
        del x
        torch.cuda.empty_cache()
    print("\n" + "\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sweep", action="store_true", help="time the launch configurations in SWEEP"
    )
    p.add_argument(
        "--json", help="where --sweep writes the best configuration per shape"
    )
    p.add_argument("--table", action="store_true", help="final comparison table")
    p.add_argument(
        "--configs", help="best configurations from --sweep, used by --table"
    )
    p.add_argument(
        "--torch", action="store_true", help="also time the pure-PyTorch backend"
    )
    p.add_argument(
        "--stages", default="0,1,2,3", help="which SegMamba stages (default all)"
    )
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 2
    shapes = [SHAPES[int(s)] for s in a.stages.split(",")]
    if a.sweep:
        print(json.dumps(sweep(a.json, shapes), indent=1))
        resource_report()
    if a.table:
        table(a.configs, shapes, a.torch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
