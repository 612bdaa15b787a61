"""SS3D's cross scan / cross merge (six routes) and the block on the torch vs reference backends."""
from __future__ import annotations

import pytest
import torch

from BraTSMambaLib.ssm import SS3D, cross_merge_3d, cross_scan_3d


def test_cross_merge_inverts_each_route():
    x = torch.randn(2, 3, 4, 5, 6)
    xs = cross_scan_3d(x)
    assert xs.shape == (2, 6, 3, 120)
    for k in range(6):
        only = torch.zeros_like(xs)
        only[:, k] = xs[:, k]
        torch.testing.assert_close(cross_merge_3d(only, (4, 5, 6)), x.flatten(2), rtol=0, atol=0)
    torch.testing.assert_close(cross_merge_3d(xs, (4, 5, 6)), 6 * x.flatten(2))


def test_routes_run_fastest_along_each_axis_and_reverse():
    D, H, W = 2, 3, 4
    d, h, w = torch.meshgrid(torch.arange(D), torch.arange(H), torch.arange(W), indexing="ij")
    coords = torch.stack([d, h, w]).float().unsqueeze(0)        # (1, 3 coords, D, H, W)
    xs = cross_scan_3d(coords)[0]                                # (6, 3, L)
    fastest = [(xs[k, :, 1] - xs[k, :, 0]).abs().argmax().item() for k in range(3)]
    assert fastest == [2, 0, 1]                                  # W, then D, then H vary fastest
    torch.testing.assert_close(xs[3:], xs[:3].flip(-1))
    assert xs[0, :, 0].tolist() == [0, 0, 0] and xs[3, :, 0].tolist() == [D - 1, H - 1, W - 1]


def test_cross_merge_rejects_bad_shape():
    with pytest.raises(ValueError, match="cross_merge_3d"):
        cross_merge_3d(torch.zeros(1, 4, 2, 24), (2, 3, 4))


def test_ss3d_parameter_layout():
    m = SS3D(32, d_state=16)
    E, R, N = 64, 2, 16
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"x_proj_weight": (6, R + 2 * N, E), "dt_projs_weight": (6, E, R), "dt_projs_bias": (6, E),
                      "A_logs": (6 * E, N), "Ds": (6 * E,), "in_proj.weight": (2 * E, 32),
                      "conv3d.weight": (E, 1, 3, 3, 3), "conv3d.bias": (E,), "out_norm.weight": (E,),
                      "out_norm.bias": (E,), "out_proj.weight": (32, E)}
    assert torch.equal(m.A_logs[:, 3], torch.full((6 * E,), float(torch.log(torch.tensor(4.0)))))


def test_ss3d_torch_matches_reference_with_gradients():
    torch.manual_seed(0)
    m = SS3D(6, d_state=3)
    with torch.no_grad():
        m.A_logs.add_(0.3 * torch.randn_like(m.A_logs))
    x = torch.randn(1, 3, 4, 5, 6, requires_grad=True)
    res = {}
    for backend in ("torch", "reference"):
        m.scan_backend = backend
        m.zero_grad()
        x.grad = None
        y = m(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        res[backend] = [y.detach()] + [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    assert res["torch"][0].shape == (1, 3, 4, 5, 6)
    for a, b in zip(res["torch"], res["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
