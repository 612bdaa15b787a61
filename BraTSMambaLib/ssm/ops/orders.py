"""Token orders of the tri-orientated Mamba layer's three scans, as plain PyTorch (copies).

"forward": the tokens as they are; "reverse": flipped along the sequence; "slices": SegMamba's inter-slice
order of L = nslices * S tokens, `stack(x.chunk(nslices, -1), -1).flatten(-2)`: position j of every slice,
then position j + 1 (reordered position j * nslices + k holds token k * S + j).
The Triton kernels in this package read these orders by index arithmetic instead of copying.
"""
from __future__ import annotations

import torch

ORDERS: tuple[str, ...] = ("forward", "reverse", "slices")


def check_order(order: str, nslices: int | None, L: int) -> None:
    """ValueError unless `order` is known and, for "slices", nslices >= 1 divides L."""
    if order not in ORDERS:
        raise ValueError(f"unknown token order {order!r}; choose one of {', '.join(ORDERS)}")
    if order == "slices" and (nslices is None or nslices < 1 or L % nslices):
        raise ValueError(f"token order 'slices': sequence length {L} is not a multiple of nslices={nslices}")


def to_order(x: torch.Tensor, order: str, nslices: int | None = None) -> torch.Tensor:
    """(b, C, L) tokens -> the same tokens in `order` along the last dimension."""
    b, C, L = x.shape
    check_order(order, nslices, L)
    if order == "forward":
        return x
    if order == "reverse":
        return x.flip([-1])
    return x.reshape(b, C, nslices, L // nslices).transpose(-1, -2).reshape(b, C, L)


def from_order(y: torch.Tensor, order: str, nslices: int | None = None) -> torch.Tensor:
    """Inverse of `to_order`: (b, C, L) in `order` -> token order. Reversal is its own inverse, and the
    slice interleaving with nslices slices is undone by the one with L // nslices slices."""
    L = y.shape[-1]
    check_order(order, nslices, L)
    return to_order(y, order, L // nslices if order == "slices" else nslices)
