"""`ssm.ops.concurrently`: the tri-orientated layer's three scans on CUDA side streams give the same output
as one after the other; off CUDA, and with BRATSMAMBA_LAYER_STREAMS=0, the pieces run in order."""
from __future__ import annotations

import pytest
import torch

from BraTSMambaLib.ssm.ops import streams
from BraTSMambaLib.ssm.ops.streams import concurrently


def test_off_cuda_the_pieces_run_in_order():
    calls = []
    out = concurrently(torch.device("cpu"), *(lambda i=i: calls.append(i) or torch.tensor(i) for i in range(3)))
    assert calls == [0, 1, 2] and [int(t) for t in out] == [0, 1, 2]


def test_the_switch_is_validated(monkeypatch):
    monkeypatch.setenv(streams.ENV_VAR, "0")
    assert not streams.streams_enabled()
    monkeypatch.setenv(streams.ENV_VAR, "yes")
    with pytest.raises(ValueError, match="expected 0 or 1"):
        streams.streams_enabled()


def tri_layer_outputs(monkeypatch, var: str, values: tuple[str, ...], side: int, batch: int) -> list[torch.Tensor]:
    """A TriOrientedMamba(48) layer's bf16-autocast outputs on CUDA for a (batch, side^3, 48) input, one per
    value of the environment variable `var`, in order."""
    from BraTSMambaLib.ssm.modules.tri_oriented import TriOrientedMamba

    torch.manual_seed(0)
    layer = TriOrientedMamba(48, nslices=side).cuda().eval()
    x = torch.randn(batch, side ** 3, 48, device="cuda")
    outs = []
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        for value in values:
            monkeypatch.setenv(var, value)
            outs.append(layer(x).float())
    return outs


@pytest.mark.gpu
def test_gpu_layer_with_side_streams_equals_sequential(monkeypatch):
    on, off, again = tri_layer_outputs(monkeypatch, streams.ENV_VAR, ("1", "0", "1"), 32, 4)
    assert torch.equal(on, again)
    assert float((on - off).abs().max()) <= 1e-6 * float(off.abs().max())
