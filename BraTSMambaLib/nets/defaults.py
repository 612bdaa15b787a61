"""Default configurations of the registered networks: plain data, importing nothing heavy.

Kept apart from the model modules so the registry can describe every network (and check patch
sizes) without importing MONAI or the selective-scan code.
"""
from __future__ import annotations

from typing import Any, Mapping

from BraTSMambaLib.errors import BraTSInputError

#: nnU-Net's 6-stage 3D full-resolution plan for BraTS at 128^3 (Dataset137, region training).
BRATS_PLAN: Mapping[str, Any] = {
    "n_stages": 6,
    "features_per_stage": (32, 64, 128, 256, 320, 320),
    "kernel_sizes": ((3, 3, 3),) * 6,
    "strides": ((1, 1, 1),) + ((2, 2, 2),) * 5,
    "n_conv_per_stage": (2,) * 6,
    "n_conv_per_stage_decoder": (2,) * 5,
}

#: `create_mednext` variants (MONAI 1.6.1): expansion ratios and block counts; init_filters 32.
MEDNEXT_VARIANTS: dict[str, dict[str, Any]] = {
    "S": dict(encoder_expansion_ratio=2, decoder_expansion_ratio=2, bottleneck_expansion_ratio=2,
              blocks_down=(2, 2, 2, 2), blocks_bottleneck=2, blocks_up=(2, 2, 2, 2)),
    "B": dict(encoder_expansion_ratio=(2, 3, 4, 4), decoder_expansion_ratio=(4, 4, 3, 2),
              bottleneck_expansion_ratio=4, blocks_down=(2, 2, 2, 2), blocks_bottleneck=2, blocks_up=(2, 2, 2, 2)),
    "M": dict(encoder_expansion_ratio=(2, 3, 4, 4), decoder_expansion_ratio=(4, 4, 3, 2),
              bottleneck_expansion_ratio=4, blocks_down=(3, 4, 4, 4), blocks_bottleneck=4, blocks_up=(4, 4, 4, 3)),
    "L": dict(encoder_expansion_ratio=(3, 4, 8, 8), decoder_expansion_ratio=(8, 8, 4, 3),
              bottleneck_expansion_ratio=8, blocks_down=(3, 4, 8, 8), blocks_bottleneck=8, blocks_up=(8, 8, 4, 3)),
}

VMUNET3D_DEFAULTS: Mapping[str, Any] = {
    "patch_embed": 4,
    "embed_dim": 48,
    "depths": (2, 2, 2, 2),
    "depths_decoder": None,   # None: the encoder's depths, mirrored
    "d_state": 16,
    "ssm_expand": 2,
    "d_conv": 3,
    "mlp_ratio": 0.0,
    "drop_path_rate": 0.1,
}


def plans_to_kwargs(configuration: Any) -> dict[str, Any]:
    """Explicit U-Mamba arguments from an nnU-Net configuration (ConfigurationManager or dict).

    Accepts the current plans format (`architecture.arch_kwargs`) and the pre-2.4 format U-Mamba
    was written for (`UNet_base_num_features`, `conv_kernel_sizes`, ...).
    """
    conf = getattr(configuration, "configuration", configuration)
    if not isinstance(conf, Mapping):
        raise BraTSInputError(f"U-Mamba: expected an nnU-Net configuration, got {type(configuration).__name__}")
    try:
        if "architecture" in conf:
            a = conf["architecture"]["arch_kwargs"]
            enc = a.get("n_blocks_per_stage", a.get("n_conv_per_stage"))
            out = {"n_stages": a["n_stages"], "features_per_stage": list(a["features_per_stage"]),
                   "kernel_sizes": a["kernel_sizes"], "strides": a["strides"], "n_conv_per_stage": enc,
                   "n_conv_per_stage_decoder": a["n_conv_per_stage_decoder"]}
        else:
            n = len(conf["conv_kernel_sizes"])
            out = {"n_stages": n,
                   "features_per_stage": [min(conf["UNet_base_num_features"] * 2 ** i, conf["unet_max_num_features"])
                                          for i in range(n)],
                   "kernel_sizes": conf["conv_kernel_sizes"], "strides": conf["pool_op_kernel_sizes"],
                   "n_conv_per_stage": conf["n_conv_per_stage_encoder"],
                   "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"]}
        out["input_size"] = list(conf["patch_size"])
    except KeyError as e:
        raise BraTSInputError(f"U-Mamba: nnU-Net configuration lacks {e.args[0]!r}") from None
    if len(out["kernel_sizes"][0]) != 3:
        raise BraTSInputError("U-Mamba: only 3D configurations are supported")
    return out
