"""CUTLASS's sm90 implicit-GEMM 3-D convolutions against cuDNN on SegMamba's 3^3 convolution shapes.

Question: would Hopper-native convolutions of our own (TMA im2col loads, wgmma, warp specialisation) beat the
kernels cuDNN picks for SegMamba's layers enough to be worth shipping (issue 5's "under 1 s" needs about 2x
on the 48-channel layers at 128^3)? CUTLASS 4.2 is the best public implementation of that design, so each
tile configuration of `cutlass/conv3d_fprop_sm90.cu` is built into a small shared library (nvcc, on the
first run; cached by source, flags and tile) and called through ctypes on the same tensors as
`F.conv3d` (cuDNN, channels_last_3d, bf16, autotuned). Every result is checked against an fp32 convolution.
A last row times a 48->48 convolution at 128^3 done as one 2-D convolution over depth-stacked channels
(3 x 48 = 144 input channels), the stacking included.

  pip download --no-deps nvidia-cutlass==4.2.0.0 && unzip nvidia_cutlass-4.2.0.0-*.whl -d cutlass
  python3 benchmarks/conv3d_cutlass.py --cutlass-root cutlass/cutlass_library/source     # H100/H200
  python3 benchmarks/conv3d_cutlass.py --cutlass-root ... --build-only                    # any machine with nvcc

Without --cutlass-root the installed `cutlass_library` package (PyPI nvidia-cutlass) is used.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "cutlass" / "conv3d_fprop_sm90.cu"
FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "-arch=sm_90a", "--expt-relaxed-constexpr",
         "-DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED", "-Xcompiler", "-fPIC", "-shared"]
TILES = ["128:48:64", "256:48:64", "64:48:64", "128:48:16", "128:96:32", "128:96:64", "128:192:64"]
SHAPES = [  # (C_in, C_out, side, calls per 8-tile SegMamba forward pass)
    (48, 48, 128, 4), (96, 48, 128, 1), (8, 48, 128, 1),
    (48, 48, 64, 2), (48, 96, 64, 1), (96, 96, 64, 2), (192, 96, 64, 1),
    (96, 192, 32, 1), (192, 192, 32, 2), (384, 192, 32, 1),
    (384, 384, 16, 2), (768, 384, 16, 1),
]


def cutlass_includes(root: str | None) -> list[Path]:
    """CUTLASS's include directories: ROOT/include and ROOT/tools/util/include (ROOT = the source tree,
    by default the one inside the installed cutlass_library package)."""
    if root is None:
        try:
            import cutlass_library
        except ImportError:
            raise SystemExit("CUTLASS headers: pass --cutlass-root or pip install nvidia-cutlass") from None
        root = Path(cutlass_library.__file__).parent / "source"
    dirs = [Path(root) / "include", Path(root) / "tools" / "util" / "include"]
    for d in dirs:
        if not d.is_dir():
            raise SystemExit(f"CUTLASS headers: {d} is not a directory")
    return dirs


def build(tiles: list[str], build_dir: Path, root: str | None, nvcc: str, jobs: int) -> dict[str, Path]:
    """One shared library per tile (M:N:K), built unless a library of the same source, flags and tile exists."""
    build_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:10]
    libs = {t: build_dir / f"conv_{t.replace(':', '_')}_{digest}.so" for t in tiles}
    todo = [t for t, so in libs.items() if not so.exists()]
    if todo:
        includes = [f"-I{d}" for d in cutlass_includes(root)]

        def one(tile: str) -> None:
            m, n, k = tile.split(":")
            tmp = libs[tile].with_suffix(".tmp.so")
            cmd = [nvcc, *FLAGS, *includes, f"-DTILE_M={m}", f"-DTILE_N={n}", f"-DTILE_K={k}", str(SOURCE),
                   "-o", str(tmp)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"build {tile} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                return
            tmp.replace(libs[tile])

        print(f"building {len(todo)} tile configurations with {nvcc} ({jobs} at a time)...", flush=True)
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, todo))
    return {t: so for t, so in libs.items() if so.exists()}


def bench(libs: dict[str, Path], batch: int) -> dict:
    import torch
    import torch.nn.functional as F
    from cuda_timing import median_ms

    torch.backends.cudnn.benchmark = True
    fns = {}
    for tile, so in libs.items():
        lib = ctypes.CDLL(str(so))
        lib.conv3d_fprop.restype = ctypes.c_int
        lib.conv3d_fprop.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 10 + [ctypes.c_void_p]
        fns[tile] = lib.conv3d_fprop

    def cutlass_conv(fn, x, wk, y):
        n, c, d, h, w = x.shape
        rc = fn(x.data_ptr(), wk.data_ptr(), y.data_ptr(), n, d, h, w, c, wk.shape[0], 3, 3, 3, 1,
                torch.cuda.current_stream().cuda_stream)
        if rc:
            raise RuntimeError(f"conv3d_fprop returned {rc}")

    rows, saving = [], 0.0
    for cin, cout, side, calls in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(batch, cin, side, side, side, device="cuda").to(torch.bfloat16).contiguous(
            memory_format=torch.channels_last_3d)
        wt = (torch.randn(cout, cin, 3, 3, 3, device="cuda") / (27 * cin) ** 0.5).to(torch.bfloat16)
        wk = wt.permute(0, 2, 3, 4, 1).contiguous()
        ref32 = F.conv3d(x.float(), wt.float(), padding=1)
        scale = ref32.abs().max().item()
        tflop = 2 * batch * side ** 3 * cout * cin * 27 / 1e12
        t_cudnn = median_ms(lambda: F.conv3d(x, wt, padding=1))
        row = {"c_in": cin, "c_out": cout, "side": side, "calls": calls, "cudnn_ms": t_cudnn,
               "cudnn_err": (F.conv3d(x, wt, padding=1).float() - ref32).abs().max().item() / scale, "cutlass": {}}
        y = torch.empty_like(ref32, dtype=torch.bfloat16)
        for tile, fn in fns.items():
            try:
                cutlass_conv(fn, x, wk, y)
                torch.cuda.synchronize()
            except RuntimeError as e:
                row["cutlass"][tile] = {"error": str(e)}
                continue
            err = (y.float() - ref32).abs().max().item() / scale
            row["cutlass"][tile] = {"ms": median_ms(lambda: cutlass_conv(fn, x, wk, y)), "err": err}
        ok = {t: v["ms"] for t, v in row["cutlass"].items() if "ms" in v and v["err"] < 2e-2}
        best = min(ok, key=ok.get) if ok else None
        row["best"] = best
        if best:
            saving += (t_cudnn - ok[best]) * calls
        rows.append(row)
        cells = "  ".join(f"{t} {v['ms']:.3f} ({tflop / v['ms'] * 1e3:.0f})" if "ms" in v else f"{t} {v['error']}"
                          for t, v in row["cutlass"].items())
        best_s = f"best {best}: {t_cudnn / ok[best]:.2f}x" if best else "no CUTLASS result"
        print(f"{cin:3d}->{cout:3d} at {side:3d}^3 x{calls}: cuDNN {t_cudnn:.3f} ms ({tflop / t_cudnn * 1e3:.0f} "
              f"TFLOP/s) | CUTLASS ms (TFLOP/s): {cells} | {best_s}", flush=True)
        del x, ref32, y
        torch.cuda.empty_cache()
    print(f"per 8-tile SegMamba forward pass, best CUTLASS tile per layer instead of cuDNN: "
          f"{saving:+.2f} ms saved")

    cin = cout = 48
    side = 128
    x = torch.randn(batch, cin, side, side, side, device="cuda").to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last_3d)
    wt = (torch.randn(cout, cin, 3, 3, 3, device="cuda") / (27 * cin) ** 0.5).to(torch.bfloat16)
    w2 = wt.permute(0, 2, 1, 3, 4).reshape(cout, 3 * cin, 3, 3).contiguous(memory_format=torch.channels_last)
    xl = x.permute(0, 2, 3, 4, 1)

    def stacked():
        xp = F.pad(xl, (0, 0, 0, 0, 0, 0, 1, 1))
        return torch.cat([xp[:, i:i + side] for i in range(3)], dim=-1).reshape(
            batch * side, side, side, 3 * cin).permute(0, 3, 1, 2)

    xs = stacked()
    y2 = F.conv2d(xs, w2, padding=1).reshape(batch, side, cout, side, side).permute(0, 2, 1, 3, 4)
    diff = (y2.float() - F.conv3d(x, wt, padding=1).float()).abs().max().item()
    t_stack, t_2d = median_ms(stacked), median_ms(lambda: F.conv2d(xs, w2, padding=1))
    t_3d = median_ms(lambda: F.conv3d(x, wt, padding=1))
    print(f"48->48 at 128^3 as a 2-D convolution over depth-stacked channels: stacking {t_stack:.3f} ms + conv2d "
          f"{t_2d:.3f} ms, against conv3d {t_3d:.3f} ms (largest difference {diff:.1e})")
    return {"batch": batch, "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
            "gpu": torch.cuda.get_device_name(), "rows": rows, "saving_ms_per_forward": saving,
            "stacked_conv2d": {"stack_ms": t_stack, "conv2d_ms": t_2d, "conv3d_ms": t_3d}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cutlass-root", help="CUTLASS source tree (with include/ and tools/util/include/)")
    p.add_argument("--tiles", nargs="+", default=TILES, metavar="M:N:K", help="tile configurations to build")
    p.add_argument("--build-dir", type=Path, default=Path.home() / ".cache" / "bratsmamba" / "cutlass-conv")
    p.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel nvcc builds")
    p.add_argument("--build-only", action="store_true", help="build the libraries and stop (no GPU needed)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    libs = build(args.tiles, args.build_dir, args.cutlass_root, args.nvcc, args.jobs)
    print(f"{len(libs)} of {len(args.tiles)} tile configurations built in {args.build_dir}")
    if args.build_only:
        return
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        raise SystemExit("conv3d_cutlass.py runs sm90a kernels: it needs an H100/H200 (compute capability 9.0)")
    result = bench(libs, args.batch)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
