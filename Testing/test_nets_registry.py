"""Registry contract and official layouts: SegMamba / U-Mamba keys and shapes equal the upstream
definitions (Testing/data/official_keys, made by benchmarks/make_official_keys.py), and the
MONAI baselines have the reference parameter counts. Full-size models are built on the meta device."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from BraTSMambaLib.cli import main as cli_main
from BraTSMambaLib.data.conventions import MODALITIES, REGIONS
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.nets import build_model, get_spec, list_models, parameter_count, set_deep_supervision

KEYS = Path(__file__).parent / "data" / "official_keys"

NAMES = ["segmamba", "umambabot", "umambaenc", "vmunet3d", "mednext_s", "mednext_b", "mednext_m", "mednext_l",
         "swinunetr"]


def test_names_and_specs() -> None:
    assert list_models() == NAMES
    spec = get_spec("SegMamba")
    assert spec is get_spec(" segmamba ")
    assert spec.modalities == MODALITIES and spec.regions == REGIONS
    assert (spec.in_channels, spec.out_channels) == (4, 3)
    for name in NAMES:
        s = get_spec(name)
        assert s.recommended_patch_size == (128, 128, 128)
        s.check_patch_size(s.recommended_patch_size)
        assert s.tiny["patch_size"][0] < 128
    assert [n for n in NAMES if get_spec(n).uses_mamba] == ["segmamba", "umambabot", "umambaenc", "vmunet3d"]


def test_unknown_name_and_bad_inputs() -> None:
    with pytest.raises(BraTSInputError, match="unknown model"):
        get_spec("unet9000")
    with pytest.raises(BraTSInputError, match="multiple of 16"):
        build_model("segmamba", patch_size=(120, 128, 128))
    with pytest.raises(BraTSInputError, match="at least 64"):
        build_model("umambabot", patch_size=(32, 32, 32))
    with pytest.raises(BraTSInputError, match="bad override"):
        build_model("mednext_s", patch_size=(32, 32, 32), no_such_knob=1)


def _layout(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name, kwargs, fname, entries, params", [
    ("segmamba", {}, "segmamba_in4_out3.json", 291, 67_416_147),
    ("segmamba", {"out_channels": 4}, "segmamba_in4_out4.json", 291, 67_416_196),
    ("umambabot", {"deep_supervision": True}, "umambabot_brats128_ds.json", 397, 42_123_887),
    ("umambaenc", {"deep_supervision": True}, "umambaenc_brats128_ds.json", 518, 42_754_415),
])
def test_official_layout(name: str, kwargs: dict, fname: str, entries: int, params: int) -> None:
    ref = json.loads((KEYS / fname).read_text())
    assert (ref["num_entries"], ref["num_params"]) == (entries, params)
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    assert _layout(model) == ref["keys"]
    assert sum(p.numel() for p in model.parameters()) == params


def test_umamba_upstream_checkpoint_loads_strictly() -> None:
    """A checkpoint_final.pth-style dict with the decoder.encoder.* duplicates loads with strict=True."""
    tiny = dict(get_spec("umambabot").tiny)
    src = build_model("umambabot", deep_supervision=True, **tiny)
    sd = src.state_dict()
    assert any(k.startswith("decoder.encoder.") for k in sd)
    dst = build_model("umambabot", deep_supervision=True, **tiny)
    dst.load_state_dict({"network_weights": sd}["network_weights"], strict=True)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


@pytest.mark.parametrize("name, params", [
    ("mednext_s", 5_553_935), ("mednext_b", 10_513_871), ("mednext_m", 17_536_527), ("mednext_l", 61_729_775),
])
def test_mednext_reference_counts(name: str, params: int) -> None:
    assert parameter_count(name, deep_supervision=True) == params


def test_mednext_matches_monai_factory() -> None:
    from monai.networks.nets.mednext import create_mednext

    with torch.device("meta"):
        ours = build_model("mednext_m", deep_supervision=True)
        theirs = create_mednext("M", in_channels=4, out_channels=3, kernel_size=3, deep_supervision=True)
    assert _layout(ours) == _layout(theirs)


def test_swinunetr_reference_count() -> None:
    assert parameter_count("swinunetr") == 62_191_941


def test_umamba_from_nnunet_plans() -> None:
    """Old-format plans (what U-Mamba was written against) and the current format give the same network."""
    from BraTSMambaLib.nets.defaults import plans_to_kwargs
    from BraTSMambaLib.nets.umamba import UMambaBot

    old = {"patch_size": [128, 128, 128], "UNet_base_num_features": 32, "unet_max_num_features": 320,
           "conv_kernel_sizes": [[3, 3, 3]] * 6, "pool_op_kernel_sizes": [[1, 1, 1]] + [[2, 2, 2]] * 5,
           "n_conv_per_stage_encoder": [2] * 6, "n_conv_per_stage_decoder": [2] * 5}
    new = {"patch_size": [128, 128, 128], "architecture": {"arch_kwargs": {
        "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320], "kernel_sizes": [[3, 3, 3]] * 6,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_blocks_per_stage": [2] * 6,
        "n_conv_per_stage_decoder": [2] * 5}}}
    assert plans_to_kwargs(old) == plans_to_kwargs(new)
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    assert plans_to_kwargs(ConfigurationManager(dict(new))) == plans_to_kwargs(new)
    ref = json.loads((KEYS / "umambabot_brats128_ds.json").read_text())["keys"]
    with torch.device("meta"):
        from_plans = UMambaBot.from_plans(new, input_channels=4, num_classes=3, deep_supervision=True)
        via_registry = build_model("umambabot", deep_supervision=True, plans=old)
    assert _layout(from_plans) == ref == _layout(via_registry)
    assert new["architecture"]["arch_kwargs"]["n_blocks_per_stage"] == [2] * 6, "plans must not be mutated"
    with pytest.raises(BraTSInputError, match="lacks"):
        plans_to_kwargs({"patch_size": [128, 128, 128]})


def test_set_deep_supervision_through_wrappers() -> None:
    tiny = dict(get_spec("umambabot").tiny)
    model = build_model("umambabot", deep_supervision=True, **tiny)
    wrapped = torch.nn.Module()
    wrapped.module = model
    set_deep_supervision(wrapped, False)
    assert model.decoder.deep_supervision is False
    set_deep_supervision(model, True)
    assert model.decoder.deep_supervision is True


def test_models_command_json(capsys) -> None:
    assert cli_main(["models", "--json", "segmamba", "mednext_s"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["segmamba", "mednext_s"]
    assert rows[0]["parameters"] == 67_416_147 and rows[0]["uses_mamba"]
    assert rows[0]["scan_backends"]["cpu"]["torch"]["available"] is True
    assert rows[1]["scan_backends"] == {} and rows[1]["divisor"] == 16
    assert cli_main(["models", "nonexistent"]) == 2


def test_vmunet3d_default_layout() -> None:
    """Our own design: the documented size (docs/models/vmunet3d.md) and SS3D's six routes per block."""
    with torch.device("meta"):
        model = build_model("vmunet3d")
    assert sum(p.numel() for p in model.parameters()) == 9_385_455
    sd = _layout(model)
    assert sd["layers.0.0.op.x_proj_weight"] == [6, 35, 96]
    assert sd["layers.3.0.op.A_logs"] == [6 * 2 * 384, 16]
    assert sd["patch_embed.proj.weight"] == [48, 4, 4, 4, 4]
    assert sd["final_up.expand.weight"] == [4 ** 3 * 12, 48]
    assert get_spec("vmunet3d").size_rule({"patch_embed": 2, "depths": (1, 1, 1)}) == (8, 8)
