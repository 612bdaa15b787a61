"""The Triton kernels of `nets.fused` at SegMamba's shapes, 8 tiles, bf16, NDHWC: the instance norm
(`norm_kernels`) and the decoder's skip concatenation (`concat_kernel`).

  python3 benchmarks/fused_kernels.py                      # CUDA only
  python3 benchmarks/fused_kernels.py --sweep 2048:512:8:1 8192:256:8:1 2048:512:8:16

Per shape: the whole norm (statistics, finish, normalise + LeakyReLU + residual) against the seventh
session's predecessor measured in the same run (the same statistics kernel followed by about twenty small
torch operations in float64 to finish the statistics), the statistics pass alone with its read bandwidth,
and a copy of the tensor (`clone`, one read and one write) as the device's practical bandwidth. The
concatenations (upsampled + skip, both C channels) against torch.cat with their bandwidth. --sweep
times the statistics pass for other (tile elements : programs per sample : warps : least tiles per
program) settings.
"""
from __future__ import annotations

import argparse

import torch
import triton
from cuda_timing import median_ms

from BraTSMambaLib.nets.fused import norm_kernels as K
from BraTSMambaLib.nets.fused.concat_kernel import concat_channels_ndhwc

# (channels, side, norms of this shape per SegMamba forward pass)
CONCATS = [(48, 128), (96, 64), (192, 32), (384, 16)]   # (channels of each input, side): one each per pass
SHAPES = [(48, 128, 8), (48, 64, 6), (96, 64, 6), (96, 32, 6), (192, 32, 6), (192, 16, 6), (384, 16, 6), (384, 8, 5),
          (768, 8, 3)]


def _previous(x, w, b, r, eps: float = 1e-5):
    """The norm as the sixth session ran it: torch operations finish the statistics."""
    n, c = x.shape[:2]
    xs = K.ndhwc_view(x)
    s = xs.shape[1]
    piv = xs[:, 0, :].float().contiguous()
    psum, psq = K.partial_sums(xs, 2048, 512, 8, 1)
    m1 = psum.double().sum(1) / s
    var = (psq.double().sum(1) / s - m1 * m1).clamp_min(0.0)
    rstd = torch.rsqrt(var + eps)
    mean = piv.double() + m1
    scale = rstd * w.double()
    shift = b.double() - mean * scale
    scale, shift = scale.float().contiguous(), shift.float().contiguous()
    y = torch.empty_like(x)
    ys = y.permute(0, 2, 3, 4, 1).view(n, -1, c)
    K._apply_kernel[(triton.cdiv(s * c, 4096), n)](xs, scale, shift, K.ndhwc_view(r), ys, s * c, c, 0.01,
                                                   ACT=2, HAS_RES=True, BLOCK=4096, num_warps=8)
    return y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sweep", nargs="*", default=[], metavar="TILE:PROGRAMS:WARPS:MIN_TILES")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("fused_kernels.py needs a CUDA device")
    settings = [(K.STATS_TILE, K.STATS_PROGRAMS, K.STATS_WARPS, K.STATS_MIN_TILES)]
    settings += [tuple(map(int, v.split(":"))) for v in args.sweep]
    total_now = total_before = 0.0
    for c, side, count in SHAPES:
        cl = torch.channels_last_3d
        x = (torch.randn(args.batch, c, side, side, side, device="cuda") * 3 + 1).to(torch.bfloat16).contiguous(
            memory_format=cl)
        r = torch.randn_like(x).contiguous(memory_format=cl)
        w, b = torch.rand(c, device="cuda") + 0.5, torch.randn(c, device="cuda")
        y_now = K.instance_norm_ndhwc(x, w, b, 1e-5, "leaky_relu", 0.01, r)
        diff = (y_now.float() - _previous(x, w, b, r).float()).abs().max().item()
        t_now = median_ms(lambda: K.instance_norm_ndhwc(x, w, b, 1e-5, "leaky_relu", 0.01, r))
        t_before = median_ms(lambda: _previous(x, w, b, r))
        t_copy = median_ms(lambda: x.clone())
        gb = x.numel() * x.element_size() / 1e9
        total_now += t_now * count
        total_before += t_before * count
        xs = K.ndhwc_view(x)
        stats = "  ".join(f"{':'.join(map(str, st))} {gb / median_ms(lambda: K.partial_sums(xs, *st)) * 1e3:6.0f} GB/s"
                          for st in settings)
        print(f"C={c:3d} {side:3d}^3 x{count}: norm {t_now:7.3f} ms, previous {t_before:7.3f} ms "
              f"({t_before / t_now:4.2f}x, max diff {diff:.1e}); statistics read {stats}; "
              f"clone {2 * gb / t_copy * 1e3:6.0f} GB/s", flush=True)
    print(f"per SegMamba forward pass (norm counts above): {total_now:.2f} ms now, {total_before:.2f} ms previous")
    total_now = total_before = 0.0
    for c, side in CONCATS:
        a, b = (torch.randn(args.batch, c, side, side, side, device="cuda").to(torch.bfloat16).contiguous(
            memory_format=torch.channels_last_3d) for _ in range(2))
        same = torch.equal(concat_channels_ndhwc(a, b), torch.cat((a, b), 1))
        t_now = median_ms(lambda: concat_channels_ndhwc(a, b))
        t_before = median_ms(lambda: torch.cat((a, b), 1))
        gb = 4 * a.numel() * a.element_size() / 1e9     # both inputs read, the output written
        total_now, total_before = total_now + t_now, total_before + t_before
        print(f"concat {c}+{c} at {side:3d}^3: {t_now:.3f} ms ({gb / t_now * 1e3:.0f} GB/s), "
              f"torch.cat {t_before:.3f} ms ({gb / t_before * 1e3:.0f} GB/s), {t_before / t_now:.2f}x, equal: {same}",
              flush=True)
    print(f"per SegMamba forward pass: concatenations {total_now:.2f} ms now, {total_before:.2f} ms with torch.cat")


if __name__ == "__main__":
    main()
