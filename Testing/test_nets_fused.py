"""nets.fused: the fused instance norm (+ residual + activation) kernel and the fused block forms.

CPU: the Triton kernels run under TRITON_INTERPRET=1 in one subprocess (the interpreter must be chosen
before triton is imported), against float64 references; fused networks (tiny SegMamba, U-Mamba Bot/Enc)
must give the unfused network's output with unchanged state-dict keys. In this process (no interpreter)
a fused model takes the original code path on CPU and must match exactly, gradients included.
GPU tests run the kernel at SegMamba's sizes in bf16.
"""
from __future__ import annotations

import os

import pytest
import torch
from triton_interp import run_in_interpreter

KERNEL_CASES = [  # (n, c, spatial, act, residual, affine)
    (2, 5, (3, 4, 5), None, False, True),
    (1, 12, (4, 4, 4), "leaky_relu", True, False),
    (2, 3, (2, 3, 7), "relu", False, True),
    (1, 20, (5, 5, 5), "relu", True, True),
    (1, 48, (3, 3, 3), "leaky_relu", True, True),
    (1, 80, (26, 26, 26), "relu", True, True),   # two channel blocks, 69 partial sums: two finishing steps
]
NETS = ["segmamba", "umambabot", "umambaenc"]


def _reference(x, w, b, act, r, slope=0.01):
    ref = torch.nn.functional.instance_norm(x.double(), weight=None if w is None else w.double(),
                                            bias=None if b is None else b.double(), eps=1e-5)
    if r is not None:
        ref = ref + r.double()
    if act == "relu":
        ref = ref.clamp_min(0)
    elif act == "leaky_relu":
        ref = torch.nn.functional.leaky_relu(ref, slope)
    return ref


def _kernel_errors(device: str, dtype: torch.dtype, offset: float = 7.0) -> list[float]:
    from BraTSMambaLib.nets.fused import norm_kernels as K

    errors = []
    for i, (n, c, s, act, res, affine) in enumerate(KERNEL_CASES):
        g = torch.Generator().manual_seed(i)
        cl = torch.channels_last_3d
        x = (torch.randn(n, c, *s, generator=g) * 3 + offset).to(device, dtype).contiguous(memory_format=cl)
        w = torch.randn(c, generator=g).to(device) if affine else None
        b = torch.randn(c, generator=g).to(device) if affine else None
        r = torch.randn(n, c, *s, generator=g).to(device, dtype).contiguous(memory_format=cl) if res else None
        y = K.instance_norm_ndhwc(x, w, b, 1e-5, act, 0.01, r)
        assert y.dtype == dtype and y.is_contiguous(memory_format=cl) and torch.isfinite(y).all()
        ref = _reference(x, w, b, act, r)
        errors.append(float((y.double() - ref).norm() / ref.norm()))
    return errors


LN_CASES = [(2, 7, 48, True), (3, 5, 20, False), (1, 9, 96, True)]  # (batch, tokens, width, affine)


def _layer_norm_errors(device: str, dtype: torch.dtype) -> list[float]:
    from BraTSMambaLib.nets.fused import norm_kernels as K

    errors = []
    for i, (b, t, c, affine) in enumerate(LN_CASES):
        g = torch.Generator().manual_seed(100 + i)
        x = (torch.randn(b, t, c, generator=g) * 2 + 5).to(device, dtype)
        w = torch.randn(c, generator=g).to(device) if affine else None
        bias = torch.randn(c, generator=g).to(device) if affine else None
        y = K.layer_norm_rows(x, w, bias, 1e-5)
        assert y.dtype == dtype and y.shape == x.shape
        ref = torch.nn.functional.layer_norm(x.double(), (c,), None if w is None else w.double(),
                                             None if bias is None else bias.double(), 1e-5)
        errors.append(float((y.double() - ref).norm() / ref.norm()))
    return errors


CONCAT_CASES = [(2, 48, 48, (3, 4, 5)), (1, 5, 3, (2, 2, 7)), (1, 96, 192, (4, 4, 4)), (3, 16, 8, (1, 1, 1))]


def _concat_exact(device: str, dtype: torch.dtype) -> list[bool]:
    """concat_channels_ndhwc equals torch.cat bit for bit (inputs channels_last_3d or not)."""
    from BraTSMambaLib.nets.fused.concat_kernel import concat_channels_ndhwc

    same = []
    for i, (n, ca, cb, s) in enumerate(CONCAT_CASES):
        g = torch.Generator().manual_seed(200 + i)
        a = torch.randn(n, ca, *s, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last_3d)
        b = torch.randn(n, cb, *s, generator=g).to(device, dtype)
        if i % 2 == 0:
            b = b.contiguous(memory_format=torch.channels_last_3d)
        y = concat_channels_ndhwc(a, b)
        same.append(y.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(y, torch.cat((a, b), 1)))
    return same


def _fused_network_diffs() -> dict:
    from BraTSMambaLib.nets import build_model, get_spec
    from BraTSMambaLib.nets.fused import fuse_norms, is_fused

    out = {}
    for name in NETS:
        torch.manual_seed(0)
        kw = dict(get_spec(name).tiny)
        kw.setdefault("patch_size", (16, 16, 16))
        model = build_model(name, **kw).eval().to(memory_format=torch.channels_last_3d)
        x = torch.randn(2, 4, *kw["patch_size"]).contiguous(memory_format=torch.channels_last_3d)
        keys = list(model.state_dict())
        with torch.inference_mode():
            ref = model(x)
        fuse_norms(model)
        with torch.inference_mode():
            y = model(x)
        out[name] = {"rel": float((y - ref).norm() / ref.norm()), "fused": is_fused(model),
                     "keys_same": list(model.state_dict()) == keys,
                     "classes": sorted({type(m).__name__ for m in model.modules() if "Fused" in type(m).__name__})}
    return out


def _run_interpreter() -> dict:
    return {"kernel": _kernel_errors("cpu", torch.float32), "layer_norm": _layer_norm_errors("cpu", torch.float32),
            "concat": _concat_exact("cpu", torch.float32), "nets": _fused_network_diffs()}


@pytest.fixture(scope="module")
def interp() -> dict:
    pytest.importorskip("triton")
    return run_in_interpreter("test_nets_fused", "_run_interpreter")


def test_kernel_matches_float64_in_the_interpreter(interp):
    assert len(interp["kernel"]) == len(KERNEL_CASES)
    for case, err in zip(KERNEL_CASES, interp["kernel"]):
        assert err < 1e-5, f"{case}: relative error {err:.3g}"


def test_layer_norm_kernel_matches_float64_in_the_interpreter(interp):
    assert len(interp["layer_norm"]) == len(LN_CASES)
    for case, err in zip(LN_CASES, interp["layer_norm"]):
        assert err < 1e-5, f"{case}: relative error {err:.3g}"


def test_concat_kernel_equals_torch_cat_in_the_interpreter(interp):
    assert interp["concat"] == [True] * len(CONCAT_CASES)


def test_concat_refuses_mismatched_inputs():
    pytest.importorskip("triton")
    from BraTSMambaLib.nets.fused.concat_kernel import concat_channels_ndhwc

    with pytest.raises(ValueError, match="cannot concatenate"):
        concat_channels_ndhwc(torch.zeros(1, 2, 3, 3, 3), torch.zeros(1, 2, 3, 3, 4))


@pytest.mark.parametrize("name", NETS)
def test_fused_network_matches_unfused_in_the_interpreter(interp, name):
    res = interp["nets"][name]
    assert res["fused"] and res["keys_same"]
    assert "FusedInstanceNorm3d" in res["classes"] and "FusedLayerNorm" in res["classes"], res["classes"]
    expected = {"segmamba": {"FusedGSC", "FusedUnetResBlock", "FusedUnetrUpBlock"},
                "umambabot": {"FusedBasicResBlock", "FusedBasicBlockD", "FusedUpsampleLayer"}}.get(name, set())
    assert expected <= set(res["classes"]), res["classes"]
    assert res["rel"] < 1e-5, f"{name}: fused vs unfused relative difference {res['rel']:.3g}"


def test_fused_model_off_gpu_is_the_unfused_model_exactly():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("in the interpreter the kernels run on CPU tensors")
    from BraTSMambaLib.nets import build_model, get_spec
    from BraTSMambaLib.nets.fused import fuse_norms

    torch.manual_seed(0)
    kw = dict(get_spec("umambabot").tiny, patch_size=(16, 16, 16))
    ref_model = build_model("umambabot", **kw)
    model = build_model("umambabot", **kw)
    model.load_state_dict(ref_model.state_dict())
    fuse_norms(model)
    x = torch.randn(2, 4, 16, 16, 16)
    y_ref, y = ref_model(x), model(x)               # training mode, gradients on: the original path
    assert torch.equal(y_ref, y)
    y_ref.square().mean().backward()
    y.square().mean().backward()
    for (k, p_ref), p in zip(ref_model.named_parameters(), model.parameters()):
        assert (p_ref.grad is None and p.grad is None) or torch.equal(p_ref.grad, p.grad), k


@pytest.mark.parametrize("c,k,side", [(4, 7, 16), (4, 7, 15), (3, 3, 10), (4, 5, 9)])
def test_space_to_depth_convolution_is_exact(c, k, side):
    from torch.nn import functional as F

    from BraTSMambaLib.nets.fused.space_to_depth import s2d_weight, space_to_depth

    g = torch.Generator().manual_seed(side)
    x = torch.randn(2, c, side, side + 1, side + 2, generator=g, dtype=torch.float64)
    w = torch.randn(6, c, k, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    ref = F.conv3d(x, w, b, stride=2, padding=k // 2)
    out = F.conv3d(space_to_depth(x, (k // 2,) * 3), s2d_weight(w), b)[:, :, :ref.shape[2], :ref.shape[3], :ref.shape[4]]
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) < 1e-10


def test_space_to_depth_only_rewrites_the_stem():
    from BraTSMambaLib.nets import build_model, get_spec
    from BraTSMambaLib.nets.fused import SpaceToDepthConv3d, fuse_for_inference

    model = fuse_for_inference(build_model("segmamba", **dict(get_spec("segmamba").tiny, patch_size=(32, 32, 32))))
    rewritten = [n for n, m in model.named_modules() if isinstance(m, SpaceToDepthConv3d)]
    assert rewritten == ["vit.downsample_layers.0.0"]
    x = torch.randn(1, 4, 32, 32, 32)
    stem = model.vit.downsample_layers[0][0]
    assert torch.equal(stem(x), torch.nn.functional.conv3d(x, stem.weight, stem.bias, 2, 3))  # CPU: plain path


def test_norms_with_running_statistics_keep_the_original_forward():
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU

    from BraTSMambaLib.nets.fused import fuse_norms
    from BraTSMambaLib.nets.fused.blocks import _norm

    block = ConvDropoutNormReLU(torch.nn.Conv3d, 3, 5, 3, 1, True, torch.nn.InstanceNorm3d,
                                {"affine": True, "track_running_stats": True}, None, None, torch.nn.LeakyReLU, {})
    fuse_norms(block)
    assert _norm(block.norm) is None          # the fused block then runs the original code


def test_unknown_activation_keeps_the_original_forward():
    from monai.networks.blocks.dynunet_block import UnetResBlock

    from BraTSMambaLib.nets.fused import fuse_norms

    block = UnetResBlock(3, 4, 6, 3, 1, "instance", act_name="gelu").eval()
    x = torch.randn(1, 4, 6, 6, 6)
    with torch.inference_mode():
        ref = block(x)
        fuse_norms(block)
        assert type(block).__name__ == "FusedUnetResBlock"
        assert torch.equal(block(x), ref)


@pytest.mark.gpu
def test_kernel_on_cuda_bf16_and_fp32():
    pytest.importorskip("triton")
    for err in _kernel_errors("cuda", torch.float32):
        assert err < 1e-5
    for err in _kernel_errors("cuda", torch.bfloat16, offset=0.0):
        assert err < 1e-2
    for err in _layer_norm_errors("cuda", torch.float32):
        assert err < 1e-5
    for err in _layer_norm_errors("cuda", torch.bfloat16):
        assert err < 1e-2
    assert _concat_exact("cuda", torch.bfloat16) == [True] * len(CONCAT_CASES)


@pytest.mark.gpu
def test_kernel_on_cuda_at_segmamba_size_matches_instance_norm():
    pytest.importorskip("triton")
    from BraTSMambaLib.nets.fused import norm_kernels as K

    x = torch.randn(2, 48, 128, 128, 128, device="cuda", dtype=torch.bfloat16) * 2 + 3
    x = x.contiguous(memory_format=torch.channels_last_3d)
    r = torch.randn_like(x)
    y = K.instance_norm_ndhwc(x, None, None, 1e-5, "leaky_relu", 0.01, r)
    ref = torch.nn.functional.leaky_relu(torch.nn.functional.instance_norm(x.float(), eps=1e-5) + r.float(), 0.01)
    assert float((y.float() - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.gpu
def test_space_to_depth_stem_on_cuda():
    from BraTSMambaLib.nets.fused import SpaceToDepthConv3d

    conv = torch.nn.Conv3d(4, 48, 7, stride=2, padding=3).cuda().to(torch.bfloat16).eval()
    x = torch.randn(2, 4, 64, 64, 64, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = conv(x).float()
        conv.__class__ = SpaceToDepthConv3d
        y = conv(x.contiguous(memory_format=torch.channels_last_3d)).float()
    assert y.shape == ref.shape
    assert float((y - ref).norm() / ref.norm()) < 1e-2


@pytest.fixture
def no_tf32():
    """Full fp32 convolutions and matmuls, so that only the norms differ between two models."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("name", NETS)
def test_fused_network_on_cuda(name, no_tf32):
    pytest.importorskip("triton")
    from BraTSMambaLib.nets import build_model, get_spec
    from BraTSMambaLib.nets.fused import fuse_for_inference

    torch.manual_seed(0)
    kw = dict(get_spec(name).tiny, patch_size=(32, 32, 32))
    model = build_model(name, **kw).cuda().eval().to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 4, 32, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        ref = model(x)
        fuse_for_inference(model)
        y = model(x)
    assert float((y - ref).norm() / ref.norm()) < 1e-4
