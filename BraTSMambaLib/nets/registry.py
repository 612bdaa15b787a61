"""One registry of segmentation networks: name -> constructor, BraTS defaults and constraints.

Every later layer (inference, training, Slicer) builds networks only through `build_model`.
All networks map (B, C, z, y, x) to logits (B, out, z, y, x), or, with deep supervision on, to a
list of logits, highest resolution first, each level half the previous (nnU-Net's convention).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from BraTSMambaLib.data.conventions import MODALITIES, REGIONS
from BraTSMambaLib.errors import BraTSInputError


@dataclass(frozen=True)
class ModelSpec:
    """What a caller needs to know about a registered network before building it."""

    name: str
    title: str
    constructor: Callable[..., nn.Module]  # (in_channels, out_channels, patch_size, deep_supervision, **kw)
    reference: str                         # where the architecture comes from
    size_rule: Callable[[Mapping[str, Any]], tuple[int, int]]  # overrides -> (divisor, smallest side)
    recommended_patch_size: tuple[int, int, int] = (128, 128, 128)
    supports_deep_supervision: bool = True
    uses_mamba: bool = False
    fixed_input_size: bool = False         # True: the network only runs on the patch size it was built for
    defaults: Mapping[str, Any] = field(default_factory=dict)  # the default BraTS configuration, for display
    tiny: Mapping[str, Any] = field(default_factory=dict)      # build_model(name, **tiny): a CPU-sized variant
    in_channels: int = len(MODALITIES)
    out_channels: int = len(REGIONS)
    modalities: tuple[str, ...] = MODALITIES
    regions: tuple[str, ...] = REGIONS

    @property
    def divisor(self) -> int:
        """Every input side must be a multiple of this (default configuration)."""
        return self.size_rule({})[0]

    @property
    def min_size(self) -> int:
        """Smallest legal input side (default configuration): the deepest map keeps > 1 voxel where norms need it."""
        return self.size_rule({})[1]

    def check_patch_size(self, patch_size: Sequence[int], overrides: Mapping[str, Any] | None = None
                         ) -> tuple[int, int, int]:
        """Validated (z, y, x) patch size for the configuration `overrides`; BraTSInputError names the rule."""
        divisor, min_size = self.size_rule(overrides or {})
        try:
            ps = tuple(int(s) for s in patch_size)
        except (TypeError, ValueError):
            ps = ()
        if len(ps) != 3 or any(s < min_size or s % divisor for s in ps):
            raise BraTSInputError(f"{self.name}: patch size {tuple(patch_size)} must have 3 sides, each a multiple "
                                  f"of {divisor} and at least {min_size}")
        return ps  # type: ignore[return-value]


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name.lower()] = spec
    return spec


def list_models() -> list[str]:
    """Registered names, in registration order."""
    _populate()
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of model `name` (case-insensitive)."""
    _populate()
    try:
        return _REGISTRY[name.strip().lower()]
    except KeyError:
        raise BraTSInputError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def build_model(name: str, in_channels: int = len(MODALITIES), out_channels: int = len(REGIONS),
                patch_size: Sequence[int] = (128, 128, 128), deep_supervision: bool = False,
                **overrides: Any) -> nn.Module:
    """Build network `name`; `overrides` replace any constructor argument (feature sizes, depths...)."""
    spec = get_spec(name)
    ps = spec.check_patch_size(patch_size, overrides)
    if deep_supervision and not spec.supports_deep_supervision:
        raise BraTSInputError(f"{spec.name} has no deep-supervision heads")
    try:
        model = spec.constructor(in_channels, out_channels, ps, bool(deep_supervision), **overrides)
    except TypeError as e:
        raise BraTSInputError(f"{spec.name}: bad override: {e}") from None
    model.brats_spec_name = spec.name  # type: ignore[attr-defined]
    return model


def set_deep_supervision(model: nn.Module, enabled: bool) -> None:
    """Switch deep-supervision outputs on or off at run time (what nnU-Net trainers need).

    Works on the bare network, a DDP wrapper or a torch.compile'd module. Switching on a network
    built without deep-supervision heads raises BraTSInputError.
    """
    mod = getattr(model, "_orig_mod", model)
    mod = getattr(mod, "module", mod)
    mod = getattr(mod, "_orig_mod", mod)
    target = mod.decoder if isinstance(getattr(mod, "decoder", None), nn.Module) and \
        hasattr(mod.decoder, "deep_supervision") else mod
    if not hasattr(target, "deep_supervision"):
        raise BraTSInputError(f"{type(mod).__name__} does not support deep supervision")
    if enabled and isinstance(target, nn.Module) and not _has_ds_heads(target):
        raise BraTSInputError(f"{type(mod).__name__} was built without deep-supervision heads")
    target.deep_supervision = bool(enabled)


def deep_supervision_scales(model: nn.Module) -> list[tuple[float, float, float]]:
    """Per-axis scale of each deep-supervision output relative to the input, highest resolution first.

    What nnU-Net's `_get_deep_supervision_scales` returns for its own networks; trainers that use a
    registry network take the target pyramid from here.
    """
    mod = getattr(model, "_orig_mod", model)
    mod = getattr(mod, "module", mod)
    mod = getattr(mod, "_orig_mod", mod)
    encoder = getattr(getattr(mod, "decoder", None), "encoder", None)
    if encoder is not None and hasattr(encoder, "strides"):
        scales, cur = [], [1.0, 1.0, 1.0]
        for stride in encoder.strides[:-1]:
            cur = [c / s for c, s in zip(cur, stride)]
            scales.append(tuple(cur))
        return scales  # type: ignore[return-value]
    if not hasattr(mod, "ds_scales"):
        raise BraTSInputError(f"{type(mod).__name__} does not support deep supervision")
    return [(float(s),) * 3 for s in mod.ds_scales]


def _has_ds_heads(m: nn.Module) -> bool:
    for attr in ("seg_layers", "ds_heads", "out_blocks"):
        if hasattr(m, attr):
            return True
    return False


def parameter_count(name: str, **kwargs: Any) -> int:
    """Parameters of `build_model(name, **kwargs)`, built on the meta device where the model allows it."""
    try:
        with torch.device("meta"):
            model = build_model(name, **kwargs)
    except (RuntimeError, NotImplementedError):
        model = build_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


_POPULATED = False


class _Lazy:
    """`module:attr` resolved on first call, so listing specs does not import MONAI or the scan code."""

    def __init__(self, target: str, *args: Any) -> None:
        self.target, self.args = target, args

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, attr = self.target.split(":")
        return getattr(importlib.import_module(module), attr)(*self.args, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.target}{self.args or ''}>"


def _populate() -> None:
    """Register the built-in models (imports are deferred so `nets` imports fast)."""
    global _POPULATED
    if _POPULATED:
        return
    _POPULATED = True
    from BraTSMambaLib.nets import defaults as pf

    def fixed(divisor: int, min_size: int) -> Callable[[Mapping[str, Any]], tuple[int, int]]:
        return lambda _o: (divisor, min_size)

    def umamba_rule(o: Mapping[str, Any]) -> tuple[int, int]:
        strides = o.get("strides") or (pf.plans_to_kwargs(o["plans"])["strides"] if o.get("plans") is not None
                                       else pf.BRATS_PLAN["strides"])
        d = 1
        for s in strides:
            d *= int(max(s))
        return d, 2 * d

    def mednext_rule(o: Mapping[str, Any]) -> tuple[int, int]:
        d = 2 ** len(o.get("blocks_down", (2, 2, 2, 2)))
        return d, 2 * d

    def vmunet_rule(o: Mapping[str, Any]) -> tuple[int, int]:
        d = int(o.get("patch_embed", pf.VMUNET3D_DEFAULTS["patch_embed"])) * 2 ** (
            len(o.get("depths", pf.VMUNET3D_DEFAULTS["depths"])) - 1)
        return d, d

    register(ModelSpec(
        name="segmamba", title="SegMamba", constructor=_Lazy("BraTSMambaLib.nets.segmamba:build_segmamba"),
        reference="ge-xing/SegMamba model_segmamba/segmamba.py", size_rule=fixed(16, 32), uses_mamba=True,
        defaults=dict(depths=(2, 2, 2, 2), feat_size=(48, 96, 192, 384), hidden_size=768, d_state=16),
        tiny=dict(patch_size=(32, 32, 32), depths=(1, 1, 1, 1), feat_size=(4, 8, 8, 16), hidden_size=16,
                  d_state=4)))
    tiny_plan = dict(n_stages=3, features_per_stage=(4, 8, 16), kernel_sizes=((3, 3, 3),) * 3,
                     strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), n_conv_per_stage=(2, 1, 1),
                     n_conv_per_stage_decoder=(1, 1), d_state=4)
    register(ModelSpec(
        name="umambabot", title="U-Mamba Bot", constructor=_Lazy("BraTSMambaLib.nets.umamba:build_umambabot"),
        reference="bowang-lab/U-Mamba umamba/nnunetv2/nets/UMambaBot_3d.py", size_rule=umamba_rule,
        uses_mamba=True, defaults=dict(pf.BRATS_PLAN), tiny=dict(patch_size=(8, 8, 8), **tiny_plan)))
    register(ModelSpec(
        name="umambaenc", title="U-Mamba Enc", constructor=_Lazy("BraTSMambaLib.nets.umamba:build_umambaenc"),
        reference="bowang-lab/U-Mamba umamba/nnunetv2/nets/UMambaEnc_3d.py", size_rule=umamba_rule,
        uses_mamba=True, fixed_input_size=True, defaults=dict(pf.BRATS_PLAN),
        tiny=dict(patch_size=(8, 8, 8), **tiny_plan)))
    register(ModelSpec(
        name="vmunet3d", title="VM-UNet 3D", constructor=_Lazy("BraTSMambaLib.nets.vmunet3d:build_vmunet3d"),
        reference="ours: 3D extension of VM-UNet (JCruan519/VM-UNet); docs/models/vmunet3d.md",
        size_rule=vmunet_rule, uses_mamba=True, defaults=dict(pf.VMUNET3D_DEFAULTS),
        tiny=dict(patch_size=(32, 32, 32), embed_dim=8, depths=(1, 1, 1, 1), d_state=4, mlp_ratio=0.0)))
    for v in "SBML":
        register(ModelSpec(
            name=f"mednext_{v.lower()}", title=f"MedNeXt-{v} (k3)",
            constructor=_Lazy("BraTSMambaLib.nets.baselines:build_mednext", v),
            reference="MONAI monai.networks.nets.MedNeXt (create_mednext variant, kernel 3)", size_rule=mednext_rule,
            defaults=dict(pf.MEDNEXT_VARIANTS[v], init_filters=32, kernel_size=3),
            tiny=dict(patch_size=(16, 16, 16), init_filters=4, encoder_expansion_ratio=1, decoder_expansion_ratio=1,
                      bottleneck_expansion_ratio=1, blocks_down=(1, 1, 1), blocks_bottleneck=1,
                      blocks_up=(1, 1, 1))))
    register(ModelSpec(
        name="swinunetr", title="SwinUNETR", constructor=_Lazy("BraTSMambaLib.nets.baselines:build_swinunetr"),
        reference="MONAI monai.networks.nets.SwinUNETR (feature_size 48)", size_rule=fixed(32, 64),
        supports_deep_supervision=False, defaults=dict(feature_size=48),
        tiny=dict(patch_size=(64, 64, 64), feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))))
