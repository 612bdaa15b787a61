"""Sliding-window prediction: Gaussian-weighted tiles (MONAI), mirror test-time augmentation, fold
ensembles, several tiles per forward pass, reduced precision, channels_last and torch.compile on CUDA.

Each forward pass takes `tiles_per_forward` network inputs: tiles times their mirror flips. Every
network output goes through the sigmoid, is flipped back and averaged over flips and folds, and the
tiles are blended with a Gaussian window (sigma = 1/8 of the patch, as nnU-Net does), on the device.

Speed settings (`auto` = the CUDA defaults below; on CPU and MPS fp32, contiguous, eager, except that
`--fast` on a CPU with native bf16 arithmetic takes bf16 autocast):
  precision      auto (CUDA: bf16; CPU: fp32, or bf16 with `fast` where `cpu_has_native_bf16`), fp32,
                 bf16 (autocast, CUDA or CPU), fp16 (autocast, CUDA), bf16-cast / fp16-cast (weights and
                 inputs cast, no autocast; fp32 islands stay fp32: `networks.cast_network`)
  memory_format  auto (CUDA: channels_last), contiguous (NCDHW), channels_last (NDHWC, channels_last_3d;
                 on CUDA with compile off the networks' instance norms, residual adds and activations are
                 fused into one Triton pass each, `nets.fused`: without that, PyTorch's instance norm copies
                 NDHWC tensors to NCDHW and back, and channels_last measured 1.5x slower than NCDHW)
  compile        off (default), or a torch.compile mode: default, reduce-overhead, max-autotune,
                 max-autotune-no-cudagraphs (compiled on the first forward pass of each tile batch shape)
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from BraTSMambaLib.errors import BraTSInputError

MAX_TTA = 8
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "bf16-cast", "fp16-cast")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("whole", "convs")
#: What `auto` means on CUDA (chosen from benchmarks/forward_gpu.py on the H200).
CUDA_DEFAULTS = {"precision": "bf16", "memory_format": "channels_last"}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA (the torchrun LOCAL_RANK GPU), else MPS, else CPU; explicit names are checked."""
    name = (name or "auto").lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BraTSInputError("--device cuda: no CUDA device is available here (try --device auto or cpu)")
        return torch.device(name if ":" in name else f"cuda:{local_rank % torch.cuda.device_count()}")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise BraTSInputError("--device mps: Apple MPS is not available here")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise BraTSInputError(f"--device {name}: use auto, cpu, cuda, cuda:N or mps")


def mirror_sets(tta: int, axes: Sequence[int] = (0, 1, 2)) -> list[tuple[int, ...]]:
    """The first `tta` flip sets (spatial axes 0..2): none, singles, pairs, all three (nnU-Net's order)."""
    if not 1 <= tta <= MAX_TTA:
        raise BraTSInputError(f"--tta {tta}: use 1 (off) to {MAX_TTA}")
    sets = [c for r in range(len(axes) + 1) for c in itertools.combinations(sorted(axes), r)]
    return sets[: min(tta, len(sets))]


def _check_choice(flag: str, value: str, choices: Sequence[str]) -> str:
    value = (value or "auto").lower()
    if value not in choices:
        raise BraTSInputError(f"--{flag} {value}: use one of {', '.join(choices)}")
    return value


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there oneDNN's bf16
    convolutions run about twice as fast as fp32 ones; elsewhere bf16 is emulated and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(device: torch.device, precision: str = "auto", *, fast: bool = False) -> str:
    """The concrete precision on `device`. `auto` is CUDA_DEFAULTS on CUDA; off CUDA it is fp32, except
    bf16 for `fast` runs on a CPU with native bf16. bf16 falls back to fp16 on GPUs without bf16; fp16
    autocast is refused off CUDA (CPUs have no fast fp16 convolutions; bf16 is the CPU's reduced precision)."""
    precision = _check_choice("precision", precision, PRECISIONS)
    if precision == "auto":
        if device.type == "cuda":
            precision = CUDA_DEFAULTS["precision"]
        else:
            precision = "bf16" if fast and device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision.startswith("bf16") and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        precision = precision.replace("bf16", "fp16")
    if precision == "fp16" and device.type != "cuda":
        raise BraTSInputError(f"--precision fp16: autocast to fp16 needs a CUDA device (this run is on "
                              f"{device.type}); use bf16 or fp32")
    return precision


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA by default (fp16 where bf16 is unsupported) and on CPUs when
    asked for; none (fp32) on MPS, and none for the cast precisions (the weights are bf16/fp16 there)."""
    precision = resolve_precision(device, precision)
    if device.type not in ("cuda", "cpu") or precision in ("fp32", "bf16-cast", "fp16-cast"):
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def cast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype weights and inputs are cast to (bf16-cast, fp16-cast; on any device), else none."""
    precision = resolve_precision(device, precision)
    return {"bf16-cast": torch.bfloat16, "fp16-cast": torch.float16}.get(precision)


def resolve_memory_format(device: torch.device, memory_format: str = "auto") -> str:
    """contiguous or channels_last; `auto` is CUDA_DEFAULTS on CUDA (contiguous where the fused-norm
    kernels cannot run: channels_last without them is slower than NCDHW), contiguous elsewhere."""
    from BraTSMambaLib.nets.fused import kernels_available

    memory_format = _check_choice("memory-format", memory_format, MEMORY_FORMATS)
    if memory_format == "auto":
        if device.type != "cuda" or (CUDA_DEFAULTS["memory_format"] == "channels_last" and not kernels_available()):
            return "contiguous"
        return CUDA_DEFAULTS["memory_format"]
    return memory_format


def tile_count(shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> int:
    """Sliding-window tiles MONAI visits for a volume of spatial `shape` (padded up to the patch)."""
    from monai.data.utils import dense_patch_slices

    size = tuple(max(int(s), int(p)) for s, p in zip(shape, patch_size))
    interval = tuple(p if p == s else max(1, int(p * (1 - overlap))) for s, p in zip(size, patch_size))
    return len(dense_patch_slices(size, tuple(int(p) for p in patch_size), interval))


@dataclass
class SlidingWindowPredictor:
    """Predict region probabilities of a preprocessed (4, z, y, x) volume with one or more networks."""

    networks: list
    patch_size: tuple[int, ...]
    device: torch.device
    overlap: float = 0.5
    tta: int = MAX_TTA
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    tiles_per_forward: int | None = None
    precision: str = "auto"
    memory_format: str = "auto"
    compile: str = "off"
    compile_scope: str = "whole"
    progress: bool = False  # tqdm bar over the tiles (MONAI's), for single cases on slow devices

    def __post_init__(self) -> None:
        """Validate the settings and prepare the networks in place (cast, memory format, compile)."""
        from BraTSMambaLib.inference.networks import cast_network, compile_network, to_memory_format
        from BraTSMambaLib.nets.fused import fuse_for_inference

        if not 0.0 <= self.overlap < 1.0:
            raise BraTSInputError(f"--overlap {self.overlap}: use a value in [0, 1)")
        self.flips = mirror_sets(self.tta, self.mirror_axes)
        if self.tiles_per_forward is None:
            self.tiles_per_forward = 8 if self.device.type == "cuda" else 1  # CPU: no faster batched, N x the memory
        if self.tiles_per_forward < 1:
            raise BraTSInputError(f"--tiles-per-forward {self.tiles_per_forward}: use 1 or more")
        self.precision = resolve_precision(self.device, self.precision)
        self.dtype = autocast_dtype(self.device, self.precision)
        self.input_dtype = cast_dtype(self.device, self.precision) or torch.float32
        self.memory_format = resolve_memory_format(self.device, self.memory_format)
        self.compile = _check_choice("compile", self.compile, COMPILE_MODES)
        self.compile_scope = _check_choice("compile-scope", self.compile_scope, COMPILE_SCOPES)
        for net in self.networks:
            if self.input_dtype != torch.float32:
                cast_network(net, self.input_dtype)
            if self.memory_format == "channels_last":
                to_memory_format(net, True)
                if self.device.type == "cuda" and self.compile == "off":
                    fuse_for_inference(net)
            if self.compile != "off":
                compile_network(net, self.compile, self.compile_scope)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed tile shapes: autotuned convolutions pay off

    @property
    def settings(self) -> dict:
        """The concrete speed settings (for reports)."""
        return {"precision": self.precision, "memory_format": self.memory_format, "compile": self.compile,
                "compile_scope": self.compile_scope if self.compile != "off" else None,
                "tiles_per_forward": self.tiles_per_forward}

    @property
    def sw_batch_size(self) -> int:
        """Tiles MONAI hands over per call: enough that tiles x flips fill one forward pass."""
        return max(1, self.tiles_per_forward // len(self.flips))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean sigmoid over flips and networks for a batch of tiles (B, 4, *patch)."""
        inputs = torch.cat([torch.flip(x, [a + 2 for a in f]) if f else x for f in self.flips])
        inputs = inputs.to(self.input_dtype)
        if self.memory_format == "channels_last":
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        size = max(self.tiles_per_forward, x.shape[0])
        total = None
        for net in self.networks:
            outs = []
            for chunk in torch.split(inputs, size):
                n = chunk.shape[0]
                if self.compile != "off" and n < size:
                    chunk = torch.cat([chunk, chunk.new_zeros((size - n, *chunk.shape[1:]))])  # one shape: no recompile
                with torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
                    y = net(chunk)
                if isinstance(y, (list, tuple)):
                    y = y[0]
                outs.append(torch.sigmoid(y[:n].float()))
            y = torch.cat(outs)
            for i, f in enumerate(self.flips):
                yi = y[i * x.shape[0]:(i + 1) * x.shape[0]]
                yi = torch.flip(yi, [a + 2 for a in f]) if f else yi
                total = yi if total is None else total + yi
        return total / (len(self.flips) * len(self.networks))

    @torch.inference_mode()
    def predict(self, data: np.ndarray | torch.Tensor,
                on_tiles: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(3, z, y, x) float32 region probabilities, on the predictor's device.

        `on_tiles(done, total)` is called after every forward pass (for progress reporting).
        """
        from monai.inferers import sliding_window_inference

        x = torch.as_tensor(data, dtype=torch.float32)[None].to(self.device, non_blocking=True)
        roi = tuple(int(p) for p in self.patch_size)
        forward = self._forward
        if on_tiles is not None:
            total, done = tile_count(x.shape[2:], roi, self.overlap), 0

            def forward(tiles: torch.Tensor) -> torch.Tensor:
                nonlocal done
                out = self._forward(tiles)
                done += tiles.shape[0]
                on_tiles(min(done, total), total)
                return out

        y = sliding_window_inference(
            x, roi_size=roi, sw_batch_size=self.sw_batch_size, predictor=forward, overlap=self.overlap,
            mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0,
            sw_device=self.device, device=self.device, progress=self.progress,
        )
        return y[0].float()
