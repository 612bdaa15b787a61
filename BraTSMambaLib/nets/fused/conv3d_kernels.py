"""3x3x3 convolutions of our own for CUDA inference at SegMamba's full resolution (`conv3d_kernels.cu`), each
writing the following instance norm's statistics in its epilogue.

- `conv3d_c48`: 48 -> 48 channels (four per forward pass at 128^3, two at 64^3).
- `conv3d_c4`: the network input's 4 -> 48 channels, and with it the residual branch's 1x1x1 4 -> 48
  convolution from the same loaded input (SegMamba's `encoder1`, a MONAI UnetResBlock).

Why: at 48 channels cuDNN runs at about 224 TFLOP/s on an H200 (CUTLASS's sm90 kernels too,
benchmarks/conv3d_cutlass.py): a filter tap is a K block of only 48, so an implicit GEMM reloads each input
voxel from L2 27 times; and it pads the 4-channel input to 8 channels and reaches 70 TFLOP/s. These kernels
keep a tile's input halo and the weights in shared memory and multiply with mma.sync; writing each tile's
sums of y and y^2 as it stores y saves the norm's statistics pass, a full read of y. Measured on an H200 at
8 x 128^3 (benchmarks/conv3d_kernels.py, docs/performance.md): 48 -> 48 at 399 TFLOP/s, 1.77x cuDNN; 4 -> 48
with the 1x1 branch 2.04 ms against cuDNN's two convolutions' 6.56 ms; SegMamba's whole case 0.97 s against
1.15 s with BRATSMAMBA_CONV3D=0.

Where: 5-D CUDA tensors in bf16 or fp16 (or fp32 under autocast, computed in the autocast type), stride 1,
zero padding 1 (0 for the 1x1 branch), no dilation or groups, depth, height and width multiples of 8, a GPU
with mma.sync (sm_80+); `conv3d_c48` also needs 223 KB of shared memory per block (sm_90: H100/H200).
Anything else, or BRATSMAMBA_CONV3D=0, keeps `F.conv3d`. Compiled at run time by NVRTC like the scan kernels.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from BraTSMambaLib.ssm.backends import nvrtc_build
from BraTSMambaLib.ssm.settings import env_switch

SOURCE = Path(__file__).with_name("conv3d_kernels.cu")
CHANNELS, TILE, THREADS = 48, 8, 256
#: conv3d_c48's dynamic shared memory: all 27 taps' weights and one tile's (8 + 2)^3 input halo, 96-byte rows.
SHARED_BYTES = 27 * CHANNELS * CHANNELS * 2 + (TILE + 2) ** 3 * CHANNELS * 2
#: conv3d_c4's: 9 + 1 weight blocks of 48 x 16, and the halo (100 rows of 96 bytes) twice, 64 bytes apart.
SHARED_BYTES_C4 = 10 * CHANNELS * 32 + 2 * (TILE + 2) ** 2 * 96 + 64
#: The statistics reduction's static shared memory (8 warps x 2 sums x 48 channels of fp32).
STATIC_BYTES = 8 * 2 * CHANNELS * 4
ENV = "BRATSMAMBA_CONV3D"
_TYPES = {torch.bfloat16: "0", torch.float16: "1"}


def _compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The type the convolution runs in: autocast's where it is on, else x's; None if not 16-bit."""
    try:
        if torch.is_autocast_enabled("cuda"):
            return torch.get_autocast_dtype("cuda")
    except TypeError:   # PyTorch < 2.4: no device argument
        if torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return x.dtype if x.dtype in _TYPES else None


@functools.lru_cache(maxsize=8)
def _device_ok(index: int, shared: int) -> bool:
    props = torch.cuda.get_device_properties(index)
    optin = getattr(props, "shared_memory_per_block_optin", 0)
    return (props.major, props.minor) >= (8, 0) and optin >= shared + STATIC_BYTES


def _plain(conv: torch.nn.Conv3d, shape: tuple[int, ...], padding: int) -> bool:
    return (tuple(conv.weight.shape) == shape and tuple(conv.stride) == (1, 1, 1)
            and tuple(conv.padding) == (padding,) * 3 and tuple(conv.dilation) == (1, 1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros")


def _input_ok(x: torch.Tensor, channels: int) -> bool:
    return (x.is_cuda and x.dim() == 5 and x.shape[1] == channels and all(s % TILE == 0 for s in x.shape[2:])
            and _compute_dtype(x) is not None and env_switch(ENV, True))


@functools.lru_cache(maxsize=16)
def _kernel(name: str, index: int, defines: tuple[tuple[str, str], ...]):
    fn = nvrtc_build.kernel(SOURCE, dict(defines), name, torch.device("cuda", index))
    if name == "conv3x3x3_c48":
        nvrtc_build.allow_shared(fn, SHARED_BYTES)
    return fn


@functools.lru_cache(maxsize=8)
def _kernels_ok(name: str, index: int) -> bool:
    """Whether the kernel's variants compile and load on this device (else F.conv3d stays, silently)."""
    try:
        for variant in _variants(name):
            _kernel(name, index, variant)
        return True
    except nvrtc_build.NvrtcError:
        return False


def _variants(name: str) -> list[tuple[tuple[str, str], ...]]:
    res = ("0", "1") if name == "conv3x3x3_c4" else ("0",)
    return [(("HALF", h), ("RES", r), ("STATS", s)) for h in _TYPES.values() for s in ("0", "1") for r in res]


def _ready(x: torch.Tensor, name: str, shared: int) -> bool:
    index = x.device.index or 0
    return _device_ok(index, shared) and _kernels_ok(name, index)


def applies(x: torch.Tensor, conv: torch.nn.Conv3d) -> bool:
    """Whether `conv3d_c48(x, conv.weight)` serves `conv(x)` here (see the module docstring)."""
    return (_input_ok(x, CHANNELS) and _plain(conv, (CHANNELS, CHANNELS, 3, 3, 3), 1)
            and _ready(x, "conv3x3x3_c48", SHARED_BYTES))


def applies_c4(x: torch.Tensor, conv: torch.nn.Conv3d, branch: torch.nn.Conv3d | None = None) -> bool:
    """Whether `conv3d_c4(x, conv.weight, branch.weight)` serves `conv(x)` (and the 1x1x1 `branch(x)`) here."""
    return (_input_ok(x, 4) and _plain(conv, (CHANNELS, 4, 3, 3, 3), 1)
            and (branch is None or _plain(branch, (CHANNELS, 4, 1, 1, 1), 0))
            and _ready(x, "conv3x3x3_c4", SHARED_BYTES_C4))


Sums = tuple[torch.Tensor, torch.Tensor]


def _launch(name: str, x: torch.Tensor, weights: list[torch.Tensor | None], outputs: int, slots: int, stats: bool,
            defines: dict[str, str], shared: int) -> tuple[list[torch.Tensor], list[Sums]]:
    """Run kernel `name` on channels_last_3d `x` (already in the compute type): `outputs` 48-channel outputs
    (of the kernel's `slots` output arguments; the rest get null) and, with `stats`, each one's (sum, sum of
    squares) per (sample, tile, channel)."""
    n, _, d, h, wd = x.shape
    ys = [torch.empty((n, CHANNELS, d, h, wd), device=x.device, dtype=x.dtype,
                      memory_format=torch.channels_last_3d) for _ in range(outputs)]
    per_sample = (d // TILE) * (h // TILE) * (wd // TILE)
    tiles = n * per_sample
    sums = torch.empty((outputs, 2, tiles, CHANNELS), device=x.device, dtype=torch.float32) if stats else ys[0]
    index = x.device.index or 0
    variant = {"HALF": _TYPES[x.dtype], "RES": "0", "STATS": str(int(stats)), **defines}
    fn = _kernel(name, index, tuple(sorted(variant.items())))
    sms = torch.cuda.get_device_properties(index).multi_processor_count
    blocks = min(tiles, sms * nvrtc_build.resident_blocks(fn, THREADS, shared))
    ptr = nvrtc_build.pointer
    with torch.cuda.device(index):
        nvrtc_build.launch(fn, (blocks, 1, 1), (THREADS, 1, 1), [
            ptr(x), *(ptr(w) for w in weights), *(ptr(y) for y in ys), *(ptr(None) for _ in range(slots - outputs)),
            ptr(sums), ctypes.c_int(d), ctypes.c_int(h), ctypes.c_int(wd), ctypes.c_int(tiles)], shared=shared)
    pairs = [(sums[o, 0].view(n, per_sample, CHANNELS), sums[o, 1].view(n, per_sample, CHANNELS))
             for o in range(outputs)] if stats else []
    return ys, pairs


def conv3d_c48(x: torch.Tensor, weight: torch.Tensor, stats: bool = False
               ) -> torch.Tensor | tuple[torch.Tensor, Sums]:
    """F.conv3d(x, weight, padding=1) as channels_last_3d in the compute type (callers check `applies`).
    With `stats`, also (sum, sum of squares) of the rounded output per (sample, tile, channel), fp32, each
    (N, tiles per sample, 48): what `norm_kernels.instance_norm_ndhwc(sums=...)` takes."""
    dtype = _compute_dtype(x)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last_3d)
    w = weight.to(dtype).permute(2, 3, 4, 0, 1).contiguous()          # (kz, ky, kx, out, in)
    ys, sums = _launch("conv3x3x3_c48", x, [w], 1, 1, stats, {}, SHARED_BYTES)
    return (ys[0], sums[0]) if stats else ys[0]


def conv3d_c4(x: torch.Tensor, weight: torch.Tensor, branch: torch.Tensor | None = None, stats: bool = False
              ) -> tuple[list[torch.Tensor], list[Sums]]:
    """([F.conv3d(x, weight, padding=1)] + [F.conv3d(x, branch)] if `branch` is given, [their sums] if
    `stats`), for 4-channel x, as `conv3d_c48` returns them (callers check `applies_c4`)."""
    dtype = _compute_dtype(x)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last_3d)
    # One K step of 16 per (kz, ky): the three x taps' 4 channels, then 4 zeros.
    w = torch.zeros((3, 3, CHANNELS, 16), device=x.device, dtype=dtype)
    w[..., :12] = weight.to(dtype).permute(2, 3, 0, 4, 1).reshape(3, 3, CHANNELS, 12)
    w1 = None
    if branch is not None:
        w1 = torch.zeros((CHANNELS, 16), device=x.device, dtype=dtype)
        w1[:, 4:8] = branch.to(dtype).reshape(CHANNELS, 4)            # the centre voxel's place in a K step
    return _launch("conv3x3x3_c4", x, [w.reshape(9, CHANNELS, 16), w1], 1 + (w1 is not None), 2, stats,
                   {"RES": str(int(w1 is not None))}, SHARED_BYTES_C4)


__all__ = ["applies", "applies_c4", "conv3d_c48", "conv3d_c4"]
