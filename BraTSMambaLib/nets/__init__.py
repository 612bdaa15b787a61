"""Segmentation networks behind one registry: SegMamba, U-Mamba Bot/Enc, VM-UNet 3D, MedNeXt, SwinUNETR.

    from BraTSMambaLib.nets import build_model, get_spec
    net = build_model("segmamba")                              # BraTS default: 4 inputs, 3 regions
    tiny = build_model("umambabot", **get_spec("umambabot").tiny)  # CPU-sized variant for tests
"""
from BraTSMambaLib.nets.registry import (
                                         ModelSpec,
                                         build_model,
                                         deep_supervision_scales,
                                         get_spec,
                                         list_models,
                                         parameter_count,
                                         set_deep_supervision,
)

__all__ = ["ModelSpec", "build_model", "deep_supervision_scales", "get_spec", "list_models", "parameter_count",
           "set_deep_supervision"]
