"""MONAI baselines wrapped to the registry interface: MedNeXt S/B/M/L (kernel 3) and SwinUNETR.

The classes subclass MONAI's, so state-dict keys are MONAI's own. Differences are in `forward`
only: MedNeXt returns its deep-supervision list whenever it is switched on (MONAI returns it in
training mode only; nnU-Net validates with it off and expects a list whenever it is on), highest
resolution first.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.mednext import MedNeXt

from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.nets.defaults import MEDNEXT_VARIANTS


class MedNeXtNet(MedNeXt):
    """MONAI MedNeXt with a mode-independent deep-supervision switch (`deep_supervision`)."""

    @property
    def deep_supervision(self) -> bool:
        return bool(self.do_ds)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        if enabled and not hasattr(self, "out_blocks"):
            raise BraTSInputError("this MedNeXt was built without deep-supervision heads")
        self.do_ds = bool(enabled)

    @property
    def ds_scales(self) -> list[float]:
        """Resolution of each deep-supervision output relative to the input, highest first."""
        return [0.5 ** i for i in range(len(self.dec_stages) + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for enc_stage, down in zip(self.enc_stages, self.down_blocks):
            x = enc_stage(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        ds = []
        for i, (up, dec_stage) in enumerate(zip(self.up_blocks, self.dec_stages)):
            if self.do_ds and i < len(self.out_blocks):
                ds.append(self.out_blocks[i](x))
            x = dec_stage(up(x) + skips[-(i + 1)])
        x = self.out_0(x)
        return [x, *ds[::-1]] if self.do_ds else x


def build_mednext(variant: str, in_channels: int, out_channels: int, patch_size: Sequence[int],
                  deep_supervision: bool, kernel_size: int = 3, **overrides: Any) -> MedNeXtNet:
    """MedNeXt as `monai.networks.nets.create_mednext(variant, kernel_size=3)`, any argument overridable."""
    kw = dict(spatial_dims=3, init_filters=32, use_residual_connection=True, norm_type="group",
              global_resp_norm=False, **MEDNEXT_VARIANTS[variant.upper()])
    kw.update(overrides)
    return MedNeXtNet(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                      deep_supervision=deep_supervision, **kw)


class SwinUNETRNet(SwinUNETR):
    """MONAI SwinUNETR (no deep supervision)."""

    deep_supervision = False


def build_swinunetr(in_channels: int, out_channels: int, patch_size: Sequence[int], deep_supervision: bool,
                    feature_size: int = 48, **overrides: Any) -> SwinUNETRNet:
    """SwinUNETR(feature_size=48); MONAI >= 1.5 no longer takes img_size, sides must divide by 32."""
    if deep_supervision:
        raise BraTSInputError("SwinUNETR has no deep-supervision heads")
    return SwinUNETRNet(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                        spatial_dims=3, **overrides)
