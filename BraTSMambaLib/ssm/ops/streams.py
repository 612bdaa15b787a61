"""`concurrently`: independent pieces of a layer's inference on CUDA side streams at once.

A scan at inference is one sequential walk per (row, state) lane, so one scan alone can leave part of a large
GPU idle (SegMamba's stage 0 at batch 8: 768 rows x 16 lanes for 528 SM quadrants of an H200). The
tri-orientated layer's three scans are independent; run on three streams they fill the GPU together. Only
without autograd (inference); BRATSMAMBA_LAYER_STREAMS=0 runs them one after the other (comparisons).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from BraTSMambaLib.ssm.settings import env_switch

ENV_VAR = "BRATSMAMBA_LAYER_STREAMS"


def streams_enabled() -> bool:
    """False when BRATSMAMBA_LAYER_STREAMS=0; ValueError for a value other than 0/1."""
    return env_switch(ENV_VAR)


@functools.lru_cache(maxsize=32)
def _side_streams(device: torch.device, count: int, owner: int) -> tuple[torch.cuda.Stream, ...]:
    """`count` side streams of `device` for work issued from the stream `owner` (its cuda_stream handle):
    forward passes issued from different streams each get their own, so they do not wait on each other."""
    return tuple(torch.cuda.Stream(device) for _ in range(count))


def concurrently(device: torch.device, *fns: Callable[[], torch.Tensor]) -> list[torch.Tensor]:
    """[fn() for fn in fns], the first on the current stream and the others on side streams of `device`
    (when it is CUDA and streams are enabled); every result is safe to use on the current stream. While
    torch.compile traces or a CUDA graph is captured the pieces run in order on the current stream."""
    if (device.type != "cuda" or len(fns) < 2 or not streams_enabled() or torch.compiler.is_compiling()
            or torch.cuda.is_current_stream_capturing()):
        return [fn() for fn in fns]
    current = torch.cuda.current_stream(device)
    sides = _side_streams(device, len(fns) - 1, current.cuda_stream)
    for s in sides:
        s.wait_stream(current)
    results: list[torch.Tensor] = [torch.empty(0)] * len(fns)
    for i, (s, fn) in enumerate(zip(sides, fns[1:]), start=1):
        with torch.cuda.stream(s):
            results[i] = fn()
    results[0] = fns[0]()
    for s, r in zip(sides, results[1:]):
        current.wait_stream(s)
        r.record_stream(current)
    return results
