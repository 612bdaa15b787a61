"""Our 3x3x3 convolution kernels (`nets.fused.conv3d_kernels`): where they apply, and on CUDA their outputs
and norm statistics against fp32 references, alone and inside the fused residual blocks."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from BraTSMambaLib.nets.fused import conv3d_kernels as CK


def _conv(cin: int = 48, cout: int = 48, **kw) -> torch.nn.Conv3d:
    conv = torch.nn.Conv3d(cin, cout, kw.pop("k", 3), padding=kw.pop("padding", 1), bias=False, **kw)
    return conv.requires_grad_(False)


def test_they_never_apply_off_cuda():
    assert not CK.applies(torch.zeros(1, 48, 8, 8, 8, dtype=torch.bfloat16), _conv())
    assert not CK.applies_c4(torch.zeros(1, 4, 8, 8, 8, dtype=torch.bfloat16), _conv(4), _conv(4, k=1, padding=0))


def _cuda_ok(shared: int) -> bool:
    return torch.cuda.is_available() and CK._device_ok(torch.cuda.current_device(), shared)


needs_c48 = pytest.mark.skipif(not _cuda_ok(CK.SHARED_BYTES),
                               reason="needs a GPU with 223 KB of shared memory a block (sm_90)")
needs_c4 = pytest.mark.skipif(not _cuda_ok(CK.SHARED_BYTES_C4), reason="needs a CUDA GPU with mma.sync (sm_80+)")


def _check_sums(y: torch.Tensor, sums: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Per-tile partial sums add up to the per-channel sums of y and y^2 of each sample."""
    s1, s2 = sums
    n, _, d, h, w = y.shape
    assert s1.shape == s2.shape == (n, (d // 8) * (h // 8) * (w // 8), 48)
    yf = y.double()
    torch.testing.assert_close(s1.double().sum(1), yf.sum((2, 3, 4)), rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(s2.double().sum(1), (yf ** 2).sum((2, 3, 4)), rtol=1e-4, atol=1e-2)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).abs().max() / ref.abs().max())


@pytest.mark.gpu
@needs_c48
@pytest.mark.parametrize("conv, shape, dtype", [
    (_conv(48, 32), (1, 48, 8, 8, 8), torch.bfloat16),
    (_conv(k=1, padding=0), (1, 48, 8, 8, 8), torch.bfloat16),
    (_conv(stride=2), (1, 48, 8, 8, 8), torch.bfloat16),
    (_conv(dilation=2, padding=2), (1, 48, 8, 8, 8), torch.bfloat16),
    (_conv(), (1, 48, 8, 12, 8), torch.bfloat16),
    (_conv(), (1, 48, 8, 8, 8), torch.float32),
])
def test_c48_declines_other_convolutions(conv, shape, dtype):
    x = torch.zeros(shape, device="cuda", dtype=dtype)
    assert not CK.applies(x, conv.cuda())


@pytest.mark.gpu
@needs_c4
@pytest.mark.parametrize("conv, branch, shape", [
    (_conv(4, 32), None, (1, 4, 8, 8, 8)),
    (_conv(4), _conv(4, k=3, padding=1), (1, 4, 8, 8, 8)),
    (_conv(4), _conv(4, k=1, padding=0, stride=2), (1, 4, 8, 8, 8)),
    (_conv(4, stride=2), None, (1, 4, 8, 8, 8)),
    (_conv(4), None, (1, 4, 8, 8, 12)),
    (_conv(8), None, (1, 8, 8, 8, 8)),
])
def test_c4_declines_other_convolutions(conv, branch, shape):
    x = torch.zeros(shape, device="cuda", dtype=torch.bfloat16)
    assert not CK.applies_c4(x, conv.cuda(), None if branch is None else branch.cuda())


@pytest.mark.gpu
@needs_c48
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 48, 8, 8, 8), (3, 48, 16, 24, 8), (2, 48, 32, 16, 40)])
def test_c48_matches_fp32_convolution_with_statistics(dtype, shape):
    torch.manual_seed(0)
    conv = _conv().cuda()
    x = (torch.randn(shape, device="cuda") + 0.5).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    assert CK.applies(x, conv)
    ref = F.conv3d(x.float(), conv.weight.to(dtype).float(), padding=1)
    y, sums = CK.conv3d_c48(x, conv.weight, stats=True)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last_3d)
    assert _rel_err(y, ref) < 1e-2
    assert torch.equal(CK.conv3d_c48(x, conv.weight), y)
    _check_sums(y, sums)


@pytest.mark.gpu
@needs_c4
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 4, 8, 8, 8), (3, 4, 16, 24, 8), (2, 4, 32, 16, 40)])
@pytest.mark.parametrize("with_branch", [True, False])
def test_c4_matches_fp32_convolutions_with_statistics(dtype, shape, with_branch):
    torch.manual_seed(0)
    conv, branch = _conv(4).cuda(), _conv(4, k=1, padding=0).cuda()
    x = (torch.randn(shape, device="cuda") + 0.5).to(dtype)            # NCDHW: the kernel takes any layout
    assert CK.applies_c4(x, conv, branch if with_branch else None)
    ys, sums = CK.conv3d_c4(x, conv.weight, branch.weight if with_branch else None, stats=True)
    refs = [F.conv3d(x.float(), conv.weight.to(dtype).float(), padding=1)]
    if with_branch:
        refs.append(F.conv3d(x.float(), branch.weight.to(dtype).float()))
    assert len(ys) == len(sums) == len(refs)
    for y, ref, s in zip(ys, refs, sums):
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last_3d)
        assert _rel_err(y, ref) < 1e-2
        _check_sums(y, s)
    plain, no_sums = CK.conv3d_c4(x, conv.weight, branch.weight if with_branch else None)
    assert no_sums == [] and all(torch.equal(a, b) for a, b in zip(plain, ys))


@pytest.mark.gpu
@needs_c48
def test_autocast_runs_fp32_input_in_bf16():
    conv = _conv().cuda()
    x = torch.randn(2, 48, 8, 16, 8, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert CK.applies(x, conv)
        y = CK.conv3d_c48(x, conv.weight)
        ref = conv(x)
    assert y.dtype == ref.dtype == torch.bfloat16
    assert _rel_err(y, ref.float()) < 1e-2


@pytest.mark.gpu
@needs_c4
@pytest.mark.parametrize("cin", [4, 48])
def test_fused_residual_block_with_the_kernels_matches_the_original(cin):
    """SegMamba's encoder1 (4 -> 48, 1x1 residual branch) and a 48 -> 48 block, original vs fused."""
    pytest.importorskip("triton")
    from monai.networks.blocks.dynunet_block import UnetResBlock

    from BraTSMambaLib.nets.fused import fuse_norms
    from BraTSMambaLib.nets.fused.blocks import _plain_conv

    if cin == 48 and not _cuda_ok(CK.SHARED_BYTES):
        pytest.skip("conv3d_c48 needs 223 KB of shared memory a block")
    torch.manual_seed(0)
    block = UnetResBlock(3, cin, 48, kernel_size=3, stride=1, norm_name="instance").cuda().eval()
    x = torch.randn(2, cin, 16, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = block(x).float()
        if cin == 4:
            assert CK.applies_c4(x, _plain_conv(block.conv1), _plain_conv(block.conv3))
        else:
            assert CK.applies(x, _plain_conv(block.conv1))
        fuse_norms(block)
        y = block(x).float()
    assert float((y - ref).norm() / ref.norm()) < 2e-2
