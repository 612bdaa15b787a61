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


@pytest.mark.gpu
def test_gpu_layer_with_side_streams_equals_sequential(monkeypatch):
    from BraTSMambaLib.ssm.modules.tri_oriented import TriOrientedMamba

    torch.manual_seed(0)
    layer = TriOrientedMamba(48, nslices=32).cuda().eval()
    x = torch.randn(4, 32 ** 3, 48, device="cuda")
    outs = {}
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        for flag in ("1", "0", "1"):
            monkeypatch.setenv(streams.ENV_VAR, flag)
            outs.setdefault(flag, []).append(layer(x).float())
    assert torch.equal(outs["1"][0], outs["1"][1])
    assert float((outs["1"][0] - outs["0"][0]).abs().max()) <= 1e-6 * float(outs["0"][0].abs().max())
