"""Every registered network at its tiny config and smallest legal input: shapes, gradients,
deep supervision on/off, eval determinism and a strict reload of its own state dict (CPU)."""
from __future__ import annotations

import io

import pytest
import torch

from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.nets import build_model, deep_supervision_scales, get_spec, list_models, set_deep_supervision


def _tiny(name: str) -> tuple[dict, tuple[int, int, int]]:
    tiny = dict(get_spec(name).tiny)
    return tiny, tuple(tiny["patch_size"])


def _as_list(y) -> list[torch.Tensor]:
    return list(y) if isinstance(y, (list, tuple)) else [y]


@pytest.mark.parametrize("name", list_models())
def test_tiny_model_end_to_end(name: str) -> None:
    spec = get_spec(name)
    tiny, ps = _tiny(name)
    assert min(ps) == spec.size_rule(tiny)[1], "tiny must run at the smallest legal input"
    ds = spec.supports_deep_supervision
    torch.manual_seed(0)
    model = build_model(name, deep_supervision=ds, **tiny)
    x = torch.randn(1, spec.in_channels, *ps)

    model.train()
    outs = _as_list(model(x))
    assert outs[0].shape == (1, spec.out_channels, *ps)
    if ds:
        assert len(outs) > 1
        scales = deep_supervision_scales(model)
        assert len(scales) == len(outs)
        for out, scale in zip(outs, scales):
            assert out.shape[2:] == tuple(round(s * f) for s, f in zip(ps, scale))
            assert out.shape[:2] == (1, spec.out_channels)
    loss = sum(o.square().mean() for o in outs)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    if ds:
        set_deep_supervision(model, False)
    with torch.no_grad():
        y1 = model(x)
    assert isinstance(y1, torch.Tensor) and y1.shape == (1, spec.out_channels, *ps)

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    fresh = build_model(name, deep_supervision=ds, **tiny)
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    fresh.eval()
    if ds:
        set_deep_supervision(fresh, False)
    with torch.no_grad():
        assert torch.equal(fresh(x), y1), "same weights in eval mode must give the same logits"


@pytest.mark.parametrize("name", ["segmamba", "mednext_s"])
def test_heads_only_when_built(name: str) -> None:
    tiny, _ = _tiny(name)
    plain = build_model(name, **tiny)
    with_ds = build_model(name, deep_supervision=True, **tiny)
    extra = set(with_ds.state_dict()) - set(plain.state_dict())
    assert extra and not set(plain.state_dict()) - set(with_ds.state_dict())
    with pytest.raises(BraTSInputError):
        set_deep_supervision(plain, True)


def test_swinunetr_has_no_deep_supervision() -> None:
    tiny, _ = _tiny("swinunetr")
    with pytest.raises(BraTSInputError):
        build_model("swinunetr", deep_supervision=True, **tiny)
    with pytest.raises(BraTSInputError):
        set_deep_supervision(build_model("swinunetr", **tiny), True)


def test_segmamba_nslices_follow_input_depth() -> None:
    """Upstream hard-codes nslices for 128^3; here any depth divisible by 16 runs, anisotropic too."""
    tiny, _ = _tiny("segmamba")
    model = build_model("segmamba", **tiny).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 4, 64, 32, 32))
    assert y.shape == (1, 3, 64, 32, 32)


def test_umambaenc_is_tied_to_its_patch_size() -> None:
    tiny, ps = _tiny("umambaenc")
    model = build_model("umambaenc", **tiny).eval()
    assert any(layer.channel_token for layer in model.encoder.mamba_layers)
    with pytest.raises(BraTSInputError, match="channel tokens"):
        model(torch.randn(1, 4, *(2 * s for s in ps)))


def test_umamba_mamba_layer_runs_fp32_under_autocast() -> None:
    tiny, ps = _tiny("umambabot")
    model = build_model("umambabot", **tiny).eval()
    seen = []
    model.mamba_layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 4, *ps))
    assert seen == [torch.float32]
