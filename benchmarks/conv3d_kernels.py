"""Our 3x3x3 convolutions (`nets.fused.conv3d_kernels`) against cuDNN's `F.conv3d`, side by side in one run,
at SegMamba's shapes (8 tiles, bf16, NDHWC):

  python3 benchmarks/conv3d_kernels.py [--batch 8] [--sides 128 64] [--json out.json]

Per shape: the convolution alone (cuDNN with its autotuner on, as inference runs it, against ours), and
the convolution followed by the fused instance norm + LeakyReLU (cuDNN + the norm's statistics pass, against
ours writing the statistics in its epilogue), in ms, TFLOP/s of the convolution, and the ratio; and the
largest error of each, relative to the largest value of an fp32 convolution of the same bf16 data. Rows:
48 -> 48 at each side, and the 4-channel input at the first side: 4 -> 48 3x3x3 with the 1x1x1 4 -> 48
residual branch (cuDNN: two convolutions; ours: one kernel), "+norm" normalising both outputs.
"""
from __future__ import annotations

import argparse
import json

import torch
from cuda_timing import median_ms
from torch.nn import functional as F

from BraTSMambaLib.nets.fused import conv3d_kernels as CK
from BraTSMambaLib.nets.fused import norm_kernels as K


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sides", type=int, nargs="+", default=[128, 64])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("conv3d_kernels.py needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    conv = torch.nn.Conv3d(48, 48, 3, padding=1, bias=False).cuda()
    w = conv.weight.detach().to(torch.bfloat16)
    rows = []
    print(f"{'shape':>22} {'cuDNN':>8} {'ours':>8} {'ratio':>6} | {'+norm cuDNN':>11} {'+norm ours':>10} {'ratio':>6}"
          f" | TFLOP/s cuDNN ours | err cuDNN ours")
    for side in args.sides:
        x = torch.randn(args.batch, 48, side, side, side, device="cuda", dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        if not CK.applies(x, conv):
            raise SystemExit("conv3d_c48 does not apply on this GPU (see conv3d_kernels's docstring)")
        flops = 2 * x.numel() * 48 * 27
        ref = F.conv3d(x[:1].float(), w.float(), padding=1)
        scale = float(ref.abs().max())
        err_cudnn = float((F.conv3d(x[:1], w, padding=1).float() - ref).abs().max()) / scale
        err_ours = float((CK.conv3d_c48(x[:1], conv.weight).float() - ref).abs().max()) / scale

        def cudnn_norm():
            y = F.conv3d(x, w, padding=1)
            return K.instance_norm_ndhwc(y, None, None, 1e-5, "leaky_relu", 0.01)

        def ours_norm():
            y, sums = CK.conv3d_c48(x, conv.weight, stats=True)
            return K.instance_norm_ndhwc(y, None, None, 1e-5, "leaky_relu", 0.01, sums=sums)

        t = {"cudnn": median_ms(lambda: F.conv3d(x, w, padding=1), args.repeats),
             "ours": median_ms(lambda: CK.conv3d_c48(x, w), args.repeats),
             "cudnn_norm": median_ms(cudnn_norm, args.repeats),
             "ours_norm": median_ms(ours_norm, args.repeats)}
        norm_err = float((ours_norm().float() - cudnn_norm().float()).abs().max())
        row = {"batch": args.batch, "side": side, **{f"{k}_ms": v for k, v in t.items()},
               "tflops_cudnn": flops / t["cudnn"] / 1e9, "tflops_ours": flops / t["ours"] / 1e9,
               "err_cudnn": err_cudnn, "err_ours": err_ours, "norm_output_max_diff": norm_err}
        rows.append(row)
        _print(row, (args.batch, 48, side, side, side))
    rows.append(_input_row(args.batch, args.sides[0], args.repeats))
    _print(rows[-1], (args.batch, 4, *(args.sides[0],) * 3))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


def _print(row: dict, shape: tuple[int, ...]) -> None:
    print(f"{str(shape):>22} {row['cudnn_ms']:8.3f} {row['ours_ms']:8.3f} {row['cudnn_ms'] / row['ours_ms']:5.2f}x | "
          f"{row['cudnn_norm_ms']:11.3f} {row['ours_norm_ms']:10.3f} {row['cudnn_norm_ms'] / row['ours_norm_ms']:5.2f}x"
          f" | {row['tflops_cudnn']:6.0f} {row['tflops_ours']:6.0f} | {row['err_cudnn']:.1e} {row['err_ours']:.1e}"
          f"  (norm outputs differ by at most {row['norm_output_max_diff']:.3f})")


def _input_row(batch: int, side: int, repeats: int) -> dict:
    """The 4-channel input's 3x3x3 convolution and 1x1x1 residual branch, with and without their norms."""
    conv = torch.nn.Conv3d(4, 48, 3, padding=1, bias=False).cuda().requires_grad_(False)
    branch = torch.nn.Conv3d(4, 48, 1, bias=False).cuda().requires_grad_(False)
    x = torch.randn(batch, 4, side, side, side, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    if not CK.applies_c4(x, conv, branch):
        raise SystemExit("conv3d_c4 does not apply on this GPU (see conv3d_kernels's docstring)")
    w, w1 = conv.weight.to(torch.bfloat16), branch.weight.to(torch.bfloat16)
    ref = F.conv3d(x[:1].float(), w.float(), padding=1)
    scale = float(ref.abs().max())
    err_cudnn = float((F.conv3d(x[:1], w, padding=1).float() - ref).abs().max()) / scale
    err_ours = float((CK.conv3d_c4(x[:1], w, w1)[0][0].float() - ref).abs().max()) / scale

    def cudnn():
        return F.conv3d(x, w, padding=1), F.conv3d(x, w1)

    def ours():
        return CK.conv3d_c4(x, w, w1)[0]

    def norm(y, sums=None, act="leaky_relu"):
        return K.instance_norm_ndhwc(y, None, None, 1e-5, act, 0.01, sums=sums)

    def cudnn_norm():
        y, r = cudnn()
        return norm(y), norm(r, act=None)

    def ours_norm():
        (y, r), (s, sr) = CK.conv3d_c4(x, w, w1, stats=True)
        return norm(y, s), norm(r, sr, act=None)

    t = {"cudnn": median_ms(cudnn, repeats), "ours": median_ms(ours, repeats),
         "cudnn_norm": median_ms(cudnn_norm, repeats), "ours_norm": median_ms(ours_norm, repeats)}
    norm_err = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ours_norm(), cudnn_norm()))
    flops = 2 * x[:, 0].numel() * 48 * 4 * (27 + 1)
    return {"batch": batch, "side": side, "input_channels": 4, **{f"{k}_ms": v for k, v in t.items()},
            "tflops_cudnn": flops / t["cudnn"] / 1e9, "tflops_ours": flops / t["ours"] / 1e9,
            "err_cudnn": err_cudnn, "err_ours": err_ours, "norm_output_max_diff": norm_err}


if __name__ == "__main__":
    main()
